//! Evaluation of a model on a dataset: loss, accuracy and ROC AUC; or for regression, the
//! squared error that is trained on, with MAE, RMSE and R² in the label's own units.

use burn::prelude::*;

use super::device::Backend;
use super::metrics::roc_auc;
use crate::data::{Dataset, TargetScale};
use crate::error::TrainError;
use crate::model::{ModelShape, Net};
use crate::params::FlatParams;

/// Metrics of one model on one dataset.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub examples: u64,
    /// Mean cross-entropy (binary or softmax); for regression, the mean squared error in the
    /// federation's standard units of the label (what training minimises).
    pub loss: f64,
    /// Classification only: NaN for regression (`null` in JSON).
    #[serde(deserialize_with = "nan_if_null")]
    pub accuracy: f64,
    /// Binary tasks with both classes present only.
    pub auc: Option<f64>,
    /// A site's evaluation of the global model also carries its loss on the site's
    /// validation rows (which pick the model kept), and how many there were.
    #[serde(default)]
    pub validation_loss: Option<f64>,
    #[serde(default)]
    pub validation_examples: u64,
    /// Regression only: errors in the label's own units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regression: Option<RegressionMetrics>,
}

impl Evaluation {
    /// The headline metric: R² for regression, accuracy otherwise (NaN when unknown).
    pub fn headline(&self) -> f64 {
        headline(self.accuracy, self.regression.as_ref())
    }

    /// Names of [`Evaluation::metric_fields`], for CSV headers.
    pub const METRIC_HEADER: [&'static str; 6] = ["accuracy", "loss", "auc", "mae", "rmse", "r2"];

    /// The metrics as CSV fields, six decimals, empty where absent (accuracy and AUC in
    /// regression, the errors in classification).
    pub fn metric_fields(&self) -> Vec<String> {
        let opt = |v: Option<f64>| v.filter(|x| x.is_finite()).map_or(String::new(), |x| format!("{x:.6}"));
        let r = self.regression;
        vec![opt(Some(self.accuracy)), opt(Some(self.loss)), opt(self.auc), opt(r.map(|r| r.mae)), opt(r.map(|r| r.rmse())), opt(r.and_then(|r| r.r2()))]
    }

    /// The metrics as JSON (`summary.json`, `flotilla-client evaluate`): accuracy and AUC, or
    /// for regression MAE, RMSE and R²; with the loss and the number of examples.
    pub fn metrics_json(&self) -> serde_json::Value {
        match &self.regression {
            Some(r) => serde_json::json!({ "examples": self.examples, "loss": self.loss, "mae": r.mae, "rmse": r.rmse(), "r2": r.r2() }),
            None => serde_json::json!({ "examples": self.examples, "loss": self.loss, "accuracy": self.accuracy, "auc": self.auc }),
        }
    }

    /// The headline metric's name.
    pub fn headline_name(&self) -> &'static str {
        if self.regression.is_some() { "R²" } else { "accuracy" }
    }
}

/// A regression model's errors on some rows, in the label's own units. Every field is a
/// mean over rows, so sites' metrics pool exactly by weighting with their row counts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RegressionMetrics {
    /// Mean absolute error.
    pub mae: f64,
    /// Mean squared error.
    pub mse: f64,
    /// Mean squared deviation of the label from the federation's mean (the plan's): the
    /// error of always predicting that mean, against which R² is measured.
    pub total_squares: f64,
}

impl RegressionMetrics {
    pub fn rmse(&self) -> f64 {
        self.mse.sqrt()
    }

    /// `1 − MSE / total_squares`: 1 is perfect, 0 no better than the federation's mean.
    /// `None` when every label equals that mean.
    pub fn r2(&self) -> Option<f64> {
        (self.total_squares > 0.0).then(|| 1.0 - self.mse / self.total_squares)
    }

