//! How rounds are run: how many, who takes part, and when a round stops waiting.

use std::time::Duration;

use flotilla_common::data::StatsLimits;

/// How a round's cohort is sampled (seeded either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Sampling {
    /// Every eligible site equally likely.
    #[default]
    Uniform,
    /// Sites drawn with probability proportional to their number of training examples.
    Weighted,
}

/// The round policy of a federation.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Rounds of training after the initial evaluation.
    pub rounds: u32,
    /// Sites that must have joined (and reported their aggregates) before training starts.
    /// Later rounds open as soon as `min_fit_results` sites are connected.
    pub min_clients: usize,
    /// Share of eligible sites sampled for each round's training (seeded).
    pub fraction_fit: f64,
    /// Updates needed to change the global model; with fewer the round keeps it.
    pub min_fit_results: usize,
    /// A site that has not been heard from for this long is dropped (and rejoins later).
    pub lease: Duration,
    /// A training or evaluation phase closes with what it has after this long; a training
    /// phase with fewer than `min_fit_results` updates is abandoned and retried instead.
    pub round_timeout: Duration,
    /// Once `min_fit_results` updates are in, the round waits at most this long for the rest.
    pub grace: Duration,
    /// Select this many times the sites a round needs (≥ 1); the round closes as soon as the
    /// needed number has reported. Production systems use about 1.3 since devices drop out.
    pub over_selection: f64,
    /// Largest L2 norm an update may have; larger ones are refused (`None`: no bound).
    pub max_update_norm: Option<f64>,
    /// How the cohort of a round is drawn from the eligible sites.
    pub sampling: Sampling,
    /// Sites allowed to join (`None`: any site with a valid certificate).
    pub allowed_sites: Option<std::collections::BTreeSet<String>>,
    /// Most sites connected at once: the coordinator's per-site state is bounded by it.
    pub max_sites: usize,
    /// What a site's aggregates may hold (columns, categories, name lengths): bounds the plan.
    pub limits: StatsLimits,
    /// Uploads one site may have open at once (each holds a model-sized buffer).
    pub max_uploads_per_site: usize,
    /// Central DP: the coordinator's secret seed of its noise (`None`: the OS's generator).
    /// Never sent to a site, never in `identity` or the run's records.
    pub dp_seed: Option<u64>,
    /// Early stopping: finish after this many rounds without a lower federated validation
    /// loss than the best so far (`None`: run every round).
    pub patience: Option<u32>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            rounds: 20,
            min_clients: 1,
            fraction_fit: 1.0,
            min_fit_results: 1,
            lease: Duration::from_secs(15),
            round_timeout: Duration::from_secs(600),
            grace: Duration::from_secs(60),
            over_selection: 1.0,
            max_update_norm: None,
            sampling: Sampling::Uniform,
            allowed_sites: None,
            max_sites: 100_000,
            limits: StatsLimits::default(),
            max_uploads_per_site: 2,
            dp_seed: None,
            patience: None,
        }
    }
}

impl Policy {
    /// How long a `PullWork` call may wait for work: well inside the lease, so a waiting
    /// site is never mistaken for a dead one.
    pub fn long_poll(&self) -> Duration {
        (self.lease / 3).min(Duration::from_secs(2))
    }

    /// Refuses policies that could never run.
    pub fn validate(&self) -> Result<(), String> {
        if self.rounds == 0 {
            return Err("rounds must be at least 1".into());
        }
        if self.min_clients == 0 {
            return Err("min-clients must be at least 1".into());
        }
        if !(self.fraction_fit > 0.0 && self.fraction_fit <= 1.0) {
            return Err(format!("fraction-fit must be in (0, 1], got {}", self.fraction_fit));
        }
        if self.min_fit_results == 0 {
            return Err("min-fit-results must be at least 1".into());
        }
        if !(self.over_selection.is_finite() && self.over_selection >= 1.0) {
            return Err(format!("over-selection must be at least 1, got {}", self.over_selection));
        }
        if self.max_update_norm.is_some_and(|n| !(n.is_finite() && n > 0.0)) {
            return Err("max-update-norm must be a positive number".into());
        }
        if self.allowed_sites.as_ref().is_some_and(|s| s.is_empty()) {
            return Err("the allow list of sites is empty: nobody could join".into());
        }
        if self.max_sites == 0 || self.max_uploads_per_site == 0 {
            return Err("max-sites and max-uploads-per-site must be at least 1".into());
        }
        if self.limits.max_columns == 0 || self.limits.max_categories == 0 || self.limits.max_name_bytes == 0 {
            return Err("max-columns, max-categories and max-name-bytes must be at least 1".into());
        }
        if self.patience == Some(0) {
            return Err("early-stop patience must be at least 1 round".into());
        }
        if self.lease < Duration::from_millis(100) {
            return Err("the lease must be at least 100 ms".into());
        }
        Ok(())
    }

