//! The outlier-ejection cap: breakers alone never take out more than a share of the holders,
//! because a sick backend serves better than none.

/// How many of `live` backends their own breakers may eject: at least one.
pub fn ejection_cap(live: usize, max_ejected_fraction: f64) -> usize {
    model_ejection_cap(live, max_ejected_fraction).max(1)
}

/// How many holders of a model their model breakers may eject; no floor of one: a model's
/// last holder is never ejected, or the model would read as unknown.
pub fn model_ejection_cap(holders: usize, max_ejected_fraction: f64) -> usize {
    (holders as f64 * max_ejected_fraction).floor() as usize
}

#[cfg(test)]
mod tests {
    use super::{ejection_cap, model_ejection_cap};

    #[test]
    fn caps() {
        assert_eq!(ejection_cap(1, 0.5), 1);
        assert_eq!(ejection_cap(4, 0.5), 2);
        assert_eq!(ejection_cap(3, 0.0), 1);
        assert_eq!(model_ejection_cap(1, 0.5), 0);
        assert_eq!(model_ejection_cap(3, 0.5), 1);
    }
}
