//! Route snapshots from the Python gateway, swapped whole under a lock readers barely hold,
//! and the choice of a backend: power of two choices on calls in flight x a peak-EWMA of
//! latency per backend and model, the same policy as `gateway/balancing/p2c.py` (read its
//! docstring for the why). Load state outlives snapshots: a new snapshot reuses the counters
//! of the backends it still names.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// How the latency estimate learns: its time constant and the least a fault counts as.
#[derive(Clone, Copy)]
pub struct LoadPolicy {
    pub decay_s: f64,
    pub fault_penalty_s: f64,
}

/// Calls in flight to one backend, shared by every route that names it.
#[derive(Default)]
pub struct BackendLoad {
    in_flight: AtomicUsize,
}

/// Peak-EWMA latency of one model on one backend; None before its first answer.
pub struct Latency {
    policy: LoadPolicy,
    estimate: Mutex<Option<(f64, Instant)>>,
}

impl Latency {
    fn current(&self, now: Instant) -> Option<f64> {
        let estimate = *self.estimate.lock().expect("latency lock");
        estimate.map(|(seconds, stamp)| {
            seconds * (-now.saturating_duration_since(stamp).as_secs_f64() / self.policy.decay_s).exp()
        })
    }

    fn observe(&self, sample: f64, now: Instant) {
        let mut estimate = self.estimate.lock().expect("latency lock");
        let next = match *estimate {
            Some((seconds, stamp)) if sample < seconds => {
                let kept = (-now.saturating_duration_since(stamp).as_secs_f64() / self.policy.decay_s).exp();
                seconds * kept + sample * (1.0 - kept)
            }
            _ => sample,
        };
        *estimate = Some((next, now));
    }
}

/// A backend as one route offers it.
pub struct Target {
    pub name: String,
    pub address: String,
    load: Arc<BackendLoad>,
    latency: Arc<Latency>,
}

impl Target {
    /// Count a call as in flight until the returned guard is finished or dropped. `learn`:
    /// whether its latency feeds the estimate (inference only: metadata calls are cheap
    /// everywhere and would drag it down).
    pub fn start(&self, learn: bool) -> InFlight {
        self.load.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: self.load.clone(),
            latency: self.latency.clone(),
            learn,
            done: false,
        }
    }

    fn in_flight(&self) -> usize {
        self.load.in_flight.load(Ordering::Relaxed)
    }
}

/// A call in flight to a target; what it ends with teaches the latency estimate.
pub struct InFlight {
    load: Arc<BackendLoad>,
    latency: Arc<Latency>,
    learn: bool,
    done: bool,
}

