//! The model: an MLP in burn, its layout without burn, and the bridge between the two.

pub mod bridge;
pub mod mlp;
pub mod shape;

pub use mlp::Mlp;
pub use shape::ModelShape;
