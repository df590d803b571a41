//! What the edge tells the control plane: cumulative outcome counts per backend and model
//! (cumulative, so a report the control plane missed loses nothing) and its own view of every
//! backend (breakers, calls in flight).

use crate::attempt::Scope;
use crate::control::proto;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::policy::breaker::BreakerState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

#[derive(Default)]
struct Counts {
    answered: u64,
    backend_faults: u64,
    model_faults: u64,
}

/// Outcome counters per (backend, model), only for routes of a snapshot (bounded by the fleet).
#[derive(Default)]
pub struct Outcomes(Mutex<HashMap<(Arc<str>, String), Counts>>);

impl Outcomes {
    pub fn add(&self, backend: &Arc<str>, model: &str, scope: Scope) {
        let mut counts = self.0.lock().expect("outcomes lock");
        // Look up by reference first: the common case allocates nothing.
        let entry = match counts.get_mut(&(backend.clone(), model.to_string())) {
            Some(entry) => entry,
            None => counts.entry((backend.clone(), model.to_string())).or_default(),
        };
        match scope {
            Scope::None => entry.answered += 1,
            Scope::Model => entry.model_faults += 1,
            Scope::Backend => entry.backend_faults += 1,
        }
    }

    fn rows(&self) -> Vec<proto::Outcomes> {
        let counts = self.0.lock().expect("outcomes lock");
        counts
            .iter()
            .map(|((backend, model), c)| proto::Outcomes {
                backend: backend.to_string(),
                model: model.clone(),
                answered: c.answered,
                backend_faults: c.backend_faults,
                model_faults: c.model_faults,
            })
            .collect()
    }
}

pub fn state(state: BreakerState) -> proto::BreakerState {
    match state {
        BreakerState::Closed => proto::BreakerState::Closed,
        BreakerState::Open => proto::BreakerState::Open,
        BreakerState::HalfOpen => proto::BreakerState::HalfOpen,
    }
}

pub fn build(fleet: &Fleet, outcomes: &Outcomes, metrics: &Metrics) -> proto::EdgeReport {
    let in_flight = metrics.in_flight.get();
    let now = Instant::now();
    let mut views: HashMap<Arc<str>, proto::BackendView> = fleet
        .backends()
        .into_iter()
        .map(|backend| {
            let view = proto::BackendView {
                name: backend.name.to_string(),
                breaker: state(backend.breaker.state(now)) as i32,
                model_breakers: Vec::new(),
                in_flight: backend.in_flight() as u64,
                latencies: Vec::new(),
            };
            (backend.name.clone(), view)
        })
        .collect();
    for (backend, model, breaker) in fleet.model_breakers() {
        let breaker_state = breaker.state(now);
        if breaker_state == BreakerState::Closed {
            continue;
        }
        if let Some(view) = views.get_mut(&backend) {
            view.model_breakers.push(proto::ModelBreaker {
                model,
                state: state(breaker_state) as i32,
            });
        }
    }
    if let Some(plan) = fleet.plan() {
        let balancing = &plan.policy().balancing;
        for (backend, model, version, latency) in fleet.latencies() {
            let (Some(view), Some(seconds)) = (views.get_mut(&backend), latency.current(balancing, now)) else {
                continue;
            };
            view.latencies.push(proto::VersionLatency {
                model,
                version,
                latency: prost_types::Duration::try_from(std::time::Duration::from_secs_f64(seconds)).ok(),
            });
        }
    }
    proto::EdgeReport {
        snapshot_version: fleet.serving_version(),
        in_flight: u64::try_from(in_flight).unwrap_or(0),
        outcomes: outcomes.rows(),
        backends: views.into_values().collect(),
        variants: metrics.variant_reports(),
    }
}
