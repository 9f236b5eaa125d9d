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
use flotilla_common::train::{Evaluation, TrainReport};
use flotilla_common::{FlatParams, Layout, Task};
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use super::policy::{Policy, Sampling};
use super::record::RoundRecord;
use flotilla_common::privacy::accountant::{default_orders, epsilon, Step};
use flotilla_common::privacy::dp_fedavg::{clip, next_clip_norm, noisy_mean, update_noise_multiplier};

use super::rejection::Rejection;
use super::secure::{Answer, SecureRound, Step as SecAggStep};
use super::snapshot::{AcceptedUpdate, RunIdentity, SavedFit, SavedPhase, Snapshot, SNAPSHOT_VERSION};
use crate::strategy::{Collected, Strategy};

/// What a site should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    Fit { round: u32, model_hash: String, plan_fingerprint: String, local_epochs: u32, proximal_mu: f64, control_hash: String, secure_aggregation: bool },
    Evaluate { round: u32, model_hash: String, plan_fingerprint: String },
    Wait { current_round: u32 },
    Done { reason: String },
}

/// Something that happened and that the outside world may want to record or show.
#[derive(Debug, Clone)]
pub enum Event {
    Joined { site: String, client_id: String },
    Dropped { site: String, round: u32, reason: String },
    Left { site: String },
    PlanReady { features: usize, params: usize },
    FitOpened { round: u32, cohort: Vec<String> },
    EvaluationOpened { round: u32, sites: usize },
    ModelKept { round: u32, reason: String },
    Abandoned { round: u32, attempt: u32, updates: usize },
    UpdateAccepted { site: String, round: u32 },
    RoundClosed(RoundRecord),
    /// Secure aggregation moved to its next stage (sites waiting on it wake up).
    SecAggStage { round: u32 },
    /// A resumed federation has its sites back (or stopped waiting for the missing ones).
    Resumed { round: u32, missing: Vec<String> },
    Done,
}

impl Event {
    /// Whether the durable state must be written again after this event (an accepted update
    /// is kept on its own instead).
    pub fn changes_durable_state(&self) -> bool {
        matches!(
            self,
            Event::PlanReady { .. }
                | Event::FitOpened { .. }
                | Event::Abandoned { .. }
                | Event::EvaluationOpened { .. }
                | Event::RoundClosed(_)
                | Event::Dropped { .. }
                | Event::Resumed { .. }
                | Event::Done
        )
    }
}

/// What an update's header claims, checked before its values are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateClaim {
    pub client_id: String,
    pub round: u32,
    /// Hash of the global model the delta was computed from.
    pub base_hash: String,
    pub fingerprint: String,
    pub total: u64,
    pub num_examples: u64,
    /// A masked input for secure aggregation rather than a plain delta.
    pub masked: bool,
}

/// The answer to a join.
#[derive(Debug, Clone)]
pub struct Joined {
    pub client_id: String,
    pub task_toml: String,
    pub seed: u64,
}

/// What a federation leaves behind once its last round is closed.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub history: Vec<RoundRecord>,
    pub model: Arc<FlatParams>,
    pub plan: Arc<Plan>,
    pub shape: ModelShape,
    /// Every site that joined, with its number of training examples.
    pub sites: BTreeMap<String, u64>,
    /// Per site, the evaluation of the final model on its own test split.
    pub final_site_metrics: BTreeMap<String, Evaluation>,
}

#[derive(Debug)]
struct Client {
    site: String,
    last_seen: Instant,
    /// Set once the site reported its aggregates.
    stats: Option<SiteStats>,
    /// Training examples the site declared: the most an update may claim.
    num_train: u64,
}

#[derive(Debug)]
struct FitRound {
    round: u32,
    started: Instant,
    cohort: BTreeSet<String>,
    pending: BTreeSet<String>,
    /// The example-weighted sum, for strategies that need only the mean.
    sum: WeightedSum,
    /// Every update by site, for strategies that need them all (robust rules).
    all: Option<BTreeMap<String, (FlatParams, u64)>>,
    contributors: BTreeMap<String, (u64, TrainReport)>,
    failed: BTreeSet<String>,
    /// Updates refused by validation in this round.
    rejected: usize,
    /// Updates the round needs; with over-selection fewer than the cohort.
    target: usize,
    /// 1 for the first try; retries after abandoned attempts count up.
    attempt: u32,
    /// When `min_fit_results` updates were in: the grace period runs from here.
    min_reached_at: Option<Instant>,
    /// Central DP: updates whose norm was within the clip norm (for adaptive clipping).
    unclipped: usize,
    /// Secure aggregation, when the task asks for it.
    secure: Option<Box<SecureRound>>,
}

#[derive(Debug)]
struct EvalRound {
    round: u32,
    started: Instant,
    pending: BTreeSet<String>,
    results: BTreeMap<String, Evaluation>,
    /// When the training half of the round started (round 0 has none).
    fit: Option<FitSummary>,
}

/// The training half of a round: when it started, and its counts (the durable part).
#[derive(Debug, Clone)]
struct FitSummary {
    started: Instant,
    counts: SavedFit,
}

/// Where a resumed federation goes once its sites are back.
#[derive(Debug)]
enum Resume {
    Gathering { next: u32 },
    Fit(Box<FitRound>),
    Evaluate { round: u32, fit: Option<FitSummary> },
}

#[derive(Debug)]
enum Phase {
    /// Waiting for enough sites (and their aggregates) before round `next`: `min_clients`
    /// before the first round, `min_fit_results` before later ones.
    Gathering { next: u32 },
    Fit(FitRound),
    Evaluate(EvalRound),
    /// Restarted from a snapshot: waiting until the sites connected before the crash are
    /// back (or `until` passes), so the cohorts and the population match the crash-free run.
    Resuming { then: Box<Resume>, awaiting: BTreeSet<String>, until: Instant },
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
    phase: Phase,
    history: Vec<RoundRecord>,
    final_site_metrics: BTreeMap<String, Evaluation>,
    sites_seen: BTreeMap<String, u64>,
    strategy: Strategy,
    /// SCAFFOLD's server control variate and its hash, served like a model.
    control: Option<(Arc<FlatParams>, String)>,
    /// Central DP: the rounds so far as (sampling rate, noise multiplier, count) steps.
    dp_steps: Vec<Step>,
    /// ε spent so far under central DP.
    epsilon: Option<f64>,
    /// The current DP clip norm (moves each round under adaptive clipping).
    clip_norm: f64,
    /// The exact sum's accumulator of the last round, reused by the next: zeroing memory
    /// already mapped costs far less than faulting in 16 bytes a parameter every round.
    spare_accumulator: Option<Vec<i128>>,
}

