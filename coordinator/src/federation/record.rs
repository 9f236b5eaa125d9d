//! What a finished round leaves behind: one row of `metrics.csv`.

use flotilla_common::train::RegressionMetrics;
use serde::{Deserialize, Serialize};

/// The metrics of one round (round 0 is the initial model, before any training).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    /// Example-weighted federated evaluation of the new global model on the sites' test splits;
    /// NaN when no site evaluated it (an empty field in `metrics.csv`, `null` in JSON).
    #[serde(deserialize_with = "nan_if_null")]
    pub accuracy: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Example-weighted over the sites whose test split holds both classes; empty if none.
    pub auc: Option<f64>,
    /// Sites whose update was aggregated.
    pub clients: usize,
    /// Sites selected for training.
    pub selected: usize,
    /// Selected sites that did not deliver (dropped, timed out, refused, declined).
    pub failed: usize,
    /// Of `failed`, the sites that said they could not train this round (their local
    /// training diverged, say) and stayed in the federation.
    #[serde(default)]
    pub declined: usize,
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
    /// SHA-256 of the global model's parameters after the round (layout fingerprint and values,
    /// as sites name the model): `params_sha256` in `metrics.csv` and JSON. Not the hash of a
    /// file: `summary.json`'s `model_file_sha256` is that of `model.safetensors`.
    #[serde(rename = "params_sha256", alias = "model_hash")]
    pub model_hash: String,
    /// Other messages refused during the round (malformed or out-of-bounds aggregates,
    /// evaluations, identifiers; joins refused), each logged with site and reason.
    #[serde(default)]
    pub refused: usize,
    /// Record-level DP: the largest ε per record any site of the round reported (each site's
    /// own accountant over all its steps so far).
    #[serde(default)]
    pub record_epsilon: Option<f64>,
    /// Mean loss of the new global model on the sites' validation rows, weighted by their
    /// number: the model kept at the end is that of the round where it was lowest.
    #[serde(default)]
    pub validation_loss: Option<f64>,
    /// Regression: the sites' errors pooled (MAE, RMSE and R² in `metrics.csv`, in the
    /// label's own units); `accuracy` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regression: Option<RegressionMetrics>,
}

impl RoundRecord {
    /// Column names of `metrics.csv`, in order.
    pub const HEADER: [&'static str; 22] = [
        "round",
        "accuracy",
        "loss",
        "auc",
        "clients",
        "selected",
        "failed",
        "rejected",
        "attempts",
        "evaluated",
        "train_loss",
        "seconds",
        "epsilon",
        "clip_norm",
        "params_sha256",
        "refused",
        "record_epsilon",
        "validation_loss",
        "mae",
        "rmse",
        "r2",
        "declined",
    ];

    /// The record as CSV fields (empty for absent values).
    pub fn fields(&self) -> Vec<String> {
        let opt = |v: Option<f64>| v.filter(|x| x.is_finite()).map_or(String::new(), |x| format!("{x:.6}"));
        vec![
            self.round.to_string(),
            opt(Some(self.accuracy)),
            opt(Some(self.loss)),
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
            opt(self.record_epsilon),
            opt(self.validation_loss),
            opt(self.regression.map(|r| r.mae)),
            opt(self.regression.map(|r| r.rmse())),
            opt(self.regression.and_then(|r| r.r2())),
            self.declined.to_string(),
        ]
    }

    /// The headline metric of the round: R² for regression, accuracy otherwise.
    pub fn headline(&self) -> f64 {
        flotilla_common::train::evaluate::headline(self.accuracy, self.regression.as_ref())
    }
}

/// JSON writes NaN as `null`; read it back as NaN (a saved round that no site evaluated).
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A metric for logs, with Display: four decimals, or `none` when absent or not a number.
#[derive(Debug, Clone, Copy)]
pub struct Metric(pub Option<f64>);

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.filter(|v| v.is_finite()) {
            Some(v) => write!(f, "{v:.4}"),
            None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_no_site_evaluated_leaves_its_metrics_empty_not_nan() {
        let r = RoundRecord {
            round: 3,
            accuracy: f64::NAN,
            loss: f64::NAN,
            auc: None,
            clients: 0,
            selected: 4,
            failed: 4,
            declined: 0,
            rejected: 4,
            attempts: 1,
            evaluated: 0,
            train_loss: None,
            seconds: 1.0,
            epsilon: None,
            clip_norm: None,
            model_hash: "ab".into(),
            refused: 0,
            record_epsilon: None,
            validation_loss: None,
            regression: None,
        };
        let fields = r.fields();
        assert_eq!((fields[1].as_str(), fields[2].as_str(), fields[3].as_str()), ("", "", ""));
        assert!(fields.iter().all(|f| !f.contains("NaN")), "{fields:?}");
        assert_eq!(Metric(Some(f64::NAN)).to_string(), "none");
        assert_eq!(Metric(Some(0.34567)).to_string(), "0.3457");
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(json["params_sha256"], "ab");
        assert!(json["accuracy"].is_null());
        let back: RoundRecord = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert!(back.accuracy.is_nan() && back.model_hash == "ab", "a saved round no site evaluated reads back");
    }
}
