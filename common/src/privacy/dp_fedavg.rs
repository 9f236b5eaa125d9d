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
    /// Adaptive clipping (Andrew et al. 2021): the clip norm follows a quantile of the update
    /// norms, starting from `clip_norm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveClip>,
    /// Local DP: each site clips its update to S and adds N(0, (z·S)²) itself, from its own
    /// secret randomness, before sending; the coordinator only averages. For sites that trust
    /// nobody (the coordinator included).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    /// Distributed DP (with secure aggregation): each site adds its share of the noise, as
    /// integer Skellam noise, before masking, so the unmasked sum is already private and the
    /// coordinator never sees it exact (Agarwal, Kairouz & Liu 2021).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub distributed: bool,
}

/// Parameters of adaptive clipping; the paper's defaults.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveClip {
    /// γ: the quantile of update norms the clip norm tracks.
    #[serde(default = "default_quantile")]
    pub target_quantile: f64,
    /// η_C: geometric learning rate of the clip norm.
    #[serde(default = "default_clip_lr")]
    pub learning_rate: f64,
    /// σ_b: noise on the count of unclipped updates (default m/20 for cohorts of m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_stddev: Option<f64>,
}

fn default_quantile() -> f64 {
    0.5
}
fn default_clip_lr() -> f64 {
    0.2
}

impl Default for AdaptiveClip {
    fn default() -> Self {
        Self { target_quantile: default_quantile(), learning_rate: default_clip_lr(), count_stddev: None }
    }
}

impl AdaptiveClip {
    /// σ_b for cohorts of `m`.
    pub fn sigma_b(&self, m: usize) -> f64 {
        self.count_stddev.unwrap_or(m as f64 / 20.0)
    }
}

/// The noise multiplier left for the update once the count takes its share:
/// `z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)`; `None` when σ_b is too small for `z` (z ≥ 2σ_b).
pub fn update_noise_multiplier(z: f64, sigma_b: f64) -> Option<f64> {
    let rest = z.powi(-2) - (2.0 * sigma_b).powi(-2);
    (rest > 0.0).then(|| rest.powf(-0.5))
}

/// One step of the clip norm: `C ← C · exp(−η_C (b̃ − γ))`, with `b̃` the noised share of
/// updates that were not clipped.
pub fn next_clip_norm(clip: f64, unclipped: usize, m: usize, cfg: &AdaptiveClip, seed: u64) -> Result<f64, String> {
    let sigma_b = cfg.sigma_b(m);
    let noise = Normal::new(0.0, sigma_b).map_err(|e| format!("clip count noise {sigma_b}: {e}"))?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let b = (unclipped as f64 + noise.sample(&mut rng)) / m.max(1) as f64;
    Ok(clip * (-cfg.learning_rate * (b - cfg.target_quantile)).exp())
}

fn default_delta() -> f64 {
    1e-5
}

impl DpConfig {
    /// Refuses, at start, adaptive clipping whose count noise σ_b is too small for the noise
    /// multiplier with cohorts of `m` sites (z_Δ needs z < 2σ_b).
    pub fn validate_for_cohort(&self, m: usize) -> Result<(), String> {
        if let Some(a) = &self.adaptive {
            let sigma_b = a.sigma_b(m);
            if update_noise_multiplier(self.noise_multiplier, sigma_b).is_none() {
                return Err(format!(
                    "adaptive clipping with noise multiplier {} needs count noise above {} for cohorts of {m}; \
                     σ_b = {sigma_b} (raise it with --dp-count-stddev, or `count_stddev` in the task's \
                     [privacy.adaptive]; or use a larger cohort)",
                    self.noise_multiplier,
                    self.noise_multiplier / 2.0
                ));
            }
        }
        Ok(())
    }

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
        if self.distributed && (self.local || self.adaptive.is_some()) {
            return Err("distributed DP is central DP with the noise added by the sites under secure aggregation: it combines with neither local DP nor adaptive clipping".into());
        }
        if self.local && self.adaptive.is_some() {
            return Err("adaptive clipping needs the coordinator to see update norms: it cannot be combined with local DP".into());
        }
        if let Some(a) = &self.adaptive {
            if !(a.target_quantile > 0.0 && a.target_quantile < 1.0) {
                return Err(format!("adaptive clipping: target quantile must be in (0, 1), got {}", a.target_quantile));
            }
            if !(a.learning_rate.is_finite() && a.learning_rate > 0.0) {
                return Err("adaptive clipping: learning rate must be positive".into());
            }
            if a.count_stddev.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
                return Err("adaptive clipping: count noise must be positive".into());
            }
        }
        Ok(())
    }
}

