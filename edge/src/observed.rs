//! Answers on their way back to the client: the gRPC status is read where it arrives (the
//! trailers, or the headers of a trailers-only answer) and the try that produced it is
//! settled exactly once, also when the client goes away first (then as CANCELLED).

use crate::attempt::Attempt;
use crate::body::Upstream;
use crate::faults::fault_scope;
use crate::metrics::Metrics;
use crate::server::ActiveCall;
use crate::shadow::Tee;
use crate::shedding::Admitted;
use crate::stamp::Stamp;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// grpc-status header value to the status name Python's grpc.StatusCode uses.
pub fn code_name(value: Option<&[u8]>) -> &'static str {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<usize>().ok())
        .and_then(|v| CODES.get(v).copied())
        .unwrap_or("UNKNOWN")
}

/// The grpc-message header as text ("" when absent or not UTF-8).
pub fn message_of(headers: &HeaderMap) -> &str {
    headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A response body that records its call when the gRPC status goes by, and holds what the
/// call occupies (its shedding admission, its place on the client connection) until it ends.
pub struct ObservedBody {
    inner: Upstream,
    attempt: Option<Attempt>,
    admission: Option<Admitted>,
    call: Option<ActiveCall>,
    stamp: Option<Arc<Stamp>>,
    // Boxed: only calls of traffic routes carry them, and every call carries this body.
    route_call: Option<Box<RouteCall>>,
    tee: Option<Box<Tee>>,
}

impl From<Upstream> for ObservedBody {
    fn from(inner: Upstream) -> Self {
        ObservedBody {
            inner,
            attempt: None,
            admission: None,
            call: None,
            stamp: None,
            route_call: None,
            tee: None,
        }
    }
}

/// A call of a traffic route, counted per variant once, when dropped: with the code it was
/// finished with, else `unfinished` (how the path it took ends a call it never settled).
pub struct RouteCall {
    pub metrics: Arc<Metrics>,
    pub route: Arc<str>,
    pub variant: Arc<str>,
    /// The model and version it was sent to: whose fault a status names depends on them.
    pub model: Arc<str>,
    pub version: Arc<str>,
    pub started: Instant,
    pub unfinished: &'static str,
    pub fault: bool,
}

impl RouteCall {
    /// Ended with a gRPC status: a fault of the variant as the edge judges it for its
    /// breakers (`faults::fault_scope`).
    pub fn finish(mut self, code: &'static str, message: &str) {
        self.fault = !fault_scope(code, message, &self.model, &self.version).is_empty();
        self.unfinished = code;
    }

    /// Ended otherwise (a stream's answer or hand-over): `fault` as the caller saw it.
    pub fn finish_as(mut self, code: &'static str, fault: bool) {
        self.fault = fault;
        self.unfinished = code;
    }
}

impl Drop for RouteCall {
    fn drop(&mut self) {
        let labels = [&*self.route, &*self.variant];
        self.metrics
            .route_requests
            .with_label_values(&[labels[0], labels[1], self.unfinished])
            .inc();
        self.metrics
            .route_latency
            .with_label_values(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        if self.fault {
            self.metrics.route_faults.with_label_values(&labels).inc();
        }
    }
}

impl ObservedBody {
    /// Keep the call counted as in flight until its body is done.
    pub fn holding(mut self, admission: Admitted) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Keep the client connection's call open until the body is done.
    pub fn on_connection(mut self, call: ActiveCall) -> Self {
        self.call = Some(call);
        self
    }

    /// Wrap a backend answer whose status is still to come (in its trailers).
    pub fn settling(inner: Upstream, attempt: Attempt) -> Self {
        let mut body = ObservedBody::from(inner);
        body.attempt = Some(attempt);
        body
    }

    /// Stamp the trailers with `stamp` and count the call of its traffic route, if any, when
    /// the status goes by.
    pub fn stamped(mut self, stamp: Arc<Stamp>, route_call: Option<RouteCall>) -> Self {
        self.stamp = Some(stamp);
        self.route_call = route_call.map(Box::new);
        self
    }

    /// Hand the answer to a shadow comparison when its status is OK.
    pub fn teeing(mut self, tee: Tee) -> Self {
        self.tee = Some(Box::new(tee));
        self
    }

    fn done(&mut self, code: &'static str, message: &str) {
        self.admission = None;
        if let Some(mut tee) = self.tee.take() {
            tee.finish(code == "OK");
        }
        if let Some(attempt) = self.attempt.take() {
            attempt.finish(code, message);
        }
        if let Some(route_call) = self.route_call.take() {
            route_call.finish(code, message);
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = crate::backend_client::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::backend_client::Error>>> {
        let this = self.get_mut();
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &mut polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(tee), Some(data)) = (this.tee.as_mut(), frame.data_ref()) {
                    tee.data(data);
                }
                if let Some(trailers) = frame.trailers_mut() {
                    if let Some(stamp) = &this.stamp {
                        stamp.apply(trailers);
                    }
                    let code = code_name(trailers.get("grpc-status").map(|v| v.as_bytes()));
                    this.done(code, message_of(trailers));
                }
            }
            // The stream broke, or ended without a status: the backend failed the call.
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => this.done("UNAVAILABLE", ""),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.done("CANCELLED", "");
    }
}

#[cfg(test)]
mod tests {
    use super::code_name;

    #[test]
    fn status_codes_map_to_names() {
        assert_eq!(code_name(Some(b"0")), "OK");
        assert_eq!(code_name(Some(b"14")), "UNAVAILABLE");
        assert_eq!(code_name(Some(b"99")), "UNKNOWN");
        assert_eq!(code_name(None), "UNKNOWN");
    }
}
