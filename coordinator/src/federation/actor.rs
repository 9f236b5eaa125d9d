//! The one task that owns the federation's state. gRPC handlers send it requests through a
//! [`FederationHandle`]; it applies them in order, ticks leases and deadlines, and turns
//! events into the run directory's records and into progress for whoever watches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_common::data::{Plan, SiteStats};
use flotilla_common::train::{DeclineCause, Evaluation, TrainReport};
use flotilla_common::{FlatParams, Layout};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::persist::{DurableWriter, Stored, UpdateJob};
use super::record::{Metric, RoundRecord};
use super::rejection::Rejection;
use super::secure::{Answer, Step};
use super::state::{Event, Federation, Joined, Outcome, Served, UpdateClaim, Work, site_of_client_id};
use crate::durable::StateDir;
use crate::observe::Telemetry;
use crate::run_dir::RunDir;

/// How often leases and deadlines are checked.
const TICK: Duration = Duration::from_millis(100);

/// What watchers see: the latest closed round and whether the federation is done.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub last: Option<RoundRecord>,
    pub rounds: u32,
    pub done: bool,
    /// Sites currently connected.
    pub connected: usize,
    /// Incremented on every state change, so long-polling handlers wake up.
    pub epoch: u64,
}

type Reply<T> = oneshot::Sender<Result<T, Rejection>>;

enum Request {
    Join {
        site: String,
        columns: Vec<String>,
        num_rows: u64,
        reply: Reply<Joined>,
    },
    Stats {
        client: String,
        stats: SiteStats,
        num_train: u64,
        reply: Reply<()>,
    },
    Plan {
        client: String,
        reply: Reply<Option<Arc<Plan>>>,
    },
    Pull {
        client: String,
        reply: Reply<Work>,
    },
    Touch {
        client: String,
        reply: Reply<()>,
    },
    Model {
        client: String,
        round: u32,
        hash: String,
        have: String,
        reply: Reply<Served>,
    },
    BeginUpdate {
        claim: UpdateClaim,
        reply: Reply<Layout>,
    },
    Masked {
        client: String,
        round: u32,
        base: String,
        fingerprint: String,
        values: Vec<u64>,
        metrics: TrainReport,
        reply: Reply<()>,
    },
    SecAgg {
        client: String,
        round: u32,
        step: Step,
        reply: Reply<Answer>,
    },
    Update {
        client: String,
        round: u32,
        base: String,
        delta: FlatParams,
        examples: u64,
        metrics: TrainReport,
        reply: Reply<()>,
    },
    Evaluation {
        client: String,
        round: u32,
        hash: String,
        eval: Evaluation,
        reply: Reply<()>,
    },
    Leave {
        client: String,
    },
    Decline {
        client: String,
        round: u32,
        hash: String,
        cause: DeclineCause,
        reply: Reply<()>,
    },
    /// Fault injection for tests (in-process only; no message on the wire leads here).
    Panic,
    /// A message the service refused before it reached the state machine (malformed).
    Refused {
        what: String,
        reason: String,
    },
    UploadFailed {
        client: String,
        round: u32,
        reason: String,
    },
}

/// A cheap, cloneable way to talk to the federation actor.
#[derive(Clone, Debug)]
pub struct FederationHandle {
    tx: mpsc::Sender<Request>,
    progress: watch::Receiver<Progress>,
    telemetry: Arc<Telemetry>,
}

fn gone() -> Rejection {
    Rejection::Closed("the coordinator is shutting down".into())
}

macro_rules! ask {
    ($self:ident, $variant:ident { $($field:ident : $value:expr),* $(,)? }) => {{
        let (reply, rx) = oneshot::channel();
        $self.tx.send(Request::$variant { $($field: $value,)* reply }).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }};
}

