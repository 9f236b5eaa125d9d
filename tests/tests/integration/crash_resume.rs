//! The coordinator as a real process, killed with SIGKILL during training, during an upload
//! and while it aggregates, then restarted with `--resume`: every run completes, no round is
//! repeated or skipped, and the final model is bit-for-bit the one of the run without a crash.
//! The same over mutual TLS (sites must ride out the restart with TLS on), and twice in one
//! round (the updates replayed after the first crash are still there after the second).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use flotilla_client::{ClientTls, SiteReport, run_site};
use flotilla_tests::process::{CoordinatorProcess, KillAt};
use flotilla_tests::proxy::{Faults, Proxy};
use flotilla_tests::{hospital_sites, test_site};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

const ROUNDS: u32 = 3;

fn serve_args(port: u16, out: &Path, resume: bool, pki: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> =
        ["serve", "--scenario", "hospitals", "--min-clients", "4", "--seed", "7", "--lease", "5", "--grace", "600"].iter().map(|s| (*s).to_owned()).collect();
    match pki {
        Some(p) => {
            for (flag, file) in [("--tls-cert", "coordinator.pem"), ("--tls-key", "coordinator.key"), ("--client-ca", "ca.pem")] {
                args.extend([flag.to_owned(), p.join(file).display().to_string()]);
            }
        }
        None => args.push("--insecure".to_owned()),
    }
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

/// The four hospitals, connecting through `url` and patient with a coordinator that restarts;
/// with `pki`, each with its certificate from that folder.
fn start_sites(url: &str, pki: Option<&Path>) -> Vec<tokio::task::JoinHandle<Result<SiteReport, flotilla_client::ClientError>>> {
    let token = CancellationToken::new();
    hospital_sites(7)
        .into_iter()
        .map(|(name, table)| {
            let mut o = test_site(url.to_owned(), &name);
            o.connect_patience = Duration::from_secs(60);
            o.reconnect_patience = Duration::from_secs(60);
            if let Some(p) = pki {
                let read = |f: String| std::fs::read_to_string(p.join(f)).expect("certificate files");
                o.tls = Some(ClientTls { ca_pem: read("ca.pem".into()), cert_pem: read(format!("{name}.pem")), key_pem: read(format!("{name}.key")) });
            }
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

/// Runs a federation of the four hospitals against the real coordinator binary. The
/// coordinator is killed at each of `kills` in turn (a log line of that process) and started
/// again with `--resume`. `slow_up` throttles the sites' uploads so that a kill can land in
/// the middle of one; `tls` runs it all over mutual TLS. Returns the final model's SHA-256,
/// the rounds in `metrics.csv` and each resumed process's "resuming" line.
async fn federation(kills: &[KillAt], slow_up: bool, tls: bool) -> (String, Vec<u32>, Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let pki_dir = dir.path().join("pki");
    let pki = tls.then_some(pki_dir.as_path());
    if tls {
        let sites: Vec<String> = hospital_sites(7).into_iter().map(|(n, _)| n).collect();
        flotilla_common::pki::init_dir(&pki_dir, &sites, &["localhost".to_owned()], &["127.0.0.1".parse().expect("ip")], 1).expect("certificates");
    }
    let port = free_port();
    let up = Faults { bytes_per_sec: slow_up.then_some(24_000), ..Faults::default() };
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port)), up, Faults::default()).await;
    let url = if tls { proxy.url().replace("http://", "https://") } else { proxy.url() };
    let sites = start_sites(&url, pki);
    let mut resumed = Vec::new();
    let mut process = CoordinatorProcess::start(&serve_args(port, &out, false, pki), kills.first().cloned());
    for k in 0..=kills.len() {
        let Some(status) = process.wait_async(Duration::from_secs(120)).await else {
            panic!("coordinator {k} did not end; log:\n{}", process.log().join("\n"));
        };
        if k < kills.len() {
            let at = process.killed_at().unwrap_or_else(|| panic!("kill trigger {k} never fired; log:\n{}", process.log().join("\n")));
            assert!(!status.success(), "killed, not finished: {at}");
            eprintln!("killed at: {at}");
            process = CoordinatorProcess::start(&serve_args(port, &out, true, pki), kills.get(k + 1).cloned());
            continue;
        }
        assert!(status.success(), "the run completes; log:\n{}", process.log().join("\n"));
    }
    for s in sites {
        let report = tokio::time::timeout(Duration::from_secs(30), s).await.expect("site ends").expect("site task").expect("site run");
        assert!(report.reason.contains("finished"), "{}", report.reason);
    }
    if !kills.is_empty() {
        resumed.push(process.log().into_iter().find(|l| l.contains("resuming the saved run")).expect("it resumed rather than started over"));
    }
    proxy.stop();
    let (sha, rounds) = finished(&out);
    (sha, rounds, resumed)
}

static REFERENCE: OnceCell<String> = OnceCell::const_new();

/// The model of the same run without a crash.
async fn reference() -> String {
    REFERENCE
        .get_or_init(|| async {
            let (sha, rounds, _) = federation(&[], false, false).await;
            assert_eq!(rounds, (0..=ROUNDS).collect::<Vec<_>>());
            sha
        })
        .await
        .clone()
}

async fn crash_and_resume(kills: &[KillAt], slow_up: bool, tls: bool) -> Vec<String> {
    let expected = reference().await;
    let (sha, rounds, resumed) = federation(kills, slow_up, tls).await;
    assert_eq!(rounds, (0..=ROUNDS).collect::<Vec<_>>(), "every round once, none repeated or skipped");
    assert_eq!(sha, expected, "the final model equals the crash-free run's, bit for bit");
    resumed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_sites_train_the_coordinator_resumes_to_the_same_model() {
    crash_and_resume(&[KillAt::new(&["training round opened", "round=2"], 1)], false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_an_upload_the_coordinator_resumes_to_the_same_model() {
    crash_and_resume(&[KillAt::new(&["receiving update", "round=2"], 1)], true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_it_aggregates_the_coordinator_resumes_to_the_same_model() {
    // The fourth update of round 2 completes the round: the kill lands while the new global
    // model is computed and written.
    crash_and_resume(&[KillAt::new(&["update accepted", "round=2"], 4)], false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_sites_ride_out_the_restart_and_the_model_is_the_same() {
    crash_and_resume(&[KillAt::new(&["update accepted", "round=2"], 2)], false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_crashes_in_one_round_keep_every_update_and_the_same_model() {
    // Killed after the first update of round 2 is kept, then again after the next one: the
    // third process finds both, so no site is asked twice for the same round.
    let kills = [KillAt::new(&["update accepted", "round=2"], 1), KillAt::new(&["update accepted", "round=2"], 1)];
    let resumed = crash_and_resume(&kills, false, true).await;
    // At least the two updates whose acceptance triggered a kill are kept; a third may have
    // reached the disk in the moment between the log line and the SIGKILL.
    let kept: u32 = resumed[0].split("kept_updates=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(kept >= 2, "both kept updates survive: {}", resumed[0]);
}
