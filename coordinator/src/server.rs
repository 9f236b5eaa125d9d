//! Serving the federation over gRPC on a listener the caller binds, until a shutdown signal.

use std::time::Duration;

use flotilla_proto::pb::federation_server::FederationServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::federation::FederationHandle;
use crate::service::FederationService;
use crate::tls::{install_crypto_provider, ServerTls};

/// Serves `handle` on `listener` until `shutdown` is cancelled; with `tls`, only sites with
/// a certificate from its CA get in.
///
/// The caller binds the listener (port 0 in tests) so it knows the address before any
/// client connects.
pub async fn serve(listener: TcpListener, handle: FederationHandle, long_poll: Duration, tls: Option<ServerTls>, shutdown: CancellationToken) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        install_crypto_provider();
        builder = builder.tls_config(tls.config())?;
    }
    builder
        .add_service(FederationServer::new(FederationService::new(handle, long_poll, tls.is_some())))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
