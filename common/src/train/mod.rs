//! Local training and evaluation of the MLP on a site's examples, with burn on the CPU.

pub mod decline;
pub mod device;
pub mod dp_sgd;
pub mod evaluate;
pub mod local;
pub mod metrics;

pub use decline::DeclineCause;
pub use device::Backend;
pub use dp_sgd::{DpSgd, train_dp_sgd};
pub use evaluate::{Evaluation, RegressionMetrics, evaluate};
pub use local::{Optim, TrainReport, train_local};
