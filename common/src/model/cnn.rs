//! A convolutional network in burn: `"same"` convolutions, each followed by ReLU and a 2×2
//! max-pool, then fully connected layers with ReLU between them, logits out. The FedAvg
//! paper's CNN is filters `[32, 64]`, kernel 5 and hidden `[512]`.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, PaddingConfig2d, Relu};
use burn::prelude::*;

use super::net::{Net, linear_layers, mlp_forward, squared_distance_of, values_in_order};
use super::shape::ModelShape;
use crate::error::ParamsError;
use crate::params::FlatParams;

/// Convolutions, then the fully connected `layers` (named as the MLP's, so the two share
/// their tail's layout).
#[derive(Module, Debug)]
pub struct Cnn {
    convs: Vec<Conv2d>,
    pool: MaxPool2d,
    layers: Vec<Linear>,
    activation: Relu,
    /// `[channels, height, width]` of an input row.
    #[module(skip)]
    image: [usize; 3],
}

impl Net for Cnn {
    fn init(shape: &ModelShape, device: &Device) -> Result<Self, ParamsError> {
        Self::from_params(shape, &shape.init_params(0), device)
    }

    fn from_params(shape: &ModelShape, params: &FlatParams, device: &Device) -> Result<Self, ParamsError> {
        shape.layout().ensure_same(params.layout())?;
        let conv = shape.conv.as_ref().ok_or_else(|| ParamsError::Invalid("a CNN needs the shape of its convolutions".into()))?;
        let mut take = values_in_order(params.values());
        let (k, mut channels) = (conv.kernel, conv.channels);
        let mut convs = Vec::with_capacity(conv.filters.len());
        for &f in &conv.filters {
            // The configuration sets stride, padding and dilation; its random weights are
            // replaced at once (a convolution's weights are a small share of the model).
            let mut layer = Conv2dConfig::new([channels, f], [k, k]).with_padding(PaddingConfig2d::Same).init(device);
            layer.weight = Param::from_data(TensorData::new(take(f * channels * k * k), [f, channels, k, k]), device);
            layer.bias = Some(Param::from_data(TensorData::new(take(f), [f]), device));
            convs.push(layer);
            channels = f;
        }
        let layers = linear_layers(&shape.widths(), &mut take, device);
        Ok(Self {
            convs,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            layers,
            activation: Relu::new(),
            image: [conv.channels, conv.height, conv.width],
        })
    }

    /// `[batch, channels·height·width]` (row-major images) → logits `[batch, outputs]`.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [batch, _] = x.dims();
        let [c, h, w] = self.image;
        let mut x: Tensor<4> = x.reshape([batch, c, h, w]);
        for conv in &self.convs {
            x = self.pool.forward(self.activation.forward(conv.forward(x)));
        }
        mlp_forward(&self.layers, &self.activation, x.flatten::<2>(1, 3))
    }

    fn squared_distance(&self, anchor: &Self) -> Tensor<1> {
        let mut terms = squared_distance_of(&self.layers, &anchor.layers);
        for (c, a) in self.convs.iter().zip(&anchor.convs) {
            terms.push((c.weight.val() - a.weight.val()).powi_scalar(2).sum());
            if let (Some(b), Some(ab)) = (&c.bias, &a.bias) {
                terms.push((b.val() - ab.val()).powi_scalar(2).sum());
            }
        }
        // A CNN has at least one fully connected layer, so there is at least one term.
        terms.into_iter().reduce(|s, t| s + t).unwrap_or_else(|| unreachable!("a CNN has a layer"))
    }
}
