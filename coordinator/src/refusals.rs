//! Logs every request the coordinator refuses for who sent it: no certificate, a certificate
//! for another site, a site not on the allow list, a wrong protocol version. The handlers
//! answer the site with a status; this layer makes sure the operator hears of it too, at warn
//! level, with the peer's address (a refused TLS handshake, such as a certificate from a
//! foreign CA, is logged by the TLS acceptor in `server.rs`).

use std::task::{Context, Poll};

use tonic::Code;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The layer, for `tonic::transport::Server::layer`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogRefusalsLayer;

impl<S> tower_layer::Layer<S> for LogRefusalsLayer {
    type Service = LogRefusals<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LogRefusals { inner }
    }
}

/// The service that watches the statuses of `inner`'s answers.
#[derive(Debug, Clone)]
pub struct LogRefusals<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for LogRefusals<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let rpc = req.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        let ext = req.extensions();
        let peer = ext
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| ext.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.get_ref().remote_addr()))
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await?;
            // An error travels in the headers of a trailers-only answer.
            if let Some(status) = tonic::Status::from_header_map(response.headers())
                && is_refusal_of_the_site(&rpc, status.code(), status.message())
            {
                tracing::warn!(%peer, %rpc, code = ?status.code(), reason = %status.message(), "refused a site");
            }
            Ok(response)
        })
    }
}

/// Refusals of the site itself (who it is or may be), as opposed to the protocol's ordinary
/// answers (a round that closed, a stale model), which sites act on and the actor logs.
fn is_refusal_of_the_site(rpc: &str, code: Code, message: &str) -> bool {
    match code {
        Code::Unauthenticated => true,
        Code::PermissionDenied => rpc == "Join" || message.contains("certificate"),
        Code::FailedPrecondition | Code::InvalidArgument => rpc == "Join",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_refusals_are_told_apart_from_protocol_answers() {
        assert!(is_refusal_of_the_site("Join", Code::PermissionDenied, "site `x` is not on the allow list"));
        assert!(is_refusal_of_the_site("PullWork", Code::PermissionDenied, "the certificate is for site `a` but the request speaks for client `b#1`"));
        assert!(is_refusal_of_the_site("ReportStats", Code::Unauthenticated, "a client certificate is required"));
        assert!(is_refusal_of_the_site("Join", Code::FailedPrecondition, "protocol version 9"));
        assert!(!is_refusal_of_the_site("UploadUpdate", Code::FailedPrecondition, "round 3 is closed"));
        assert!(!is_refusal_of_the_site("UploadUpdate", Code::PermissionDenied, "site `a` was not selected for round 2"));
    }
}
