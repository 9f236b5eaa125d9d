//! The training half of a round: cohorts, update validation, the exact sum, closing.

use super::*;

#[derive(Debug)]
pub(super) struct FitRound {
    pub(super) round: u32,
    pub(super) started: Instant,
    pub(super) cohort: BTreeSet<String>,
    pub(super) pending: BTreeSet<String>,
    /// The example-weighted sum, for strategies that need only the mean.
    pub(super) sum: WeightedSum,
    /// Every update by site, for strategies that need them all (robust rules).
    pub(super) all: Option<BTreeMap<String, (FlatParams, u64)>>,
    pub(super) contributors: BTreeMap<String, (u64, TrainReport)>,
    pub(super) failed: BTreeSet<String>,
    /// Sites of `failed` that said why they could not deliver (see [`Federation::decline_fit`]).
    pub(super) declined: BTreeSet<String>,
    /// Updates refused by validation in this round.
    pub(super) rejected: usize,
    /// Updates the round needs; with over-selection fewer than the cohort.
    pub(super) target: usize,
    /// 1 for the first try; retries after abandoned attempts count up.
    pub(super) attempt: u32,
    /// When `min_fit_results` updates were in: the grace period runs from here.
    pub(super) min_reached_at: Option<Instant>,
    /// Central DP: updates whose norm was within the clip norm (for adaptive clipping).
    pub(super) unclipped: usize,
    /// Secure aggregation, when the task asks for it.
    pub(super) secure: Option<Box<SecureRound>>,
    /// Sites whose checked update is being written to disk (not yet in the sum).
    pub(super) storing: BTreeSet<String>,
}

impl FitRound {
    /// `site` will not deliver this round: if it was still pending, it has failed (true).
    pub(super) fn fail(&mut self, site: &str) -> bool {
        let pending = self.pending.remove(site);
        if pending {
            self.failed.insert(site.to_owned());
        }
        pending
    }
}

impl Federation {
    /// Checks an update's header before its values are received; returns the layout to expect.
    /// A refusal is counted in the round's metrics.
    pub fn begin_update(&mut self, claim: &UpdateClaim, now: Instant) -> Result<Layout, Rejection> {
        let result = self.check_update_header(claim, now);
        if result.is_err() {
            self.count_rejection(claim.round);
        }
        result
    }

    pub(super) fn check_update_header(&mut self, claim: &UpdateClaim, now: Instant) -> Result<Layout, Rejection> {
        let UpdateClaim { client_id, round, base_hash, fingerprint, total, num_examples, masked } = claim;
        let (round, total, num_examples) = (*round, *total, *num_examples);
        let c = self.client_mut(client_id, now)?;
        let (site, num_train) = (c.site.clone(), c.num_train);
        if *masked {
            // A masked input follows the site's keys: the site is no longer pending.
            if !matches!(&self.phase, Phase::Fit(f) if f.round == round) {
                return Err(Rejection::Closed(format!("training of round {round} is not open; the federation is in round {}", self.round())));
            }
        } else {
            self.open_fit(&site, round)?;
        }
        let global = self.global.as_ref().ok_or_else(|| Rejection::Stale("no global model yet".into()))?;
        if *base_hash != self.global_hash {
            return Err(Rejection::Stale(format!(
                "update of site `{site}` for round {round} was computed from model {}, not the current {}",
                short(base_hash),
                short(&self.global_hash)
            )));
        }
        if *masked != self.task.secure_aggregation {
            return Err(Rejection::InvalidArgument(if *masked {
                format!("site `{site}` sent a masked input for round {round}; this federation does not use secure aggregation")
            } else {
                format!("site `{site}` sent a plain update for round {round}; this federation uses secure aggregation and refuses them")
            }));
        }
        if *masked {
            if fingerprint != global.layout().fingerprint() {
                return Err(Rejection::InvalidArgument(format!("masked input of site `{site}` for round {round} is for layout {}", short(fingerprint))));
            }
            let Phase::Fit(FitRound { secure: Some(secure), .. }) = &self.phase else {
                return Err(Rejection::Closed(format!("training of round {round} is not open")));
            };
            secure.expect_masked(&site, total)?;
            return Ok(Layout::new(vec![flotilla_common::TensorSpec { name: "masked".into(), shape: vec![total as usize] }]));
        }
        let layout = &self.strategy.update_layout(global.layout());
        if fingerprint != layout.fingerprint() || total != layout.total() as u64 {
            return Err(Rejection::InvalidArgument(format!(
                "update of site `{site}` for round {round} has layout {} with {total} values; the federation's is {} with {}",
                short(fingerprint),
                short(layout.fingerprint()),
                layout.total()
            )));
        }
        if num_examples == 0 || num_examples > num_train {
            return Err(Rejection::InvalidArgument(format!(
                "update of site `{site}` for round {round} claims {num_examples} examples; it declared {num_train} at join"
            )));
        }
        Ok(layout.clone())
    }

