//! DP-SGD at a site (Abadi et al. 2016), the way Opacus runs it: Poisson-sampled batches,
//! each example's gradient clipped to C, Gaussian noise σC on their sum, divided by the
//! expected batch, then Adam (post-processing of the noisy gradient).
//!
//! Per-example gradients of the MLP are computed in closed form, as Opacus's per-sample
//! hooks do for linear layers: one forward and one backward pass over the batch keep each
//! example's activations `a` and output gradients `δ`; example i's weight gradient is
//! `a_iᵀ δ_i`, so its squared norm is `‖a_i‖²‖δ_i‖² + ‖δ_i‖²` per layer, and the clipped sum is
//! `aᵀ diag(c) δ`. Exact (a test holds it to burn's autodiff) and a hundred times faster than
//! one backward pass per example. The sampling and the noise draw from `rng`, which the site
//! seeds from the OS (or a seed of its own): never from the federation's seed, which every
//! participant knows.

use std::time::Instant;

use rand::Rng;
use rand_distr::{Distribution, Normal};

use super::local::{LocalConfig, TrainReport};
use crate::data::Dataset;
use crate::error::TrainError;
use crate::model::ModelShape;
use crate::params::FlatParams;
use crate::privacy::RecordDp;

/// One site's DP-SGD parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSgd {
    pub clip_norm: f64,
    pub noise_multiplier: f64,
    /// Poisson sampling rate q: expected batch over the rows.
    pub sampling_rate: f64,
}

impl DpSgd {
    /// Steps of one local epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        RecordDp::steps_per_epoch(self.sampling_rate)
    }
}

