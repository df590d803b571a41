//! ModelStreamInfer in the edge: every message of a client's stream is routed on its own.
//!
//! One session task per client stream reads its messages, routes each by its own model name
//! and version (a stream may carry several models), keeps a request of a sequence on the
//! backend that holds the sequence (the same pins as unary calls), and sends it on that
//! backend's upstream stream, opened on first use. The answers of every upstream are merged
//! into the client's stream as they come, so a decoupled model's zero or many responses pass
//! through unchanged. A message no route covers is handed to the gateway as a unary
//! ModelInfer and its answer wrapped into the stream.
//!
//! A backend fault ends only that backend's upstream: each request still waiting there gets
//! an error message in the stream (as Triton reports a failed request), its breakers learn of
//! it, and the client's stream goes on. The client's half-close half-closes every upstream;
//! its cancellation or deadline ends them all.

use crate::attempt::Attempt;
use crate::backend_client;
use crate::body::{Outgoing, Upstream};
use crate::compression;
use crate::grpc::{self, code};
use crate::observed::{code_name, message_of, RouteCall};
use crate::proxy::{copy_parts, with_address, with_authority, Edge, GATEWAY_AUTHORITY, MAX_LOST_TRIES, TRIED_HEADER};
use crate::shadow::PrimarySender;
use crate::shedding::Admitted;
use crate::stamp::Stamp;
use crate::{version, wire};
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Messages queued towards one backend before the client's stream is read no further.
const UPSTREAM_QUEUE: usize = 32;
/// Answers queued towards the client before the backends' streams are read no further.
const CLIENT_QUEUE: usize = 64;
/// Frames waiting for the client inside the session (beyond the channel above).
const MAX_OUTBOUND: usize = 64;
/// Requests of one stream waiting for their answer (or answers held for their turn) before
/// the client's stream is read no further.
const MAX_UNANSWERED: usize = 1024;
const PATH_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// What the session hears from the tasks reading the backends and the gateway.
enum Event {
    /// One answer message of an upstream stream (its gRPC frame).
    Answer { upstream: u64, frame: Bytes },
    /// An upstream stream ended: "OK" when the backend closed it after its last answer.
    Ended {
        upstream: u64,
        code: &'static str,
        message: String,
        /// Its connection broke (the backend may have died of a message on it).
        broke: bool,
    },
    /// The gateway's answer to a message handed over, as a stream frame, for its place in
    /// the answers' order.
    HandedOver { slot: Option<u64>, frame: Bytes },
}

/// One request message of the client's stream, as the edge routes it (and routes it again
/// after a backend fault).
struct StreamRequest {
    /// The client's bytes, forwarded unchanged.
    frame: Bytes,
    model: String,
    version: String,
    id: String,
    sequence: Option<wire::Sequence>,
    /// Backends that failed it already.
    tried: Vec<Arc<str>>,
    /// Of those, the ones whose connection broke under it.
    lost: u32,
    /// Its place in the order of the client's answers (None: a decoupled model's answers
    /// pass through as they come).
    slot: Option<u64>,
    /// A traffic route's variant: its answer is stamped (in its parameters) and counted.
    stamp: Option<Arc<Stamp>>,
    route_call: Option<RouteCall>,
    /// Takes its answer for the comparison with its shadow copy.
    shadow: Option<PrimarySender>,
}

impl StreamRequest {
    /// A decoupled model's request (zero, one or many answers, in no set order): the only
    /// requests without a place in the answers' order.
    fn decoupled(&self) -> bool {
        self.slot.is_none()
    }
}

/// A request sent to a backend and not answered yet (a decoupled model's: not answered for
/// the last time yet).
struct Pending {
    request: StreamRequest,
    /// None once settled: a decoupled model's request at its first answer.
    attempt: Option<Attempt>,
    _admitted: Admitted,
    /// When it counts as lost on a hung backend (None: a sequence's request, which waits as
    /// long as the client does, or a decoupled model's, for which silence is an answer).
    expires: Option<Instant>,
}

/// One backend's stream for this client stream.
struct UpstreamStream {
    id: u64,
    backend: Arc<str>,
    /// None once the client half-closed and every message went out (the upstream is
    /// half-closed with it).
    sender: Option<mpsc::Sender<Bytes>>,
    /// Messages for it while its queue was full (the client is read no further meanwhile).
    backlog: VecDeque<Bytes>,
    pending: VecDeque<Pending>,
    reader: JoinHandle<()>,
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        // Dropping the response body resets the backend's stream: it stops working for a
        // client that is gone.
        self.reader.abort();
    }
}

