//! DP-FedAvg with a fixed clip (McMahan et al. 2018), central: the coordinator clips each
//! update to L2 norm S, sums them with equal weight, adds N(0, (z·S)²) to the sum and divides
//! by the expected cohort size m (a fixed denominator, as TensorFlow Federated's
//! `gaussian_fixed`).

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};

/// Central DP settings of a federation (TOML `[privacy]`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpConfig {
    /// Clip norm S.
    pub clip_norm: f64,
    /// Noise multiplier z: the noise on the sum has standard deviation z·S.
    pub noise_multiplier: f64,
    /// δ of the reported (ε, δ).
    #[serde(default = "default_delta")]
    pub delta: f64,
}

fn default_delta() -> f64 {
    1e-5
}

impl DpConfig {
    /// Refuses settings that give no privacy or no signal.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return Err(format!("dp clip norm must be positive, got {}", self.clip_norm));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier > 0.0) {
            return Err(format!("dp noise multiplier must be positive, got {}", self.noise_multiplier));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(format!("dp delta must be in (0, 1), got {}", self.delta));
        }
        Ok(())
    }
}

/// Scales `delta` to L2 norm at most `s`: `Δ · min(1, S/‖Δ‖)`. Returns the norm before.
pub fn clip(delta: &mut [f32], s: f64) -> f64 {
    let norm = delta.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
    if norm > s {
        let scale = (s / norm) as f32;
        delta.iter_mut().for_each(|v| *v *= scale);
    }
    norm
}

/// `(sum + N(0, (z·S)²)) / m`, with the noise drawn from ChaCha20 seeded by `seed`.
pub fn noisy_mean(sum: &[f32], cfg: &DpConfig, expected_clients: usize, seed: u64) -> Result<Vec<f32>, String> {
    let std = cfg.noise_multiplier * cfg.clip_norm;
    let noise = Normal::new(0.0, std).map_err(|e| format!("dp noise with standard deviation {std}: {e}"))?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let m = expected_clients.max(1) as f64;
    Ok(sum.iter().map(|&x| ((f64::from(x) + noise.sample(&mut rng)) / m) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_by_hand() {
        let mut d = vec![3.0f32, 4.0];
        assert_eq!(clip(&mut d, 1.0), 5.0);
        assert!((d[0] - 0.6).abs() < 1e-7 && (d[1] - 0.8).abs() < 1e-7);
        let mut small = vec![0.3f32, 0.4];
        clip(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4], "updates within the norm are untouched");
    }

    #[test]
    fn noise_has_the_calibrated_spread_and_is_seeded() {
        let cfg = DpConfig { clip_norm: 0.5, noise_multiplier: 2.0, delta: 1e-5 };
        let zeros = vec![0.0f32; 20_000];
        let a = noisy_mean(&zeros, &cfg, 1, 7).unwrap();
        assert_eq!(a, noisy_mean(&zeros, &cfg, 1, 7).unwrap());
        let var = a.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / a.len() as f64;
        assert!((var.sqrt() - 1.0).abs() < 0.03, "std {} vs z·S = 1", var.sqrt());
        let b = noisy_mean(&zeros, &cfg, 4, 7).unwrap();
        assert!((f64::from(b[0]) - f64::from(a[0]) / 4.0).abs() < 1e-6, "divided by the fixed denominator");
    }
}
