//! The data path, top to bottom: request → checks → route → backend (or hand over) → answer.
//!
//! Model-scoped unary calls (ModelInfer, ModelReady, ModelMetadata, ModelConfig) with a route
//! go straight to a backend as the bytes the client sent; everything else, and every call no
//! route covers, goes to the gateway over its private socket, so answers that need the whole
//! fleet or the fallback stay the gateway's.

use crate::attempt::{self, Attempt, Scope};
use crate::backend_client::{self, BackendBody, BackendClient};
use crate::body::{Outgoing, Upstream};
use crate::control::{proto, Controlled};
use crate::fleet::{Choice, Fleet, Plan, Route};
use crate::grpc::{self, code, BadHeader, Framing, Refusal};
use crate::observed::{code_name, message_of, ObservedBody, RouteCall};
use crate::server::ActiveCall;
use crate::shadow::{self, Shadows, Tee};
use crate::shedding::Shedder;
use crate::snapshot::Snapshot;
use crate::stamp::Stamp;
use crate::traffic::{self, Selected, Shadow};
use crate::upstream::GatewayClient;
use crate::{compression, report, stream, version, wire};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::request::Parts;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

const SERVICE_PREFIX: &str = "/inference.GRPCInferenceService/";
const INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";
const ROUTED_METHODS: [&str; 4] = ["ModelInfer", "ModelReady", "ModelMetadata", "ModelConfig"];
const STREAMING_METHODS: [&str; 1] = ["ModelStreamInfer"];
/// Set by the edge on a call it hands over after backends failed it (the backends, comma
/// separated); never taken from clients.
pub const TRIED_HEADER: &str = "x-gateway-tried";
/// Set by the edge (and only by it) on a call from a client on this host: the gateway lets
/// only such clients register and use shared-memory regions.
pub const LOCAL_HEADER: &str = "x-gateway-local-client";
/// The authority of calls to the gateway (the Unix socket ignores it; the pool keys on it).
pub const GATEWAY_AUTHORITY: &str = "gateway";
const DEADLINE_EXCEEDED: u32 = 4;
/// Per-try timeout of ModelMetadata, ModelConfig and ModelReady (within the configured floor
/// and cap).
const METADATA_PER_TRY: Duration = Duration::from_secs(1);

pub struct Edge {
    pub backends: BackendClient,
    /// "https" when the backends are reached over TLS.
    pub backend_scheme: &'static str,
    pub gateway: GatewayClient,
    pub fleet: Arc<Fleet>,
    pub shared: Arc<attempt::Shared>,
    pub shedder: Shedder,
    /// Turns true when the first snapshot is applied: the public port accepts from then on.
    pub ready: watch::Sender<bool>,
    pub shadows: Arc<Shadows>,
}

/// A routed call as the edge tries it, once or several times.
struct RoutedCall<'a> {
    plan: Arc<Plan>,
    route: Arc<Route>,
    method: &'static str,
    model: &'a str,
    parts: Parts,
    bytes: Bytes,
    deadline: Option<Instant>,
    sequence: Option<wire::Sequence>,
}

/// Where the edge sends one request (see `Edge::target`).
pub(crate) struct Target<'p> {
    pub model: &'p str,
    /// Canonical ("" = the model's latest).
    pub version: &'p str,
    /// The model name the backend must read, when not the one the client sent.
    rename: Option<&'p str>,
    /// The version the backend must read, when the request named none.
    name_version: Option<&'p str>,
    spelled_empty: bool,
    /// The chosen variant's stamp (None: the route's own).
    stamp: Option<Arc<Stamp>>,
    /// (traffic route, variant) for the route's metrics.
    variant: Option<(Arc<str>, Arc<str>)>,
    /// (model, version) of the variant, shared with the snapshot (no allocation per call).
    target_names: Option<(Arc<str>, Arc<str>)>,
    /// The route's shadow, for a request its split chose a variant for.
    pub shadow: Option<&'p Shadow>,
    /// The model name the client sent.
    client_model: &'p str,
}

