//! Serving the federation over gRPC on a listener the caller binds, until a shutdown signal.

use std::time::Duration;

use flotilla_proto::pb::federation_server::FederationServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::federation::FederationHandle;
use crate::service::FederationService;

/// Serves `handle` on `listener` until `shutdown` is cancelled.
///
/// The caller binds the listener (port 0 in tests) so it knows the address before any
/// client connects.
pub async fn serve(listener: TcpListener, handle: FederationHandle, long_poll: Duration, shutdown: CancellationToken) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(FederationServer::new(FederationService::new(handle, long_poll)))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
