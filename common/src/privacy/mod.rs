//! Differential privacy. For now the accountant: Rényi DP of the subsampled Gaussian
//! mechanism, composed over rounds and converted to (ε, δ).

pub mod accountant;

pub use accountant::{epsilon, rdp_subsampled_gaussian, PrivacySpent, Step};
