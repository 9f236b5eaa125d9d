//! Distributed DP under secure aggregation (the Skellam mechanism, Agarwal, Kairouz & Liu,
//! NeurIPS 2021): each site adds integer noise to its clipped, fixed-point update before
//! masking, so the unmasked sum is already private and the coordinator never sees it exact.
//!
//! A Skellam variable is the difference of two Poisson variables; a sum of independent
//! Skellams is a Skellam whose variance is the sum. Each site adds variance `(z·S·γ)² / t`
//! per coordinate (γ the fixed-point scale, t the round's threshold, the fewest survivors an
//! unmasking can have), so any round that unmasks carries at least the noise of z. The
//! accountant uses the Skellam RDP bound with the sensitivity of the rounded integer update
//! (`S·γ + √d/2` in L2, `√d` times that in L1) and the variance of the actual survivors, and
//! claims no amplification by sampling. The sum stays far inside Z/2^64 (|values| ≲ 2^24 ·
//! (n·S + a few noise deviations) ≪ 2^63), so the modular wrap-around never happens in practice.

use rand::Rng;
use rand_distr::{Distribution, Poisson};

use super::accountant::SkellamStep;
use crate::secagg::FixedPoint;

/// The fixed-point scale γ of secure aggregation's encoding.
pub fn scale() -> f64 {
    FixedPoint::default().scale
}

/// The per-coordinate variance (integer units) each site adds with threshold `t`.
pub fn site_variance(noise_multiplier: f64, clip_norm: f64, threshold: usize) -> f64 {
    (noise_multiplier * clip_norm * scale()).powi(2) / threshold.max(1) as f64
}

/// Adds Skellam noise of `variance` to every value, modulo 2^64.
pub fn add_skellam(values: &mut [u64], variance: f64, rng: &mut impl Rng) -> Result<(), String> {
    let poisson = Poisson::new(variance / 2.0).map_err(|e| format!("Skellam noise of variance {variance}: {e}"))?;
    for v in values.iter_mut() {
        let (a, b): (f64, f64) = (poisson.sample(rng), poisson.sample(rng));
        *v = v.wrapping_add((a - b) as i64 as u64);
    }
    Ok(())
}

/// What one round releases: `survivors` sites' shares of `site_variance` on a `dim`-value
/// update clipped to `clip_norm`.
pub fn release(noise_multiplier: f64, clip_norm: f64, dim: usize, threshold: usize, survivors: usize) -> SkellamStep {
    let l2 = clip_norm * scale() + (dim as f64).sqrt() / 2.0;
    SkellamStep { variance: survivors as f64 * site_variance(noise_multiplier, clip_norm, threshold), l1: (dim as f64).sqrt() * l2, l2, count: 1 }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::secagg::in_memory::run_round;
    use crate::secagg::protocol::majority;

    #[test]
    fn a_noise_share_that_cannot_be_drawn_is_an_error_not_a_panic() {
        // What a hostile task could make a site compute: no noise, or more than a Poisson allows.
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut x = vec![7u64; 4];
        for variance in [0.0, -3.0, f64::NAN, f64::INFINITY, 1e300] {
            assert!(add_skellam(&mut x, variance, &mut rng).is_err(), "{variance}");
        }
        assert_eq!(x, vec![7; 4], "nothing was added");
        assert!(site_variance(1.0, 1.0, 0).is_finite(), "a threshold of 0 cannot divide by zero");
    }

    #[test]
    fn the_sites_shares_add_up_to_at_least_the_noise_of_z_in_the_unmasked_sum() {
        // Five sites send zeros with their noise shares through a real secure-aggregation round:
        // the unmasked sum is pure noise of variance 5·(zSγ)²/t, at least (zSγ)².
        let (n, t, dim, z, clip) = (5, majority(5), 20_000, 0.8, 0.5);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let inputs: Vec<Vec<u64>> = (0..n)
            .map(|_| {
                let mut x = vec![0u64; dim];
                add_skellam(&mut x, site_variance(z, clip, t), &mut rng).unwrap();
                x
            })
            .collect();
        let (sum, included, _) = run_round(&inputs, t, &[], 2).unwrap();
        assert_eq!(included.len(), n);
        let real: Vec<f64> = sum.iter().map(|v| *v as i64 as f64 / scale()).collect();
        let var = real.iter().map(|x| x * x).sum::<f64>() / dim as f64;
        let expected = n as f64 * site_variance(z, clip, t) / scale().powi(2);
        assert!((var / expected - 1.0).abs() < 0.03, "variance {var} vs {expected}");
        assert!(expected >= (z * clip).powi(2), "t survivors or more carry the noise of z");
        let step = release(z, clip, dim, t, n);
        assert!((step.variance / scale().powi(2) - expected).abs() < 1e-9);
    }
}