impl FederationHandle {
    pub async fn join(&self, site: String, columns: Vec<String>, num_rows: u64) -> Result<Joined, Rejection> {
        ask!(self, Join { site: site, columns: columns, num_rows: num_rows })
    }
    pub async fn report_stats(&self, client: String, stats: SiteStats, num_train: u64) -> Result<(), Rejection> {
        ask!(self, Stats { client: client, stats: stats, num_train: num_train })
    }
    pub async fn plan(&self, client: String) -> Result<Option<Arc<Plan>>, Rejection> {
        ask!(self, Plan { client: client })
    }
    pub async fn pull_work(&self, client: String) -> Result<Work, Rejection> {
        ask!(self, Pull { client: client })
    }
    pub async fn touch(&self, client: String) -> Result<(), Rejection> {
        ask!(self, Touch { client: client })
    }
    /// The model `hash`, and the model `have` (the one the site holds) when it can be sent
    /// as a difference from that.
    pub async fn model(&self, client: String, round: u32, hash: String, have: String) -> Result<Served, Rejection> {
        ask!(self, Model { client: client, round: round, hash: hash, have: have })
    }
    pub async fn begin_update(&self, claim: UpdateClaim) -> Result<Layout, Rejection> {
        ask!(self, BeginUpdate { claim: claim })
    }
    /// A masked input (secure aggregation), added to the secure sum and dropped.
    pub async fn masked(&self, client: String, round: u32, base: String, fingerprint: String, values: Vec<u64>, metrics: TrainReport) -> Result<(), Rejection> {
        ask!(self, Masked { client: client, round: round, base: base, fingerprint: fingerprint, values: values, metrics: metrics })
    }
    /// A step of the secure-aggregation exchange.
    pub async fn secagg(&self, client: String, round: u32, step: Step) -> Result<Answer, Rejection> {
        ask!(self, SecAgg { client: client, round: round, step: step })
    }
    #[allow(clippy::too_many_arguments)]
    pub async fn update(&self, client: String, round: u32, base: String, delta: FlatParams, examples: u64, metrics: TrainReport) -> Result<(), Rejection> {
        ask!(self, Update { client: client, round: round, base: base, delta: delta, examples: examples, metrics: metrics })
    }
    pub async fn evaluation(&self, client: String, round: u32, hash: String, eval: Evaluation) -> Result<(), Rejection> {
        ask!(self, Evaluation { client: client, round: round, hash: hash, eval: eval })
    }
    /// Tells the actor that an upload failed after its header was accepted (a broken or
    /// oversized stream), so the refusal is logged and counted in the round.
    pub async fn upload_failed(&self, client: String, round: u32, reason: String) {
        let _ = self.tx.send(Request::UploadFailed { client, round, reason }).await;
    }

    /// Makes the actor panic, as a bug would: for tests of what happens then. Not reachable
    /// from the network.
    #[doc(hidden)]
    pub async fn inject_panic_for_tests(&self) {
        let _ = self.tx.send(Request::Panic).await;
    }

    /// Tells the actor that the service refused a malformed message, to log and count it.
    pub async fn refused(&self, what: String, reason: String) {
        let _ = self.tx.send(Request::Refused { what, reason }).await;
    }

    /// A site cannot deliver its update of `round` (see `Federation::decline_fit`).
    pub async fn decline(&self, client: String, round: u32, hash: String, cause: DeclineCause) -> Result<(), Rejection> {
        ask!(self, Decline { client: client, round: round, hash: hash, cause: cause })
    }

    pub async fn leave(&self, client: String) {
        let _ = self.tx.send(Request::Leave { client }).await;
    }

    /// A receiver of progress updates.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// The federation's metrics and dashboard state (read by the operator's HTTP port).
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.telemetry.clone()
    }
}