    /// Adds a received update to the round: [`Federation::check_update`], then
    /// [`Federation::commit_update`]. A rejected update leaves the round untouched.
    pub fn submit_update(&mut self, claim: &UpdateClaim, delta: &FlatParams, metrics: TrainReport, now: Instant) -> Result<Vec<Event>, Rejection> {
        self.check_update(claim, delta, metrics, now)?;
        self.commit_update(claim, delta, metrics, now)
    }

    /// Checks a received update completely (header, values, norm, work done) without adding
    /// it; returns the site it is from. A refusal is counted in the round.
    pub fn check_update(&mut self, claim: &UpdateClaim, delta: &FlatParams, metrics: TrainReport, now: Instant) -> Result<String, Rejection> {
        // The header checks again: the round may have closed while the values streamed in.
        let claim = UpdateClaim { fingerprint: delta.layout().fingerprint().to_owned(), total: delta.values().len() as u64, ..claim.clone() };
        self.begin_update(&claim, now)?;
        let round = claim.round;
        let site = self.clients[claim.client_id.as_str()].site.clone();
        if let Some((i, v)) = delta.values().iter().enumerate().find(|(_, v)| !v.is_finite()) {
            self.refuse_values(&site, round);
            return Err(Rejection::InvalidArgument(format!("update of site `{site}` for round {round}: value {v} at index {i} is not finite")));
        }
        if !(metrics.loss.is_finite() && metrics.loss >= 0.0) {
            self.refuse_values(&site, round);
            return Err(Rejection::InvalidArgument(format!(
                "update of site `{site}` for round {round}: training loss {} is not a finite, non-negative number",
                metrics.loss
            )));
        }
        if let Some(bound) = self.policy.max_update_norm {
            let norm = delta.l2_norm();
            if norm > bound {
                self.refuse_values(&site, round);
                return Err(Rejection::InvalidArgument(format!("update of site `{site}` for round {round} has L2 norm {norm:.4e}, above the bound {bound}")));
            }
        }
        let asked = self.task.training.local_epochs;
        if metrics.epochs < asked && !self.strategy.accepts_partial_work() {
            if let Phase::Fit(f) = &mut self.phase {
                f.pending.remove(&site);
                f.failed.insert(site.clone());
            }
            return Err(Rejection::Closed(format!(
                "update of site `{site}` for round {round} did {} of {asked} local epochs; {} drops partial work (fedprox uses it)",
                metrics.epochs,
                self.strategy.config().name
            )));
        }
        Ok(site)
    }

    /// Adds an update that [`Federation::check_update`] accepted, if its round still wants it.
    pub fn commit_update(&mut self, claim: &UpdateClaim, delta: &FlatParams, metrics: TrainReport, now: Instant) -> Result<Vec<Event>, Rejection> {
        let claim = UpdateClaim { fingerprint: delta.layout().fingerprint().to_owned(), total: delta.values().len() as u64, ..claim.clone() };
        self.begin_update(&claim, now)?;
        let site = self.clients[claim.client_id.as_str()].site.clone();
        let mut events = self.accept(&site, claim.round, delta, claim.num_examples, metrics, now)?;
        events.extend(self.advance(now));
        Ok(events)
    }

    /// An update of `site` for `round` passed its checks and is being written to disk: a
    /// second one is refused meanwhile.
    pub fn update_storing(&mut self, site: &str, round: u32) {
        if let Phase::Fit(f) = &mut self.phase
            && f.round == round
        {
            f.storing.insert(site.to_owned());
        }
    }

    /// The write of `site`'s update for `round` finished (or failed).
    pub fn update_stored(&mut self, site: &str, round: u32) {
        if let Phase::Fit(f) = &mut self.phase
            && f.round == round
        {
            f.storing.remove(site);
        }
    }

