//! Circuit breaker, one per backend and one per backend+model.
//!
//! closed → open after `consecutive_failures` faults in a row, or when faults reach
//! `failure_rate` of the outcomes over the last `window` (with at least `min_requests` of
//! them); open for `base_ejection` x 2^(ejections so far), capped at `max_ejection`; then
//! half-open, admitting exactly `half_open_trials` calls at once: a success closes it (and
//! forgets the ejections), a fault opens it again for longer. Only faults count: the caller
//! reports client errors as successes.
//!
//! The trial limit is enforced: a trial is a token taken by `try_admit`; a trial dropped
//! without an outcome (its client went away) is given back, so a breaker never waits forever
//! for an answer that will not come. Outcomes of calls admitted in an earlier state (sent
//! while closed, answered after it opened) are ignored: each state change starts a new
//! generation.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerPolicy {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub half_open_trials: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            half_open_trials: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Fault,
    /// The client cancelled or its deadline passed: nothing learned; a trial is given back.
    GaveUp,
}

struct Inner {
    policy: BreakerPolicy,
    state: BreakerState,
    generation: u64,
    consecutive: u32,
    /// Per-second buckets of the window: (second since `origin`, outcomes, faults). Bounded
    /// by the window's length in seconds whatever the traffic.
    buckets: VecDeque<(u64, u32, u32)>,
    outcomes: u32,
    faults: u32,
    ejections: u32,
    open_until: Instant,
    trials_left: u32,
    origin: Instant,
}

pub struct Breaker(Mutex<Inner>);

