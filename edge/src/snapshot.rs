//! A control-plane snapshot, read from its protobuf form and validated whole: either every
//! field can be applied or the snapshot is refused (NACKed) with the first reason, and the edge
//! keeps the one it serves.

use crate::balancer::LoadPolicy;
use crate::control::proto;
use crate::policy::breaker::BreakerPolicy;
use crate::policy::latency::{AdaptiveTimeout, HedgePolicy};
use crate::traffic::TrafficRoute;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// A backend as the snapshot names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub name: Arc<str>,
    /// host:port, checked to be a valid HTTP authority with a port.
    pub address: Arc<str>,
    /// Ready and not drained: it takes new calls.
    pub serving: bool,
}

/// Retries and hedges: how many tries a call may take and how much extra load they may add.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    pub budget_ratio: f64,
    pub min_per_second: f64,
    pub window: Duration,
    pub max_attempts: u32,
}

/// Every per-request setting, changeable at runtime.
#[derive(Clone, Debug)]
pub struct Policy {
    pub balancing: LoadPolicy,
    pub breaker: BreakerPolicy,
    pub max_ejected_fraction: f64,
    pub retry: RetryPolicy,
    pub per_try: AdaptiveTimeout,
    /// Fixed per-try timeouts by model name, in place of the adaptive one.
    pub per_try_overrides: HashMap<String, Duration>,
    /// None: no hedging.
    pub hedging: Option<HedgePolicy>,
    pub max_in_flight: Option<usize>,
    pub max_in_flight_per_model: Option<usize>,
    pub max_message_bytes: usize,
    pub sequence_idle: Duration,
}

/// A validated snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub backends: Vec<BackendSpec>,
    /// (model, version) → names of the backends holding it READY (in `backends`).
    pub routes: HashMap<(String, String), Vec<Arc<str>>>,
    /// Routes whose stream answers pass through as they come (decoupled models).
    pub unordered: HashSet<(String, String)>,
    /// Unversioned routes whose requests are sent naming this version (see `Route`).
    pub named_versions: HashMap<String, Arc<str>>,
    /// (model, version) → what its answers are stamped with.
    pub stamps: HashMap<(String, String), RouteStamp>,
    /// Traffic routes by the name clients send.
    pub traffic: HashMap<String, Arc<TrafficRoute>>,
    pub fallback_models: HashSet<String>,
    pub policy: Policy,
}

/// The version a route's answers come from and the sha256 of its model file ("" unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteStamp {
    pub version: String,
    pub sha256: String,
}

impl Snapshot {
    /// The snapshot, or why it cannot be applied.
    pub fn from_proto(snapshot: proto::Snapshot) -> Result<Snapshot, String> {
        if snapshot.version == 0 {
            return Err("version must be positive".into());
        }
        let policy = policy(snapshot.policy.ok_or("policy is missing")?)?;
        let mut backends = Vec::with_capacity(snapshot.backends.len());
        let mut serving: HashSet<&str> = HashSet::new();
        for backend in &snapshot.backends {
            if backend.name.is_empty() {
                return Err("a backend has no name".into());
            }
            check_address(&backend.address).map_err(|why| format!("backend {}: {why}", backend.name))?;
            if backends.iter().any(|b: &BackendSpec| *b.name == *backend.name) {
                return Err(format!("backend {} is named twice", backend.name));
            }
            backends.push(BackendSpec {
                name: Arc::from(backend.name.as_str()),
                address: Arc::from(backend.address.as_str()),
                serving: backend.ready && !backend.drained,
            });
            if backend.ready && !backend.drained {
                serving.insert(backend.name.as_str());
            }
        }
        let mut routes = HashMap::with_capacity(snapshot.routes.len());
        let mut unordered = HashSet::new();
        let mut named_versions = HashMap::new();
        let mut stamps = HashMap::new();
        for route in snapshot.routes {
            if !route.name_version.is_empty() {
                let canonical = !route.name_version.starts_with('0')
                    && route.name_version.len() <= 18
                    && route.name_version.bytes().all(|b| b.is_ascii_digit());
                if !route.version.is_empty() || !canonical {
                    return Err(format!(
                        "route {}/{}: name_version {:?} must be a version number on an unversioned route",
                        route.model, route.version, route.name_version
                    ));
                }
                named_versions.insert(route.model.clone(), Arc::from(route.name_version.as_str()));
            }
            let mut holders = Vec::with_capacity(route.backends.len());
            for name in &route.backends {
                let Some(spec) = backends.iter().find(|b| *b.name == **name) else {
                    return Err(format!(
                        "route {}/{} names backend {name}, which the snapshot does not list",
                        route.model, route.version
                    ));
                };
                // A drained or unready backend takes no new calls, whatever a route says.
                if serving.contains(name.as_str()) && !holders.contains(&spec.name) {
                    holders.push(spec.name.clone());
                }
            }
            let key = (route.model, route.version);
            if routes.contains_key(&key) {
                return Err(format!("route {}/{} is listed twice", key.0, key.1));
            }
            if route.unordered {
                unordered.insert(key.clone());
            }
            if !route.serves_version.is_empty() || !route.model_sha256.is_empty() {
                let stamp = RouteStamp {
                    version: route.serves_version,
                    sha256: route.model_sha256,
                };
                stamps.insert(key.clone(), stamp);
            }
            routes.insert(key, holders);
        }
        let mut traffic = HashMap::with_capacity(snapshot.traffic_routes.len());
        for route in snapshot.traffic_routes {
            let route = TrafficRoute::from_proto(route)?;
            if traffic.contains_key(&*route.name) {
                return Err(format!("traffic route {} is listed twice", route.name));
            }
            traffic.insert(route.name.to_string(), Arc::new(route));
        }
        Ok(Snapshot {
            version: snapshot.version,
            backends,
            routes,
            unordered,
            named_versions,
            stamps,
            traffic,
            fallback_models: snapshot.fallback_models.into_iter().collect(),
            policy,
        })
    }
}

