//! Local training: E epochs of Adam or SGD on a site's training split, starting from the
//! global model. Written once for any [`Net`]; the shape picks the MLP or the CNN.

use std::time::Instant;

use burn::module::{ModuleVisitor, Param};
use burn::nn::loss::{BinaryCrossEntropyLossConfig, CrossEntropyLossConfig};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::device::Backend;
use crate::data::Dataset;
use crate::error::TrainError;
use crate::model::{ModelShape, Net, bridge};
use crate::params::FlatParams;

/// What a site reports about its local training.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    /// Mean training loss over the last epoch.
    pub loss: f64,
    /// Training accuracy over the last epoch (on the batches as they were trained); 0 in a
    /// regression task.
    pub accuracy: f64,
    pub steps: u64,
    /// Local epochs completed (fewer than asked for a straggler).
    pub epochs: u32,
    pub seconds: f64,
    /// Record-level DP: the site's ε per record after this round (its own accountant).
    #[serde(default)]
    pub record_epsilon: Option<f64>,
}

/// Hyperparameters of one local training run.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalConfig {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Seeds the shuffle; sites derive it from the federation seed, their name and the round.
    pub seed: u64,
    /// FedProx: adds `(μ/2)·‖w − w_global‖²` to the loss (0 = off).
    pub proximal_mu: f64,
    /// SCAFFOLD: the correction `c − c_i` added to every gradient; training then uses plain
    /// SGD, as the paper's control-variate update assumes.
    pub scaffold_correction: Option<FlatParams>,
    /// The burn backend that runs the training.
    pub backend: Backend,
    /// Adam or SGD (SCAFFOLD always uses plain SGD).
    pub optimizer: Optim,
}

/// The optimiser of local training.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Optim {
    #[default]
    Adam,
    /// SGD with this momentum (0: plain), without dampening (PyTorch's default).
    Sgd { momentum: f64 },
}

impl Optim {
    /// The optimiser a task's training section names.
    pub fn for_task(t: &crate::task::TrainingSpec) -> Self {
        match t.optimizer {
            crate::task::OptimizerName::Adam => Optim::Adam,
            crate::task::OptimizerName::Sgd => Optim::Sgd { momentum: t.momentum },
        }
    }

    fn init(self) -> ModuleOptimizer {
        match self {
            Optim::Adam => AdamConfig::new().init(),
            Optim::Sgd { momentum } if momentum > 0.0 => {
                SgdConfig::new().with_momentum(Some(MomentumConfig::new().with_momentum(momentum).with_dampening(0.0))).init()
            }
            Optim::Sgd { .. } => SgdConfig::new().init(),
        }
    }
}

/// Trains a model of `shape`, starting from `global`, and returns the local model.
pub fn train_local(global: &FlatParams, shape: &ModelShape, data: &Dataset, cfg: &LocalConfig) -> Result<(FlatParams, TrainReport), TrainError> {
    crate::with_model!(shape, ops => ops.train(global, shape, data, cfg), M => train_with::<M>(global, shape, data, cfg))
}

/// [`train_local`] for the model type `M`, on the configured backend's thread pool.
pub(crate) fn train_with<M: Net>(global: &FlatParams, shape: &ModelShape, data: &Dataset, cfg: &LocalConfig) -> Result<(FlatParams, TrainReport), TrainError> {
    cfg.backend.run(|| train::<M>(global, shape, data, cfg))
}

