//! One try of a routed call on one backend, and what its outcome teaches, applied inline the
//! moment it is known: the breakers of the backend and of the model on it, the backend's
//! latency estimate, the model's latency digest, the metrics, the control plane's report
//! counters and the debug log line. A try dropped before its outcome (the client went away, a
//! hedge lost the race) counts as CANCELLED and teaches nothing.

use crate::faults::fault_scope;
use crate::fleet::{Choice, Plan, Route};
use crate::log;
use crate::metrics::Metrics;
use crate::policy::breaker::{BreakerState, Outcome};
use crate::report::Outcomes;
use std::sync::Arc;
use tokio::time::Instant;

/// Whose fault an outcome was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Not a fault: an answer (client errors included) or a client that gave up.
    None,
    /// The model on that backend (stale route, queue full, model error).
    Model,
    /// The whole backend (unreachable, shutting down, per-try timeout).
    Backend,
}

impl Scope {
    fn of(code: &str, message: &str, model: &str, version: &str) -> Scope {
        match fault_scope(code, message, model, version) {
            "model" => Scope::Model,
            "backend" => Scope::Backend,
            _ => Scope::None,
        }
    }

    pub fn is_fault(self) -> bool {
        self != Scope::None
    }
}

/// Everything a try needs to account for itself.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub outcomes: Arc<Outcomes>,
}

pub struct Attempt {
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    /// The route it was sent on: its model and version name it in metrics and logs.
    route: Arc<Route>,
    choice: Option<Choice>,
    method: &'static str,
    /// Whether its latency feeds the estimates (inference only: metadata calls are cheap
    /// everywhere and would drag them down).
    learn: bool,
    started: Instant,
}

impl Attempt {
    pub fn new(
        shared: Arc<Shared>,
        plan: Arc<Plan>,
        route: Arc<Route>,
        choice: Choice,
        method: &'static str,
    ) -> Attempt {
        shared.metrics.in_flight.inc();
        Attempt {
            shared,
            plan,
            route,
            choice: Some(choice),
            method,
            learn: matches!(method, "ModelInfer" | "ModelStreamInfer"),
            started: Instant::now(),
        }
    }

    /// Time since the try was sent.
    pub fn elapsed(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.started)
    }

    /// The try ended with `code` (a status name) and Triton's `message`; returns whose fault
    /// it was.
    pub fn finish(mut self, code: &'static str, message: &str) -> Scope {
        self.settle(code, message)
    }

    /// A decoupled model's request that ended with its stream and no answer (zero answers is
    /// one of its valid outcomes): a success whose duration says nothing of the backend's speed.
    pub fn finish_unanswered(mut self) {
        self.learn = false;
        self.settle("OK", "");
    }

    fn settle(&mut self, code: &'static str, message: &str) -> Scope {
        let Some(choice) = self.choice.take() else {
            return Scope::None;
        };
        let now = Instant::now();
        let seconds = now.saturating_duration_since(self.started).as_secs_f64();
        let scope = Scope::of(code, message, &self.route.model, &self.route.version);
        let gave_up = scope == Scope::None && matches!(code, "CANCELLED" | "DEADLINE_EXCEEDED");
        let (backend_outcome, model_outcome) = match scope {
            Scope::None if gave_up => (Outcome::GaveUp, Outcome::GaveUp),
            Scope::None => (Outcome::Success, Outcome::Success),
            // The server answered: only the model on it is at fault.
            Scope::Model => (Outcome::Success, Outcome::Fault),
            // A server fault says nothing of the model.
            Scope::Backend => (Outcome::Fault, Outcome::GaveUp),
        };
        let target = &choice.target;
        let backend = &target.backend.name;
        if let Some(admission) = choice.backend_admission {
            let changed = target.backend.breaker.record(admission, backend_outcome, now);
            self.transition(backend, "", changed);
        }
        if let Some(admission) = choice.model_admission {
            let changed = target.model_breaker.record(admission, model_outcome, now);
            self.transition(backend, &self.route.model, changed);
        }
        let policy = &self.plan.policy().balancing;
        if self.learn && !gave_up {
            target.latency.learn(policy, seconds, scope.is_fault(), now);
            if code == "OK" {
                self.route
                    .digest
                    .observe(now.saturating_duration_since(self.started), now);
            }
        }
        if !gave_up {
            self.shared.outcomes.add(backend, &self.route.model, scope);
        }
        self.shared.metrics.observe(
            self.method,
            &self.route.model,
            &self.route.version,
            backend,
            code,
            seconds,
        );
        self.shared.metrics.in_flight.dec();
        if log::enabled(log::Level::Debug) {
            let latency_ms = format!("{:.3}", seconds * 1000.0);
            log::debug(
                "request",
                &[
                    ("method", self.method),
                    ("model", &self.route.model),
                    ("version", &self.route.version),
                    ("backend", backend),
                    ("status", code),
                    ("latency_ms", &latency_ms),
                ],
            );
        }
        drop(choice.in_flight);
        scope
    }

    fn transition(&self, backend: &str, model: &str, changed: Option<BreakerState>) {
        let Some(state) = changed else { return };
        let name = match state {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        };
        log::warning(
            "breaker_changed",
            &[("backend", backend), ("model", model), ("state", name)],
        );
        self.shared
            .metrics
            .breaker_transitions
            .with_label_values(&[backend, model, name])
            .inc();
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.settle("CANCELLED", "");
    }
}