    /// The metrics of the union of the rows: the row-weighted mean of each field.
    pub fn pooled<'a>(parts: impl IntoIterator<Item = (u64, &'a RegressionMetrics)>) -> Option<RegressionMetrics> {
        let (mut n, mut sum) = (0.0, RegressionMetrics { mae: 0.0, mse: 0.0, total_squares: 0.0 });
        for (rows, m) in parts {
            let w = rows as f64;
            n += w;
            sum.mae += w * m.mae;
            sum.mse += w * m.mse;
            sum.total_squares += w * m.total_squares;
        }
        (n > 0.0).then(|| RegressionMetrics { mae: sum.mae / n, mse: sum.mse / n, total_squares: sum.total_squares / n })
    }
}

/// The headline metric of an evaluation or a round: R² when there are regression metrics
/// (NaN when R² is undefined), the accuracy otherwise.
pub fn headline(accuracy: f64, regression: Option<&RegressionMetrics>) -> f64 {
    match regression {
        Some(r) => r.r2().unwrap_or(f64::NAN),
        None => accuracy,
    }
}

/// JSON writes NaN as `null`; read it back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Examples per forward pass during evaluation.
const EVAL_BATCH: usize = 1024;

/// Evaluates `params` (a model of `shape`) on `data` with `backend`.
pub fn evaluate(params: &FlatParams, shape: &ModelShape, data: &Dataset, backend: Backend) -> Result<Evaluation, TrainError> {
    if data.n_features != shape.inputs {
        return Err(TrainError::FeatureMismatch { expected: shape.inputs, found: data.n_features });
    }
    if data.is_empty() {
        return Err(TrainError::Empty);
    }
    backend.run(|| {
        let device = backend.inference();
        let logits = crate::with_model!(shape, ops => ops.logits(params, shape, data, &device)?, M => predict_logits(&M::from_params(shape, params, &device)?, data, &device));
        Ok(match data.target_scale {
            Some(scale) => score_regression(&logits, &data.targets, scale),
            None => score(&logits, shape.outputs, &data.labels),
        })
    })
}

/// The logits of `params` (a model of `shape`) for every example of `data`, row-major
/// `[n, outputs]`.
pub fn logits(params: &FlatParams, shape: &ModelShape, data: &Dataset, backend: Backend) -> Result<Vec<f32>, TrainError> {
    if data.n_features != shape.inputs {
        return Err(TrainError::FeatureMismatch { expected: shape.inputs, found: data.n_features });
    }
    backend.run(|| {
        let device = backend.inference();
        Ok(crate::with_model!(shape, ops => ops.logits(params, shape, data, &device)?, M => predict_logits(&M::from_params(shape, params, &device)?, data, &device)))
    })
}

/// Logits for every example, row-major `[n, outputs]`.
pub fn predict_logits<M: Net>(model: &M, data: &Dataset, device: &Device) -> Vec<f32> {
    let mut out = Vec::new();
    for start in (0..data.len()).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(data.len());
        let x = data.features[start * data.n_features..end * data.n_features].to_vec();
        let x = Tensor::<2>::from_data(TensorData::new(x, [end - start, data.n_features]), device);
        let y = model.forward(x).into_data().convert::<f32>();
        out.extend_from_slice(y.as_slice::<f32>().unwrap_or(&[]));
    }
    out
}

/// Loss, accuracy and AUC from logits, computed in f64.
pub fn score(logits: &[f32], outputs: usize, labels: &[u32]) -> Evaluation {
    let n = labels.len();
    let mut loss = 0.0;
    let mut correct = 0usize;
    let mut scores = Vec::with_capacity(n);
    for (i, &y) in labels.iter().enumerate() {
        if outputs == 1 {
            let z = f64::from(logits[i]);
            // Stable BCE with logits: max(z, 0) − z·y + ln(1 + e^{−|z|}).
            loss += z.max(0.0) - z * f64::from(y) + (-z.abs()).exp().ln_1p();
            correct += usize::from((z > 0.0) == (y == 1));
            scores.push(logits[i]);
        } else {
            let row = &logits[i * outputs..(i + 1) * outputs];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = f64::from(max) + row.iter().map(|&v| f64::from(v - max).exp()).sum::<f64>().ln();
            loss += lse - f64::from(row[y as usize]);
            let argmax = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(k, _)| k);
            correct += usize::from(argmax == y as usize);
        }
    }
    Evaluation {
        examples: n as u64,
        loss: loss / n as f64,
        accuracy: correct as f64 / n as f64,
        auc: if outputs == 1 { roc_auc(&scores, labels) } else { None },
        validation_loss: None,
        validation_examples: 0,
        regression: None,
    }
}