fn train<M: Net>(global: &FlatParams, shape: &ModelShape, data: &Dataset, cfg: &LocalConfig) -> Result<(FlatParams, TrainReport), TrainError> {
    if data.n_features != shape.inputs {
        return Err(TrainError::FeatureMismatch { expected: shape.inputs, found: data.n_features });
    }
    if data.is_empty() {
        return Err(TrainError::Empty);
    }
    let start = Instant::now();
    let device = cfg.backend.training();
    let mut model = M::from_params(shape, global, &device)?;
    // The anchor of FedProx's proximal term: the global model, outside the graph.
    let anchor = (cfg.proximal_mu > 0.0).then(|| model.clone().no_grad());
    let mut optim = match cfg.scaffold_correction {
        Some(_) => Optim::Sgd { momentum: 0.0 }.init(),
        None => cfg.optimizer.init(),
    };
    if let Some(c) = &cfg.scaffold_correction {
        global.layout().ensure_same(c.layout())?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let batch = cfg.batch_size.max(1);
    let mut report = TrainReport::default();
    let binary = shape.outputs == 1;
    let bce = BinaryCrossEntropyLossConfig::new().with_logits(true).init(&device);
    let ce = CrossEntropyLossConfig::new().init(&device);

    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        for idx in order.chunks(batch) {
            let b = idx.len();
            let mut xs = Vec::with_capacity(b * data.n_features);
            for &i in idx {
                xs.extend_from_slice(data.row(i));
            }
            let x = Tensor::<2>::from_data(TensorData::new(xs, [b, data.n_features]), &device);
            let logits = model.forward(x);
            let loss = if data.is_regression() {
                // Mean squared error against targets in standard units (the seed article's first formula).
                let ys: Vec<f32> = idx.iter().map(|&i| data.targets[i]).collect();
                let y = Tensor::<1>::from_data(TensorData::new(ys, [b]), &device);
                (logits.reshape([b]) - y).powi_scalar(2).mean()
            } else {
                let ys: Vec<i64> = idx.iter().map(|&i| i64::from(data.labels[i])).collect();
                correct += count_correct(&logits, &ys, binary);
                let y = Tensor::<1, Int>::from_data(TensorData::new(ys, [b]), &device);
                if binary { bce.forward(logits.reshape([b]), y) } else { ce.forward(logits, y) }
            };
            let value = f64::from(loss.clone().into_scalar::<f32>());
            let loss = match &anchor {
                Some(a) => loss + model.squared_distance(a).mul_scalar(cfg.proximal_mu / 2.0),
                None => loss,
            };
            if !value.is_finite() {
                return Err(TrainError::Diverged(value));
            }
            loss_sum += value * b as f64;
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            if let Some(c) = &cfg.scaffold_correction {
                model.visit(&mut Correct { grads: &mut grads, values: c.values(), offset: 0 });
            }
            model = optim.step(cfg.learning_rate, model, grads);
            report.steps += 1;
        }
        report.loss = loss_sum / data.len() as f64;
        report.accuracy = if data.is_regression() { 0.0 } else { correct as f64 / data.len() as f64 };
        report.epochs += 1;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok((bridge::read_params(&model), report))
}

/// Adds a flat correction to every parameter's gradient (SCAFFOLD's `− c_i + c`).
struct Correct<'a> {
    grads: &'a mut GradientsParams,
    values: &'a [f32],
    offset: usize,
}

impl ModuleVisitor for Correct<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let dims = param.val().dims();
        let n: usize = dims.iter().product();
        let slice = self.values[self.offset..self.offset + n].to_vec();
        self.offset += n;
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let c = Tensor::<D>::from_data(TensorData::new(slice, dims), &g.device());
            self.grads.register::<D>(param.id, g + c);
        }
    }
}