/// Answers one ModelStreamInfer call; returns at once, the session runs on its own task.
pub fn answer(edge: Arc<Edge>, parts: Parts, body: Incoming) -> Upstream {
    let (out, frames) = mpsc::channel(CLIENT_QUEUE);
    let deadline = parts
        .headers
        .get("grpc-timeout")
        .and_then(|value| grpc::parse_timeout(value.as_bytes()))
        .and_then(|timeout| Instant::now().checked_add(timeout));
    let (events_in, events) = mpsc::channel(CLIENT_QUEUE);
    let session = Session {
        edge,
        parts,
        deadline,
        out,
        outbound: VecDeque::new(),
        events_in,
        upstreams: HashMap::new(),
        next_upstream: 0,
        handed_over: 0,
        reading: true,
        decoder: Deframer::default(),
        order: Order::default(),
    };
    tokio::spawn(session.run(body, events));
    Upstream::Merged(frames)
}

struct Session {
    edge: Arc<Edge>,
    parts: Parts,
    deadline: Option<Instant>,
    out: mpsc::Sender<Frame<Bytes>>,
    /// Frames for the client not yet in `out` (the session never waits on a slow client with
    /// events unread: it stops reading instead).
    outbound: VecDeque<Frame<Bytes>>,
    /// Where reader tasks send their events (the session reads them in `serve`).
    events_in: mpsc::Sender<Event>,
    upstreams: HashMap<Arc<str>, UpstreamStream>,
    next_upstream: u64,
    /// Messages handed to the gateway whose answer has not come back.
    handed_over: usize,
    /// The client has not half-closed.
    reading: bool,
    decoder: Deframer,
    order: Order,
}

/// How the session ended.
enum End {
    /// Every request was answered after the client half-closed.
    Done,
    /// The edge ends the stream with a status.
    Status(u32, String),
    /// The client went away: nothing left to tell it.
    Gone,
}

impl Session {
    async fn run(mut self, mut body: Incoming, mut events: mpsc::Receiver<Event>) {
        let end = self.serve(&mut body, &mut events).await;
        let trailers = match end {
            End::Gone => return,
            End::Done => status_trailers(0, ""),
            End::Status(code, message) => status_trailers(code, &message),
        };
        self.outbound.push_back(Frame::trailers(trailers));
        // Whatever the client has not taken yet, then the status; a client gone meanwhile
        // ends it.
        while let Some(frame) = self.outbound.pop_front() {
            if self.out.send(frame).await.is_err() {
                return;
            }
        }
    }

