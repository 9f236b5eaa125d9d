//! The round state machine of a federation, free of I/O and of the wire.
//!
//! Every method takes the current time and returns the [`Event`]s it caused; the actor
//! (`federation::actor`) owns one `Federation`, feeds it requests and timer ticks, and turns
//! events into files and progress. Sites are keyed by name, not by connection, so the
//! sampling, the aggregation and hence the global model do not depend on who joined first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use flotilla_common::aggregate::WeightedSum;
use flotilla_common::data::{Plan, SiteStats};
use flotilla_common::model::ModelShape;
use flotilla_common::seed::derive_seed;
use flotilla_common::train::{DeclineCause, Evaluation, RegressionMetrics, TrainReport};
use flotilla_common::{FlatParams, Layout, Task};
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use super::policy::{Policy, Sampling};
use super::record::RoundRecord;
use flotilla_common::privacy::accountant::{Step, default_orders};
use flotilla_common::privacy::dp_fedavg::{clip, next_clip_norm, noisy_mean, update_noise_multiplier};

use super::rejection::Rejection;
use super::secure::{Answer, SecureRound, Step as SecAggStep};
use super::snapshot::{AcceptedUpdate, RunIdentity, SNAPSHOT_VERSION, SavedFit, SavedPhase, Snapshot};
use crate::strategy::{Collected, Strategy};

mod deadlines;
mod dp;
mod evaluate;
mod events;
mod fit;
mod masked;
mod membership;
mod resume;

pub use dp::{Release, poisson_cohort};
pub use evaluate::Served;
use evaluate::{EvalRound, FitSummary};
pub use events::{Event, Joined, Outcome, UpdateClaim, Work};
pub use fit::sample_cohort;
use fit::{FitRound, MAX_ATTEMPTS};
use membership::Client;
pub use membership::site_of_client_id;
use resume::Resume;

#[derive(Debug)]
enum Phase {
    /// Waiting for enough sites (and their aggregates) before round `next`: `min_clients`
    /// before the first round, `min_fit_results` before later ones.
    Gathering {
        next: u32,
    },
    Fit(FitRound),
    Evaluate(EvalRound),
    /// Restarted from a snapshot: waiting until the sites connected before the crash are
    /// back (or `until` passes), so the cohorts and the population match the crash-free run.
    Resuming {
        then: Box<Resume>,
        awaiting: BTreeSet<String>,
        until: Instant,
    },
    Done,
}

/// A federation's whole state.
#[derive(Debug)]
pub struct Federation {
    task: Task,
    task_toml: String,
    seed: u64,
    policy: Policy,
    clients: BTreeMap<String, Client>,
    next_client: u64,
    plan: Option<Arc<Plan>>,
    shape: Option<ModelShape>,
    global: Option<Arc<FlatParams>>,
    global_hash: String,
    /// A custom model's given initial parameters (`serve --init-model`); `None` starts from
    /// the seeded initialisation of the task's layout.
    initial: Option<Arc<FlatParams>>,
    /// The global model before the current one, and its hash: a site that holds it gets the
    /// current one as a difference from it. Not durable: after a resume, sites get full models.
    previous: Option<(String, Arc<FlatParams>)>,
    phase: Phase,
    history: Vec<RoundRecord>,
    final_site_metrics: BTreeMap<String, Evaluation>,
    /// Record-level DP: the ε per record each site last reported (its own accountant).
    record_epsilon: BTreeMap<String, f64>,
    sites_seen: BTreeMap<String, u64>,
    strategy: Strategy,
    /// SCAFFOLD's server control variate and its hash, served like a model.
    control: Option<(Arc<FlatParams>, String)>,
    /// Central DP: the rounds so far as (sampling rate, noise multiplier, count) steps.
    dp_steps: Vec<Step>,
    /// Distributed DP: the rounds so far as Skellam releases.
    dp_skellam: Vec<flotilla_common::privacy::SkellamStep>,
    /// ε spent so far under central DP.
    epsilon: Option<f64>,
    /// The current DP clip norm (moves each round under adaptive clipping).
    clip_norm: f64,
    /// The exact sum's accumulator of the last round, reused by the next: zeroing memory
    /// already mapped costs far less than faulting in 16 bytes a parameter every round.
    spare_accumulator: Option<Vec<i128>>,
    /// Messages refused since the last round closed (updates are counted in the round).
    refused: usize,
    /// Central DP: the seed of the noise the coordinator adds, secret from every site (the
    /// federation seed, which sites receive, must not determine it): `--dp-seed` or the OS's
    /// generator. Kept in the durable state so that a resumed run adds the same noise.
    noise_seed: u64,
    /// The round whose model had the lowest federated validation loss so far, with that
    /// model and the sites' evaluations of it: the model a run keeps.
    best: Option<Best>,
}

