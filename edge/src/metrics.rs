//! The edge's own metrics, counted as each call ends (no reporting lag) and read by the control
//! plane at scrape time (the `Metrics` call of the control protocol), which serves them on the
//! gateway's one metrics port beside its own.
//!
//! Family names and labels are the gateway's: requests carry `path="edge"`, so dashboards sum
//! both processes without knowing which answered. Label values for models and versions come
//! only from the snapshot (routes and known models): client input never mints a series.

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::collections::HashMap;

const PREFIX: &str = "triton_gateway";
/// Seconds; the same bounds as the gateway's `LATENCY_BUCKETS`.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
const REQUEST_LABELS: [&str; 6] = ["path", "method", "model", "version", "backend", "code"];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pub in_flight: IntGauge,
    pub retries: IntCounterVec,
    pub hedges: IntCounterVec,
    pub retry_budget_exhausted: IntCounter,
    /// Unary calls given up on whose answer was read to the end (see `backend_client`).
    pub backend_calls_drained: IntCounter,
    pub breaker_transitions: IntCounterVec,
    pub shed: IntCounterVec,
    pub backend_breaker_open: IntGaugeVec,
    pub model_breaker_open: IntGaugeVec,
    pub snapshot_version: IntGauge,
    pub snapshots_refused: IntCounter,
    /// Calls of traffic routes, per route and variant (`variant` "" for calls naming a version).
    pub route_requests: IntCounterVec,
    pub route_latency: HistogramVec,
    /// Calls of a route's variant that the variant failed (see `RouteCall::finish`).
    pub route_faults: IntCounterVec,
    pub shadow: ShadowMetrics,
}

/// Shadow traffic: the calls, the copies skipped, and how their answers compare with the
/// primary's, per (route, variant, output).
pub struct ShadowMetrics {
    pub requests: IntCounterVec,
    pub faults: IntCounterVec,
    pub skipped: IntCounterVec,
    pub comparisons: IntCounterVec,
    pub compared: IntCounterVec,
    pub max_abs_diff: HistogramVec,
    pub max_rel_diff: HistogramVec,
    pub argmax_rows: IntCounterVec,
    pub argmax_agreeing: IntCounterVec,
    pub non_finite: IntCounterVec,
    pub one_sided_non_finite: IntCounterVec,
}

/// Decades from 1e-9 to 1e3: differences from float noise to a different answer.
const DIFF_BUCKETS: [f64; 13] = [
    1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0,
];
const OUTPUT_LABELS: [&str; 3] = ["route", "variant", "output"];