    async fn serve(&mut self, body: &mut Incoming, events: &mut mpsc::Receiver<Event>) -> End {
        // A sender of its own, so the select! below can borrow it beside `self`.
        let out = self.out.clone();
        loop {
            self.flush();
            if !self.reading && self.upstreams.is_empty() && self.handed_over == 0 {
                return End::Done;
            }
            let room = self.outbound.len() < MAX_OUTBOUND;
            let can_read = self.reading && room && self.upstreams_have_room() && self.order.len() < MAX_UNANSWERED;
            let expiry = self.next_expiry();
            tokio::select! {
                permit = out.reserve(), if !self.outbound.is_empty() => {
                    let Ok(permit) = permit else { return End::Gone };
                    if let Some(frame) = self.outbound.pop_front() {
                        permit.send(frame);
                    }
                }
                event = events.recv(), if room => {
                    // The session holds a sender itself: recv never ends.
                    if let Some(event) = event {
                        self.on_event(event);
                    }
                }
                frame = body.frame(), if can_read => {
                    match frame {
                        None => self.half_close(),
                        Some(Err(_)) => return End::Gone,
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                if let Err(refusal) = self.on_data(data) {
                                    return End::Status(refusal.code, refusal.message);
                                }
                            }
                        }
                    }
                }
                _ = sleep_until(self.deadline), if self.deadline.is_some() => {
                    return End::Status(DEADLINE_EXCEEDED, "Deadline Exceeded".to_string());
                }
                _ = sleep_until(expiry), if expiry.is_some() => self.expire(Instant::now()),
                _ = out.closed() => return End::Gone,
            }
        }
    }

    fn upstreams_have_room(&self) -> bool {
        self.upstreams
            .values()
            .all(|upstream| upstream.backlog.is_empty() && upstream.sender.as_ref().is_none_or(|s| s.capacity() > 0))
    }

    fn half_close(&mut self) {
        self.reading = false;
        self.flush();
    }

    /// Moves backlogged messages into their upstream's queue as it has room, and half-closes
    /// every upstream with nothing left to send once the client half-closed (also one opened
    /// afterwards for a request sent again). Its backend then ends the stream after its last
    /// answer. A backend that takes no more messages answers (or times out) the ones it has,
    /// which wakes the session to call this again.
    fn flush(&mut self) {
        for upstream in self.upstreams.values_mut() {
            if let Some(sender) = &upstream.sender {
                while let Some(frame) = upstream.backlog.pop_front() {
                    match sender.try_send(frame) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(frame)) => {
                            upstream.backlog.push_front(frame);
                            break;
                        }
                        // Its stream ended: the end event fails what is pending there.
                        Err(mpsc::error::TrySendError::Closed(_)) => upstream.backlog.clear(),
                    }
                }
            }
            if !self.reading && upstream.backlog.is_empty() {
                upstream.sender = None;
            }
        }
    }

    /// Client bytes: route every whole message in them.
    fn on_data(&mut self, data: Bytes) -> Result<(), grpc::Refusal> {
        let limit = self
            .edge
            .fleet
            .plan()
            .map_or(usize::MAX, |plan| plan.policy().max_message_bytes);
        self.decoder.push(data);
        while let Some(frame) = self.decoder.next(limit)? {
            let encoding = self.parts.headers.get("grpc-encoding").map(HeaderValue::as_bytes);
            let reading = compression::readable(&frame, encoding, limit)?;
            if wire::model_key(&reading).is_none() {
                // Triton's gRPC server takes a message it cannot parse for the end of the
                // client's stream: it answers what came before, reads nothing after, and
                // ends the stream OK. So does the edge.
                self.half_close();
                self.decoder = Deframer::default();
                return Ok(());
            }
            self.route(frame, &reading);
        }
        Ok(())
    }

    /// One request message: to a backend, to the gateway, or answered with an error here.
    /// `reading`: the message as the edge reads it (`frame` inflated, when compressed).
    fn route(&mut self, frame: Bytes, reading: &Bytes) {
        let Some((model, version)) = wire::model_key(reading) else {
            return; // `on_data` ends the stream at a message no one can read
        };
        // Routes know a version as Triton reads it ("01" is 1); one Triton cannot read is
        // refused by the gateway in Triton's words.
        let Some(canonical) = version::canonical(version) else {
            let slot = Some(self.order.reserve());
            return self.hand_over(frame, wire::request_id(reading).to_string(), &[], slot);
        };
        let facts = wire::infer_facts(reading);
        if facts.shared_memory {
            // The client's regions are the gateway's (see `Edge::handle`).
            let slot = Some(self.order.reserve());
            return self.hand_over(frame, wire::request_id(reading).to_string(), &[], slot);
        }
        let sequence = facts.sequence;
        let Some(plan) = self.edge.fleet.plan() else {
            let slot = Some(self.order.reserve());
            return self.hand_over(frame, wire::request_id(reading).to_string(), &[], slot);
        };
        let target = match self.edge.target(
            &plan,
            &self.parts,
            reading,
            model,
            version,
            &canonical,
            sequence.as_ref(),
        ) {
            Ok(target) => target,
            Err(refusal) => {
                let slot = Some(self.order.reserve());
                return self.answer_error(&refusal.message, wire::request_id(reading), slot);
            }
        };
        let route = plan.route(target.model, target.version);
        let unordered = route.is_some_and(|route| route.unordered);
        // A traffic route's variant, or mid-rollout the fleet's latest (see `Route`).
        let named = route.and_then(|route| route.name_version.as_deref());
        let frame = target.rewrite(reading, named).unwrap_or(frame);
        let (model, canonical) = (target.model.to_string(), target.version.to_string());
        // A message the edge answers with an error (or cannot deliver) counts as UNAVAILABLE.
        let route_call = target.route_call(&self.edge.shared.metrics, Instant::now(), "UNAVAILABLE");
        let stamp = target.variant_stamp();
        // Mirrored like a unary call (never a sequence's, nor a decoupled model's).
        let shadow = match (target.shadow, &sequence, unordered) {
            (Some(shadow), None, false) => self.edge.start_shadow(&plan, &target, shadow, reading, &self.parts),
            _ => None,
        };
        let slot = (!unordered).then(|| self.order.reserve());
        let request = StreamRequest {
            slot,
            model,
            version: canonical,
            id: wire::request_id(reading).to_string(),
            sequence,
            frame,
            tried: Vec::new(),
            lost: 0,
            stamp,
            route_call,
            shadow,
        };
        self.dispatch(request);
    }

    /// A request to the cheaper backend of its route (the pinned one for a sequence's), to the
    /// gateway when no route covers it or no backend may take it and the fallback serves its
    /// model, else answered with an error in the stream.
    fn dispatch(&mut self, request: StreamRequest) {
        let Some(plan) = self.edge.fleet.plan() else {
            return self.hand_over_request(request);
        };
        let Some(route) = plan.route(&request.model, &request.version) else {
            return self.hand_over_request(request);
        };
        let policy = plan.policy();
        let model = request.model.as_str();
        let Some(admitted) = self
            .edge
            .shedder
            .try_enter(model, policy.max_in_flight, policy.max_in_flight_per_model)
        else {
            let metrics = &self.edge.shared.metrics;
            metrics.shed.with_label_values(&[model]).inc();
            metrics.observe(
                "ModelStreamInfer",
                model,
                &request.version,
                "",
                "RESOURCE_EXHAUSTED",
                0.0,
            );
            let message = format!("triton-gateway is at capacity for model '{model}': too many requests in flight");
            return self.answer_error(&message, &request.id, request.slot);
        };
        let now = Instant::now();
        let choice = match &request.sequence {
            // A sequence's request goes once, to the backend that holds its state.
            Some(_) if !request.tried.is_empty() => None,
            Some(sequence) => {
                let choice = self
                    .edge
                    .fleet
                    .choose_for_sequence(model, route, &sequence.id, sequence.start, now);
                if sequence.end {
                    self.edge.fleet.sequences().end(model, &sequence.id);
                }
                choice
            }
            None => self.edge.fleet.choose(route, policy, &request.tried, now),
        };
        let Some(choice) = choice else {
            // Breakers have every holder out, or every holder failed it: the fallback answers
            // when it serves the model (never a sequence's request: its state is on a backend).
            if request.sequence.is_none() && plan.fallback_serves(model) {
                return self.hand_over_request(request);
            }
            let message = match request.tried.last() {
                Some(backend) if request.sequence.is_some() => format!(
                    "backend {backend} failed during a sequence; requests of a sequence are not sent to another backend"
                ),
                Some(backend) => format!("backend {backend} failed and no other backend can serve model '{model}' now"),
                None => format!("no backend can serve model '{model}' now (down, drained or ejected)"),
            };
            return self.answer_error(&message, &request.id, request.slot);
        };
        // Zero answers is a decoupled model's valid answer to a request, and Triton sends nothing
        // for it: silence from a backend proves nothing there.
        let expires = match request.sequence {
            Some(_) => None,
            None if request.decoupled() => None,
            None => Some(
                now + policy
                    .per_try_overrides
                    .get(model)
                    .copied()
                    .unwrap_or_else(|| policy.per_try.per_try(&route.digest, now)),
            ),
        };
        let backend = choice.target.backend.clone();
        let attempt = Attempt::new(
            self.edge.shared.clone(),
            plan.clone(),
            route.clone(),
            choice,
            "ModelStreamInfer",
        );
        if !self.upstreams.contains_key(&backend.name) {
            let upstream = self.open(&backend.name, &backend.address);
            self.upstreams.insert(backend.name.clone(), upstream);
        }
        let Some(upstream) = self.upstreams.get_mut(&backend.name) else {
            return;
        };
        let frame = request.frame.clone();
        let queued = match &upstream.sender {
            Some(sender) if upstream.backlog.is_empty() => match sender.try_send(frame) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    upstream.backlog.push_back(frame);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            Some(_) => {
                upstream.backlog.push_back(frame);
                true
            }
            None => false,
        };
        if request.decoupled() {
            release_oldest_decoupled(&mut upstream.pending);
        }
        upstream.pending.push_back(Pending {
            request,
            attempt: Some(attempt),
            _admitted: admitted,
            expires,
        });
        if !queued {
            // Its stream ended a moment ago (the event is still queued): that backend failed.
            let message = format!("backend {} is not answering on this stream", backend.name);
            self.fail_upstream(&backend.name, "UNAVAILABLE", &message, false);
        }
    }

    fn answer_error(&mut self, message: &str, request_id: &str, slot: Option<u64>) {
        self.deliver(slot, wire::stream_error(message, request_id));
    }

    /// An answer for the client: at once, or once every answer before it in order is out.
    fn deliver(&mut self, slot: Option<u64>, frame: Bytes) {
        match slot {
            None => self.outbound.push_back(Frame::data(frame)),
            Some(slot) => {
                self.order.fill(slot, frame);
                while let Some(ready) = self.order.pop_ready() {
                    self.outbound.push_back(Frame::data(ready));
                }
            }
        }
    }

    /// A stream to `backend`, with what is left of the client's deadline; a task reads its
    /// answers into the session's events.
    fn open(&mut self, backend: &Arc<str>, address: &str) -> UpstreamStream {
        self.next_upstream += 1;
        let id = self.next_upstream;
        let (sender, messages) = mpsc::channel(UPSTREAM_QUEUE);
        let mut parts = copy_parts(&self.parts);
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            parts.headers.insert("grpc-timeout", grpc::encode_timeout(left));
        }
        let request = with_address(
            Request::from_parts(parts, Outgoing::Routed(messages)),
            self.edge.backend_scheme,
            address,
        );
        let client = self.edge.backends.clone();
        let events = self.events_in.clone();
        let name = backend.clone();
        let reader = tokio::spawn(async move {
            let ended = match request {
                Err(refusal) => (code_name(None), refusal.message, false),
                Ok(request) => match client.request(request).await {
                    Err(error) => (
                        "UNAVAILABLE",
                        format!("backend {name} did not answer: {error}"),
                        backend_client::stream_connection_broke(&error),
                    ),
                    Ok(response) => read_answers(id, response, &events).await,
                },
            };
            let (code, message, broke) = ended;
            let _ = events
                .send(Event::Ended {
                    upstream: id,
                    code,
                    message,
                    broke,
                })
                .await;
        });
        UpstreamStream {
            id,
            backend: backend.clone(),
            sender: Some(sender),
            backlog: VecDeque::new(),
            pending: VecDeque::new(),
            reader,
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Answer { upstream, mut frame } => {
                let mut slot = None;
                if let Some(stream) = self.upstream_mut(upstream) {
                    // The request it answers: Triton echoes the request's id and names the
                    // model; a decoupled model's later answers find nothing left to settle.
                    let (model, id) = wire::stream_response_key(&frame);
                    let position = stream.pending.iter().position(|pending| {
                        (id.is_empty() || pending.request.id == id)
                            && (model.is_empty() || pending.request.model == model)
                    });
                    if let Some(index) = position {
                        let pending = &mut stream.pending[index];
                        slot = pending.request.slot;
                        let failed = wire::stream_response_failed(&frame);
                        // A decoupled model's request is done at the answer Triton flags as
                        // its last, an error, or its stream's end.
                        let done = !pending.request.decoupled() || failed || wire::stream_response_final(&frame);
                        // The first answer settles the try (a decoupled model's latency is to
                        // its first answer).
                        if let Some(attempt) = pending.attempt.take() {
                            attempt.finish("OK", "");
                            if let (Some(sender), false) = (pending.request.shadow.take(), failed) {
                                if let Some(answer) = wire::stream_infer_response(&frame) {
                                    let _ = sender.send((wire::framed(answer), None));
                                }
                            }
                            if let Some(route_call) = pending.request.route_call.take() {
                                route_call.finish_as(if failed { "ERROR" } else { "OK" }, failed);
                            }
                        }
                        if let Some(stamp) = &pending.request.stamp {
                            frame = stamp.stream_answer(frame);
                        }
                        if done {
                            stream.pending.remove(index);
                        }
                    }
                }
                self.deliver(slot, frame);
            }
            Event::Ended {
                upstream,
                code,
                message,
                broke,
            } => self.on_upstream_end(upstream, code, &message, broke),
            Event::HandedOver { slot, frame } => {
                self.handed_over -= 1;
                self.deliver(slot, frame);
            }
        }
    }

    fn upstream_mut(&mut self, id: u64) -> Option<&mut UpstreamStream> {
        self.upstreams.values_mut().find(|upstream| upstream.id == id)
    }

    /// A backend's stream is over (`code` "OK": the backend closed it after its answers).
    fn on_upstream_end(&mut self, id: u64, code: &'static str, message: &str, broke: bool) {
        let Some(name) = self
            .upstreams
            .iter()
            .find(|(_, upstream)| upstream.id == id)
            .map(|(name, _)| name.clone())
        else {
            return;
        };
        self.fail_upstream(&name, code, message, broke);
    }

    /// Drops a backend's stream; the requests still waiting there failed with it: each is
    /// sent to another backend when it may be (not a sequence's, within the attempt limit
    /// and the retry budget), else answered with an error in the stream.
    /// `broke`: the stream's connection broke under its requests (each counts it: see
    /// `MAX_LOST_TRIES`).
    fn fail_upstream(&mut self, name: &Arc<str>, code: &'static str, message: &str, broke: bool) {
        let Some(mut upstream) = self.upstreams.remove(name) else {
            return;
        };
        // Ended OK, the backend's stream is done with every request on it: a decoupled model's
        // still waiting had all their answers (zero, or a last one Triton did not flag). Any
        // other request unanswered was closed under: a fault.
        let ended_ok = code == "OK";
        let code = if ended_ok { "UNAVAILABLE" } else { code };
        let error = if message.is_empty() {
            format!("backend {} ended the stream ({code})", upstream.backend)
        } else {
            message.to_string()
        };
        let max_attempts = self
            .edge
            .fleet
            .plan()
            .map_or(1, |plan| plan.policy().retry.max_attempts);
        for pending in upstream.pending.drain(..).collect::<Vec<_>>() {
            let Pending {
                mut request, attempt, ..
            } = pending;
            if ended_ok && request.decoupled() {
                settle_unanswered(attempt, &mut request);
                continue;
            }
            let Some(attempt) = attempt else {
                // Answered in part (a decoupled model's): sent again, its answers would repeat.
                self.answer_error(&error, &request.id, request.slot);
                continue;
            };
            let scope = attempt.finish(code, message);
            request.tried.push(upstream.backend.clone());
            request.lost += u32::from(broke);
            let may_retry = scope.is_fault()
                && request.sequence.is_none()
                && request.lost < MAX_LOST_TRIES
                && u32::try_from(request.tried.len()).unwrap_or(u32::MAX) < max_attempts
                && self.edge.fleet.budget.try_retry(Instant::now());
            if may_retry {
                self.edge
                    .shared
                    .metrics
                    .retries
                    .with_label_values(&[&*upstream.backend, code])
                    .inc();
                self.dispatch(request);
            } else if scope.is_fault() && request.sequence.is_none() && self.fallback_serves(&request.model) {
                self.hand_over_request(request);
            } else {
                self.answer_error(&error, &request.id, request.slot);
            }
        }
    }

    fn fallback_serves(&self, model: &str) -> bool {
        self.edge.fleet.plan().is_some_and(|plan| plan.fallback_serves(model))
    }

    /// The first moment a request waiting on a backend counts as lost.
    fn next_expiry(&self) -> Option<Instant> {
        self.upstreams
            .values()
            .flat_map(|upstream| upstream.pending.iter().filter_map(|pending| pending.expires))
            .min()
    }

    /// Requests past their per-try timeout: their backend is taken for hung, its stream is
    /// dropped (a late answer must not reach the client twice) and its requests go elsewhere.
    fn expire(&mut self, now: Instant) {
        let hung: Vec<(Arc<str>, Duration)> = self
            .upstreams
            .iter()
            .filter_map(|(name, upstream)| {
                let late = upstream
                    .pending
                    .iter()
                    .find(|pending| pending.expires.is_some_and(|at| at <= now))?;
                let waited = late
                    .attempt
                    .as_ref()
                    .map_or(Duration::ZERO, |attempt| attempt.elapsed(now));
                Some((name.clone(), waited))
            })
            .collect();
        for (name, waited) in hung {
            let message = format!(
                "backend {name} did not answer within the per-try timeout of {} ms",
                waited.as_millis()
            );
            self.fail_upstream(&name, "UNAVAILABLE", &message, false);
        }
    }

    /// To the gateway as a unary ModelInfer: its answer (the fallback's, or Triton's error for
    /// a model no route covers) comes back as a stream message.
    /// A routed request to the gateway (counted on its traffic route as handed over).
    fn hand_over_request(&mut self, mut request: StreamRequest) {
        if let Some(route_call) = request.route_call.take() {
            route_call.finish_as("HANDED_OVER", true);
        }
        self.hand_over(request.frame, request.id, &request.tried, request.slot)
    }

    /// `request_id`: the request's id as the edge read it (`frame` may be compressed).
    fn hand_over(&mut self, frame: Bytes, request_id: String, tried: &[Arc<str>], slot: Option<u64>) {
        let mut parts = copy_parts(&self.parts);
        parts.uri = http::Uri::from_static(PATH_INFER);
        parts.headers.remove("grpc-timeout");
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            parts.headers.insert("grpc-timeout", grpc::encode_timeout(left));
        }
        if !tried.is_empty() {
            let names = tried.iter().map(|name| &**name).collect::<Vec<_>>().join(",");
            if let Ok(value) = HeaderValue::from_str(&names) {
                parts.headers.insert(TRIED_HEADER, value);
            }
        }
        let encoding = parts.headers.get("grpc-encoding").map(HeaderValue::as_bytes);
        let frame = compression::as_triton_reads(frame, encoding);
        let request = with_authority(
            Request::from_parts(parts, Outgoing::Buffered(Some(frame))),
            GATEWAY_AUTHORITY,
        );
        let gateway = self.edge.gateway.clone();
        let events = self.events_in.clone();
        self.handed_over += 1;
        tokio::spawn(async move {
            let answer = match request {
                Err(refusal) => wire::stream_error(&refusal.message, &request_id),
                Ok(request) => match gateway.request(request).await {
                    Err(error) => {
                        let message = format!("triton-gateway is not reachable: {error}");
                        wire::stream_error(&message, &request_id)
                    }
                    Ok(response) => unary_as_stream_answer(response, &request_id).await,
                },
            };
            let _ = events.send(Event::HandedOver { slot, frame: answer }).await;
        });
    }
}