impl Target<'_> {
    /// The request as the backend must read it, when it differs from what the client sent:
    /// renamed, and naming the variant's version (or, mid-rollout, the fleet's latest).
    pub fn rewrite(&self, reading: &[u8], rollout_version: Option<&str>) -> Option<Bytes> {
        let version = match self.name_version {
            Some(version) => Some(version),
            None if self.spelled_empty => rollout_version,
            None => None,
        };
        if self.rename.is_none() && version.is_none() {
            return None;
        }
        Some(wire::renaming(reading, self.rename, version))
    }

    /// The call's count on its traffic route; `unfinished`: its code if never settled.
    pub fn route_call(
        &self,
        metrics: &Arc<crate::metrics::Metrics>,
        started: Instant,
        unfinished: &'static str,
    ) -> Option<RouteCall> {
        let (route, variant) = self.variant.clone()?;
        let (model, version) = self.target_names.clone()?;
        Some(RouteCall {
            metrics: metrics.clone(),
            route,
            variant,
            model,
            version,
            started,
            unfinished,
            fault: false,
        })
    }

    /// What answers to it are stamped with (None: the route's own stamp).
    pub fn variant_stamp(&self) -> Option<Arc<Stamp>> {
        self.stamp.clone()
    }
}

/// How one try ended.
enum Tried {
    /// The backend answered (an OK, or a status still to come in the trailers).
    Answer(Response<ObservedBody>),
    Failed(Failure),
}

struct Failure {
    backend: Arc<str>,
    code: &'static str,
    scope: Scope,
    /// Triton's own answer (trailers-only), returned as is when no other try is made.
    answer: Option<Response<BackendBody>>,
    /// What the client is told when there is no answer to return.
    message: String,
    /// Its backend's connection broke after the call went out (see `LostMidCall`).
    lost: bool,
}

/// Why a try has no answer: what to tell the client, and whether the connection broke with
/// the call on it.
struct NoAnswer {
    message: String,
    lost: bool,
}

/// Tries of one call that may lose their backend's connection under them: a server killed
/// while serving it is survived by one more try, but a request that kills every server it
/// reaches (Triton has such crashes) takes down no more than two.
pub const MAX_LOST_TRIES: u32 = 2;

