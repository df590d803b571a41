//! The choice of a backend among those a route offers: power of two choices on calls in flight
//! x a peak-EWMA of latency per backend and model version.
//!
//! Why this policy: calls in flight react at once to a backend that slows down (its queue
//! grows), the peak-EWMA remembers a slow or faulty backend for `decay` and forgives it
//! smoothly, and two random draws avoid the herd that "always the least loaded" causes when
//! every choice sees the same numbers. A fault counts as at least `fault_penalty`, so a backend
//! that fails fast never looks fast.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::time::Instant;

/// How the latency estimate learns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadPolicy {
    pub decay_s: f64,
    pub fault_penalty_s: f64,
}

/// Peak-EWMA latency of one model version on one backend; None before its first answer.
#[derive(Default)]
pub struct Latency {
    estimate: Mutex<Option<(f64, Instant)>>,
}

impl Latency {
    pub fn current(&self, policy: &LoadPolicy, now: Instant) -> Option<f64> {
        let estimate = *self.estimate.lock().expect("latency lock");
        estimate.map(|(seconds, stamp)| {
            seconds * (-now.saturating_duration_since(stamp).as_secs_f64() / policy.decay_s).exp()
        })
    }

    /// A sample above the estimate replaces it (the peak); one below pulls it down smoothly.
    pub fn observe(&self, policy: &LoadPolicy, sample: f64, now: Instant) {
        let mut estimate = self.estimate.lock().expect("latency lock");
        let next = match *estimate {
            Some((seconds, stamp)) if sample < seconds => {
                let kept = (-now.saturating_duration_since(stamp).as_secs_f64() / policy.decay_s).exp();
                seconds * kept + sample * (1.0 - kept)
            }
            _ => sample,
        };
        *estimate = Some((next, now));
    }

    /// What a finished call teaches: faults count as at least the fault penalty.
    pub fn learn(&self, policy: &LoadPolicy, seconds: f64, fault: bool, now: Instant) {
        let sample = if fault {
            seconds.max(policy.fault_penalty_s)
        } else {
            seconds
        };
        self.observe(policy, sample, now);
    }
}

/// Seedable uniform draws shared by every thread (splitmix64 over a counter: lock-free).
pub struct Draws(AtomicU64);

impl Draws {
    pub fn new(seed: u64) -> Self {
        Draws(AtomicU64::new(seed))
    }

    pub fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E3779B97F4A7C15, Ordering::Relaxed)
            .wrapping_add(0x9E3779B97F4A7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Two distinct indices below `count` (count >= 2).
    pub fn two(&self, count: usize) -> (usize, usize) {
        let count = count as u64;
        let first = self.next() % count;
        let mut second = self.next() % (count - 1);
        if second >= first {
            second += 1;
        }
        (first as usize, second as usize)
    }
}

/// One candidate as the choice sees it.
#[derive(Clone)]
pub struct Load {
    pub in_flight: usize,
    /// None: no answer seen yet.
    pub latency: Option<f64>,
}

/// Index of the cheaper of two drawn candidates (the only one when there is one).
#[cfg(test)]
pub fn choose(loads: &[Load], draws: &Draws) -> Option<usize> {
    match loads.len() {
        0 => None,
        1 => Some(0),
        count => {
            let (a, b) = draws.two(count);
            let pair = [loads[a].clone(), loads[b].clone()];
            Some(if choose_of_two(&pair) == 0 { a } else { b })
        }
    }
}

/// 0 or 1: the cheaper of two candidates, (calls in flight + 1) x latency.
pub fn choose_of_two(loads: &[Load; 2]) -> usize {
    let (latency_a, latency_b) = match (loads[0].latency, loads[1].latency) {
        (Some(x), Some(y)) => (x, y),
        // No answer yet from one: take it to be as fast as the other, so calls in flight
        // decide.
        (Some(x), None) => (x, x),
        (None, Some(y)) => (y, y),
        (None, None) => (1.0, 1.0),
    };
    let cost_a = (loads[0].in_flight + 1) as f64 * latency_a;
    let cost_b = (loads[1].in_flight + 1) as f64 * latency_b;
    usize::from(cost_b < cost_a)
}

#[cfg(test)]
mod tests {
    use super::{choose, Draws, Latency, Load, LoadPolicy};
    use std::time::Duration;
    use tokio::time::Instant;

    const POLICY: LoadPolicy = LoadPolicy {
        decay_s: 5.0,
        fault_penalty_s: 0.25,
    };

    #[test]
    fn equal_candidates_share_the_calls() {
        let draws = Draws::new(7);
        let loads = [
            Load {
                in_flight: 0,
                latency: None,
            },
            Load {
                in_flight: 0,
                latency: None,
            },
        ];
        let mut picks = [0usize; 2];
        for _ in 0..1000 {
            picks[choose(&loads, &draws).unwrap()] += 1;
        }
        assert!(picks[0] > 400 && picks[1] > 400, "{picks:?}");
    }

    #[test]
    fn fewer_calls_in_flight_win_and_slow_loses() {
        let draws = Draws::new(7);
        let busy = [
            Load {
                in_flight: 2,
                latency: Some(0.001),
            },
            Load {
                in_flight: 0,
                latency: Some(0.001),
            },
        ];
        let slow = [
            Load {
                in_flight: 0,
                latency: Some(0.5),
            },
            Load {
                in_flight: 1,
                latency: Some(0.001),
            },
        ];
        for _ in 0..20 {
            assert_eq!(choose(&busy, &draws), Some(1));
            assert_eq!(choose(&slow, &draws), Some(1));
        }
        assert_eq!(choose(&[], &draws), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fault_looks_slow_and_is_forgiven_over_time() {
        let latency = Latency::default();
        let now = Instant::now();
        latency.learn(&POLICY, 0.0001, true, now);
        assert!((latency.current(&POLICY, now).unwrap() - 0.25).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(10)).await;
        let later = latency.current(&POLICY, Instant::now()).unwrap();
        assert!(later < 0.25 * 0.2, "{later}");
        // A sample below the estimate pulls it down smoothly, one above replaces it.
        latency.observe(&POLICY, 1.0, Instant::now());
        assert!((latency.current(&POLICY, Instant::now()).unwrap() - 1.0).abs() < 1e-9);
    }
}
