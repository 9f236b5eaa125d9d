//! The site-side data pipeline, from a CSV file to tensors-ready examples.
//!
//! `table` reads CSV text, `rows` cleans and labels it under the task's data spec, `split`
//! holds out a test split, `stats` reduces the training rows to aggregates (the only thing
//! that leaves a site), `plan` turns the federation's combined aggregates into one shared
//! encoding, `augment` enlarges a training split, and `partition` cuts one table into
//! simulated sites.

pub mod augment;
pub mod dataset;
pub mod images;
pub mod partition;
pub mod plan;
pub mod rows;
pub mod split;
pub mod stats;
pub mod synthetic;
pub mod table;

pub use dataset::{Dataset, TargetScale};
pub use plan::{ColumnKind, ColumnPlan, Plan};
pub use rows::{Row, SiteRows};
pub use stats::{ColumnStats, SiteStats, StatsLimits};
pub use table::RawTable;
