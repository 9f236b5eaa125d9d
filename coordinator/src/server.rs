//! Serving the federation over gRPC on a listener the caller binds, until a shutdown signal.
//!
//! With TLS, connections are accepted here rather than by tonic, so that a refused handshake
//! (a certificate from another CA, an expired one, none at all) is logged with the peer's
//! address instead of vanishing; the certificate of an accepted connection still reaches the
//! handlers (`Request::peer_certs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::pb::federation_server::FederationServer;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::federation::FederationHandle;
use crate::refusals::LogRefusalsLayer;
use crate::service::FederationService;
use crate::streams::StreamLimits;
use crate::tls::ServerTls;

/// HTTP/2 streams one connection may have open (simulations share connections between many
/// sites, so this is generous; memory is bounded per site by the upload slots).
const MAX_STREAMS_PER_CONNECTION: u32 = 4096;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] flotilla_common::pki::PkiError),
}

/// Serves `handle` on `listener` until `shutdown` is cancelled; with `tls`, only sites with
/// a certificate from its CA get in.
///
/// The caller binds the listener (port 0 in tests) so it knows the address before any
/// client connects.
pub async fn serve(
    listener: TcpListener,
    handle: FederationHandle,
    limits: StreamLimits,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    // Keepalive finds connections whose peer vanished without a word; the per-connection
    // stream limit bounds what one connection can open (uploads are bounded per site too).
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .layer(LogRefusalsLayer)
        .add_service(FederationServer::new(FederationService::new(handle, limits, tls.is_some())));
    match tls {
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
        }
        Some(tls) => {
            let incoming = tls_incoming(listener, tls.rustls_config()?, shutdown.clone());
            router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
        }
    }
    Ok(())
}

/// Accepts connections on `listener` and hands on those whose TLS handshake succeeded; a
/// refused one is logged at warn level with the peer and the reason.
fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: wait a little instead of spinning.
                        tracing::warn!(error = %e, "could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp).into_fallible()).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err((e, tcp))) => {
                        refused(peer, &e.to_string());
                        close_gently(tcp).await;
                    }
                    Err(_) => refused(peer, "the TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Closes a refused connection so that the site reads the alert that says why: the write side
/// first, then what the site already sent is read and dropped (for a second at most). Closing
/// with unread data would reset the connection, and the site would see only "connection
/// closed" and could not tell a refusal from a coordinator that is restarting.
async fn close_gently(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async { while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {} }).await;
}

fn refused(peer: SocketAddr, reason: &str) {
    tracing::warn!(%peer, %reason, "refused a site at the TLS handshake (no certificate, one from another CA, or expired)");
}
