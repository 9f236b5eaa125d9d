//! The durable state: snapshots of the federation and restarting from one.

use super::*;

/// Where a resumed federation goes once its sites are back.
#[derive(Debug)]
pub(super) enum Resume {
    Gathering { next: u32 },
    Fit(Box<FitRound>),
    Evaluate { round: u32, fit: Option<FitSummary> },
}

impl Federation {
    /// What the run was started with.
    pub fn identity(&self) -> RunIdentity {
        RunIdentity { task_toml: self.task_toml.clone(), seed: self.seed, policy: self.policy.identity() }
    }

    /// The durable state, to be written after every change that matters.
    pub fn snapshot(&self) -> Snapshot {
        let save_summary = |s: &FitSummary| s.counts.clone();
        let save_fit = |f: &FitRound| SavedPhase::Fit {
            round: f.round,
            attempt: f.attempt,
            cohort: f.cohort.iter().cloned().collect(),
            target: f.target,
            failed: f.failed.iter().cloned().collect(),
            declined: f.declined.iter().cloned().collect(),
            rejected: f.rejected,
        };
        let (phase, connected) = match &self.phase {
            Phase::Gathering { next } => (SavedPhase::Gathering { next: *next }, self.eligible_sites()),
            Phase::Fit(f) => (save_fit(f), self.eligible_sites()),
            Phase::Evaluate(e) => (SavedPhase::Evaluate { round: e.round, fit: e.fit.as_ref().map(save_summary) }, self.eligible_sites()),
            // Still waiting: keep waiting for the same sites after another restart.
            Phase::Resuming { then, awaiting, .. } => (
                match then.as_ref() {
                    Resume::Gathering { next } => SavedPhase::Gathering { next: *next },
                    Resume::Fit(f) => save_fit(f),
                    Resume::Evaluate { round, fit } => SavedPhase::Evaluate { round: *round, fit: fit.as_ref().map(save_summary) },
                },
                awaiting.iter().cloned().collect(),
            ),
            Phase::Done => (SavedPhase::Done, self.eligible_sites()),
        };
        Snapshot {
            version: SNAPSHOT_VERSION,
            identity: self.identity(),
            next_client: self.next_client,
            plan: self.plan.as_deref().cloned(),
            global_hash: self.global_hash.clone(),
            phase,
            history: self.history.clone(),
            final_site_metrics: self.final_site_metrics.clone(),
            record_epsilon: self.record_epsilon.clone(),
            sites_seen: self.sites_seen.clone(),
            connected,
            dp_steps: self.dp_steps.clone(),
            dp_skellam: self.dp_skellam.clone(),
            epsilon: self.epsilon,
            clip_norm: self.clip_norm,
            noise_seed: Some(self.noise_seed),
            best_round: self.best.as_ref().map(|b| b.round),
            best_loss: self.best.as_ref().map(|b| b.loss),
            best_site_metrics: self.best.as_ref().map(|b| b.site_metrics.clone()).unwrap_or_default(),
            global: self.global.clone(),
            best: self.best.as_ref().map(|b| b.model.clone()),
            strategy_state: self.strategy.state().into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
        }
    }

