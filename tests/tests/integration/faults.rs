//! Fault injection: sites behind a proxy that cuts, corrupts or slows their traffic, sites
//! that crash at random, and updates sent twice or too late. Every run completes, and where
//! the faults only cost time the model is bit-for-bit the one of the run without them.

use std::time::Duration;

use flotilla_client::{SiteReport, run_site};
use flotilla_coordinator::federation::{Outcome, Policy};
use flotilla_tests::proxy::{Faults, Proxy};
use flotilla_tests::{start_coordinator, synthetic_table, synthetic_task, test_site};
use tokio_util::sync::CancellationToken;

/// What a run with a faulty link for `alice` produced.
struct Faulty {
    model: String,
    rejected: usize,
    cuts: usize,
    corrupted: usize,
}

/// Three sites, two rounds, a model of 67,329 parameters (269 kB) so that byte 150,000 of
/// alice's traffic falls inside her first upload (upward) or her first download (downward).
async fn three_sites(up: Faults, down: Faults) -> Faulty {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 2, min_clients: 3, lease: Duration::from_secs(5), ..Policy::default() };
    let running = start_coordinator(synthetic_task(vec![256, 256]), 3, policy, dir.path()).await;
    let proxy = Proxy::start(running.addr, up, down).await;
    let token = CancellationToken::new();
    let sites: Vec<_> = [("alice", proxy.url()), ("bob", running.url()), ("carol", running.url())]
        .into_iter()
        .enumerate()
        .map(|(i, (name, url))| tokio::spawn(run_site(test_site(url, name), synthetic_table(name, 60, i * 60), token.clone())))
        .collect();
    for s in sites {
        let report = tokio::time::timeout(Duration::from_secs(60), s).await.expect("site ends").unwrap().expect("site finishes");
        assert!(report.reason.contains("finished"), "{}", report.reason);
    }
    let outcome = running.stop(Duration::from_secs(1)).await.expect("federation done");
    let faulty =
        Faulty { model: outcome.model.hash(), rejected: outcome.history.iter().map(|r| r.rejected).sum(), cuts: proxy.cuts(), corrupted: proxy.corrupted() };
    proxy.stop();
    faulty
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_corrupted_transfers_are_retried_and_the_model_is_unchanged() {
    let clean = three_sites(Faults::default(), Faults::default()).await;
    assert_eq!((clean.rejected, clean.cuts), (0, 0));

    let at = Some(150_000);
    let cut_up = three_sites(Faults { cut_at: at, ..Faults::default() }, Faults::default()).await;
    assert_eq!(cut_up.cuts, 1, "alice's connection was cut mid-upload");
    assert!(
        cut_up.rejected >= 1,
        "the broken upload is counted as refused (rejected {}, cuts {}, clean {})",
        cut_up.rejected,
        cut_up.cuts,
        cut_up.model == clean.model
    );
    assert_eq!(cut_up.model, clean.model, "alice retrained and re-sent the same update");

    let cut_down = three_sites(Faults::default(), Faults { cut_at: at, ..Faults::default() }).await;
    assert_eq!(cut_down.cuts, 1, "alice's connection was cut mid-download");
    assert_eq!(cut_down.model, clean.model);

    let corrupt = three_sites(Faults { corrupt_at: at, ..Faults::default() }, Faults::default()).await;
    assert_eq!(corrupt.corrupted, 1, "one bit of alice's upload was flipped");
    assert!(corrupt.rejected >= 1, "the corrupted update is refused (checksum), never aggregated");
    assert_eq!(corrupt.model, clean.model, "and the model is as if it never happened");
}

