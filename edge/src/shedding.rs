//! Caps on routed calls in flight, for the whole edge and per model.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Shedder {
    max: Option<usize>,
    max_per_model: Option<usize>,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_model: HashMap<String, usize>,
}

/// One admitted call; dropping it frees its place.
pub struct Admitted {
    shedder: Shedder,
    model: String,
}

impl Shedder {
    pub fn new(max: Option<usize>, max_per_model: Option<usize>) -> Self {
        Shedder {
            max,
            max_per_model,
            counts: Arc::new(Mutex::new(Counts::default())),
        }
    }

    /// Admit a call for `model`, or None when a cap is reached.
    pub fn try_enter(&self, model: &str) -> Option<Admitted> {
        if self.max.is_none() && self.max_per_model.is_none() {
            return Some(Admitted {
                shedder: self.clone(),
                model: String::new(),
            });
        }
        let mut counts = self.counts.lock().expect("shedder lock");
        if self.max.is_some_and(|max| counts.total >= max) {
            return None;
        }
        let current = counts.per_model.get(model).copied().unwrap_or(0);
        if self.max_per_model.is_some_and(|max| current >= max) {
            return None;
        }
        counts.total += 1;
        counts.per_model.insert(model.to_string(), current + 1);
        Some(Admitted {
            shedder: self.clone(),
            model: model.to_string(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.shedder.max.is_none() && self.shedder.max_per_model.is_none() {
            return;
        }
        let mut counts = self.shedder.counts.lock().expect("shedder lock");
        counts.total -= 1;
        if let Some(count) = counts.per_model.get_mut(&self.model) {
            *count -= 1;
            if *count == 0 {
                counts.per_model.remove(&self.model);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Shedder;

    #[test]
    fn caps_and_frees() {
        let shedder = Shedder::new(Some(2), Some(1));
        let a = shedder.try_enter("a").unwrap();
        assert!(shedder.try_enter("a").is_none());
        let b = shedder.try_enter("b").unwrap();
        assert!(shedder.try_enter("c").is_none());
        drop(a);
        assert!(shedder.try_enter("a").is_some());
        drop(b);
    }

    #[test]
    fn no_caps_admit_everything() {
        let shedder = Shedder::new(None, None);
        let held: Vec<_> = (0..100).map(|_| shedder.try_enter("m").unwrap()).collect();
        assert_eq!(held.len(), 100);
    }
}