impl Edge {
    /// Answers one call; `call` keeps the client connection open until the answer is done.
    /// An error resets the stream (RST_STREAM INTERNAL_ERROR), as Triton answers a bad header.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        call: ActiveCall,
        local: bool,
    ) -> Result<Response<ObservedBody>, BadHeader> {
        let response = self.route(request, local).await?;
        let (head, body) = response.into_parts();
        Ok(Response::from_parts(head, body.on_connection(call)))
    }

    async fn route(
        self: &Arc<Self>,
        request: Request<Incoming>,
        local: bool,
    ) -> Result<Response<ObservedBody>, BadHeader> {
        let (mut parts, body) = request.into_parts();
        if let Err(refusal) = grpc::check_metadata_size(&parts) {
            return Ok(refusal.response());
        }
        // Only the edge may tell the gateway which backends already failed a call, and
        // whether its client is on this host.
        parts.headers.remove(TRIED_HEADER);
        parts.headers.remove(LOCAL_HEADER);
        if local {
            parts.headers.insert(LOCAL_HEADER, HeaderValue::from_static("1"));
        }
        grpc::check_headers(&mut parts.headers)?;
        Ok(self.dispatch(parts, body).await)
    }

    async fn dispatch(self: &Arc<Self>, parts: Parts, body: Incoming) -> Response<ObservedBody> {
        let routed = match classify(parts.uri.path()) {
            Call::Stream => return stream_response(stream::answer(self.clone(), parts, body)),
            // Other services (health, reflection) go through as they arrive.
            Call::Streamed => return self.to_gateway(parts, Outgoing::Streamed(body)).await,
            Call::Routed(method) => Some(method),
            Call::OtherUnary => None,
        };
        let limit = self
            .fleet
            .plan()
            .map_or(usize::MAX, |plan| plan.policy().max_message_bytes);
        let bytes = match read_body(body, limit).await {
            Ok(bytes) => bytes,
            Err(refusal) => return refusal.response(),
        };
        match grpc::check_unary_framing(&bytes) {
            Err(refusal) => return refusal.response(),
            // Only a gRPC server can read it: the gateway's.
            Ok(Framing::Opaque) => return self.to_gateway(parts, Outgoing::Buffered(Some(bytes))).await,
            Ok(Framing::Readable) => {}
        }
        let encoding = parts.headers.get("grpc-encoding").map(HeaderValue::as_bytes);
        // Every call, routed or the gateway's, is refused here in Triton's words when its
        // message does not inflate, and read as Triton reads it.
        let reading = match compression::readable(&bytes, encoding, limit) {
            Ok(reading) => reading,
            Err(refusal) => return refusal.response(),
        };
        let bytes = compression::as_triton_reads(bytes, encoding);
        match routed {
            Some(method) => self.to_backend(method, parts, bytes, &reading).await,
            None => self.to_gateway(parts, Outgoing::Buffered(Some(bytes))).await,
        }
    }

    /// A routed call: to the backends of its route, or handed to the gateway when no route
    /// covers it.
    /// `reading`: the request as the edge reads it (`bytes` inflated, when compressed).
    async fn to_backend(
        &self,
        method: &'static str,
        parts: Parts,
        bytes: Bytes,
        reading: &Bytes,
    ) -> Response<ObservedBody> {
        let Some(plan) = self.fleet.plan() else {
            return self.to_gateway(parts, Outgoing::Buffered(Some(bytes))).await;
        };
        let Some((model, spelled)) = wire::model_key(reading) else {
            return grpc::trailers_only(code::INTERNAL, grpc::UNPARSABLE);
        };
        // Known by the number Triton reads ("01" is version 1); a version Triton cannot read
        // is the gateway's to refuse, in Triton's words.
        let Some(canonical) = version::canonical(spelled) else {
            return self.to_gateway(parts, Outgoing::Buffered(Some(bytes.clone()))).await;
        };
        let facts = if method == "ModelInfer" {
            wire::infer_facts(reading)
        } else {
            wire::InferFacts::default()
        };
        if facts.shared_memory {
            // The client's regions are the gateway's: it puts the tensors inline and sends
            // the call back through this port.
            return self.to_gateway(parts, Outgoing::Buffered(Some(bytes))).await;
        }
        let sequence = facts.sequence;
        let started = Instant::now();
        let target = match self.target(&plan, &parts, reading, model, spelled, &canonical, sequence.as_ref()) {
            Ok(target) => target,
            Err(refusal) => return refusal.response(),
        };
        let (model, version) = (target.model, target.version);
        let Some(route) = plan.route(model, version) else {
            let bytes = target.rewrite(reading, None).unwrap_or(bytes);
            return self.to_gateway(parts, Outgoing::Buffered(Some(bytes))).await;
        };
        let bytes = target.rewrite(reading, route.name_version.as_deref()).unwrap_or(bytes);
        let stamp = target.stamp.clone().unwrap_or_else(|| route.stamp.clone());
        let route_call = target.route_call(&self.shared.metrics, started, "CANCELLED");
        let policy = plan.policy();
        // Load shedding: refused at once, counted, never queued.
        let Some(admitted) = self
            .shedder
            .try_enter(model, policy.max_in_flight, policy.max_in_flight_per_model)
        else {
            let metrics = &self.shared.metrics;
            metrics.shed.with_label_values(&[model]).inc();
            metrics.observe(method, model, version, "", "RESOURCE_EXHAUSTED", 0.0);
            let message = format!("triton-gateway is at capacity for model '{model}': too many requests in flight");
            return grpc::trailers_only(code::RESOURCE_EXHAUSTED, &message);
        };
        let now = Instant::now();
        self.fleet.budget.on_request(now);
        let deadline = parts
            .headers
            .get("grpc-timeout")
            .and_then(|value| grpc::parse_timeout(value.as_bytes()))
            .and_then(|timeout| now.checked_add(timeout));
        let call = RoutedCall {
            plan: plan.clone(),
            route: route.clone(),
            method,
            model,
            parts,
            bytes: bytes.clone(),
            deadline,
            sequence,
        };
        let (mut head, body) = self.run(&call, route).await.into_parts();
        let mut body = body.holding(admitted);
        if let Some(status) = head.headers.get("grpc-status") {
            // Trailers-only: the status and the stamp go in the headers.
            let code = code_name(Some(status.as_bytes()));
            stamp.apply(&mut head.headers);
            if let Some(route_call) = route_call {
                route_call.finish(code, message_of(&head.headers));
            }
            return Response::from_parts(head, body);
        }
        if let (Some(shadow), None) = (target.shadow, &call.sequence) {
            if method == "ModelInfer" {
                let encoding = head.headers.get("grpc-encoding").cloned();
                if let Some(tee) = self.mirror(&call, &target, shadow, reading, encoding) {
                    body = body.teeing(tee);
                }
            }
        }
        Response::from_parts(head, body.stamped(stamp, route_call))
    }

    /// Sends a copy of the call to the route's shadow variant, for its share of the calls and
    /// within the shadow budget; the tee hands it the primary's answer to compare with.
    fn mirror(
        &self,
        call: &RoutedCall<'_>,
        target: &Target<'_>,
        shadow: &Shadow,
        reading: &[u8],
        encoding: Option<HeaderValue>,
    ) -> Option<Tee> {
        let primary = self.start_shadow(&call.plan, target, shadow, reading, &call.parts)?;
        Some(shadow::Tee::new(
            primary,
            encoding,
            call.plan.policy().max_message_bytes,
        ))
    }

    /// A shadow copy of `reading` (a plain ModelInferRequest frame) on its way, for the
    /// route's share of the calls and within the shadow budget: the sender takes the
    /// primary's answer (a gRPC frame of a ModelInferResponse) when it is OK.
    pub(crate) fn start_shadow(
        &self,
        plan: &Arc<Plan>,
        target: &Target<'_>,
        shadow: &Shadow,
        reading: &[u8],
        parts: &Parts,
    ) -> Option<shadow::PrimarySender> {
        // 53 random bits as a fraction in [0, 1).
        let draw = (self.fleet.draw() >> 11) as f64 / (1u64 << 53) as f64;
        if draw >= shadow.fraction {
            return None;
        }
        let (route, _) = target.variant.clone()?;
        let permit = match self.shadows.try_reserve(shadow, reading.len()) {
            Ok(permit) => permit,
            Err(reason) => {
                self.shared
                    .metrics
                    .shadow
                    .skipped
                    .with_label_values(&[&*route, &*shadow.target.name, reason])
                    .inc();
                return None;
            }
        };
        let (sender, primary) = tokio::sync::oneshot::channel();
        let mut parts = copy_parts(parts);
        // The copy is a unary ModelInfer (a stream's message too), plain, on its own clock.
        parts.uri = Uri::from_static(INFER_PATH);
        parts.headers.remove("grpc-timeout");
        parts.headers.remove("grpc-encoding");
        let job = shadow::Job {
            client: self.backends.clone(),
            scheme: self.backend_scheme,
            fleet: self.fleet.clone(),
            plan: plan.clone(),
            metrics: self.shared.metrics.clone(),
            shadows: self.shadows.clone(),
            permit,
            route,
            shadow: shadow.clone(),
            parts,
            bytes: shadow::shadow_request(reading, target.client_model, shadow),
            primary,
            request_id: wire::request_id(reading).to_string(),
        };
        tokio::spawn(job.run());
        Some(sender)
    }

    /// Where a request goes: its traffic route's variant when one covers its model name, else
    /// the model and version it names. A forced variant the route lacks is INVALID_ARGUMENT.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn target<'p>(
        &self,
        plan: &'p Plan,
        parts: &Parts,
        reading: &[u8],
        model: &'p str,
        spelled: &str,
        canonical: &'p str,
        sequence: Option<&wire::Sequence>,
    ) -> Result<Target<'p>, Refusal> {
        let plain = Target {
            model,
            version: canonical,
            rename: None,
            name_version: None,
            spelled_empty: spelled.is_empty(),
            stamp: None,
            variant: None,
            target_names: None,
            shadow: None,
            client_model: model,
        };
        let Some(traffic) = plan.traffic(model) else {
            return Ok(plain);
        };
        let request = traffic::Request {
            headers: &parts.headers,
            frame: reading,
            version: canonical,
            sequence_id: sequence.map(|s| s.id.as_str()),
        };
        match traffic.route.select(&request, || self.fleet.draw()) {
            Selected::UnknownVariant(name) => Err(Refusal::new(
                code::INVALID_ARGUMENT,
                format!(
                    "route '{model}' has no variant '{name}' (variants: {})",
                    traffic.route.variant_names()
                ),
            )),
            Selected::Versioned { model: target } => Ok(Target {
                model: target,
                rename: (target != model).then_some(target),
                variant: Some((traffic.route.name.clone(), traffic.no_variant.clone())),
                target_names: Some((traffic.route.name.clone(), traffic.no_variant.clone())),
                ..plain
            }),
            Selected::Variant(chosen) => {
                let variant = match sequence {
                    Some(sequence) => {
                        self.fleet
                            .sequence_variant(&traffic.route, chosen, sequence, tokio::time::Instant::now())
                    }
                    None => chosen,
                };
                Ok(Target {
                    model: &variant.model,
                    version: &variant.version,
                    rename: (*variant.model != *model).then_some(&*variant.model),
                    name_version: (!variant.version.is_empty()).then_some(&*variant.version),
                    spelled_empty: true,
                    stamp: Some(traffic.stamp(variant)),
                    variant: Some((traffic.route.name.clone(), variant.name.clone())),
                    target_names: Some((variant.model.clone(), variant.version.clone())),
                    // Never mirrored to the variant that answers it (the shadow target named
                    // like it): during a rollout's live steps the shadow is the baseline,
                    // comparing the candidate's answers only.
                    shadow: traffic
                        .route
                        .shadow
                        .as_ref()
                        .filter(|shadow| shadow.target.name != variant.name),
                    client_model: model,
                })
            }
        }
    }

    /// Tries the call on the route's backends: a retry on another backend after a backend
    /// fault and a hedge after the model's usual latency, each within the retry budget, the
    /// attempt limit and the client's deadline; the first answer wins and the other try is
    /// cancelled.
    async fn run(&self, call: &RoutedCall<'_>, route: &Route) -> Response<ObservedBody> {
        let policy = call.plan.policy();
        let now = Instant::now();
        let mut tried: Vec<Arc<str>> = Vec::with_capacity(2);
        let Some(first) = self.choose(call, route, &tried, now) else {
            return self.no_backend(call, &tried).await;
        };
        // A request of a sequence is sent once: its state lives on the backend it reached,
        // so it is neither hedged nor retried, and it waits as long as the client does.
        let per_try = match call.sequence {
            Some(_) => None,
            // Metadata, config and readiness come from the server, not the model: a live
            // Triton answers them in milliseconds, whatever its models take.
            None if call.method != "ModelInfer" => {
                Some(METADATA_PER_TRY.clamp(policy.per_try.floor, policy.per_try.cap))
            }
            None => Some(
                policy
                    .per_try_overrides
                    .get(call.model)
                    .copied()
                    .unwrap_or_else(|| policy.per_try.per_try(&route.digest, now)),
            ),
        };
        let hedge_delay = match (&call.sequence, policy.hedging) {
            (None, Some(hedging)) if call.method == "ModelInfer" => hedging.delay(&route.digest, now),
            _ => None,
        };
        let mut hedge_at = hedge_delay.map(|delay| now + delay);
        let mut tries = FuturesUnordered::new();
        tried.push(first.target.backend.name.clone());
        tries.push(self.attempt(call, first, per_try));
        let mut made = 1u32;
        let mut lost = 0u32;
        let max_attempts = policy.retry.max_attempts;
        loop {
            tokio::select! {
                Some(outcome) = tries.next() => {
                    let failure = match outcome {
                        Tried::Answer(response) => return response,
                        Tried::Failed(failure) => failure,
                    };
                    lost += u32::from(failure.lost);
                    let now = Instant::now();
                    let may_retry = failure.scope.is_fault()
                        && call.sequence.is_none()
                        && made < max_attempts
                        && lost < MAX_LOST_TRIES
                        && call.deadline.is_none_or(|deadline| now < deadline);
                    if may_retry {
                        if let Some(choice) = self.spend_extra_try(call, route, &tried, now) {
                            self.shared
                                .metrics
                                .retries
                                .with_label_values(&[&*failure.backend, failure.code])
                                .inc();
                            tried.push(choice.target.backend.name.clone());
                            tries.push(self.attempt(call, choice, per_try));
                            made += 1;
                            // The retry is the fresh try: no hedge on top of it.
                            hedge_at = None;
                        }
                    }
                    if tries.is_empty() {
                        return self.give_up(call, failure, &tried).await;
                    }
                }
                _ = sleep_until(hedge_at), if hedge_at.is_some() && tries.len() == 1 && made < max_attempts => {
                    hedge_at = None;
                    if let Some(choice) = self.spend_extra_try(call, route, &tried, Instant::now()) {
                        self.shared.metrics.hedges.with_label_values(&[call.model]).inc();
                        tried.push(choice.target.backend.name.clone());
                        tries.push(self.attempt(call, choice, per_try));
                        made += 1;
                    }
                }
                _ = sleep_until(call.deadline), if call.deadline.is_some() => {
                    return grpc::trailers_only(DEADLINE_EXCEEDED, "Deadline Exceeded");
                }
            }
        }
    }

    /// Another backend for a retry or a hedge, when the budget allows one.
    fn spend_extra_try(
        &self,
        call: &RoutedCall<'_>,
        route: &Route,
        tried: &[Arc<str>],
        now: Instant,
    ) -> Option<Choice> {
        // Ask for a backend first: a try that has nowhere to go spends no budget.
        let choice = self.choose(call, route, tried, now)?;
        if !self.fleet.budget.try_retry(now) {
            self.shared.metrics.retry_budget_exhausted.inc();
            return None;
        }
        Some(choice)
    }

    fn choose(&self, call: &RoutedCall<'_>, route: &Route, tried: &[Arc<str>], now: Instant) -> Option<Choice> {
        match &call.sequence {
            Some(sequence) => {
                // Its first try only: a sequence is never sent to a second backend.
                if !tried.is_empty() {
                    return None;
                }
                let choice = self
                    .fleet
                    .choose_for_sequence(call.model, route, &sequence.id, sequence.start, now);
                if sequence.end {
                    self.fleet.sequences().end(call.model, &sequence.id);
                }
                choice
            }
            None => self.fleet.choose(route, call.plan.policy(), tried, now),
        }
    }

    /// One try on the chosen backend, bounded by the per-try timeout.
    async fn attempt(&self, call: &RoutedCall<'_>, choice: Choice, per_try: Option<Duration>) -> Tried {
        let backend = choice.target.backend.clone();
        let attempt = Attempt::new(
            self.shared.clone(),
            call.plan.clone(),
            call.route.clone(),
            choice,
            call.method,
        );
        let mut parts = copy_parts(&call.parts);
        // The edge keeps the client's deadline itself: Triton cancelling a call on its expiry
        // can crash it (see backend_client), and a call the edge gives up on is read to its
        // end instead.
        parts.headers.remove("grpc-timeout");
        let request = Request::from_parts(parts, Outgoing::Buffered(Some(call.bytes.clone())));
        let sent = self.send_to_backend(request, &backend.address);
        let answer = match per_try {
            Some(limit) => match tokio::time::timeout(limit, sent).await {
                Ok(answer) => answer,
                Err(_) => Err(NoAnswer {
                    message: format!(
                        "backend {} did not answer within the per-try timeout of {} ms",
                        backend.name,
                        limit.as_millis()
                    ),
                    lost: false,
                }),
            },
            None => sent.await,
        };
        let response = match answer {
            Ok(response) => response,
            Err(NoAnswer { message, lost }) => {
                // No answer at all: it died, refused the connection or passed the per-try
                // timeout. A server fault.
                let scope = attempt.finish("UNAVAILABLE", "");
                return Tried::Failed(Failure {
                    backend: backend.name.clone(),
                    code: "UNAVAILABLE",
                    scope,
                    answer: None,
                    message,
                    lost,
                });
            }
        };
        match response.headers().get("grpc-status").map(|status| status.as_bytes()) {
            // Trailers-only: the status is in the headers.
            Some(status) if status != b"0" => {
                let code = code_name(Some(status));
                let message = message_of(response.headers()).to_string();
                let scope = attempt.finish(code, &message);
                Tried::Failed(Failure {
                    backend: backend.name.clone(),
                    code,
                    scope,
                    answer: Some(response),
                    message,
                    lost: false,
                })
            }
            Some(_) => {
                attempt.finish("OK", "");
                Tried::Answer(response.map(|body| ObservedBody::from(Upstream::Backend(body))))
            }
            None => Tried::Answer(response.map(|body| ObservedBody::settling(Upstream::Backend(body), attempt))),
        }
    }

    /// No try is left: the fallback answers a backend fault when it serves the model (never a
    /// sequence's request: its state is on a backend); otherwise the client gets the last
    /// backend's own answer.
    async fn give_up(&self, call: &RoutedCall<'_>, failure: Failure, tried: &[Arc<str>]) -> Response<ObservedBody> {
        if failure.scope.is_fault() && call.sequence.is_none() && call.plan.fallback_serves(call.model) {
            return self.hand_over(call, tried).await;
        }
        match failure.answer {
            Some(answer) => answer.map(|body| ObservedBody::from(Upstream::Backend(body))),
            None => grpc::trailers_only(code::UNAVAILABLE, &failure.message),
        }
    }

    /// The route has backends but none may take the call now (breakers open, trials taken).
    async fn no_backend(&self, call: &RoutedCall<'_>, tried: &[Arc<str>]) -> Response<ObservedBody> {
        if call.sequence.is_none() && call.plan.fallback_serves(call.model) {
            return self.hand_over(call, tried).await;
        }
        let message = format!(
            "no backend can serve model '{}' now (down, drained or ejected)",
            call.model
        );
        grpc::trailers_only(code::UNAVAILABLE, &message)
    }

    /// To the gateway, marked with the backends that failed it: the gateway's local fallback
    /// answers.
    async fn hand_over(&self, call: &RoutedCall<'_>, tried: &[Arc<str>]) -> Response<ObservedBody> {
        let mut parts = copy_parts(&call.parts);
        let names = tried.iter().map(|name| &**name).collect::<Vec<_>>().join(",");
        if let Ok(value) = HeaderValue::from_str(&names) {
            parts.headers.insert(TRIED_HEADER, value);
        }
        self.to_gateway(parts, Outgoing::Buffered(Some(call.bytes.clone())))
            .await
    }

    async fn send_to_backend(
        &self,
        request: Request<Outgoing>,
        address: &str,
    ) -> Result<Response<BackendBody>, NoAnswer> {
        let request = with_address(request, self.backend_scheme, address).map_err(|refusal| NoAnswer {
            message: refusal.message,
            lost: false,
        })?;
        self.backends.request(request).await.map_err(|error| NoAnswer {
            message: format!("backend {address} did not answer: {error}"),
            lost: backend_client::lost_mid_call(&error),
        })
    }

    async fn to_gateway(&self, parts: Parts, body: Outgoing) -> Response<ObservedBody> {
        let request = match with_authority(Request::from_parts(parts, body), GATEWAY_AUTHORITY) {
            Ok(request) => request,
            Err(refusal) => return refusal.response(),
        };
        match self.gateway.request(request).await {
            Ok(response) => response.map(|body| ObservedBody::from(Upstream::Answer(body))),
            Err(error) => {
                let message = format!("triton-gateway is not reachable: {error}");
                grpc::trailers_only(code::UNAVAILABLE, &message)
            }
        }
    }
}

