//! Compressed updates end to end: the four hospitals federate with int8 and with top-k plus
//! error feedback, learn about as well as uncompressed, and stay reproducible bit for bit
//! (the coordinator decodes before its exact sum; the sites' stochastic rounding is seeded).

use flotilla_common::Task;
use flotilla_common::compress::Codec;
use flotilla_coordinator::scenario::{Scenario, SiteSource};
use flotilla_coordinator::simulate::simulate;
use flotilla_tests::sim_options;

async fn run(codec: Codec, out: &std::path::Path) -> (String, f64) {
    let mut task = Task::hospitals();
    task.compression.update = codec;
    let sim = simulate(sim_options(SiteSource::Scenario(Scenario::Hospitals), task, 42, 10, out)).await.unwrap();
    let last = sim.outcome.history.last().unwrap();
    (sim.outcome.model.hash(), last.accuracy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_federations_learn_and_are_reproducible() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let (plain, plain_accuracy) = run(Codec::F32, dirs[0].path()).await;
    for (i, codec) in [Codec::Int8, Codec::TopK { fraction: 0.05 }].into_iter().enumerate() {
        let (first, accuracy) = run(codec, dirs[1 + 2 * i].path()).await;
        let (second, _) = run(codec, dirs[2 + 2 * i].path()).await;
        assert_eq!(first, second, "{codec}: the same seed gives the same model");
        assert_ne!(first, plain, "{codec}: the codec is in the path");
        assert!(accuracy >= plain_accuracy - 0.05 && accuracy > 0.75, "{codec}: accuracy {accuracy:.3} vs uncompressed {plain_accuracy:.3}");
    }
}

#[test]
fn compression_is_refused_under_secure_aggregation_with_the_reason() {
    let mut task = Task::hospitals();
    task.secure_aggregation = true;
    task.compression.update = Codec::Int8;
    let err = task.validate().unwrap_err().to_string();
    assert!(err.contains("secure aggregation") && err.contains("Z/2^64"), "{err}");
    let toml = Task::hospitals().to_toml().replace("[model]", "[compression]\nupdate = \"topk:0.01\"\n\n[model]");
    assert_eq!(Task::from_toml(&toml, "t").unwrap().compression.update, Codec::TopK { fraction: 0.01 }, "the task file names the codec");
}

/// A site with a state directory keeps its error-feedback residual there: after a run it
/// holds what the last update left out, and a site of another federation does not use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_residual_is_kept_in_the_state_directory() {
    use flotilla_common::compress::ErrorFeedback;
    let (dir, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut task = flotilla_tests::synthetic_task(vec![8]);
    task.compression.update = Codec::TopK { fraction: 0.1 };
    let running = flotilla_tests::start_coordinator(task.clone(), 5, flotilla_tests::test_policy(3, 2), dir.path()).await;
    let token = tokio_util::sync::CancellationToken::new();
    let mut sites = Vec::new();
    for (i, name) in ["north", "south"].into_iter().enumerate() {
        let mut opts = flotilla_tests::test_site(running.url(), name);
        if name == "north" {
            opts.state_dir = Some(state.path().to_owned());
        }
        sites.push(tokio::spawn(flotilla_client::run_site(opts, flotilla_tests::synthetic_table(name, 80, i * 80), token.clone())));
    }
    for s in sites {
        assert_eq!(s.await.unwrap().unwrap().rounds_trained, 3);
    }
    let outcome = running.stop(std::time::Duration::from_secs(1)).await.unwrap();
    let path = state.path().join("residual.safetensors");
    let kept = ErrorFeedback::load(&path).unwrap();
    assert!(kept.norm() > 0.0, "90% of the last update is carried to the next round");
    let layout = outcome.model.layout().clone();
    let zero = flotilla_common::FlatParams::zeros(layout.clone());
    let lineage = format!("{}:{}", task.fingerprint(), layout.fingerprint());
    assert!(kept.compensate(&lineage, &zero).l2_norm() > 0.0, "this federation's lineage finds it");
    assert_eq!(kept.compensate("another federation", &zero).l2_norm(), 0.0);
}

/// Sites that hold the previous global model receive the next one as its difference (the
/// integer difference of the bit patterns, zstd): fewer bytes down, and not one bit of any model changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_downloads_save_bytes_and_change_no_bit() {
    async fn run(full_downloads: bool) -> (String, u64, u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let running = flotilla_tests::start_coordinator(flotilla_tests::synthetic_task(vec![256]), 5, flotilla_tests::test_policy(4, 2), dir.path()).await;
        let telemetry = running.handle.telemetry();
        let token = tokio_util::sync::CancellationToken::new();
        let mut sites = Vec::new();
        for (i, name) in ["north", "south"].into_iter().enumerate() {
            let mut opts = flotilla_tests::test_site(running.url(), name);
            opts.full_downloads = full_downloads;
            sites.push(tokio::spawn(flotilla_client::run_site(opts, flotilla_tests::synthetic_table(name, 80, i * 80), token.clone())));
        }
        for s in sites {
            assert_eq!(s.await.unwrap().unwrap().rounds_trained, 4);
        }
        let m = &telemetry.metrics;
        let counts = (m.sent_bytes.get(), m.delta_downloads.get(), m.delta_saved_bytes.get());
        let outcome = running.stop(std::time::Duration::from_secs(1)).await.unwrap();
        (outcome.model.hash(), counts.0, counts.1, counts.2)
    }
    let (full, full_bytes, none, _) = run(true).await;
    let (delta, delta_bytes, deltas, saved) = run(false).await;
    assert_eq!(delta, full, "a delta download gives back the model bit for bit");
    assert_eq!(none, 0, "a site that asks for full models gets them");
    // Rounds 1..4 each give a new model that both sites evaluate (from the one they trained on).
    assert!(deltas >= 8, "{deltas} delta downloads");
    assert!(saved > 0 && delta_bytes < full_bytes, "{delta_bytes} bytes with deltas, {full_bytes} without");
}
