//! Federated averaging as pure functions over flat parameters. No I/O, no tensor backend.
//!
//! The weighted sum `Σ n_k Δ_k` is accumulated exactly in 128-bit fixed point, so the result
//! does not depend on the order in which updates arrive (floating-point sums do): the same
//! cohort gives the same global model, bit for bit, however the network interleaves it.

use crate::error::AggregateError;
use crate::params::{FlatParams, Layout};

/// Fixed-point scale: 2^64. Products `v · n` (exact in f64) are multiplied by it and truncated.
const SCALE: f64 = 18_446_744_073_709_551_616.0;
/// Largest `|v · n|` accepted: every term `v · n · 2^64` stays below 2^112.
const MAX_WEIGHTED_VALUE: f64 = 281_474_976_710_656.0; // 2^48
/// Most updates one sum takes (2^14), so that the i128 accumulator cannot overflow.
pub const MAX_UPDATES: usize = 16_384;

/// Running, order-independent sum of example-weighted deltas for one round.
///
/// Holds one accumulator the size of the model, whatever the number of updates.
#[derive(Debug, Clone)]
pub struct WeightedSum {
    layout: Layout,
    acc: Vec<i128>,
    total_weight: u64,
    count: usize,
}

impl WeightedSum {
    /// An empty sum for models of `layout`.
    pub fn new(layout: Layout) -> Self {
        let acc = vec![0; layout.total()];
        Self { layout, acc, total_weight: 0, count: 0 }
    }

    /// An empty sum for models of `layout` that reuses `accumulator` (from
    /// [`WeightedSum::into_accumulator`]) when given: for a large model, zeroing memory that is
    /// already mapped is much cheaper than faulting in fresh pages every round.
    pub fn reusing(layout: Layout, accumulator: Option<Vec<i128>>) -> Self {
        let Some(mut acc) = accumulator else { return Self::new(layout) };
        acc.clear();
        acc.resize(layout.total(), 0);
        Self { layout, acc, total_weight: 0, count: 0 }
    }

    /// The accumulator's memory, for [`WeightedSum::reusing`].
    pub fn into_accumulator(self) -> Vec<i128> {
        self.acc
    }

    /// Adds `weight · delta` (`weight` up to 2^24, so `v · weight` is exact in f64).
    /// On error the sum is left exactly as it was.
    pub fn add(&mut self, delta: &FlatParams, weight: u64) -> Result<(), AggregateError> {
        self.layout.ensure_same(delta.layout())?;
        if weight == 0 {
            return Err(AggregateError::ZeroWeight);
        }
        if weight > (1 << 24) {
            return Err(AggregateError::WeightTooLarge(weight));
        }
        if self.count >= MAX_UPDATES {
            return Err(AggregateError::TooManyUpdates);
        }
        let w = weight as f64;
        // One pass: add each term and, at the first bad value, take back the terms already
        // added (integer sums undo exactly), so a bad update never leaves a trace.
        // Each term is below 2^112 and there are fewer than 2^14 of them, so the sum stays
        // below 2^126 and cannot overflow.
        let values = delta.values();
        for (i, (a, &v)) in self.acc.iter_mut().zip(values).enumerate() {
            match fixed_point(v, w) {
                Some(t) => *a += t,
                None => {
                    for (a, &v) in self.acc[..i].iter_mut().zip(values) {
                        *a -= fixed_point(v, w).unwrap_or(0);
                    }
                    return Err(AggregateError::ValueOutOfRange { index: i, value: v });
                }
            }
        }
        self.total_weight += weight;
        self.count += 1;
        Ok(())
    }

    /// Number of updates added.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Sum of the weights added.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// The weighted sum `Σ n_k Δ_k`, or `None` when nothing was added.
    pub fn sum(&self) -> Option<FlatParams> {
        if self.count == 0 {
            return None;
        }
        let values = self.acc.iter().map(|&a| ((a as f64) / SCALE) as f32).collect();
        FlatParams::new(self.layout.clone(), values).ok()
    }

    /// The weighted mean `Σ n_k Δ_k / Σ n_k`, or `None` when nothing was added.
    pub fn mean(&self) -> Option<FlatParams> {
        if self.total_weight == 0 {
            return None;
        }
        let n = self.total_weight as f64;
        let values = self.acc.iter().map(|&a| ((a as f64) / SCALE / n) as f32).collect();
        FlatParams::new(self.layout.clone(), values).ok()
    }
}