/// Reads one upstream stream's answers into the session; returns how it ended (and whether
/// its connection broke).
async fn read_answers(
    upstream: u64,
    response: http::Response<crate::backend_client::BackendBody>,
    events: &mpsc::Sender<Event>,
) -> (&'static str, String, bool) {
    if let Some(status) = response.headers().get("grpc-status") {
        // Trailers-only: the backend refused the stream itself.
        return (
            code_name(Some(status.as_bytes())),
            message_of(response.headers()).to_string(),
            false,
        );
    }
    let mut body = response.into_body();
    let mut decoder = Deframer::default();
    loop {
        match body.frame().await {
            None => return ("UNAVAILABLE", String::new(), false),
            Some(Err(error)) => {
                let broke = backend_client::stream_connection_broke(&error);
                return ("UNAVAILABLE", format!("stream broken: {error}"), broke);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    decoder.push(data);
                    while let Ok(Some(frame)) = decoder.next(usize::MAX) {
                        if events.send(Event::Answer { upstream, frame }).await.is_err() {
                            return ("CANCELLED", String::new(), false);
                        }
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap_or_default();
                    let code = code_name(trailers.get("grpc-status").map(|v| v.as_bytes()));
                    return (code, message_of(&trailers).to_string(), false);
                }
            },
        }
    }
}

