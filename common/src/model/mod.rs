//! The model: an MLP, a CNN or a site's own module in burn, its layout without burn, and the
//! bridge between the two.

pub mod bridge;
pub mod cnn;
pub mod initial;
pub mod mlp;
pub mod net;
pub mod registry;
pub mod shape;

pub use cnn::Cnn;
pub use mlp::Mlp;
pub use net::Net;
pub use registry::register;
pub use shape::{ConvShape, CustomShape, ModelShape};
