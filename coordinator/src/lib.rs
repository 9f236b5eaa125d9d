//! The Flotilla coordinator: holds the global model, runs rounds, aggregates updates.
//!
//! - [`federation`]: the round policy, the round state machine and the actor that owns it.
//! - [`service`]: the gRPC handlers (with `flotilla_common::wire`, the only code that names `pb::`).
//! - [`server`]: serving the service on a listener until shutdown.
//! - [`refusals`]: logging the requests refused for who sent them.
//! - [`runner`]: a running coordinator (actor + server) and its orderly stop.
//! - [`durable`]: the durable state in `<run>/state/` that `serve --resume` continues from.
//! - [`run_dir`]: `metrics.csv`, checkpoints, `model.safetensors`, `summary.json`.
//! - [`chart`]: the accuracy chart.
//! - [`scenario`]: bundled scenarios and other sources of simulated sites.
//! - [`simulate`]: a whole federation in one process, with baselines and the comparison table.
//! - [`strategy`]: the strategy of a federation and its state across rounds.
//! - [`summary`]: the content of `summary.json`.
//! - [`tls`]: the coordinator's mutual-TLS material.
//! - [`verdict`]: whether a finished federation has a usable model.
//! - [`custom_model`]: a custom model's layout and initial values for a coordinator without its code.
//! - [`cli`]: command-line flags and the two-step config (flags and TOML, then validated settings).

pub mod chart;
pub mod cli;
pub mod cli_limits;
pub mod custom_model;
pub mod delta_cache;
pub mod durable;
pub mod federation;
pub mod holdout;
pub mod init;
pub mod observe;
pub mod profile;
pub mod profile_chart;
pub mod refusals;
pub mod report;
pub mod run_dir;
pub mod runner;
pub mod scenario;
pub mod server;
pub mod service;
pub mod simulate;
pub mod site_files;
pub mod strategy;
pub mod streams;
pub mod summary;
pub mod tls;
pub mod verdict;
