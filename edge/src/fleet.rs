//! The fleet as the edge sees it: what the control plane's last good snapshot says (backends,
//! routes, policy), and what the edge learned itself and keeps across snapshots (breakers,
//! latency estimates, calls in flight, sequence pins, the retry budget).
//!
//! Snapshots replace the plan whole; learned state is keyed by backend name (and model), so a
//! new snapshot that still names a backend keeps its breaker open and its estimates warm.

use crate::balancer::{self, Draws, Latency, Load};
use crate::policy::affinity::{rendezvous, SequenceTable};
use crate::policy::breaker::{Admission, Breaker, BreakerPolicy};
use crate::policy::ejection::{ejection_cap, model_ejection_cap};
use crate::policy::latency::LatencyDigest;
use crate::policy::retry_budget::RetryBudget;
use crate::snapshot::{Policy, Snapshot};
use crate::stamp::Stamp;
use crate::traffic::{TrafficRoute, Variant};
use crate::wire;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// (backend name, model name).
type BackendModel = (Arc<str>, String);
/// (backend name, model name, version).
type BackendModelVersion = (Arc<str>, String, String);

/// Most sequences pinned at once; past it the least recently used pin is dropped.
const MAX_PINNED_SEQUENCES: usize = 1 << 20;

/// One backend, shared by every route that names it.
pub struct BackendState {
    pub name: Arc<str>,
    pub address: Arc<str>,
    in_flight: AtomicUsize,
    pub breaker: Arc<Breaker>,
}