impl ShadowMetrics {
    fn new(registry: &Registry) -> ShadowMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str| {
            register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(format!("{PREFIX}_{name}"), help).buckets(DIFF_BUCKETS.to_vec()),
                    &OUTPUT_LABELS,
                )
                .expect("valid metric"),
            )
        };
        ShadowMetrics {
            requests: counter(
                "shadow_requests_total",
                "Shadow calls sent, by the status the shadow variant answered with.",
                &["route", "variant", "code"],
            ),
            faults: counter(
                "shadow_faults_total",
                "Shadow copies the shadow variant failed (a backend or model fault, or past their time).",
                &["route", "variant"],
            ),
            skipped: counter(
                "shadow_skipped_total",
                "Shadow copies not sent or not compared: over the concurrency or byte budget, no backend, or the primary failed.",
                &["route", "variant", "reason"],
            ),
            comparisons: counter(
                "shadow_comparisons_total",
                "Shadow outputs compared with the primary's: agree (within atol/rtol), disagree, or nonconforming (datatype or shape differ, or missing).",
                &["route", "variant", "output", "result"],
            ),
            compared: counter(
                "shadow_compared_total",
                "Shadow answers compared with their primary's: one per call, whatever its number of outputs (what a rollout's minimum of compared calls counts).",
                &["route", "variant"],
            ),
            max_abs_diff: histogram(
                "shadow_max_abs_diff",
                "Largest |shadow - primary| over an output's elements, per comparison.",
            ),
            max_rel_diff: histogram(
                "shadow_max_rel_diff",
                "Largest |shadow - primary| / |primary| over an output's elements, per comparison.",
            ),
            argmax_rows: counter(
                "shadow_argmax_rows_total",
                "Rows (last dimension >= 2) whose argmax was compared.",
                &OUTPUT_LABELS,
            ),
            argmax_agreeing: counter(
                "shadow_argmax_agreeing_total",
                "Rows whose argmax is the same in the shadow's and the primary's answer.",
                &OUTPUT_LABELS,
            ),
            non_finite: counter(
                "shadow_non_finite_total",
                "NaN and Inf elements in compared outputs, by side (primary or shadow) and kind.",
                &["route", "variant", "output", "side", "kind"],
            ),
            one_sided_non_finite: counter(
                "shadow_one_sided_non_finite_total",
                "Compared outputs with NaN or Inf elements on one side only (side: the one that has them): a version that overflows where the other does not.",
                &["route", "variant", "output", "side"],
            ),
        }
    }

    fn families(&self) -> Vec<(&dyn Collector, &'static str)> {
        vec![
            (&self.requests, "counter"),
            (&self.faults, "counter"),
            (&self.skipped, "counter"),
            (&self.comparisons, "counter"),
            (&self.compared, "counter"),
            (&self.max_abs_diff, "histogram"),
            (&self.max_rel_diff, "histogram"),
            (&self.argmax_rows, "counter"),
            (&self.argmax_agreeing, "counter"),
            (&self.non_finite, "counter"),
            (&self.one_sided_non_finite, "counter"),
        ]
    }
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(format!("{PREFIX}_{name}"), help)
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            opts("requests_total", "Calls answered, by data path and outcome."),
            &REQUEST_LABELS,
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                format!("{PREFIX}_request_duration_seconds"),
                "Time from receiving a call to its last byte, by data path and outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &REQUEST_LABELS,
        )
        .expect("valid metric");
        let in_flight =
            IntGauge::with_opts(opts("in_flight_requests", "Calls being served now.").const_label("path", "edge"))
                .expect("valid metric");
        let metrics = Metrics {
            requests: register(&registry, requests),
            latency: register(&registry, latency),
            in_flight: register(&registry, in_flight),
            retries: register(
                &registry,
                IntCounterVec::new(
                    opts(
                        "retries_total",
                        "Calls sent again to another backend after a backend fault.",
                    ),
                    &["backend", "code"],
                )
                .expect("valid metric"),
            ),
            hedges: register(
                &registry,
                IntCounterVec::new(
                    opts(
                        "hedges_total",
                        "Second copies of slow idempotent calls sent to another backend.",
                    ),
                    &["model"],
                )
                .expect("valid metric"),
            ),
            retry_budget_exhausted: register(
                &registry,
                IntCounter::with_opts(opts(
                    "retry_budget_exhausted_total",
                    "Retries and hedges not sent because the retry budget was spent.",
                ))
                .expect("valid metric"),
            ),
            backend_calls_drained: register(
                &registry,
                IntCounter::with_opts(opts(
                    "backend_calls_drained_total",
                    "Unary calls given up on (client gone, deadline, lost hedge, per-try timeout) whose \
                     answer was read to the end instead of cancelling them on the backend.",
                ))
                .expect("valid metric"),
            ),
            breaker_transitions: register(
                &registry,
                IntCounterVec::new(
                    opts(
                        "breaker_transitions_total",
                        "Circuit breaker state changes, per backend and model ('' for the whole backend).",
                    ),
                    &["backend", "model", "state"],
                )
                .expect("valid metric"),
            ),
            shed: register(
                &registry,
                IntCounterVec::new(
                    opts("shed_total", "Calls refused at once because too many were in flight."),
                    &["model"],
                )
                .expect("valid metric"),
            ),
            backend_breaker_open: register(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "backend_breaker_open",
                        "1 while the backend's circuit breaker is open or half-open.",
                    ),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            model_breaker_open: register(
                &registry,
                IntGaugeVec::new(
                    opts(
                        "model_breaker_open",
                        "1 while the breaker of one model on the backend is open or half-open.",
                    ),
                    &["backend", "model"],
                )
                .expect("valid metric"),
            ),
            snapshot_version: register(
                &registry,
                IntGauge::with_opts(opts(
                    "edge_snapshot_version",
                    "Version of the control snapshot the edge serves.",
                ))
                .expect("valid metric"),
            ),
            snapshots_refused: register(
                &registry,
                IntCounter::with_opts(opts(
                    "edge_snapshots_refused_total",
                    "Control snapshots the edge could not apply (NACKed; the last good one kept serving).",
                ))
                .expect("valid metric"),
            ),
            route_requests: register(
                &registry,
                IntCounterVec::new(
                    opts(
                        "route_requests_total",
                        "Calls of a traffic route, per variant that answered and outcome.",
                    ),
                    &["route", "variant", "code"],
                )
                .expect("valid metric"),
            ),
            route_latency: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        format!("{PREFIX}_route_request_duration_seconds"),
                        "Time from receiving a call of a traffic route to its last byte, per variant.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["route", "variant"],
                )
                .expect("valid metric"),
            ),
            route_faults: register(
                &registry,
                IntCounterVec::new(
                    opts(
                        "route_faults_total",
                        "Calls of a traffic route's variant that the variant failed (a backend or model fault).",
                    ),
                    &["route", "variant"],
                )
                .expect("valid metric"),
            ),
            shadow: ShadowMetrics::new(&registry),
            registry,
        };
        let build = IntGaugeVec::new(opts("edge_build_info", "tgw-edge's version; always 1."), &["version"])
            .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(&metrics.registry, build);
        let process =
            prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, "triton_gateway_edge");
        let _ = metrics.registry.register(Box::new(process));
        metrics
    }

    /// One finished call (or try) on the edge.
    pub fn observe(&self, method: &str, model: &str, version: &str, backend: &str, code: &str, seconds: f64) {
        let labels = ["edge", method, model, version, backend, code];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(seconds);
    }

    /// Cumulative figures per (traffic route, variant), read from the counters the calls end
    /// in (one count, two readers: the exposition and the control plane's report).
    pub fn variant_reports(&self) -> Vec<crate::control::proto::VariantReport> {
        use crate::control::proto::VariantReport;
        use std::collections::BTreeMap;
        let mut reports: BTreeMap<(String, String), VariantReport> = BTreeMap::new();
        fn entry<'a>(
            reports: &'a mut BTreeMap<(String, String), VariantReport>,
            labels: &HashMap<String, String>,
        ) -> Option<&'a mut VariantReport> {
            let key = (labels.get("route")?.clone(), labels.get("variant")?.clone());
            Some(reports.entry(key.clone()).or_insert_with(|| VariantReport {
                route: key.0,
                variant: key.1,
                ..Default::default()
            }))
        }
        for (labels, metric) in samples(&self.route_requests) {
            if let (Some(code), Some(report)) = (labels.get("code").cloned(), entry(&mut reports, &labels)) {
                *report.codes.entry(code).or_default() += metric.get_counter().get_value() as u64;
            }
        }
        for (labels, metric) in samples(&self.route_latency) {
            if let Some(report) = entry(&mut reports, &labels) {
                let histogram = metric.get_histogram();
                report.latency_bounds = histogram.get_bucket().iter().map(|b| b.upper_bound()).collect();
                report.latency_counts = histogram.get_bucket().iter().map(|b| b.cumulative_count()).collect();
                report.latency_bounds.push(f64::INFINITY);
                report.latency_counts.push(histogram.get_sample_count());
            }
        }
        for (labels, metric) in samples(&self.shadow.requests) {
            if let (Some(code), Some(report)) = (labels.get("code").cloned(), entry(&mut reports, &labels)) {
                *report.shadow_codes.entry(code).or_default() += metric.get_counter().get_value() as u64;
            }
        }
        for (labels, metric) in samples(&self.route_faults) {
            if let Some(report) = entry(&mut reports, &labels) {
                report.faults += metric.get_counter().get_value() as u64;
            }
        }
        for (labels, metric) in samples(&self.shadow.faults) {
            if let Some(report) = entry(&mut reports, &labels) {
                report.shadow_faults += metric.get_counter().get_value() as u64;
            }
        }
        for (labels, metric) in samples(&self.shadow.comparisons) {
            if let (Some(result), Some(report)) = (labels.get("result").cloned(), entry(&mut reports, &labels)) {
                *report.shadow_results.entry(result).or_default() += metric.get_counter().get_value() as u64;
            }
        }
        for (labels, metric) in samples(&self.shadow.compared) {
            if let Some(report) = entry(&mut reports, &labels) {
                report.shadow_compared += metric.get_counter().get_value() as u64;
            }
        }
        for (labels, metric) in samples(&self.shadow.one_sided_non_finite) {
            if let (Some(side), Some(report)) = (labels.get("side").cloned(), entry(&mut reports, &labels)) {
                let count = metric.get_counter().get_value() as u64;
                match side.as_str() {
                    "primary" => report.primary_only_non_finite += count,
                    _ => report.shadow_only_non_finite += count,
                }
            }
        }
        for (labels, metric) in samples(&self.shadow.argmax_rows) {
            if let Some(report) = entry(&mut reports, &labels) {
                report.argmax_rows += metric.get_counter().get_value() as u64;
            }
        }
        for (labels, metric) in samples(&self.shadow.argmax_agreeing) {
            if let Some(report) = entry(&mut reports, &labels) {
                report.argmax_agreeing += metric.get_counter().get_value() as u64;
            }
        }
        reports.into_values().collect()
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        let gathered = self.registry.gather();
        if encoder.encode(&gathered, &mut buffer).is_err() {
            return String::new();
        }
        let mut text = String::from_utf8(buffer).unwrap_or_default();
        // The registry leaves out a labelled family until its first sample; declare it
        // anyway, so dashboards and alerts can tell "none yet" from "not exported".
        for (name, help, kind) in self.labelled_families() {
            if !gathered.iter().any(|family| family.name() == name) {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            }
        }
        text
    }

    /// (name, help, type) of every labelled family.
    fn labelled_families(&self) -> Vec<(String, String, &'static str)> {
        let counters: [&dyn Collector; 8] = [
            &self.requests,
            &self.route_faults,
            &self.retries,
            &self.hedges,
            &self.breaker_transitions,
            &self.shed,
            &self.route_requests,
            &self.backend_breaker_open,
        ];
        let kinds = [
            "counter", "counter", "counter", "counter", "counter", "counter", "gauge",
        ];
        let mut families: Vec<(String, String, &'static str)> = counters
            .iter()
            .zip(kinds)
            .flat_map(|(collector, kind)| {
                collector
                    .desc()
                    .into_iter()
                    .map(move |desc| (desc.fq_name.clone(), desc.help.clone(), kind))
            })
            .collect();
        for desc in self.model_breaker_open.desc() {
            families.push((desc.fq_name.clone(), desc.help.clone(), "gauge"));
        }
        for desc in self.latency.desc().into_iter().chain(self.route_latency.desc()) {
            families.push((desc.fq_name.clone(), desc.help.clone(), "histogram"));
        }
        for (collector, kind) in self.shadow.families() {
            for desc in collector.desc() {
                families.push((desc.fq_name.clone(), desc.help.clone(), kind));
            }
        }
        families
    }
}

