//! Strategies end to end: poisoned updates wreck FedAvg but not the robust rules, and a
//! strategy that cannot hold its guarantee for the cohort is refused before round 1.

use flotilla_common::Task;
use flotilla_common::data::partition::Partition;
use flotilla_common::strategy::StrategyName;
use flotilla_coordinator::scenario::SiteSource;
use flotilla_coordinator::simulate::{SimulateError, SimulateOptions, simulate};
use flotilla_tests::sim_options;

fn banks_split(dir: &std::path::Path) -> SiteSource {
    // German credit, 10 banks, IID (the bundled file, written out for --data).
    let path = dir.join("germancredit.csv");
    std::fs::write(&path, flotilla_coordinator::scenario::GERMAN_CREDIT_CSV).unwrap();
    SiteSource::Csv { file: path, clients: 10, partition: Partition::Iid }
}

async fn run(strategy: StrategyName, byzantine: usize, malicious: usize) -> Result<f64, SimulateError> {
    let dir = tempfile::tempdir().unwrap();
    let mut task = Task::banks();
    task.strategy.name = strategy;
    task.strategy.byzantine = byzantine;
    task.strategy.trim_fraction = 0.2;
    let sim = simulate(SimulateOptions { malicious, attack_scale: 10.0, ..sim_options(banks_split(dir.path()), task, 11, 8, &dir.path().join("run")) }).await?;
    Ok(sim.outcome.history.last().unwrap().accuracy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robust_rules_survive_two_sign_flipping_banks_that_break_fedavg() {
    let clean = run(StrategyName::Fedavg, 0, 0).await.unwrap();
    let poisoned = run(StrategyName::Fedavg, 0, 2).await.unwrap();
    assert!(poisoned < clean - 0.2, "FedAvg should collapse under attack: clean {clean:.3}, poisoned {poisoned:.3}");
    for (rule, f) in
        [(StrategyName::Median, 0), (StrategyName::TrimmedMean, 0), (StrategyName::Krum, 2), (StrategyName::MultiKrum, 2), (StrategyName::Bulyan, 1)]
    {
        let acc = run(rule, f, 2).await.unwrap();
        assert!(acc > clean - 0.05, "{rule} under attack: {acc:.3} vs clean FedAvg {clean:.3}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_byzantine_condition_is_refused_at_start() {
    let err = run(StrategyName::Bulyan, 2, 0).await.unwrap_err().to_string();
    assert!(err.contains("4f + 3 = 11") && err.contains("cohort is 10"), "{err}");
    let err = run(StrategyName::Krum, 4, 0).await.unwrap_err().to_string();
    assert!(err.contains("2f + 3 = 11"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_and_scaffold_state_is_checkpointed_and_scaffold_learns() {
    for (name, lr, tensors) in [(StrategyName::Fedadam, 0.001, vec!["strategy.m", "strategy.v"]), (StrategyName::Scaffold, 0.05, vec!["strategy.control"])] {
        let dir = tempfile::tempdir().unwrap();
        let mut task = Task::hospitals();
        task.strategy.name = name;
        task.training.learning_rate = lr;
        task.training.server_learning_rate = if name == StrategyName::Fedadam { 0.01 } else { 1.0 };
        let sim = simulate(sim_options(SiteSource::Scenario(flotilla_coordinator::scenario::Scenario::Hospitals), task, 5, 5, dir.path())).await.unwrap();
        let h = &sim.outcome.history;
        assert!(
            h[5].accuracy >= 0.75 && h[5].loss < h[0].loss,
            "{name} learns: {:.3} -> {:.3}, loss {:.3} -> {:.3}",
            h[0].accuracy,
            h[5].accuracy,
            h[0].loss,
            h[5].loss
        );
        let bytes = std::fs::read(dir.path().join("checkpoint-strategy.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for t in tensors {
            assert_eq!(st.tensor(t).unwrap().shape(), &[sim.outcome.model.values().len()], "{name}: {t}");
        }
    }
}