    /// Adds a validated update to the open round (also used to replay kept updates on resume).
    pub(super) fn accept(
        &mut self,
        site: &str,
        round: u32,
        delta: &FlatParams,
        num_examples: u64,
        metrics: TrainReport,
        now: Instant,
    ) -> Result<Vec<Event>, Rejection> {
        let site = site.to_owned();
        // Central DP: every update is clipped to norm S and counts once, whatever its size.
        let clipped;
        let mut unclipped = false;
        let (delta, num_examples) = match &self.task.privacy {
            // Under local DP the site already clipped and noised its update.
            Some(dp) if !dp.local => {
                let mut d = delta.clone();
                unclipped = clip(d.values_mut(), self.clip_norm) <= self.clip_norm;
                clipped = d;
                (&clipped, 1)
            }
            _ => (delta, num_examples),
        };
        let f = match &mut self.phase {
            Phase::Fit(f) => f,
            Phase::Resuming { then, .. } => match then.as_mut() {
                Resume::Fit(f) => f,
                _ => return Err(Rejection::Closed(format!("training of round {round} is not open"))),
            },
            _ => return Err(Rejection::Closed(format!("training of round {round} is not open"))),
        };
        f.unclipped += usize::from(unclipped);
        match &mut f.all {
            Some(all) => {
                all.insert(site.clone(), (delta.clone(), num_examples));
            }
            None => {
                if let Err(e) = f.sum.add(delta, num_examples) {
                    f.rejected += 1;
                    return Err(Rejection::InvalidArgument(format!("update of site `{site}` for round {round}: {e}")));
                }
            }
        }
        f.pending.remove(&site);
        f.contributors.insert(site.clone(), (num_examples, metrics));
        if f.contributors.len() >= self.policy.min_fit_results && f.min_reached_at.is_none() {
            f.min_reached_at = Some(now);
        }
        Ok(vec![Event::UpdateAccepted { site, round }])
    }

    pub(super) fn open_fit(&self, site: &str, round: u32) -> Result<&FitRound, Rejection> {
        let current = self.round();
        match &self.phase {
            Phase::Fit(f) if f.round == round => {
                if f.contributors.contains_key(site) {
                    Err(Rejection::Duplicate(format!("site `{site}` already sent its update for round {round}")))
                } else if f.storing.contains(site) {
                    Err(Rejection::Duplicate(format!("site `{site}` already sent its update for round {round}; it is being stored")))
                } else if !f.cohort.contains(site) {
                    Err(Rejection::NotSelected(format!("site `{site}` was not selected for round {round}")))
                } else if !f.pending.contains(site) {
                    Err(Rejection::Closed(format!("site `{site}` was dropped from round {round} (late)")))
                } else {
                    Ok(f)
                }
            }
            _ => Err(Rejection::Closed(format!("training of round {round} is not open; the federation is in round {current}"))),
        }
    }

    /// A site of the cohort cannot deliver its update this round (`cause`): it leaves the
    /// round at once, as a dropped site would, so nobody waits for it until the deadline,
    /// and it stays in the federation for the next round. Nothing of the global model moves.
    pub fn decline_fit(&mut self, client_id: &str, round: u32, base_hash: &str, cause: DeclineCause, now: Instant) -> Result<Vec<Event>, Rejection> {
        let site = self.client_mut(client_id, now)?.site.clone();
        self.open_fit(&site, round)?;
        if base_hash != self.global_hash {
            return Err(Rejection::Stale(format!(
                "site `{site}` declined round {round} for model {}, not the current {}",
                short(base_hash),
                short(&self.global_hash)
            )));
        }
        if let Phase::Fit(f) = &mut self.phase {
            f.fail(&site);
            f.declined.insert(site.clone());
            if let Some(secure) = f.secure.as_mut() {
                secure.site_gone(&site);
            }
        }
        let mut events = vec![Event::Declined { site, round, cause }];
        events.extend(self.advance(now));
        Ok(events)
    }

    /// An upload whose header was accepted broke off or overflowed: count it as rejected.
    pub fn upload_failed(&mut self, round: u32) {
        self.count_rejection(round);
    }

    /// An update whose values were refused: counted, and the site has failed this round (it
    /// stays in the federation; asking it again would only bring the same update back).
    pub(super) fn refuse_values(&mut self, site: &str, round: u32) {
        self.count_rejection(round);
        if let Phase::Fit(f) = &mut self.phase
            && f.round == round
        {
            f.fail(site);
        }
    }

    pub(super) fn count_rejection(&mut self, round: u32) {
        if let Phase::Fit(f) = &mut self.phase
            && f.round == round
        {
            f.rejected += 1;
        }
    }

    pub(super) fn open_fit_round(&mut self, round: u32, now: Instant) -> Vec<Event> {
        self.open_fit_attempt(round, 1, now)
    }