/// A unary ModelInfer answer as one stream message: its response, or its error.
async fn unary_as_stream_answer(response: http::Response<Incoming>, request_id: &str) -> Bytes {
    let (head, body) = response.into_parts();
    if let Some(status) = head.headers.get("grpc-status") {
        if status != "0" {
            return wire::stream_error(message_of(&head.headers), request_id);
        }
    }
    let Ok(collected) = body.collect().await else {
        return wire::stream_error("triton-gateway broke off its answer", request_id);
    };
    if let Some(trailers) = collected.trailers() {
        if trailers.get("grpc-status").is_some_and(|status| status != "0") {
            return wire::stream_error(message_of(trailers), request_id);
        }
    }
    let bytes = collected.to_bytes();
    match bytes.get(5..) {
        Some(message) => wire::stream_final_answer(message),
        None => wire::stream_error("triton-gateway sent no answer", request_id),
    }
}

const DEADLINE_EXCEEDED: u32 = 4;

/// The status as Triton writes it: grpc-status, then grpc-message.
fn status_trailers(code: u32, message: &str) -> HeaderMap {
    let answer: http::Response<Upstream> = grpc::trailers_only(code, message);
    let headers = answer.into_parts().0.headers;
    let mut trailers = HeaderMap::with_capacity(2);
    for name in ["grpc-status", "grpc-message"] {
        if let Some(value) = headers.get(name) {
            trailers.insert(name, value.clone());
        }
    }
    trailers
}

