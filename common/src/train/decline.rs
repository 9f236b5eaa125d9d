//! Why a site may answer a training request with no update, and keep its place.

use crate::TrainError;

/// Why a site could not deliver the update it was asked for. A fixed list: free text from a
/// site would be a channel for its data, and each cause says no more than one bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeclineCause {
    /// The local loss became non-finite (NaN or infinite) while training; under DP-SGD, the
    /// noised parameters did.
    Diverged,
}

impl DeclineCause {
    /// A short name, for logs, metric labels and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            DeclineCause::Diverged => "diverged",
        }
    }
}

impl std::fmt::Display for DeclineCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeclineCause::Diverged => "its local training diverged (non-finite loss)",
        })
    }
}

impl TrainError {
    /// The cause to decline the round with, when this failure is one of the round (the next
    /// round starts from another model and may well train), not of the site's setup.
    pub fn decline_cause(&self) -> Option<DeclineCause> {
        match self {
            TrainError::Diverged(_) => Some(DeclineCause::Diverged),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_diverged_training_is_declined_other_failures_stop_the_site() {
        assert_eq!(TrainError::Diverged(f64::NAN).decline_cause(), Some(DeclineCause::Diverged));
        assert_eq!(TrainError::Empty.decline_cause(), None);
        assert_eq!(TrainError::FeatureMismatch { expected: 3, found: 2 }.decline_cause(), None);
    }
}
