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