/// The best round so far by federated validation loss.
#[derive(Debug, Clone)]
pub(crate) struct Best {
    pub(crate) round: u32,
    pub(crate) loss: f64,
    pub(crate) model: Arc<FlatParams>,
    pub(crate) site_metrics: BTreeMap<String, Evaluation>,
}

impl Federation {
    /// A federation that has not started.
    pub fn new(task: Task, seed: u64, policy: Policy) -> Self {
        let task_toml = task.to_toml();
        let strategy = Strategy::new(task.strategy.clone(), f64::from(task.training.server_learning_rate));
        let noise_seed = policy.dp_seed.unwrap_or_else(rand::random);
        Self {
            strategy,
            control: None,
            dp_steps: Vec::new(),
            dp_skellam: Vec::new(),
            epsilon: None,
            clip_norm: task.privacy.map_or(0.0, |p| p.clip_norm),
            task,
            task_toml,
            seed,
            policy,
            clients: BTreeMap::new(),
            next_client: 1,
            plan: None,
            shape: None,
            global: None,
            global_hash: String::new(),
            initial: None,
            previous: None,
            phase: Phase::Gathering { next: 0 },
            history: Vec::new(),
            final_site_metrics: BTreeMap::new(),
            record_epsilon: BTreeMap::new(),
            sites_seen: BTreeMap::new(),
            spare_accumulator: None,
            refused: 0,
            noise_seed,
            best: None,
        }
    }

    /// Starts the federation's custom model from `params` instead of the seeded
    /// initialisation. The task must name them: `model.layout` their layout and
    /// `model.initial` their hash (the coordinator's CLI sets both from `--init-model`), so
    /// that the federation's identity, and so a resume, is bound to these values.
    pub fn set_initial_model(&mut self, params: Arc<FlatParams>) -> Result<(), String> {
        let layout = self.task.custom_layout().map_err(|e| e.to_string())?.ok_or("an initial model is for [model] kind = \"custom\"")?;
        if *params.layout() != layout {
            let diff = flotilla_common::model::registry::describe_difference(&layout, params.layout()).unwrap_or_default();
            return Err(format!("the initial model does not have the task's model.layout: {diff}"));
        }
        if self.task.model.initial.as_deref() != Some(params.hash().as_str()) {
            return Err(format!("the initial model hashes to {}, and the task's model.initial is {:?}", short(&params.hash()), self.task.model.initial));
        }
        self.initial = Some(params);
        Ok(())
    }

    /// The current round (0 until training starts).
    pub fn round(&self) -> u32 {
        match &self.phase {
            Phase::Gathering { next } => *next,
            Phase::Fit(f) => f.round,
            Phase::Evaluate(e) => e.round,
            Phase::Resuming { then, .. } => match then.as_ref() {
                Resume::Gathering { next } => *next,
                Resume::Fit(f) => f.round,
                Resume::Evaluate { round, .. } => *round,
            },
            Phase::Done => self.policy.rounds,
        }
    }

