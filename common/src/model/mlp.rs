//! The multilayer perceptron in burn: linear layers with ReLU between them, logits out.

use burn::module::Param;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

use super::shape::ModelShape;
use crate::error::ParamsError;
use crate::params::FlatParams;

/// `inputs → hidden… → outputs`; the last layer has no activation (logits).
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    activation: Relu,
}

impl Mlp {
    /// A freshly initialised MLP of the given shape on `device`.
    pub fn new(shape: &ModelShape, device: &Device) -> Self {
        let layers = shape.widths().windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect();
        Self { layers, activation: Relu::new() }
    }

    /// An MLP of `shape` holding `params` (which must have the shape's layout), built straight
    /// from the values: no random initialisation to throw away, as [`Mlp::new`] followed by
    /// `bridge::write_params` would do at every local training. Parameters require gradients.
    pub fn from_params(shape: &ModelShape, params: &FlatParams, device: &Device) -> Result<Self, ParamsError> {
        shape.layout().ensure_same(params.layout())?;
        let values = params.values();
        let mut offset = 0;
        let mut take = |n: usize| {
            let slice = values[offset..offset + n].to_vec();
            offset += n;
            slice
        };
        let layers = shape
            .widths()
            .windows(2)
            .map(|w| {
                let (fan_in, fan_out) = (w[0], w[1]);
                let weight = Param::from_data(TensorData::new(take(fan_in * fan_out), [fan_in, fan_out]), device);
                let bias = Param::from_data(TensorData::new(take(fan_out), [fan_out]), device);
                Linear { weight, bias: Some(bias) }
            })
            .collect();
        Ok(Self { layers, activation: Relu::new() })
    }

    /// `Σ ‖p − a‖²` over every parameter: FedProx's proximal term against `anchor`.
    pub fn squared_distance(&self, anchor: &Mlp) -> Tensor<1> {
        let mut terms = Vec::new();
        for (l, a) in self.layers.iter().zip(&anchor.layers) {
            terms.push((l.weight.val() - a.weight.val()).powi_scalar(2).sum());
            if let (Some(b), Some(ab)) = (&l.bias, &a.bias) {
                terms.push((b.val() - ab.val()).powi_scalar(2).sum());
            }
        }
        // An MLP has at least one layer, so there is at least one term.
        terms.into_iter().reduce(|s, t| s + t).unwrap_or_else(|| unreachable!("an MLP has a layer"))
    }

    /// `[batch, inputs]` → logits `[batch, outputs]`.
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = self.activation.forward(x);
            }
        }
        x
    }
}