fn count_correct(logits: &Tensor<2>, labels: &[i64], binary: bool) -> usize {
    let data = logits.clone().detach().into_data().convert::<f32>();
    let values = data.as_slice::<f32>().unwrap_or(&[]);
    if binary {
        values.iter().zip(labels).filter(|(z, y)| (**z > 0.0) == (**y == 1)).count()
    } else {
        let k = values.len() / labels.len().max(1);
        values
            .chunks(k.max(1))
            .zip(labels)
            .filter(|(row, y)| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as i64) == Some(**y))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::evaluate;

    /// Two Gaussian blobs, linearly separable.
    fn blobs(n: usize) -> Dataset {
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let y = (i % 2) as u32;
            let c = if y == 1 { 1.5 } else { -1.5 };
            features.extend([c + ((i * 7919) % 100) as f32 / 100.0 - 0.5, c - ((i * 104_729) % 100) as f32 / 100.0 + 0.5]);
            labels.push(y);
        }
        Dataset { features, n_features: 2, labels, num_classes: 2, ..Default::default() }
    }

    #[test]
    fn training_learns_and_is_deterministic() {
        let shape = ModelShape { inputs: 2, hidden: vec![8], outputs: 1, conv: None, custom: None };
        let global = shape.init_params(1);
        let data = blobs(128);
        let cfg = LocalConfig {
            epochs: 20,
            batch_size: 16,
            learning_rate: 0.01,
            seed: 5,
            proximal_mu: 0.0,
            scaffold_correction: None,
            backend: Backend::Ndarray,
            optimizer: Optim::Adam,
        };
        let (local, report) = train_local(&global, &shape, &data, &cfg).unwrap();
        assert_eq!(report.steps, 20 * 8);
        let before = evaluate(&global, &shape, &data, Backend::Ndarray).unwrap();
        let after = evaluate(&local, &shape, &data, Backend::Ndarray).unwrap();
        assert!(after.loss < before.loss, "{before:?} -> {after:?}");
        assert!(after.accuracy > 0.95, "{after:?}");
        let (again, _) = train_local(&global, &shape, &data, &cfg).unwrap();
        assert_eq!(local.hash(), again.hash(), "same seed, same model");
    }

    #[test]
    fn regression_learns_a_linear_target() {
        // y = 2·x₀ − x₁ + noise-free: an MLP trained on the squared error explains nearly all of it.
        let n = 256;
        let mut data = Dataset { n_features: 2, num_classes: 1, target_scale: Some(crate::data::TargetScale { mean: 50.0, std: 4.0 }), ..Default::default() };
        for i in 0..n {
            let (a, b) = (((i * 7919) % 200) as f32 / 100.0 - 1.0, ((i * 104_729) % 200) as f32 / 100.0 - 1.0);
            data.features.extend([a, b]);
            data.labels.push(0);
            data.targets.push(2.0 * a - b);
        }
        let shape = ModelShape { inputs: 2, hidden: vec![16], outputs: 1, conv: None, custom: None };
        let global = shape.init_params(1);
        let cfg = LocalConfig {
            epochs: 40,
            batch_size: 16,
            learning_rate: 0.01,
            seed: 5,
            proximal_mu: 0.0,
            scaffold_correction: None,
            backend: Backend::Ndarray,
            optimizer: Optim::Adam,
        };
        let (local, report) = train_local(&global, &shape, &data, &cfg).unwrap();
        let before = evaluate(&global, &shape, &data, Backend::Ndarray).unwrap();
        let after = evaluate(&local, &shape, &data, Backend::Ndarray).unwrap();
        let r2 = after.regression.and_then(|r| r.r2()).unwrap();
        assert!(after.loss < 0.1 * before.loss && r2 > 0.95, "{before:?} -> {after:?}");
        assert!((report.loss - after.loss).abs() < 0.1, "the training loss is the same squared error: {report:?}");
        // In the label's units: errors scale with its deviation (4), R² does not.
        let r = after.regression.unwrap();
        assert!((r.mse - 16.0 * after.loss).abs() < 1e-6 * r.mse.max(1.0), "{r:?}");
    }

    #[test]
    fn the_proximal_term_keeps_the_local_model_near_the_global_one() {
        let shape = ModelShape { inputs: 2, hidden: vec![8], outputs: 1, conv: None, custom: None };
        let global = shape.init_params(1);
        let data = blobs(128);
        let run = |mu| {
            let cfg = LocalConfig {
                epochs: 10,
                batch_size: 16,
                learning_rate: 0.01,
                seed: 5,
                proximal_mu: mu,
                scaffold_correction: None,
                backend: Backend::Ndarray,
                optimizer: Optim::Adam,
            };
            train_local(&global, &shape, &data, &cfg).unwrap().0.delta_from(&global).unwrap().l2_norm()
        };
        let (free, tied) = (run(0.0), run(10.0));
        assert!(tied < 0.5 * free, "μ = 10 should shrink the update: {tied} vs {free}");
    }

    #[test]
    fn a_scaffold_correction_shifts_every_sgd_step() {
        // With a constant correction c on every gradient, K SGD steps of rate η move each
        // parameter by an extra −K·η·c relative to the uncorrected run (before nonlinear effects):
        // here a huge correction dominates, so the delta is about −K·η·c.
        let shape = ModelShape { inputs: 2, hidden: vec![4], outputs: 1, conv: None, custom: None };
        let global = shape.init_params(1);
        let data = blobs(32);
        let c = FlatParams::new(global.layout().clone(), vec![100.0; global.layout().total()]).unwrap();
        let cfg = LocalConfig {
            epochs: 1,
            batch_size: 16,
            learning_rate: 0.001,
            seed: 5,
            proximal_mu: 0.0,
            scaffold_correction: Some(c),
            backend: Backend::Ndarray,
            optimizer: Optim::Adam,
        };
        let (local, report) = train_local(&global, &shape, &data, &cfg).unwrap();
        let expected = -(report.steps as f64) * 0.001 * 100.0; // −0.2
        let delta = local.delta_from(&global).unwrap();
        let mean = delta.values().iter().map(|&v| f64::from(v)).sum::<f64>() / delta.values().len() as f64;
        assert!((mean - expected).abs() < 0.02, "mean delta {mean}, expected about {expected}");
    }

    #[test]
    fn a_cnn_learns_with_sgd_and_momentum_and_is_deterministic() {
        use crate::model::ConvShape;
        // 6×6 grey images: class 1 has a bright top half, class 0 a bright bottom half.
        let mut data = Dataset { n_features: 36, num_classes: 2, ..Default::default() };
        for i in 0..64 {
            let y = (i % 2) as u32;
            let noise = |j: usize| ((i * 31 + j * 17) % 10) as f32 / 20.0;
            data.features.extend((0..36).map(|j| if (j < 18) == (y == 1) { 1.0 } else { 0.0 } + noise(j) - 0.25));
            data.labels.push(y);
        }
        let conv = ConvShape { channels: 1, height: 6, width: 6, filters: vec![4], kernel: 3 };
        let shape = ModelShape { inputs: 36, hidden: vec![8], outputs: 1, conv: Some(conv), custom: None };
        let global = shape.init_params(2);
        let cfg = LocalConfig {
            epochs: 10,
            batch_size: 8,
            learning_rate: 0.05,
            seed: 3,
            proximal_mu: 0.0,
            scaffold_correction: None,
            backend: Backend::Ndarray,
            optimizer: Optim::Sgd { momentum: 0.9 },
        };
        let (local, _) = train_local(&global, &shape, &data, &cfg).unwrap();
        let after = evaluate(&local, &shape, &data, Backend::Ndarray).unwrap();
        assert!(after.accuracy > 0.95, "{after:?}");
        assert_eq!(local.hash(), train_local(&global, &shape, &data, &cfg).unwrap().0.hash(), "same seed, same model");
        let plain = LocalConfig { optimizer: Optim::Sgd { momentum: 0.0 }, ..cfg.clone() };
        assert_ne!(local.hash(), train_local(&global, &shape, &data, &plain).unwrap().0.hash(), "momentum is in the path");
    }

    #[test]
    fn wrong_feature_count_is_an_error() {
        let shape = ModelShape { inputs: 3, hidden: vec![4], outputs: 1, conv: None, custom: None };
        let cfg = LocalConfig {
            epochs: 1,
            batch_size: 4,
            learning_rate: 0.01,
            seed: 1,
            proximal_mu: 0.0,
            scaffold_correction: None,
            backend: Backend::Ndarray,
            optimizer: Optim::Adam,
        };
        let err = train_local(&shape.init_params(1), &shape, &blobs(8), &cfg).unwrap_err();
        assert!(matches!(err, TrainError::FeatureMismatch { expected: 3, found: 2 }));
    }
}
