//! A site's life in a federation: join, report aggregates, then pull work until done.
//!
//! Raw rows never leave this module's process: the coordinator gets column aggregates once,
//! then only weight deltas and evaluation metrics. Training runs on a blocking thread while a
//! heartbeat keeps the site's lease alive.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_common::compress::{Codec, ErrorFeedback};
use flotilla_common::data::Plan;
use flotilla_common::model::ModelShape;
use flotilla_common::seed::derive_seed;
use flotilla_common::site::SiteInput;
use flotilla_common::site::{PreparedSite, SiteData};
use flotilla_common::train::local::LocalConfig;
use flotilla_common::train::{Backend, DpSgd, train_dp_sgd, train_local};
use flotilla_common::wire::UpdateHeader;
use flotilla_common::{FlatParams, Task};
use rand::SeedableRng;
use rand_chacha::{ChaCha8Rng, ChaCha20Rng};
use tokio_util::sync::CancellationToken;

use crate::connection::{Connection, Joined, Work};
use crate::error::ClientError;
use crate::guard::{Guard, Sent};
use crate::policy::SitePolicy;
use crate::state::AuditEvent;
use crate::tls::ClientTls;

/// How a site connects and behaves.
#[derive(Debug, Clone)]
pub struct SiteOptions {
    /// `http://host:port` of the coordinator.
    pub coordinator: String,
    /// The site's name; it identifies the site in the federation.
    pub site: String,
    /// Interval of heartbeats while busy; well under the coordinator's lease.
    pub heartbeat: Duration,
    /// How long to keep trying to reach the coordinator at start.
    pub connect_patience: Duration,
    /// How long to keep retrying (exponential backoff with jitter) when the coordinator
    /// becomes unreachable mid-run, e.g. while it restarts.
    pub reconnect_patience: Duration,
    /// Mutual TLS material; required for an `https://` coordinator.
    pub tls: Option<ClientTls>,
    /// Experiments only: the site misbehaves this way (see [`Attack`]).
    pub attack: Option<Attack>,
    /// The site's own privacy budget (ε, δ): it trains only while the rounds it took part in
    /// stay within it, computed from the federation's announced DP parameters.
    pub budget: Option<(f64, f64)>,
    /// Experiments only: a straggler completes at most this many local epochs per round.
    pub max_epochs: Option<u32>,
    /// Seed of the site's own randomness (split, shuffles, augmentation). `None` uses the
    /// federation's seed, so a whole run is reproducible from the coordinator's seed alone.
    pub seed: Option<u64>,
    /// Fault injection only: in each round it is asked to train, the site "crashes" with this
    /// probability (seeded by site and round), silent for the given downtime, then rejoins.
    pub dropout: Option<(f64, Duration)>,
    /// An open connection to use instead of dialling one: in-process simulations with
    /// thousands of plaintext sites share a few HTTP/2 connections rather than one each.
    pub connection: Option<Connection>,
    /// In-process simulations: sites that may compute at once (one per core). Thousands of
    /// sites then wait their turn (heartbeating) instead of all training on their own thread.
    pub cpu_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// The burn CPU backend that trains and evaluates.
    pub backend: Backend,
    /// Experiments only: a seed of this site's own for its DP-SGD sampling and noise, to
    /// repeat a run. Never the federation's seed; `None` draws from the OS.
    pub dp_seed: Option<u64>,
    /// The site's policy: what it accepts from the coordinator (see [`crate::policy`]).
    pub policy: Option<Arc<SitePolicy>>,
    /// Where the site keeps its privacy ledger, audit log and error-feedback residual
    /// across restarts.
    pub state_dir: Option<PathBuf>,
    /// The codec of this site's updates, in place of the task's (a site on a thin link may
    /// compress more than the federation asks).
    pub compress: Option<Codec>,
    /// Always download full models, never the difference from the model the site holds
    /// (delta downloads cost the site one more model copy while it applies one).
    pub full_downloads: bool,
    /// The most threads this site trains and evaluates with (a rayon pool of that size; see
    /// [`crate::threads`]). The policy's `resources.threads`, when lower, wins. The model
    /// does not depend on it.
    pub threads: Option<usize>,
}

impl SiteOptions {
    /// Options with the defaults for everything but the address and the name.
    pub fn new(coordinator: impl Into<String>, site: impl Into<String>) -> Self {
        Self {
            coordinator: coordinator.into(),
            site: site.into(),
            heartbeat: Duration::from_secs(2),
            connect_patience: Duration::from_secs(30),
            reconnect_patience: Duration::from_secs(300),
            tls: None,
            budget: None,
            attack: None,
            max_epochs: None,
            seed: None,
            dropout: None,
            connection: None,
            cpu_slots: None,
            backend: Backend::Ndarray,
            dp_seed: None,
            policy: None,
            state_dir: None,
            compress: None,
            full_downloads: false,
            threads: None,
        }
    }
}

