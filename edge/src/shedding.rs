//! Caps on routed calls in flight, for the whole edge and per model. The caps come from the
//! snapshot served now and may change at any time; the counts live here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Shedder {
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_model: HashMap<String, usize>,
}

/// One admitted call; dropping it frees its place.
pub struct Admitted {
    /// None when no cap was set: nothing was counted, nothing to free.
    counted: Option<(Shedder, String)>,
}

impl Shedder {
    /// Admit a call for `model` under the caps (None: no cap), or None when one is reached.
    pub fn try_enter(&self, model: &str, max: Option<usize>, max_per_model: Option<usize>) -> Option<Admitted> {
        if max.is_none() && max_per_model.is_none() {
            return Some(Admitted { counted: None });
        }
        let mut counts = self.counts.lock().expect("shedder lock");
        if max.is_some_and(|max| counts.total >= max) {
            return None;
        }
        let current = counts.per_model.get(model).copied().unwrap_or(0);
        if max_per_model.is_some_and(|max| current >= max) {
            return None;
        }
        counts.total += 1;
        counts.per_model.insert(model.to_string(), current + 1);
        Some(Admitted {
            counted: Some((self.clone(), model.to_string())),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some((shedder, model)) = self.counted.take() else {
            return;
        };
        let mut counts = shedder.counts.lock().expect("shedder lock");
        counts.total -= 1;
        if let Some(count) = counts.per_model.get_mut(&model) {
            *count -= 1;
            if *count == 0 {
                counts.per_model.remove(&model);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Shedder;

    #[test]
    fn caps_and_frees() {
        let shedder = Shedder::default();
        let caps = (Some(2), Some(1));
        let a = shedder.try_enter("a", caps.0, caps.1).unwrap();
        assert!(shedder.try_enter("a", caps.0, caps.1).is_none());
        let b = shedder.try_enter("b", caps.0, caps.1).unwrap();
        assert!(shedder.try_enter("c", caps.0, caps.1).is_none());
        drop(a);
        assert!(shedder.try_enter("a", caps.0, caps.1).is_some());
        drop(b);
    }

    #[test]
    fn no_caps_admit_everything_and_caps_may_change() {
        let shedder = Shedder::default();
        let held: Vec<_> = (0..100).map(|_| shedder.try_enter("m", None, None).unwrap()).collect();
        assert_eq!(held.len(), 100);
        let one = shedder.try_enter("m", Some(1), None).unwrap();
        assert!(shedder.try_enter("m", Some(1), None).is_none());
        drop(one);
        assert!(shedder.try_enter("m", Some(1), None).is_some());
    }
}