impl BackendState {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A route's backend: the backend, its breaker for the model and its latency for the version.
#[derive(Clone)]
pub struct Target {
    pub backend: Arc<BackendState>,
    pub model_breaker: Arc<Breaker>,
    pub latency: Arc<Latency>,
}

/// The backends holding one model version READY, and what the fleet's answers for it took.
pub struct Route {
    pub model: Arc<str>,
    pub version: Arc<str>,
    pub targets: Vec<Target>,
    pub digest: Arc<LatencyDigest>,
    /// Stream answers pass through as they come (a decoupled model); others keep request order.
    pub unordered: bool,
    /// An unversioned route's requests are sent naming this version (a rollout is half-way).
    pub name_version: Option<Arc<str>>,
    /// What its answers are stamped with when no traffic route chose it.
    pub stamp: Arc<Stamp>,
}

/// A traffic route with the stamp of each variant (in the route's order) and of its shadow.
pub struct TrafficPlan {
    pub route: Arc<TrafficRoute>,
    pub stamps: Vec<Arc<Stamp>>,
    /// The variant label of calls naming a version (""), made once.
    pub no_variant: Arc<str>,
}

impl TrafficPlan {
    /// The stamp of the variant at `index` of the route.
    pub fn stamp(&self, variant: &Variant) -> Arc<Stamp> {
        let index = self
            .route
            .variants
            .iter()
            .position(|v| std::ptr::eq(v, variant))
            .unwrap_or(0);
        self.stamps[index].clone()
    }
}

/// A chosen target with what its breakers admitted (None: let through by the ejection cap,
/// or a sequence's backend, which is used whatever its breaker says).
pub struct Choice {
    pub target: Target,
    pub backend_admission: Option<Admission>,
    pub model_admission: Option<Admission>,
    pub in_flight: InFlight,
}

/// A call counted in flight on its backend until dropped.
pub struct InFlight(Arc<BackendState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn start(backend: &Arc<BackendState>) -> InFlight {
    backend.in_flight.fetch_add(1, Ordering::Relaxed);
    InFlight(backend.clone())
}

/// What one snapshot says, joined with the learned state it names.
pub struct Plan {
    pub snapshot: Snapshot,
    /// model → version → route: looked up with borrowed strings, no allocation per call.
    routes: HashMap<String, HashMap<String, Arc<Route>>>,
    /// Traffic routes by the model name clients send.
    traffic: HashMap<String, TrafficPlan>,
}

impl Plan {
    pub fn route(&self, model: &str, version: &str) -> Option<&Arc<Route>> {
        self.routes
            .get(model)
            .and_then(|versions| versions.get(version))
            .filter(|route| !route.targets.is_empty())
    }

    pub fn traffic(&self, model: &str) -> Option<&TrafficPlan> {
        self.traffic.get(model)
    }

    pub fn policy(&self) -> &Policy {
        &self.snapshot.policy
    }

    pub fn fallback_serves(&self, model: &str) -> bool {
        self.snapshot.fallback_models.contains(model)
    }
}

pub struct Fleet {
    backends: Mutex<HashMap<Arc<str>, Arc<BackendState>>>,
    /// (backend, model) → the model's breaker on that backend.
    model_breakers: Mutex<HashMap<BackendModel, Arc<Breaker>>>,
    /// (backend, model, version) → latency estimate.
    latencies: Mutex<HashMap<BackendModelVersion, Arc<Latency>>>,
    /// (model, version) → latency digest over the fleet (per-try timeouts, hedge delays).
    digests: Mutex<HashMap<(String, String), Arc<LatencyDigest>>>,
    plan: RwLock<Option<Arc<Plan>>>,
    pub budget: RetryBudget,
    pub sequences: RwLock<Arc<SequenceTable>>,
    /// (traffic route, sequence id) → the variant the sequence started on: its state lives
    /// there, so a split changed mid-sequence moves only sequences that start afterwards.
    sequence_variants: RwLock<Arc<SequenceTable>>,
    draws: Draws,
}

impl Fleet {
    pub fn new(seed: u64) -> Fleet {
        Fleet {
            backends: Mutex::new(HashMap::new()),
            model_breakers: Mutex::new(HashMap::new()),
            latencies: Mutex::new(HashMap::new()),
            digests: Mutex::new(HashMap::new()),
            plan: RwLock::new(None),
            budget: RetryBudget::new(0.2, 10.0, Duration::from_secs(10)),
            sequences: RwLock::new(Arc::new(SequenceTable::new(
                Duration::from_secs(600),
                MAX_PINNED_SEQUENCES,
            ))),
            sequence_variants: RwLock::new(Arc::new(SequenceTable::new(
                Duration::from_secs(600),
                MAX_PINNED_SEQUENCES,
            ))),
            draws: Draws::new(seed),
        }
    }

    /// The plan served now; None before the first snapshot.
    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.plan.read().expect("plan lock").clone()
    }

    pub fn serving_version(&self) -> u64 {
        self.plan().map_or(0, |plan| plan.snapshot.version)
    }

    pub fn sequences(&self) -> Arc<SequenceTable> {
        self.sequences.read().expect("sequence lock").clone()
    }

    /// Apply a validated snapshot, or refuse a stale one.
    pub fn apply(&self, snapshot: Snapshot) -> Result<(), String> {
        let mut current = self.plan.write().expect("plan lock");
        if let Some(plan) = current.as_ref() {
            if snapshot.version <= plan.snapshot.version {
                return Err(format!(
                    "stale snapshot: version {} is not newer than {} (served now)",
                    snapshot.version, plan.snapshot.version
                ));
            }
        }
        let policy = &snapshot.policy;
        let retry = policy.retry;
        self.budget
            .set_policy(retry.budget_ratio, retry.min_per_second, retry.window);
        self.update_sequence_idle(policy.sequence_idle);
        let backends = self.sync_backends(&snapshot, &policy.breaker);
        let mut routes: HashMap<String, HashMap<String, Arc<Route>>> = HashMap::new();
        for ((model, version), holders) in &snapshot.routes {
            let targets = holders
                .iter()
                .filter_map(|name| backends.get(name))
                .map(|backend| Target {
                    backend: backend.clone(),
                    model_breaker: self.model_breaker(backend, model, &policy.breaker),
                    latency: self.latency(backend, model, version),
                })
                .collect();
            let route = Route {
                model: Arc::from(model.as_str()),
                version: Arc::from(version.as_str()),
                targets,
                digest: self.digest(model, version),
                unordered: snapshot.unordered.contains(&(model.clone(), version.clone())),
                name_version: if version.is_empty() {
                    snapshot.named_versions.get(model).cloned()
                } else {
                    None
                },
                stamp: Arc::new(route_stamp(&snapshot, model, version, "", None)),
            };
            routes
                .entry(model.clone())
                .or_default()
                .insert(version.clone(), Arc::new(route));
        }
        let traffic = snapshot
            .traffic
            .iter()
            .map(|(name, route)| {
                let stamps = route
                    .variants
                    .iter()
                    .map(|v| {
                        Arc::new(route_stamp(
                            &snapshot,
                            &v.model,
                            &v.version,
                            &v.name,
                            Some(route.revision),
                        ))
                    })
                    .collect();
                let plan = TrafficPlan {
                    route: route.clone(),
                    stamps,
                    no_variant: Arc::from(""),
                };
                (name.clone(), plan)
            })
            .collect();
        *current = Some(Arc::new(Plan {
            snapshot,
            routes,
            traffic,
        }));
        Ok(())
    }

    /// A draw for a request with nothing to choose by (a traffic route's unkeyed requests).
    pub fn draw(&self) -> u64 {
        self.draws.next()
    }

    fn update_sequence_idle(&self, idle: Duration) {
        for tables in [&self.sequences, &self.sequence_variants] {
            let mut table = tables.write().expect("sequence lock");
            if table.idle() != idle {
                // Pins live as long as the idle time they were made with; a new idle time
                // takes effect for sequences started from now on.
                *table = Arc::new(SequenceTable::new(idle, MAX_PINNED_SEQUENCES));
            }
        }
    }

    /// The variant of `route` a request of a sequence goes to: the one its sequence started
    /// on while the route still has it, else (its start, an edge that restarted, a variant
    /// gone) `chosen`, pinned from then on. The pin ends with the sequence.
    pub fn sequence_variant<'r>(
        &self,
        route: &'r TrafficRoute,
        chosen: &'r Variant,
        sequence: &wire::Sequence,
        now: Instant,
    ) -> &'r Variant {
        let table = self.sequence_variants.read().expect("sequence lock").clone();
        let pinned = if sequence.start {
            None
        } else {
            table
                .lookup(&route.name, &sequence.id, now)
                .and_then(|name| route.variants.iter().find(|v| v.name == name))
        };
        let variant = pinned.unwrap_or_else(|| {
            table.pin(&route.name, &sequence.id, chosen.name.clone(), now);
            chosen
        });
        if sequence.end {
            table.end(&route.name, &sequence.id);
        }
        variant
    }

    /// Backend states for the snapshot's backends: kept when name and address are unchanged,
    /// new otherwise; those no longer named are forgotten (with their sequences).
    fn sync_backends(&self, snapshot: &Snapshot, breaker: &BreakerPolicy) -> HashMap<Arc<str>, Arc<BackendState>> {
        let mut backends = self.backends.lock().expect("backends lock");
        let mut kept = HashMap::with_capacity(snapshot.backends.len());
        for spec in &snapshot.backends {
            let state = match backends.get(&spec.name) {
                Some(state) if state.address == spec.address => {
                    state.breaker.set_policy(*breaker);
                    state.clone()
                }
                _ => Arc::new(BackendState {
                    name: spec.name.clone(),
                    address: spec.address.clone(),
                    in_flight: AtomicUsize::new(0),
                    breaker: Arc::new(Breaker::new(*breaker)),
                }),
            };
            kept.insert(spec.name.clone(), state);
        }
        let sequences = self.sequences();
        for (name, state) in backends.iter() {
            let same = kept.get(name).is_some_and(|now| Arc::ptr_eq(now, state));
            if !same {
                sequences.forget_backend(name);
            }
        }
        *backends = kept.clone();
        drop(backends);
        self.model_breakers
            .lock()
            .expect("breakers lock")
            .retain(|(backend, _), breaker| {
                let keep = kept.contains_key(backend);
                if keep {
                    breaker.set_policy(snapshot.policy.breaker);
                }
                keep
            });
        self.latencies
            .lock()
            .expect("latency lock")
            .retain(|(backend, _, _), _| kept.contains_key(backend));
        kept
    }

    fn model_breaker(&self, backend: &BackendState, model: &str, policy: &BreakerPolicy) -> Arc<Breaker> {
        self.model_breakers
            .lock()
            .expect("breakers lock")
            .entry((backend.name.clone(), model.to_string()))
            .or_insert_with(|| Arc::new(Breaker::new(*policy)))
            .clone()
    }

    fn latency(&self, backend: &BackendState, model: &str, version: &str) -> Arc<Latency> {
        self.latencies
            .lock()
            .expect("latency lock")
            .entry((backend.name.clone(), model.to_string(), version.to_string()))
            .or_default()
            .clone()
    }

    fn digest(&self, model: &str, version: &str) -> Arc<LatencyDigest> {
        self.digests
            .lock()
            .expect("digest lock")
            .entry((model.to_string(), version.to_string()))
            .or_insert_with(|| Arc::new(LatencyDigest::new()))
            .clone()
    }

    /// Choose a backend of `route` for a call, skipping `tried`: among those whose breakers
    /// admit (unless more than the ejection cap are out: then among all), the cheaper of two.
    pub fn choose(&self, route: &Route, policy: &Policy, tried: &[Arc<str>], now: Instant) -> Option<Choice> {
        let targets = &route.targets;
        let holders = targets.len();
        let backend_out = targets.iter().filter(|t| !t.backend.breaker.admits(now)).count();
        let model_out = targets.iter().filter(|t| !t.model_breaker.admits(now)).count();
        // Outlier ejection never takes out more than its share: better a sick backend than none.
        let ignore_backend = backend_out > ejection_cap(holders, policy.max_ejected_fraction);
        let ignore_model = model_out > model_ejection_cap(holders, policy.max_ejected_fraction);
        let mut skipped: Vec<usize> = Vec::new();
        loop {
            let eligible = |index: usize, target: &Target| {
                !(skipped.contains(&index)
                    || tried.iter().any(|name| *name == target.backend.name)
                    || (!ignore_backend && !target.backend.breaker.admits(now))
                    || (!ignore_model && !target.model_breaker.admits(now)))
            };
            let load = |target: &Target| Load {
                in_flight: target.backend.in_flight(),
                latency: target.latency.current(&policy.balancing, now),
            };
            // The n-th eligible target, found again by counting: no list is built per call.
            let nth = |n: usize| {
                targets
                    .iter()
                    .enumerate()
                    .filter(|(index, target)| eligible(*index, target))
                    .nth(n)
                    .map(|(index, _)| index)
            };
            let count = targets
                .iter()
                .enumerate()
                .filter(|(index, target)| eligible(*index, target))
                .count();
            let index = match count {
                0 => return None,
                1 => nth(0)?,
                _ => {
                    let (a, b) = self.draws.two(count);
                    let (a, b) = (nth(a)?, nth(b)?);
                    let loads = [load(&targets[a]), load(&targets[b])];
                    if balancer::choose_of_two(&loads) == 0 {
                        a
                    } else {
                        b
                    }
                }
            };
            let target = &targets[index];
            let backend_admission = target.backend.breaker.try_admit(now);
            let model_admission = target.model_breaker.try_admit(now);
            // A half-open trial another call took a moment ago: choose again without it.
            let refused =
                (backend_admission.is_none() && !ignore_backend) || (model_admission.is_none() && !ignore_model);
            if refused {
                skipped.push(index);
                continue;
            }
            return Some(Choice {
                target: target.clone(),
                backend_admission,
                model_admission,
                in_flight: start(&target.backend),
            });
        }
    }

    /// The backend for a request of a sequence: the one it is pinned to while that one still
    /// holds the route; otherwise (its start, or an edge that restarted) the highest random
    /// weight among the holders, pinned from then on. Breakers are not asked: the sequence's
    /// state lives on one backend, and no other can serve it.
    pub fn choose_for_sequence(
        &self,
        model: &str,
        route: &Route,
        sequence: &str,
        start_flag: bool,
        now: Instant,
    ) -> Option<Choice> {
        let sequences = self.sequences();
        let pinned = if start_flag {
            None
        } else {
            sequences.lookup(model, sequence, now)
        };
        let target = match pinned.and_then(|name| route.targets.iter().find(|t| *t.backend.name == *name)) {
            Some(target) => target,
            None => {
                let names: Vec<&str> = route.targets.iter().map(|t| &*t.backend.name).collect();
                let target = &route.targets[rendezvous(sequence, &names)?];
                sequences.pin(model, sequence, target.backend.name.clone(), now);
                target
            }
        };
        Some(Choice {
            target: target.clone(),
            backend_admission: None,
            model_admission: None,
            in_flight: start(&target.backend),
        })
    }

    /// A backend of `route` for a shadow call: drawn among those whose breakers admit, without
    /// taking a half-open trial (a shadow's outcome teaches the breakers nothing: it must never
    /// decide whether the primary's backends take calls).
    pub fn choose_for_shadow(&self, route: &Route, now: Instant) -> Option<(Arc<BackendState>, InFlight)> {
        let admitted = |t: &&Target| t.backend.breaker.admits(now) && t.model_breaker.admits(now);
        let count = route.targets.iter().filter(admitted).count();
        if count == 0 {
            return None;
        }
        let index = (self.draws.next() % count as u64) as usize;
        let target = route.targets.iter().filter(admitted).nth(index)?;
        Some((target.backend.clone(), start(&target.backend)))
    }

    /// Every backend's state, for reports.
    pub fn backends(&self) -> Vec<Arc<BackendState>> {
        self.backends.lock().expect("backends lock").values().cloned().collect()
    }

    /// (backend, model, version, latency estimate) of every version a backend answered.
    pub fn latencies(&self) -> Vec<(Arc<str>, String, String, Arc<Latency>)> {
        self.latencies
            .lock()
            .expect("latency lock")
            .iter()
            .map(|((backend, model, version), latency)| {
                (backend.clone(), model.clone(), version.clone(), latency.clone())
            })
            .collect()
    }

    /// (backend, model, breaker) for every model breaker.
    pub fn model_breakers(&self) -> Vec<(Arc<str>, String, Arc<Breaker>)> {
        self.model_breakers
            .lock()
            .expect("breakers lock")
            .iter()
            .map(|((backend, model), breaker)| (backend.clone(), model.clone(), breaker.clone()))
            .collect()
    }
}