/// A poisoning attack, for robustness experiments: a real site never sets one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    /// Send `−scale · Δ` instead of the honest delta Δ.
    SignFlip { scale: f32 },
    /// Under secure aggregation, claim `factor` times the site's weight (the coordinator never
    /// sees an individual weight: only the check of the unmasked sum catches this).
    InflateWeight { factor: u64 },
}

/// What a site did, reported when the federation is done.
#[derive(Debug, Clone, Default)]
pub struct SiteReport {
    pub rounds_trained: u32,
    pub evaluations: u32,
    pub train_examples: usize,
    pub test_examples: usize,
    /// Rows skipped as unparseable (`bad_rows = "skip"`).
    pub skipped_rows: usize,
    /// Simulated crashes (fault injection).
    pub crashes: u32,
    /// Updates the coordinator refused (norm bound, non-finite values); the site stayed on.
    pub refused_updates: u32,
    /// Rounds the site was asked to train and declined (its local training diverged); it
    /// stayed on for the next.
    pub rounds_declined: u32,
    /// Why the federation ended.
    pub reason: String,
}

/// What the site knows after joining.
struct Session {
    client_id: String,
    task: Task,
    seed: u64,
    prepared: PreparedSite,
    /// The plan and the data encoded with it, once known.
    encoded: Option<(String, Arc<SiteData>, ModelShape)>,
    /// The last global model downloaded, by hash (evaluation and the next fit share it).
    model: Option<(String, Arc<FlatParams>)>,
    /// SCAFFOLD: this site's control variate `c_i` (zeros until its first round).
    control: Option<FlatParams>,
    /// What compressed updates left out (loaded from the state directory, if any).
    feedback: ErrorFeedback,
}

/// The error-feedback residual's file in a site's state directory.
const RESIDUAL_FILE: &str = "residual.safetensors";

/// Runs a site until the federation is done or `shutdown` is cancelled.
///
/// The input is a table (a [`RawTable`](flotilla_common::data::RawTable)) or images (an
/// [`ImageSet`](flotilla_common::data::images::ImageSet)). With a policy, only the columns it
/// allows are kept from a table (the CLI does not even read the others), and everything the
/// coordinator sends is checked against it.
///
/// A hospital's site over mutual TLS, as `flotilla-client` runs it (a custom model's binary
/// registers its module with `flotilla_common::model::register` first, and runs the same):
///
/// ```no_run
/// # async fn site() -> Result<(), Box<dyn std::error::Error>> {
/// use flotilla_client::{ClientTls, SiteOptions, run_site};
/// use flotilla_common::data::RawTable;
/// use std::path::Path;
///
/// let mut opts = SiteOptions::new("https://coordinator.example.org:50051", "cleveland");
/// opts.tls = Some(ClientTls::from_files(Path::new("ca.pem"), Path::new("cleveland.pem"), Path::new("cleveland.key"))?);
/// opts.state_dir = Some("state/cleveland".into()); // the privacy ledger and audit log
/// let rows = RawTable::read(Path::new("cleveland.csv"))?; // never leaves this process
/// let report = run_site(opts, rows, tokio_util::sync::CancellationToken::new()).await?;
/// println!("trained {} rounds", report.rounds_trained);
/// # Ok(()) }
/// ```
pub async fn run_site(opts: SiteOptions, input: impl Into<SiteInput>, shutdown: CancellationToken) -> Result<SiteReport, ClientError> {
    if let Some(tls) = &opts.tls {
        flotilla_common::pki::check_validity(&tls.cert_pem).map_err(|e| ClientError::Certificate(e.to_string()))?;
    }
    let mut guard = Guard::open(&opts.site, opts.policy.clone(), opts.budget, opts.state_dir.as_deref())?;
    let input = match (guard.policy(), input.into()) {
        (Some(p), SiteInput::Table(table)) => SiteInput::Table(table.keeping(&|c| p.may_read(c))),
        (_, input) => input,
    };
    guard.record(AuditEvent::Started {
        site: opts.site.clone(),
        coordinator: opts.coordinator.clone(),
        policy: opts.policy.as_ref().map(|p| p.source.display().to_string()),
        policy_sha256: opts.policy.as_ref().and_then(|p| std::fs::read(&p.source).ok()).map(|b| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b))
        }),
    })?;
    let result = run_guarded(&opts, &input, &mut guard, shutdown).await;
    let reason = match &result {
        Ok(r) => r.reason.clone(),
        Err(e) => format!("stopped: {}", crate::error::describe(e)),
    };
    guard.record(AuditEvent::Left { reason })?;
    result
}

