//! The model of this example, defined here and nowhere in Flotilla: two 3×3 convolutions with
//! GELU and 2×2 max-pooling, then one linear layer to the logits (9,098 parameters for
//! MNIST). Implementing `Net` (`init` and `forward`) is all a model needs to be federated.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Gelu, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use flotilla_common::error::ParamsError;
use flotilla_common::model::{ModelShape, Net};

/// The name the task's `[model] name` gives this module.
pub const NAME: &str = "tiny-net";

#[derive(Module, Debug)]
pub struct TinyNet {
    conv1: Conv2d,
    conv2: Conv2d,
    head: Linear,
    pool: MaxPool2d,
    gelu: Gelu,
    /// `[channels, height, width]` of an input row.
    #[module(skip)]
    image: [usize; 3],
}

impl Net for TinyNet {
    fn init(shape: &ModelShape, device: &Device) -> Result<Self, ParamsError> {
        let image = shape.image().ok_or_else(|| ParamsError::Invalid("TinyNet reads images: the task needs [data.images]".into()))?;
        if image.height < 4 || image.width < 4 {
            return Err(ParamsError::Invalid(format!("TinyNet pools twice: a {}×{} image is too small", image.height, image.width)));
        }
        let conv = |i, o| Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Same).init(device);
        let flat = 16 * (image.height / 4) * (image.width / 4);
        Ok(Self {
            conv1: conv(image.channels, 8),
            conv2: conv(8, 16),
            head: LinearConfig::new(flat, shape.outputs).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            gelu: Gelu::new(),
            image: [image.channels, image.height, image.width],
        })
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [batch, _] = x.dims();
        let [c, h, w] = self.image;
        let x: Tensor<4> = x.reshape([batch, c, h, w]);
        let x = self.pool.forward(self.gelu.forward(self.conv1.forward(x)));
        let x = self.pool.forward(self.gelu.forward(self.conv2.forward(x)));
        self.head.forward(x.flatten::<2>(1, 3))
    }
}
