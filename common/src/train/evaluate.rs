//! Evaluation of a model on a dataset: loss, accuracy and ROC AUC.

use burn::prelude::*;

use super::device::Backend;
use super::metrics::roc_auc;
use crate::data::Dataset;
use crate::error::TrainError;
use crate::model::{Mlp, ModelShape};
use crate::params::FlatParams;

/// Metrics of one model on one dataset.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    pub examples: u64,
    /// Mean cross-entropy (binary or softmax).
    pub loss: f64,
    pub accuracy: f64,
    /// Binary tasks with both classes present only.
    pub auc: Option<f64>,
    /// A site's evaluation of the global model also carries its loss on the site's
    /// validation rows (which pick the model kept), and how many there were.
    #[serde(default)]
    pub validation_loss: Option<f64>,
    #[serde(default)]
    pub validation_examples: u64,
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
        let model = Mlp::from_params(shape, params, &device)?;
        let logits = predict_logits(&model, data, &device);
        Ok(score(&logits, shape.outputs, &data.labels))
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
        let model = Mlp::from_params(shape, params, &device)?;
        Ok(predict_logits(&model, data, &device))
    })
}

/// Logits for every example, row-major `[n, outputs]`.
pub fn predict_logits(model: &Mlp, data: &Dataset, device: &Device) -> Vec<f32> {
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
    fn softmax_scores() {
        let e = score(&[2.0, 0.0, 0.0, 0.0, 3.0, 0.0], 3, &[0, 2]);
        assert_eq!(e.accuracy, 0.5);
        assert!(e.auc.is_none());
    }
}
