//! The federation: round policy, the round state machine, and the actor that owns it.

pub mod actor;
pub mod persist;
pub mod policy;
pub mod record;
pub mod rejection;
pub mod secure;
pub mod snapshot;
pub mod state;

pub use actor::{FederationHandle, Progress, spawn};
pub use policy::Policy;
pub use record::{Metric, RoundRecord};
pub use rejection::Rejection;
pub use snapshot::{AcceptedUpdate, Snapshot};
pub use state::{Event, Federation, Joined, Outcome, Served, Work};
