//! Authenticated but hostile sites: a site that sends what no honest client would must get a
//! clear refusal, be counted, and change nothing; it can neither crash nor stall the
//! federation, nor grow the coordinator's memory beyond its configured limits.

use std::time::Duration;

use flotilla_client::run_site;
use flotilla_coordinator::federation::Policy;
use flotilla_proto::pb;
use flotilla_tests::proxy::{Faults, Proxy};
use flotilla_tests::{RawSite, start_coordinator, synthetic_table, synthetic_task, test_site};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

fn columns() -> Vec<String> {
    ["x1", "x2", "x3", "y"].iter().map(|s| (*s).to_owned()).collect()
}

fn numeric(name: &str, n: u64, sum: f64, sum_squares: f64) -> pb::ColumnStats {
    pb::ColumnStats { name: name.into(), numeric_count: n, sum, sum_squares, ..Default::default() }
}

/// Aggregates an honest site of `n` rows with values in [-1, 1] could send.
fn plausible(n: u64) -> Vec<pb::ColumnStats> {
    vec![numeric("x1", n, 0.0, n as f64 * 0.3), numeric("x2", n, 0.0, n as f64 * 0.3), numeric("x3", n, 3.0 * n as f64, 12.0 * n as f64)]
}

/// The column `refused` of each row of `metrics.csv`.
fn refused_per_round(out: &std::path::Path) -> Vec<usize> {
    let text = std::fs::read_to_string(out.join("metrics.csv")).expect("metrics.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let at = header.iter().position(|h| *h == "refused").expect("a `refused` column");
    lines.map(|l| l.split(',').nth(at).and_then(|v| v.parse().ok()).expect("a count")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_get_an_error_and_the_federation_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 2, min_clients: 1, round_timeout: Duration::from_secs(3), ..Policy::default() };
    let running = start_coordinator(synthetic_task(vec![8]), 3, policy, dir.path()).await;
    let mut mallory = RawSite::join(running.url(), "mallory", &synthetic_table("mallory", 40, 0)).await;

    // A hash whose 12th byte starts a multi-byte character once killed the actor.
    let id = mallory.id.clone();
    let download = |hash: String| pb::DownloadModelRequest { client_id: id.clone(), round: 0, model_hash: hash, ..Default::default() };
    let err = mallory.rpc.download_model(download("aaaaaaaaaaaé".into())).await.expect_err("not a model");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("aaaaaaaaaaaé") && err.message().contains("not the current global model"), "{}", err.message());
    let err = mallory.rpc.download_model(download("é".repeat(100_000))).await.expect_err("too long");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("`model_hash` is 200000 bytes"), "{}", err.message());
    // The same in an update's header, and in a client id.
    let header = pb::UpdateHeader { client_id: mallory.id.clone(), round: 1, base_model_hash: "aaaaaaaaaaaé".into(), ..Default::default() };
    let chunk = pb::UpdateChunk { kind: Some(pb::update_chunk::Kind::Header(header)) };
    let err = mallory.rpc.upload_update(tokio_stream::iter(vec![chunk])).await.expect_err("refused");
    assert!(matches!(err.code(), tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument), "{err:?}");
    let err = mallory.rpc.heartbeat(pb::HeartbeatRequest { client_id: "x".repeat(10_000) }).await.expect_err("too long");
    assert!(err.message().contains("`client_id`"), "{}", err.message());
    mallory.rpc.leave(pb::LeaveRequest { client_id: mallory.id.clone() }).await.unwrap();

    // The coordinator is alive and an honest site takes the federation to its end.
    let report =
        tokio::time::timeout(Duration::from_secs(60), run_site(test_site(running.url(), "north"), synthetic_table("north", 60, 0), CancellationToken::new()))
            .await
            .expect("the federation must not hang")
            .expect("the honest site finishes");
    assert!(report.reason.contains("finished its 2 rounds"), "{}", report.reason);
    let outcome = running.finish(Duration::from_secs(1)).await.expect("the coordinator did not fail").expect("an outcome");
    assert_eq!(outcome.history.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_aggregates_are_refused_counted_and_cannot_reshape_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 1, min_clients: 3, ..Policy::default() };
    let running = start_coordinator(synthetic_task(vec![8]), 3, policy, dir.path()).await;
    let mut north = RawSite::join(running.url(), "north", &synthetic_table("north", 60, 0)).await;
    let mut south = RawSite::join(running.url(), "south", &synthetic_table("south", 60, 60)).await;
    let mut mallory = RawSite::join_only(running.url(), "mallory", 100, columns()).await.unwrap();

    let refusals: Vec<(&str, Vec<pb::ColumnStats>, u64)> = vec![
        // Counts that wrap u64 when added up.
        ("add up to more than", vec![pb::ColumnStats { name: "x1".into(), numeric_count: u64::MAX, missing: 2, ..Default::default() }], 50),
        // Counts above the rows the site declared.
        ("add up to more than", vec![numeric("x1", 51, 0.0, 10.0)], 50),
        // Sums near f64::MAX: two such sites would make the pooled mean infinite.
        ("inconsistent", vec![numeric("x1", 50, 1e308, 1.0)], 50),
        ("sums must be finite", vec![numeric("x1", 50, f64::INFINITY, 1.0)], 50),
        // A vocabulary without bound.
        (
            "categories at this site",
            vec![pb::ColumnStats {
                name: "x1".into(),
                categorical: true,
                categories: (0..5_000).map(|i| (format!("v{i}"), 1)).collect(),
                ..Default::default()
            }],
            100,
        ),
        ("reported twice", vec![numeric("x1", 5, 0.0, 1.0), numeric("x1", 5, 0.0, 1.0)], 50),
        ("training examples", plausible(50), 101),
    ];
    for (why, columns, n) in refusals {
        let err = mallory.report(columns, n).await.expect_err(why);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{why}: {err:?}");
        assert!(err.message().contains(why), "expected `{why}` in `{}`", err.message());
    }
    // One site calls the numeric column x1 categorical: a valid report, but it holds fewer
    // of x1's rows than the two honest sites, so x1 stays numeric for everyone.
    let mut flip = plausible(50);
    flip[0] = pb::ColumnStats {
        name: "x1".into(),
        categorical: true,
        categories: [("a".to_owned(), 25), ("b".to_owned(), 25)].into_iter().collect(),
        ..Default::default()
    };
    mallory.report(flip, 50).await.expect("a consistent report");
    let err = mallory.report(plausible(50), 50).await.expect_err("twice");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");

    let plan = north.rpc.get_plan(pb::GetPlanRequest { client_id: north.id.clone() }).await.unwrap().into_inner();
    assert!(plan.ready);
    let x1 = plan.columns.iter().find(|c| c.name == "x1").expect("x1 in the plan");
    assert!(matches!(x1.kind, Some(pb::column_plan::Kind::Numeric(_))), "one site cannot make x1 categorical: {x1:?}");

    // Round 0 closes once everyone evaluated; its record counts the refusals.
    for site in [&mut north, &mut south, &mut mallory] {
        if let pb::work_item::Kind::Evaluate(e) = site.pull().await {
            site.evaluate(e).await;
        }
    }
    let mut progress = running.handle.progress();
    tokio::time::timeout(Duration::from_secs(20), async {
        while progress.borrow_and_update().last.is_none() {
            progress.changed().await.unwrap();
        }
    })
    .await
    .expect("round 0 closes");
    running.stop(Duration::ZERO).await;
    assert_eq!(refused_per_round(dir.path())[0], 8, "seven refused reports and the duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_joins_and_never_reports_holds_nobody_up() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 2, min_clients: 2, round_timeout: Duration::from_secs(2), lease: Duration::from_secs(3), ..Policy::default() };
    let running = start_coordinator(synthetic_task(vec![8]), 3, policy, dir.path()).await;
    // Joins, keeps its lease, never reports its aggregates.
    let mut silent = RawSite::join_only(running.url(), "silent", 100, columns()).await.unwrap();
    let stop = CancellationToken::new();
    let keepalive = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = silent.heartbeat().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let token = CancellationToken::new();
    let sites: Vec<_> = ["north", "south"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| tokio::spawn(run_site(test_site(running.url(), name), synthetic_table(name, 60, i * 60), token.clone())))
        .collect();
    for s in sites {
        let report = tokio::time::timeout(Duration::from_secs(60), s).await.expect("a silent site must not stall the federation").unwrap().unwrap();
        assert_eq!(report.rounds_trained, 2);
    }
    stop.cancel();
    let _ = keepalive.await;
    let outcome = running.finish(Duration::ZERO).await.unwrap().expect("finished");
    assert!(!outcome.sites.contains_key("silent"), "the silent site never took part: {:?}", outcome.sites);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_bounded_per_site_and_a_silent_upload_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 1, min_clients: 1, lease: Duration::from_millis(1500), ..Policy::default() };
    let running = start_coordinator(synthetic_task(vec![8]), 3, policy, dir.path()).await;
    let mut mallory = RawSite::join(running.url(), "mallory", &synthetic_table("mallory", 40, 0)).await;
    let fit = mallory.until_fit().await;
    let global = mallory.global(&fit).await;
    let header = pb::UpdateHeader {
        client_id: mallory.id.clone(),
        round: fit.round,
        base_model_hash: fit.model_hash.clone(),
        layout_fingerprint: global.layout().fingerprint().to_owned(),
        total_values: global.values().len() as u64,
        num_examples: mallory.declared,
        metrics: Some(pb::TrainMetrics { epochs: 5, ..Default::default() }),
        values_sha256: "0".repeat(64),
        masked: false,
        encoding: 0,
    };
    // Streams that send their header and then nothing: each holds a model-sized buffer.
    let mut open = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::UpdateChunk { kind: Some(pb::update_chunk::Kind::Header(header.clone())) }).await.unwrap();
        let mut rpc = mallory.rpc.clone();
        open.push(tokio::spawn(async move { rpc.upload_update(ReceiverStream::new(rx)).await }));
        senders.push(tx);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let results: Vec<_> = futures_join(open).await;
    let codes: Vec<tonic::Code> = results.iter().map(|r| r.as_ref().expect_err("no upload completes").code()).collect();
    assert_eq!(codes.iter().filter(|c| **c == tonic::Code::ResourceExhausted).count(), 1, "the third upload is refused: {results:?}");
    assert_eq!(codes.iter().filter(|c| **c == tonic::Code::DeadlineExceeded).count(), 2, "the silent two are cut off: {results:?}");
    drop(senders);
    running.stop(Duration::ZERO).await;
}

