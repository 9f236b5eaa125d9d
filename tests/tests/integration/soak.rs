//! A bounded soak: 200 in-process sites, 50 rounds, 10% of the selected sites crashing in
//! every round. It must lose no round, and memory must stay flat. Slow, so not in the default
//! run: `scripts/soak.sh` (or `cargo test -p flotilla-tests --test integration soak:: -- --ignored --nocapture`).

use std::time::{Duration, Instant};

use flotilla_client::run_site;
use flotilla_coordinator::federation::Policy;
use flotilla_tests::{start_coordinator, synthetic_table, synthetic_task, test_site};
use tokio_util::sync::CancellationToken;

/// A field of `/proc/self/status` in kB (Linux), e.g. `VmRSS` or `VmHWM` (peak).
fn status_kb(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: run with scripts/soak.sh"]
async fn two_hundred_sites_fifty_rounds_ten_percent_dropouts() {
    let (sites, rounds) = (200usize, 50u32);
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy {
        rounds,
        min_clients: sites,
        min_fit_results: 100,
        lease: Duration::from_secs(2),
        grace: Duration::from_millis(500),
        round_timeout: Duration::from_secs(60),
        ..Policy::default()
    };
    let start = Instant::now();
    let running = start_coordinator(synthetic_task(vec![64, 32]), 11, policy, dir.path()).await;
    let token = CancellationToken::new();
    let handles: Vec<_> = (0..sites)
        .map(|i| {
            let name = format!("site{i:03}");
            let mut o = test_site(running.url(), &name);
            o.heartbeat = Duration::from_millis(500);
            o.dropout = Some((0.1, Duration::from_millis(2500)));
            tokio::spawn(run_site(o, synthetic_table(&name, 50, i * 50), token.clone()))
        })
        .collect();
    let mut progress = running.handle.progress();
    let mut rss = Vec::new();
    loop {
        let p = progress.borrow_and_update().clone();
        if let Some(last) = &p.last
            && rss.last().is_none_or(|(r, _)| *r != last.round)
        {
            rss.push((last.round, status_kb("VmRSS").unwrap_or(0)));
            eprintln!(
                "round {:>2}: clients {:>3}, failed {:>2}, accuracy {:.3}, {:.1} s, RSS {} MiB",
                last.round,
                last.clients,
                last.failed,
                last.accuracy,
                last.seconds,
                rss.last().map_or(0, |x| x.1) / 1024
            );
        }
        if p.done || progress.changed().await.is_err() {
            break;
        }
    }
    let mut crashes = 0;
    for h in handles {
        let r = h.await.unwrap().expect("every site finishes");
        crashes += r.crashes;
    }
    let outcome = running.stop(Duration::from_secs(2)).await.expect("federation done");
    let history = outcome.history;
    assert_eq!(history.iter().map(|r| r.round).collect::<Vec<_>>(), (0..=rounds).collect::<Vec<_>>(), "no round lost");
    let at = |round: u32| rss.iter().find(|(r, _)| *r == round).map_or(0, |x| x.1);
    let (early, late, peak) = (at(10), at(rounds), status_kb("VmHWM").unwrap_or(0));
    let failed: usize = history.iter().map(|r| r.failed).sum();
    eprintln!(
        "soak: {sites} sites, {rounds} rounds in {:.1} s; {crashes} simulated crashes, {failed} failed selections; \
         RSS after round 10 {} MiB, after round {rounds} {} MiB, peak {} MiB; final accuracy {:.3}",
        start.elapsed().as_secs_f64(),
        early / 1024,
        late / 1024,
        peak / 1024,
        history.last().map_or(f64::NAN, |r| r.accuracy)
    );
    assert!(crashes > 0 && failed > 0, "the dropouts happened");
    // Flat: the last round holds no more than a quarter above round 10 (allocator noise).
    assert!(late <= early + early / 4, "memory grew from {early} kB to {late} kB");
}