async fn run_guarded(opts: &SiteOptions, input: &SiteInput, guard: &mut Guard, shutdown: CancellationToken) -> Result<SiteReport, ClientError> {
    let mut opts = opts.clone();
    // The site's policy caps its compute threads below whatever it was started with.
    if let Some(cap) = guard.policy().and_then(|p| p.resources.threads) {
        opts.threads = Some(opts.threads.map_or(cap, |n| n.min(cap)));
    }
    if opts.threads == Some(0) {
        return Err(ClientError::Join("a site needs at least one compute thread (--threads, resources.threads)".into()));
    }
    let conn = match &opts.connection {
        Some(c) => c.clone(),
        None => Connection::connect(&opts.coordinator, opts.tls.as_ref(), opts.connect_patience).await?,
    };
    let mut report = SiteReport::default();
    let mut backoff = Backoff::default();
    // The first join retries too: the coordinator may be (re)starting as the site starts.
    let mut session = loop {
        match join(&conn, &opts, input, guard).await {
            Ok(s) => break s,
            Err(e) if is_transient(&e) || forgot_us(&e) => backoff.wait(&opts, e, &shutdown).await?,
            Err(e) => return Err(e),
        }
        if shutdown.is_cancelled() {
            report.reason = "stopped".into();
            return Ok(report);
        }
    };
    report.train_examples = session.prepared.num_train();
    report.test_examples = session.prepared.test.len();
    report.skipped_rows = session.prepared.rows.skipped.len();
    let mut known_round = 0;
    backoff.reset();
    loop {
        if shutdown.is_cancelled() {
            let _ = conn.leave(&session.client_id).await;
            report.reason = "stopped".into();
            return Ok(report);
        }
        let result = step(&conn, &opts, &mut session, &mut report, &mut known_round, guard, &shutdown).await;
        match result {
            Ok(Some(reason)) => {
                // Best effort: lets the coordinator stop without waiting for our lease to expire.
                let _ = conn.leave(&session.client_id).await;
                report.reason = reason;
                return Ok(report);
            }
            Ok(None) => backoff.reset(),
            // Fault injection: a simulated crash goes silent (no heartbeats, no leave), then the
            // restarted site joins again like a new process would.
            Err(ClientError::Crashed { round, downtime }) => {
                tracing::warn!(site = %opts.site, round, downtime_ms = downtime.as_millis() as u64, "simulated crash");
                tokio::select! {
                    _ = tokio::time::sleep(downtime) => {}
                    _ = shutdown.cancelled() => {}
                }
                report.crashes += 1;
                match join(&conn, &opts, input, guard).await {
                    Ok(mut s) => {
                        s.control = session.control.take();
                        session = s;
                    }
                    Err(e) if is_transient(&e) || forgot_us(&e) => backoff.wait(&opts, e, &shutdown).await?,
                    Err(e) => return Err(e),
                }
            }
            // The coordinator forgot us (lease expired, or it restarted): join again.
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                tracing::warn!(site = %opts.site, error = %e, "rejoining");
                match join(&conn, &opts, input, guard).await {
                    Ok(mut s) => {
                        // SCAFFOLD's c_i is the site's own state: it survives a rejoin.
                        s.control = session.control.take();
                        session = s;
                        backoff.reset();
                    }
                    Err(e) if is_transient(&e) || forgot_us(&e) => backoff.wait(&opts, e, &shutdown).await?,
                    Err(e) => return Err(e),
                }
            }
            // The coordinator is unreachable (network fault, restart): retry with backoff.
            // Work in progress is discarded; the coordinator asks again if it still wants it.
            Err(e) if is_transient(&e) => backoff.wait(&opts, e, &shutdown).await?,
            // A round closed under us, or we were too late: resynchronise by pulling work.
            // A corrupted upload (DataLoss) is also refused and asked for again.
            Err(e)
                if matches!(
                    e.code(),
                    Some(tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists | tonic::Code::PermissionDenied | tonic::Code::DataLoss)
                ) =>
            {
                tracing::info!(site = %opts.site, error = %e, "resynchronising");
            }
            // A refusal by the site's own rules: leave cleanly, then stop.
            Err(e @ ClientError::Policy { .. }) => {
                let _ = conn.leave(&session.client_id).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors worth retrying: the coordinator could not be reached or dropped the connection.
fn is_transient(e: &ClientError) -> bool {
    matches!(e, ClientError::Connect { .. })
        || matches!(
            e.code(),
            Some(tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded | tonic::Code::Aborted)
        )
        // A connection torn down mid-stream surfaces as an HTTP/2 error with code Internal.
        || matches!(e, ClientError::Rpc { code: tonic::Code::Internal, message, .. } if message.contains("h2 protocol error") || message.contains("transport error"))
}

/// The coordinator forgot this connection (its lease expired, say between joining and
/// reporting on a slow link): joining again is the answer, not giving up.
fn forgot_us(e: &ClientError) -> bool {
    e.code() == Some(tonic::Code::NotFound)
}

/// Exponential backoff with full jitter, bounded by the site's reconnect patience.
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
    since: Option<std::time::Instant>,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(10);

    fn reset(&mut self) {
        *self = Self::default();
    }

    /// Sleeps before the next try, or gives up with `error` once patience runs out.
    async fn wait(&mut self, opts: &SiteOptions, error: ClientError, shutdown: &CancellationToken) -> Result<(), ClientError> {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() > opts.reconnect_patience {
            return Err(error);
        }
        let ceiling = Self::BASE.saturating_mul(1 << self.attempt.min(16)).min(Self::CAP);
        // Full jitter spreads the reconnects of many sites after a coordinator restart.
        let delay = ceiling.mul_f64(rand::random_range(0.5..1.0));
        self.attempt += 1;
        tracing::warn!(site = %opts.site, error = %error, attempt = self.attempt, delay_ms = delay.as_millis() as u64, "coordinator unreachable; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
        Ok(())
    }
}

/// Whether the TLS layer refused (a fatal alert, a certificate that did not verify). A
/// handshake cut short (EOF, reset: a coordinator or a proxy still starting) is not a
/// refusal and is retried.
fn is_handshake_refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("certificate") || m.contains("alert")
}

async fn join(conn: &Connection, opts: &SiteOptions, input: &SiteInput, guard: &mut Guard) -> Result<Session, ClientError> {
    // Images are announced by their channels, as a table by its header.
    let columns = match input {
        SiteInput::Table(t) => t.header.clone(),
        SiteInput::Images(i) => flotilla_common::data::images::channel_names(i.spec.channels),
        // Not read yet: the channels are the task's.
        SiteInput::ImageFiles { .. } => Vec::new(),
    };
    let Joined { client_id, task_toml, seed } = conn.join(&opts.site, input.len() as u64, columns.clone()).await.map_err(|e| match e {
        ClientError::Rpc {
            code: tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition | tonic::Code::Unauthenticated,
            message,
            ..
        } => ClientError::Refused { site: opts.site.clone(), message },
        // Over TLS 1.3 a refused client certificate shows up at the first call, as an
        // alert from the coordinator. Anything else unreachable (a coordinator that is
        // restarting) stays transient and is retried, with TLS as without.
        ClientError::Rpc { code: tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled, message, .. } if is_handshake_refusal(&message) => {
            ClientError::Refused {
                site: opts.site.clone(),
                message: format!(
                    "the coordinator closed the connection at the first call; it did not accept this site's certificate \
                         (another CA, expired, or revoked?): {message}"
                ),
            }
        }
        other => other,
    })?;
    let task = Task::from_toml(&task_toml, "the coordinator's task")?;
    if let Err(e) = guard.check_task(&task) {
        // Nothing of the data has been read for this task yet: leave and stop.
        let _ = conn.leave(&client_id).await;
        return Err(e);
    }
    let seed = opts.seed.unwrap_or(seed);
    let k = guard.policy().map_or(task.data.min_category_count, |p| p.min_category_count(task.data.min_category_count));
    // Another allowed label column is not a feature unless the policy lists it as one. (Only
    // a policy costs a copy of the table: thousands of simulated sites have none.)
    let prepared = match input {
        SiteInput::Table(table) => {
            let narrowed = guard.policy().map(|p| table.clone().keeping(&|c| p.may_use(c, &task.data.label.column)));
            PreparedSite::with_min_count(&opts.site, narrowed.as_ref().unwrap_or(table), &task, seed, k)?
        }
        images => PreparedSite::from_input(&opts.site, images, &task, seed, k)?,
    };
    for skipped in &prepared.rows.skipped {
        tracing::warn!(site = %opts.site, "skipped row: {skipped}");
    }
    guard.record(AuditEvent::Joined {
        client_id: client_id.clone(),
        task: task.name.clone(),
        task_fingerprint: task.fingerprint(),
        columns,
        min_category_count: k,
    })?;
    conn.report_stats(&client_id, &prepared.stats, prepared.num_train() as u64).await?;
    tracing::info!(site = %opts.site, %client_id, train = prepared.num_train(), test = prepared.test.len(), "joined");
    let feedback = match &opts.state_dir {
        Some(dir) => {
            let path = dir.join(RESIDUAL_FILE);
            ErrorFeedback::load(&path).map_err(|e| crate::state::StateError::Corrupt { path, message: format!("the error-feedback residual: {e}") })?
        }
        None => ErrorFeedback::default(),
    };
    Ok(Session { client_id, task, seed, prepared, encoded: None, model: None, control: None, feedback })
}

/// One piece of work; `Some(reason)` when the federation is done.
async fn step(
    conn: &Connection,
    opts: &SiteOptions,
    s: &mut Session,
    report: &mut SiteReport,
    known_round: &mut u32,
    guard: &mut Guard,
    shutdown: &CancellationToken,
) -> Result<Option<String>, ClientError> {
    let work = tokio::select! {
        w = conn.pull_work(&s.client_id, *known_round) => w?,
        _ = shutdown.cancelled() => return Ok(None),
    };
    match work {
        Work::Done { reason } => Ok(Some(reason)),
        Work::Wait { millis, current_round } => {
            *known_round = current_round;
            if millis > 0 {
                tokio::time::sleep(Duration::from_millis(u64::from(millis))).await;
            }
            Ok(None)
        }
        Work::Fit { round, model_hash, plan_fingerprint, local_epochs, proximal_mu, control_hash, secure_aggregation } => {
            if !(proximal_mu.is_finite() && proximal_mu >= 0.0) {
                return Err(flotilla_common::wire::WireError::Invalid(format!("proximal mu {proximal_mu} must be >= 0")).into());
            }
            *known_round = round;
            let epochs = opts.max_epochs.map_or(local_epochs, |m| m.min(local_epochs));
            // Record-level DP: this round's DP-SGD, planned (and budgeted) before it runs.
            let record = match &s.task.record_privacy {
                Some(r) => Some(plan_dp_sgd(r, &s.task, s.prepared.num_train(), epochs).map_err(flotilla_common::TrainError::DpSgd)?),
                None => None,
            };
            if let Some(reason) = guard.check_fit(&s.task, round, local_epochs, secure_aggregation, record.map(|(_, step)| step))? {
                tracing::warn!(site = %opts.site, round, "{reason}");
                return Ok(Some(reason));
            }
            if let Some((p, downtime)) = opts.dropout {
                let draw = derive_seed(s.seed, &[&opts.site, "dropout", &round.to_string()]) as f64 / u64::MAX as f64;
                if draw < p {
                    return Err(ClientError::Crashed { round, downtime });
                }
            }
            let (data, shape) = ensure_plan(conn, s, guard, &plan_fingerprint).await?;
            let global = ensure_model(conn, opts, s, &shape, round, &model_hash).await?;
            // SCAFFOLD: download the server control c; the gradient correction is c − c_i.
            let controls = if control_hash.is_empty() {
                None
            } else {
                let c = download_heartbeating(conn, &s.client_id, opts, round, &control_hash, None, None).await?;
                c.layout().ensure_same(global.layout()).map_err(flotilla_common::TrainError::from)?;
                let ci = s.control.take().filter(|ci| ci.layout() == c.layout()).unwrap_or_else(|| FlatParams::zeros(c.layout().clone()));
                Some((c, ci))
            };
            let scaffold_correction = match &controls {
                Some((c, ci)) => Some(c.delta_from(ci).map_err(flotilla_common::TrainError::from)?),
                None => None,
            };
            let cfg = LocalConfig {
                epochs,
                batch_size: s.task.training.batch_size,
                learning_rate: s.task.training.learning_rate,
                seed: derive_seed(s.seed, &[&opts.site, "train", &round.to_string()]),
                proximal_mu,
                scaffold_correction,
                backend: opts.backend,
                optimizer: flotilla_common::train::local::Optim::for_task(&s.task.training),
            };
            let lr = cfg.learning_rate;
            let g = global.clone();
            let trained = match record {
                Some((dp, _)) => {
                    // The sampling and the noise are secret from everyone else: the OS's
                    // generator, or this site's own seed (--dp-seed), never the federation's.
                    let mut rng = match opts.dp_seed {
                        Some(seed) => ChaCha20Rng::seed_from_u64(derive_seed(seed, &[&opts.site, "dp-sgd", &round.to_string()])),
                        None => ChaCha20Rng::from_rng(&mut rand::rng()),
                    };
                    with_heartbeat(conn, &s.client_id, opts, move || train_dp_sgd(&g, &shape, &data.train, &cfg, &dp, &mut rng)).await?
                }
                None => with_heartbeat(conn, &s.client_id, opts, move || train_local(&g, &shape, &data.train, &cfg)).await?,
            };
            let (local, mut metrics) = match trained {
                Ok(t) => t,
                Err(e) => match e.decline_cause() {
                    // A failure of this round, not of the site: say so and stay on. The round
                    // counts against the budget (all its planned DP-SGD steps: how many ran
                    // is not known) before the one bit of the cause leaves the site.
                    Some(cause) => {
                        tracing::warn!(site = %opts.site, round, error = %e, "declining the round");
                        guard.spend(&s.task, record.map(|(_, step)| step))?;
                        guard.record(AuditEvent::Declined { round, model_hash: model_hash.clone(), cause: cause.as_str().to_owned() })?;
                        conn.decline_fit(&s.client_id, round, &model_hash, cause).await?;
                        report.rounds_declined += 1;
                        return Ok(None);
                    }
                    None => return Err(e.into()),
                },
            };
            // The round counts against the budget before anything of it leaves the site.
            guard.spend(&s.task, record.map(|(_, step)| flotilla_common::privacy::Step { count: metrics.steps, ..step }))?;
            metrics.record_epsilon = record.and(guard.epsilon(&s.task));
            let mut delta = local.delta_from(&global).map_err(flotilla_common::TrainError::from)?;
            if let Some(Attack::SignFlip { scale }) = opts.attack {
                delta.values_mut().iter_mut().for_each(|v| *v *= -scale);
            }
            // Local DP: the update is clipped and noised here, with this process's secret
            // (OS-seeded) randomness, before it leaves the site.
            if let Some(dp) = s.task.privacy.filter(|p| p.local) {
                flotilla_common::privacy::dp_fedavg::privatize_locally(delta.values_mut(), dp.clip_norm, dp.noise_multiplier, &mut rand::rng())
                    .map_err(flotilla_common::wire::WireError::Invalid)?;
            }
            // SCAFFOLD's new c_i is kept only once the update is delivered: work that is lost
            // (and redone when the coordinator asks again) must not move it twice.
            let mut next_control = None;
            let mut delta = match controls {
                // Option II: c_i⁺ = c_i − c + (x − y)/(K·η), so Δc = −Δy/(K·η) − c.
                Some((c, ci)) => {
                    let k_eta = (metrics.steps.max(1) as f64 * lr) as f32;
                    let values: Vec<f32> = delta.values().iter().zip(c.values()).map(|(d, cv)| -d / k_eta - cv).collect();
                    let dc = FlatParams::new(c.layout().clone(), values).map_err(flotilla_common::TrainError::from)?;
                    let mut updated = ci.clone();
                    updated.values_mut().iter_mut().zip(dc.values()).for_each(|(a, b)| *a += b);
                    s.control = Some(ci);
                    next_control = Some(updated);
                    delta.concat_control(&dc).map_err(flotilla_common::TrainError::from)?
                }
                None => delta,
            };
            if secure_aggregation {
                // Under central DP the site clips (the coordinator cannot see the update to do
                // it) and every update weighs 1; otherwise it weighs its training examples.
                let weight = match s.task.privacy.filter(|p| !p.local) {
                    Some(dp) => {
                        flotilla_common::privacy::dp_fedavg::clip(delta.values_mut(), dp.clip_norm);
                        1
                    }
                    None => s.prepared.num_train() as u64,
                };
                let weight = match opts.attack {
                    Some(Attack::InflateWeight { factor }) => weight.saturating_mul(factor),
                    _ => weight,
                };
                let x = flotilla_common::secagg::masking::encode_weighted(delta.values(), weight).map_err(flotilla_common::wire::WireError::Invalid)?;
                let header = UpdateHeader {
                    client_id: s.client_id.clone(),
                    round,
                    base_model_hash: model_hash.clone(),
                    layout_fingerprint: delta.layout().fingerprint().to_owned(),
                    total_values: 0,
                    num_examples: 0, // the weight travels under the masks
                    // A site's training loss and accuracy say something of its data: under
                    // secure aggregation they stay here too (only the epochs done travel).
                    // (The record ε depends on the noise and the steps only, not on the data.)
                    metrics: flotilla_common::train::TrainReport { epochs: metrics.epochs, record_epsilon: metrics.record_epsilon, ..Default::default() },
                    values_sha256: String::new(),
                    masked: true,
                    encoding: Codec::F32,
                };
                drop(delta);
                let bytes = (x.len() * 8) as u64;
                let distributed = s.task.privacy.filter(|p| p.distributed).map(|p| (p.noise_multiplier, p.clip_norm));
                let (outcome, uploaded) = crate::secure::take_part(
                    conn,
                    &s.client_id,
                    &opts.site,
                    round,
                    x,
                    header,
                    crate::secure::Protections { identity: opts.tls.as_ref(), distributed },
                )
                .await?;
                let sent = Sent {
                    round,
                    model_hash,
                    update_sha256: String::new(),
                    update_bytes: bytes,
                    examples: s.prepared.num_train() as u64,
                    local_epochs: epochs,
                };
                tracing::debug!(site = %opts.site, round, %outcome, "secure aggregation");
                // The audit log says a round was trained only when its masked input left the
                // site (the budget was spent either way: the training ran).
                if uploaded {
                    guard.trained(&s.task, sent)?;
                    report.rounds_trained += 1;
                }
                return Ok(None);
            }
            // Compression: what the coordinator will decode is what is hashed (and, under error
            // feedback, what the residual is measured against).
            let codec = opts.compress.unwrap_or(s.task.compression.update);
            // `feedback`: under error feedback, the lineage and the compensated delta, whose
            // remainder is kept once the update is delivered.
            let (delta, encoded, feedback) = if codec == Codec::F32 {
                (delta, None, None)
            } else {
                let lineage = format!("{}:{}", s.task.fingerprint(), delta.layout().fingerprint());
                let compensated = if codec.uses_error_feedback() { s.feedback.compensate(&lineage, &delta) } else { delta };
                let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(s.seed, &[&opts.site, "compress", &round.to_string()]));
                let (bytes, decoded) = codec.round_trip(compensated.values(), &mut rng)?;
                let sent = FlatParams::new(compensated.layout().clone(), decoded).map_err(flotilla_common::TrainError::from)?;
                (sent, Some(bytes::Bytes::from(bytes)), codec.uses_error_feedback().then_some((lineage, compensated)))
            };
            let delta = Arc::new(delta);
            let header = UpdateHeader {
                client_id: s.client_id.clone(),
                round,
                base_model_hash: model_hash,
                layout_fingerprint: delta.layout().fingerprint().to_owned(),
                total_values: delta.values().len() as u64,
                num_examples: s.prepared.num_train() as u64,
                metrics,
                values_sha256: delta.hash(),
                masked: false,
                encoding: codec,
            };
            let update_sha256 = header.values_sha256.clone();
            let update_bytes = encoded.as_ref().map_or(header.total_values * 4, |b| b.len() as u64);
            let model = header.base_model_hash.clone();
            let uploaded = match encoded {
                Some(bytes) => conn.upload_encoded(header, bytes).await,
                None => conn.upload_update(header, delta.clone()).await,
            };
            match uploaded {
                Ok(()) => {
                    // Delivered: what it left out is carried to the next round (a refused or
                    // lost update leaves the residual as it was).
                    if let Some((lineage, compensated)) = &feedback {
                        s.feedback.record(lineage, compensated, delta.values());
                        if let Some(dir) = &opts.state_dir {
                            let path = dir.join(RESIDUAL_FILE);
                            s.feedback.save(&path).map_err(|source| crate::state::StateError::Io { path, source })?;
                        }
                    }
                }
                // The coordinator refused this update (its norm is above the federation's bound,
                // say): that is this round's loss, not the site's end. It keeps its place and
                // trains again when asked; SCAFFOLD's c_i stays where it was.
                Err(e) if e.code() == Some(tonic::Code::InvalidArgument) => {
                    tracing::warn!(site = %opts.site, round, error = %e, "the coordinator refused this round's update; staying for the next round");
                    report.refused_updates += 1;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
            if next_control.is_some() {
                s.control = next_control;
            }
            let sent = Sent { round, model_hash: model, update_sha256, update_bytes, examples: s.prepared.num_train() as u64, local_epochs: epochs };
            guard.trained(&s.task, sent)?;
            report.rounds_trained += 1;
            tracing::debug!(site = %opts.site, round, loss = metrics.loss, "update sent");
            Ok(None)
        }
        Work::Evaluate { round, model_hash, plan_fingerprint } => {
            *known_round = round;
            let (data, shape) = ensure_plan(conn, s, guard, &plan_fingerprint).await?;
            let global = ensure_model(conn, opts, s, &shape, round, &model_hash).await?;
            let backend = opts.backend;
            let eval = with_heartbeat(conn, &s.client_id, opts, move || data.evaluate(&global, &shape, backend)).await??;
            conn.submit_evaluation(&s.client_id, round, &model_hash, &eval).await?;
            guard.record(AuditEvent::Evaluated { round, model_hash, examples: s.prepared.test.len() as u64 })?;
            report.evaluations += 1;
            Ok(None)
        }
    }
}

/// This round's DP-SGD at this site: its sampling rate (expected batch over its training
/// rows), its noise multiplier (the task's, or the smallest that keeps the site within the
/// task's target ε over its rounds), and the steps the accountant will count.
fn plan_dp_sgd(r: &flotilla_common::privacy::RecordDp, task: &Task, rows: usize, epochs: u32) -> Result<(DpSgd, flotilla_common::privacy::Step), String> {
    let q = flotilla_common::privacy::RecordDp::sampling_rate(task.training.batch_size, rows);
    let per_epoch = flotilla_common::privacy::RecordDp::steps_per_epoch(q);
    let sigma = r.noise_for_site(q, per_epoch.saturating_mul(u64::from(task.training.local_epochs)))?;
    let dp = DpSgd { clip_norm: r.clip_norm, noise_multiplier: sigma, sampling_rate: q };
    Ok((dp, flotilla_common::privacy::Step { q, sigma, count: per_epoch.saturating_mul(u64::from(epochs)) }))
}

/// The site's data encoded with the federation's current plan (fetched when it changed).
async fn ensure_plan(conn: &Connection, s: &mut Session, guard: &mut Guard, fingerprint: &str) -> Result<(Arc<SiteData>, ModelShape), ClientError> {
    if let Some((fp, data, shape)) = &s.encoded
        && fp == fingerprint
    {
        return Ok((data.clone(), shape.clone()));
    }
    let plan: Plan = conn.plan(&s.client_id).await?.ok_or_else(|| ClientError::Rpc {
        what: "get the plan".into(),
        code: tonic::Code::FailedPrecondition,
        message: "plan not ready".into(),
    })?;
    if plan.width() == 0 {
        return Err(flotilla_common::wire::WireError::Invalid("the preprocessing plan has no feature columns".into()).into());
    }
    // The plan decides the model's width and the encoding's size: checked before either exists.
    let parameters = guard.check_plan(&s.task, &plan, s.prepared.num_train(), s.prepared.test.len())?;
    let data = Arc::new(s.prepared.encode(&plan, &s.task, s.seed)?);
    let shape = ModelShape::for_task(&s.task, plan.width());
    // A custom model: this process must have the module, with the layout announced.
    flotilla_common::model::registry::check_custom(&shape)?;
    guard.record(AuditEvent::PlanAccepted { plan_fingerprint: plan.fingerprint(), features: plan.width() as u64, parameters })?;
    s.encoded = Some((plan.fingerprint(), data.clone(), shape.clone()));
    Ok((data, shape))
}

/// The global model, downloaded only when its hash changed. It must have the plan's shape:
/// a coordinator that announces another layout (a larger model, say) is refused before any
/// of it is allocated.
async fn ensure_model(
    conn: &Connection,
    opts: &SiteOptions,
    s: &mut Session,
    shape: &ModelShape,
    round: u32,
    hash: &str,
) -> Result<Arc<FlatParams>, ClientError> {
    if let Some((h, m)) = &s.model
        && h == hash
    {
        return Ok(m.clone());
    }
    // The model held is the base of a delta download; without deltas it is freed before the
    // new one arrives.
    let held = s.model.take().filter(|_| !opts.full_downloads);
    let m = Arc::new(download_heartbeating(conn, &s.client_id, opts, round, hash, Some(&shape.layout()), held).await?);
    s.model = Some((hash.to_owned(), m.clone()));
    Ok(m)
}

/// Heartbeats every `every` until the returned task is aborted. Each heartbeat is sent without
/// waiting for the previous answer: behind a large download on a slow link an answer can take
/// longer than the lease, but the request still gets through. One leaves every interval however
/// many are unanswered (a cap on those once left a gap longer than the lease, with the download
/// still in the link's buffers after the coordinator had handed over its last chunk); the
/// timeout bounds how many are in flight.
fn spawn_heartbeat(conn: &Connection, client_id: &str, every: Duration) -> tokio::task::JoinHandle<()> {
    const UNANSWERED: u32 = 8;
    let conn = conn.clone();
    let id = client_id.to_owned();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let (conn, id) = (conn.clone(), id.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(every * UNANSWERED, conn.heartbeat(&id)).await {
                    Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat failed"),
                    Err(_) => tracing::debug!("heartbeat unanswered"),
                    Ok(Ok(())) => {}
                }
            });
        }
    })
}