/// `cfg.epochs` epochs of DP-SGD from `global`; returns the local model and the report
/// (`steps` is what the site's accountant counts).
pub fn train_dp_sgd(
    global: &FlatParams,
    shape: &ModelShape,
    data: &Dataset,
    cfg: &LocalConfig,
    dp: &DpSgd,
    rng: &mut (impl Rng + Send),
) -> Result<(FlatParams, TrainReport), TrainError> {
    if data.n_features != shape.inputs {
        return Err(TrainError::FeatureMismatch { expected: shape.inputs, found: data.n_features });
    }
    if data.is_empty() {
        return Err(TrainError::Empty);
    }
    if !(dp.sampling_rate > 0.0 && dp.sampling_rate <= 1.0) {
        return Err(TrainError::DpSgd(format!("sampling rate {} must be in (0, 1]", dp.sampling_rate)));
    }
    shape.layout().ensure_same(global.layout())?;
    let noise = Normal::new(0.0, dp.noise_multiplier * dp.clip_norm).map_err(|e| TrainError::DpSgd(format!("noise of standard deviation σC: {e}")))?;
    let start = Instant::now();
    let mut params = global.values().to_vec();
    let mlp = Mlp::new(shape);
    let mut adam = Adam::new(params.len());
    let expected_batch = (dp.sampling_rate * data.len() as f64).max(1.0);
    let mut report = TrainReport::default();
    for _ in 0..cfg.epochs {
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for _ in 0..dp.steps_per_epoch() {
            let batch: Vec<usize> = (0..data.len()).filter(|_| rng.random_bool(dp.sampling_rate)).collect();
            let step = mlp.clipped_sum(&params, data, &batch, dp.clip_norm);
            loss_sum += step.loss;
            correct += step.correct;
            seen += batch.len();
            // An empty sample still takes its step (the accountant counts it): pure noise.
            let noisy = privatize(&step.sum, &noise, expected_batch, rng);
            adam.step(&mut params, &noisy, cfg.learning_rate);
            report.steps += 1;
            // Divergence is read from the noised parameters, never from the raw loss: whether
            // a site declines the round is then post-processing of what DP-SGD protects.
            if params.iter().any(|p| !p.is_finite()) {
                return Err(TrainError::Diverged(step.loss));
            }
        }
        report.loss = if seen > 0 { loss_sum / seen as f64 } else { 0.0 };
        report.accuracy = if seen > 0 { correct as f64 / seen as f64 } else { 0.0 };
        report.epochs += 1;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok((FlatParams::new(global.layout().clone(), params)?, report))
}

/// The step's gradient: the clipped sum plus N(0, (σC)²) on every coordinate, over the
/// expected batch (a fixed denominator, as Opacus's Poisson sampling uses).
fn privatize(sum: &[f64], noise: &Normal<f64>, expected_batch: f64, rng: &mut impl Rng) -> Vec<f64> {
    sum.iter().map(|s| (s + noise.sample(rng)) / expected_batch).collect()
}

/// The sum over a batch of per-example gradients, each clipped, and the batch's loss.
struct ClippedSum {
    sum: Vec<f64>,
    loss: f64,
    correct: usize,
}

/// The MLP of a shape over flat parameters in the layout's order: `layers.i.weight`
/// `[in, out]` (row-major) then `layers.i.bias` `[out]`, ReLU between layers.
struct Mlp {
    widths: Vec<usize>,
    /// Offset of each layer's weight; its bias follows it.
    offsets: Vec<usize>,
}

impl Mlp {
    fn new(shape: &ModelShape) -> Self {
        let widths = shape.widths();
        let mut offsets = Vec::new();
        let mut at = 0;
        for w in widths.windows(2) {
            offsets.push(at);
            at += w[0] * w[1] + w[1];
        }
        Self { widths, offsets }
    }

    fn layers(&self) -> usize {
        self.widths.len() - 1
    }

    /// Per-example gradients of the batch `rows` of `data`, each clipped to `clip`, summed.
    fn clipped_sum(&self, params: &[f32], data: &Dataset, rows: &[usize], clip: f64) -> ClippedSum {
        let (b, l) = (rows.len(), self.layers());
        let mut out = ClippedSum { sum: vec![0.0; params.len()], loss: 0.0, correct: 0 };
        if b == 0 {
            return out;
        }
        // Forward: a[0] is the input; a[k + 1] = act(a[k] W_k + b_k), linear at the last layer.
        let mut acts: Vec<Vec<f64>> = vec![rows.iter().flat_map(|&i| data.row(i).iter().map(|v| f64::from(*v))).collect()];
        for k in 0..l {
            let (n_in, n_out, w) = (self.widths[k], self.widths[k + 1], self.offsets[k]);
            let bias = &params[w + n_in * n_out..w + n_in * n_out + n_out];
            let mut z = vec![0.0; b * n_out];
            for e in 0..b {
                let a = &acts[k][e * n_in..(e + 1) * n_in];
                let row = &mut z[e * n_out..(e + 1) * n_out];
                row.iter_mut().zip(bias).for_each(|(r, bb)| *r = f64::from(*bb));
                for (i, ai) in a.iter().enumerate() {
                    if *ai != 0.0 {
                        let wrow = &params[w + i * n_out..w + (i + 1) * n_out];
                        row.iter_mut().zip(wrow).for_each(|(r, wv)| *r += ai * f64::from(*wv));
                    }
                }
            }
            if k + 1 < l {
                z.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            acts.push(z);
        }
        // The gradient of each example's loss with respect to the logits.
        let outputs = self.widths[l];
        let mut delta = vec![0.0; b * outputs];
        for (e, &i) in rows.iter().enumerate() {
            let y = data.labels[i] as usize;
            let z = &acts[l][e * outputs..(e + 1) * outputs];
            let d = &mut delta[e * outputs..(e + 1) * outputs];
            if outputs == 1 {
                // Binary cross-entropy on a logit: loss = softplus(z) − y·z, gradient σ(z) − y.
                let (z, y) = (z[0], y as f64);
                out.loss += z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z;
                d[0] = 1.0 / (1.0 + (-z).exp()) - y;
                out.correct += usize::from((z > 0.0) == (y == 1.0));
            } else {
                let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = z.iter().map(|v| (v - m).exp()).sum();
                for (j, dj) in d.iter_mut().enumerate() {
                    *dj = (z[j] - m).exp() / total - f64::from(u8::from(j == y));
                }
                out.loss += total.ln() + m - z[y];
                let best = z.iter().enumerate().max_by(|a, c| a.1.total_cmp(c.1)).map(|(j, _)| j);
                out.correct += usize::from(best == Some(y));
            }
        }
        // Backward, keeping every layer's δ; squared norms of each example's gradient.
        let mut deltas = vec![Vec::new(); l];
        let mut norms = vec![0.0f64; b];
        for k in (0..l).rev() {
            let (n_in, n_out, w) = (self.widths[k], self.widths[k + 1], self.offsets[k]);
            for e in 0..b {
                let a2: f64 = acts[k][e * n_in..(e + 1) * n_in].iter().map(|v| v * v).sum();
                let d2: f64 = delta[e * n_out..(e + 1) * n_out].iter().map(|v| v * v).sum();
                norms[e] += a2 * d2 + d2;
            }
            if k > 0 {
                // δ_{k−1} = (δ_k W_kᵀ) ⊙ 1[z_{k−1} > 0] (the stored activation is ReLU(z)).
                let mut prev = vec![0.0; b * n_in];
                for e in 0..b {
                    let d = &delta[e * n_out..(e + 1) * n_out];
                    for i in 0..n_in {
                        if acts[k][e * n_in + i] > 0.0 {
                            let wrow = &params[w + i * n_out..w + (i + 1) * n_out];
                            prev[e * n_in + i] = d.iter().zip(wrow).map(|(dv, wv)| dv * f64::from(*wv)).sum();
                        }
                    }
                }
                deltas[k] = std::mem::replace(&mut delta, prev);
            } else {
                deltas[k] = std::mem::take(&mut delta);
            }
        }
        let scale: Vec<f64> = norms.iter().map(|n2| (clip / n2.sqrt()).min(1.0)).collect();
        // The clipped sum: W_k gets aᵀ diag(c) δ, b_k gets Σ c δ.
        for k in 0..l {
            let (n_in, n_out, w) = (self.widths[k], self.widths[k + 1], self.offsets[k]);
            for e in 0..b {
                let d = &deltas[k][e * n_out..(e + 1) * n_out];
                let c = scale[e];
                for (i, ai) in acts[k][e * n_in..(e + 1) * n_in].iter().enumerate() {
                    if *ai != 0.0 {
                        let g = &mut out.sum[w + i * n_out..w + (i + 1) * n_out];
                        g.iter_mut().zip(d).for_each(|(gv, dv)| *gv += c * ai * dv);
                    }
                }
                let g = &mut out.sum[w + n_in * n_out..w + n_in * n_out + n_out];
                g.iter_mut().zip(d).for_each(|(gv, dv)| *gv += c * dv);
            }
        }
        out
    }
}

/// Adam (β₁ 0.9, β₂ 0.999, ε 1e-5: burn's defaults, which the non-private path uses).
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    fn new(n: usize) -> Self {
        Self { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }

    fn step(&mut self, params: &mut [f32], grad: &[f64], lr: f64) {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        const EPS: f64 = 1e-5;
        self.t += 1;
        let (c1, c2) = (1.0 - B1.powi(self.t), 1.0 - B2.powi(self.t));
        for (((p, g), m), v) in params.iter_mut().zip(grad).zip(&mut self.m).zip(&mut self.v) {
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            *p -= (lr * (*m / c1) / ((*v / c2).sqrt() + EPS)) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::nn::loss::{BinaryCrossEntropyLossConfig, CrossEntropyLossConfig};
    use burn::optim::GradientsParams;
    use burn::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::train::{Backend, evaluate};

    fn blobs(n: usize, classes: u32) -> Dataset {
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let y = i as u32 % classes;
            let c = y as f32 * 1.5 - 1.5;
            features.extend([c + ((i * 7919) % 100) as f32 / 100.0 - 0.5, c - ((i * 104_729) % 100) as f32 / 100.0 + 0.5, 0.0]);
            labels.push(y);
        }
        Dataset { features, n_features: 3, labels, num_classes: classes as usize, ..Default::default() }
    }

    fn cfg(epochs: u32) -> LocalConfig {
        LocalConfig {
            epochs,
            batch_size: 16,
            learning_rate: 0.05,
            seed: 5,
            proximal_mu: 0.0,
            scaffold_correction: None,
            backend: Backend::Ndarray,
            optimizer: Default::default(),
        }
    }

    /// burn's autodiff gradient of one example's loss, flat in the layout's order.
    fn burn_gradient(shape: &ModelShape, params: &FlatParams, data: &Dataset, i: usize) -> Vec<f32> {
        struct Flatten<'a>(&'a GradientsParams, Vec<f32>);
        impl ModuleVisitor for Flatten<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let g = self.0.get::<D>(param.id).expect("a gradient for every parameter");
                self.1.extend(g.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32"));
            }
        }
        let device = Backend::Ndarray.training();
        let model = crate::model::Mlp::from_params(shape, params, &device).unwrap();
        let x = Tensor::<2>::from_data(TensorData::new(data.row(i).to_vec(), [1, data.n_features]), &device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![i64::from(data.labels[i])], [1]), &device);
        let logits = model.forward(x);
        let loss = if shape.outputs == 1 {
            BinaryCrossEntropyLossConfig::new().with_logits(true).init(&device).forward(logits.reshape([1]), y)
        } else {
            CrossEntropyLossConfig::new().init(&device).forward(logits, y)
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut f = Flatten(&grads, Vec::new());
        model.visit(&mut f);
        f.1
    }

    #[test]
    fn per_example_gradients_are_burns_autodiff_and_clipping_bounds_each() {
        for (classes, outputs) in [(2, 1), (3, 3)] {
            let shape = ModelShape { inputs: 3, hidden: vec![16, 8], outputs, conv: None, custom: None };
            let params = shape.init_params(7);
            let data = blobs(12, classes);
            let mlp = Mlp::new(&shape);
            for i in 0..12 {
                let ours = mlp.clipped_sum(params.values(), &data, &[i], f64::INFINITY).sum;
                let burn = burn_gradient(&shape, &params, &data, i);
                let worst = ours.iter().zip(&burn).map(|(a, b)| (a - f64::from(*b)).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-5, "{classes} classes, example {i}: largest difference {worst}");
                // Clipped to C = 0.01, the example's gradient has norm at most C.
                let clipped = mlp.clipped_sum(params.values(), &data, &[i], 0.01).sum;
                let norm = clipped.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!(norm <= 0.01 + 1e-9, "{norm}");
            }
            // A batch's clipped sum is the sum of its examples' clipped gradients.
            let batch = mlp.clipped_sum(params.values(), &data, &[0, 3, 5], 0.05).sum;
            let parts: Vec<Vec<f64>> = [0, 3, 5].iter().map(|&i| mlp.clipped_sum(params.values(), &data, &[i], 0.05).sum).collect();
            let worst = batch.iter().enumerate().map(|(j, v)| (v - parts.iter().map(|p| p[j]).sum::<f64>()).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-12, "{worst}");
        }
    }

    #[test]
    fn dp_sgd_learns_with_moderate_noise_and_takes_the_steps_it_accounts() {
        let shape = ModelShape { inputs: 3, hidden: vec![8], outputs: 1, conv: None, custom: None };
        let global = shape.init_params(1);
        let data = blobs(256, 2);
        let dp = DpSgd { clip_norm: 1.0, noise_multiplier: 0.8, sampling_rate: 16.0 / 256.0 };
        let (local, report) = train_dp_sgd(&global, &shape, &data, &cfg(5), &dp, &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
        assert_eq!(report.steps, 5 * 16, "one epoch is 1/q steps");
        let after = evaluate(&local, &shape, &data, Backend::Ndarray).unwrap();
        assert!(after.accuracy > 0.9, "{after:?}");
    }

    #[test]
    fn the_noise_has_standard_deviation_sigma_c_over_the_expected_batch() {
        // The gradient a step applies is (clipped sum + N(0, (σC)²)) / expected batch: with a
        // known sum, what is left is the noise, whose spread must be σC / expected batch.
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let dp = DpSgd { clip_norm: 0.5, noise_multiplier: 2.0, sampling_rate: 0.1 };
        let noise = Normal::new(0.0, dp.noise_multiplier * dp.clip_norm).unwrap();
        let sum: Vec<f64> = (0..100_000).map(|i| (i % 7) as f64 * 0.1).collect();
        let expected_batch = 25.0;
        let g = privatize(&sum, &noise, expected_batch, &mut rng);
        let left: Vec<f64> = g.iter().zip(&sum).map(|(g, s)| g * expected_batch - s).collect();
        let mean = left.iter().sum::<f64>() / left.len() as f64;
        let std = (left.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / left.len() as f64).sqrt();
        assert!((std - 1.0).abs() < 0.01 && mean.abs() < 0.01, "σC = 1: std {std}, mean {mean}");
        // And the same rng state gives the same model, another state another: the noise and the
        // sampling are the rng's, nothing else's.
        let shape = ModelShape { inputs: 3, hidden: vec![8], outputs: 1, conv: None, custom: None };
        let global = shape.init_params(1);
        let data = blobs(64, 2);
        let run = |seed| train_dp_sgd(&global, &shape, &data, &cfg(1), &dp, &mut ChaCha20Rng::seed_from_u64(seed)).unwrap().0.hash();
        assert_eq!(run(4), run(4));
        assert_ne!(run(4), run(5));
    }
}
