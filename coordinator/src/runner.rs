//! A running coordinator: the federation actor plus the gRPC server on a bound listener,
//! and an orderly way to stop both once the federation is done.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_common::Task;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::durable::StateDir;
use crate::federation::{self, Federation, FederationHandle, Outcome, Policy};
use crate::run_dir::RunDir;
use crate::server;
use crate::tls::ServerTls;

/// A coordinator serving a federation.
#[derive(Debug)]
pub struct Running {
    /// The address clients connect to.
    pub addr: SocketAddr,
    pub handle: FederationHandle,
    shutdown: CancellationToken,
    actor: JoinHandle<Option<Outcome>>,
    server: JoinHandle<Result<(), server::ServeError>>,
    /// Whether clients must use `https://` (mutual TLS).
    https: bool,
}

/// Starts a federation on `listener`, recording into `run_dir`; `tls` turns on mutual TLS.
pub fn start(task: Task, seed: u64, policy: Policy, run_dir: Option<RunDir>, listener: TcpListener, tls: Option<ServerTls>) -> std::io::Result<Running> {
    let federation = Federation::new(task, seed, policy.clone());
    start_federation(federation, &policy, run_dir, None, listener, tls)
}

/// Serves `federation` (new or resumed); `state` keeps its durable state for `--resume`.
pub fn start_federation(
    federation: Federation,
    policy: &Policy,
    run_dir: Option<RunDir>,
    state: Option<StateDir>,
    listener: TcpListener,
    tls: Option<ServerTls>,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let (rounds, long_poll) = (policy.rounds, policy.long_poll());
    let (handle, actor) = federation::spawn(federation, rounds, run_dir, state, shutdown.child_token());
    let server = tokio::spawn(server::serve(listener, handle.clone(), long_poll, tls.clone(), shutdown.child_token()));
    Ok(Running { addr, handle, shutdown, actor, server, https: tls.is_some() })
}

impl Running {
    /// The URL clients use.
    pub fn url(&self) -> String {
        // Certificates name 127.0.0.1 and localhost; the URL uses the address as bound.
        format!("{}://{}", if self.https { "https" } else { "http" }, self.addr)
    }

    /// Waits until the last round is closed, or `cancel` fires (then returns false).
    pub async fn wait_done(&self, cancel: &CancellationToken) -> bool {
        let mut rx = self.handle.progress();
        loop {
            if rx.borrow_and_update().done {
                return true;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return false },
                _ = cancel.cancelled() => return false,
            }
        }
    }

    /// Gives connected sites up to `grace` to hear that the federation is done, then stops
    /// the server and the actor and returns what the federation produced.
    pub async fn stop(self, grace: Duration) -> Option<Outcome> {
        let mut rx = self.handle.progress();
        let _ = tokio::time::timeout(grace, async {
            while rx.borrow_and_update().connected > 0 {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        self.shutdown.cancel();
        // Graceful shutdown waits for open connections; a stuck one must not hold us forever.
        let mut server = self.server;
        match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "gRPC server stopped with an error"),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("connections still open 5 s after shutdown; closing them");
                server.abort();
            }
        }
        self.actor.await.ok().flatten()
    }
}