impl InFlight {
    /// The call ended with `code` after `seconds`; `fault`: it was a backend fault (see
    /// `stats::fault_scope`). A client that gave up teaches nothing; a fault counts as at least
    /// the fault penalty, so failing fast never looks fast.
    pub fn finish(mut self, code: &str, fault: bool, seconds: f64) {
        self.done = true;
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.learn || matches!(code, "CANCELLED" | "DEADLINE_EXCEEDED") {
            return;
        }
        let sample = if fault {
            seconds.max(self.latency.policy.fault_penalty_s)
        } else {
            seconds
        };
        self.latency.observe(sample, Instant::now());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// (backend name, backend address, model, version)
type LatencyKey = (String, String, String, String);

/// Load state kept across snapshots, keyed by backend (name, address) and by model key.
pub struct Loads {
    policy: LoadPolicy,
    backends: Mutex<HashMap<(String, String), Arc<BackendLoad>>>,
    latencies: Mutex<HashMap<LatencyKey, Arc<Latency>>>,
    draws: AtomicU64,
}

impl Loads {
    pub fn new(policy: LoadPolicy, seed: u64) -> Arc<Loads> {
        Arc::new(Loads {
            policy,
            backends: Mutex::new(HashMap::new()),
            latencies: Mutex::new(HashMap::new()),
            draws: AtomicU64::new(seed),
        })
    }

    fn target(&self, name: &str, address: &str, model: &str, version: &str) -> Target {
        let backend_key = (name.to_string(), address.to_string());
        let load = self
            .backends
            .lock()
            .expect("loads lock")
            .entry(backend_key)
            .or_default()
            .clone();
        let latency_key = (
            name.to_string(),
            address.to_string(),
            model.to_string(),
            version.to_string(),
        );
        let latency = self
            .latencies
            .lock()
            .expect("loads lock")
            .entry(latency_key)
            .or_insert_with(|| {
                Arc::new(Latency {
                    policy: self.policy,
                    estimate: Mutex::new(None),
                })
            })
            .clone();
        Target {
            name: name.to_string(),
            address: address.to_string(),
            load,
            latency,
        }
    }

    /// A uniform random number (splitmix64 over a shared counter: lock-free, seedable).
    fn draw(&self) -> u64 {
        let mut z = self
            .draws
            .fetch_add(0x9E3779B97F4A7C15, Ordering::Relaxed)
            .wrapping_add(0x9E3779B97F4A7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
}

/// One snapshot: model key -> backends.
pub struct RouteTable {
    routes: HashMap<(String, String), Vec<Target>>,
    loads: Arc<Loads>,
}

impl RouteTable {
    /// `{"routes": [["simple", "1", [["t0", "127.0.0.1:8101"]]]]}`
    pub fn parse(line: &str, loads: &Arc<Loads>) -> Result<RouteTable, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let mut routes = HashMap::new();
        for entry in value["routes"].as_array().ok_or("missing routes")? {
            let name = entry[0].as_str().ok_or("route name")?;
            let version = entry[1].as_str().ok_or("route version")?;
            let targets: Vec<Target> = entry[2]
                .as_array()
                .ok_or("route backends")?
                .iter()
                .filter_map(|b| Some(loads.target(b[0].as_str()?, b[1].as_str()?, name, version)))
                .collect();
            if !targets.is_empty() {
                routes.insert((name.to_string(), version.to_string()), targets);
            }
        }
        Ok(RouteTable {
            routes,
            loads: loads.clone(),
        })
    }

    /// The backend for a call of the key, or None when no backend serves it. A request of a
    /// sequence always gets the same backend (rendezvous hashing, the same weights as the
    /// gateway's `gateway.balancing.affinity`); any other gets the cheaper of two drawn.
    pub fn choose(&self, name: &str, version: &str, sequence: Option<&str>) -> Option<&Target> {
        // The tuple key needs owned strings; a lookup allocates two short strings at most.
        let targets = self.routes.get(&(name.to_string(), version.to_string()))?;
        if let Some(sequence) = sequence {
            return targets.iter().max_by_key(|target| weight(sequence, &target.name));
        }
        let count = targets.len() as u64;
        if count == 1 {
            return targets.first();
        }
        let first = (self.loads.draw() % count) as usize;
        let mut second = (self.loads.draw() % (count - 1)) as usize;
        if second >= first {
            second += 1;
        }
        let (a, b) = (&targets[first], &targets[second]);
        let now = Instant::now();
        let (latency_a, latency_b) = match (a.latency.current(now), b.latency.current(now)) {
            (Some(x), Some(y)) => (x, y),
            // No answer yet from one: take it to be as fast as the other, so calls in flight decide.
            (Some(x), None) => (x, x),
            (None, Some(y)) => (y, y),
            (None, None) => (1.0, 1.0),
        };
        let cost_a = (a.in_flight() + 1) as f64 * latency_a;
        let cost_b = (b.in_flight() + 1) as f64 * latency_b;
        Some(if cost_b < cost_a { b } else { a })
    }
}

/// FNV-1a 64 of `sequence NUL backend`.
pub fn weight(sequence: &str, backend: &str) -> u64 {
    let mut value: u64 = 0xcbf29ce484222325;
    for byte in sequence.bytes().chain(std::iter::once(0u8)).chain(backend.bytes()) {
        value = (value ^ u64::from(byte)).wrapping_mul(0x100000001b3);
    }
    value
}

#[derive(Clone)]
pub struct SharedRoutes(Arc<RwLock<Arc<RouteTable>>>);

impl SharedRoutes {
    pub fn new(table: RouteTable) -> Self {
        SharedRoutes(Arc::new(RwLock::new(Arc::new(table))))
    }

    pub fn current(&self) -> Arc<RouteTable> {
        self.0.read().expect("route lock").clone()
    }

    pub fn replace(&self, table: RouteTable) {
        *self.0.write().expect("route lock") = Arc::new(table);
    }
}

#[cfg(test)]
mod tests {
    use super::{LoadPolicy, Loads, RouteTable};
    use std::collections::HashMap;

    const POLICY: LoadPolicy = LoadPolicy {
        decay_s: 5.0,
        fault_penalty_s: 0.25,
    };

    fn table(line: &str) -> RouteTable {
        RouteTable::parse(line, &Loads::new(POLICY, 7)).unwrap()
    }

    const TWO: &str = r#"{
        "routes": [["m", "", [["a", "a:1"], ["b", "b:2"]]], ["n", "1", []]]}"#;

    #[test]
    fn parses_and_spreads_equal_backends() {
        let table = table(TWO);
        let mut picks: HashMap<String, usize> = HashMap::new();
        for _ in 0..1000 {
            *picks
                .entry(table.choose("m", "", None).unwrap().name.clone())
                .or_default() += 1;
        }
        assert!(picks["a"] > 400 && picks["b"] > 400, "{picks:?}");
        assert!(table.choose("n", "1", None).is_none());
        assert!(table.choose("x", "", None).is_none());
    }

    #[test]
    fn sequences_stay_on_one_backend() {
        let table = table(TWO);
        let pinned = table.choose("m", "", Some("seq-1")).unwrap().name.clone();
        for _ in 0..5 {
            assert_eq!(table.choose("m", "", Some("seq-1")).unwrap().name, pinned);
        }
    }

    #[test]
    fn fewer_calls_in_flight_win() {
        let table = table(TWO);
        let busy = table.choose("m", "", None).unwrap();
        let busy_name = busy.name.clone();
        let _held = [busy.start(true), busy.start(true)];
        for _ in 0..20 {
            assert_ne!(table.choose("m", "", None).unwrap().name, busy_name);
        }
    }

    #[test]
    fn a_fault_makes_a_backend_look_slow_and_load_survives_a_new_snapshot() {
        let loads = Loads::new(POLICY, 7);
        let first = RouteTable::parse(TWO, &loads).unwrap();
        let targets = &first.routes[&("m".to_string(), String::new())];
        targets[0].start(true).finish("OK", false, 0.002);
        targets[1].start(true).finish("NOT_FOUND", true, 0.0001); // counts as the 250 ms penalty
        let second = RouteTable::parse(TWO, &loads).unwrap();
        for _ in 0..20 {
            assert_eq!(second.choose("m", "", None).unwrap().name, "a");
        }
        let held = second.choose("m", "", None).unwrap().start(true);
        drop(held); // a dropped guard frees its place without teaching anything
        assert_eq!(second.routes[&("m".to_string(), String::new())][0].in_flight(), 0);
    }

    #[test]
    fn a_client_that_gave_up_teaches_nothing() {
        let table = table(TWO);
        let targets = &table.routes[&("m".to_string(), String::new())];
        targets[0].start(true).finish("CANCELLED", false, 9.0);
        targets[0].start(false).finish("OK", false, 9.0); // a metadata call
        assert!(targets[0].latency.current(std::time::Instant::now()).is_none());
    }

    #[test]
    fn weight_matches_the_gateway() {
        // The same vector is checked in tests/unit/test_affinity.py.
        assert_eq!(super::weight("42", "triton-0"), 0x05E8EB9AD641B8D6);
    }

    #[test]
    fn rejects_a_snapshot_without_routes() {
        assert!(RouteTable::parse(r#"{"gateway": "x"}"#, &Loads::new(POLICY, 1)).is_err());
        assert!(RouteTable::parse("not json", &Loads::new(POLICY, 1)).is_err());
    }
}