/// Downloads a model with heartbeats alongside: on a slow link a large model takes longer
/// than the lease, and only the site knows when the last byte arrived.
async fn download_heartbeating(
    conn: &Connection,
    client_id: &str,
    opts: &SiteOptions,
    round: u32,
    hash: &str,
    layout: Option<&flotilla_common::Layout>,
    held: Option<(String, Arc<FlatParams>)>,
) -> Result<FlatParams, ClientError> {
    let beat = spawn_heartbeat(conn, client_id, opts.heartbeat);
    let model = conn.download_model(client_id, round, hash, layout, held).await;
    beat.abort();
    model
}

/// Runs CPU work on a blocking thread while heartbeats keep the lease alive.
/// With `opts.cpu_slots`, it first waits for a slot (still heartbeating).
async fn with_heartbeat<T: Send + 'static>(
    conn: &Connection,
    client_id: &str,
    opts: &SiteOptions,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ClientError> {
    let beat = spawn_heartbeat(conn, client_id, opts.heartbeat);
    let permit = match &opts.cpu_slots {
        Some(slots) => Some(slots.clone().acquire_owned().await.map_err(|e| ClientError::Join(e.to_string()))?),
        None => None,
    };
    let pool = match opts.threads {
        Some(n) => Some(crate::threads::compute_pool(n).map_err(|e| ClientError::Join(format!("a pool of {n} compute threads: {e}")))?),
        None => None,
    };
    let out = tokio::task::spawn_blocking(move || match pool {
        Some(pool) => pool.install(work),
        None => work(),
    })
    .await;
    drop(permit);
    beat.abort();
    out.map_err(|e| ClientError::Join(e.to_string()))
}
