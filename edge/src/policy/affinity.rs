//! Where a Triton sequence lives. Requests of a sequence (a `sequence_id` parameter) must reach
//! the backend holding its state for the sequence's whole life, on a stream or as unary calls.
//!
//! A sequence starts on the backend of highest random weight for its id among the holders
//! (the same on every edge for the same fleet), and is pinned there until its end, or until
//! idle for `idle`: a backend joining or leaving later does not move it. With no pin (an edge
//! that restarted) the same weight finds it again. The table is bounded: past `max_entries`
//! the least recently used pin goes, so clients opening sequences they never end cannot grow
//! it without bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Pins looked at for idleness on each new pin: sweeping amortised over the calls.
const SWEEP_PER_PIN: usize = 4;

type Key = (String, String);

struct Entry {
    backend: Arc<str>,
    last_used: Instant,
    stamp: u64,
}

#[derive(Default)]
struct Pins {
    entries: HashMap<Key, Entry>,
    /// stamp → key, least recently used first.
    order: BTreeMap<u64, Key>,
    next_stamp: u64,
}

impl Pins {
    fn touch(&mut self, key: &Key, now: Instant) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(entry) = self.entries.get_mut(key) {
            self.order.remove(&entry.stamp);
            entry.stamp = stamp;
            entry.last_used = now;
            self.order.insert(stamp, key.clone());
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.order.remove(&entry.stamp);
        }
    }
}

pub struct SequenceTable {
    idle: Duration,
    max_entries: usize,
    pins: Mutex<Pins>,
}

impl SequenceTable {
    pub fn new(idle: Duration, max_entries: usize) -> SequenceTable {
        SequenceTable {
            idle,
            max_entries: max_entries.max(1),
            pins: Mutex::new(Pins::default()),
        }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The backend the sequence is pinned to, refreshing its idle time.
    pub fn lookup(&self, model: &str, sequence: &str, now: Instant) -> Option<Arc<str>> {
        let key = (model.to_string(), sequence.to_string());
        let mut pins = self.pins.lock().expect("sequence lock");
        let entry = pins.entries.get(&key)?;
        if now.saturating_duration_since(entry.last_used) > self.idle {
            pins.remove(&key);
            return None;
        }
        let backend = entry.backend.clone();
        pins.touch(&key, now);
        Some(backend)
    }

    /// Pin the sequence to `backend` (at its start; replaces an older pin).
    pub fn pin(&self, model: &str, sequence: &str, backend: Arc<str>, now: Instant) {
        let key = (model.to_string(), sequence.to_string());
        let mut pins = self.pins.lock().expect("sequence lock");
        pins.remove(&key);
        for _ in 0..SWEEP_PER_PIN {
            let Some((_, oldest)) = pins.order.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            let expired = pins
                .entries
                .get(&oldest)
                .is_some_and(|entry| now.saturating_duration_since(entry.last_used) > self.idle);
            if !expired && pins.entries.len() < self.max_entries {
                break;
            }
            pins.remove(&oldest);
        }
        let stamp = pins.next_stamp;
        pins.next_stamp += 1;
        pins.order.insert(stamp, key.clone());
        pins.entries.insert(
            key,
            Entry {
                backend,
                last_used: now,
                stamp,
            },
        );
    }

    /// The sequence ended: forget it.
    pub fn end(&self, model: &str, sequence: &str) {
        let key = (model.to_string(), sequence.to_string());
        self.pins.lock().expect("sequence lock").remove(&key);
    }

    /// A backend left the fleet: its sequences' state is gone with it.
    pub fn forget_backend(&self, backend: &str) {
        let mut pins = self.pins.lock().expect("sequence lock");
        let gone: Vec<Key> = pins
            .entries
            .iter()
            .filter(|(_, entry)| &*entry.backend == backend)
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            pins.remove(&key);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pins.lock().expect("sequence lock").entries.len()
    }
}

/// Highest-random-weight choice of a backend for a sequence; the weight is FNV-1a 64 of
/// `sequence NUL backend`, so every edge picks the same for the same holders.
pub fn rendezvous(sequence: &str, backends: &[&str]) -> Option<usize> {
    (0..backends.len()).max_by_key(|&index| weight(sequence, backends[index]))
}

fn weight(sequence: &str, backend: &str) -> u64 {
    let mut value: u64 = 0xcbf29ce484222325;
    for byte in sequence.bytes().chain(std::iter::once(0u8)).chain(backend.bytes()) {
        value = (value ^ u64::from(byte)).wrapping_mul(0x100000001b3);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::{rendezvous, weight, SequenceTable};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::{advance, Instant};

    #[test]
    fn weights_are_stable_and_spread() {
        assert_eq!(weight("42", "triton-0"), 0x05E8EB9AD641B8D6);
        let backends = ["a", "b", "c"];
        let mut seen = [0usize; 3];
        for id in 0..300 {
            seen[rendezvous(&id.to_string(), &backends).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&count| count > 50), "{seen:?}");
        assert_eq!(rendezvous("x", &[]), None);
        // Removing another backend does not move a sequence.
        let before = backends[rendezvous("7", &backends).unwrap()];
        let without: Vec<&str> = backends.iter().copied().filter(|b| *b == before || *b == "a").collect();
        assert_eq!(without[rendezvous("7", &without).unwrap()], before);
    }

    #[tokio::test(start_paused = true)]
    async fn pins_live_until_the_end_or_idle() {
        let table = SequenceTable::new(Duration::from_secs(60), 100);
        table.pin("m", "1", Arc::from("a"), Instant::now());
        assert_eq!(table.lookup("m", "1", Instant::now()).as_deref(), Some("a"));
        assert_eq!(table.lookup("other", "1", Instant::now()), None);
        table.end("m", "1");
        assert_eq!(table.lookup("m", "1", Instant::now()), None);
        table.pin("m", "2", Arc::from("b"), Instant::now());
        advance(Duration::from_secs(59)).await;
        assert!(table.lookup("m", "2", Instant::now()).is_some(), "a lookup refreshes");
        advance(Duration::from_secs(61)).await;
        assert_eq!(table.lookup("m", "2", Instant::now()), None);
        assert_eq!(table.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_evicts_the_least_recently_used_and_backends_are_forgotten() {
        let table = SequenceTable::new(Duration::from_secs(600), 3);
        for id in ["1", "2", "3"] {
            table.pin("m", id, Arc::from("a"), Instant::now());
        }
        table.lookup("m", "1", Instant::now());
        table.pin("m", "4", Arc::from("b"), Instant::now());
        assert_eq!(table.len(), 3);
        assert_eq!(table.lookup("m", "2", Instant::now()), None, "the least recently used");
        assert!(table.lookup("m", "1", Instant::now()).is_some());
        table.forget_backend("a");
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup("m", "4", Instant::now()).as_deref(), Some("b"));
    }
}
