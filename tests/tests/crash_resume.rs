//! The coordinator as a real process, killed with SIGKILL during training, during an upload
//! and while it aggregates, then restarted with `--resume`: every run completes, no round is
//! repeated or skipped, and the final model is bit-for-bit the one of the run without a crash.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use flotilla_client::{run_site, SiteReport};
use flotilla_tests::process::{CoordinatorProcess, KillAt};
use flotilla_tests::proxy::{Faults, Proxy};
use flotilla_tests::{hospital_sites, test_site};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

const ROUNDS: u32 = 3;

fn serve_args(port: u16, out: &Path, resume: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve", "--insecure", "--scenario", "hospitals", "--min-clients", "4", "--seed", "7", "--lease", "5", "--grace", "600",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(["--listen".to_owned(), format!("127.0.0.1:{port}"), "--rounds".to_owned(), ROUNDS.to_string()]);
    args.extend(["--out".to_owned(), out.display().to_string()]);
    if resume {
        args.push("--resume".to_owned());
    }
    args
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The four hospitals, connecting through `url` and patient with a coordinator that restarts.
fn start_sites(url: &str) -> Vec<tokio::task::JoinHandle<Result<SiteReport, flotilla_client::ClientError>>> {
    let token = CancellationToken::new();
    hospital_sites(7)
        .into_iter()
        .map(|(name, table)| {
            let mut o = test_site(url.to_owned(), &name);
            o.connect_patience = Duration::from_secs(60);
            o.reconnect_patience = Duration::from_secs(60);
            tokio::spawn(run_site(o, table, token.clone()))
        })
        .collect()
}

/// What a finished run left: the final model's SHA-256 and the rounds in `metrics.csv`.
fn finished(out: &Path) -> (String, Vec<u32>) {
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary.json")).expect("json");
    let mut rounds = Vec::new();
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).expect("metrics.csv");
    for line in metrics.lines().skip(1) {
        rounds.push(line.split(',').next().and_then(|r| r.parse().ok()).expect("a round number"));
    }
    (summary["model_file_sha256"].as_str().expect("model_file_sha256").to_owned(), rounds)
}

/// Runs a federation of the four hospitals against the real coordinator binary. With `kill`,
/// the coordinator is killed at that log line and started again with `--resume`. `slow_up`
/// throttles the sites' uploads so that a kill can land in the middle of one.
async fn federation(kill: Option<KillAt>, slow_up: bool) -> (String, Vec<u32>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let port = free_port();
    let up = Faults { bytes_per_sec: slow_up.then_some(24_000), ..Faults::default() };
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port)), up, Faults::default()).await;
    let first = CoordinatorProcess::start(&serve_args(port, &out, false), kill.clone());
    let sites = start_sites(&proxy.url());
    let Some(status) = first.wait_async(Duration::from_secs(90)).await else {
        panic!("the first coordinator did not end; log:\n{}", first.log().join("\n"));
    };
    if kill.is_some() {
        let at = first.killed_at().unwrap_or_else(|| panic!("the kill trigger never fired; log:\n{}", first.log().join("\n")));
        assert!(!status.success(), "killed, not finished: {at}");
        let second = CoordinatorProcess::start(&serve_args(port, &out, true), None);
        let status = second.wait_async(Duration::from_secs(120)).await.expect("the resumed coordinator ends");
        assert!(status.success(), "the resumed run completes; log:\n{}", second.log().join("\n"));
        let resumed = second.log().into_iter().find(|l| l.contains("resuming the saved run")).expect("it resumed rather than started over");
        eprintln!("killed at: {at}\nresumed: {resumed}");
    } else {
        assert!(status.success(), "log:\n{}", first.log().join("\n"));
    }
    for s in sites {
        let report = tokio::time::timeout(Duration::from_secs(30), s).await.expect("site ends").expect("site task").expect("site run");
        assert!(report.reason.contains("finished"), "{}", report.reason);
    }
    proxy.stop();
    finished(&out)
}

static REFERENCE: OnceCell<String> = OnceCell::const_new();

/// The model of the same run without a crash.
async fn reference() -> String {
    REFERENCE
        .get_or_init(|| async {
            let (sha, rounds) = federation(None, false).await;
            assert_eq!(rounds, (0..=ROUNDS).collect::<Vec<_>>());
            sha
        })
        .await
        .clone()
}

async fn crash_and_resume(kill: KillAt, slow_up: bool) {
    let expected = reference().await;
    let (sha, rounds) = federation(Some(kill), slow_up).await;
    assert_eq!(rounds, (0..=ROUNDS).collect::<Vec<_>>(), "every round once, none repeated or skipped");
    assert_eq!(sha, expected, "the final model equals the crash-free run's, bit for bit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_sites_train_the_coordinator_resumes_to_the_same_model() {
    crash_and_resume(KillAt::new(&["training round opened", "round=2"], 1), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_an_upload_the_coordinator_resumes_to_the_same_model() {
    crash_and_resume(KillAt::new(&["receiving update", "round=2"], 1), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_it_aggregates_the_coordinator_resumes_to_the_same_model() {
    // The fourth update of round 2 completes the round: the kill lands while the new global
    // model is computed and written.
    crash_and_resume(KillAt::new(&["update accepted", "round=2"], 4), false).await;
}
