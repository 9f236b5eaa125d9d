//! A fault-injecting TCP proxy for tests: sites connect to it instead of the coordinator, and
//! it can slow, delay, cut or corrupt the traffic in either direction.
//!
//! Byte offsets count over all connections through the proxy, in one direction ("up" is site
//! to coordinator), so a test can aim a fault at the first large transfer: with a model of
//! a few hundred kilobytes, offset 200,000 upward lands inside the first upload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the proxy does to the traffic of one direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Bandwidth limit in bytes per second.
    pub bytes_per_sec: Option<u64>,
    /// Latency added before each forwarded read.
    pub delay: Duration,
    /// Cut the connection carrying this byte (once).
    pub cut_at: Option<u64>,
    /// Flip the lowest bit of this byte (once).
    pub corrupt_at: Option<u64>,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    cuts: Arc<AtomicUsize>,
    corrupted: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Direction {
    faults: Faults,
    offset: AtomicU64,
    cut_done: AtomicBool,
    corrupt_done: AtomicBool,
}

impl Proxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, up: Faults, down: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cuts, corrupted, shutdown) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), CancellationToken::new());
        let up = Arc::new(Direction { faults: up, ..Direction::default() });
        let down = Arc::new(Direction { faults: down, ..Direction::default() });
        let (c, k, stop) = (cuts.clone(), corrupted.clone(), shutdown.clone());
        let task = tokio::spawn(async move {
            loop {
                let (site, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = stop.cancelled() => return,
                };
                let Ok(coordinator) = TcpStream::connect(upstream).await else { continue }; // like a refused connection
                let (up, down, c, k, stop) = (up.clone(), down.clone(), c.clone(), k.clone(), stop.child_token());
                tokio::spawn(async move {
                    let _ = site.set_nodelay(true);
                    let _ = coordinator.set_nodelay(true);
                    let (site_r, site_w) = site.into_split();
                    let (coord_r, coord_w) = coordinator.into_split();
                    let done = stop.clone();
                    tokio::select! {
                        _ = pump(site_r, coord_w, &up, &c, &k) => {}
                        _ = pump(coord_r, site_w, &down, &c, &k) => {}
                        _ = done.cancelled() => {}
                    }
                    // Dropping both halves closes the connection both ways.
                });
            }
        });
        Proxy { addr, cuts, corrupted, shutdown, task }
    }

    /// The URL sites use to reach the coordinator through the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    /// Bytes corrupted so far.
    pub fn corrupted(&self) -> usize {
        self.corrupted.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection.
    pub fn stop(self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// Copies one direction, applying its faults; returns when either side closes or the cut hits.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, dir: &Direction, cuts: &AtomicUsize, corrupted: &AtomicUsize) {
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !dir.faults.delay.is_zero() {
            tokio::time::sleep(dir.faults.delay).await;
        }
        let start = dir.offset.fetch_add(n as u64, Ordering::SeqCst);
        let hits = |at: Option<u64>| at.filter(|&a| a >= start && a < start + n as u64).map(|a| (a - start) as usize);
        if let Some(i) = hits(dir.faults.corrupt_at)
            && !dir.corrupt_done.swap(true, Ordering::SeqCst)
        {
            buf[i] ^= 1;
            corrupted.fetch_add(1, Ordering::SeqCst);
        }
        let mut len = n;
        let mut cut = false;
        if let Some(i) = hits(dir.faults.cut_at)
            && !dir.cut_done.swap(true, Ordering::SeqCst)
        {
            len = i;
            cut = true;
        }
        if to.write_all(&buf[..len]).await.is_err() {
            return;
        }
        if cut {
            cuts.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if let Some(rate) = dir.faults.bytes_per_sec {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate.max(1) as f64)).await;
        }
    }
}