fn check_address(address: &str) -> Result<(), String> {
    let authority: http::uri::Authority = address
        .parse()
        .map_err(|_| format!("address {address:?} is not host:port"))?;
    if authority.port_u16().is_none() || authority.host().is_empty() {
        return Err(format!("address {address:?} is not host:port"));
    }
    Ok(())
}

fn duration(value: Option<prost_types::Duration>, field: &str) -> Result<Duration, String> {
    let value = value.ok_or_else(|| format!("{field} is missing"))?;
    let (Ok(seconds), Ok(nanos)) = (u64::try_from(value.seconds), u32::try_from(value.nanos)) else {
        return Err(format!("{field} must not be negative"));
    };
    if nanos >= 1_000_000_000 {
        return Err(format!("{field} has more than a second of nanoseconds"));
    }
    Ok(Duration::new(seconds, nanos))
}

fn positive(value: Option<prost_types::Duration>, field: &str) -> Result<Duration, String> {
    let value = duration(value, field)?;
    if value.is_zero() {
        return Err(format!("{field} must be positive"));
    }
    Ok(value)
}

fn fraction(value: f64, field: &str, zero_allowed: bool) -> Result<f64, String> {
    let low_ok = if zero_allowed { value >= 0.0 } else { value > 0.0 };
    if !(low_ok && value <= 1.0) {
        return Err(format!(
            "{field} must be in {}0, 1]",
            if zero_allowed { "[" } else { "(" }
        ));
    }
    Ok(value)
}

fn at_least_one(value: u32, field: &str) -> Result<u32, String> {
    if value == 0 {
        return Err(format!("{field} must be at least 1"));
    }
    Ok(value)
}

fn limit(value: u32) -> Option<usize> {
    (value > 0).then_some(value as usize)
}

