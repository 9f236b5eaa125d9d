//! Flotilla's shared library: everything both the coordinator and the sites need.
//!
//! - [`params`]: models as flat `f32` vectors with a layout and a fingerprint.
//! - [`aggregate`]: federated averaging as pure, order-independent functions.
//! - [`compress`]: update codecs (fp16, bf16, int8, top-k) and the sites' error feedback.
//! - [`task`]: the federation's task (model, training, data spec), read from TOML.
//! - [`data`]: the site-side data pipeline (CSV, cleaning, split, aggregates, shared plan).
//! - [`model`]: the burn MLP and the one bridge between burn modules and flat parameters.
//! - [`train`]: local training and evaluation on the CPU.
//! - [`wire`]: conversions between domain types and the protocol (the only module here that names `pb::`).
//! - [`privacy`]: the Rényi-DP accountant of the subsampled Gaussian mechanism.
//! - [`pki`]: the federation's certificates (CA, coordinator, sites, CSRs); identity = CN.
//! - [`strategy`]: robust aggregation rules and server optimisers, pure functions.
//! - [`site`]: a site's data from file to encoded train/test splits.

pub mod aggregate;
pub mod compress;
pub mod data;
pub mod error;
pub mod model;
pub mod model_file;
pub mod params;
pub mod pki;
pub mod predict;
pub mod privacy;
pub mod secagg;
pub mod seed;
pub mod site;
pub mod strategy;
pub mod task;
pub mod train;
pub mod wire;

pub use error::{AggregateError, DataError, ParamsError, TaskError, TrainError};
pub use params::{FlatParams, Layout, TensorSpec};
pub use task::Task;