/// Starts the actor. It runs until `shutdown` is cancelled and then returns the outcome
/// (if the federation finished). `run_dir` receives every closed round; `state`, when given,
/// receives the durable state after every change that matters (for `serve --resume`).
pub fn spawn(
    federation: Federation,
    rounds: u32,
    run_dir: Option<RunDir>,
    state: Option<StateDir>,
    shutdown: CancellationToken,
) -> (FederationHandle, JoinHandle<Option<Outcome>>) {
    let (tx, rx) = mpsc::channel(1024);
    let (progress_tx, progress) = watch::channel(Progress { rounds, ..Progress::default() });
    let telemetry = Telemetry::new(&federation.task().name, rounds, federation.policy().max_sites);
    let task = tokio::spawn(run(federation, rx, progress_tx, run_dir, state, telemetry.clone(), shutdown));
    (FederationHandle { tx, progress, telemetry }, task)
}

/// What the actor keeps of an update while it is being written: the claim to commit it
/// with and the site's reply.
type Pending = (UpdateClaim, Reply<()>);

async fn run(
    mut fed: Federation,
    mut rx: mpsc::Receiver<Request>,
    progress: watch::Sender<Progress>,
    run_dir: Option<RunDir>,
    state: Option<StateDir>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) -> Option<Outcome> {
    let writer = run_dir.map(RoundWriter::start);
    let (durable, mut stored_rx) = match state {
        Some(state) => {
            let (w, rx) = DurableWriter::<Pending>::start(state, telemetry.clone());
            (Some(w), Some(rx))
        }
        None => (None, None),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A fresh or resumed federation starts with its state on disk.
    if let Some(d) = &durable {
        d.snapshot(fed.snapshot(), fed.open_attempt());
    }
    telemetry.on_events(&fed, &[]);
    telemetry.set_ready();
    loop {
        let mut step = Instant::now();
        let events = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => fed.tick(Instant::now()),
            stored = async { match stored_rx.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => match stored {
                Some(stored) => commit_stored(&mut fed, stored),
                None => Vec::new(),
            },
            req = rx.recv() => match req {
                Some(req) => {
                    step = Instant::now();
                    handle(&mut fed, req, durable.as_ref(), &telemetry)
                }
                None => break,
            },
        };
        // The step that closed a training phase is the one that aggregated (and, for robust
        // rules, combined every update): its time is the aggregation's.
        if events.iter().any(|e| matches!(e, Event::EvaluationOpened { round, .. } if *round > 0)) {
            telemetry.metrics.aggregation_seconds.observe(step.elapsed().as_secs_f64());
        }
        if !events.is_empty() {
            persist(&fed, durable.as_ref(), &events);
            // Before progress is published: whoever hears "done" finds the metrics final.
            telemetry.on_events(&fed, &events);
            record(&fed, &events, writer.as_ref(), &progress);
        }
    }
    if let Some(w) = writer {
        w.finish().await;
    }
    if let Some(d) = durable {
        d.finish().await;
    }
    fed.outcome()
}

/// A closed round on its way to the run directory.
type RoundToWrite = (RoundRecord, Arc<FlatParams>, Vec<(&'static str, Vec<f64>)>);

/// What the writer thread writes: closed rounds, and the data profile once the plan is made.
enum ToWrite {
    Round(Box<RoundToWrite>),
    Profile(Arc<crate::profile::Profile>, Option<Arc<flotilla_common::data::Plan>>),
}

/// Writes closed rounds to the run directory (metrics, checkpoint, chart) on a thread of its
/// own, in order, so that file I/O and drawing never delay the next round. The run directory
/// is a record for people and tools; what a resume needs is the durable state, written
/// before any site hears of a change.
struct RoundWriter {
    tx: std::sync::mpsc::Sender<ToWrite>,
    thread: std::thread::JoinHandle<()>,
}

impl RoundWriter {
    fn start(mut dir: RunDir) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<ToWrite>();
        let thread = std::thread::spawn(move || {
            for item in rx {
                match item {
                    ToWrite::Round(round) => {
                        let (record, model, strategy_state) = *round;
                        if let Err(e) = dir.record_round(&record, &model, &strategy_state) {
                            tracing::error!(error = %e, "could not write the round to the run directory");
                        }
                    }
                    ToWrite::Profile(profile, plan) => {
                        if let Err(e) = profile.write(dir.root()) {
                            tracing::error!(error = %e, "could not write the data profile to the run directory");
                        }
                        if let Some(Err(e)) = plan.map(|p| dir.plan_ready(&p)) {
                            tracing::error!(error = %e, "could not encode the held-out test rows (--test-data)");
                        }
                    }
                }
            }
        });
        Self { tx, thread }
    }

    fn write(&self, item: ToWrite) {
        // The thread only stops once the sender is dropped, in `finish`.
        let _ = self.tx.send(item);
    }

    /// Waits until every round sent is written.
    async fn finish(self) {
        drop(self.tx);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Queues the snapshot when `events` changed the durable state. A failed write is logged,
/// not fatal: the run goes on, and a resume would start from the previous snapshot.
fn persist(fed: &Federation, durable: Option<&DurableWriter<Pending>>, events: &[Event]) {
    if let Some(d) = durable
        && events.iter().any(Event::changes_durable_state)
    {
        d.snapshot(fed.snapshot(), fed.open_attempt());
    }
}

/// An update's write finished: accepted into the round now (if the round still wants it), or
/// refused because the coordinator could not keep it, and the site may send it again.
fn commit_stored(fed: &mut Federation, stored: Stored<Pending>) -> Vec<Event> {
    let Stored { job, result } = stored;
    let (claim, reply) = job.token;
    fed.update_stored(&job.site, job.round);
    if let Err(e) = result {
        tracing::error!(site = %job.site, round = job.round, error = %e, "could not keep the update on disk; the site is asked to send it again");
        let _ = reply.send(Err(Rejection::Unavailable(format!(
            "the coordinator could not keep the update of site `{}` for round {} on disk; send it again",
            job.site, job.round
        ))));
        return Vec::new();
    }
    match fed.commit_update(&claim, &job.delta, job.metrics, Instant::now()) {
        Ok(events) => {
            tracing::debug!(client = %claim.client_id, round = claim.round, "update accepted");
            let _ = reply.send(Ok(()));
            events
        }
        Err(reason) => {
            tracing::warn!(client = %claim.client_id, round = claim.round, %reason, "update rejected");
            let _ = reply.send(Err(reason));
            Vec::new()
        }
    }
}

/// Applies a request and returns its events.
fn handle(fed: &mut Federation, req: Request, durable: Option<&DurableWriter<Pending>>, t: &Telemetry) -> Vec<Event> {
    let now = Instant::now();
    let site_of = |client: &str| site_of_client_id(client).map(str::to_owned);
    if let Request::Update { client, round, base, delta, examples, metrics, reply } = req {
        let claim =
            UpdateClaim { client_id: client.clone(), round, base_hash: base, fingerprint: String::new(), total: 0, num_examples: examples, masked: false };
        let checked = fed.check_update(&claim, &delta, metrics, now);
        return match (checked, durable) {
            (Err(reason), _) => {
                tracing::warn!(%client, round, %reason, "update rejected");
                t.refused(site_of(&client).as_deref(), "update", &reason);
                let _ = reply.send(Err(reason));
                Vec::new()
            }
            // Durable before the site hears it was accepted: a resumed run counts it once
            // and does not ask for it again. The actor goes on meanwhile.
            (Ok(site), Some(d)) => {
                let attempt = fed.open_attempt().map_or(0, |(_, a)| a);
                fed.update_storing(&site, round);
                d.update(UpdateJob { site, round, attempt, examples, metrics, delta, token: (claim, reply) });
                Vec::new()
            }
            (Ok(_), None) => match fed.commit_update(&claim, &delta, metrics, now) {
                Ok(events) => {
                    let _ = reply.send(Ok(()));
                    events
                }
                Err(reason) => {
                    tracing::warn!(%client, round, %reason, "update rejected");
                    t.refused(site_of(&client).as_deref(), "update", &reason);
                    let _ = reply.send(Err(reason));
                    Vec::new()
                }
            },
        };
    }
    // A handler that gave up (client gone) drops its receiver; replies to it are ignored.
    match req {
        Request::Join { site, columns, num_rows, reply } => match fed.join(&site, &columns, num_rows, now) {
            Ok((joined, events)) => {
                let _ = reply.send(Ok(joined));
                events
            }
            Err(e) => {
                tracing::warn!(site = %printable(&site), reason = %e, "join refused");
                fed.count_refusal();
                t.refused(None, "join", &e);
                let _ = reply.send(Err(e));
                Vec::new()
            }
        },
        Request::Stats { client, stats, num_train, reply } => {
            let result = fed.report_stats(&client, stats, num_train, now);
            refusal(fed, t, &client, "aggregates", &result);
            respond(reply, result)
        }
        Request::Plan { client, reply } => {
            let _ = reply.send(fed.touch(&client, now).map(|()| fed.plan()));
            Vec::new()
        }
        Request::Pull { client, reply } => {
            let _ = reply.send(fed.pull_work(&client, now));
            Vec::new()
        }
        Request::Touch { client, reply } => {
            let _ = reply.send(fed.touch(&client, now));
            Vec::new()
        }
        Request::Model { client, round, hash, have, reply } => {
            let _ = reply.send(fed.model(&client, round, &hash, &have, now));
            Vec::new()
        }
        Request::BeginUpdate { claim, reply } => {
            let (client, round) = (&claim.client_id, claim.round);
            let result = fed.begin_update(&claim, now);
            if let Err(reason) = &result {
                tracing::warn!(%client, round, %reason, "update rejected");
                t.refused(site_of(client).as_deref(), "update", reason);
            }
            let _ = reply.send(result);
            Vec::new()
        }
        Request::Update { .. } => Vec::new(), // handled above
        Request::Masked { client, round, base, fingerprint, values, metrics, reply } => {
            let claim = UpdateClaim { client_id: client.clone(), round, base_hash: base, fingerprint, total: 0, num_examples: 0, masked: true };
            let result = fed.submit_masked(&claim, &values, metrics, now);
            if let Err(reason) = &result {
                tracing::warn!(%client, round, %reason, "masked input rejected");
                t.refused(site_of(&client).as_deref(), "masked_input", reason);
            }
            respond(reply, result)
        }
        Request::SecAgg { client, round, step, reply } => match fed.secagg_step(&client, round, step, now) {
            Ok((answer, events)) => {
                let _ = reply.send(Ok(answer));
                events
            }
            Err(e) => {
                tracing::warn!(%client, round, reason = %e, "secure aggregation step refused");
                t.refused(site_of(&client).as_deref(), "secagg", &e);
                let _ = reply.send(Err(e));
                Vec::new()
            }
        },
        Request::Evaluation { client, round, hash, eval, reply } => {
            let result = fed.submit_evaluation(&client, round, &hash, eval, now);
            refusal(fed, t, &client, "evaluation", &result);
            respond(reply, result)
        }
        Request::Leave { client } => fed.leave(&client, now),
        Request::Decline { client, round, hash, cause, reply } => {
            let result = fed.decline_fit(&client, round, &hash, cause, now);
            refusal(fed, t, &client, "decline", &result);
            respond(reply, result)
        }
        Request::Panic => panic!("fault injected by a test"),
        Request::Refused { what, reason } => {
            tracing::warn!(from = %printable(&what), %reason, "message refused");
            fed.count_refusal();
            t.refused(site_of(&what).as_deref(), "message", &Rejection::InvalidArgument(reason.clone()));
            Vec::new()
        }
        Request::UploadFailed { client, round, reason } => {
            tracing::warn!(%client, round, %reason, "update rejected");
            t.refused(site_of(&client).as_deref(), "update", &Rejection::InvalidArgument(reason.clone()));
            fed.upload_failed(round);
            Vec::new()
        }
    }
}

/// A name a site sent, safe to log: control characters dropped, at most 64 characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// Logs and counts a refusal that names a fault of the site (a protocol race such as a
/// closed round or an expired lease is not one).
fn refusal<T>(fed: &mut Federation, t: &Telemetry, client: &str, what: &str, result: &Result<T, Rejection>) {
    if let Err(e @ (Rejection::InvalidArgument(_) | Rejection::Forbidden(_) | Rejection::Duplicate(_) | Rejection::Exhausted(_))) = result {
        tracing::warn!(client = %printable(client), what, reason = %e, "refused");
        fed.count_refusal();
        t.refused(site_of_client_id(client), what, e);
    }
}

fn respond(reply: Reply<()>, result: Result<Vec<Event>, Rejection>) -> Vec<Event> {
    match result {
        Ok(events) => {
            let _ = reply.send(Ok(()));
            events
        }
        Err(e) => {
            let _ = reply.send(Err(e));
            Vec::new()
        }
    }
}

fn record(fed: &Federation, events: &[Event], writer: Option<&RoundWriter>, progress: &watch::Sender<Progress>) {
    for ev in events {
        match ev {
            Event::Joined { site, client_id } => tracing::info!(%site, %client_id, "site joined"),
            Event::Dropped { site, round, reason } => tracing::warn!(%site, round, %reason, "site dropped"),
            Event::Left { site } => tracing::info!(%site, "site left"),
            Event::Declined { site, round, cause } => tracing::warn!(%site, round, %cause, "site declined the round; it stays in the federation"),
            Event::PlanReady { features, params, profile } => {
                tracing::info!(features, params, "preprocessing plan ready; global model initialised");
                for f in &profile.flags {
                    tracing::warn!(kind = f.kind, "data profile: {}", f.message);
                }
                if let Some(w) = writer {
                    w.write(ToWrite::Profile(profile.clone(), fed.plan()));
                }
            }
            Event::FitOpened { round, cohort } => tracing::info!(round, cohort = %cohort.join(", "), "training round opened"),
            Event::Abandoned { round, attempt, updates } => {
                tracing::warn!(round, attempt, updates, "training attempt abandoned at the deadline; retrying with a fresh cohort")
            }
            Event::ModelKept { round, reason } => tracing::warn!(round, %reason, "round keeps the current model"),
            Event::EvaluationOpened { round, sites } => tracing::debug!(round, sites, "evaluation opened"),
            Event::UpdateAccepted { .. } => {} // logged when it arrived
            Event::SecAggStage { round } => tracing::debug!(round, "secure aggregation: next stage"),
            Event::Resumed { round, missing } if missing.is_empty() => tracing::info!(round, "every site is back; resuming"),
            Event::Resumed { round, missing } => tracing::warn!(round, missing = %missing.join(", "), "resuming without sites that did not rejoin in time"),
            Event::RoundClosed(r) => {
                tracing::info!(round = r.round, accuracy = %Metric(Some(r.accuracy)), loss = %Metric(Some(r.loss)), auc = %Metric(r.auc), clients = r.clients, "round closed");
                if let (Some(w), Some((model, _))) = (writer, fed.global()) {
                    w.write(ToWrite::Round(Box::new((r.clone(), model, fed.strategy_state()))));
                }
            }
            Event::Done => tracing::info!("federation finished"),
        }
    }
    let connected = fed.connected_count();
    // Long-polling sites wake on a change of phase, not on every accepted update: with
    // thousands of sites waiting, waking all of them per update was most of a round's work.
    progress.send_if_modified(|p| {
        let wake =
            p.connected != connected || events.iter().any(|e| !matches!(e, Event::UpdateAccepted { .. } | Event::Dropped { .. } | Event::Declined { .. }));
        if wake {
            p.epoch += 1;
        }
        p.connected = connected;
        for ev in events {
            match ev {
                Event::RoundClosed(r) => p.last = Some(r.clone()),
                Event::Done => p.done = true,
                _ => {}
            }
        }
        wake
    });
}
