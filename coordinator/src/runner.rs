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
///
/// A whole federation in one process: the four hospitals, one round, plaintext on loopback.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use flotilla_client::{SiteOptions, run_site};
/// use flotilla_common::Task;
/// use flotilla_coordinator::federation::Policy;
/// use flotilla_coordinator::runner;
/// use flotilla_coordinator::scenario::{Scenario, SiteSource, load_sites};
///
/// let task = Task::hospitals();
/// let policy = Policy { rounds: 1, min_clients: 4, ..Policy::default() };
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let running = runner::start(task.clone(), 1, policy, None, listener, None)?;
/// let mut sites = Vec::new();
/// for (name, rows) in load_sites(&SiteSource::Scenario(Scenario::Hospitals), &task, 1)? {
///     sites.push(tokio::spawn(run_site(SiteOptions::new(running.url(), name), rows, Default::default())));
/// }
/// for site in sites {
///     assert_eq!(site.await??.rounds_trained, 1);
/// }
/// let outcome = running.stop(std::time::Duration::from_secs(5)).await.ok_or("the federation did not finish")?;
/// println!("global model {}", outcome.model.hash());
/// # Ok(()) }
/// ```
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
    let (rounds, limits) = (policy.rounds, crate::streams::StreamLimits::from_policy(policy));
    let (handle, actor) = federation::spawn(federation, rounds, run_dir, state, shutdown.child_token());
    let server = tokio::spawn(server::serve(listener, handle.clone(), limits, tls.clone(), shutdown.child_token()));
    Ok(Running { addr, handle, shutdown, actor, server, https: tls.is_some() })
}

impl Running {
    /// Serves the operator's port (metrics, probes, dashboard) on `listener` until the
    /// federation stops.
    pub fn serve_operator(&self, listener: TcpListener, access: crate::observe::http::Access) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let (telemetry, shutdown) = (self.handle.telemetry(), self.shutdown.child_token());
        tokio::spawn(async move {
            if let Err(e) = crate::observe::http::serve(listener, telemetry, access, shutdown).await {
                tracing::error!(error = %e, "the operator's HTTP port stopped");
            }
        });
        tracing::info!(url = %format!("http://{addr}/"), "dashboard and /metrics");
        Ok(addr)
    }

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

    /// Like [`Running::finish`], for callers that only want the outcome: a failed actor is
    /// logged and gives `None`.
    pub async fn stop(self, grace: Duration) -> Option<Outcome> {
        match self.finish(grace).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "the coordinator failed");
                None
            }
        }
    }

    /// Gives connected sites up to `grace` to hear that the federation is done, then stops
    /// the server and the actor and returns what the federation produced (`None` when it
    /// did not finish). If the actor died (a bug: nothing a site sends may cause it), that
    /// is an error with the reason, so that `serve` exits non-zero; the durable state on
    /// disk still resumes.
    pub async fn finish(self, grace: Duration) -> Result<Option<Outcome>, ActorFailed> {
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
        match self.actor.await {
            Ok(outcome) => Ok(outcome),
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let message = panic.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
                Err(ActorFailed(format!("the federation's state machine panicked: {message}")))
            }
            Err(e) => Err(ActorFailed(format!("the federation's task ended abnormally: {e}"))),
        }
    }
}

/// The federation actor died instead of finishing.
#[derive(Debug, thiserror::Error)]
#[error("{0}; the durable state on disk resumes with `serve --resume`")]
pub struct ActorFailed(pub String);
