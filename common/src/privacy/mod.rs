//! Differential privacy: central DP-FedAvg with a fixed clip, and the accountant (Rényi DP of
//! the subsampled Gaussian mechanism, composed over rounds and converted to (ε, δ)).

pub mod accountant;
pub mod distributed;
pub mod dp_fedavg;
pub mod record;

pub use accountant::{PrivacySpent, SkellamStep, Step, epsilon, epsilon_with_skellam, rdp_subsampled_gaussian};
pub use dp_fedavg::DpConfig;
pub use record::RecordDp;
