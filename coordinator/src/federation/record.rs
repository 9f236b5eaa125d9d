//! What a finished round leaves behind: one row of `metrics.csv`.

use serde::{Deserialize, Serialize};

/// The metrics of one round (round 0 is the initial model, before any training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    /// Example-weighted federated evaluation of the new global model on the sites' test splits.
    pub accuracy: f64,
    pub loss: f64,
    /// Example-weighted over the sites whose test split holds both classes; empty if none.
    pub auc: Option<f64>,
    /// Sites whose update was aggregated.
    pub clients: usize,
    /// Sites selected for training.
    pub selected: usize,
    /// Selected sites that did not deliver (dropped, timed out, refused).
    pub failed: usize,
    /// Updates refused by validation (each logged with site, round and reason).
    pub rejected: usize,
    /// Training attempts: more than 1 when attempts were abandoned (too few updates by the
    /// deadline) and retried with a fresh cohort.
    pub attempts: u32,
    /// Sites that evaluated the model.
    pub evaluated: usize,
    /// Example-weighted mean of the sites' local training loss.
    pub train_loss: Option<f64>,
    /// Wall time of the round, training and evaluation.
    pub seconds: f64,
    /// (ε, δ)-DP spent so far (ε at the task's δ), when central DP is on.
    pub epsilon: Option<f64>,
    /// The DP clip norm for the next round (it moves under adaptive clipping).
    pub clip_norm: Option<f64>,
    /// SHA-256 of the global model after the round.
    pub model_hash: String,
    /// Other messages refused during the round (malformed or out-of-bounds aggregates,
    /// evaluations, identifiers; joins refused), each logged with site and reason.
    #[serde(default)]
    pub refused: usize,
}

impl RoundRecord {
    /// Column names of `metrics.csv`, in order.
    pub const HEADER: [&'static str; 16] = [
        "round", "accuracy", "loss", "auc", "clients", "selected", "failed", "rejected", "attempts", "evaluated", "train_loss", "seconds", "epsilon",
        "clip_norm", "model_hash", "refused",
    ];

    /// The record as CSV fields (empty for absent values).
    pub fn fields(&self) -> Vec<String> {
        let opt = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
        vec![
            self.round.to_string(),
            format!("{:.6}", self.accuracy),
            format!("{:.6}", self.loss),
            opt(self.auc),
            self.clients.to_string(),
            self.selected.to_string(),
            self.failed.to_string(),
            self.rejected.to_string(),
            self.attempts.to_string(),
            self.evaluated.to_string(),
            opt(self.train_loss),
            format!("{:.3}", self.seconds),
            opt(self.epsilon),
            opt(self.clip_norm),
            self.model_hash.clone(),
            self.refused.to_string(),
        ]
    }
}
