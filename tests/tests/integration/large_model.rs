//! A model far beyond tonic's 4 MiB message limit makes full round trips.

use std::time::Duration;

use flotilla_client::{SiteOptions, run_site};
use flotilla_coordinator::federation::Policy;
use flotilla_tests::{start_coordinator, synthetic_table, synthetic_task};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_model_goes_down_and_its_update_comes_up() {
    // 3 inputs → 4100 → 4100 → 1: 16.83 M parameters, 67.3 MB of f32 (over 64 MiB).
    let task = synthetic_task(vec![4100, 4100]);
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 1, min_clients: 2, lease: Duration::from_secs(60), ..Policy::default() };
    let running = start_coordinator(task, 3, policy, dir.path()).await;
    let token = CancellationToken::new();
    let a = tokio::spawn(run_site(SiteOptions::new(running.url(), "a"), synthetic_table("a", 40, 0), token.clone()));
    let b = tokio::spawn(run_site(SiteOptions::new(running.url(), "b"), synthetic_table("b", 40, 40), token.clone()));
    assert_eq!(a.await.unwrap().unwrap().rounds_trained, 1);
    assert_eq!(b.await.unwrap().unwrap().rounds_trained, 1);
    let outcome = running.stop(Duration::from_secs(1)).await.unwrap();
    assert!(outcome.model.values().len() * 4 > 64 << 20, "the model must exceed 64 MiB");
    let r = &outcome.history[1];
    assert_eq!((r.clients, r.evaluated), (2, 2), "{r:?}");
    assert_ne!(outcome.history[0].model_hash, r.model_hash, "the aggregated update changed the model");
}
