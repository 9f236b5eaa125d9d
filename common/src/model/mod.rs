//! The model: an MLP or a CNN in burn, its layout without burn, and the bridge between the two.

pub mod bridge;
pub mod cnn;
pub mod mlp;
pub mod net;
pub mod shape;

pub use cnn::Cnn;
pub use mlp::Mlp;
pub use net::Net;
pub use shape::{ConvShape, ModelShape};
