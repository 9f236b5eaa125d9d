//! The evaluation half of a round: who evaluates, their results, the round's record.

use super::*;

#[derive(Debug)]
pub(super) struct EvalRound {
    pub(super) round: u32,
    pub(super) started: Instant,
    pub(super) pending: BTreeSet<String>,
    pub(super) results: BTreeMap<String, Evaluation>,
    /// When the training half of the round started (round 0 has none).
    pub(super) fit: Option<FitSummary>,
}

/// A model to send, and the model the site holds that it may be sent as a difference from.
#[derive(Debug, Clone)]
pub struct Served {
    pub model: Arc<FlatParams>,
    pub base: Option<(String, Arc<FlatParams>)>,
}

/// The training half of a round: when it started, and its counts (the durable part).
#[derive(Debug, Clone)]
pub(super) struct FitSummary {
    pub(super) started: Instant,
    pub(super) counts: SavedFit,
}

impl Federation {
    /// The global model a site asks for, if it is the current one (or SCAFFOLD's control
    /// variate), with the model it may be sent as a difference from: the previous global,
    /// when that is the one the site says it holds.
    pub fn model(&mut self, client_id: &str, round: u32, hash: &str, have: &str, now: Instant) -> Result<Served, Rejection> {
        self.client_mut(client_id, now)?;
        if let Some((c, h)) = &self.control
            && hash == h
        {
            return Ok(Served { model: c.clone(), base: None });
        }
        match &self.global {
            Some(g) if hash == self.global_hash => {
                let base = self.previous.as_ref().filter(|(h, _)| !have.is_empty() && h == have).cloned();
                Ok(Served { model: g.clone(), base })
            }
            _ => Err(Rejection::Stale(format!(
                "model {} of round {round} is not the current global model (round {} is {})",
                short(hash),
                self.round(),
                short(&self.global_hash)
            ))),
        }
    }

    /// A site's evaluation of the current global model.
    pub fn submit_evaluation(&mut self, client_id: &str, round: u32, hash: &str, eval: Evaluation, now: Instant) -> Result<Vec<Event>, Rejection> {
        let regression = self.task.data.label.is_regression();
        let c = self.client_mut(client_id, now)?;
        let site = c.site.clone();
        if eval.regression.is_some() != regression {
            return Err(Rejection::InvalidArgument(format!(
                "evaluation of site `{site}` for round {round}: regression metrics belong to a regression task, and it must send them"
            )));
        }
        if eval.examples == 0 || eval.examples > c.num_rows {
            return Err(Rejection::InvalidArgument(format!(
                "evaluation of site `{site}` for round {round} claims {} examples; it declared {} rows at join",
                eval.examples, c.num_rows
            )));
        }
        let current = self.round();
        let Phase::Evaluate(e) = &mut self.phase else {
            return Err(Rejection::Closed(format!("evaluation of round {round} is closed; the federation is in round {current}")));
        };
        if e.round != round || hash != self.global_hash {
            return Err(Rejection::Closed(format!("evaluation of round {round} is closed; the federation evaluates round {}", e.round)));
        }
        if !e.pending.remove(&site) {
            return Err(Rejection::Duplicate(format!("site `{site}` was not asked to evaluate round {round}, or already did")));
        }
        e.results.insert(site, eval);
        Ok(self.advance(now))
    }

    pub(super) fn open_evaluate(&mut self, round: u32, fit: Option<FitSummary>, now: Instant) -> Event {
        let pending: BTreeSet<String> = self.eligible_sites().into_iter().collect();
        let sites = pending.len();
        self.phase = Phase::Evaluate(EvalRound { round, started: now, pending, results: BTreeMap::new(), fit });
        Event::EvaluationOpened { round, sites }
    }

    pub(super) fn close_evaluate(&mut self, now: Instant) -> Vec<Event> {
        let Phase::Evaluate(e) = std::mem::replace(&mut self.phase, Phase::Done) else { return Vec::new() };
        let n: u64 = e.results.values().fold(0u64, |a, r| a.saturating_add(r.examples));
        let weighted = |f: &dyn Fn(&Evaluation) -> f64| {
            if n == 0 { f64::NAN } else { e.results.values().map(|r| r.examples as f64 * f(r)).sum::<f64>() / n as f64 }
        };
        let with_auc: Vec<&Evaluation> = e.results.values().filter(|r| r.auc.is_some()).collect();
        let n_auc: u64 = with_auc.iter().fold(0u64, |a, r| a.saturating_add(r.examples));
        let auc = (n_auc > 0).then(|| with_auc.iter().map(|r| r.examples as f64 * r.auc.unwrap_or(0.0)).sum::<f64>() / n_auc as f64);
        let fit = e.fit.clone();
        let n_val: u64 = e.results.values().fold(0u64, |a, r| a.saturating_add(r.validation_examples));
        let validation_loss = (n_val > 0)
            .then(|| e.results.values().filter_map(|r| r.validation_loss.map(|l| r.validation_examples as f64 * l)).sum::<f64>() / n_val as f64)
            .filter(|l| l.is_finite());
        let regression = RegressionMetrics::pooled(e.results.values().filter_map(|r| r.regression.as_ref().map(|m| (r.examples, m))));
        let record = RoundRecord {
            round: e.round,
            accuracy: weighted(&|r| r.accuracy),
            loss: weighted(&|r| r.loss),
            auc,
            clients: fit.as_ref().map_or(0, |f| f.counts.clients),
            selected: fit.as_ref().map_or(0, |f| f.counts.selected),
            failed: fit.as_ref().map_or(0, |f| f.counts.failed),
            declined: fit.as_ref().map_or(0, |f| f.counts.declined),
            rejected: fit.as_ref().map_or(0, |f| f.counts.rejected),
            attempts: fit.as_ref().map_or(0, |f| f.counts.attempts),
            evaluated: e.results.len(),
            train_loss: fit.as_ref().and_then(|f| f.counts.train_loss),
            seconds: now.duration_since(fit.as_ref().map_or(e.started, |f| f.started)).as_secs_f64(),
            epsilon: self.epsilon,
            clip_norm: self.task.privacy.map(|_| self.clip_norm),
            model_hash: self.global_hash.clone(),
            refused: std::mem::take(&mut self.refused),
            record_epsilon: fit.as_ref().and_then(|f| f.counts.record_epsilon),
            validation_loss,
            regression,
        };
        if let (Some(loss), Some(model)) = (validation_loss, &self.global)
            && self.best.as_ref().is_none_or(|b| loss < b.loss)
        {
            self.best = Some(Best { round: e.round, loss, model: model.clone(), site_metrics: e.results.clone() });
        }
        let stalled = match (&self.best, self.policy.patience) {
            (Some(b), Some(p)) => e.round.saturating_sub(b.round) >= p,
            _ => false,
        };
        self.final_site_metrics = e.results;
        self.history.push(record.clone());
        let mut events = vec![Event::RoundClosed(record)];
        if stalled && e.round < self.policy.rounds {
            tracing::info!(round = e.round, best = self.best.as_ref().map(|b| b.round), "early stop: the validation loss has not improved");
        }
        if e.round >= self.policy.rounds || stalled {
            self.phase = Phase::Done;
            events.push(Event::Done);
        } else {
            self.phase = Phase::Gathering { next: e.round + 1 };
        }
        events
    }
}