/// Scales `delta` to L2 norm at most `s`: `Δ · min(1, S/‖Δ‖)`. Returns the norm before.
/// Local DP on a site: clips `delta` to L2 norm `s` and adds N(0, (z·s)²) to every value.
/// `rng` must be the site's secret randomness (the OS-seeded thread generator in production).
pub fn privatize_locally(delta: &mut [f32], s: f64, z: f64, rng: &mut impl rand::Rng) -> Result<(), String> {
    clip(delta, s);
    let normal = Normal::new(0.0, z * s).map_err(|e| format!("local DP noise N(0, ({z}·{s})²): {e}"))?;
    delta.iter_mut().for_each(|v| *v = (f64::from(*v) + normal.sample(rng)) as f32);
    Ok(())
}

pub fn clip(delta: &mut [f32], s: f64) -> f64 {
    let norm = delta.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
    if norm > s {
        let scale = (s / norm) as f32;
        delta.iter_mut().for_each(|v| *v *= scale);
    }
    norm
}

/// `(sum + N(0, std²)) / m` (std = z·S), with the noise drawn from ChaCha20 seeded by `seed`.
pub fn noisy_mean(sum: &[f32], std: f64, expected_clients: usize, seed: u64) -> Result<Vec<f32>, String> {
    let noise = Normal::new(0.0, std).map_err(|e| format!("dp noise with standard deviation {std}: {e}"))?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let m = expected_clients.max(1) as f64;
    Ok(sum.iter().map(|&x| ((f64::from(x) + noise.sample(&mut rng)) / m) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_dp_clips_then_adds_noise_of_the_announced_scale() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut d = vec![0.01f32; 100_000]; // norm 3.16, clipped to 1
        privatize_locally(&mut d, 1.0, 0.0, &mut rng).unwrap();
        let norm = d.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "clipped to S: {norm}");
        let clipped = d.clone();
        privatize_locally(&mut d, 1.0, 2.0, &mut rng).unwrap();
        let noise: Vec<f64> = d.iter().zip(&clipped).map(|(a, b)| f64::from(*a) - f64::from(*b)).collect();
        let std = (noise.iter().map(|x| x * x).sum::<f64>() / noise.len() as f64).sqrt();
        assert!((std - 2.0).abs() < 0.02, "noise std z·S = 2: {std}");
    }

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
    fn distributed_dp_is_refused_where_its_noise_cannot_be_the_sites_share() {
        let base = DpConfig { clip_norm: 1.0, noise_multiplier: 1.0, delta: 1e-5, adaptive: None, local: false, distributed: true };
        assert!(base.validate().is_ok());
        assert!(DpConfig { local: true, ..base }.validate().unwrap_err().contains("distributed"));
        assert!(DpConfig { adaptive: Some(AdaptiveClip::default()), ..base }.validate().unwrap_err().contains("distributed"));
        // Without secure aggregation the shares would not add up under the masks: the task refuses it.
        let mut task = crate::Task::hospitals();
        task.privacy = Some(base);
        assert!(task.validate().unwrap_err().to_string().contains("secure aggregation"));
        task.secure_aggregation = true;
        assert!(task.validate().is_ok());
        // A hostile TOML cannot sneak a non-boolean in.
        let text =
            include_str!("../../../examples/hospitals.toml").to_owned() + "\n[privacy]\nclip_norm = 1.0\nnoise_multiplier = 1.0\ndistributed = \"yes\"\n";
        assert!(crate::Task::from_toml(&text, "t.toml").unwrap_err().to_string().contains("distributed"));
    }

    #[test]
    fn adaptive_clipping_by_hand() {
        // z = 1, σ_b = 10/20 = 0.5: z_Δ = (1 − 1)^(−½) is infinite, so refused; σ_b = 5 gives
        // (1 − 0.01)^(−½) = 1.00504.
        assert_eq!(update_noise_multiplier(1.0, 0.5), None);
        assert!((update_noise_multiplier(1.0, 5.0).unwrap() - 0.99f64.powf(-0.5)).abs() < 1e-12);
        // No noise on the count (σ_b tiny): 8 of 10 unclipped, γ = 0.5, η = 0.2 → C·e^(−0.06).
        let cfg = AdaptiveClip { count_stddev: Some(1e-12), ..AdaptiveClip::default() };
        let c = next_clip_norm(1.0, 8, 10, &cfg, 1).unwrap();
        assert!((c - (-0.06f64).exp()).abs() < 1e-9, "{c}");
        // Everything clipped: the norm grows.
        assert!(next_clip_norm(1.0, 0, 10, &cfg, 1).unwrap() > 1.0);
    }

    #[test]
    fn noise_has_the_calibrated_spread_and_is_seeded() {
        let std = 0.5 * 2.0;
        let zeros = vec![0.0f32; 20_000];
        let a = noisy_mean(&zeros, std, 1, 7).unwrap();
        assert_eq!(a, noisy_mean(&zeros, std, 1, 7).unwrap());
        let var = a.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / a.len() as f64;
        assert!((var.sqrt() - 1.0).abs() < 0.03, "std {} vs z·S = 1", var.sqrt());
        let b = noisy_mean(&zeros, std, 4, 7).unwrap();
        assert!((f64::from(b[0]) - f64::from(a[0]) / 4.0).abs() < 1e-6, "divided by the fixed denominator");
    }
}
