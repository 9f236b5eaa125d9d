//! Central DP-FedAvg: updates are clipped and noised, and the run reports the ε it spent,
//! equal to what the accountant says for the same parameters.

use flotilla_common::privacy::accountant::{default_orders, epsilon, Step};
use flotilla_common::privacy::DpConfig;
use flotilla_common::Task;
use flotilla_coordinator::federation::Policy;
use flotilla_coordinator::scenario::{Scenario, SiteSource};
use flotilla_coordinator::simulate::{simulate, SimulateOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dp_run_reports_the_epsilon_it_spent_and_still_learns() {
    let dir = tempfile::tempdir().unwrap();
    let mut task = Task::hospitals();
    let dp = DpConfig { clip_norm: 1.0, noise_multiplier: 0.5, delta: 1e-5 };
    task.privacy = Some(dp);
    let rounds = 5;
    let sim = simulate(SimulateOptions {
        source: SiteSource::Scenario(Scenario::Hospitals),
        task,
        seed: 3,
        policy: Policy { rounds, ..Policy::default() },
        out: dir.path().to_owned(),
        progress: false,
        baselines: false,
        tls: false,
        malicious: 0,
        attack_scale: 1.0,
        stragglers: 0.0,
        straggler_epochs: 1,
    })
    .await
    .unwrap();
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
