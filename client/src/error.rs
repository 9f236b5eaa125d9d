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
    #[error("site `{site}` refuses by its policy ({policy}), {violation}")]
    Policy { site: String, policy: String, violation: crate::policy::Violation },
    #[error("this site's state directory: {0}")]
    State(#[from] crate::state::StateError),
    #[error("compressing this site's update: {0}")]
    Compress(#[from] flotilla_common::compress::CodecError),
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

/// An error and its causes on one line, each cause once: many errors already quote their
/// source in their own message (`{path}: {source}`), which a plain walk down the chain would
/// repeat.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Io {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("reading the request (--csr)")]
    struct Outer(#[source] Io);

    #[test]
    fn each_cause_is_said_once() {
        let e = Outer(Io { path: "x.csr".into(), source: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory") });
        assert_eq!(describe(&e), "reading the request (--csr): x.csr: No such file or directory");
    }
}
