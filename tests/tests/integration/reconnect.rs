//! Sites ride out a coordinator that goes away: they retry with backoff and jitter, rejoin
//! under the same name when it comes back, and give up with an error when it never does.

use std::time::Duration;

use flotilla_client::run_site;
use flotilla_coordinator::federation::Policy;
use flotilla_coordinator::run_dir::RunDir;
use flotilla_coordinator::runner;
use flotilla_tests::{synthetic_table, synthetic_task, test_site};
use tokio_util::sync::CancellationToken;

fn policy(rounds: u32) -> Policy {
    Policy { rounds, min_clients: 1, lease: Duration::from_secs(5), ..Policy::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_rejoins_a_restarted_coordinator_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first = runner::start(synthetic_task(vec![8]), 1, policy(10_000), Some(RunDir::create(&dir.path().join("a")).unwrap()), listener, None).unwrap();
    let mut opts = test_site(first.url(), "north");
    opts.reconnect_patience = Duration::from_secs(60);
    let site = tokio::spawn(run_site(opts, synthetic_table("north", 60, 0), CancellationToken::new()));

    // Let the first federation get going, then take it away mid-run.
    let mut progress = first.handle.progress();
    let started = async {
        while progress.borrow_and_update().last.as_ref().is_none_or(|r| r.round < 2) {
            progress.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), started).await.expect("round 2 of the first federation");
    tokio::time::timeout(Duration::from_secs(30), first.stop(Duration::ZERO)).await.expect("the first coordinator stops");

    // A new coordinator on the same address: the site must find it and rejoin.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let second = runner::start(synthetic_task(vec![8]), 1, policy(2), Some(RunDir::create(&dir.path().join("b")).unwrap()), listener, None).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), site).await.expect("the site must not hang").unwrap().unwrap();
    assert!(report.reason.contains("finished its 2 rounds"), "{}", report.reason);
    assert!(report.rounds_trained >= 4, "trained in both federations: {}", report.rounds_trained);
    let outcome = tokio::time::timeout(Duration::from_secs(30), second.stop(Duration::from_secs(1))).await.expect("stops").unwrap();
    assert_eq!(outcome.history.last().unwrap().clients, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_gives_up_when_the_coordinator_never_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = runner::start(synthetic_task(vec![8]), 1, policy(10_000), Some(RunDir::create(dir.path()).unwrap()), listener, None).unwrap();
    let mut opts = test_site(running.url(), "north");
    opts.reconnect_patience = Duration::from_secs(2);
    let site = tokio::spawn(run_site(opts, synthetic_table("north", 60, 0), CancellationToken::new()));
    let mut progress = running.handle.progress();
    let started = async {
        while progress.borrow_and_update().last.is_none() {
            progress.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), started).await.expect("round 0 closes");
    tokio::time::timeout(Duration::from_secs(30), running.stop(Duration::ZERO)).await.expect("the coordinator stops");
    let result = tokio::time::timeout(Duration::from_secs(60), site).await.expect("the site must give up, not hang").unwrap();
    let err = result.unwrap_err();
    // It gave up because the coordinator stayed unreachable (a transport error), not for
    // anything the coordinator said.
    let unreachable = matches!(err, flotilla_client::ClientError::Connect { .. })
        || matches!(err.code(), Some(tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled));
    assert!(unreachable, "{err:?}");
    assert!(!matches!(err, flotilla_client::ClientError::Refused { .. }), "a coordinator that went away did not refuse the site: {err:?}");
}
