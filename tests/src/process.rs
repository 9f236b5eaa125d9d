//! The coordinator as a real process, for crash tests: started from the built binary, its log
//! read line by line, and killed with SIGKILL the moment a chosen line appears.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `target/<profile>/flotilla-coordinator`, next to the directory of the running test.
/// `cargo test --workspace` builds it (the coordinator crate has integration tests).
pub fn coordinator_binary() -> PathBuf {
    binary("flotilla-coordinator")
}

/// `target/<profile>/<name>`: one of the workspace's binaries (both crates have integration
/// tests, so `cargo test --workspace` builds both).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first", bin.display());
    bin
}

/// When to kill: at the `nth` (1-based) log line that contains every one of `needles`.
#[derive(Debug, Clone)]
pub struct KillAt {
    pub needles: Vec<String>,
    pub nth: usize,
}

impl KillAt {
    pub fn new(needles: &[&str], nth: usize) -> Self {
        Self { needles: needles.iter().map(|s| (*s).to_owned()).collect(), nth }
    }
}

/// A running coordinator process.
#[derive(Debug)]
pub struct CoordinatorProcess {
    child: Arc<Mutex<Child>>,
    log: Arc<Mutex<Vec<String>>>,
    killed: Arc<Mutex<Option<String>>>,
}

impl CoordinatorProcess {
    /// Starts `flotilla-coordinator <args>` with debug logs (no colours); `kill_at` arms the trigger.
    pub fn start(args: &[String], kill_at: Option<KillAt>) -> Self {
        let child = Command::new(coordinator_binary())
            .args(args)
            .args(["--log", "info,flotilla_coordinator=debug"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flotilla-coordinator");
        let child = Arc::new(Mutex::new(child));
        let stderr = child.lock().expect("child").stderr.take().expect("piped stderr");
        let (log, killed) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(None)));
        let (c, l, k) = (child.clone(), log.clone(), killed.clone());
        std::thread::spawn(move || {
            let mut seen = 0;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                if let Some(at) = &kill_at
                    && k.lock().expect("killed").is_none()
                    && at.needles.iter().all(|n| line.contains(n.as_str()))
                {
                    seen += 1;
                    if seen == at.nth {
                        // SIGKILL: no handler runs, nothing is flushed or closed cleanly.
                        let _ = c.lock().expect("child").kill();
                        *k.lock().expect("killed") = Some(line.clone());
                    }
                }
                l.lock().expect("log").push(line);
            }
        });
        Self { child, log, killed }
    }

    /// Waits for the process to end (killed or finished), up to `limit`.
    pub fn wait(&self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.lock().expect("child").try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Like [`Self::wait`], without blocking the async runtime the sites run on.
    pub async fn wait_async(&self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.lock().expect("child").try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// The log line at which the process was killed, if the trigger fired.
    pub fn killed_at(&self) -> Option<String> {
        self.killed.lock().expect("killed").clone()
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Drops terminal colour codes (`ESC [ ... m`), in case the logger emits them anyway.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
