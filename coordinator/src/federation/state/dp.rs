//! Central differential privacy inside a round: who is sampled, what is released, and what
//! the accountant counts — one [`Release`] computed once, so the accountant's inputs are the
//! mechanism's actual noise and sensitivity by construction.
//!
//! The accountant analyses the subsampled Gaussian mechanism under Poisson sampling, for the
//! add/remove-one relation on sites (client-level DP). So under central DP the cohort *is* a
//! Poisson sample: each eligible site is in it independently with probability q =
//! `--fraction-fit`, drawn from the coordinator's secret seed (a site that could predict the
//! cohort would void the amplification by sampling). Cohort sizes then vary round to round;
//! the mean divides by the expected size, a fixed public denominator.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use flotilla_common::privacy::{DpConfig, SkellamStep, epsilon_with_skellam};

use super::*;

/// One round's release under central DP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Release {
    /// The probability with which each site was in the cohort.
    pub q: f64,
    /// L2 sensitivity of the sum of updates: the clip norm.
    pub sensitivity: f64,
    /// Standard deviation of the Gaussian noise on the sum of updates.
    pub noise_std: f64,
    /// Adaptive clipping: standard deviation of the noise on the count of unclipped updates
    /// (each site moves the centred count by at most 1/2).
    pub count_std: Option<f64>,
    /// Distributed DP: the sites added the noise (Skellam, integer units) under the masks; this
    /// is what the accountant counts, and the coordinator adds nothing.
    pub skellam: Option<SkellamStep>,
}

impl Release {
    /// The noise multiplier of everything the round releases: `noise_std / sensitivity`, and
    /// with adaptive clipping the composition with the count, `(z_Δ⁻² + (2σ_b)⁻²)^(−1/2)`
    /// (Andrew et al. 2021, theorem 1).
    pub fn noise_multiplier(&self) -> f64 {
        let z_update = self.noise_std / self.sensitivity;
        match self.count_std {
            Some(sigma_b) => (z_update.powi(-2) + (2.0 * sigma_b).powi(-2)).powf(-0.5),
            None => z_update,
        }
    }
}

impl Federation {
    /// The task's central DP (the coordinator adds the noise), if any.
    pub(super) fn central_dp(&self) -> Option<DpConfig> {
        self.task.privacy.filter(|p| !p.local)
    }

    /// A Poisson cohort of `eligible` at rate `--fraction-fit`, from the secret seed.
    pub(super) fn dp_cohort(&self, eligible: &[(String, u64)], round: u32, attempt: u32) -> BTreeSet<String> {
        let seed = derive_seed(self.noise_seed, &["dp-cohort", &round.to_string(), &attempt.to_string()]);
        poisson_cohort(eligible, self.policy.fraction_fit, seed)
    }

    /// What this round releases, for a fixed denominator (expected cohort) of `target`.
    /// `Err` when adaptive clipping's count noise is too small for this cohort to leave the
    /// update any noise budget: the round then releases nothing.
    pub(super) fn release(&self, dp: &DpConfig, target: usize) -> Result<Release, String> {
        let q = self.policy.fraction_fit;
        let sensitivity = self.clip_norm;
        match &dp.adaptive {
            Some(a) => {
                let sigma_b = a.sigma_b(target);
                let z = update_noise_multiplier(dp.noise_multiplier, sigma_b).ok_or_else(|| {
                    format!(
                        "adaptive clipping: count noise σ_b = {sigma_b} is too small for noise multiplier {} with an expected cohort of {target}; the round releases nothing",
                        dp.noise_multiplier
                    )
                })?;
                Ok(Release { q, sensitivity, noise_std: z * sensitivity, count_std: Some(sigma_b), skellam: None })
            }
            None => Ok(Release { q, sensitivity, noise_std: dp.noise_multiplier * sensitivity, count_std: None, skellam: None }),
        }
    }

    /// Distributed DP: what a round whose sum `survivors` sites' noise shares went into
    /// releases (with threshold `threshold`, on `dim` values). No amplification by sampling is
    /// claimed (q = 1): the sites' noise, not the coordinator's sampling, is what is relied on.
    pub(super) fn distributed_release(&self, dp: &DpConfig, dim: usize, threshold: usize, survivors: usize) -> Result<Release, String> {
        if survivors == 0 || threshold == 0 {
            return Err("distributed DP: no survivor's noise is in the sum; the round releases nothing".into());
        }
        let step = flotilla_common::privacy::distributed::release(dp.noise_multiplier, self.clip_norm, dim, threshold, survivors);
        let noise_std = step.variance.sqrt() / flotilla_common::privacy::distributed::scale();
        Ok(Release { q: 1.0, sensitivity: self.clip_norm, noise_std, count_std: None, skellam: Some(step) })
    }

    /// Counts one round: central DP by its release (or the announced z when the round never
    /// got to draw its noise: counting it anyway only over-states ε), local DP at rate 1 (each
    /// site's own mechanism, for the site that ran it).
    pub(super) fn account(&mut self, release: Option<Release>) {
        let Some(dp) = self.task.privacy else { return };
        if let Some(step) = release.and_then(|r| r.skellam) {
            match self.dp_skellam.iter_mut().find(|s| SkellamStep { count: s.count, ..step } == **s) {
                Some(s) => s.count += 1,
                None => self.dp_skellam.push(step),
            }
        } else {
            let (q, sigma) = match (dp.local, release) {
                (true, _) => (1.0, dp.noise_multiplier),
                (false, Some(r)) => (r.q, r.noise_multiplier()),
                // Distributed DP whose round never unmasked: counted as if its noise were z.
                (false, None) if dp.distributed => (1.0, dp.noise_multiplier),
                (false, None) => (self.policy.fraction_fit, dp.noise_multiplier),
            };
            match self.dp_steps.iter_mut().find(|s| s.q == q && s.sigma == sigma) {
                Some(s) => s.count += 1,
                None => self.dp_steps.push(Step { q, sigma, count: 1 }),
            }
        }
        self.epsilon = epsilon_with_skellam(&self.dp_steps, &self.dp_skellam, dp.delta, default_orders()).ok().map(|p| p.epsilon);
    }
}

/// Each of `eligible` independently with probability `q`, from a seed; sorted by name.
pub fn poisson_cohort(eligible: &[(String, u64)], q: f64, seed: u64) -> BTreeSet<String> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut names: Vec<&String> = eligible.iter().map(|(s, _)| s).collect();
    names.sort();
    names.into_iter().filter(|_| rng.random_bool(q.clamp(0.0, 1.0))).cloned().collect()
}