    /// A federation restarted from `snapshot` and the updates accepted after it. It refuses a
    /// different task, seed or round policy, and a model that does not match the plan. The
    /// resumed federation waits (up to `round_timeout`) for the sites connected before the
    /// crash to rejoin, then goes on exactly where it stopped.
    pub fn resume(task: Task, seed: u64, policy: Policy, snapshot: Snapshot, updates: Vec<AcceptedUpdate>, now: Instant) -> Result<Self, String> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(format!("the saved state has format version {}; this coordinator reads version {SNAPSHOT_VERSION}", snapshot.version));
        }
        let mut f = Federation::new(task, seed, policy);
        if let Some(why) = snapshot.identity.mismatch(&f.identity()) {
            return Err(format!("cannot resume with a different configuration: {why}"));
        }
        if let Some(plan) = snapshot.plan {
            let shape = ModelShape::for_task(&f.task, plan.width());
            let global = snapshot.global.ok_or("the saved state has a plan but no global model")?;
            let expected = shape.layout();
            if *global.layout() != expected {
                return Err(format!(
                    "the saved global model has layout {} ({} values); the task's model has {} ({} values)",
                    short(global.layout().fingerprint()),
                    global.layout().total(),
                    short(expected.fingerprint()),
                    expected.total()
                ));
            }
            if global.hash() != snapshot.global_hash {
                return Err(format!(
                    "the saved global model hashes to {}, not the recorded {}: the state is damaged",
                    short(&global.hash()),
                    short(&snapshot.global_hash)
                ));
            }
            f.strategy.restore(&snapshot.strategy_state, global.layout())?;
            f.global_hash = snapshot.global_hash;
            f.global = Some(global);
            f.plan = Some(Arc::new(plan));
            f.shape = Some(shape);
            f.refresh_control();
        }
        if let (Some(round), Some(loss), Some(model)) = (snapshot.best_round, snapshot.best_loss, snapshot.best) {
            if f.global.as_ref().is_none_or(|g| g.layout() != model.layout()) {
                return Err("the saved best model does not have the global model's layout: the state is damaged".into());
            }
            f.best = Some(super::Best { round, loss, model, site_metrics: snapshot.best_site_metrics });
        }
        f.next_client = snapshot.next_client;
        f.history = snapshot.history;
        f.final_site_metrics = snapshot.final_site_metrics;
        f.record_epsilon = snapshot.record_epsilon;
        f.sites_seen = snapshot.sites_seen;
        f.dp_steps = snapshot.dp_steps;
        f.dp_skellam = snapshot.dp_skellam;
        f.epsilon = snapshot.epsilon;
        f.clip_norm = snapshot.clip_norm;
        if let Some(s) = snapshot.noise_seed {
            f.noise_seed = s;
        }
        let then = match snapshot.phase {
            SavedPhase::Done => {
                f.phase = Phase::Done;
                return Ok(f);
            }
            SavedPhase::Gathering { next } => Resume::Gathering { next },
            SavedPhase::Evaluate { round, fit } => Resume::Evaluate { round, fit: fit.map(|counts| FitSummary { started: now, counts }) },
            SavedPhase::Fit { round, attempt, cohort, target, failed, declined, rejected } => {
                let mut fit = f.new_fit_round(round, attempt, cohort.into_iter().collect(), target, now);
                fit.failed = failed.into_iter().collect();
                fit.declined = declined.into_iter().filter(|s| fit.failed.contains(s)).collect();
                fit.rejected = rejected;
                Resume::Fit(Box::new(fit))
            }
        };
        f.phase = Phase::Resuming { then: Box::new(then), awaiting: snapshot.connected.into_iter().collect(), until: now + f.policy.round_timeout };
        for u in updates {
            let fits = match &f.phase {
                Phase::Resuming { then, .. } => match then.as_ref() {
                    Resume::Fit(fit) => {
                        fit.round == u.round && fit.attempt == u.attempt && fit.cohort.contains(&u.site) && !fit.contributors.contains_key(&u.site)
                    }
                    _ => false,
                },
                _ => false,
            };
            if fits {
                f.accept(&u.site, u.round, &u.delta, u.num_examples, u.metrics, now).map_err(|e| format!("replaying the update of site `{}`: {e}", u.site))?;
            }
        }
        Ok(f)
    }

    /// Leaves `Resuming` for the phase the snapshot was taken in.
    pub(super) fn finish_resume(&mut self, now: Instant, events: &mut Vec<Event>) {
        let Phase::Resuming { then, .. } = std::mem::replace(&mut self.phase, Phase::Done) else { return };
        match *then {
            Resume::Gathering { next } => self.phase = Phase::Gathering { next },
            Resume::Fit(mut f) => {
                // Sites that had not delivered are asked again; their clocks start now.
                f.started = now;
                f.pending = f.cohort.iter().filter(|s| !f.contributors.contains_key(*s) && !f.failed.contains(*s)).cloned().collect();
                if f.contributors.len() >= self.policy.min_fit_results {
                    f.min_reached_at = Some(now);
                }
                self.phase = Phase::Fit(*f);
            }
            Resume::Evaluate { round, fit } => events.push(self.open_evaluate(round, fit, now)),
        }
    }
}
