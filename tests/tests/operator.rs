//! What an operator sees from `serve` (the real binary, with in-process sites): a site whose
//! updates are refused stays in the federation, a run that never accepted an update fails,
//! `--resume` of a finished run says it is complete instead of listening, and sites the
//! coordinator refuses are in its log.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_client::{ClientError, SiteReport, run_site};
use flotilla_tests::process::{CoordinatorProcess, coordinator_binary};
use flotilla_tests::{hospital_sites, test_site};
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn serve_args(port: u16, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["serve", "--insecure", "--scenario", "hospitals", "--seed", "7", "--lease", "5"].iter().map(|s| (*s).to_owned()).collect();
    args.extend(["--listen".to_owned(), format!("127.0.0.1:{port}"), "--out".to_owned(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Serves the four hospitals (`--min-clients 4`) to the end; returns whether `serve`
/// succeeded, its log and what each site reported.
async fn serve_hospitals(out: &Path, extra: &[&str]) -> (bool, Vec<String>, Vec<Result<SiteReport, ClientError>>) {
    let port = free_port();
    let mut args = vec!["--min-clients", "4"];
    args.extend(extra);
    let coordinator = CoordinatorProcess::start(&serve_args(port, out, &args), None);
    let token = CancellationToken::new();
    let sites: Vec<_> = hospital_sites(7)
        .into_iter()
        .map(|(name, table)| {
            let mut o = test_site(format!("http://127.0.0.1:{port}"), &name);
            o.connect_patience = Duration::from_secs(30);
            tokio::spawn(run_site(o, table, token.clone()))
        })
        .collect();
    let status = coordinator.wait_async(Duration::from_secs(120)).await.unwrap_or_else(|| panic!("serve did not end; log:\n{}", coordinator.log().join("\n")));
    let mut reports = Vec::new();
    for s in sites {
        reports.push(tokio::time::timeout(Duration::from_secs(30), s).await.expect("site ends").expect("site task"));
    }
    (status.success(), coordinator.log(), reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_updates_cost_a_round_not_the_site_and_a_run_without_any_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let start = Instant::now();
    let (ok, log, reports) = serve_hospitals(dir.path(), &["--rounds", "2", "--max-update-norm", "0.0001"]).await;
    for r in &reports {
        let r = r.as_ref().expect("a site whose update is refused stays and ends with the federation");
        assert_eq!((r.refused_updates, r.evaluations), (2, 3), "refused in both rounds, evaluated every model: {r:?}");
    }
    assert!(!ok, "a federation that never accepted an update must not succeed");
    assert!(log.iter().any(|l| l.contains("without a usable model") && l.contains("no round accepted an update")), "{}", log.join("\n"));
    // No round waited for its deadline (600 s): the refused sites failed their round at once.
    assert!(start.elapsed() < Duration::from_secs(60), "took {:?}", start.elapsed());
    let metrics = std::fs::read_to_string(dir.path().join("metrics.csv")).expect("metrics.csv");
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    for row in metrics.lines().skip(2) {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!((f[4], f[6], f[7], f[9]), ("0", "4", "4", "4"), "clients, failed, rejected, evaluated: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_finished_run_says_it_is_complete_and_exits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ok, log, reports) = serve_hospitals(dir.path(), &["--rounds", "1"]).await;
    assert!(ok && reports.iter().all(Result::is_ok), "{}", log.join("\n"));
    let summary = std::fs::read(dir.path().join("summary.json")).expect("summary.json");
    let args = serve_args(free_port(), dir.path(), &["--min-clients", "4", "--rounds", "1", "--resume"]);
    let out = tokio::task::spawn_blocking(move || {
        let mut child =
            Command::new(coordinator_binary()).args(&args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("start");
        let start = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("serve --resume of a finished run is still running after 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("output")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("is complete") && stdout.contains("1 rounds"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dir.path().join("summary.json")).expect("summary.json"), summary, "the finished run is left as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_refused_by_the_allow_list_is_in_the_coordinators_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let coordinator = CoordinatorProcess::start(&serve_args(port, dir.path(), &["--allow-site", "Cleveland", "--rounds", "1"]), None);
    let (name, table) = hospital_sites(7).into_iter().find(|(n, _)| n == "Hungary").expect("Hungary");
    let mut o = test_site(format!("http://127.0.0.1:{port}"), &name);
    o.connect_patience = Duration::from_secs(30);
    let err = run_site(o, table, CancellationToken::new()).await.expect_err("Hungary is not on the allow list");
    assert!(err.to_string().contains("allow list"), "{err}");
    let start = Instant::now();
    while !coordinator.log().iter().any(|l| l.contains("refused a site") && l.contains("Hungary")) {
        assert!(start.elapsed() < Duration::from_secs(10), "the refusal is not in the log:\n{}", coordinator.log().join("\n"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = coordinator.log().into_iter().find(|l| l.contains("refused a site")).unwrap_or_default();
    assert!(line.contains("WARN") && line.contains("peer=127.0.0.1"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_with_a_certificate_from_another_ca_is_in_the_coordinators_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ours, theirs) = (dir.path().join("pki"), dir.path().join("other-pki"));
    let local = [std::net::IpAddr::from([127, 0, 0, 1])];
    flotilla_common::pki::init_dir(&ours, &["Hungary".to_owned()], &["localhost".to_owned()], &local, 2).expect("our pki");
    flotilla_common::pki::init_dir(&theirs, &["Hungary".to_owned()], &["localhost".to_owned()], &local, 2).expect("their pki");
    let port = free_port();
    let file = |d: &Path, f: &str| d.join(f).display().to_string();
    let mut args: Vec<String> = ["serve", "--scenario", "hospitals", "--rounds", "1"].iter().map(|s| (*s).to_owned()).collect();
    args.extend(["--listen".to_owned(), format!("127.0.0.1:{port}"), "--out".to_owned(), file(dir.path(), "run")]);
    args.extend(["--tls-cert".to_owned(), file(&ours, "coordinator.pem"), "--tls-key".to_owned(), file(&ours, "coordinator.key")]);
    args.extend(["--client-ca".to_owned(), file(&ours, "ca.pem")]);
    let coordinator = CoordinatorProcess::start(&args, None);
    // The site trusts our coordinator, but its own certificate is from another CA.
    let tls = flotilla_client::ClientTls {
        ca_pem: std::fs::read_to_string(ours.join("ca.pem")).expect("ca"),
        cert_pem: std::fs::read_to_string(theirs.join("Hungary.pem")).expect("cert"),
        key_pem: std::fs::read_to_string(theirs.join("Hungary.key")).expect("key"),
    };
    let (name, table) = hospital_sites(7).into_iter().find(|(n, _)| n == "Hungary").expect("Hungary");
    let mut o = test_site(format!("https://127.0.0.1:{port}"), &name);
    o.tls = Some(tls);
    o.connect_patience = Duration::from_secs(30);
    o.reconnect_patience = Duration::from_secs(1);
    let err = run_site(o, table, CancellationToken::new()).await.expect_err("a certificate from another CA is refused");
    let start = Instant::now();
    while !coordinator.log().iter().any(|l| l.contains("refused a site at the TLS handshake")) {
        assert!(start.elapsed() < Duration::from_secs(10), "the refusal of `{err}` is not in the log:\n{}", coordinator.log().join("\n"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = coordinator.log().into_iter().find(|l| l.contains("refused a site at the TLS handshake")).unwrap_or_default();
    assert!(line.contains("WARN") && line.contains("peer=127.0.0.1") && line.to_lowercase().contains("certificate"), "{line}");
}