impl Federation {
    /// A federation that has not started.
    pub fn new(task: Task, seed: u64, policy: Policy) -> Self {
        let task_toml = task.to_toml();
        let strategy = Strategy::new(task.strategy.clone(), f64::from(task.training.server_learning_rate));
        Self {
            strategy,
            control: None,
            dp_steps: Vec::new(),
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
            phase: Phase::Gathering { next: 0 },
            history: Vec::new(),
            final_site_metrics: BTreeMap::new(),
            sites_seen: BTreeMap::new(),
            spare_accumulator: None,
        }
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
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// How many sites are connected (a site has one client id at a time), in O(1): the actor
    /// asks after every request, and with 10,000 sites building the set each time was
    /// quadratic work per round.
    pub fn connected_count(&self) -> usize {
        self.clients.len()
    }

    /// A site joins (or rejoins: a new connection replaces the old one of the same name).
    pub fn join(&mut self, site: &str, columns: &[String], now: Instant) -> Result<(Joined, Vec<Event>), Rejection> {
        if site.is_empty() || site.len() > 128 || site.chars().any(char::is_control) {
            return Err(Rejection::InvalidArgument(format!("site name `{site}` is empty, too long or has control characters")));
        }
        if let Some(allowed) = &self.policy.allowed_sites
            && !allowed.contains(site) {
                return Err(Rejection::Forbidden(format!("site `{site}` is not on this federation's allow list")));
            }
        let label = &self.task.data.label.column;
        if !columns.contains(label) {
            return Err(Rejection::InvalidArgument(format!("site `{site}`: its data has no column `{label}` (the label)")));
        }
        self.clients.retain(|_, c| c.site != site);
        let client_id = format!("{site}#{}", self.next_client);
        self.next_client += 1;
        self.clients.insert(client_id.clone(), Client { site: site.to_owned(), last_seen: now, stats: None, num_train: 0 });
        let joined = Joined { client_id: client_id.clone(), task_toml: self.task_toml.clone(), seed: self.seed };
        Ok((joined, vec![Event::Joined { site: site.to_owned(), client_id }]))
    }

    /// A site's aggregates and number of training examples.
    pub fn report_stats(&mut self, client_id: &str, stats: SiteStats, num_train: u64, now: Instant) -> Result<Vec<Event>, Rejection> {
        if num_train == 0 {
            return Err(Rejection::InvalidArgument("a site needs at least one training example".into()));
        }
        if stats.columns.is_empty() {
            return Err(Rejection::InvalidArgument("a site must report at least one feature column".into()));
        }
        let c = self.client_mut(client_id, now)?;
        c.stats = Some(stats);
        c.num_train = num_train;
        let site = c.site.clone();
        self.sites_seen.insert(site, num_train);
        Ok(self.advance(now))
    }

    /// The plan, once there is one.
    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.plan.clone()
    }

