//! Serving the federation over gRPC on a listener the caller binds, until a shutdown signal.

use std::time::Duration;

use flotilla_proto::pb::federation_server::FederationServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::federation::FederationHandle;
use crate::service::FederationService;
use crate::streams::StreamLimits;

/// HTTP/2 streams one connection may have open (simulations share connections between many
/// sites, so this is generous; memory is bounded per site by the upload slots).
const MAX_STREAMS_PER_CONNECTION: u32 = 4096;
use crate::tls::{install_crypto_provider, ServerTls};

/// Serves `handle` on `listener` until `shutdown` is cancelled; with `tls`, only sites with
/// a certificate from its CA get in.
///
/// The caller binds the listener (port 0 in tests) so it knows the address before any
/// client connects.
pub async fn serve(listener: TcpListener, handle: FederationHandle, limits: StreamLimits, tls: Option<ServerTls>, shutdown: CancellationToken) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // Keepalive finds connections whose peer vanished without a word; the per-connection
    // stream limit bounds what one connection can open (uploads are bounded per site too).
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
    if let Some(tls) = &tls {
        install_crypto_provider();
        builder = builder.tls_config(tls.config())?;
    }
    builder
        .add_service(FederationServer::new(FederationService::new(handle, limits, tls.is_some())))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
