//! Why the federation refused a request; the service maps each kind to a gRPC status.

/// A refused request, with a message that names the site and the round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Unknown connection or expired lease: the site should join again.
    #[error("{0}")]
    UnknownClient(String),
    /// The request is malformed or breaks the federation's rules.
    #[error("{0}")]
    InvalidArgument(String),
    /// The round the request is for is closed: the site should pull work to resynchronise.
    #[error("{0}")]
    Closed(String),
    /// The request refers to a model that is no longer current.
    #[error("{0}")]
    Stale(String),
    /// The site was not selected for this round.
    #[error("{0}")]
    NotSelected(String),
    /// The site may not do this (not on the allow list, or its certificate names another site).
    #[error("{0}")]
    Forbidden(String),
    /// The site already did this.
    #[error("{0}")]
    Duplicate(String),
    /// A configured limit is reached (sites, concurrent streams).
    #[error("{0}")]
    Exhausted(String),
    /// The coordinator could not do its part (its disk failed): nothing was accepted, and
    /// the site may try again.
    #[error("{0}")]
    Unavailable(String),
}
