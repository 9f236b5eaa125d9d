//! The integration tests, in one binary: real coordinators and clients in-process on ephemeral
//! ports, and the binaries as a user runs them. One binary links the workspace once instead of
//! once per file (each link is ~70 MB). `logs.rs` stays on its own: it installs a global
//! tracing subscriber, which would capture every other test's logs.

mod compression;
mod crash_resume;
mod failures;
mod faults;
mod hospitals;
mod hostile_sites;
mod images;
mod large_model;
mod operator;
mod own_data;
mod poisoned_updates;
mod privacy;
mod reconnect;
mod secure_aggregation;
mod security;
mod site_policy;
mod soak;
mod strategies;
mod threads;
