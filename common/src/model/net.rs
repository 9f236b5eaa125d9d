//! What local training and evaluation need of a model: built from flat parameters, logits from
//! rows, and FedProx's distance to an anchor. The MLP and the CNN implement it;
//! [`with_net!`](crate::with_net) picks the one a shape describes. A library user's own module
//! implements it too ([`Net::init`] and [`Net::forward`] are all it must write) and is
//! registered under a name with [`crate::model::register`].

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{Linear, Relu};
use burn::prelude::*;

use super::shape::ModelShape;
use crate::error::ParamsError;
use crate::params::FlatParams;

/// A burn module that a federation trains.
///
/// A custom model writes [`Net::init`] and [`Net::forward`]; the federation replaces the
/// initial values with the global model's at every round (keeping `require_grad`), so `init`
/// only has to build the layers. Parameters are visited in burn's order, and their names and
/// shapes are the model's layout on the wire.
///
/// ```
/// use burn::nn::{Linear, LinearConfig, Relu};
/// use burn::prelude::*;
/// use flotilla_common::error::ParamsError;
/// use flotilla_common::model::{ModelShape, Net};
///
/// /// Logistic regression with one hidden layer of 8.
/// #[derive(Module, Debug)]
/// struct Small {
///     hidden: Linear,
///     out: Linear,
///     relu: Relu,
/// }
///
/// impl Net for Small {
///     fn init(shape: &ModelShape, device: &Device) -> Result<Self, ParamsError> {
///         Ok(Self { hidden: LinearConfig::new(shape.inputs, 8).init(device), out: LinearConfig::new(8, shape.outputs).init(device), relu: Relu::new() })
///     }
///     fn forward(&self, x: Tensor<2>) -> Tensor<2> {
///         self.out.forward(self.relu.forward(self.hidden.forward(x)))
///     }
/// }
///
/// flotilla_common::model::register::<Small>("small").unwrap();
/// # let _ = Small::init;
/// ```
pub trait Net: Module + Sized {
    /// A freshly initialised model for `shape`: `shape.inputs` values a row (an image row is
    /// `shape.image()`, channels first), `shape.outputs` logits (1 for a binary task). Refuse
    /// a shape the module cannot take with [`ParamsError::Invalid`].
    fn init(shape: &ModelShape, device: &Device) -> Result<Self, ParamsError>;

    /// `[batch, inputs]` → logits `[batch, outputs]`.
    fn forward(&self, x: Tensor<2>) -> Tensor<2>;

    /// A model of `shape` holding `params`, every parameter requiring gradients. By default
    /// [`Net::init`] then the values written in; refused unless the layouts are the same.
    fn from_params(shape: &ModelShape, params: &FlatParams, device: &Device) -> Result<Self, ParamsError> {
        super::bridge::write_params(Self::init(shape, device)?, params)
    }

    /// `Σ ‖p − a‖²` over every parameter: FedProx's proximal term against `anchor`.
    fn squared_distance(&self, anchor: &Self) -> Tensor<1> {
        let (mine, theirs) = (flattened(self), flattened(anchor));
        let terms = mine.into_iter().zip(theirs).map(|(p, a)| (p - a).powi_scalar(2).sum());
        // A federated model has parameters (an empty layout is refused).
        terms.reduce(|s, t| s + t).unwrap_or_else(|| unreachable!("a model without parameters"))
    }
}

/// Every float parameter of `module` as a flat tensor, in burn's order (gradients flow).
fn flattened<M: Module>(module: &M) -> Vec<Tensor<1>> {
    struct Flatten(Vec<Tensor<1>>);
    impl ModuleVisitor for Flatten {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let n = t.dims().iter().product::<usize>();
            self.0.push(t.reshape([n]));
        }
    }
    let mut f = Flatten(Vec::new());
    module.visit(&mut f);
    f.0
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

/// Runs `$custom` with the registered operations of a custom shape, or `$body` with `$net`
/// bound to the built-in model type (see [`with_net!`]).
#[macro_export]
macro_rules! with_model {
    ($shape:expr, $ops:ident => $custom:expr, $net:ident => $body:expr) => {
        match &$shape.custom {
            Some(c) => {
                let $ops = $crate::model::registry::lookup(&c.name)?;
                $custom
            }
            None => $crate::with_net!($shape, $net => $body),
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