    /// True once the last round is closed.
    /// The phase, for operators: gathering, training, evaluating, resuming or done.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Gathering { .. } => "gathering",
            Phase::Fit(_) => "training",
            Phase::Evaluate(_) => "evaluating",
            Phase::Resuming { .. } => "resuming",
            Phase::Done => "done",
        }
    }

    /// The federation's task.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The federation's round policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Each site's evaluation of the last evaluated model.
    pub fn site_metrics(&self) -> &BTreeMap<String, Evaluation> {
        &self.final_site_metrics
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// How many sites are connected (a site has one client id at a time), in O(1): the actor
    /// asks after every request, and with 10,000 sites building the set each time was
    /// quadratic work per round.
    pub fn connected_count(&self) -> usize {
        self.clients.len()
    }

    /// The plan, once there is one.
    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.plan.clone()
    }

    /// The next piece of work for a site.
    pub fn pull_work(&mut self, client_id: &str, now: Instant) -> Result<Work, Rejection> {
        let site = self.client_mut(client_id, now)?.site.clone();
        let plan_fingerprint = self.plan.as_ref().map(|p| p.fingerprint()).unwrap_or_default();
        Ok(match &self.phase {
            Phase::Done => Work::Done { reason: format!("the federation finished its {} rounds", self.policy.rounds) },
            Phase::Fit(f) if f.pending.contains(&site) => Work::Fit {
                round: f.round,
                model_hash: self.global_hash.clone(),
                plan_fingerprint,
                local_epochs: self.task.training.local_epochs,
                proximal_mu: self.task.strategy.proximal_mu(),
                control_hash: self.control.as_ref().map(|(_, h)| h.clone()).unwrap_or_default(),
                secure_aggregation: self.task.secure_aggregation,
            },
            Phase::Evaluate(e) if e.pending.contains(&site) => Work::Evaluate { round: e.round, model_hash: self.global_hash.clone(), plan_fingerprint },
            _ => Work::Wait { current_round: self.round() },
        })
    }

    /// What the federation produced, once done.
    pub fn outcome(&self) -> Option<Outcome> {
        if !self.is_done() {
            return None;
        }
        let last = self.global.clone()?;
        let (model, best_round, final_site_metrics) = match &self.best {
            Some(b) => (b.model.clone(), Some(b.round), b.site_metrics.clone()),
            None => (last.clone(), None, self.final_site_metrics.clone()),
        };
        Some(Outcome {
            history: self.history.clone(),
            model,
            last_model: last,
            best_round,
            plan: self.plan.clone()?,
            shape: self.shape.clone()?,
            sites: self.sites_seen.clone(),
            final_site_metrics,
            record_epsilon: self.record_epsilon.clone(),
        })
    }

    /// The strategy's optimiser state, for checkpoints.
    pub fn strategy_state(&self) -> Vec<(&'static str, Vec<f64>)> {
        self.strategy.state()
    }

    /// The current global model and its hash, if any.
    pub fn global(&self) -> Option<(Arc<FlatParams>, String)> {
        self.global.clone().map(|g| (g, self.global_hash.clone()))
    }

    /// Counts a refused message (other than an update, which its round counts) for the
    /// round's record.
    pub fn count_refusal(&mut self) {
        self.refused = self.refused.saturating_add(1);
    }

    /// The open training attempt as (round, attempt), if training is open, also while a
    /// resumed federation waits for its sites: the updates kept for that attempt must
    /// survive the snapshots written meanwhile (a second crash still replays them).
    pub fn open_attempt(&self) -> Option<(u32, u32)> {
        match &self.phase {
            Phase::Fit(f) => Some((f.round, f.attempt)),
            Phase::Resuming { then, .. } => match then.as_ref() {
                Resume::Fit(f) => Some((f.round, f.attempt)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Moves the state machine forward as far as it can go right now.
    fn advance(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let progressed = match &self.phase {
                Phase::Gathering { next } => {
                    let next = *next;
                    let ready = self.clients.values().filter(|c| c.stats.is_some()).count();
                    // Sites that joined but have not reported are waited for, up to the round
                    // deadline: one that joins, heartbeats and never reports holds nobody up.
                    let timeout = self.policy.round_timeout;
                    let all_reported = self.clients.values().all(|c| c.stats.is_some() || now.duration_since(c.joined_at) > timeout);
                    // `min_clients` gates the start; later rounds go on with whoever is there.
                    let needed = if self.plan.is_none() { self.policy.min_clients } else { self.policy.min_fit_results };
                    if ready >= needed && all_reported {
                        if self.plan.is_none() {
                            events.extend(self.make_plan());
                            events.push(self.open_evaluate(0, None, now));
                        } else {
                            events.extend(self.open_fit_round(next, now));
                        }
                        true
                    } else {
                        false
                    }
                }
                // Secure aggregation past its keys stage: its own stages decide.
                Phase::Fit(f) if f.secure.as_ref().is_some_and(|s| !s.in_keys_stage()) => {
                    let lease = self.policy.lease;
                    let Phase::Fit(f) = &mut self.phase else { return events };
                    let round = f.round;
                    let Some(secure) = f.secure.as_mut() else { return events };
                    if secure.is_finished() {
                        events.extend(self.close_fit(now));
                        true
                    } else if secure.advance(now, lease) {
                        events.push(Event::SecAggStage { round });
                        true
                    } else {
                        false
                    }
                }
                Phase::Fit(f)
                    if f.pending.is_empty()
                        || f.contributors.len() >= f.target && f.target < f.cohort.len()
                        || f.min_reached_at.is_some_and(|t| now.duration_since(t) >= self.policy.grace) =>
                {
                    // Sites still training are now late: their updates will be refused.
                    if let Phase::Fit(f) = &mut self.phase {
                        let late = std::mem::take(&mut f.pending);
                        f.failed.extend(late);
                        // Secure aggregation: the keys are in; the exchange takes over.
                        if let Some(secure) = f.secure.as_mut() {
                            secure.close_keys(now);
                            events.push(Event::SecAggStage { round: f.round });
                            continue;
                        }
                    }
                    events.extend(self.close_fit(now));
                    true
                }
                Phase::Evaluate(e) if e.pending.is_empty() => {
                    events.extend(self.close_evaluate(now));
                    true
                }
                Phase::Resuming { awaiting, until, .. } => {
                    let back: BTreeSet<String> = self.eligible_sites().into_iter().collect();
                    let missing: Vec<String> = awaiting.difference(&back).cloned().collect();
                    if missing.is_empty() || now >= *until {
                        let round = self.round();
                        self.finish_resume(now, &mut events);
                        events.push(Event::Resumed { round, missing });
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            };
            if !progressed {
                return events;
            }
        }
    }

    fn make_plan(&mut self) -> Vec<Event> {
        // Sorted by site name: the plan does not depend on arrival order.
        let mut by_site: Vec<(&String, &SiteStats)> = self.clients.values().filter_map(|c| c.stats.as_ref().map(|s| (&c.site, s))).collect();
        by_site.sort_by(|a, b| a.0.cmp(b.0));
        let stats: Vec<&SiteStats> = by_site.iter().map(|(_, s)| *s).collect();
        let plan = Plan::combine_within(&stats, &self.policy.limits);
        let rows: BTreeMap<&str, u64> = self.clients.values().map(|c| (c.site.as_str(), c.num_train)).collect();
        let sites: Vec<(&str, &SiteStats, u64)> = by_site.iter().map(|(name, s)| (name.as_str(), *s, rows.get(name.as_str()).copied().unwrap_or(0))).collect();
        let profile = Arc::new(crate::profile::Profile::build(&self.task, &plan, &sites));
        let shape = ModelShape::for_task(&self.task, plan.width());
        let global = match &self.initial {
            Some(initial) => initial.clone(),
            None => Arc::new(shape.init_params(self.seed)),
        };
        self.global_hash = global.hash();
        self.global = Some(global);
        self.refresh_control();
        let ev = Event::PlanReady { features: plan.width(), params: shape.num_params(), profile };
        self.plan = Some(Arc::new(plan));
        self.shape = Some(shape);
        vec![ev]
    }

    /// Publishes the strategy's control variate (SCAFFOLD) so sites can download it.
    fn refresh_control(&mut self) {
        let layout = match &self.global {
            Some(g) => g.layout().clone(),
            None => return,
        };
        self.control = self.strategy.control(&layout).map(|c| (Arc::new(c.clone()), c.hash()));
    }
}

/// The first 12 characters of a hash (or of whatever a site sent in its place), for
/// messages. Counted in characters: a hostile site's multi-byte text cannot split one.
fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

#[cfg(test)]
mod tests;
