//! Record-level differential privacy at a site: DP-SGD (Abadi et al. 2016, as Opacus does).
//!
//! Each step samples the site's training rows by Poisson sampling at rate q (expected batch
//! `batch_size`), clips each example's gradient to L2 norm C, adds N(0, σ²C²) to their sum
//! and divides by the expected batch. The site's own accountant counts every step it ever
//! took (rate q, multiplier σ); ε then bounds what any participant — the coordinator, the
//! other sites, whoever sees a model — can learn about any one patient of that site.

use serde::{Deserialize, Serialize};

use super::accountant::{Step, default_orders, epsilon};

/// `[record_privacy]` of a task: DP-SGD at every site.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordDp {
    /// C: each example's gradient is clipped to this L2 norm.
    #[serde(default = "default_clip")]
    pub clip_norm: f64,
    /// σ, fixed. Or leave it out and give `target_epsilon` and `rounds`: each site then picks
    /// the smallest σ that keeps its own rows within ε after that many rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_multiplier: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_epsilon: Option<f64>,
    /// Rounds the budget must last (with `target_epsilon`; the coordinator fills in `--rounds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u32>,
    /// δ of the per-record (ε, δ).
    #[serde(default = "default_delta")]
    pub delta: f64,
}

fn default_clip() -> f64 {
    1.0
}
fn default_delta() -> f64 {
    1e-5
}

impl RecordDp {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return Err(format!("record_privacy.clip_norm must be positive, got {}", self.clip_norm));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(format!("record_privacy.delta must be in (0, 1), got {}", self.delta));
        }
        match (self.noise_multiplier, self.target_epsilon, self.rounds) {
            (Some(z), None, _) if z.is_finite() && z > 0.0 => Ok(()),
            (None, Some(e), Some(r)) if e.is_finite() && e > 0.0 && r > 0 => Ok(()),
            (None, Some(_), None) => Err("record_privacy.target_epsilon needs `rounds` (the coordinator sets it from --rounds)".into()),
            _ => Err("record_privacy needs a positive noise_multiplier, or a positive target_epsilon with rounds, not both".into()),
        }
    }

    /// A site's sampling rate: its expected batch over its training rows (at most 1).
    pub fn sampling_rate(batch_size: usize, rows: usize) -> f64 {
        (batch_size as f64 / rows.max(1) as f64).min(1.0)
    }

    /// DP-SGD steps in one epoch at rate q: one pass over the rows in expectation.
    pub fn steps_per_epoch(q: f64) -> u64 {
        (1.0 / q).round().max(1.0) as u64
    }

    /// The σ a site with sampling rate `q` and `steps_per_round` steps a round uses.
    pub fn noise_for_site(&self, q: f64, steps_per_round: u64) -> Result<f64, String> {
        match (self.noise_multiplier, self.target_epsilon, self.rounds) {
            (Some(z), _, _) => Ok(z),
            (None, Some(target), Some(rounds)) => noise_for_target(target, self.delta, q, steps_per_round.saturating_mul(u64::from(rounds))),
            _ => Err("record_privacy has neither a noise multiplier nor a target ε with rounds".into()),
        }
    }
}

/// The smallest noise multiplier (to 0.1 %) for which `steps` steps at rate `q` spend at most
/// `target` ε at `delta`, as Opacus's `get_noise_multiplier`.
pub fn noise_for_target(target: f64, delta: f64, q: f64, steps: u64) -> Result<f64, String> {
    let spent = |sigma: f64| epsilon(&[Step { q, sigma, count: steps }], delta, default_orders()).map(|p| p.epsilon).map_err(|e| e.to_string());
    let (mut lo, mut hi) = (0.1, 1.0);
    while spent(hi)? > target {
        hi *= 2.0;
        if hi > 1e4 {
            return Err(format!("no noise multiplier up to 10^4 keeps {steps} steps at rate {q} within ε = {target}"));
        }
    }
    if spent(lo)? <= target {
        return Ok(lo);
    }
    while (hi - lo) / hi > 1e-3 {
        let mid = (lo + hi) / 2.0;
        if spent(mid)? > target { lo = mid } else { hi = mid }
    }
    Ok(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_noise_for_a_target_spends_at_most_the_target() {
        // Opacus's MNIST example: q = 256/60000, 60 epochs, δ = 1e-5.
        let q = 256.0 / 60_000.0;
        let steps = 60 * RecordDp::steps_per_epoch(q);
        for target in [1.0, 3.0, 8.0] {
            let sigma = noise_for_target(target, 1e-5, q, steps).unwrap();
            let e = epsilon(&[Step { q, sigma, count: steps }], 1e-5, default_orders()).unwrap().epsilon;
            assert!(e <= target && e > target * 0.98, "σ = {sigma} spends {e} for a target of {target}");
        }
        // More ε, less noise.
        assert!(noise_for_target(1.0, 1e-5, q, steps).unwrap() > noise_for_target(8.0, 1e-5, q, steps).unwrap());
    }

    #[test]
    fn a_record_section_needs_one_way_to_set_the_noise() {
        let base = RecordDp { clip_norm: 1.0, noise_multiplier: None, target_epsilon: None, rounds: None, delta: 1e-5 };
        assert!(base.validate().is_err());
        assert!(RecordDp { noise_multiplier: Some(1.0), ..base }.validate().is_ok());
        assert!(RecordDp { target_epsilon: Some(3.0), ..base }.validate().unwrap_err().contains("rounds"));
        assert!(RecordDp { target_epsilon: Some(3.0), rounds: Some(20), ..base }.validate().is_ok());
        assert!(RecordDp { target_epsilon: Some(3.0), rounds: Some(20), noise_multiplier: Some(1.0), ..base }.validate().is_err());
        for bad in [f64::NAN, -1.0, 0.0, f64::INFINITY] {
            assert!(RecordDp { target_epsilon: Some(bad), rounds: Some(20), ..base }.validate().is_err(), "target {bad}");
            assert!(RecordDp { noise_multiplier: Some(bad), ..base }.validate().is_err(), "noise {bad}");
            assert!(RecordDp { noise_multiplier: Some(1.0), clip_norm: bad, ..base }.validate().is_err(), "clip {bad}");
        }
        assert!(RecordDp { target_epsilon: Some(3.0), rounds: Some(0), ..base }.validate().is_err());
        assert_eq!(RecordDp::sampling_rate(32, 16), 1.0);
        assert_eq!(RecordDp::sampling_rate(32, 0), 1.0, "no rows cannot divide by zero");
        assert_eq!(RecordDp::steps_per_epoch(32.0 / 240.0), 8);
    }
}
