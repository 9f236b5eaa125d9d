//! What the coordinator must remember to survive a crash: the federation's durable state as
//! plain data, free of I/O (`crate::durable` writes it) and of timers (a resumed run starts
//! its clocks afresh).
//!
//! A [`Snapshot`] is taken whenever the phase changes (round opened, aggregated, evaluated);
//! each update accepted in between is kept on its own as an [`AcceptedUpdate`]. Together they
//! give back the open round exactly: the exact sum does not depend on the order updates are
//! added in, so replaying them gives the same bits.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_common::FlatParams;
use flotilla_common::data::Plan;
use flotilla_common::privacy::Step;
use flotilla_common::train::{Evaluation, TrainReport};
use serde::{Deserialize, Serialize};

use super::record::RoundRecord;

/// Bumped when the format changes; older snapshots are refused with a clear message.
pub const SNAPSHOT_VERSION: u32 = 1;

/// What a run was started with; a resume must match it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    pub task_toml: String,
    pub seed: u64,
    /// `Policy::identity`: the settings that decide the model.
    pub policy: String,
}

impl RunIdentity {
    /// Why `other` (the command being resumed) differs from `self` (the saved run), if it does.
    pub fn mismatch(&self, other: &RunIdentity) -> Option<String> {
        if self.seed != other.seed {
            return Some(format!("the run was started with seed {}, not {}", self.seed, other.seed));
        }
        if self.policy != other.policy {
            return Some(format!("the round policy differs: saved `{}`, now `{}`", self.policy, other.policy));
        }
        if self.task_toml != other.task_toml {
            let line =
                self.task_toml.lines().zip(other.task_toml.lines()).find(|(a, b)| a != b).map(|(a, b)| format!(": saved `{a}`, now `{b}`")).unwrap_or_default();
            return Some(format!("the task (model, training, data, strategy or privacy) differs{line}"));
        }
        None
    }
}

/// The phase a snapshot was taken in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SavedPhase {
    /// Between rounds, before `next` opens.
    Gathering {
        next: u32,
    },
    /// Training of `round` is open (its `attempt`-th try) with this cohort.
    Fit {
        round: u32,
        attempt: u32,
        cohort: Vec<String>,
        target: usize,
        failed: Vec<String>,
        /// Those of `failed` that declined the round (older snapshots: none).
        #[serde(default)]
        declined: Vec<String>,
        rejected: usize,
    },
    /// The model of `round` is being evaluated; `fit` summarises its training half.
    Evaluate {
        round: u32,
        fit: Option<SavedFit>,
    },
    Done,
}

/// The training half of a round, kept until its evaluation closes the round's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedFit {
    pub clients: usize,
    pub selected: usize,
    pub failed: usize,
    #[serde(default)]
    pub declined: usize,
    pub rejected: usize,
    pub attempts: u32,
    pub train_loss: Option<f64>,
    #[serde(default)]
    pub record_epsilon: Option<f64>,
}

/// The durable state of a federation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub identity: RunIdentity,
    /// Next number for client ids, so ids handed out before the crash are never reused.
    pub next_client: u64,
    pub plan: Option<Plan>,
    pub global_hash: String,
    pub phase: SavedPhase,
    pub history: Vec<RoundRecord>,
    pub final_site_metrics: BTreeMap<String, Evaluation>,
    #[serde(default)]
    pub record_epsilon: BTreeMap<String, f64>,
    /// Every site that reported, with its training examples.
    pub sites_seen: BTreeMap<String, u64>,
    /// Sites connected (with their aggregates) when the snapshot was taken: a resumed run
    /// waits for them before it draws a cohort, so it draws the same one.
    pub connected: Vec<String>,
    pub dp_steps: Vec<Step>,
    #[serde(default)]
    pub dp_skellam: Vec<flotilla_common::privacy::SkellamStep>,
    pub epsilon: Option<f64>,
    pub clip_norm: f64,
    /// Central DP's secret noise seed (the state directory is the coordinator's alone).
    #[serde(default)]
    pub noise_seed: Option<u64>,
    /// The best round so far by validation loss, its loss and its sites' evaluations; its
    /// model is the `best` tensor.
    #[serde(default)]
    pub best_round: Option<u32>,
    #[serde(default)]
    pub best_loss: Option<f64>,
    #[serde(default)]
    pub best_site_metrics: BTreeMap<String, Evaluation>,
    /// The global model (absent before the plan); kept as a tensor, not in the metadata.
    #[serde(skip)]
    pub global: Option<Arc<FlatParams>>,
    /// The best round's model (same layout as the global model); a tensor.
    #[serde(skip)]
    pub best: Option<Arc<FlatParams>>,
    /// The strategy's optimiser state, by name; kept as tensors.
    #[serde(skip)]
    pub strategy_state: Vec<(String, Vec<f64>)>,
}

/// An update accepted into the open round, as it arrived (before any clipping), so that
/// replaying it goes through exactly the same arithmetic.
#[derive(Debug, Clone)]
pub struct AcceptedUpdate {
    pub site: String,
    pub round: u32,
    pub attempt: u32,
    pub num_examples: u64,
    pub metrics: TrainReport,
    pub delta: FlatParams,
}