    /// Marks a site as alive (any request does).
    pub fn touch(&mut self, client_id: &str, now: Instant) -> Result<(), Rejection> {
        self.client_mut(client_id, now).map(|_| ())
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
            Phase::Evaluate(e) if e.pending.contains(&site) => {
                Work::Evaluate { round: e.round, model_hash: self.global_hash.clone(), plan_fingerprint }
            }
            _ => Work::Wait { current_round: self.round() },
        })
    }

    /// The global model a site asks for, if it is the current one.
    pub fn model(&mut self, client_id: &str, round: u32, hash: &str, now: Instant) -> Result<Arc<FlatParams>, Rejection> {
        self.client_mut(client_id, now)?;
        if let Some((c, h)) = &self.control
            && hash == h
        {
            return Ok(c.clone());
        }
        match &self.global {
            Some(g) if hash == self.global_hash => Ok(g.clone()),
            _ => Err(Rejection::Stale(format!(
                "model {} of round {round} is not the current global model (round {} is {})",
                short(hash),
                self.round(),
                short(&self.global_hash)
            ))),
        }
    }

    /// Checks an update's header before its values are received; returns the layout to expect.
    /// A refusal is counted in the round's metrics.
    pub fn begin_update(&mut self, claim: &UpdateClaim, now: Instant) -> Result<Layout, Rejection> {
        let result = self.check_update_header(claim, now);
        if result.is_err() {
            self.count_rejection(claim.round);
        }
        result
    }

    fn check_update_header(&mut self, claim: &UpdateClaim, now: Instant) -> Result<Layout, Rejection> {
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

    /// Adds a received update to the round. A rejected update leaves the round untouched.
    pub fn submit_update(&mut self, claim: &UpdateClaim, delta: &FlatParams, metrics: TrainReport, now: Instant) -> Result<Vec<Event>, Rejection> {
        // The header checks again: the round may have closed while the values streamed in.
        let claim = UpdateClaim { fingerprint: delta.layout().fingerprint().to_owned(), total: delta.values().len() as u64, ..claim.clone() };
        self.begin_update(&claim, now)?;
        let UpdateClaim { client_id, round, num_examples, .. } = claim;
        let client_id = client_id.as_str();
        let site = self.clients[client_id].site.clone();
        if let Some((i, v)) = delta.values().iter().enumerate().find(|(_, v)| !v.is_finite()) {
            self.refuse_values(&site, round);
            return Err(Rejection::InvalidArgument(format!(
                "update of site `{site}` for round {round}: value {v} at index {i} is not finite"
            )));
        }
        if let Some(bound) = self.policy.max_update_norm {
            let norm = delta.l2_norm();
            if norm > bound {
                self.refuse_values(&site, round);
                return Err(Rejection::InvalidArgument(format!(
                    "update of site `{site}` for round {round} has L2 norm {norm:.4e}, above the bound {bound}"
                )));
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
        let mut events = self.accept(&site, round, delta, num_examples, metrics, now)?;
        events.extend(self.advance(now));
        Ok(events)
    }

    /// Adds a validated update to the open round (also used to replay kept updates on resume).
    fn accept(&mut self, site: &str, round: u32, delta: &FlatParams, num_examples: u64, metrics: TrainReport, now: Instant) -> Result<Vec<Event>, Rejection> {
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

    /// A masked input (secure aggregation) for the open round: added to the secure sum.
    pub fn submit_masked(&mut self, claim: &UpdateClaim, values: &[u64], metrics: TrainReport, now: Instant) -> Result<Vec<Event>, Rejection> {
        let claim = UpdateClaim { total: values.len() as u64, masked: true, ..claim.clone() };
        self.begin_update(&claim, now)?;
        let site = self.clients[&claim.client_id].site.clone();
        let Phase::Fit(FitRound { secure: Some(secure), .. }) = &mut self.phase else {
            return Err(Rejection::Closed(format!("training of round {} is not open", claim.round)));
        };
        secure.add_masked(&site, values, metrics)?;
        let mut events = vec![Event::UpdateAccepted { site, round: claim.round }];
        events.extend(self.advance(now));
        Ok(events)
    }

    /// A site's step of the secure-aggregation exchange for `round`.
    pub fn secagg_step(&mut self, client_id: &str, round: u32, step: SecAggStep, now: Instant) -> Result<(Answer, Vec<Event>), Rejection> {
        let site = self.client_mut(client_id, now)?.site.clone();
        match &self.phase {
            Phase::Fit(f) if f.round == round && f.secure.is_some() => {}
            Phase::Fit(f) if f.round == round => {
                return Err(Rejection::InvalidArgument("this federation does not use secure aggregation".into()));
            }
            _ => return Ok((Answer::Done(format!("training of round {round} is over")), Vec::new())),
        }
        if let SecAggStep::Keys(keys) = step {
            // Keys mean "my update is ready": the site delivers, as a plain update would.
            self.open_fit(&site, round)?;
            let min = self.policy.min_fit_results;
            if let Phase::Fit(f) = &mut self.phase
                && let Some(secure) = f.secure.as_mut()
            {
                secure.add_keys(&site, keys)?;
                f.pending.remove(&site);
                f.contributors.insert(site.clone(), (1, TrainReport::default()));
                if f.contributors.len() >= min && f.min_reached_at.is_none() {
                    f.min_reached_at = Some(now);
                }
            }
            let events = self.advance(now);
            let answer = match &mut self.phase {
                Phase::Fit(FitRound { secure: Some(secure), .. }) => secure.step(&site, SecAggStep::Poll(1))?,
                _ => Answer::Done(format!("training of round {round} is over")),
            };
            return Ok((answer, events));
        }
        let Phase::Fit(FitRound { secure: Some(secure), .. }) = &mut self.phase else { unreachable!("checked above") };
        let answer = secure.step(&site, step)?;
        Ok((answer, self.advance(now)))
    }

    /// A site's evaluation of the current global model.
    pub fn submit_evaluation(&mut self, client_id: &str, round: u32, hash: &str, eval: Evaluation, now: Instant) -> Result<Vec<Event>, Rejection> {
        let site = self.client_mut(client_id, now)?.site.clone();
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

    /// A site leaves; it is treated as failed in the current round.
    pub fn leave(&mut self, client_id: &str, now: Instant) -> Vec<Event> {
        match self.clients.remove(client_id) {
            Some(c) => {
                let mut ev = self.forget_site(&c.site, "left the federation");
                ev.extend(self.advance(now));
                ev
            }
            None => Vec::new(),
        }
    }

    /// Expires leases and deadlines.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let lease = self.policy.lease;
        let expired: Vec<String> =
            self.clients.iter().filter(|(_, c)| now.duration_since(c.last_seen) > lease).map(|(id, _)| id.clone()).collect();
        let mut events = Vec::new();
        for id in expired {
            if let Some(c) = self.clients.remove(&id) {
                events.extend(self.forget_site(&c.site, &format!("no contact for {:.1} s (lease expired)", lease.as_secs_f64())));
            }
        }
        let deadline = self.policy.round_timeout;
        // A training attempt without enough updates by the deadline is abandoned and retried
        // with a fresh cohort, so a round never hangs on sites that are gone.
        if let Phase::Fit(f) = &self.phase
            && now.duration_since(f.started) > deadline
            && f.contributors.len() < self.policy.min_fit_results
            && f.attempt < MAX_ATTEMPTS
        {
            let (round, attempt) = (f.round, f.attempt);
            events.push(Event::Abandoned { round, attempt, updates: f.contributors.len() });
            events.extend(self.open_fit_attempt(round, attempt + 1, now));
            return events;
        }
        let timed_out = match &mut self.phase {
            Phase::Fit(f) if now.duration_since(f.started) > deadline => std::mem::take(&mut f.pending),
            Phase::Evaluate(e) if now.duration_since(e.started) > deadline => std::mem::take(&mut e.pending),
            _ => BTreeSet::new(),
        };
        let round = self.round();
        for site in timed_out {
            if let Phase::Fit(f) = &mut self.phase {
                f.failed.insert(site.clone());
            }
            events.push(Event::Dropped { site, round, reason: "round deadline passed".into() });
        }
        events.extend(self.advance(now));
        events
    }

    /// What the federation produced, once done.
    pub fn outcome(&self) -> Option<Outcome> {
        if !self.is_done() {
            return None;
        }
        Some(Outcome {
            history: self.history.clone(),
            model: self.global.clone()?,
            plan: self.plan.clone()?,
            shape: self.shape.clone()?,
            sites: self.sites_seen.clone(),
            final_site_metrics: self.final_site_metrics.clone(),
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

    /// The open training attempt as (round, attempt), if training is open.
    pub fn open_attempt(&self) -> Option<(u32, u32)> {
        match &self.phase {
            Phase::Fit(f) => Some((f.round, f.attempt)),
            _ => None,
        }
    }

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
            sites_seen: self.sites_seen.clone(),
            connected,
            dp_steps: self.dp_steps.clone(),
            epsilon: self.epsilon,
            clip_norm: self.clip_norm,
            global: self.global.clone(),
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
                return Err(format!("the saved global model hashes to {}, not the recorded {}: the state is damaged", short(&global.hash()), short(&snapshot.global_hash)));
            }
            f.strategy.restore(&snapshot.strategy_state, global.layout())?;
            f.global_hash = snapshot.global_hash;
            f.global = Some(global);
            f.plan = Some(Arc::new(plan));
            f.shape = Some(shape);
            f.refresh_control();
        }
        f.next_client = snapshot.next_client;
        f.history = snapshot.history;
        f.final_site_metrics = snapshot.final_site_metrics;
        f.sites_seen = snapshot.sites_seen;
        f.dp_steps = snapshot.dp_steps;
        f.epsilon = snapshot.epsilon;
        f.clip_norm = snapshot.clip_norm;
        let then = match snapshot.phase {
            SavedPhase::Done => {
                f.phase = Phase::Done;
                return Ok(f);
            }
            SavedPhase::Gathering { next } => Resume::Gathering { next },
            SavedPhase::Evaluate { round, fit } => Resume::Evaluate {
                round,
                fit: fit.map(|counts| FitSummary { started: now, counts }),
            },
            SavedPhase::Fit { round, attempt, cohort, target, failed, rejected } => {
                let mut fit = f.new_fit_round(round, attempt, cohort.into_iter().collect(), target, now);
                fit.failed = failed.into_iter().collect();
                fit.rejected = rejected;
                Resume::Fit(Box::new(fit))
            }
        };
        f.phase = Phase::Resuming { then: Box::new(then), awaiting: snapshot.connected.into_iter().collect(), until: now + f.policy.round_timeout };
        for u in updates {
            let fits = match &f.phase {
                Phase::Resuming { then, .. } => match then.as_ref() {
                    Resume::Fit(fit) => fit.round == u.round && fit.attempt == u.attempt && fit.cohort.contains(&u.site) && !fit.contributors.contains_key(&u.site),
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
    fn finish_resume(&mut self, now: Instant, events: &mut Vec<Event>) {
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

    // ---- internals ----------------------------------------------------------------------

    fn client_mut(&mut self, client_id: &str, now: Instant) -> Result<&mut Client, Rejection> {
        let c = self
            .clients
            .get_mut(client_id)
            .ok_or_else(|| Rejection::UnknownClient(format!("client `{client_id}` is unknown or its lease expired; join again")))?;
        c.last_seen = now;
        Ok(c)
    }

    fn open_fit(&self, site: &str, round: u32) -> Result<&FitRound, Rejection> {
        let current = self.round();
        match &self.phase {
            Phase::Fit(f) if f.round == round => {
                if f.contributors.contains_key(site) {
                    Err(Rejection::Duplicate(format!("site `{site}` already sent its update for round {round}")))
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

    /// An upload whose header was accepted broke off or overflowed: count it as rejected.
    pub fn upload_failed(&mut self, round: u32) {
        self.count_rejection(round);
    }

    /// An update whose values were refused: counted, and the site has failed this round (it
    /// stays in the federation; asking it again would only bring the same update back).
    fn refuse_values(&mut self, site: &str, round: u32) {
        self.count_rejection(round);
        if let Phase::Fit(f) = &mut self.phase
            && f.round == round
            && f.pending.remove(site)
        {
            f.failed.insert(site.to_owned());
        }
    }

    fn count_rejection(&mut self, round: u32) {
        if let Phase::Fit(f) = &mut self.phase
            && f.round == round {
                f.rejected += 1;
            }
    }

    fn forget_site(&mut self, site: &str, reason: &str) -> Vec<Event> {
        if self.clients.values().any(|c| c.site == site) {
            return Vec::new(); // the site rejoined under a new connection and keeps its role
        }
        let round = self.round();
        let was_pending = match &mut self.phase {
            Phase::Fit(f) => {
                if let Some(secure) = f.secure.as_mut() {
                    secure.site_gone(site);
                }
                let p = f.pending.remove(site);
                if p {
                    f.failed.insert(site.to_owned());
                }
                p
            }
            Phase::Evaluate(e) => e.pending.remove(site),
            _ => false,
        };
        if was_pending {
            vec![Event::Dropped { site: site.to_owned(), round, reason: reason.to_owned() }]
        } else {
            vec![Event::Left { site: site.to_owned() }]
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
                    let all_reported = ready == self.clients.len();
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
        let mut by_site: Vec<(&String, &SiteStats)> =
            self.clients.values().filter_map(|c| c.stats.as_ref().map(|s| (&c.site, s))).collect();
        by_site.sort_by(|a, b| a.0.cmp(b.0));
        let stats: Vec<&SiteStats> = by_site.into_iter().map(|(_, s)| s).collect();
        let plan = Plan::combine(&stats);
        let shape = ModelShape::for_task(&self.task, plan.width());
        let global = shape.init_params(self.seed);
        self.global_hash = global.hash();
        self.global = Some(Arc::new(global));
        self.refresh_control();
        let ev = Event::PlanReady { features: plan.width(), params: shape.num_params() };
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

    fn eligible_sites(&self) -> Vec<String> {
        self.clients.values().filter(|c| c.stats.is_some()).map(|c| c.site.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }

    fn open_fit_round(&mut self, round: u32, now: Instant) -> Vec<Event> {
        self.open_fit_attempt(round, 1, now)
    }

    fn open_fit_attempt(&mut self, round: u32, attempt: u32, now: Instant) -> Vec<Event> {
        let eligible: Vec<(String, u64)> =
            self.eligible_sites().into_iter().map(|s| (s.clone(), self.sites_seen.get(&s).copied().unwrap_or(1))).collect();
        let target = self.policy.cohort_size(eligible.len());
        let k = self.policy.selection_size(eligible.len());
        let seed = if attempt == 1 {
            derive_seed(self.seed, &["cohort", &round.to_string()])
        } else {
            derive_seed(self.seed, &["cohort", &round.to_string(), "attempt", &attempt.to_string()])
        };
        let cohort = sample_cohort(&eligible, k, self.policy.sampling, seed);
        self.phase = Phase::Fit(self.new_fit_round(round, attempt, cohort.clone(), target, now));
        vec![Event::FitOpened { round, cohort: cohort.into_iter().collect() }]
    }

    fn new_fit_round(&mut self, round: u32, attempt: u32, cohort: BTreeSet<String>, target: usize, now: Instant) -> FitRound {
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
            rejected: 0,
            target,
            attempt,
            min_reached_at: None,
            unclipped: 0,
            secure: self.task.secure_aggregation.then(|| Box::new(SecureRound::new(self.global.as_ref().map_or(0, |g| g.layout().total()) + 1, now))),
        }
    }

    fn close_fit(&mut self, now: Instant) -> Vec<Event> {
        let Phase::Fit(mut f) = std::mem::replace(&mut self.phase, Phase::Done) else { return Vec::new() };
        // Secure aggregation: only the survivors' inputs are in the sum, and only their
        // (unweighted) training metrics are known.
        let mut secure_sum = None;
        if let Some(secure) = f.secure.as_mut() {
            f.contributors = secure.survivors().iter().map(|s| (s.clone(), (1, secure.metrics.get(s).copied().unwrap_or_default()))).collect();
            secure_sum = Some(secure.take_result().unwrap_or_else(|| Err("secure aggregation did not finish".into())));
        }
        let total: u64 = f.contributors.values().map(|(n, _)| n).sum();
        let train_loss = (total > 0)
            .then(|| f.contributors.values().map(|(n, m)| *n as f64 * m.loss).sum::<f64>() / total as f64);
        let mut events = Vec::new();
        if f.contributors.len() >= self.policy.min_fit_results
            && let Some(global) = &self.global
        {
            let population = self.clients.values().filter(|c| c.stats.is_some()).count().max(f.cohort.len());
            let mean = match (secure_sum.take(), &self.task.privacy) {
                (Some(Err(reason)), _) => {
                    events.push(Event::ModelKept { round: f.round, reason });
                    None
                }
                (Some(Ok(sum)), privacy) => match self.secure_mean(&sum, global.layout(), privacy.filter(|p| !p.local), f.round, f.attempt, f.target) {
                    Ok(m) => Some(m),
                    Err(reason) => {
                        events.push(Event::ModelKept { round: f.round, reason });
                        None
                    }
                },
                (None, _) => match &self.task.privacy {
                // (Σ clip(Δ_k) + N(0, (z·S)²)) / m, with m the round's expected cohort size.
                Some(dp) if !dp.local => f.sum.sum().and_then(|sum| {
                    let seed = derive_seed(self.seed, &["dp-noise", &f.round.to_string(), &f.attempt.to_string()]);
                    // With adaptive clipping the count of unclipped updates takes part of the
                    // noise budget; the update gets the rest (z_Δ).
                    let z = match &dp.adaptive {
                        Some(a) => update_noise_multiplier(dp.noise_multiplier, a.sigma_b(f.target)).unwrap_or(dp.noise_multiplier),
                        None => dp.noise_multiplier,
                    };
                    match noisy_mean(sum.values(), z * self.clip_norm, f.target, seed) {
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
                    self.global_hash = next.hash();
                    self.global = Some(Arc::new(next));
                    self.refresh_control();
                }
                // The strategy could not run on this cohort (too few updates for its
                // guarantee, say): the round keeps the current model and says why.
                Some(Err(reason)) => events.push(Event::ModelKept { round: f.round, reason }),
                None => {}
            }
        }
        if let Some(a) = self.task.privacy.as_ref().and_then(|dp| dp.adaptive) {
            let seed = derive_seed(self.seed, &["dp-clip", &f.round.to_string(), &f.attempt.to_string()]);
            match next_clip_norm(self.clip_norm, f.unclipped, f.target, &a, seed) {
                Ok(c) => self.clip_norm = c,
                Err(reason) => events.push(Event::ModelKept { round: f.round, reason }),
            }
        }
        if let Some(dp) = &self.task.privacy {
            // Account for the round: each site took part with probability cohort / population.
            let population = self.clients.values().filter(|c| c.stats.is_some()).count().max(f.cohort.len()).max(1);
            // Local DP: each site's own mechanism, counted at rate 1 for the site that ran it.
            let q = if dp.local { 1.0 } else { f.cohort.len() as f64 / population as f64 };
            match self.dp_steps.iter_mut().find(|s| s.q == q) {
                Some(s) => s.count += 1,
                None => self.dp_steps.push(Step { q, sigma: dp.noise_multiplier, count: 1 }),
            }
            self.epsilon = epsilon(&self.dp_steps, dp.delta, default_orders()).ok().map(|p| p.epsilon);
        }
        let summary = FitSummary {
            started: f.started,
            counts: SavedFit {
                clients: f.contributors.len(),
                selected: f.cohort.len(),
                failed: f.failed.len(),
                rejected: f.rejected,
                attempts: f.attempt,
                train_loss,
            },
        };
        self.spare_accumulator = Some(f.sum.into_accumulator());
        events.push(self.open_evaluate(f.round, Some(summary), now));
        events
    }

    /// The mean delta from an unmasked secure sum (Σ w·Δ, Σ w); with central DP the sites
    /// sent clipped deltas with weight 1, and the noise is added here, after unmasking.
    fn secure_mean(&self, sum: &[u64], layout: &Layout, dp: Option<flotilla_common::privacy::DpConfig>, round: u32, attempt: u32, target: usize) -> Result<FlatParams, String> {
        let (weighted, weight) = flotilla_common::secagg::masking::decode_weighted(sum)?;
        let values = match dp {
            Some(dp) => {
                let seed = derive_seed(self.seed, &["dp-noise", &round.to_string(), &attempt.to_string()]);
                noisy_mean(&weighted, dp.noise_multiplier * self.clip_norm, target, seed)?
            }
            None if weight == 0 => return Err("the secure sum carries no weight".into()),
            None => weighted.iter().map(|v| (f64::from(*v) / weight as f64) as f32).collect(),
        };
        FlatParams::new(layout.clone(), values).map_err(|e| e.to_string())
    }

    fn open_evaluate(&mut self, round: u32, fit: Option<FitSummary>, now: Instant) -> Event {
        let pending: BTreeSet<String> = self.eligible_sites().into_iter().collect();
        let sites = pending.len();
        self.phase = Phase::Evaluate(EvalRound { round, started: now, pending, results: BTreeMap::new(), fit });
        Event::EvaluationOpened { round, sites }
    }

    fn close_evaluate(&mut self, now: Instant) -> Vec<Event> {
        let Phase::Evaluate(e) = std::mem::replace(&mut self.phase, Phase::Done) else { return Vec::new() };
        let n: u64 = e.results.values().map(|r| r.examples).sum();
        let weighted = |f: &dyn Fn(&Evaluation) -> f64| {
            if n == 0 { f64::NAN } else { e.results.values().map(|r| r.examples as f64 * f(r)).sum::<f64>() / n as f64 }
        };
        let with_auc: Vec<&Evaluation> = e.results.values().filter(|r| r.auc.is_some()).collect();
        let n_auc: u64 = with_auc.iter().map(|r| r.examples).sum();
        let auc = (n_auc > 0)
            .then(|| with_auc.iter().map(|r| r.examples as f64 * r.auc.unwrap_or(0.0)).sum::<f64>() / n_auc as f64);
        let fit = e.fit.clone();
        let record = RoundRecord {
            round: e.round,
            accuracy: weighted(&|r| r.accuracy),
            loss: weighted(&|r| r.loss),
            auc,
            clients: fit.as_ref().map_or(0, |f| f.counts.clients),
            selected: fit.as_ref().map_or(0, |f| f.counts.selected),
            failed: fit.as_ref().map_or(0, |f| f.counts.failed),
            rejected: fit.as_ref().map_or(0, |f| f.counts.rejected),
            attempts: fit.as_ref().map_or(0, |f| f.counts.attempts),
            evaluated: e.results.len(),
            train_loss: fit.as_ref().and_then(|f| f.counts.train_loss),
            seconds: now.duration_since(fit.as_ref().map_or(e.started, |f| f.started)).as_secs_f64(),
            epsilon: self.epsilon,
            clip_norm: self.task.privacy.map(|_| self.clip_norm),
            model_hash: self.global_hash.clone(),
        };
        self.final_site_metrics = e.results;
        self.history.push(record.clone());
        let mut events = vec![Event::RoundClosed(record)];
        if e.round >= self.policy.rounds {
            self.phase = Phase::Done;
            events.push(Event::Done);
        } else {
            self.phase = Phase::Gathering { next: e.round + 1 };
        }
        events
    }
}

/// Attempts of one round before it closes with whatever it has (keeping the model).
const MAX_ATTEMPTS: u32 = 10;

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

/// The site a client id was issued to (ids are `<site>#<n>`), to check it against the
/// caller's certificate.
pub fn site_of_client_id(client_id: &str) -> Option<&str> {
    client_id.rsplit_once('#').map(|(site, _)| site)
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flotilla_common::data::ColumnStats;

    use super::*;

    fn stats() -> SiteStats {
        SiteStats { columns: vec![ColumnStats { name: "x".into(), numeric_count: 4, sum: 2.0, sum_squares: 3.0, ..Default::default() }] }
    }

    fn eval() -> Evaluation {
        Evaluation { examples: 10, loss: 0.5, accuracy: 0.5, auc: None }
    }

    /// Two sites joined, round 0 evaluated, round 1 open for training.
    fn in_round_one(policy: Policy) -> (Federation, String, String, Instant) {
        let now = Instant::now();
        let mut f = Federation::new(Task::banks(), 1, Policy { min_clients: 2, rounds: 2, ..policy });
        let cols = vec!["creditability".to_owned(), "x".to_owned()];
        let a = f.join("a", &cols, now).unwrap().0.client_id;
        let b = f.join("b", &cols, now).unwrap().0.client_id;
        f.report_stats(&a, stats(), 10, now).unwrap();
        f.report_stats(&b, stats(), 20, now).unwrap();
        let (_, h) = f.global().unwrap();
        f.submit_evaluation(&a, 0, &h, eval(), now).unwrap();
        f.submit_evaluation(&b, 0, &h, eval(), now).unwrap();
        assert!(matches!(f.pull_work(&a, now).unwrap(), Work::Fit { round: 1, .. }));
        (f, a, b, now)
    }

    /// A claim for `submit_update` (which fills in the layout from the delta itself).
    fn claim(client: &str, round: u32, base: &str, n: u64) -> UpdateClaim {
        UpdateClaim { client_id: client.into(), round, base_hash: base.into(), fingerprint: String::new(), total: 0, num_examples: n, masked: false }
    }

    fn delta(f: &Federation, v: f32) -> FlatParams {
        let (g, _) = f.global().unwrap();
        FlatParams::new(g.layout().clone(), vec![v; g.layout().total()]).unwrap()
    }

    #[test]
    fn a_second_update_for_the_same_round_is_refused_and_not_counted() {
        let (mut f, a, _, now) = in_round_one(Policy::default());
        let (_, h) = f.global().unwrap();
        let d = delta(&f, 0.01);
        f.submit_update(&claim(&a, 1, &h, 10), &d, TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap();
        let err = f.submit_update(&claim(&a, 1, &h, 10), &d, TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap_err();
        assert!(matches!(err, Rejection::Duplicate(_)), "{err:?}");
        let Phase::Fit(round) = &f.phase else { panic!("round 1 must still be open") };
        assert_eq!((round.sum.count(), round.rejected), (1, 1));
    }

    #[test]
    fn every_bad_update_is_refused_with_its_reason_and_leaves_the_model_alone() {
        let (mut f, a, b, now) = in_round_one(Policy { max_update_norm: Some(100.0), ..Policy::default() });
        let (g, h) = f.global().unwrap();
        let (fp, total) = (g.layout().fingerprint().to_owned(), g.layout().total() as u64);
        let mut nan = delta(&f, 0.01);
        nan.values_mut()[3] = f32::NAN;
        let mut inf = delta(&f, 0.01);
        inf.values_mut()[0] = f32::INFINITY;
        let huge = delta(&f, 10.0);
        let ok = delta(&f, 0.01);
        let m = TrainReport { epochs: 5, ..TrainReport::default() };
        let cases: Vec<(&str, Result<Vec<Event>, Rejection>)> = vec![
            ("claims 11 examples", f.submit_update(&claim(&a, 1, &h, 11), &ok, m, now)),
            ("computed from model", f.submit_update(&claim(&a, 1, "ffff", 10), &ok, m, now)),
            ("not open", f.submit_update(&claim(&a, 2, &h, 10), &ok, m, now)),
            ("has layout", f.begin_update(&UpdateClaim { fingerprint: "beef".into(), total, ..claim(&a, 1, &h, 10) }, now).map(|_| Vec::new())),
            ("has layout", f.begin_update(&UpdateClaim { fingerprint: fp.clone(), total: total - 1, ..claim(&a, 1, &h, 10) }, now).map(|_| Vec::new())),
            ("unknown", f.submit_update(&claim("a#99", 1, &h, 10), &ok, m, now)),
        ];
        for (reason, result) in cases {
            let err = result.expect_err(reason);
            assert!(err.to_string().contains(reason), "expected `{reason}`, got `{err}`");
        }
        assert_eq!(f.global().unwrap().1, h, "nothing changed the global model");
        let Phase::Fit(round) = &f.phase else { panic!("round 1 must still be open") };
        assert_eq!((round.sum.count(), round.rejected), (0, 5), "the update for round 2 counts against round 2, not this one");
        // A header refused is no verdict on the site: its honest update still counts.
        f.submit_update(&claim(&a, 1, &h, 10), &ok, m, now).unwrap();
        f.submit_update(&claim(&b, 1, &h, 20), &ok, m, now).unwrap();
        assert_ne!(f.global().unwrap().1, h);

        // Refused values cost the site the round (it stays in the federation; the same update
        // would come back), and the other sites' updates close it.
        for (reason, bad) in [("not finite", nan), ("not finite", inf), ("L2 norm", huge)] {
            let (mut f, a, b, now) = in_round_one(Policy { max_update_norm: Some(100.0), ..Policy::default() });
            let err = f.submit_update(&claim(&a, 1, &h, 10), &bad, m, now).unwrap_err();
            assert!(err.to_string().contains(reason), "expected `{reason}`, got `{err}`");
            let again = f.submit_update(&claim(&a, 1, &h, 10), &ok, m, now).unwrap_err();
            assert!(again.to_string().contains("dropped from round 1"), "{again}");
            let Phase::Fit(round) = &f.phase else { panic!("round 1 must still be open") };
            assert!(round.failed.contains("a") && !round.pending.contains("a") && round.rejected == 2);
            f.submit_update(&claim(&b, 1, &h, 20), &ok, m, now).unwrap();
            assert_ne!(f.global().unwrap().1, h, "b's update closed the round");
            assert!(f.clients.values().any(|c| c.site == "a"), "a is still in the federation");
        }
    }

    #[test]
    fn partial_work_is_dropped_by_fedavg_and_used_by_fedprox() {
        let (mut f, a, _, now) = in_round_one(Policy::default());
        let (_, h) = f.global().unwrap();
        let partial = TrainReport { epochs: 2, ..TrainReport::default() };
        let err = f.submit_update(&claim(&a, 1, &h, 10), &delta(&f, 0.01), partial, now).unwrap_err();
        assert!(err.to_string().contains("did 2 of 5 local epochs"), "{err}");
        let Phase::Fit(round) = &f.phase else { panic!("round 1 must still be open") };
        assert!(round.failed.contains("a") && round.sum.count() == 0);

        let mut task = Task::banks();
        task.strategy.name = flotilla_common::strategy::StrategyName::Fedprox;
        let mut g = Federation::new(task, 1, Policy { min_clients: 2, rounds: 2, ..Policy::default() });
        let cols = vec!["creditability".to_owned(), "x".to_owned()];
        let a = g.join("a", &cols, now).unwrap().0.client_id;
        let b = g.join("b", &cols, now).unwrap().0.client_id;
        g.report_stats(&a, stats(), 10, now).unwrap();
        g.report_stats(&b, stats(), 20, now).unwrap();
        let (_, h) = g.global().unwrap();
        g.submit_evaluation(&a, 0, &h, eval(), now).unwrap();
        g.submit_evaluation(&b, 0, &h, eval(), now).unwrap();
        assert!(matches!(g.pull_work(&a, now).unwrap(), Work::Fit { proximal_mu, .. } if proximal_mu > 0.0));
        g.submit_update(&claim(&a, 1, &h, 10), &delta(&g, 0.01), partial, now).unwrap();
    }

    #[test]
    fn the_allow_list_and_the_label_column_are_checked_at_join() {
        let allowed = Some(["a".to_owned()].into_iter().collect());
        let mut f = Federation::new(Task::banks(), 1, Policy { allowed_sites: allowed, ..Policy::default() });
        let cols = vec!["creditability".to_owned()];
        let now = Instant::now();
        assert!(matches!(f.join("b", &cols, now), Err(Rejection::Forbidden(_))));
        assert!(matches!(f.join("a", &["x".to_owned()], now), Err(Rejection::InvalidArgument(_))));
        assert!(f.join("a", &cols, now).is_ok());
    }

    #[test]
    fn a_silent_site_loses_its_lease_and_the_round_closes_without_it() {
        let (mut f, a, b, now) = in_round_one(Policy { lease: Duration::from_secs(1), ..Policy::default() });
        let (_, h) = f.global().unwrap();
        f.submit_update(&claim(&a, 1, &h, 10), &delta(&f, 0.01), TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap();
        f.touch(&a, now + Duration::from_secs(2)).unwrap();
        let events = f.tick(now + Duration::from_secs(2));
        assert!(events.iter().any(|e| matches!(e, Event::Dropped { site, .. } if site == "b")), "{events:?}");
        assert!(matches!(f.pull_work(&a, now + Duration::from_secs(2)).unwrap(), Work::Evaluate { round: 1, .. }));
        assert!(matches!(f.pull_work(&b, now), Err(Rejection::UnknownClient(_))));
    }

    #[test]
    fn cohorts_are_seeded_and_weighted_sampling_favours_big_sites() {
        let sites: Vec<(String, u64)> = [("a", 10), ("b", 10), ("c", 10), ("d", 10_000)].into_iter().map(|(s, n)| (s.to_owned(), n)).collect();
        assert_eq!(sample_cohort(&sites, 2, Sampling::Uniform, 7), sample_cohort(&sites, 2, Sampling::Uniform, 7));
        let picks = |sampling| (0..200).filter(|&seed| sample_cohort(&sites, 1, sampling, seed).contains("d")).count();
        let (uniform, weighted) = (picks(Sampling::Uniform), picks(Sampling::Weighted));
        assert!((30..=70).contains(&uniform), "uniform picks d about a quarter of the time: {uniform}/200");
        assert!(weighted >= 190, "weighted picks the big site almost always: {weighted}/200");
    }

    /// Four sites joined and evaluated, round 1 open.
    fn four_sites(policy: Policy) -> (Federation, Vec<String>, Instant) {
        let now = Instant::now();
        let mut f = Federation::new(Task::banks(), 1, Policy { min_clients: 4, rounds: 2, ..policy });
        let cols = vec!["creditability".to_owned(), "x".to_owned()];
        let ids: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| f.join(s, &cols, now).unwrap().0.client_id).collect();
        for id in &ids {
            f.report_stats(id, stats(), 10, now).unwrap();
        }
        let (_, h) = f.global().unwrap();
        for id in &ids {
            f.submit_evaluation(id, 0, &h, eval(), now).unwrap();
        }
        (f, ids, now)
    }

    fn fit_sites(f: &mut Federation, ids: &[String], now: Instant) -> Vec<String> {
        ids.iter().filter(|id| matches!(f.pull_work(id, now).unwrap(), Work::Fit { .. })).cloned().collect()
    }

    #[test]
    fn an_over_selected_round_closes_as_soon_as_enough_sites_reported() {
        let (mut f, ids, now) = four_sites(Policy { fraction_fit: 0.5, over_selection: 2.0, ..Policy::default() });
        let asked = fit_sites(&mut f, &ids, now);
        assert_eq!(asked.len(), 4, "2 needed, 4 selected");
        let (_, h) = f.global().unwrap();
        let m = TrainReport { epochs: 5, ..TrainReport::default() };
        f.submit_update(&claim(&asked[0], 1, &h, 10), &delta(&f, 0.01), m, now).unwrap();
        f.submit_update(&claim(&asked[1], 1, &h, 10), &delta(&f, 0.01), m, now).unwrap();
        let late = f.submit_update(&claim(&asked[2], 1, &h, 10), &delta(&f, 0.01), m, now).unwrap_err();
        assert!(matches!(late, Rejection::Closed(_)), "{late:?}");
        assert!(matches!(f.pull_work(&asked[0], now).unwrap(), Work::Evaluate { round: 1, .. }));
    }

    #[test]
    fn the_grace_period_closes_a_round_once_the_minimum_is_in() {
        let (mut f, ids, now) = four_sites(Policy { min_fit_results: 2, grace: Duration::from_secs(5), ..Policy::default() });
        let (_, h) = f.global().unwrap();
        let m = TrainReport { epochs: 5, ..TrainReport::default() };
        f.submit_update(&claim(&ids[0], 1, &h, 10), &delta(&f, 0.01), m, now).unwrap();
        f.tick(now + Duration::from_secs(10));
        assert!(matches!(f.pull_work(&ids[1], now).unwrap(), Work::Fit { .. }), "one update is not the minimum: keep waiting");
        let t = now + Duration::from_secs(11);
        f.submit_update(&claim(&ids[1], 1, &h, 10), &delta(&f, 0.01), m, t).unwrap();
        f.touch(&ids[2], t + Duration::from_secs(6)).unwrap();
        f.touch(&ids[3], t + Duration::from_secs(6)).unwrap();
        f.touch(&ids[0], t + Duration::from_secs(6)).unwrap();
        f.touch(&ids[1], t + Duration::from_secs(6)).unwrap();
        f.tick(t + Duration::from_secs(6));
        assert!(matches!(f.pull_work(&ids[2], t + Duration::from_secs(6)).unwrap(), Work::Evaluate { round: 1, .. }));
    }

    #[test]
    fn an_attempt_without_enough_updates_is_abandoned_and_retried_with_a_fresh_cohort() {
        let (mut f, ids, now) = four_sites(Policy { fraction_fit: 0.5, round_timeout: Duration::from_secs(5), lease: Duration::from_secs(100), ..Policy::default() });
        let first = fit_sites(&mut f, &ids, now);
        let events = f.tick(now + Duration::from_secs(6));
        assert!(events.iter().any(|e| matches!(e, Event::Abandoned { round: 1, attempt: 1, updates: 0 })), "{events:?}");
        let t = now + Duration::from_secs(6);
        let second = fit_sites(&mut f, &ids, t);
        assert_eq!(second.len(), 2);
        let (_, h) = f.global().unwrap();
        let m = TrainReport { epochs: 5, ..TrainReport::default() };
        for id in &second {
            f.submit_update(&claim(id, 1, &h, 10), &delta(&f, 0.01), m, t).unwrap();
        }
        for id in &ids {
            f.submit_evaluation(id, 1, &f.global().unwrap().1, eval(), t).unwrap();
        }
        let record = f.history.last().unwrap();
        assert_eq!((record.round, record.attempts, record.clients), (1, 2, 2));
        let _ = first;
    }

    #[test]
    fn a_federation_resumed_mid_round_ends_with_the_model_of_one_that_never_stopped() {
        let m = TrainReport { epochs: 5, loss: 0.25, ..TrainReport::default() };
        let (mut reference, a, b, now) = in_round_one(Policy::default());
        let (_, h) = reference.global().unwrap();
        let (da, db) = (delta(&reference, 0.01), delta(&reference, -0.03));
        reference.submit_update(&claim(&a, 1, &h, 10), &da, m, now).unwrap();
        reference.submit_update(&claim(&b, 1, &h, 20), &db, m, now).unwrap();
        let expected = reference.global().unwrap().1;

        // The same run, stopped after a's update: its snapshot and the kept update survive.
        let (mut crashed, a, _, now) = in_round_one(Policy::default());
        crashed.submit_update(&claim(&a, 1, &h, 10), &da, m, now).unwrap();
        let snapshot = crashed.snapshot();
        assert_eq!(crashed.open_attempt(), Some((1, 1)));
        let kept = vec![AcceptedUpdate { site: "a".into(), round: 1, attempt: 1, num_examples: 10, metrics: m, delta: da.clone() }];
        let policy = Policy { min_clients: 2, rounds: 2, ..Policy::default() };

        let wrong_seed = Federation::resume(Task::banks(), 2, policy.clone(), snapshot.clone(), kept.clone(), now).unwrap_err();
        assert!(wrong_seed.contains("seed 1"), "{wrong_seed}");
        let wrong_policy = Federation::resume(Task::banks(), 1, Policy { fraction_fit: 0.5, ..policy.clone() }, snapshot.clone(), kept.clone(), now).unwrap_err();
        assert!(wrong_policy.contains("round policy"), "{wrong_policy}");

        let mut resumed = Federation::resume(Task::banks(), 1, policy, snapshot, kept, now).unwrap();
        assert_eq!(resumed.global().unwrap().1, h);
        let cols = vec!["creditability".to_owned(), "x".to_owned()];
        let a2 = resumed.join("a", &cols, now).unwrap().0.client_id;
        assert!(a2 != a, "client ids are never reused: {a2}");
        resumed.report_stats(&a2, stats(), 10, now).unwrap();
        assert!(matches!(resumed.pull_work(&a2, now).unwrap(), Work::Wait { .. }), "waits for b to rejoin first");
        let b2 = resumed.join("b", &cols, now).unwrap().0.client_id;
        let events = resumed.report_stats(&b2, stats(), 20, now).unwrap();
        assert!(events.iter().any(|e| matches!(e, Event::Resumed { round: 1, missing } if missing.is_empty())), "{events:?}");
        assert!(matches!(resumed.pull_work(&a2, now).unwrap(), Work::Wait { .. }), "a's update is already in");
        assert!(matches!(resumed.pull_work(&b2, now).unwrap(), Work::Fit { round: 1, .. }), "b is asked again");
        let dup = resumed.submit_update(&claim(&a2, 1, &h, 10), &da, m, now).unwrap_err();
        assert!(matches!(dup, Rejection::Duplicate(_)), "a's update is not counted twice: {dup:?}");
        resumed.submit_update(&claim(&b2, 1, &h, 20), &db, m, now).unwrap();
        assert_eq!(resumed.global().unwrap().1, expected, "bit-identical to the run that never stopped");
    }

    #[test]
    fn client_ids_name_their_site() {
        assert_eq!(site_of_client_id("VA Long Beach#3"), Some("VA Long Beach"));
        assert_eq!(site_of_client_id("nohash"), None);
    }
}
