//! Shadow traffic: a copy of a traffic route's ModelInfer request sent to the route's shadow
//! variant, its answer compared with the primary's output by output, and dropped.
//!
//! The primary never waits for it and never sees its errors: the copy is sent from its own
//! task once the primary's answer is on its way, within its own budget of calls and request
//! bytes in flight (a copy past either is skipped and counted, never queued, whatever its
//! size), and the comparison runs on the blocking pool, off the threads that serve calls.
//! Requests of a sequence are never mirrored: their state lives on one backend.

use crate::backend_client::{BackendBody, BackendClient};
use crate::body::Outgoing;
use crate::compare::{self, OutputComparison, Tolerance};
use crate::faults::fault_scope;
use crate::fleet::{Fleet, Plan};
use crate::metrics::Metrics;
use crate::traffic::Shadow;
use crate::{compression, log, wire};
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// At most one disagreement line per this long: a sample, not a flood.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// How long a shadow call may take, and how long its comparison waits for the primary's answer.
const SHADOW_TIMEOUT: Duration = Duration::from_secs(30);

/// What the shadow calls of one edge hold now, and when a disagreement was last logged.
#[derive(Default)]
pub struct Shadows {
    in_flight: AtomicUsize,
    bytes: AtomicUsize,
    last_logged: Mutex<Option<Instant>>,
}

/// A shadow call's place in the budget, given back when dropped.
pub struct Permit {
    shadows: Arc<Shadows>,
    bytes: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shadows.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.shadows.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Shadows {
    /// A place for a copy of `bytes` request bytes, or the reason there is none.
    pub fn try_reserve(self: &Arc<Self>, shadow: &Shadow, bytes: usize) -> Result<Permit, &'static str> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= shadow.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err("concurrency");
        }
        if self.bytes.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes) > shadow.max_bytes_in_flight {
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err("bytes");
        }
        Ok(Permit {
            shadows: self.clone(),
            bytes,
        })
    }

    fn may_log(&self, now: Instant) -> bool {
        let mut last = self.last_logged.lock().expect("shadow log lock");
        if last.is_some_and(|at| now.saturating_duration_since(at) < LOG_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Takes the primary's answer (its gRPC frame, and its grpc-encoding) for the comparison.
pub type PrimarySender = oneshot::Sender<(Bytes, Option<HeaderValue>)>;

/// The primary's answer as it streams to the client: its data kept (reference-counted, not
/// copied) and handed to the comparison when its status is OK, dropped otherwise.
pub struct Tee {
    data: Vec<Bytes>,
    size: usize,
    limit: usize,
    encoding: Option<HeaderValue>,
    sender: Option<PrimarySender>,
}

impl Tee {
    pub fn new(sender: PrimarySender, encoding: Option<HeaderValue>, limit: usize) -> Tee {
        Tee {
            data: Vec::new(),
            size: 0,
            limit: limit.saturating_add(5),
            encoding,
            sender: Some(sender),
        }
    }

    pub fn data(&mut self, chunk: &Bytes) {
        self.size += chunk.len();
        if self.size > self.limit {
            self.sender = None; // past any answer the shadow's could be compared with
            self.data.clear();
            return;
        }
        if self.sender.is_some() {
            self.data.push(chunk.clone());
        }
    }

    pub fn finish(&mut self, ok: bool) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        if ok {
            let _ = sender.send((concat(std::mem::take(&mut self.data)), self.encoding.take()));
        }
    }
}

/// One shadow call, ready to run.
pub struct Job {
    pub client: BackendClient,
    pub scheme: &'static str,
    pub fleet: Arc<Fleet>,
    pub plan: Arc<Plan>,
    pub metrics: Arc<Metrics>,
    pub shadows: Arc<Shadows>,
    pub permit: Permit,
    pub route: Arc<str>,
    pub shadow: Shadow,
    pub parts: Parts,
    /// The request as the shadow variant must read it (renamed, naming its version).
    pub bytes: Bytes,
    pub primary: oneshot::Receiver<(Bytes, Option<HeaderValue>)>,
    pub request_id: String,
}

impl Job {
    pub async fn run(self) {
        let variant = self.shadow.target.name.clone();
        let labels = |reason: &'static str| [self.route.to_string(), variant.to_string(), reason.to_string()];
        let skipped = |reason: &'static str| {
            let labels = labels(reason);
            self.metrics
                .shadow
                .skipped
                .with_label_values(&[&labels[0], &labels[1], &labels[2]])
                .inc();
        };
        let target = &self.shadow.target;
        let Some(route) = self.plan.route(&target.model, &target.version) else {
            return skipped("no_backend");
        };
        let Some((backend, _in_flight)) = self.fleet.choose_for_shadow(route, Instant::now()) else {
            return skipped("no_backend");
        };
        let limit = self.plan.policy().max_message_bytes;
        let request = Request::from_parts(self.parts, Outgoing::Buffered(Some(self.bytes)));
        let sent = async {
            let request = crate::proxy::with_address(request, self.scheme, &backend.address)
                .map_err(|refusal| ("UNAVAILABLE", refusal.message))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| ("UNAVAILABLE", format!("the shadow's backend did not answer: {error}")))?;
            read_answer(response, limit).await
        };
        let answer = tokio::time::timeout(SHADOW_TIMEOUT, sent)
            .await
            .unwrap_or_else(|_| Err(("DEADLINE_EXCEEDED", String::new())));
        let code = match &answer {
            Ok(_) => "OK",
            Err((code, _)) => code,
        };
        self.metrics
            .shadow
            .requests
            .with_label_values(&[&*self.route, &*variant, code])
            .inc();
        if let Err((code, message)) = &answer {
            // Judged as the breakers judge a call; a copy past its time is the variant's too.
            let fault =
                *code == "DEADLINE_EXCEEDED" || !fault_scope(code, message, &target.model, &target.version).is_empty();
            if fault {
                self.metrics
                    .shadow
                    .faults
                    .with_label_values(&[&*self.route, &*variant])
                    .inc();
            }
        }
        drop(self.permit);
        let Ok(shadow_answer) = answer else {
            return;
        };
        let Ok(Ok((primary, primary_encoding))) = tokio::time::timeout(SHADOW_TIMEOUT, self.primary).await else {
            return skipped("primary_failed");
        };
        let tolerance = Tolerance {
            atol: self.shadow.atol,
            rtol: self.shadow.rtol,
        };
        let compared = tokio::task::spawn_blocking(move || {
            let primary = plain_message(&primary, primary_encoding.as_ref(), limit)?;
            let shadow = plain_message(&shadow_answer.0, shadow_answer.1.as_ref(), limit)?;
            compare::compare(&primary, &shadow, tolerance)
        })
        .await;
        match compared {
            Ok(Ok(outputs)) => record(
                &self.metrics,
                &self.shadows,
                &self.route,
                &variant,
                &outputs,
                &self.request_id,
            ),
            Ok(Err(error)) => {
                skipped("unreadable");
                log::warning(
                    "shadow_answer_unreadable",
                    &[("route", &self.route), ("variant", &variant), ("error", &error)],
                );
            }
            Err(_) => skipped("unreadable"),
        }
    }
}

