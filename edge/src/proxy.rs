//! The data path, top to bottom: request → checks → route → backend (or hand over) → answer.
//!
//! Model-scoped unary calls (ModelInfer, ModelReady, ModelMetadata, ModelConfig) with a route
//! go straight to a backend as the bytes the client sent; everything else, and every call no
//! route covers, goes to the gateway over its private socket, so answers that need the whole
//! fleet or the fallback stay the gateway's.

use crate::body::{Outgoing, Upstream};
use crate::faults;
use crate::grpc::{self, code, BadHeader, Framing, Refusal};
use crate::routes::SharedRoutes;
use crate::server::ActiveCall;
use crate::shedding::Shedder;
use crate::stats::{self, ObservedBody, Stats};
use crate::upstream::{BackendClient, GatewayClient};
use crate::wire;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;

const SERVICE_PREFIX: &str = "/inference.GRPCInferenceService/";
const ROUTED_METHODS: [&str; 4] = ["ModelInfer", "ModelReady", "ModelMetadata", "ModelConfig"];
const STREAMING_METHODS: [&str; 1] = ["ModelStreamInfer"];
/// Set by the edge on a call it hands over after a backend failed it; never taken from clients.
pub const TRIED_HEADER: &str = "x-gateway-tried";
/// The authority of calls to the gateway (the Unix socket ignores it; the pool keys on it).
const GATEWAY_AUTHORITY: &str = "gateway";

pub struct Edge {
    pub backends: BackendClient,
    pub gateway: GatewayClient,
    pub routes: SharedRoutes,
    pub stats: Arc<Stats>,
    /// Longest wait for a backend's answer before the call goes to the gateway instead.
    pub per_try: Option<Duration>,
    pub shedder: Shedder,
    /// Largest request message accepted, as the gateway's `server.max_message_bytes`.
    pub max_message_bytes: usize,
}

