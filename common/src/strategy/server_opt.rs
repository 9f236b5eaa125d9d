//! Server optimisers: the cohort's mean delta Δ is a pseudo-gradient, and the server takes
//! a step with momentum (FedAvgM, Hsu et al. 2019) or an adaptive rule (FedAdagrad, FedAdam,
//! FedYogi; Reddi et al. 2021, Algorithm 2). The optimiser state is plain data, so it can be
//! checkpointed.

/// Which adaptive rule updates the second moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adaptive {
    Adagrad,
    Adam,
    Yogi,
}

/// Hyperparameters of the server optimisers (the paper's defaults unless configured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerOptConfig {
    /// Server learning rate η.
    pub lr: f64,
    /// Momentum β₁ (also FedAvgM's momentum).
    pub beta1: f64,
    /// Second-moment decay β₂.
    pub beta2: f64,
    /// Adaptivity τ.
    pub tau: f64,
}

impl Default for ServerOptConfig {
    fn default() -> Self {
        Self { lr: 1.0, beta1: 0.9, beta2: 0.99, tau: 1e-3 }
    }
}

/// FedAvgM: `v ← β v + Δ; x ← x + η v`.
pub fn momentum_step(x: &mut [f32], v: &mut [f64], delta: &[f32], cfg: &ServerOptConfig) {
    for ((xi, vi), &d) in x.iter_mut().zip(v.iter_mut()).zip(delta) {
        *vi = cfg.beta1 * *vi + f64::from(d);
        *xi = (f64::from(*xi) + cfg.lr * *vi) as f32;
    }
}

/// The initial second moment `v₀ = τ²` (the paper requires `v ≥ τ²`).
pub fn initial_second_moment(len: usize, cfg: &ServerOptConfig) -> Vec<f64> {
    vec![cfg.tau * cfg.tau; len]
}

/// One adaptive step:
/// `m ← β₁ m + (1 − β₁) Δ`;
/// Adagrad `v ← v + Δ²`, Adam `v ← β₂ v + (1 − β₂) Δ²`, Yogi `v ← v − (1 − β₂) Δ² sign(v − Δ²)`;
/// `x ← x + η m / (√v + τ)`.
pub fn adaptive_step(rule: Adaptive, x: &mut [f32], m: &mut [f64], v: &mut [f64], delta: &[f32], cfg: &ServerOptConfig) {
    for (((xi, mi), vi), &d) in x.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(delta) {
        let d = f64::from(d);
        *mi = cfg.beta1 * *mi + (1.0 - cfg.beta1) * d;
        let d2 = d * d;
        *vi = match rule {
            Adaptive::Adagrad => *vi + d2,
            Adaptive::Adam => cfg.beta2 * *vi + (1.0 - cfg.beta2) * d2,
            Adaptive::Yogi => *vi - (1.0 - cfg.beta2) * d2 * (*vi - d2).signum(),
        };
        *xi = (f64::from(*xi) + cfg.lr * *mi / (vi.sqrt() + cfg.tau)) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn momentum_by_hand() {
        let cfg = ServerOptConfig { lr: 1.0, beta1: 0.5, ..Default::default() };
        let (mut x, mut v) = (vec![0.0f32], vec![0.0f64]);
        momentum_step(&mut x, &mut v, &[1.0], &cfg); // v = 1, x = 1
        momentum_step(&mut x, &mut v, &[1.0], &cfg); // v = 1.5, x = 2.5
        assert_eq!((x[0], v[0]), (2.5, 1.5));
    }

    #[test]
    fn adaptive_rules_by_hand() {
        // One step from m = 0, v = τ² with Δ = 0.5, η = 0.1, β₁ = 0.9, β₂ = 0.99, τ = 0.001.
        let cfg = ServerOptConfig { lr: 0.1, ..Default::default() };
        let tau2 = 1e-6;
        let m1 = 0.1 * 0.5; // 0.05
        let cases = [
            (Adaptive::Adagrad, tau2 + 0.25),
            (Adaptive::Adam, 0.99 * tau2 + 0.01 * 0.25),
            // sign(τ² − 0.25) = −1, so v = τ² + 0.01 · 0.25.
            (Adaptive::Yogi, tau2 + 0.01 * 0.25),
        ];
        for (rule, v1) in cases {
            let (mut x, mut m, mut v) = (vec![1.0f32], vec![0.0], initial_second_moment(1, &cfg));
            adaptive_step(rule, &mut x, &mut m, &mut v, &[0.5], &cfg);
            assert!((m[0] - m1).abs() < 1e-12);
            assert!((v[0] - v1).abs() < 1e-12, "{rule:?}: {}", v[0]);
            let x1 = 1.0 + 0.1 * m1 / (v1.sqrt() + 0.001);
            assert!((f64::from(x[0]) - x1).abs() < 1e-6, "{rule:?}: {} vs {x1}", x[0]);
        }
    }
}
