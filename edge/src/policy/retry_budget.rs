//! Retry budget: retries (and hedges) may add at most `ratio` of the requests over a sliding
//! window, or `min_per_second` x the window, whichever is more. Retrying every failure doubles
//! the load on a fleet that is already failing; the budget keeps retries to a share of recent
//! traffic, and the floor lets a quiet edge still retry. Per-second buckets: O(1) per call,
//! fixed memory.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

struct Policy {
    ratio: f64,
    min_per_second: f64,
    window_s: u64,
}

struct Window {
    origin: Instant,
    /// (second since origin, requests, retries), oldest first.
    buckets: VecDeque<(u64, u64, u64)>,
    requests: u64,
    retries: u64,
}

pub struct RetryBudget {
    policy: Mutex<Policy>,
    window: Mutex<Window>,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: f64, window: Duration) -> RetryBudget {
        RetryBudget {
            policy: Mutex::new(Policy {
                ratio,
                min_per_second,
                window_s: window.as_secs().max(1),
            }),
            window: Mutex::new(Window {
                origin: Instant::now(),
                buckets: VecDeque::new(),
                requests: 0,
                retries: 0,
            }),
        }
    }

    pub fn set_policy(&self, ratio: f64, min_per_second: f64, window: Duration) {
        *self.policy.lock().expect("budget lock") = Policy {
            ratio,
            min_per_second,
            window_s: window.as_secs().max(1),
        };
    }

    pub fn on_request(&self, now: Instant) {
        let window_s = self.policy.lock().expect("budget lock").window_s;
        let mut window = self.window.lock().expect("budget lock");
        let bucket = advance(&mut window, now, window_s);
        window.buckets[bucket].1 += 1;
        window.requests += 1;
    }

    /// Spends one retry when the budget has room; false: do not retry.
    pub fn try_retry(&self, now: Instant) -> bool {
        let (ratio, floor, window_s) = {
            let policy = self.policy.lock().expect("budget lock");
            (
                policy.ratio,
                policy.min_per_second * policy.window_s as f64,
                policy.window_s,
            )
        };
        let mut window = self.window.lock().expect("budget lock");
        let bucket = advance(&mut window, now, window_s);
        let allowed = floor.max(ratio * window.requests as f64);
        if (window.retries + 1) as f64 > allowed {
            return false;
        }
        window.buckets[bucket].2 += 1;
        window.retries += 1;
        true
    }
}

/// Drops buckets older than the window; returns the index of the current second's bucket.
fn advance(window: &mut Window, now: Instant, window_s: u64) -> usize {
    let second = now.saturating_duration_since(window.origin).as_secs();
    while let Some(&(oldest, requests, retries)) = window.buckets.front() {
        if oldest + window_s > second {
            break;
        }
        window.buckets.pop_front();
        window.requests -= requests;
        window.retries -= retries;
    }
    if window.buckets.back().is_none_or(|&(last, _, _)| last != second) {
        window.buckets.push_back((second, 0, 0));
    }
    window.buckets.len() - 1
}

#[cfg(test)]
mod tests {
    use super::RetryBudget;
    use std::time::Duration;
    use tokio::time::{advance, Instant};

    #[tokio::test(start_paused = true)]
    async fn the_floor_then_the_ratio_bound_retries_and_old_ones_age_out() {
        let budget = RetryBudget::new(0.2, 1.0, Duration::from_secs(10));
        let now = Instant::now();
        // The floor: 1 per second over 10 s.
        assert_eq!((0..20).filter(|_| budget.try_retry(now)).count(), 10);
        for _ in 0..100 {
            budget.on_request(now);
        }
        // 20% of 100 requests: 20 in all, 10 spent.
        assert_eq!((0..20).filter(|_| budget.try_retry(now)).count(), 10);
        advance(Duration::from_secs(11)).await;
        assert_eq!((0..20).filter(|_| budget.try_retry(Instant::now())).count(), 10);
    }
}