/// Awaits every handle, each within 20 s.
async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(tokio::time::timeout(Duration::from_secs(20), h).await.expect("a stream must not hang").unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_cannot_raise_its_weight_or_claim_more_examples_than_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 1, min_clients: 2, ..Policy::default() };
    let running = start_coordinator(synthetic_task(vec![8]), 3, policy, dir.path()).await;
    let _north = RawSite::join(running.url(), "north", &synthetic_table("north", 60, 0)).await;
    let mut mallory = RawSite::join_only(running.url(), "mallory", 100, columns()).await.unwrap();
    mallory.report(plausible(50), 50).await.unwrap();
    // Rejoins (a new connection) and declares ten times the examples, to weigh ten times more.
    let mut again = RawSite::join_only(running.url(), "mallory", 1000, columns()).await.unwrap();
    let err = again.report(plausible(500), 500).await.expect_err("a changed weight");
    assert!(err.message().contains("declared 50 training examples when it first reported"), "{}", err.message());
    again.report(plausible(50), 50).await.expect("the same weight as before");
    // An evaluation claiming more examples than the site has rows.
    let e = loop {
        if let pb::work_item::Kind::Evaluate(e) = again.pull().await {
            break e;
        }
    };
    let r = pb::EvaluationResult {
        client_id: again.id.clone(),
        round: e.round,
        model_hash: e.model_hash.clone(),
        num_examples: 1_000_000,
        loss: 0.7,
        accuracy: 0.5,
        auc: None,
        ..Default::default()
    };
    let err = again.rpc.submit_evaluation(r.clone()).await.expect_err("too many examples");
    assert!(err.message().contains("claims 1000000 examples"), "{}", err.message());
    // A validation loss that is not a number, or one without validation rows, would pick the
    // model a run keeps: both are refused.
    for (loss, rows) in [(f64::NAN, 3), (-1.0, 3), (0.5, 0)] {
        let bad = pb::EvaluationResult { num_examples: 5, validation_loss: Some(loss), validation_examples: rows, ..r.clone() };
        let err = again.rpc.submit_evaluation(bad).await.expect_err("hostile validation loss");
        assert!(err.message().contains("validation loss"), "{}", err.message());
    }
    // A join declaring more rows than any site may have.
    let err = RawSite::join_only(running.url(), "huge", u64::MAX, columns()).await.err().expect("refused");
    assert!(err.message().contains("declares 18446744073709551615 rows"), "{}", err.message());
    running.stop(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_model_on_a_slow_link_keeps_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    // About 1.1 M parameters (4.4 MB) through a 1 MB/s link: 4 s a download, with a 1.5 s lease.
    let policy = Policy { rounds: 1, min_clients: 1, lease: Duration::from_millis(1500), ..Policy::default() };
    let running = start_coordinator(synthetic_task(vec![1024, 1024]), 3, policy, dir.path()).await;
    let down = Faults { bytes_per_sec: Some(1_000_000), ..Faults::default() };
    let proxy = Proxy::start(running.addr, Faults::default(), down).await;
    let mut opts = test_site(proxy.url(), "far");
    opts.connect_patience = Duration::from_secs(10);
    let report = tokio::time::timeout(Duration::from_secs(120), run_site(opts, synthetic_table("far", 40, 0), CancellationToken::new()))
        .await
        .expect("the site must not be dropped and rejoin forever")
        .expect("the site finishes");
    assert_eq!((report.rounds_trained, report.evaluations), (1, 2), "{report:?}");
    let outcome = running.finish(Duration::ZERO).await.unwrap().expect("finished");
    assert_eq!(outcome.history[1].clients, 1, "the round used the far site's update");
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_the_state_machine_dies_the_coordinator_says_so_instead_of_finishing_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_coordinator(synthetic_task(vec![8]), 3, Policy { rounds: 1, min_clients: 1, ..Policy::default() }, dir.path()).await;
    running.handle.inject_panic_for_tests().await;
    assert!(!running.wait_done(&CancellationToken::new()).await, "a dead actor is not a finished federation");
    let err = running.finish(Duration::ZERO).await.expect_err("the failure is reported, not swallowed");
    assert!(err.to_string().contains("panicked: fault injected by a test") && err.to_string().contains("--resume"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_the_coordinator_could_not_keep_is_never_reported_as_accepted() {
    use flotilla_coordinator::durable::StateDir;
    use flotilla_coordinator::federation::Federation;
    use flotilla_coordinator::run_dir::RunDir;
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 1, min_clients: 1, ..Policy::default() };
    let state = StateDir::create(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let federation = Federation::new(synthetic_task(vec![8]), 3, policy.clone());
    let running =
        flotilla_coordinator::runner::start_federation(federation, &policy, Some(RunDir::create(dir.path()).unwrap()), Some(state), listener, None).unwrap();
    let mut site = RawSite::join(running.url(), "north", &synthetic_table("north", 40, 0)).await;
    let fit = site.until_fit().await;
    let global = site.global(&fit).await;
    let values = vec![0.001f32; global.values().len()];
    // The disk fails: where the kept updates go is no longer a directory.
    let updates = dir.path().join("state").join("updates");
    std::fs::remove_dir_all(&updates).unwrap();
    std::fs::write(&updates, b"not a directory").unwrap();
    let err = site.upload(&fit, global.layout().fingerprint(), &values).await.expect_err("not kept, so not accepted");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("could not keep the update of site `north` for round 1") && err.message().contains("send it again"), "{}", err.message());
    assert_eq!(running.handle.progress().borrow().last.as_ref().map(|r| r.round), Some(0), "round 1 did not close on an update that is not on disk");
    // The disk is back: the same update, sent again, is kept and accepted.
    std::fs::remove_file(&updates).unwrap();
    std::fs::create_dir(&updates).unwrap();
    site.upload(&fit, global.layout().fingerprint(), &values).await.expect("kept and accepted");
    running.stop(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_federation_refuses_aggregates_that_no_images_have() {
    let dir = tempfile::tempdir().unwrap();
    let task = flotilla_common::Task::mnist_2nn();
    let policy = Policy { rounds: 1, min_clients: 2, ..Policy::default() };
    let running = start_coordinator(task, 3, policy, dir.path()).await;
    let pixels = |n: u64, sum: f64, sq: f64| numeric("pixels", n, sum, sq);
    // A table's columns, a second channel, and pixel moments outside [0, 1] could each move
    // the plan's normalisation (or the model's input width) for every site.
    for (columns, expected) in [
        (vec![numeric("age", 50, 2500.0, 130_000.0)], "the channels [\"pixels\"]"),
        (vec![pixels(50, 6.5, 1.0), numeric("red", 50, 6.5, 1.0)], "the channels [\"pixels\"]"),
        (vec![pixels(50, 60.0, 3600.0)], "cannot sum to 60"),
        (vec![pixels(50, -1.0, 1.0)], "cannot sum to -1"),
    ] {
        let mut site = RawSite::join_only(running.url(), "mallory", 60, vec!["pixels".into()]).await.unwrap();
        let err = site.report(columns, 50).await.expect_err("hostile image aggregates");
        assert!(err.message().contains(expected), "expected `{expected}` in: {}", err.message());
    }
    // An honest image site's aggregates are accepted.
    let mut honest = RawSite::join_only(running.url(), "honest", 60, vec!["pixels".into()]).await.unwrap();
    honest.report(vec![pixels(50, 6.5, 5.0)], 50).await.expect("plausible image aggregates");
    running.stop(Duration::ZERO).await;
}
