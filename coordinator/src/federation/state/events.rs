//! What the state machine tells the outside world: work for a site, events, claims and answers.

use super::*;

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
    Joined {
        site: String,
        client_id: String,
    },
    Dropped {
        site: String,
        round: u32,
        reason: String,
    },
    Left {
        site: String,
    },
    /// A site of the cohort said it cannot deliver its update this round; it stays on.
    Declined {
        site: String,
        round: u32,
        cause: DeclineCause,
    },
    PlanReady {
        features: usize,
        params: usize,
        /// The federated data profile of the aggregates the plan was made from.
        profile: Arc<crate::profile::Profile>,
    },
    FitOpened {
        round: u32,
        cohort: Vec<String>,
    },
    EvaluationOpened {
        round: u32,
        sites: usize,
    },
    ModelKept {
        round: u32,
        reason: String,
    },
    Abandoned {
        round: u32,
        attempt: u32,
        updates: usize,
    },
    UpdateAccepted {
        site: String,
        round: u32,
    },
    RoundClosed(RoundRecord),
    /// Secure aggregation moved to its next stage (sites waiting on it wake up).
    SecAggStage {
        round: u32,
    },
    /// A resumed federation has its sites back (or stopped waiting for the missing ones).
    Resumed {
        round: u32,
        missing: Vec<String>,
    },
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
                | Event::Declined { .. }
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
    /// The model the run keeps: that of the round with the lowest federated validation loss
    /// (`best_round`), or the last round's when no site has validation rows.
    pub model: Arc<FlatParams>,
    /// The last round's model.
    pub last_model: Arc<FlatParams>,
    pub best_round: Option<u32>,
    pub plan: Arc<Plan>,
    pub shape: ModelShape,
    /// Every site that joined, with its number of training examples.
    pub sites: BTreeMap<String, u64>,
    /// Per site, the evaluation of the kept model on its own test split.
    pub final_site_metrics: BTreeMap<String, Evaluation>,
    /// Record-level DP: the ε per record each site last reported.
    pub record_epsilon: BTreeMap<String, f64>,
}
