//! What local training and evaluation need of a model: built straight from flat parameters,
//! logits from rows, and FedProx's distance to an anchor. The MLP and the CNN implement it;
//! [`with_net!`](crate::with_net) picks the one a shape describes.

use burn::module::{Module, Param};
use burn::nn::{Linear, Relu};
use burn::prelude::*;

use super::shape::ModelShape;
use crate::error::ParamsError;
use crate::params::FlatParams;

/// A burn module that a federation trains.
pub trait Net: Module + Sized {
    /// A model of `shape` holding `params` (the shape's layout), every parameter requiring
    /// gradients.
    fn from_params(shape: &ModelShape, params: &FlatParams, device: &Device) -> Result<Self, ParamsError>;

    /// `[batch, inputs]` → logits `[batch, outputs]`.
    fn forward(&self, x: Tensor<2>) -> Tensor<2>;

    /// `Σ ‖p − a‖²` over every parameter: FedProx's proximal term against `anchor`.
    fn squared_distance(&self, anchor: &Self) -> Tensor<1>;
}

/// Runs `$body` with `$net` bound to the model type of `$shape` (the MLP, or the CNN when the
/// shape has convolutions): training and evaluation are written once, generic over [`Net`].
#[macro_export]
macro_rules! with_net {
    ($shape:expr, $net:ident => $body:expr) => {
        match $shape.conv {
            None => {
                type $net = $crate::model::Mlp;
                $body
            }
            Some(_) => {
                type $net = $crate::model::Cnn;
                $body
            }
        }
    };
}

/// Hands out `values` front to back, `n` at a time: a model's tensors in layout order. The
/// layout was checked against the shape, so the lengths add up.
pub(super) fn values_in_order(values: &[f32]) -> impl FnMut(usize) -> Vec<f32> + '_ {
    let mut offset = 0;
    move |n| {
        let slice = values[offset..offset + n].to_vec();
        offset += n;
        slice
    }
}

/// Linear layers of the given widths, their values taken in layout order.
pub(super) fn linear_layers(widths: &[usize], take: &mut impl FnMut(usize) -> Vec<f32>, device: &Device) -> Vec<Linear> {
    widths
        .windows(2)
        .map(|w| {
            let (fan_in, fan_out) = (w[0], w[1]);
            let weight = Param::from_data(TensorData::new(take(fan_in * fan_out), [fan_in, fan_out]), device);
            let bias = Param::from_data(TensorData::new(take(fan_out), [fan_out]), device);
            Linear { weight, bias: Some(bias) }
        })
        .collect()
}

/// Linear layers with the activation between them (none after the last).
pub(super) fn mlp_forward(layers: &[Linear], activation: &Relu, mut x: Tensor<2>) -> Tensor<2> {
    let last = layers.len().saturating_sub(1);
    for (i, layer) in layers.iter().enumerate() {
        x = layer.forward(x);
        if i < last {
            x = activation.forward(x);
        }
    }
    x
}

/// One `‖p − a‖²` term per weight and bias of two stacks of linear layers.
pub(super) fn squared_distance_of(layers: &[Linear], anchor: &[Linear]) -> Vec<Tensor<1>> {
    let mut terms = Vec::new();
    for (l, a) in layers.iter().zip(anchor) {
        terms.push((l.weight.val() - a.weight.val()).powi_scalar(2).sum());
        if let (Some(b), Some(ab)) = (&l.bias, &a.bias) {
            terms.push((b.val() - ab.val()).powi_scalar(2).sum());
        }
    }
    terms
}