async fn finish(sites: Vec<tokio::task::JoinHandle<Result<SiteReport, flotilla_client::ClientError>>>) -> Vec<SiteReport> {
    let mut reports = Vec::new();
    for s in sites {
        let r = tokio::time::timeout(Duration::from_secs(120), s).await.expect("site ends").unwrap().expect("site finishes");
        assert!(r.reason.contains("finished"), "{}", r.reason);
        reports.push(r);
    }
    reports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_slower_than_the_deadline_is_left_out_and_the_rounds_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy {
        rounds: 3,
        min_clients: 3,
        min_fit_results: 2,
        lease: Duration::from_secs(5),
        round_timeout: Duration::from_secs(1),
        grace: Duration::from_secs(60),
        ..Policy::default()
    };
    let running = start_coordinator(synthetic_task(vec![8]), 4, policy, dir.path()).await;
    // Every packet to and from slow takes 1.5 s: each of its answers misses the deadline.
    let lag = Faults { delay: Duration::from_millis(1500), ..Faults::default() };
    let proxy = Proxy::start(running.addr, lag, lag).await;
    let token = CancellationToken::new();
    let sites = [("slow", proxy.url()), ("fast1", running.url()), ("fast2", running.url())]
        .into_iter()
        .enumerate()
        .map(|(i, (name, url))| tokio::spawn(run_site(test_site(url, name), synthetic_table(name, 60, i * 60), token.clone())))
        .collect();
    finish(sites).await;
    let Outcome { history, .. } = running.stop(Duration::from_secs(1)).await.expect("federation done");
    assert_eq!(history.len(), 4, "rounds 0 to 3 all closed");
    for r in &history[1..] {
        assert_eq!((r.clients, r.selected, r.failed), (2, 3, 1), "round {} went on without the slow site: {r:?}", r.round);
    }
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_of_sites_crashing_in_every_round_lose_no_round() {
    let dir = tempfile::tempdir().unwrap();
    let rounds = 20;
    let policy = Policy {
        rounds,
        min_clients: 10,
        min_fit_results: 3,
        lease: Duration::from_secs(1),
        grace: Duration::from_millis(300),
        round_timeout: Duration::from_secs(10),
        ..Policy::default()
    };
    let running = start_coordinator(synthetic_task(vec![8]), 5, policy, dir.path()).await;
    let token = CancellationToken::new();
    let sites = (0..10)
        .map(|i| {
            let name = format!("site{i}");
            let mut o = test_site(running.url(), &name);
            o.dropout = Some((0.3, Duration::from_millis(1200)));
            tokio::spawn(run_site(o, synthetic_table(&name, 40, i * 40), token.clone()))
        })
        .collect();
    let reports = finish(sites).await;
    let Outcome { history, .. } = running.stop(Duration::from_secs(1)).await.expect("federation done");
    assert_eq!(history.iter().map(|r| r.round).collect::<Vec<_>>(), (0..=rounds).collect::<Vec<_>>(), "no round lost or repeated");
    let crashes: u32 = reports.iter().map(|r| r.crashes).sum();
    let failed: usize = history.iter().map(|r| r.failed).sum();
    assert!(crashes >= 20, "about 30% of the ~100 selections crash: {crashes}");
    assert!(failed >= 20, "crashed sites count as failed in their rounds: {failed}");
    for r in &history[1..] {
        assert!(r.clients >= 3, "round {} aggregated at least min_fit_results updates: {r:?}", r.round);
        assert_ne!(r.model_hash, history[r.round as usize - 1].model_hash, "round {} changed the model", r.round);
    }
}

/// Alice and bob train honestly; carol (by hand) sends a fixed small update for round 1, and
/// with `replay` sends it again at once (a duplicate) and once more after the round closed
/// (reordered, late). Returns the model and carol's refusals.
async fn with_carol(replay: bool) -> (String, Vec<tonic::Code>) {
    use flotilla_proto::pb::work_item::Kind;
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 2, min_clients: 3, lease: Duration::from_secs(5), ..Policy::default() };
    let running = start_coordinator(synthetic_task(vec![8]), 6, policy, dir.path()).await;
    let token = CancellationToken::new();
    let sites: Vec<_> = ["alice", "bob"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| tokio::spawn(run_site(test_site(running.url(), name), synthetic_table(name, 60, i * 60), token.clone())))
        .collect();
    let mut carol = flotilla_tests::RawSite::join(running.url(), "carol", &synthetic_table("carol", 60, 120)).await;
    let mut refusals = Vec::new();
    let mut sent: Option<(flotilla_proto::pb::FitWork, String, Vec<f32>)> = None;
    loop {
        match carol.pull().await {
            Kind::Evaluate(e) => {
                if replay
                    && e.round == 1
                    && let Some((fit, fp, values)) = &sent
                {
                    refusals.push(carol.upload(fit, fp, values).await.expect_err("a late update is refused").code());
                }
                carol.evaluate(e).await;
            }
            Kind::Fit(fit) => {
                let global = carol.global(&fit).await;
                let fp = global.layout().fingerprint().to_owned();
                let values = vec![0.001f32 * fit.round as f32; global.values().len()];
                carol.upload(&fit, &fp, &values).await.expect("carol's update is accepted");
                if replay && fit.round == 1 {
                    refusals.push(carol.upload(&fit, &fp, &values).await.expect_err("a duplicate is refused").code());
                }
                sent = Some((fit, fp, values));
            }
            Kind::Wait(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Kind::Done(_) => break,
        }
    }
    finish(sites).await;
    let outcome = running.stop(Duration::from_secs(1)).await.expect("federation done");
    (outcome.model.hash(), refusals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_late_updates_are_refused_and_counted_once() {
    let (once, none) = with_carol(false).await;
    assert!(none.is_empty());
    let (replayed, refusals) = with_carol(true).await;
    // The duplicate is refused as such (or as late, if the round closed in between).
    assert!(matches!(refusals[0], tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition), "{refusals:?}");
    assert_eq!(refusals[1], tonic::Code::FailedPrecondition, "the late update: {refusals:?}");
    assert_eq!(replayed, once, "carol's update counted once, bit for bit");
}