    pub(super) fn open_fit_attempt(&mut self, round: u32, attempt: u32, now: Instant) -> Vec<Event> {
        let eligible: Vec<(String, u64)> = self.eligible_sites().into_iter().map(|s| (s.clone(), self.sites_seen.get(&s).copied().unwrap_or(1))).collect();
        let target = self.policy.cohort_size(eligible.len());
        let k = self.policy.selection_size(eligible.len());
        let seed = if attempt == 1 {
            derive_seed(self.seed, &["cohort", &round.to_string()])
        } else {
            derive_seed(self.seed, &["cohort", &round.to_string(), "attempt", &attempt.to_string()])
        };
        // Central DP: a Poisson cohort from the secret seed (the accountant's assumption).
        let cohort = match self.central_dp() {
            Some(_) => self.dp_cohort(&eligible, round, attempt),
            None => sample_cohort(&eligible, k, self.policy.sampling, seed),
        };
        self.phase = Phase::Fit(self.new_fit_round(round, attempt, cohort.clone(), target, now));
        vec![Event::FitOpened { round, cohort: cohort.into_iter().collect() }]
    }

    pub(super) fn new_fit_round(&mut self, round: u32, attempt: u32, cohort: BTreeSet<String>, target: usize, now: Instant) -> FitRound {
        let layout = self.global.as_ref().map(|g| self.strategy.update_layout(g.layout())).unwrap_or_else(|| Layout::new(Vec::new()));
        FitRound {
            round,
            started: now,
            pending: cohort.clone(),
            cohort,
            sum: WeightedSum::reusing(layout, self.spare_accumulator.take()),
            all: self.strategy.needs_all_updates().then(BTreeMap::new),
            contributors: BTreeMap::new(),
            failed: BTreeSet::new(),
            declined: BTreeSet::new(),
            rejected: 0,
            target,
            attempt,
            min_reached_at: None,
            unclipped: 0,
            storing: BTreeSet::new(),
            secure: self.task.secure_aggregation.then(|| Box::new(SecureRound::new(self.global.as_ref().map_or(0, |g| g.layout().total()) + 1, now))),
        }
    }

