//! Central DP-FedAvg: updates are clipped and noised, and the run reports the ε it spent,
//! equal to what the accountant says for the same parameters.

use flotilla_common::Task;
use flotilla_common::privacy::DpConfig;
use flotilla_common::privacy::accountant::{Step, default_orders, epsilon};
use flotilla_coordinator::scenario::{Scenario, SiteSource};
use flotilla_coordinator::simulate::simulate;
use flotilla_tests::sim_options;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dp_run_reports_the_epsilon_it_spent_and_still_learns() {
    let dir = tempfile::tempdir().unwrap();
    let mut task = Task::hospitals();
    let dp = DpConfig { clip_norm: 1.0, noise_multiplier: 0.5, delta: 1e-5, adaptive: None, local: false, distributed: false };
    task.privacy = Some(dp);
    let rounds = 5;
    // The coordinator's DP seed pins the noise (a reproducible experiment): without it each run
    // draws fresh noise, and five rounds of four sites may or may not lower the loss.
    let mut opts = sim_options(SiteSource::Scenario(Scenario::Hospitals), task, 3, rounds, dir.path());
    opts.policy.dp_seed = Some(3);
    let sim = simulate(opts).await.unwrap();
    let h = &sim.outcome.history;
    let eps: Vec<f64> = h[1..].iter().map(|r| r.epsilon.unwrap()).collect();
    assert!(eps.windows(2).all(|w| w[1] > w[0]), "ε grows every round: {eps:?}");
    // All four hospitals train every round: sampling rate 1.
    let expected = epsilon(&[Step { q: 1.0, sigma: 0.5, count: u64::from(rounds) }], 1e-5, default_orders()).unwrap().epsilon;
    assert!((eps[eps.len() - 1] - expected).abs() < 1e-9);
    assert_eq!(sim.summary["epsilon"].as_f64().unwrap(), eps[eps.len() - 1]);
    assert!(h[rounds as usize].loss < h[0].loss, "the noised model still learns: {:.3} -> {:.3}", h[0].loss, h[rounds as usize].loss);
    let metrics = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert!(metrics.lines().next().unwrap().split(',').any(|c| c == "epsilon"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_local_dp_sites_noise_their_own_updates_with_secret_randomness() {
    let run = |out: std::path::PathBuf| async move {
        let mut task = Task::hospitals();
        task.privacy = Some(DpConfig { clip_norm: 1.0, noise_multiplier: 0.5, delta: 1e-5, adaptive: None, local: true, distributed: false });
        simulate(sim_options(SiteSource::Scenario(Scenario::Hospitals), task, 3, 3, &out)).await.unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (run(dir.path().join("a")).await, run(dir.path().join("b")).await);
    let expected = epsilon(&[Step { q: 1.0, sigma: 0.5, count: 3 }], 1e-5, default_orders()).unwrap().epsilon;
    assert!((a.outcome.history[3].epsilon.unwrap() - expected).abs() < 1e-9, "each site's own mechanism, 3 rounds at rate 1");
    // The noise is drawn on the sites from their own secret randomness, not from the
    // federation seed the coordinator knows: the same seed gives different models (the last
    // round's: the kept one may be the initial model when noise costs more than training gives).
    assert_ne!(a.outcome.last_model.hash(), b.outcome.last_model.hash());
    assert_eq!(a.outcome.history[0].model_hash, b.outcome.history[0].model_hash, "same seed, same start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_stops_training_when_its_own_budget_would_be_exceeded() {
    use flotilla_client::run_site;
    use flotilla_tests::{start_coordinator, synthetic_table, synthetic_task, test_site};
    use tokio_util::sync::CancellationToken;

    let mut task = synthetic_task(vec![8]);
    task.privacy = Some(DpConfig { clip_norm: 1.0, noise_multiplier: 2.0, delta: 1e-5, adaptive: None, local: false, distributed: false });
    // The budget that exactly 2 rounds at q = 1, z = 2 fit in.
    let two = epsilon(&[Step { q: 1.0, sigma: 2.0, count: 2 }], 1e-5, default_orders()).unwrap().epsilon;
    let dir = tempfile::tempdir().unwrap();
    let running = start_coordinator(task, 1, flotilla_tests::test_policy(4, 2), dir.path()).await;
    let mut careful = test_site(running.url(), "careful");
    careful.budget = Some((two + 1e-9, 1e-5));
    let token = CancellationToken::new();
    let a = tokio::spawn(run_site(careful, synthetic_table("careful", 60, 0), token.clone()));
    let b = tokio::spawn(run_site(test_site(running.url(), "open"), synthetic_table("open", 60, 60), token.clone()));
    let careful = a.await.unwrap().unwrap();
    assert_eq!(careful.rounds_trained, 2);
    assert!(careful.reason.contains("privacy budget") && careful.reason.contains("round 3"), "{}", careful.reason);
    assert_eq!(b.await.unwrap().unwrap().rounds_trained, 4, "the other site carries on");
    running.stop(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_clipping_moves_the_clip_norm_towards_the_update_norms() {
    use flotilla_common::privacy::dp_fedavg::AdaptiveClip;
    let dir = tempfile::tempdir().unwrap();
    let mut task = Task::hospitals();
    // Start far below the update norms: most updates are clipped, so the norm must grow.
    // Four hospitals: the default σ_b = 4/20 is too small for z = 0.5, so it is set explicitly.
    let adaptive = AdaptiveClip { count_stddev: Some(1.0), ..AdaptiveClip::default() };
    task.privacy = Some(DpConfig { clip_norm: 0.01, noise_multiplier: 0.5, delta: 1e-5, adaptive: Some(adaptive), local: false, distributed: false });
    let mut opts = sim_options(SiteSource::Scenario(Scenario::Hospitals), task, 3, 6, dir.path());
    opts.policy.dp_seed = Some(3);
    let sim = simulate(opts).await.unwrap();
    let norms: Vec<f64> = sim.outcome.history[1..].iter().map(|r| r.clip_norm.unwrap()).collect();
    assert!(norms[norms.len() - 1] > 0.01 * 1.5, "the clip norm grew from 0.01: {norms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_dp_noise_is_secret_from_the_sites_and_reproducible_only_with_the_coordinators_seed() {
    let run = |out: std::path::PathBuf, dp_seed: Option<u64>| async move {
        let mut task = Task::hospitals();
        task.privacy = Some(DpConfig { clip_norm: 1.0, noise_multiplier: 0.5, delta: 1e-5, adaptive: None, local: false, distributed: false });
        let mut opts = sim_options(SiteSource::Scenario(Scenario::Hospitals), task, 3, 2, &out);
        opts.policy.dp_seed = dp_seed;
        let sim = simulate(opts).await.unwrap();
        let records = std::fs::read_to_string(out.join("summary.json")).unwrap() + &std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        (sim.outcome.model.hash(), sim.outcome.history[0].model_hash.clone(), records)
    };
    let dir = tempfile::tempdir().unwrap();
    // Everything the sites receive is the same in both runs (task, federation seed, data, so
    // the same updates): if it determined the noise, the models would be equal. They are not.
    let (a, a0, records) = run(dir.path().join("a"), None).await;
    let (b, b0, _) = run(dir.path().join("b"), None).await;
    assert_eq!(a0, b0, "same seed, same start");
    assert_ne!(a, b, "the noise comes from randomness no site can know");
    // The coordinator's own seed makes an experiment reproducible, and only that seed does.
    let (c, _, with_seed) = run(dir.path().join("c"), Some(8_675_309)).await;
    let (d, _, _) = run(dir.path().join("d"), Some(8_675_309)).await;
    let (e, _, _) = run(dir.path().join("e"), Some(8_675_310)).await;
    assert_eq!(c, d);
    assert_ne!(c, e);
    for text in [records, with_seed] {
        assert!(!text.contains("8675309") && !text.contains("dp_seed") && !text.contains("noise_seed"), "the DP seed is in no record");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_level_dp_lands_each_hospital_on_its_target_epsilon_with_secret_noise() {
    // DP-SGD at every site, planned for ε = 2 per record over 3 rounds: each hospital picks its
    // own noise for its own rows and sampling rate, and its accountant ends at (just under) 2.
    let run = |out: std::path::PathBuf| async move {
        let mut task = Task::hospitals();
        task.record_privacy =
            Some(flotilla_common::privacy::RecordDp { clip_norm: 1.0, noise_multiplier: None, target_epsilon: Some(2.0), rounds: Some(3), delta: 1e-5 });
        simulate(sim_options(SiteSource::Scenario(Scenario::Hospitals), task, 3, 3, &out)).await.unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (run(dir.path().join("a")).await, run(dir.path().join("b")).await);
    let per_site = a.outcome.record_epsilon.clone();
    assert_eq!(per_site.len(), 4, "{per_site:?}");
    for (site, e) in &per_site {
        assert!(*e <= 2.0 && *e > 1.9, "{site}: ε per record {e}");
    }
    let reported: Vec<f64> = a.outcome.history[1..].iter().map(|r| r.record_epsilon.unwrap()).collect();
    assert!(reported.windows(2).all(|w| w[1] > w[0]), "ε grows with every round's steps: {reported:?}");
    assert!(a.summary["sites"]["Cleveland"]["record_epsilon"].as_f64().is_some());
    // The sampling and the noise come from each site's secret randomness, not from the
    // federation seed: the same seed gives different models.
    assert_ne!(a.outcome.model.hash(), b.outcome.model.hash());
    assert_eq!(a.outcome.history[0].model_hash, b.outcome.history[0].model_hash);
}
