//! Request outcomes of routed calls, aggregated and reported to the gateway once a second.
//!
//! Each response body is wrapped so the gRPC status is read where it arrives (the trailers, or
//! the headers of a trailers-only answer) and the call is counted exactly once, also when the
//! client goes away first (counted as CANCELLED).

use crate::body::Upstream;
use crate::faults::fault_scope;
use crate::server::ActiveCall;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::Notify;

/// (method, model, version, backend, code, fault scope)
type Key = (String, String, String, String, &'static str, &'static str);

struct Totals {
    count: u64,
    seconds: f64,
    buckets: Vec<u64>,
}

pub struct Stats {
    bounds: Vec<f64>,
    totals: Mutex<HashMap<Key, Totals>>,
    in_flight: AtomicI64,
    /// Woken by a backend fault, so the gateway's breaker hears of it within milliseconds.
    pub fault: Notify,
}

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

impl Stats {
    pub fn new(bounds: Vec<f64>) -> Arc<Stats> {
        Arc::new(Stats {
            bounds,
            totals: Mutex::new(HashMap::new()),
            in_flight: AtomicI64::new(0),
            fault: Notify::new(),
        })
    }

    fn record(&self, key: Key, seconds: f64) {
        let index = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        let mut totals = self.totals.lock().expect("stats lock");
        let entry = totals.entry(key).or_insert_with(|| Totals {
            count: 0,
            seconds: 0.0,
            buckets: vec![0; self.bounds.len() + 1],
        });
        entry.count += 1;
        entry.seconds += seconds;
        entry.buckets[index] += 1;
    }

    /// The counts since the last report as one JSON line, or None when nothing happened.
    pub fn take_report(&self) -> Option<String> {
        let drained: Vec<(Key, Totals)> = {
            let mut totals = self.totals.lock().expect("stats lock");
            totals.drain().collect()
        };
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        if drained.is_empty() && in_flight == 0 {
            return None;
        }
        let requests: Vec<serde_json::Value> = drained
            .into_iter()
            .map(|((method, model, version, backend, code, scope), t)| {
                serde_json::json!([method, model, version, backend, code, scope, t.count, t.seconds, t.buckets])
            })
            .collect();
        Some(serde_json::json!({"requests": requests, "in_flight": in_flight}).to_string())
    }

    /// Start counting a call; `target` is the balancer's in-flight guard of a routed call.
    pub fn start(
        self: &Arc<Self>,
        method: &str,
        model: &str,
        version: &str,
        backend: &str,
        target: Option<crate::routes::InFlight>,
    ) -> Pending {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Pending {
            target,
            stats: self.clone(),
            method: method.to_string(),
            model: model.to_string(),
            version: version.to_string(),
            backend: backend.to_string(),
            started: Instant::now(),
            done: false,
        }
    }
}

/// A routed call in progress; finishing it (or dropping it) records it once.
pub struct Pending {
    target: Option<crate::routes::InFlight>,
    stats: Arc<Stats>,
    method: String,
    model: String,
    version: String,
    backend: String,
    started: Instant,
    done: bool,
}

impl Pending {
    /// The call ended with `code` (and Triton's `message`, when it sent one).
    pub fn finish(mut self, code: &'static str, message: &str) {
        self.done = true;
        let seconds = self.started.elapsed().as_secs_f64();
        // Only calls that reached a backend have a scope; a shed call names none.
        let scope = if self.backend.is_empty() {
            ""
        } else {
            fault_scope(code, message, &self.model, &self.version)
        };
        if let Some(target) = self.target.take() {
            target.finish(code, !scope.is_empty(), seconds);
        }
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let key = (
            std::mem::take(&mut self.method),
            std::mem::take(&mut self.model),
            std::mem::take(&mut self.version),
            std::mem::take(&mut self.backend),
            code,
            scope,
        );
        self.stats.record(key, seconds);
        if !scope.is_empty() {
            // A fault: report it now, so the gateway's breakers react within milliseconds.
            self.stats.fault.notify_one();
        }
    }
}

impl Drop for Pending {
    /// A call dropped before its answer (the client went away while tgw-edge waited for the
    /// backend): counted as CANCELLED, so the in-flight gauge does not drift.
    fn drop(&mut self) {
        if !self.done {
            let pending = Pending {
                target: self.target.take(),
                stats: self.stats.clone(),
                method: std::mem::take(&mut self.method),
                model: std::mem::take(&mut self.model),
                version: std::mem::take(&mut self.version),
                backend: std::mem::take(&mut self.backend),
                started: self.started,
                done: false,
            };
            self.done = true;
            pending.finish("CANCELLED", "");
        }
    }
}

/// The grpc-message header as text ("" when absent or not UTF-8).
pub fn message_of(headers: &HeaderMap) -> &str {
    headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A response body that records its call when the gRPC status goes by, and holds what the
/// call occupies (its shedding admission, its place on the client connection) until it ends.
pub struct ObservedBody {
    inner: Upstream,
    pending: Option<Pending>,
    admission: Option<crate::shedding::Admitted>,
    call: Option<ActiveCall>,
}

impl From<Upstream> for ObservedBody {
    fn from(inner: Upstream) -> Self {
        ObservedBody {
            inner,
            pending: None,
            admission: None,
            call: None,
        }
    }
}

impl ObservedBody {
    /// Keep the call counted as in flight until its body is done.
    pub fn holding(mut self, admission: crate::shedding::Admitted) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Keep the client connection's call open until the body is done.
    pub fn on_connection(mut self, call: ActiveCall) -> Self {
        self.call = Some(call);
        self
    }

    /// Wrap a backend response; a trailers-only answer (status in headers) is recorded now.
    pub fn observe(inner: Upstream, headers: &HeaderMap, pending: Pending) -> Self {
        match headers.get("grpc-status") {
            Some(status) => {
                pending.finish(code_name(Some(status.as_bytes())), message_of(headers));
                ObservedBody::from(inner)
            }
            None => ObservedBody {
                inner,
                pending: Some(pending),
                admission: None,
                call: None,
            },
        }
    }

    fn done(&mut self, code: &'static str, message: &str) {
        self.admission = None;
        if let Some(pending) = self.pending.take() {
            pending.finish(code, message);
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
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
        if let Some(pending) = self.pending.take() {
            pending.finish("CANCELLED", "");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{code_name, Stats};

    #[test]
    fn status_codes_map_to_names() {
        assert_eq!(code_name(Some(b"0")), "OK");
        assert_eq!(code_name(Some(b"14")), "UNAVAILABLE");
        assert_eq!(code_name(Some(b"99")), "UNKNOWN");
        assert_eq!(code_name(None), "UNKNOWN");
    }

    #[test]
    fn report_drains_counts_into_buckets() {
        let stats = Stats::new(vec![0.001, 0.01]);
        stats.start("ModelInfer", "m", "1", "b:1", None).finish("OK", "");
        let pending = stats.start("ModelInfer", "m", "1", "b:1", None);
        let report = stats.take_report().unwrap();
        assert!(report.contains(r#"["ModelInfer","m","1","b:1","OK","",1,"#), "{report}");
        assert!(report.contains(r#""in_flight":1"#), "{report}");
        pending.finish("UNAVAILABLE", "'m' version 1 is not at ready state");
        assert!(stats.take_report().unwrap().contains(r#""UNAVAILABLE","model",1"#));
        assert!(stats.take_report().is_none());
    }
}