/// The stamp of answers from `model` `version` ("" = its latest: the version the control plane
/// says that route serves).
fn route_stamp(snapshot: &Snapshot, model: &str, version: &str, variant: &str, revision: Option<u64>) -> Stamp {
    let key = (model.to_string(), version.to_string());
    let served = snapshot.stamps.get(&key);
    let version = match served {
        Some(stamp) if !stamp.version.is_empty() => stamp.version.as_str(),
        _ => version,
    };
    let sha256 = served.map_or("", |stamp| stamp.sha256.as_str());
    Stamp::new(variant, version, sha256, revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto;

    fn route(weights: &[(&str, u32)]) -> TrafficRoute {
        TrafficRoute::from_proto(proto::TrafficRoute {
            name: "accumulator".into(),
            revision: 1,
            variants: weights
                .iter()
                .map(|(name, weight)| proto::Variant {
                    name: (*name).into(),
                    model: "accumulator".into(),
                    version: (*name).into(),
                    weight: *weight,
                })
                .collect(),
            key_header: String::new(),
            key_parameter: String::new(),
            salt: "accumulator".into(),
            shadow: None,
            versioned_model: String::new(),
        })
        .unwrap()
    }

    fn sequence(id: &str, start: bool, end: bool) -> wire::Sequence {
        wire::Sequence {
            id: id.into(),
            start,
            end,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sequence_keeps_its_variant_until_it_ends_or_idles_out() {
        let fleet = Fleet::new(1);
        let before = route(&[("1", 100), ("2", 0)]);
        let after = route(&[("1", 0), ("2", 100)]);
        let now = Instant::now();
        let started = fleet.sequence_variant(&before, &before.variants[0], &sequence("7", true, false), now);
        assert_eq!(&*started.name, "1");
        // The split moved: the running sequence stays, a new one follows the split.
        let next = fleet.sequence_variant(&after, &after.variants[1], &sequence("7", false, false), now);
        assert_eq!(&*next.name, "1");
        let other = fleet.sequence_variant(&after, &after.variants[1], &sequence("8", true, false), now);
        assert_eq!(&*other.name, "2");
        let last = fleet.sequence_variant(&after, &after.variants[1], &sequence("7", false, true), now);
        assert_eq!(&*last.name, "1");
        let ended = fleet.sequence_variant(&after, &after.variants[1], &sequence("7", false, false), now);
        assert_eq!(&*ended.name, "2", "ended: no pin left");
        // A pin idle past the sequence idle time is forgotten.
        let later = now + Duration::from_secs(601);
        let idle = fleet.sequence_variant(&before, &before.variants[0], &sequence("8", false, false), later);
        assert_eq!(&*idle.name, "1");
    }
}