/// `v · w · 2^64` truncated toward zero, or `None` when `v · w` is not finite or above 2^48.
///
/// Equal to `(v · w · 2^64) as i128`, but read straight from the bits of the exact product
/// `v · w` (mantissa shifted by its exponent): the float → i128 cast is a slow library call
/// and was most of the aggregation's time.
#[inline]
fn fixed_point(v: f32, w: f64) -> Option<i128> {
    let x = f64::from(v) * w;
    if !x.is_finite() || x.abs() > MAX_WEIGHTED_VALUE {
        return None;
    }
    let bits = x.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32;
    if exponent == 0 {
        return Some(0); // ±0 (an f32 times a weight ≥ 1 is never subnormal in f64)
    }
    let mantissa = i128::from((bits & ((1 << 52) - 1)) | (1 << 52));
    // x = mantissa · 2^(exponent − 1075), so x · 2^64 = mantissa · 2^(exponent − 1011);
    // exponent ≤ 1071 here, so a left shift is at most 60 and stays below 2^113.
    let shift = exponent - 1011;
    let magnitude = if shift >= 0 { mantissa << shift } else { mantissa >> (-shift).min(127) };
    Some(if bits >> 63 == 1 { -magnitude } else { magnitude })
}

/// The server step: `w ← w + η · Δ̄`.
pub fn apply_delta(global: &FlatParams, mean_delta: &FlatParams, server_lr: f32) -> Result<FlatParams, AggregateError> {
    global.layout().ensure_same(mean_delta.layout())?;
    let values = global.values().iter().zip(mean_delta.values()).map(|(w, d)| w + server_lr * d).collect();
    Ok(FlatParams::new(global.layout().clone(), values)?)
}