/// The message of a unary answer (its frame's 5-byte prefix cut, inflated when compressed).
fn plain_message(frame: &Bytes, encoding: Option<&HeaderValue>, limit: usize) -> Result<Bytes, String> {
    let plain = compression::readable(frame, encoding.map(HeaderValue::as_bytes), limit).map_err(|r| r.message)?;
    let length = plain
        .get(1..5)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("an answer without a message")?;
    plain
        .get(5..5 + length)
        .map(|message| plain.slice_ref(message))
        .ok_or_else(|| "a truncated answer".to_string())
}

/// The shadow's answer: its data and grpc-encoding when its status is OK; else the status.
async fn read_answer(
    response: http::Response<BackendBody>,
    limit: usize,
) -> Result<(Bytes, Option<HeaderValue>), (&'static str, String)> {
    let (head, mut body) = response.into_parts();
    if let Some(status) = head.headers.get("grpc-status") {
        let code = crate::observed::code_name(Some(status.as_bytes()));
        return Err((code, crate::observed::message_of(&head.headers).to_string()));
    }
    let mut data = BytesMut::new();
    let mut trailers = HeaderMap::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| ("UNAVAILABLE", error.to_string()))?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > limit.saturating_add(5) {
                    return Err(("RESOURCE_EXHAUSTED", String::from("the shadow's answer is too large")));
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(found) = frame.into_trailers() {
                    trailers = found;
                }
            }
        }
    }
    match crate::observed::code_name(trailers.get("grpc-status").map(HeaderValue::as_bytes)) {
        "OK" => Ok((data.freeze(), head.headers.get("grpc-encoding").cloned())),
        code => Err((code, crate::observed::message_of(&trailers).to_string())),
    }
}

fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    out.freeze()
}