    /// Refuses settings that cannot work with the task: a bound on update norms under secure
    /// aggregation, where the coordinator never sees an update to measure.
    pub fn validate_for_task(&self, task: &flotilla_common::Task) -> Result<(), String> {
        if task.secure_aggregation && self.max_update_norm.is_some() {
            return Err("--max-update-norm cannot be combined with --secure-aggregation: the coordinator never sees an \
                        individual update to measure, and a bound the coordinator cannot check binds no malicious site \
                        (clip on the sites with --dp-clip instead)"
                .into());
        }
        if task.privacy.is_some_and(|p| !p.local) {
            // The accountant assumes each site is in a cohort with probability --fraction-fit.
            if self.sampling == Sampling::Weighted {
                return Err("--sampling weighted cannot be combined with central DP: it picks large sites far more often than \
                            --fraction-fit, and the privacy accounting (each site sampled with probability --fraction-fit) \
                            would under-report their ε; use --sampling uniform"
                    .into());
            }
            if self.over_selection > 1.0 {
                return Err(format!(
                    "--over-selection {} cannot be combined with central DP: under DP each site is in a round's cohort with \
                     probability --fraction-fit ({}), the rate the accountant counts; selecting more would under-report ε",
                    self.over_selection, self.fraction_fit
                ));
            }
        }
        Ok(())
    }

    /// Refuses a policy whose rounds could never gather `min_fit_results` updates from a
    /// federation of at most `sites` sites (all of them in a simulation; the allow list in `serve`).
    pub fn validate_for_sites(&self, sites: usize) -> Result<(), String> {
        let selected = self.selection_size(sites);
        if self.min_fit_results > selected {
            return Err(format!(
                "--min-fit-results {} can never be met: a round selects at most {selected} of the {sites} sites \
                 (--fraction-fit {}, --over-selection {}); lower --min-fit-results, or raise --fraction-fit or the number of sites",
                self.min_fit_results, self.fraction_fit, self.over_selection
            ));
        }
        Ok(())
    }

    /// The settings that decide which sites train and how updates count, so which model comes
    /// out: a resumed run must have the same. Timings (lease, deadline, grace) may change.
    pub fn identity(&self) -> String {
        format!(
            "rounds={} min_clients={} fraction_fit={} min_fit_results={} over_selection={} max_update_norm={:?} sampling={:?} allowed_sites={:?} limits={:?} patience={:?}",
            self.rounds,
            self.min_clients,
            self.fraction_fit,
            self.min_fit_results,
            self.over_selection,
            self.max_update_norm,
            self.sampling,
            self.allowed_sites,
            self.limits,
            self.patience
        )
    }

    /// How many of `eligible` sites a round needs.
    pub fn cohort_size(&self, eligible: usize) -> usize {
        ((eligible as f64 * self.fraction_fit).ceil() as usize).clamp(1.min(eligible), eligible)
    }

    /// How many sites a round selects: the needed number times the over-selection factor.
    pub fn selection_size(&self, eligible: usize) -> usize {
        ((self.cohort_size(eligible) as f64 * self.over_selection).ceil() as usize).min(eligible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohort_size_rounds_up_and_stays_in_range() {
        let p = Policy { fraction_fit: 0.3, ..Policy::default() };
        assert_eq!(p.cohort_size(10), 3);
        assert_eq!(p.cohort_size(4), 2);
        assert_eq!(p.cohort_size(1), 1);
        assert_eq!(p.cohort_size(0), 0);
        assert!(Policy { fraction_fit: 0.0, ..Policy::default() }.validate().is_err());
    }

    #[test]
    fn more_updates_than_a_round_can_select_are_refused() {
        let p = Policy { min_fit_results: 5, ..Policy::default() };
        let err = p.validate_for_sites(4).unwrap_err();
        assert!(err.contains("--min-fit-results 5") && err.contains("at most 4 of the 4 sites"), "{err}");
        assert!(p.validate_for_sites(5).is_ok());
        let half = Policy { min_fit_results: 3, fraction_fit: 0.5, ..Policy::default() };
        assert!(half.validate_for_sites(4).is_err() && half.validate_for_sites(6).is_ok());
    }

    #[test]
    fn sampling_the_accountant_does_not_assume_is_refused_with_central_dp() {
        let mut task = flotilla_common::Task::banks();
        task.privacy =
            Some(flotilla_common::privacy::DpConfig { clip_norm: 1.0, noise_multiplier: 1.0, delta: 1e-5, adaptive: None, local: false, distributed: false });
        let weighted = Policy { sampling: Sampling::Weighted, ..Policy::default() }.validate_for_task(&task).unwrap_err();
        assert!(weighted.contains("--sampling weighted") && weighted.contains("under-report"), "{weighted}");
        let over = Policy { over_selection: 1.5, ..Policy::default() }.validate_for_task(&task).unwrap_err();
        assert!(over.contains("--over-selection"), "{over}");
        assert!(Policy::default().validate_for_task(&task).is_ok());
        // Local DP is each site's own mechanism, counted at rate 1: any sampling is fine.
        task.privacy = task.privacy.map(|p| flotilla_common::privacy::DpConfig { local: true, ..p });
        assert!(Policy { sampling: Sampling::Weighted, ..Policy::default() }.validate_for_task(&task).is_ok());
    }
}