impl Controlled for Edge {
    fn apply(&self, snapshot: proto::Snapshot) -> Result<(), String> {
        let applied = Snapshot::from_proto(snapshot).and_then(|snapshot| {
            let version = snapshot.version;
            self.fleet.apply(snapshot).map(|()| version)
        });
        match applied {
            Ok(version) => {
                self.shared
                    .metrics
                    .snapshot_version
                    .set(i64::try_from(version).unwrap_or(i64::MAX));
                self.ready.send_replace(true);
                Ok(())
            }
            Err(reason) => {
                self.shared.metrics.snapshots_refused.inc();
                Err(reason)
            }
        }
    }

    fn serving_version(&self) -> u64 {
        self.fleet.serving_version()
    }

    fn report(&self) -> proto::EdgeReport {
        report::build(&self.fleet, &self.shared.outcomes, &self.shared.metrics)
    }

    fn metrics(&self) -> String {
        let metrics = &self.shared.metrics;
        let now = Instant::now();
        for backend in self.fleet.backends() {
            let open = backend.breaker.state(now) != crate::policy::breaker::BreakerState::Closed;
            metrics
                .backend_breaker_open
                .with_label_values(&[&*backend.name])
                .set(i64::from(open));
        }
        for (backend, model, breaker) in self.fleet.model_breakers() {
            let open = breaker.state(now) != crate::policy::breaker::BreakerState::Closed;
            metrics
                .model_breaker_open
                .with_label_values(&[&*backend, &model])
                .set(i64::from(open));
        }
        metrics.render()
    }
}

