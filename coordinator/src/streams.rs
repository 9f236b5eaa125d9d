//! Bounds on the streams a site holds open: how many uploads at once (each one holds a
//! model-sized buffer), how long a stream may sit silent, and downloads that keep their
//! site's lease alive while a slow link carries them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::federation::FederationHandle;

/// Limits the gRPC service applies, derived from the round policy.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// How long `PullWork` waits for work before answering "wait".
    pub long_poll: Duration,
    /// How long an upload may go without a chunk before it is cut off (the lease: a site
    /// that silent would have lost its place anyway).
    pub idle: Duration,
    /// Uploads one site may have open at once.
    pub uploads_per_site: usize,
}

impl StreamLimits {
    pub fn from_policy(policy: &crate::federation::Policy) -> Self {
        Self { long_poll: policy.long_poll(), idle: policy.lease, uploads_per_site: policy.max_uploads_per_site }
    }
}

/// Open uploads per site.
#[derive(Debug, Clone, Default)]
pub struct UploadSlots {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// An upload's place among its site's open uploads, given back when dropped.
#[derive(Debug)]
pub struct UploadSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    site: String,
}

impl UploadSlots {
    /// Takes a slot for `site`, or refuses when it already has `max` uploads open.
    pub fn take(&self, site: &str, max: usize) -> Result<UploadSlot, Status> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(site.to_owned()).or_default();
        if *n >= max {
            return Err(Status::resource_exhausted(format!("site `{site}` already has {n} uploads open, the most a site may have (--max-uploads-per-site)")));
        }
        *n += 1;
        Ok(UploadSlot { open: self.open.clone(), site: site.to_owned() })
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.site) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.site);
            }
        }
    }
}

/// The next message of a stream, or an error once it has been silent for `idle`.
pub async fn next_within<T>(stream: &mut tonic::Streaming<T>, idle: Duration, what: &str) -> Result<Option<T>, Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(m) => m,
        Err(_) => Err(Status::deadline_exceeded(format!("{what}: no data for {:.1} s; the stream is closed", idle.as_secs_f64()))),
    }
}

/// A download's chunks (a model, or a delta) as a stream that a producer task fills as the
/// site reads them (one chunk ahead, so memory stays one shared model plus a chunk or two),
/// touching the site's lease every second until the server has taken the last chunk: a
/// large model on a slow link keeps its site in. (Sites also heartbeat while they download.)
/// `bytes` is what the chunks carry, counted once the last one is taken.
pub fn lease_keeping_download(
    handle: FederationHandle,
    client: String,
    chunks: impl Iterator<Item = pb::ModelChunk> + Send + 'static,
    bytes: u64,
) -> DownloadStream {
    let (tx, rx) = mpsc::channel(1);
    let (alive, mut gone) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut chunks = chunks;
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        let mut tx = Some(tx);
        let mut next = chunks.next();
        loop {
            let mut all_sent = false;
            let want = next.is_some();
            let sending = async {
                match (&tx, want) {
                    (Some(tx), true) => tx.reserve().await.ok(),
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                // On a timer, not per chunk: a chunk can wait in a full channel for longer
                // than the lease on a slow enough link.
                _ = beat.tick() => {
                    // A lease that expired anyway shows at the site's next request.
                    let _ = handle.touch(client.clone()).await;
                }
                permit = sending => match (permit, next.take()) {
                    (Some(permit), Some(chunk)) => {
                        permit.send(Ok(chunk));
                        next = chunks.next();
                        all_sent = next.is_none();
                        if all_sent {
                            handle.telemetry().metrics.sent_bytes.inc_by(bytes);
                        }
                    }
                    _ => return, // the site hung up
                },
                // The server dropped the stream: everything was taken, or the site is gone.
                _ = &mut gone => return,
            }
            if all_sent {
                tx = None; // the stream ends once the last chunk is taken
            }
        }
    });
    DownloadStream { chunks: ReceiverStream::new(rx), _alive: alive }
}

/// A download's chunks; dropping it tells the producer the download is over.
#[derive(Debug)]
pub struct DownloadStream {
    chunks: ReceiverStream<Result<pb::ModelChunk, Status>>,
    _alive: oneshot::Sender<()>,
}

impl tokio_stream::Stream for DownloadStream {
    type Item = Result<pb::ModelChunk, Status>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.get_mut().chunks).poll_next(cx)
    }
}