/// A decoupled model's request that may never be answered again (zero answers, or a last one
/// Triton does not flag) is kept for its stream's life, to fail it should its backend fail;
/// past `MAX_UNANSWERED` on one backend's stream the oldest is let go (a fault no longer
/// reaches it as an error), so a client cannot grow the edge's memory without bound.
fn release_oldest_decoupled(pending: &mut VecDeque<Pending>) {
    let mut decoupled = pending.iter().filter(|waiting| waiting.request.decoupled());
    if decoupled.nth(MAX_UNANSWERED - 1).is_none() {
        return;
    }
    if let Some(index) = pending.iter().position(|waiting| waiting.request.decoupled()) {
        if let Some(Pending {
            mut request, attempt, ..
        }) = pending.remove(index)
        {
            settle_unanswered(attempt, &mut request);
        }
    }
}

/// A decoupled model's request done without (another) answer: a success of its backend.
fn settle_unanswered(attempt: Option<Attempt>, request: &mut StreamRequest) {
    if let Some(attempt) = attempt {
        attempt.finish_unanswered();
    }
    if let Some(route_call) = request.route_call.take() {
        route_call.finish_as("OK", false);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The answers of a stream in request order: each ordered request takes a slot; an answer
/// waits in its slot until those before it are out.
#[derive(Default)]
struct Order {
    slots: VecDeque<Option<Bytes>>,
    /// Slot number of `slots[0]`.
    front: u64,
}

impl Order {
    fn reserve(&mut self) -> u64 {
        self.slots.push_back(None);
        self.front + self.slots.len() as u64 - 1
    }

    fn fill(&mut self, slot: u64, frame: Bytes) {
        let index = slot.checked_sub(self.front).and_then(|i| usize::try_from(i).ok());
        if let Some(place) = index.and_then(|i| self.slots.get_mut(i)) {
            *place = Some(frame);
        }
    }

    fn pop_ready(&mut self) -> Option<Bytes> {
        if !matches!(self.slots.front(), Some(Some(_))) {
            return None;
        }
        self.front += 1;
        self.slots.pop_front().flatten()
    }

    /// Requests waiting for their turn or their answer.
    fn len(&self) -> usize {
        self.slots.len()
    }
}

/// Cuts a byte stream into whole gRPC frames (prefix included).
#[derive(Default)]
struct Deframer {
    buffer: BytesMut,
}

impl Deframer {
    fn push(&mut self, data: Bytes) {
        self.buffer.extend_from_slice(&data);
    }

    /// The next whole frame; a message announced larger than `limit` is refused as gRPC
    /// servers refuse it.
    fn next(&mut self, limit: usize) -> Result<Option<Bytes>, grpc::Refusal> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if length > limit {
            let message = format!("Received message larger than max ({length} vs. {limit})");
            return Err(grpc::Refusal::new(code::RESOURCE_EXHAUSTED, message));
        }
        if self.buffer.len() < 5 + length {
            return Ok(None);
        }
        Ok(Some(self.buffer.split_to(5 + length).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::Deframer;
    use bytes::Bytes;

    fn frame(message: &[u8]) -> Vec<u8> {
        crate::wire::framed(message).to_vec()
    }

    #[test]
    fn frames_are_cut_across_and_within_chunks() {
        let mut decoder = Deframer::default();
        let two = [frame(b"abc"), frame(b"de")].concat();
        decoder.push(Bytes::copy_from_slice(&two[..4]));
        assert_eq!(decoder.next(100).unwrap(), None);
        decoder.push(Bytes::copy_from_slice(&two[4..]));
        assert_eq!(decoder.next(100).unwrap().unwrap(), Bytes::from(frame(b"abc")));
        assert_eq!(decoder.next(100).unwrap().unwrap(), Bytes::from(frame(b"de")));
        assert_eq!(decoder.next(100).unwrap(), None);
    }

    #[test]
    fn a_streams_status_is_written_as_triton_writes_it() {
        let trailers = super::status_trailers(4, "Deadline Exceeded");
        let names: Vec<&str> = trailers.keys().map(|name| name.as_str()).collect();
        assert_eq!(names, ["grpc-status", "grpc-message"]);
        assert_eq!(super::status_trailers(0, "").keys().count(), 1);
    }

    #[test]
    fn answers_leave_in_request_order() {
        let mut order = super::Order::default();
        let (first, second, third) = (order.reserve(), order.reserve(), order.reserve());
        order.fill(second, Bytes::from_static(b"2"));
        assert_eq!(order.pop_ready(), None, "the first is still unanswered");
        order.fill(first, Bytes::from_static(b"1"));
        assert_eq!(order.pop_ready(), Some(Bytes::from_static(b"1")));
        assert_eq!(order.pop_ready(), Some(Bytes::from_static(b"2")));
        assert_eq!(order.pop_ready(), None);
        assert_eq!(order.len(), 1);
        order.fill(third, Bytes::from_static(b"3"));
        assert_eq!(order.pop_ready(), Some(Bytes::from_static(b"3")));
        assert_eq!(order.len(), 0);
    }

    #[test]
    fn a_message_over_the_limit_is_refused() {
        let mut decoder = Deframer::default();
        decoder.push(Bytes::from(frame(&[0u8; 10])));
        let refusal = decoder.next(9).unwrap_err();
        assert_eq!(refusal.code, super::code::RESOURCE_EXHAUSTED);
        assert_eq!(refusal.message, "Received message larger than max (10 vs. 9)");
    }
}