/// The head of a stream's answer; its messages and status follow in the body.
/// A stream's answer head, as Triton writes it (the encodings it decodes included: the edge
/// answers for several backends, so it writes their head itself).
fn stream_response(body: Upstream) -> Response<ObservedBody> {
    let mut response = Response::new(ObservedBody::from(body));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert(
        "grpc-accept-encoding",
        HeaderValue::from_static("identity, deflate, gzip"),
    );
    response
}

/// Sleeps until `at`; never wakes when there is none (the select! arm is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How a call is carried, by its path.
#[derive(Debug, PartialEq, Eq)]
enum Call {
    /// A unary call the edge routes by model (the method name).
    Routed(&'static str),
    /// Another unary call of the inference service: checked, then handed to the gateway.
    OtherUnary,
    /// ModelStreamInfer: every message routed on its own (see `stream`).
    Stream,
    /// A call of another service: passed through to the gateway as it arrives.
    Streamed,
}

fn classify(path: &str) -> Call {
    let Some(method) = path.strip_prefix(SERVICE_PREFIX) else {
        return Call::Streamed;
    };
    if STREAMING_METHODS.contains(&method) {
        return Call::Stream;
    }
    ROUTED_METHODS
        .iter()
        .find(|routed| **routed == method)
        .map_or(Call::OtherUnary, |routed| Call::Routed(routed))
}

/// The request with its URI pointed at `authority` (the path as the client sent it), plain.
pub fn with_authority<B>(request: Request<B>, authority: &str) -> Result<Request<B>, Refusal> {
    with_address(request, "http", authority)
}

/// The request with its URI pointed at `scheme://authority` ("https": over TLS).
pub fn with_address<B>(request: Request<B>, scheme: &str, authority: &str) -> Result<Request<B>, Refusal> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|error| Refusal::new(code::INTERNAL, format!("bad upstream address {authority}: {error}")))?;
    Ok(Request::from_parts(parts, body))
}