/// Every sample of a collector with its labels by name.
fn samples(collector: &dyn Collector) -> Vec<(HashMap<String, String>, prometheus::proto::Metric)> {
    let mut found = Vec::new();
    for family in collector.collect() {
        for metric in family.get_metric() {
            let labels = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name().to_string(), pair.value().to_string()))
                .collect();
            found.push((labels, metric.clone()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn calls_are_counted_under_the_gateway_names() {
        let metrics = Metrics::new();
        metrics.observe("ModelInfer", "simple", "1", "triton-a", "OK", 0.0007);
        metrics.retries.with_label_values(&["triton-a", "UNAVAILABLE"]).inc();
        let text = metrics.render();
        assert!(text.contains(
            r#"triton_gateway_requests_total{backend="triton-a",code="OK",method="ModelInfer",model="simple",path="edge",version="1"} 1"#
        ), "{text}");
        assert!(text.contains(r#"triton_gateway_request_duration_seconds_bucket{backend="triton-a",code="OK",method="ModelInfer",model="simple",path="edge",version="1",le="0.001"} 1"#), "{text}");
        assert!(text.contains("triton_gateway_retries_total"), "{text}");
        assert!(text.contains("triton_gateway_edge_build_info"), "{text}");
        // Declared before their first sample.
        assert!(text.contains("# TYPE triton_gateway_hedges_total counter"), "{text}");
        assert!(
            text.contains("# TYPE triton_gateway_model_breaker_open gauge"),
            "{text}"
        );
        assert!(
            text.contains("triton_gateway_in_flight_requests{path=\"edge\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn variants_are_reported_from_the_counters_their_calls_end_in() {
        let metrics = Metrics::new();
        for (code, seconds) in [("OK", 0.0007), ("OK", 0.003), ("INTERNAL", 0.03)] {
            metrics.route_requests.with_label_values(&["m", "2", code]).inc();
            metrics.route_latency.with_label_values(&["m", "2"]).observe(seconds);
        }
        metrics.route_faults.with_label_values(&["m", "2"]).inc();
        let shadow = &metrics.shadow;
        shadow.requests.with_label_values(&["m", "3", "OK"]).inc_by(2);
        shadow.faults.with_label_values(&["m", "3"]).inc();
        shadow.comparisons.with_label_values(&["m", "3", "A", "agree"]).inc();
        shadow.comparisons.with_label_values(&["m", "3", "B", "disagree"]).inc();
        shadow.compared.with_label_values(&["m", "3"]).inc();
        shadow.argmax_rows.with_label_values(&["m", "3", "A"]).inc_by(4);
        shadow.argmax_agreeing.with_label_values(&["m", "3", "A"]).inc_by(3);
        shadow
            .one_sided_non_finite
            .with_label_values(&["m", "3", "A", "shadow"])
            .inc_by(2);
        shadow
            .one_sided_non_finite
            .with_label_values(&["m", "3", "B", "primary"])
            .inc();
        let reports = metrics.variant_reports();
        assert_eq!(reports.len(), 2);
        let split = &reports[0];
        assert_eq!((split.route.as_str(), split.variant.as_str()), ("m", "2"));
        assert_eq!((split.codes["OK"], split.codes["INTERNAL"], split.faults), (2, 1, 1));
        let at = |bound: f64| split.latency_bounds.iter().position(|b| *b == bound).unwrap();
        assert_eq!(split.latency_counts[at(0.001)], 1);
        assert_eq!(split.latency_counts[at(0.005)], 2);
        assert_eq!(split.latency_counts[at(f64::INFINITY)], 3);
        let shadowed = &reports[1];
        assert_eq!((shadowed.shadow_codes["OK"], shadowed.shadow_faults), (2, 1));
        assert_eq!(
            (shadowed.shadow_results["agree"], shadowed.shadow_results["disagree"]),
            (1, 1)
        );
        assert_eq!(shadowed.shadow_compared, 1, "one call of two outputs");
        assert_eq!((shadowed.argmax_rows, shadowed.argmax_agreeing), (4, 3));
        assert_eq!(
            (shadowed.shadow_only_non_finite, shadowed.primary_only_non_finite),
            (2, 1)
        );
    }
}
