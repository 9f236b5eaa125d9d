//! The multilayer perceptron in burn: linear layers with ReLU between them, logits out.

use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

use super::shape::ModelShape;

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