/// A unary request body, refused as soon as the message grows past `max_message_bytes` with
/// RESOURCE_EXHAUSTED, in the words gRPC servers use: no client can make the edge buffer
/// without bound.
async fn read_body(mut body: Incoming, max_message_bytes: usize) -> Result<Bytes, Refusal> {
    let limit = max_message_bytes.saturating_add(5);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| Refusal::new(code::INTERNAL, format!("request body: {error}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue; // request trailers carry nothing a unary call needs
        };
        total += chunk.len();
        if total > limit {
            let message = format!(
                "Received message larger than max ({} vs. {max_message_bytes})",
                total.saturating_sub(5)
            );
            return Err(Refusal::new(code::RESOURCE_EXHAUSTED, message));
        }
        chunks.push(chunk);
    }
    // One chunk (the usual case) is passed on without a copy.
    if chunks.len() <= 1 {
        return Ok(chunks.pop().unwrap_or_default());
    }
    let mut collected = Vec::with_capacity(total);
    for chunk in &chunks {
        collected.extend_from_slice(chunk);
    }
    Ok(Bytes::from(collected))
}

/// The head of a request, to send it a second time.
pub fn copy_parts(parts: &Parts) -> Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::{classify, Call};

    #[test]
    fn unary_methods_of_the_inference_service_only() {
        assert_eq!(
            classify("/inference.GRPCInferenceService/ModelInfer"),
            Call::Routed("ModelInfer")
        );
        assert_eq!(
            classify("/inference.GRPCInferenceService/RepositoryIndex"),
            Call::OtherUnary
        );
        assert_eq!(
            classify("/inference.GRPCInferenceService/ModelStreamInfer"),
            Call::Stream
        );
        assert_eq!(classify("/grpc.health.v1.Health/Check"), Call::Streamed);
    }
}