fn record(
    metrics: &Metrics,
    shadows: &Shadows,
    route: &str,
    variant: &str,
    outputs: &[OutputComparison],
    request_id: &str,
) {
    let shadow = &metrics.shadow;
    shadow.compared.with_label_values(&[route, variant]).inc();
    for output in outputs {
        let labels = [route, variant, output.name.as_str()];
        let result = if !output.conforms {
            "nonconforming"
        } else if output.within_tolerance {
            "agree"
        } else {
            "disagree"
        };
        shadow
            .comparisons
            .with_label_values(&[route, variant, &output.name, result])
            .inc();
        if output.conforms {
            shadow
                .max_abs_diff
                .with_label_values(&labels)
                .observe(output.max_abs_diff);
            shadow
                .max_rel_diff
                .with_label_values(&labels)
                .observe(output.max_rel_diff);
        }
        if output.argmax_rows > 0 {
            shadow.argmax_rows.with_label_values(&labels).inc_by(output.argmax_rows);
            shadow
                .argmax_agreeing
                .with_label_values(&labels)
                .inc_by(output.argmax_agreeing);
        }
        for (side, kind, count) in [
            ("primary", "nan", output.primary_nan),
            ("primary", "inf", output.primary_inf),
            ("shadow", "nan", output.shadow_nan),
            ("shadow", "inf", output.shadow_inf),
        ] {
            if count > 0 {
                shadow
                    .non_finite
                    .with_label_values(&[route, variant, &output.name, side, kind])
                    .inc_by(count);
            }
        }
        let primary_non_finite = output.primary_nan + output.primary_inf > 0;
        let shadow_non_finite = output.shadow_nan + output.shadow_inf > 0;
        if primary_non_finite != shadow_non_finite {
            let side = if primary_non_finite { "primary" } else { "shadow" };
            shadow
                .one_sided_non_finite
                .with_label_values(&[route, variant, &output.name, side])
                .inc();
        }
        if result != "agree" && shadows.may_log(Instant::now()) {
            log::warning(
                "shadow_disagreement",
                &[
                    ("route", route),
                    ("variant", variant),
                    ("output", &output.name),
                    ("result", result),
                    ("max_abs_diff", &output.max_abs_diff.to_string()),
                    ("max_rel_diff", &output.max_rel_diff.to_string()),
                    (
                        "argmax_agreeing",
                        &format!("{}/{}", output.argmax_agreeing, output.argmax_rows),
                    ),
                    ("request_id", request_id),
                ],
            );
        }
    }
}

/// The shadow copy of a request: named for the shadow variant (model, and version when it
/// names one).
pub fn shadow_request(reading: &[u8], model: &str, shadow: &Shadow) -> Bytes {
    let target = &shadow.target;
    let rename = (*target.model != *model).then_some(&*target.model);
    let version = (!target.version.is_empty()).then_some(&*target.version);
    wire::renaming(reading, rename, version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Variant;

    fn shadow(max_in_flight: usize, max_bytes: usize) -> Shadow {
        Shadow {
            target: Variant {
                name: Arc::from("2"),
                model: Arc::from("m"),
                version: Arc::from("2"),
                weight: 0,
                bucket_end: 0,
            },
            fraction: 1.0,
            max_in_flight,
            max_bytes_in_flight: max_bytes,
            atol: 0.0,
            rtol: 0.0,
        }
    }

    #[test]
    fn the_budget_skips_copies_past_it_and_frees_on_drop() {
        let shadows = Arc::new(Shadows::default());
        let first = shadows.try_reserve(&shadow(2, 100), 60).unwrap();
        assert_eq!(shadows.try_reserve(&shadow(2, 100), 60).err(), Some("bytes"));
        let second = shadows.try_reserve(&shadow(2, 100), 10).unwrap();
        assert_eq!(shadows.try_reserve(&shadow(2, 100), 1).err(), Some("concurrency"));
        drop((first, second));
        assert!(shadows.try_reserve(&shadow(2, 100), 100).is_ok());
        // A request larger than the whole byte budget is skipped, never cut.
        assert_eq!(shadows.try_reserve(&shadow(2, 100), 101).err(), Some("bytes"));
    }

    #[tokio::test]
    async fn the_tee_hands_over_only_an_ok_answer() {
        let (sender, receiver) = oneshot::channel();
        let mut tee = Tee::new(sender, None, 100);
        tee.data(&Bytes::from_static(b"ab"));
        tee.data(&Bytes::from_static(b"cd"));
        tee.finish(true);
        assert_eq!(receiver.await.unwrap().0, Bytes::from_static(b"abcd"));
        let (sender, receiver) = oneshot::channel();
        let mut failed = Tee::new(sender, None, 100);
        failed.data(&Bytes::from_static(b"ab"));
        failed.finish(false);
        assert!(receiver.await.is_err());
    }

    #[test]
    fn the_copy_names_the_shadow_variant() {
        let message = b"\x0a\x01m".as_slice();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        let copy = shadow_request(&frame, "m", &shadow(1, 1));
        assert_eq!(wire::model_key(&copy), Some(("m", "2")));
    }
}
