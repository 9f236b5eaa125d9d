//! Secure aggregation (Bonawitz et al., CCS 2017): the server learns the sum of the cohort's
//! updates and nothing about any single one.
//!
//! - [`shamir`]: t-of-n secret sharing over GF(2^61 − 1).
//! - [`masking`]: fixed-point encoding in Z/2^64 and ChaCha20 masks.
//! - [`protocol`]: the client and server of the four rounds, as pure state machines; the
//!   transport (in process or over the network) is the caller's.
//! - [`endorse`]: what a site signs of its keys (signed secure aggregation).
//! - [`in_memory`]: a whole round in one process, for tests and the benchmark.

pub mod endorse;
pub mod in_memory;
pub mod masking;
pub mod messages;
pub mod protocol;
pub mod shamir;

pub use endorse::{Endorsement, endorsed_bytes};
pub use masking::FixedPoint;
pub use messages::{Answer, Step};
pub use protocol::{Client, PublicKeys, Reveal, Roster, Sealed, SecAggError, Server, majority};
