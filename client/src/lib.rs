//! The Flotilla site client: joins a federation, keeps its data at home, and trains.
//!
//! - [`connection`]: the coordinator's gRPC API in domain terms (the only module that names `pb::`).
//! - [`site`]: the site's loop: join, report aggregates, pull work, train or evaluate, upload.
//! - [`shutdown`]: waiting for SIGINT/SIGTERM (both binaries use it).
//! - [`tls`]: the site's mutual-TLS material.
//! - [`policy`]: the site's policy file: what it accepts from any coordinator.
//! - [`guard`]: the policy, the privacy ledger and the audit log applied around every exchange.
//! - [`state`]: the site's state directory (ledger, audit log) that survives restarts.
//! - [`error`]: what can go wrong, with the round and the site named.

pub mod connection;
pub mod error;
pub mod guard;
pub mod policy;
pub mod secure;
pub mod shutdown;
pub mod site;
pub mod state;
pub mod threads;
pub mod tls;

pub use error::ClientError;
pub use site::{Attack, SiteOptions, SiteReport, run_site};
pub use tls::ClientTls;