/// Permission to send one call. A trial admission gives its trial back when dropped unused.
pub struct Admission {
    generation: u64,
    trial: Option<Arc<Breaker>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(breaker) = self.trial.take() {
            let mut inner = breaker.lock();
            if inner.generation == self.generation && inner.state == BreakerState::HalfOpen {
                inner.trials_left = (inner.trials_left + 1).min(inner.policy.half_open_trials);
            }
        }
    }
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Breaker {
        let now = Instant::now();
        Breaker(Mutex::new(Inner {
            policy,
            state: BreakerState::Closed,
            generation: 0,
            consecutive: 0,
            buckets: VecDeque::new(),
            outcomes: 0,
            faults: 0,
            ejections: 0,
            open_until: now,
            trials_left: 0,
            origin: now,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().expect("breaker lock")
    }

    /// A new policy; the state is kept.
    pub fn set_policy(&self, policy: BreakerPolicy) {
        self.lock().policy = policy;
    }

    /// The state now: an open breaker whose time is up reads half-open.
    pub fn state(&self, now: Instant) -> BreakerState {
        let mut inner = self.lock();
        inner.refresh(now);
        inner.state
    }

    /// Whether a call may be sent now (no side effect).
    pub fn admits(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        inner.refresh(now);
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => inner.trials_left > 0,
            BreakerState::Open => false,
        }
    }

    /// Admit a call: always while closed, one of the trials while half-open, never while open.
    pub fn try_admit(self: &Arc<Self>, now: Instant) -> Option<Admission> {
        let mut inner = self.lock();
        inner.refresh(now);
        match inner.state {
            BreakerState::Closed => Some(Admission {
                generation: inner.generation,
                trial: None,
            }),
            BreakerState::HalfOpen if inner.trials_left > 0 => {
                inner.trials_left -= 1;
                Some(Admission {
                    generation: inner.generation,
                    trial: Some(self.clone()),
                })
            }
            _ => None,
        }
    }

    /// The outcome of an admitted call; returns the new state when it changed.
    pub fn record(&self, mut admission: Admission, outcome: Outcome, now: Instant) -> Option<BreakerState> {
        // Settled here: a dropped admission must not give its trial back as well.
        let trial = admission.trial.take();
        let mut inner = self.lock();
        inner.refresh(now);
        if admission.generation != inner.generation {
            return None; // sent before the breaker changed state: says nothing of now
        }
        let before = inner.state;
        match (inner.state, outcome) {
            (BreakerState::HalfOpen, Outcome::Success) => inner.close(),
            (BreakerState::HalfOpen, Outcome::Fault) => inner.open(now),
            (BreakerState::HalfOpen, Outcome::GaveUp) => {
                if trial.is_some() {
                    inner.trials_left = (inner.trials_left + 1).min(inner.policy.half_open_trials);
                }
            }
            (BreakerState::Closed, Outcome::GaveUp) | (BreakerState::Open, _) => {}
            (BreakerState::Closed, outcome) => inner.count(outcome == Outcome::Fault, now),
        }
        (inner.state != before).then_some(inner.state)
    }
}

impl Inner {
    fn refresh(&mut self, now: Instant) {
        if self.state == BreakerState::Open && now >= self.open_until {
            self.state = BreakerState::HalfOpen;
            self.trials_left = self.policy.half_open_trials;
            self.generation += 1;
        }
    }

    fn count(&mut self, fault: bool, now: Instant) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let window = self.policy.window.as_secs().max(1);
        while let Some(&(oldest, outcomes, faults)) = self.buckets.front() {
            if oldest + window > second {
                break;
            }
            self.buckets.pop_front();
            self.outcomes -= outcomes;
            self.faults -= faults;
        }
        if self.buckets.back().is_none_or(|&(last, _, _)| last != second) {
            self.buckets.push_back((second, 0, 0));
        }
        let last = self.buckets.back_mut().expect("a bucket was just pushed");
        last.1 += 1;
        last.2 += u32::from(fault);
        self.outcomes += 1;
        self.faults += u32::from(fault);
        self.consecutive = if fault { self.consecutive + 1 } else { 0 };
        let over_rate = self.outcomes >= self.policy.min_requests
            && f64::from(self.faults) / f64::from(self.outcomes) >= self.policy.failure_rate;
        if self.consecutive >= self.policy.consecutive_failures || over_rate {
            self.open(now);
        }
    }

    fn open(&mut self, now: Instant) {
        let factor = 2u32.saturating_pow(self.ejections.min(20));
        let duration = self
            .policy
            .base_ejection
            .saturating_mul(factor)
            .min(self.policy.max_ejection);
        self.ejections += 1;
        self.open_until = now + duration;
        self.state = BreakerState::Open;
        self.generation += 1;
        self.forget_window();
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.generation += 1;
        self.ejections = 0;
        self.forget_window();
    }

    fn forget_window(&mut self) {
        self.consecutive = 0;
        self.buckets.clear();
        self.outcomes = 0;
        self.faults = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::{Breaker, BreakerPolicy, BreakerState, Outcome};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::{advance, Instant};

    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(BreakerPolicy::default()))
    }

    fn fail(breaker: &Arc<Breaker>, times: usize) {
        for _ in 0..times {
            let admission = breaker.try_admit(Instant::now()).unwrap();
            breaker.record(admission, Outcome::Fault, Instant::now());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_faults_open_and_time_makes_it_half_open() {
        let breaker = breaker();
        fail(&breaker, 4);
        assert_eq!(breaker.state(Instant::now()), BreakerState::Closed);
        fail(&breaker, 1);
        assert_eq!(breaker.state(Instant::now()), BreakerState::Open);
        assert!(breaker.try_admit(Instant::now()).is_none());
        advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.state(Instant::now()), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn the_trial_limit_is_enforced_and_a_dropped_trial_comes_back() {
        let breaker = breaker();
        fail(&breaker, 5);
        advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        let trial = breaker.try_admit(now).unwrap();
        assert!(breaker.try_admit(now).is_none(), "one trial at a time");
        assert!(!breaker.admits(now));
        drop(trial);
        assert!(breaker.admits(now), "a trial dropped unanswered is given back");
        let trial = breaker.try_admit(now).unwrap();
        assert_eq!(breaker.record(trial, Outcome::Success, now), Some(BreakerState::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_opens_for_longer_up_to_the_cap() {
        let breaker = breaker();
        fail(&breaker, 5);
        let mut expected = 1u64;
        for _ in 0..7 {
            advance(Duration::from_secs(expected) - Duration::from_millis(1)).await;
            assert_eq!(breaker.state(Instant::now()), BreakerState::Open);
            advance(Duration::from_millis(1)).await;
            let trial = breaker.try_admit(Instant::now()).unwrap();
            assert_eq!(
                breaker.record(trial, Outcome::Fault, Instant::now()),
                Some(BreakerState::Open)
            );
            expected = (expected * 2).min(30);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_rate_opens_over_enough_outcomes_and_old_ones_age_out() {
        let breaker = breaker();
        let now = Instant::now();
        for index in 0..19 {
            let admission = breaker.try_admit(now).unwrap();
            let outcome = if index % 2 == 0 {
                Outcome::Fault
            } else {
                Outcome::Success
            };
            breaker.record(admission, outcome, now);
        }
        assert_eq!(breaker.state(now), BreakerState::Closed, "19 outcomes: too few");
        advance(Duration::from_secs(11)).await;
        let admission = breaker.try_admit(Instant::now()).unwrap();
        breaker.record(admission, Outcome::Fault, Instant::now());
        assert_eq!(
            breaker.state(Instant::now()),
            BreakerState::Closed,
            "the old ones aged out"
        );
        let now = Instant::now();
        for index in 0..19 {
            let admission = breaker.try_admit(now).unwrap();
            let outcome = if index % 2 == 0 {
                Outcome::Success
            } else {
                Outcome::Fault
            };
            breaker.record(admission, outcome, now);
        }
        assert_eq!(breaker.state(now), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_of_calls_sent_before_it_opened_are_ignored() {
        let breaker = breaker();
        let early = breaker.try_admit(Instant::now()).unwrap();
        fail(&breaker, 5);
        advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.record(early, Outcome::Success, Instant::now()), None);
        assert_eq!(breaker.state(Instant::now()), BreakerState::HalfOpen);
        // A client that gave up teaches nothing, also while closed.
        let calm = self::breaker();
        for _ in 0..10 {
            let admission = calm.try_admit(Instant::now()).unwrap();
            calm.record(admission, Outcome::GaveUp, Instant::now());
        }
        assert_eq!(calm.state(Instant::now()), BreakerState::Closed);
    }
}
