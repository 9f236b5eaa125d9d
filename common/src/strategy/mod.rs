//! Aggregation and server-optimisation rules as pure functions over flat parameters.
//!
//! `config` names the strategies and validates their parameters; `robust` holds the
//! Byzantine-robust combinations of a cohort's deltas (coordinate-wise median, trimmed mean,
//! Krum, Multi-Krum, Bulyan); `server_opt` the server optimisers that turn a mean delta into
//! a step (FedAvgM, FedAdagrad, FedAdam, FedYogi). No I/O, no backend.

pub mod config;
pub mod robust;
pub mod server_opt;

pub use config::{StrategyConfig, StrategyName};
