//! What a model's answers usually take, over the last 10 to 20 seconds, and the per-try
//! timeout and hedge delay derived from it.
//!
//! Two rotating windows of a fixed log-spaced histogram (factor 1.2, 50 µs to 120 s): memory is
//! fixed, an observation is one increment, and a model that was slow and became fast gets a
//! short timeout again after two windows. A quantile is read as its bucket's upper bound:
//! conservative, which is what a timeout wants.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(10);
/// Fewer answers than this say too little: no hedging, and the cap as the timeout.
pub const MIN_SAMPLES: u32 = 20;
const SMALLEST_S: f64 = 50e-6;
const GROWTH: f64 = 1.2;
const BUCKETS: usize = 82;

struct Windows {
    current: [u32; BUCKETS],
    previous: [u32; BUCKETS],
    current_start: Instant,
}

pub struct LatencyDigest(Mutex<Windows>);

impl Default for LatencyDigest {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(seconds: f64) -> usize {
    if seconds <= SMALLEST_S {
        return 0;
    }
    let index = ((seconds / SMALLEST_S).ln() / GROWTH.ln()).ceil() as usize;
    index.min(BUCKETS - 1)
}

fn upper_bound(bucket: usize) -> Duration {
    Duration::from_secs_f64(SMALLEST_S * GROWTH.powi(bucket as i32))
}

impl LatencyDigest {
    pub fn new() -> LatencyDigest {
        LatencyDigest(Mutex::new(Windows {
            current: [0; BUCKETS],
            previous: [0; BUCKETS],
            current_start: Instant::now(),
        }))
    }

    fn rotate(windows: &mut Windows, now: Instant) {
        let age = now.saturating_duration_since(windows.current_start);
        if age < WINDOW {
            return;
        }
        windows.previous = if age < WINDOW * 2 {
            windows.current
        } else {
            [0; BUCKETS]
        };
        windows.current = [0; BUCKETS];
        windows.current_start = now;
    }

    pub fn observe(&self, latency: Duration, now: Instant) {
        let mut windows = self.0.lock().expect("digest lock");
        Self::rotate(&mut windows, now);
        windows.current[bucket_of(latency.as_secs_f64())] += 1;
    }

    /// The `q` quantile of the recent answers; None with fewer than [`MIN_SAMPLES`].
    pub fn quantile(&self, q: f64, now: Instant) -> Option<Duration> {
        let mut windows = self.0.lock().expect("digest lock");
        Self::rotate(&mut windows, now);
        let count = |bucket: usize| windows.current[bucket] + windows.previous[bucket];
        let total: u32 = (0..BUCKETS).map(count).sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let wanted = (q * f64::from(total)).ceil().max(1.0) as u32;
        let mut seen = 0u32;
        for bucket in 0..BUCKETS {
            seen += count(bucket);
            if seen >= wanted {
                return Some(upper_bound(bucket));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

/// The per-try timeout: `multiplier` x the `quantile`, within `floor` and `cap`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveTimeout {
    pub floor: Duration,
    pub cap: Duration,
    pub multiplier: f64,
    pub quantile: f64,
}

impl AdaptiveTimeout {
    pub fn per_try(&self, digest: &LatencyDigest, now: Instant) -> Duration {
        match digest.quantile(self.quantile, now) {
            Some(latency) => latency.mul_f64(self.multiplier).clamp(self.floor, self.cap),
            None => self.cap,
        }
    }
}

/// When a second copy of a slow idempotent call goes out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HedgePolicy {
    pub quantile: f64,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl HedgePolicy {
    /// None (no hedge) until the model has answered often enough to know what is slow.
    pub fn delay(&self, digest: &LatencyDigest, now: Instant) -> Option<Duration> {
        digest
            .quantile(self.quantile, now)
            .map(|latency| latency.clamp(self.min_delay, self.max_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::{AdaptiveTimeout, HedgePolicy, LatencyDigest};
    use std::time::Duration;
    use tokio::time::{advance, Instant};

    const TIMEOUT: AdaptiveTimeout = AdaptiveTimeout {
        floor: Duration::from_millis(100),
        cap: Duration::from_secs(30),
        multiplier: 3.0,
        quantile: 0.99,
    };
    const HEDGE: HedgePolicy = HedgePolicy {
        quantile: 0.95,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(1),
    };

    fn feed(digest: &LatencyDigest, latency: Duration, count: usize) {
        for _ in 0..count {
            digest.observe(latency, Instant::now());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn too_few_answers_give_the_cap_and_no_hedge() {
        let digest = LatencyDigest::new();
        feed(&digest, Duration::from_millis(2), 19);
        assert_eq!(TIMEOUT.per_try(&digest, Instant::now()), Duration::from_secs(30));
        assert_eq!(HEDGE.delay(&digest, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_model_gets_the_floor_a_slow_one_a_multiple() {
        let fast = LatencyDigest::new();
        feed(&fast, Duration::from_millis(2), 100);
        assert_eq!(TIMEOUT.per_try(&fast, Instant::now()), Duration::from_millis(100));
        assert_eq!(HEDGE.delay(&fast, Instant::now()), Some(Duration::from_millis(10)));
        let slow = LatencyDigest::new();
        feed(&slow, Duration::from_secs(2), 100);
        let per_try = TIMEOUT.per_try(&slow, Instant::now());
        assert!(
            per_try >= Duration::from_secs(6) && per_try <= Duration::from_secs_f64(7.2),
            "{per_try:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_tail_raises_the_quantile_and_old_answers_age_out() {
        let digest = LatencyDigest::new();
        feed(&digest, Duration::from_millis(2), 95);
        feed(&digest, Duration::from_millis(500), 5);
        let p99 = digest.quantile(0.99, Instant::now()).unwrap();
        assert!(p99 >= Duration::from_millis(500), "{p99:?}");
        for _ in 0..3 {
            advance(Duration::from_secs(10)).await;
            feed(&digest, Duration::from_millis(2), 50);
        }
        let p99 = digest.quantile(0.99, Instant::now()).unwrap();
        assert!(p99 < Duration::from_millis(3), "{p99:?}");
    }
}