/// A regression model's outputs against the targets (both in the standard units of
/// `scale`): the loss in standard units, the errors in the label's own units.
pub fn score_regression(outputs: &[f32], targets: &[f32], scale: TargetScale) -> Evaluation {
    let n = targets.len().max(1) as f64;
    let (mut sq, mut abs, mut total) = (0.0, 0.0, 0.0);
    for (&z, &y) in outputs.iter().zip(targets) {
        let e = f64::from(z) - f64::from(y);
        sq += e * e;
        abs += e.abs();
        total += f64::from(y) * f64::from(y);
    }
    let (s, s2) = (scale.std, scale.std * scale.std);
    Evaluation {
        examples: targets.len() as u64,
        loss: sq / n,
        accuracy: f64::NAN,
        auc: None,
        validation_loss: None,
        validation_examples: 0,
        regression: Some(RegressionMetrics { mae: s * abs / n, mse: s2 * sq / n, total_squares: s2 * total / n }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_scores_match_hand_computed_values() {
        // z = 0 gives loss ln 2 whatever the label; z = ±large is (almost) free when right.
        let e = score(&[0.0, 20.0, -20.0, 20.0], 1, &[1, 1, 0, 0]);
        let expected = (2f64.ln() + 0.0 + 0.0 + 20.0) / 4.0;
        assert!((e.loss - expected).abs() < 1e-6, "{}", e.loss);
        assert_eq!(e.accuracy, 0.5); // z = 0 predicts 0: wrong; last one wrong
        // Ranks: −20 → 1, 0 → 2, the two 20s tie at 3.5; positives 2 + 3.5 − 3 = 2.5 of 4 pairs.
        assert_eq!(e.auc, Some(0.625));
    }

    #[test]
    fn regression_scores_are_in_the_labels_units() {
        // Label mean 100, deviation 10: targets 1 and −1 are 110 and 90; outputs 1.5 and −1
        // are 115 and 90, so the errors are 5 and 0.
        let e = score_regression(&[1.5, -1.0], &[1.0, -1.0], TargetScale { mean: 100.0, std: 10.0 });
        let r = e.regression.unwrap();
        assert!((e.loss - 0.125).abs() < 1e-12, "(0.5² + 0) / 2 in standard units: {}", e.loss);
        assert!((r.mae - 2.5).abs() < 1e-9 && (r.mse - 12.5).abs() < 1e-9 && (r.total_squares - 100.0).abs() < 1e-9, "{r:?}");
        assert!((r.rmse() - 12.5f64.sqrt()).abs() < 1e-12);
        assert!((r.r2().unwrap() - 0.875).abs() < 1e-12);
        assert!(e.accuracy.is_nan() && e.auc.is_none());
        // Two sites pool as their union would.
        let other = score_regression(&[0.0], &[2.0], TargetScale { mean: 100.0, std: 10.0 }).regression.unwrap();
        let union = score_regression(&[1.5, -1.0, 0.0], &[1.0, -1.0, 2.0], TargetScale { mean: 100.0, std: 10.0 }).regression.unwrap();
        let pooled = RegressionMetrics::pooled([(2, &r), (1, &other)]).unwrap();
        assert!((pooled.mse - union.mse).abs() < 1e-9 && (pooled.r2().unwrap() - union.r2().unwrap()).abs() < 1e-12);
        // NaN accuracy survives a JSON round trip (snapshots).
        let back: Evaluation = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert!(back.accuracy.is_nan() && back.regression == e.regression);
    }

    #[test]
    fn softmax_scores() {
        let e = score(&[2.0, 0.0, 0.0, 0.0, 3.0, 0.0], 3, &[0, 2]);
        assert_eq!(e.accuracy, 0.5);
        assert!(e.auc.is_none());
    }
}