fn policy(policy: proto::Policy) -> Result<Policy, String> {
    let balancing = policy.balancing.ok_or("policy.balancing is missing")?;
    let breaker = policy.breaker.ok_or("policy.breaker is missing")?;
    let retry = policy.retry.ok_or("policy.retry is missing")?;
    let timeouts = policy.timeouts.ok_or("policy.timeouts is missing")?;
    let hedging = policy.hedging.ok_or("policy.hedging is missing")?;
    let shedding = policy.shedding.unwrap_or_default();
    let base_ejection = positive(breaker.base_ejection, "breaker.base_ejection")?;
    let max_ejection = positive(breaker.max_ejection, "breaker.max_ejection")?;
    if max_ejection < base_ejection {
        return Err("breaker.max_ejection must not be shorter than breaker.base_ejection".into());
    }
    if !(retry.budget_ratio >= 0.0 && retry.budget_ratio.is_finite()) {
        return Err("retry.budget_ratio must be a non-negative number".into());
    }
    if !(retry.min_per_second >= 0.0 && retry.min_per_second.is_finite()) {
        return Err("retry.min_per_second must be a non-negative number".into());
    }
    let floor = positive(timeouts.floor, "timeouts.floor")?;
    let cap = positive(timeouts.cap, "timeouts.cap")?;
    if cap < floor {
        return Err("timeouts.cap must not be shorter than timeouts.floor".into());
    }
    if !(timeouts.multiplier >= 1.0 && timeouts.multiplier.is_finite()) {
        return Err("timeouts.multiplier must be at least 1".into());
    }
    let mut per_try_overrides = HashMap::with_capacity(timeouts.per_model.len());
    for (model, value) in timeouts.per_model {
        let value = positive(Some(value), &format!("timeouts.per_model[{model}]"))?;
        per_try_overrides.insert(model, value);
    }
    let hedging = if hedging.enabled {
        let min_delay = positive(hedging.min_delay, "hedging.min_delay")?;
        let max_delay = positive(hedging.max_delay, "hedging.max_delay")?;
        if max_delay < min_delay {
            return Err("hedging.max_delay must not be shorter than hedging.min_delay".into());
        }
        Some(HedgePolicy {
            quantile: fraction(hedging.quantile, "hedging.quantile", false)?,
            min_delay,
            max_delay,
        })
    } else {
        None
    };
    if policy.max_message_bytes == 0 {
        return Err("max_message_bytes must be positive".into());
    }
    Ok(Policy {
        balancing: LoadPolicy {
            decay_s: positive(balancing.latency_decay, "balancing.latency_decay")?.as_secs_f64(),
            fault_penalty_s: duration(balancing.fault_penalty, "balancing.fault_penalty")?.as_secs_f64(),
        },
        breaker: BreakerPolicy {
            consecutive_failures: at_least_one(breaker.consecutive_failures, "breaker.consecutive_failures")?,
            failure_rate: fraction(breaker.failure_rate, "breaker.failure_rate", false)?,
            min_requests: at_least_one(breaker.min_requests, "breaker.min_requests")?,
            window: positive(breaker.window, "breaker.window")?,
            base_ejection,
            max_ejection,
            half_open_trials: at_least_one(breaker.half_open_trials, "breaker.half_open_trials")?,
        },
        max_ejected_fraction: fraction(breaker.max_ejected_fraction, "breaker.max_ejected_fraction", true)?,
        retry: RetryPolicy {
            budget_ratio: retry.budget_ratio,
            min_per_second: retry.min_per_second,
            window: positive(retry.window, "retry.window")?,
            max_attempts: at_least_one(retry.max_attempts, "retry.max_attempts")?,
        },
        per_try: AdaptiveTimeout {
            floor,
            cap,
            multiplier: timeouts.multiplier,
            quantile: fraction(timeouts.quantile, "timeouts.quantile", false)?,
        },
        per_try_overrides,
        hedging,
        max_in_flight: limit(shedding.max_in_flight),
        max_in_flight_per_model: limit(shedding.max_in_flight_per_model),
        max_message_bytes: usize::try_from(policy.max_message_bytes).unwrap_or(usize::MAX),
        sequence_idle: positive(policy.sequence_idle, "sequence_idle")?,
    })
}

#[cfg(test)]
pub mod tests {
    use super::Snapshot;
    use crate::control::proto;