    pub(super) fn close_fit(&mut self, now: Instant) -> Vec<Event> {
        let Phase::Fit(mut f) = std::mem::replace(&mut self.phase, Phase::Done) else { return Vec::new() };
        // Secure aggregation: only the survivors' inputs are in the sum, and only their
        // (unweighted) training metrics are known.
        let mut secure_sum = None;
        let mut survivors = Vec::new();
        if let Some(secure) = f.secure.as_mut() {
            f.contributors = secure.survivors().iter().map(|s| (s.clone(), (1, secure.metrics.get(s).copied().unwrap_or_default()))).collect();
            survivors = secure.survivors().to_vec();
            secure_sum = Some(secure.take_result().unwrap_or_else(|| Err("secure aggregation did not finish".into())));
        }
        let total: u64 = f.contributors.values().fold(0u64, |a, (n, _)| a.saturating_add(*n));
        for (site, (_, m)) in &f.contributors {
            if let Some(e) = m.record_epsilon {
                self.record_epsilon.insert(site.clone(), e);
            }
        }
        // Central DP: what this round releases, computed once for the noise and the accountant.
        let release = match (self.central_dp(), f.secure.as_ref()) {
            // Distributed DP: the noise the survivors added under the masks.
            (Some(dp), Some(secure)) if dp.distributed => Some(self.distributed_release(
                &dp,
                self.global.as_ref().map_or(0, |g| g.layout().total()),
                secure.threshold().unwrap_or(0),
                secure.survivors().len(),
            )),
            (Some(dp), _) => Some(self.release(&dp, f.target)),
            (None, _) => None,
        };
        let noise_seed = derive_seed(self.noise_seed, &["dp-noise", &f.round.to_string(), &f.attempt.to_string()]);
        // Under secure aggregation no site's training metrics are known (sites do not send them).
        let train_loss = (total > 0 && f.secure.is_none()).then(|| f.contributors.values().map(|(n, m)| *n as f64 * m.loss).sum::<f64>() / total as f64);
        let mut events = Vec::new();
        if f.contributors.len() < self.policy.min_fit_results {
            let reason = format!(
                "{} update(s) of the {} the round needs: {} of {} selected site(s) did not deliver ({} declined)",
                f.contributors.len(),
                self.policy.min_fit_results,
                f.failed.len(),
                f.cohort.len(),
                f.declined.len()
            );
            events.push(Event::ModelKept { round: f.round, reason });
        }
        if f.contributors.len() >= self.policy.min_fit_results
            && let Some(global) = &self.global
        {
            let population = self.clients.values().filter(|c| c.stats.is_some()).count().max(f.cohort.len());
            let mean = match (secure_sum.take(), &self.task.privacy) {
                // Central DP whose release is impossible this round: nothing is released.
                _ if release.as_ref().is_some_and(Result::is_err) => {
                    if let Some(Err(reason)) = &release {
                        events.push(Event::ModelKept { round: f.round, reason: reason.clone() });
                    }
                    None
                }
                (Some(Err(reason)), _) => {
                    events.push(Event::ModelKept { round: f.round, reason });
                    None
                }
                (Some(Ok(sum)), _) => match self.secure_mean(&sum, global.layout(), &survivors, release.clone().and_then(Result::ok), noise_seed, f.target) {
                    Ok(m) => Some(m),
                    Err(reason) => {
                        events.push(Event::ModelKept { round: f.round, reason });
                        None
                    }
                },
                (None, _) => match &self.task.privacy {
                    // (Σ clip(Δ_k) + N(0, (z·S)²)) / m, with m the round's expected cohort size.
                    Some(dp) if !dp.local => f.sum.sum().and_then(|sum| {
                        let seed = noise_seed;
                        // The release says how much noise: with adaptive clipping the count of
                        // unclipped updates takes part of the budget, the update the rest (z_Δ).
                        let std = release.clone().and_then(Result::ok).map_or(dp.noise_multiplier * self.clip_norm, |r| r.noise_std);
                        match noisy_mean(sum.values(), std, f.target, seed) {
                            Ok(v) => FlatParams::new(sum.layout().clone(), v).ok(),
                            Err(reason) => {
                                events.push(Event::ModelKept { round: f.round, reason });
                                None
                            }
                        }
                    }),
                    _ => f.sum.mean(),
                },
            };
            let collected = match (&f.all, mean) {
                (Some(all), _) => Some(Collected::All(all)),
                (None, Some(mean)) => Some(Collected::Mean { mean, contributors: f.contributors.len(), population }),
                (None, None) => None,
            };
            match collected.map(|c| self.strategy.aggregate(global, c)) {
                Some(Ok(next)) => {
                    let hash = std::mem::replace(&mut self.global_hash, next.hash());
                    self.previous = self.global.replace(Arc::new(next)).map(|g| (hash, g));
                    self.refresh_control();
                }
                // The strategy could not run on this cohort (too few updates for its
                // guarantee, say): the round keeps the current model and says why.
                Some(Err(reason)) => events.push(Event::ModelKept { round: f.round, reason }),
                None => {}
            }
        }
        if let Some(a) = self.task.privacy.as_ref().and_then(|dp| dp.adaptive)
            && !release.as_ref().is_some_and(Result::is_err)
        {
            let seed = derive_seed(self.noise_seed, &["dp-clip", &f.round.to_string(), &f.attempt.to_string()]);
            match next_clip_norm(self.clip_norm, f.unclipped, f.target, &a, seed) {
                Ok(c) => self.clip_norm = c,
                Err(reason) => events.push(Event::ModelKept { round: f.round, reason }),
            }
        }
        // A round that released nothing (its release was impossible) costs nothing.
        if !release.as_ref().is_some_and(Result::is_err) {
            self.account(release.clone().and_then(Result::ok));
        }
        let summary = FitSummary {
            started: f.started,
            counts: SavedFit {
                clients: f.contributors.len(),
                selected: f.cohort.len(),
                failed: f.failed.len(),
                declined: f.declined.len(),
                rejected: f.rejected,
                attempts: f.attempt,
                train_loss,
                record_epsilon: f.contributors.values().filter_map(|(_, m)| m.record_epsilon).reduce(f64::max),
            },
        };
        self.spare_accumulator = Some(f.sum.into_accumulator());
        events.push(self.open_evaluate(f.round, Some(summary), now));
        events
    }
}

/// Attempts of one round before it closes with whatever it has (keeping the model).
pub(super) const MAX_ATTEMPTS: u32 = 10;

/// Draws `k` of the `eligible` sites (name, training examples), sorted by name, from a seed:
/// uniformly, or with probability proportional to the number of examples.
pub fn sample_cohort(eligible: &[(String, u64)], k: usize, sampling: Sampling, seed: u64) -> BTreeSet<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match sampling {
        Sampling::Uniform => eligible.choose_multiple(&mut rng, k).map(|(s, _)| s.clone()).collect(),
        Sampling::Weighted => match eligible.choose_multiple_weighted(&mut rng, k, |(_, n)| (*n).max(1) as f64) {
            Ok(chosen) => chosen.map(|(s, _)| s.clone()).collect(),
            // Weights are positive and finite, so this cannot happen; fall back to the first k.
            Err(_) => eligible.iter().take(k).map(|(s, _)| s.clone()).collect(),
        },
    }
}
