//! The durable state, written off the actor: one thread takes snapshots and accepted updates
//! in the order the actor hands them over, so fsyncs never delay the requests of other sites.
//!
//! Order is what makes this safe. A snapshot is queued at the phase change that makes it,
//! before any update of the new phase can be queued; so once an update is on disk, every
//! snapshot before it is too. An update is accepted into the round (and its site told so)
//! only after its own write finished: a crash loses nothing a site was told was kept. A
//! snapshot that lands late costs nothing either: runs are determined by their seed, so a
//! resume from the previous snapshot asks the sites for the same bits again.

use flotilla_common::FlatParams;
use flotilla_common::train::TrainReport;
use tokio::sync::mpsc;

use super::snapshot::Snapshot;
use crate::durable::{DurableError, StateDir};

/// An accepted-but-not-yet-kept update on its way to disk; `token` is the actor's, handed
/// back with the result.
#[derive(Debug)]
pub struct UpdateJob<T> {
    pub site: String,
    pub round: u32,
    pub attempt: u32,
    pub examples: u64,
    pub metrics: TrainReport,
    pub delta: FlatParams,
    pub token: T,
}

/// A finished update write.
#[derive(Debug)]
pub struct Stored<T> {
    pub job: UpdateJob<T>,
    pub result: Result<(), DurableError>,
}

enum Job<T> {
    Snapshot(Box<Snapshot>, Option<(u32, u32)>),
    Update(UpdateJob<T>),
}

/// The writer thread and the way to reach it.
pub struct DurableWriter<T> {
    tx: std::sync::mpsc::Sender<Job<T>>,
    thread: std::thread::JoinHandle<()>,
}

impl<T: Send + 'static> DurableWriter<T> {
    /// Starts the thread; finished update writes come back on the returned receiver.
    pub fn start(state: StateDir, telemetry: std::sync::Arc<crate::observe::Telemetry>) -> (Self, mpsc::UnboundedReceiver<Stored<T>>) {
        let (tx, rx) = std::sync::mpsc::channel::<Job<T>>();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("durable-state".into())
            .spawn(move || {
                for job in rx {
                    let started = std::time::Instant::now();
                    match job {
                        Job::Snapshot(snapshot, open) => {
                            if let Err(e) = state.save(&snapshot, open) {
                                tracing::error!(error = %e, "could not write the coordinator's durable state");
                            }
                        }
                        Job::Update(job) => {
                            let result = state.save_update(&job.site, job.round, job.attempt, job.examples, &job.metrics, &job.delta);
                            // The actor may be gone (shutting down): then nobody waits for it.
                            let _ = done_tx.send(Stored { job, result });
                        }
                    }
                    telemetry.metrics.durable_write_seconds.observe(started.elapsed().as_secs_f64());
                }
            })
            .expect("the OS can start a thread");
        (Self { tx, thread }, done_rx)
    }

    /// Queues a snapshot, with the open attempt whose kept updates must stay.
    pub fn snapshot(&self, snapshot: Snapshot, open: Option<(u32, u32)>) {
        let _ = self.tx.send(Job::Snapshot(Box::new(snapshot), open));
    }

    /// Queues an update; its result comes back on the receiver of [`DurableWriter::start`].
    pub fn update(&self, job: UpdateJob<T>) {
        let _ = self.tx.send(Job::Update(job));
    }

    /// Waits until everything queued is written.
    pub async fn finish(self) {
        drop(self.tx);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}