    fn seconds(value: f64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: value.trunc() as i64,
            nanos: (value.fract() * 1e9) as i32,
        })
    }

    /// The policy the Python control plane sends by default.
    pub fn default_policy() -> proto::Policy {
        proto::Policy {
            balancing: Some(proto::Balancing {
                latency_decay: seconds(5.0),
                fault_penalty: seconds(0.25),
            }),
            breaker: Some(proto::Breaker {
                consecutive_failures: 5,
                failure_rate: 0.5,
                min_requests: 20,
                window: seconds(10.0),
                base_ejection: seconds(1.0),
                max_ejection: seconds(30.0),
                half_open_trials: 1,
                max_ejected_fraction: 0.5,
            }),
            retry: Some(proto::Retry {
                budget_ratio: 0.2,
                min_per_second: 10.0,
                window: seconds(10.0),
                max_attempts: 3,
            }),
            timeouts: Some(proto::Timeouts {
                floor: seconds(0.1),
                cap: seconds(30.0),
                multiplier: 3.0,
                quantile: 0.99,
                per_model: Default::default(),
            }),
            hedging: Some(proto::Hedging {
                enabled: true,
                quantile: 0.95,
                min_delay: seconds(0.01),
                max_delay: seconds(1.0),
            }),
            shedding: None,
            max_message_bytes: 1 << 20,
            sequence_idle: seconds(600.0),
        }
    }

    /// Two ready backends holding model `m` (latest), one holding `n` version 1.
    pub fn two_backends(version: u64) -> proto::Snapshot {
        let backend = |name: &str, address: &str| proto::Backend {
            name: name.into(),
            address: address.into(),
            ready: true,
            drained: false,
        };
        let route = |model: &str, version: &str, backends: &[&str]| proto::Route {
            model: model.into(),
            version: version.into(),
            backends: backends.iter().map(|b| b.to_string()).collect(),
            unordered: false,
            name_version: String::new(),
            serves_version: String::new(),
            model_sha256: String::new(),
        };
        proto::Snapshot {
            version,
            backends: vec![backend("a", "127.0.0.1:1"), backend("b", "127.0.0.1:2")],
            routes: vec![
                route("m", "", &["a", "b"]),
                route("m", "1", &["a", "b"]),
                route("n", "1", &["b"]),
            ],
            policy: Some(default_policy()),
            server: None,
            known_models: vec![proto::KnownModel {
                name: "m".into(),
                versions: vec!["1".into()],
            }],
            fallback_models: vec![],
            traffic_routes: vec![],
        }
    }

    #[test]
    fn a_good_snapshot_is_read_whole() {
        let snapshot = Snapshot::from_proto(two_backends(3)).unwrap();
        assert_eq!(snapshot.version, 3);
        assert_eq!(snapshot.routes[&("m".to_string(), String::new())].len(), 2);
        assert_eq!(snapshot.policy.retry.max_attempts, 3);
        assert!(snapshot.policy.hedging.is_some());
        assert_eq!(snapshot.policy.max_in_flight, None);
    }

    #[test]
    fn drained_and_unready_backends_leave_the_routes() {
        let mut message = two_backends(1);
        message.backends[0].drained = true;
        message.backends[1].ready = false;
        let snapshot = Snapshot::from_proto(message).unwrap();
        assert!(snapshot.routes.values().all(|holders| holders.is_empty()));
    }

    #[test]
    fn what_cannot_be_applied_is_refused_with_a_reason() {
        let refused = |edit: &dyn Fn(&mut proto::Snapshot)| {
            let mut message = two_backends(1);
            edit(&mut message);
            Snapshot::from_proto(message).unwrap_err()
        };
        assert!(refused(&|s| s.version = 0).contains("version"));
        assert!(refused(&|s| s.backends[0].address = "no port".into()).contains("backend a"));
        assert!(refused(&|s| s.routes[0].backends.push("zz".into())).contains("zz"));
        assert!(refused(&|s| s.policy = None).contains("policy"));
        assert!(
            refused(&|s| s.policy.as_mut().unwrap().breaker.as_mut().unwrap().failure_rate = 1.5)
                .contains("failure_rate")
        );
        assert!(
            refused(&|s| s.policy.as_mut().unwrap().timeouts.as_mut().unwrap().floor = seconds(60.0))
                .contains("timeouts.cap")
        );
        assert!(refused(&|s| {
            let breaker = s.policy.as_mut().unwrap().breaker.as_mut().unwrap();
            breaker.window = Some(prost_types::Duration { seconds: -1, nanos: 0 });
        })
        .contains("negative"));
        assert!(refused(&|s| s.backends.push(s.backends[0].clone())).contains("twice"));
        assert!(refused(&|s| s.routes[1].name_version = "1".into()).contains("name_version"));
        assert!(refused(&|s| s.routes[0].name_version = "01".into()).contains("name_version"));
    }

    #[test]
    fn an_unversioned_route_may_name_the_fleets_latest() {
        let mut message = two_backends(1);
        message.routes[0].name_version = "1".into();
        let snapshot = Snapshot::from_proto(message).unwrap();
        assert_eq!(snapshot.named_versions.get("m").map(|v| &**v), Some("1"));
    }
}
