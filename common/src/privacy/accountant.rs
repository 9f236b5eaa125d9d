//! Rényi-DP accountant for the sampled Gaussian mechanism (Mironov, Talwar & Zhang 2019),
//! composed over steps and converted to (ε, δ) with the bound of Balle et al. 2020 (the one
//! Opacus's `get_privacy_spent` uses). Integer orders, computed in log space.

/// `count` applications of the Gaussian mechanism with noise multiplier `sigma` on a
/// Poisson subsample of rate `q`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub q: f64,
    pub sigma: f64,
    pub count: u64,
}

/// `count` releases of the Skellam mechanism (distributed DP): an integer query with L1 and L2
/// sensitivities `l1`, `l2` plus integer noise of variance `variance` per coordinate (the
/// sum of the sites' Skellam shares). No amplification by sampling is claimed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SkellamStep {
    pub variance: f64,
    pub l1: f64,
    pub l2: f64,
    pub count: u64,
}

/// RDP of order `alpha` of one Skellam release (Agarwal, Kairouz & Liu 2021, theorem 3.5):
/// `α Δ₂²/(2μ) + min(((2α−1) Δ₂² + 6 Δ₁)/(4μ²), 3 Δ₁/(2μ))`, μ the noise variance.
pub fn rdp_skellam(s: &SkellamStep, alpha: u32) -> f64 {
    let (a, mu) = (f64::from(alpha), s.variance);
    a * s.l2 * s.l2 / (2.0 * mu) + (((2.0 * a - 1.0) * s.l2 * s.l2 + 6.0 * s.l1) / (4.0 * mu * mu)).min(3.0 * s.l1 / (2.0 * mu))
}

/// The (ε, δ) spent and the Rényi order that gave the best bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacySpent {
    pub epsilon: f64,
    pub delta: f64,
    pub order: u32,
}

/// The default orders: the integers 2 to 256.
pub fn default_orders() -> std::ops::RangeInclusive<u32> {
    2..=256
}

fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// RDP of order `alpha` (an integer ≥ 2) of one step:
/// `ε(α) = ln( Σ_k C(α,k) (1−q)^{α−k} q^k exp((k²−k)/(2σ²)) ) / (α−1)`.
pub fn rdp_subsampled_gaussian(q: f64, sigma: f64, alpha: u32) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    let a = f64::from(alpha);
    if q >= 1.0 {
        return a / (2.0 * sigma * sigma);
    }
    // ln k! for k = 0..=alpha.
    let mut ln_fact = vec![0.0f64; alpha as usize + 1];
    for k in 1..=alpha as usize {
        ln_fact[k] = ln_fact[k - 1] + (k as f64).ln();
    }
    let (lq, l1q) = (q.ln(), (-q).ln_1p());
    let mut log_sum = f64::NEG_INFINITY;
    for k in 0..=alpha as usize {
        let kf = k as f64;
        let log_binom = ln_fact[alpha as usize] - ln_fact[k] - ln_fact[alpha as usize - k];
        let term = log_binom + kf * lq + (a - kf) * l1q + (kf * kf - kf) / (2.0 * sigma * sigma);
        log_sum = log_add(log_sum, term);
    }
    log_sum / (a - 1.0)
}

/// Why the accountant cannot answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountantError {
    #[error("sampling rate must be in [0, 1], got {0}")]
    SamplingRate(f64),
    #[error("noise multiplier must be positive, got {0}")]
    Noise(f64),
    #[error("delta must be in (0, 1), got {0}")]
    Delta(f64),
    #[error("no Rényi orders to optimise over")]
    NoOrders,
}

/// ε spent by `steps` at `delta`, optimised over `orders` (each ≥ 2).
///
/// Conversion (Balle et al. 2020): `ε = rdp(α) − (ln δ + ln α)/(α−1) + ln((α−1)/α)`.
pub fn epsilon(steps: &[Step], delta: f64, orders: impl IntoIterator<Item = u32>) -> Result<PrivacySpent, AccountantError> {
    epsilon_with_skellam(steps, &[], delta, orders)
}