/// FedAvg of a whole cohort at once: `w + η · Σ (n_k / Σ n) Δ_k`. `None` keeps the model.
pub fn fedavg(global: &FlatParams, updates: &[(FlatParams, u64)], server_lr: f32) -> Result<Option<FlatParams>, AggregateError> {
    let mut sum = WeightedSum::new(global.layout().clone());
    for (delta, n) in updates {
        sum.add(delta, *n)?;
    }
    sum.mean().map(|m| apply_delta(global, &m, server_lr)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::TensorSpec;

    fn layout(n: usize) -> Layout {
        Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![n] }])
    }

    fn params(v: &[f32]) -> FlatParams {
        FlatParams::new(layout(v.len()), v.to_vec()).unwrap()
    }

    #[test]
    fn fedavg_matches_hand_computed_values() {
        // global [1, 2]; deltas [1, -1] (n=1) and [4, 2] (n=3):
        // mean = ([1,-1] + 3·[4,2]) / 4 = [13/4, 5/4] = [3.25, 1.25]; w = [4.25, 3.25].
        let global = params(&[1.0, 2.0]);
        let updates = vec![(params(&[1.0, -1.0]), 1), (params(&[4.0, 2.0]), 3)];
        let new = fedavg(&global, &updates, 1.0).unwrap().unwrap();
        assert_eq!(new.values(), &[4.25, 3.25]);
        // Server learning rate 0.5 halves the step: [1 + 1.625, 2 + 0.625].
        let half = fedavg(&global, &updates, 0.5).unwrap().unwrap();
        assert_eq!(half.values(), &[2.625, 2.625]);
    }

    #[test]
    fn equal_weights_give_the_plain_mean() {
        let global = params(&[0.0, 0.0, 0.0]);
        let updates = vec![(params(&[0.3, 0.6, -0.9]), 10), (params(&[0.1, 0.0, 0.3]), 10)];
        let new = fedavg(&global, &updates, 1.0).unwrap().unwrap();
        let expected = [0.2f32, 0.3, -0.3];
        for (a, b) in new.values().iter().zip(expected) {
            assert!((a - b).abs() < 1e-7, "{a} vs {b}");
        }
    }

    #[test]
    fn no_updates_keeps_the_model() {
        assert!(fedavg(&params(&[1.0]), &[], 1.0).unwrap().is_none());
    }

    #[test]
    fn sum_is_independent_of_order() {
        // Values chosen so that f32/f64 summation in different orders differs.
        let deltas: Vec<(FlatParams, u64)> = (0..50)
            .map(|i| {
                let x = (i as f32 * 0.7311).sin() * 10f32.powi(i % 7 - 3);
                (params(&[x, -x * 1.0001, 1e-3 + x]), 1 + (i as u64 * 37) % 101)
            })
            .collect();
        let mut a = WeightedSum::new(layout(3));
        let mut b = WeightedSum::new(layout(3));
        for (d, n) in &deltas {
            a.add(d, *n).unwrap();
        }
        for (d, n) in deltas.iter().rev() {
            b.add(d, *n).unwrap();
        }
        let (ma, mb) = (a.mean().unwrap(), b.mean().unwrap());
        assert_eq!(ma.hash(), mb.hash());
    }

    #[test]
    fn fixed_point_equals_the_float_cast() {
        let weights = [1.0, 3.0, 200.0, 16_777_216.0];
        let mut values = vec![0.0f32, -0.0, 1.0, -1.0, 0.1, -0.3, 1e-30, -1e-38, 1.4e-45, 3.0e7, -1.6e7, 2.5e5, f32::MIN_POSITIVE];
        values.extend((0..2000).map(|i| ((i as f32) * 0.917).sin() * 10f32.powi(i % 40 - 30)));
        for &w in &weights {
            for &v in &values {
                let x = f64::from(v) * w;
                let expected = (x.abs() <= MAX_WEIGHTED_VALUE).then_some((x * SCALE) as i128);
                assert_eq!(fixed_point(v, w), expected, "v = {v:e}, w = {w}");
            }
        }
        assert_eq!(fixed_point(f32::NAN, 1.0), None);
        assert_eq!(fixed_point(f32::NEG_INFINITY, 1.0), None);
        assert_eq!(fixed_point(3e8, 16_777_216.0), None);
    }

    #[test]
    fn a_bad_value_late_in_an_update_leaves_the_sum_exactly_as_it_was() {
        let mut sum = WeightedSum::new(layout(4));
        sum.add(&params(&[0.25, -0.125, 3.0, 1e-3]), 7).unwrap();
        let before = sum.mean().unwrap();
        let err = sum.add(&params(&[0.7, 0.3, -1.1, f32::NAN]), 5).unwrap_err();
        assert!(matches!(err, AggregateError::ValueOutOfRange { index: 3, .. }), "{err}");
        assert_eq!(sum.count(), 1);
        assert_eq!(sum.mean().unwrap().values(), before.values());
    }

    #[test]
    fn a_reused_accumulator_starts_from_zero() {
        let mut first = WeightedSum::new(layout(3));
        first.add(&params(&[1.0, 2.0, 3.0]), 5).unwrap();
        let mut second = WeightedSum::reusing(layout(2), Some(first.into_accumulator()));
        assert_eq!((second.count(), second.total_weight()), (0, 0));
        second.add(&params(&[0.5, -0.25]), 2).unwrap();
        assert_eq!(second.mean().unwrap().values(), &[0.5, -0.25]);
    }

    #[test]
    fn layout_mismatch_is_rejected_and_leaves_the_sum_unchanged() {
        let mut sum = WeightedSum::new(layout(2));
        sum.add(&params(&[1.0, 1.0]), 2).unwrap();
        let err = sum.add(&params(&[1.0, 1.0, 1.0]), 1).unwrap_err();
        assert!(matches!(err, AggregateError::Params(_)), "{err}");
        let wrong_name = FlatParams::new(Layout::new(vec![TensorSpec { name: "v".into(), shape: vec![2] }]), vec![0.0, 0.0]).unwrap();
        assert!(sum.add(&wrong_name, 1).is_err());
        assert_eq!(sum.count(), 1);
        assert_eq!(sum.mean().unwrap().values(), &[1.0, 1.0]);
    }

    #[test]
    fn non_finite_values_are_rejected_without_touching_the_sum() {
        let mut sum = WeightedSum::new(layout(2));
        sum.add(&params(&[0.5, 0.5]), 1).unwrap();
        let err = sum.add(&params(&[1.0, f32::NAN]), 1).unwrap_err();
        assert!(matches!(err, AggregateError::ValueOutOfRange { index: 1, .. }), "{err}");
        assert!(sum.add(&params(&[f32::INFINITY, 0.0]), 1).is_err());
        assert!(sum.add(&params(&[0.0, 0.0]), 0).is_err());
        assert_eq!(sum.total_weight(), 1);
        assert_eq!(sum.mean().unwrap().values(), &[0.5, 0.5]);
    }
}