impl Edge {
    /// Answers one call; `call` keeps the client connection open until the answer is done.
    /// An error resets the stream (RST_STREAM INTERNAL_ERROR), as Triton answers a bad header.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        call: ActiveCall,
    ) -> Result<Response<ObservedBody>, BadHeader> {
        let response = self.route(request).await?;
        let (head, body) = response.into_parts();
        Ok(Response::from_parts(head, body.on_connection(call)))
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<ObservedBody>, BadHeader> {
        let (mut parts, body) = request.into_parts();
        // Only the edge may tell the gateway which backend already failed a call.
        parts.headers.remove(TRIED_HEADER);
        grpc::check_headers(&mut parts.headers)?;
        Ok(self.dispatch(parts, body).await)
    }

    async fn dispatch(&self, parts: Parts, body: Incoming) -> Response<ObservedBody> {
        let routed = match classify(parts.uri.path()) {
            // Streams and other services (health, reflection) go through as they arrive.
            Call::Streamed => return self.to_gateway(parts, Outgoing::Streamed(body)).await,
            Call::Routed(method) => Some(method),
            Call::OtherUnary => None,
        };
        let bytes = match read_body(body, self.max_message_bytes).await {
            Ok(bytes) => bytes,
            Err(refusal) => return refusal.response(),
        };
        let encoded = parts
            .headers
            .get("grpc-encoding")
            .is_some_and(|value| value != "identity");
        match grpc::check_unary_framing(&bytes, encoded) {
            Err(refusal) => return refusal.response(),
            // Only a gRPC server can read it: the gateway's.
            Ok(Framing::Opaque) => return self.to_gateway(parts, Outgoing::Buffered(Some(bytes))).await,
            Ok(Framing::Readable) => {}
        }
        match routed {
            Some(method) => self.to_backend(method, parts, bytes).await,
            None => self.to_gateway(parts, Outgoing::Buffered(Some(bytes))).await,
        }
    }

    /// A routed call: to a backend of the current routes, or handed to the gateway when none
    /// has the model or the backend did not answer.
    async fn to_backend(&self, method: &'static str, parts: Parts, bytes: Bytes) -> Response<ObservedBody> {
        let table = self.routes.current();
        let sequence = wire::sequence_id(&bytes);
        let routed = wire::model_key(&bytes).and_then(|(name, version)| {
            table
                .choose(name, version, sequence.as_deref())
                .map(|target| (name, version, target))
        });
        let Some((name, version, target)) = routed else {
            return self.to_gateway(parts, Outgoing::Buffered(Some(bytes))).await;
        };
        // Load shedding: refused at once, counted, never queued.
        let Some(admitted) = self.shedder.try_enter(name) else {
            self.stats
                .start(method, name, version, "", None)
                .finish("RESOURCE_EXHAUSTED", "");
            let message = format!("triton-gateway is at capacity for model '{name}': too many requests in flight");
            return grpc::trailers_only(code::RESOURCE_EXHAUSTED, &message);
        };
        let (backend, address) = (target.name.as_str(), target.address.as_str());
        let pending = self.stats.start(
            method,
            name,
            version,
            backend,
            Some(target.start(method == "ModelInfer")),
        );
        let attempt = Request::from_parts(copy_parts(&parts), Outgoing::Buffered(Some(bytes.clone())));
        let outcome = match self.per_try {
            Some(limit) => match tokio::time::timeout(limit, self.send_to_backend(attempt, address)).await {
                Ok(result) => result,
                Err(_) => Err(()),
            },
            None => self.send_to_backend(attempt, address).await,
        };
        let failure = match outcome {
            // A backend that answered "not here" before sending anything: UNAVAILABLE (the
            // version is not READY any more, or the server is shutting down), or NOT_FOUND
            // for a model that left it since the last route snapshot. Another backend will
            // likely serve it.
            Ok(response) if hands_over(response.headers(), name, version) => {
                let headers = response.headers();
                let code = stats::code_name(headers.get("grpc-status").map(|v| v.as_bytes()));
                (code, stats::message_of(headers).to_string())
            }
            Ok(response) => {
                let (head, body) = response.into_parts();
                let body = ObservedBody::observe(Upstream::Answer(body), &head.headers, pending).holding(admitted);
                return Response::from_parts(head, body);
            }
            // No answer at all (it died, refused, or passed the per-try timeout).
            Err(()) => ("UNAVAILABLE", String::new()),
        };
        pending.finish(failure.0, &failure.1);
        drop(admitted);
        // The gateway picks another backend (within its retry budget) or its local fallback,
        // and must not pick this one again.
        let mut parts = parts;
        if let Ok(value) = HeaderValue::from_str(backend) {
            parts.headers.insert(TRIED_HEADER, value);
        }
        self.to_gateway(parts, Outgoing::Buffered(Some(bytes))).await
    }

    async fn send_to_backend(&self, request: Request<Outgoing>, address: &str) -> Result<Response<Incoming>, ()> {
        let request = with_authority(request, address).map_err(|_| ())?;
        self.backends.request(request).await.map_err(|_| ())
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

/// How a call is carried, by its path.
#[derive(Debug, PartialEq, Eq)]
enum Call {
    /// A unary call the edge routes by model (the method name).
    Routed(&'static str),
    /// Another unary call of the inference service: checked, then handed to the gateway.
    OtherUnary,
    /// A stream, or a call of another service: passed through to the gateway as it arrives.
    Streamed,
}

fn classify(path: &str) -> Call {
    let Some(method) = path.strip_prefix(SERVICE_PREFIX) else {
        return Call::Streamed;
    };
    if STREAMING_METHODS.contains(&method) {
        return Call::Streamed;
    }
    ROUTED_METHODS
        .iter()
        .find(|routed| **routed == method)
        .map_or(Call::OtherUnary, |routed| Call::Routed(routed))
}

/// Whether a backend's trailers-only answer means "try another backend": UNAVAILABLE or a
/// stale route's NOT_FOUND that is the backend's fault (not a restricted protocol's refusal
/// or a shared-memory region the request names).
fn hands_over(headers: &http::HeaderMap, model: &str, version: &str) -> bool {
    let code = match headers.get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"14") => "UNAVAILABLE",
        Some(b"5") => "NOT_FOUND",
        _ => return false,
    };
    !faults::fault_scope(code, stats::message_of(headers), model, version).is_empty()
}

/// The request with its URI pointed at `authority` (the path as the client sent it).
fn with_authority<B>(request: Request<B>, authority: &str) -> Result<Request<B>, Refusal> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = Uri::builder()
        .scheme("http")
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
fn copy_parts(parts: &Parts) -> Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::{classify, hands_over, Call};
    use http::{HeaderMap, HeaderValue};

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
            Call::Streamed
        );
        assert_eq!(classify("/grpc.health.v1.Health/Check"), Call::Streamed);
    }

    #[test]
    fn only_stale_routes_and_unavailable_are_handed_over() {
        let answer = |status: &'static str, message: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", HeaderValue::from_static(status));
            headers.insert("grpc-message", HeaderValue::from_static(message));
            headers
        };
        assert!(hands_over(&answer("14", "Socket closed"), "simple", ""));
        let restricted = answer(
            "14",
            "This protocol is restricted, expecting header 'triton-grpc-protocol-k'",
        );
        assert!(!hands_over(&restricted, "simple", ""));
        assert!(!hands_over(
            &answer("5", "Unable to find shared memory region: 'x'"),
            "simple",
            ""
        ));
        let gone = answer("5", "Request for unknown model: 'simple' has no available versions");
        assert!(hands_over(&gone, "simple", ""));
        assert!(!hands_over(&gone, "other", ""));
        assert!(!hands_over(
            &answer("3", "Request for unknown model: 'simple' is not found"),
            "simple",
            ""
        ));
    }
}