/// ε of Gaussian steps and Skellam releases composed (RDP adds per order).
pub fn epsilon_with_skellam(
    steps: &[Step],
    skellam: &[SkellamStep],
    delta: f64,
    orders: impl IntoIterator<Item = u32>,
) -> Result<PrivacySpent, AccountantError> {
    if let Some(s) = skellam.iter().find(|s| !(s.variance.is_finite() && s.variance > 0.0 && s.l1 >= 0.0 && s.l2 >= 0.0)) {
        return Err(AccountantError::Noise(s.variance));
    }
    for s in steps {
        if !(0.0..=1.0).contains(&s.q) {
            return Err(AccountantError::SamplingRate(s.q));
        }
        if !(s.sigma.is_finite() && s.sigma > 0.0) {
            return Err(AccountantError::Noise(s.sigma));
        }
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(AccountantError::Delta(delta));
    }
    let mut orders = orders.into_iter().filter(|&a| a >= 2).peekable();
    // A mechanism that never ran (or never sampled anyone) costs nothing; the conversion
    // bound below would still report a small positive ε.
    if steps.iter().all(|s| s.q == 0.0 || s.count == 0) && skellam.iter().all(|s| s.count == 0) {
        let order = *orders.peek().ok_or(AccountantError::NoOrders)?;
        return Ok(PrivacySpent { epsilon: 0.0, delta, order });
    }
    let mut best: Option<PrivacySpent> = None;
    for alpha in orders {
        let a = f64::from(alpha);
        let rdp: f64 = steps.iter().map(|s| s.count as f64 * rdp_subsampled_gaussian(s.q, s.sigma, alpha)).sum::<f64>()
            + skellam.iter().map(|s| s.count as f64 * rdp_skellam(s, alpha)).sum::<f64>();
        let eps = rdp - (delta.ln() + a.ln()) / (a - 1.0) + ((a - 1.0) / a).ln();
        if best.is_none_or(|b| eps < b.epsilon) {
            best = Some(PrivacySpent { epsilon: eps.max(0.0), delta, order: alpha });
        }
    }
    best.ok_or(AccountantError::NoOrders)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(q: f64, sigma: f64, count: u64) -> Vec<Step> {
        vec![Step { q, sigma, count }]
    }

    #[test]
    fn reproduces_the_published_reference_values() {
        // Opacus's documented example, orders 2..32: ε ≈ 0.336 at order 23.
        let opacus = [Step { q: 1e-5, sigma: 1.0, count: 10 }, Step { q: 1e-4, sigma: 3.0, count: 4 }];
        let e = epsilon(&opacus, 1e-5, 2..=32).unwrap();
        assert!((e.epsilon - 0.336).abs() < 1e-3 && e.order == 23, "{e:?}");
        for (steps, delta, expected) in
            [(one(0.01, 1.0, 1000), 1e-5, 2.108), (one(0.1, 1.0, 100), 1e-5, 7.973), (one(1.0, 1.0, 1), 1e-5, 4.753), (one(1e-4, 1.0, 2000), 1e-6, 0.586)]
        {
            let e = epsilon(&steps, delta, default_orders()).unwrap();
            assert!((e.epsilon - expected).abs() < 1e-3, "{steps:?}: {e:?} vs {expected}");
        }
    }

    #[test]
    fn skellam_with_much_noise_costs_what_the_gaussian_does() {
        // In integer units with a scale of 2^24 the Skellam bound's extra term vanishes: ε is the
        // Gaussian's at the same noise multiplier (the Skellam paper's point).
        let l2 = f64::from(1u32 << 24);
        let sk = SkellamStep { variance: l2 * l2, l1: l2 * 50.0, l2, count: 5 };
        let gauss = epsilon(&one(1.0, 1.0, 5), 1e-5, default_orders()).unwrap().epsilon;
        let skellam = epsilon_with_skellam(&[], &[sk], 1e-5, default_orders()).unwrap().epsilon;
        assert!(skellam >= gauss && skellam - gauss < 1e-6, "{skellam} vs {gauss}");
        // A release without noise, or with a number that is none, is refused, not counted as free.
        for variance in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let bad = SkellamStep { variance, ..sk };
            assert!(matches!(epsilon_with_skellam(&[], &[bad], 1e-5, default_orders()), Err(AccountantError::Noise(_))), "{variance}");
        }
        // Little noise for the sensitivity: the extra term counts.
        let coarse = SkellamStep { variance: 4.0, l1: 20.0, l2: 2.0, count: 1 };
        assert!(rdp_skellam(&coarse, 8) > 8.0 * 4.0 / 8.0);
    }

    #[test]
    fn more_noise_or_less_sampling_costs_less() {
        let base = epsilon(&one(0.1, 1.0, 100), 1e-5, default_orders()).unwrap().epsilon;
        assert!(epsilon(&one(0.1, 2.0, 100), 1e-5, default_orders()).unwrap().epsilon < base);
        assert!(epsilon(&one(0.05, 1.0, 100), 1e-5, default_orders()).unwrap().epsilon < base);
        assert_eq!(epsilon(&one(0.0, 1.0, 100), 1e-5, default_orders()).unwrap().epsilon, 0.0);
    }

    #[test]
    fn bad_parameters_are_named() {
        assert!(matches!(epsilon(&one(1.5, 1.0, 1), 1e-5, default_orders()), Err(AccountantError::SamplingRate(_))));
        assert!(matches!(epsilon(&one(0.1, 0.0, 1), 1e-5, default_orders()), Err(AccountantError::Noise(_))));
        assert!(matches!(epsilon(&one(0.1, 1.0, 1), 0.0, default_orders()), Err(AccountantError::Delta(_))));
    }
}
