//! The multilayer perceptron in burn: linear layers with ReLU between them, logits out.

use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

use super::net::{Net, linear_layers, mlp_forward, squared_distance_of, values_in_order};
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
        <Self as Net>::from_params(shape, params, device)
    }

    /// `[batch, inputs]` → logits `[batch, outputs]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        mlp_forward(&self.layers, &self.activation, x)
    }
}

impl Net for Mlp {
    fn init(shape: &ModelShape, device: &Device) -> Result<Self, ParamsError> {
        Ok(Mlp::new(shape, device))
    }

    fn from_params(shape: &ModelShape, params: &FlatParams, device: &Device) -> Result<Self, ParamsError> {
        shape.layout().ensure_same(params.layout())?;
        if shape.conv.is_some() {
            return Err(ParamsError::Invalid("an MLP has no convolutions; this shape is a CNN's".into()));
        }
        let mut take = values_in_order(params.values());
        Ok(Self { layers: linear_layers(&shape.widths(), &mut take, device), activation: Relu::new() })
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        Mlp::forward(self, x)
    }

    fn squared_distance(&self, anchor: &Self) -> Tensor<1> {
        // An MLP has at least one layer, so there is at least one term.
        squared_distance_of(&self.layers, &anchor.layers).into_iter().reduce(|s, t| s + t).unwrap_or_else(|| unreachable!("an MLP has a layer"))
    }
}
