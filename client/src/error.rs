//! Errors of a site client.

use flotilla_common::wire::WireError;
use flotilla_common::{DataError, TaskError, TrainError};

/// Why a site stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the coordinator at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("{what}: the coordinator answered {code:?}: {message}")]
    Rpc { what: String, code: tonic::Code, message: String },
    #[error("the coordinator refused site `{site}`: {message}")]
    Refused { site: String, message: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("the federation's task: {0}")]
    Task(#[from] TaskError),
    #[error("local training: {0}")]
    Train(#[from] TrainError),
    #[error("from the coordinator: {0}")]
    Wire(#[from] WireError),
    #[error("this site's certificate: {0}")]
    Certificate(String),
    #[error("a local task failed: {0}")]
    Join(String),
    #[error("simulated crash in round {round} (fault injection)")]
    Crashed { round: u32, downtime: std::time::Duration },
}

impl ClientError {
    /// Wraps a status with what was being done.
    /// A status made from a transport error carries its cause (a TLS alert, a reset) as its
    /// source: it joins the message, so that a refused certificate can be told from a
    /// coordinator that is restarting.
    pub fn rpc(what: impl Into<String>, s: tonic::Status) -> Self {
        let mut message = s.message().to_owned();
        let mut cause = std::error::Error::source(&s);
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        ClientError::Rpc { what: what.into(), code: s.code(), message }
    }

    /// The gRPC code, for statuses.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}
