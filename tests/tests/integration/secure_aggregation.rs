//! Secure aggregation over the network: the model matches plain FedAvg within the fixed-point
//! error, plain updates are refused, a site that vanishes after sending its keys is handled,
//! and central DP on top reports its ε.

use std::time::Duration;

use flotilla_client::run_site;
use flotilla_common::Task;
use flotilla_common::privacy::accountant::default_orders;
use flotilla_common::privacy::{DpConfig, SkellamStep};
use flotilla_coordinator::federation::Policy;
use flotilla_coordinator::scenario::{Scenario, SiteSource};
use flotilla_coordinator::simulate::simulate;
use flotilla_proto::pb::work_item::Kind;
use flotilla_tests::{RawSite, sim_options, start_coordinator, synthetic_table, synthetic_task, test_site};
use tokio_util::sync::CancellationToken;

async fn hospitals(secure: bool, dp: Option<DpConfig>) -> flotilla_coordinator::simulate::Simulation {
    let dir = tempfile::tempdir().unwrap();
    let mut task = Task::hospitals();
    task.secure_aggregation = secure;
    task.privacy = dp;
    simulate(sim_options(SiteSource::Scenario(Scenario::Hospitals), task, 5, 3, dir.path())).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_securely_aggregated_model_is_fedavg_within_the_fixed_point_error() {
    let (plain, secure) = (hospitals(false, None).await, hospitals(true, None).await);
    let diff = plain.outcome.model.values().iter().zip(secure.outcome.model.values()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "largest parameter difference after 3 rounds: {diff}");
    assert!(diff > 0.0, "fixed point rounds a little: the two runs did take different paths");
    for (p, s) in plain.outcome.history.iter().zip(&secure.outcome.history) {
        assert_eq!(p.clients, s.clients, "round {}: every hospital's input is in the sum", p.round);
        assert!((p.accuracy - s.accuracy).abs() < 0.02, "round {}: {} vs {}", p.round, p.accuracy, s.accuracy);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_central_dp_the_sites_clip_and_the_coordinator_noises_the_unmasked_sum() {
    let dp = DpConfig { clip_norm: 1.0, noise_multiplier: 0.5, delta: 1e-5, adaptive: None, local: false, distributed: false };
    let sim = hospitals(true, Some(dp)).await;
    let last = sim.outcome.history.last().unwrap();
    assert!(last.epsilon.is_some_and(|e| e > 0.0), "{last:?}");
    assert_eq!(last.clients, 4);
}

/// Three honest sites and `mallory`, who sends her keys and then vanishes (or, with `plain`,
/// tries to send a plain update instead).
async fn with_mallory(plain: bool) -> (flotilla_coordinator::federation::Outcome, Option<tonic::Status>) {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 1, min_clients: 4, lease: Duration::from_millis(1500), ..Policy::default() };
    let mut task = synthetic_task(vec![8]);
    task.secure_aggregation = true;
    let running = start_coordinator(task, 8, policy, dir.path()).await;
    let token = CancellationToken::new();
    let sites: Vec<_> = ["alice", "bob", "carol"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| tokio::spawn(run_site(test_site(running.url(), name), synthetic_table(name, 60, i * 60), token.clone())))
        .collect();
    let mut mallory = RawSite::join(running.url(), "mallory", &synthetic_table("mallory", 60, 180)).await;
    let mut refused = None;
    loop {
        match mallory.pull().await {
            Kind::Evaluate(e) => mallory.evaluate(e).await,
            Kind::Fit(fit) => {
                let global = mallory.global(&fit).await;
                if plain {
                    let zeros = vec![0.0f32; global.values().len()];
                    refused = mallory.upload(&fit, global.layout().fingerprint(), &zeros).await.err();
                } else {
                    let mut rng = rand::rng();
                    let (_, keys) = flotilla_common::secagg::Client::new("mallory", &mut rng);
                    let req = flotilla_proto::pb::SecAggRequest {
                        client_id: mallory.id.clone(),
                        round: fit.round,
                        step: Some(flotilla_proto::pb::sec_agg_request::Step::Keys(flotilla_common::wire::keys_to_pb(&keys, None))),
                    };
                    mallory.rpc.sec_agg(req).await.unwrap();
                }
                break; // and vanish
            }
            Kind::Wait(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Kind::Done(_) => break,
        }
    }
    for s in sites {
        tokio::time::timeout(Duration::from_secs(60), s).await.expect("site ends").unwrap().unwrap();
    }
    (running.stop(Duration::from_secs(1)).await.unwrap(), refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_vanishing_after_its_keys_is_unmasked_away_and_plain_updates_are_refused() {
    let (outcome, _) = with_mallory(false).await;
    let round = &outcome.history[1];
    assert_eq!(round.clients, 3, "the three honest inputs are in the sum: {round:?}");
    assert_ne!(outcome.history[1].model_hash, outcome.history[0].model_hash, "and the model moved");

    let (outcome, refused) = with_mallory(true).await;
    let status = refused.expect("a plain update is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("secure aggregation"), "{}", status.message());
    assert_eq!(outcome.history[1].clients, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_inflates_its_hidden_weight_makes_the_round_fail_loudly_not_the_model_wrong() {
    // Under secure aggregation no one sees a site's weight; mallory claims 1000 times hers.
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 2, min_clients: 4, lease: Duration::from_millis(1500), ..Policy::default() };
    let mut task = synthetic_task(vec![8]);
    task.secure_aggregation = true;
    let running = start_coordinator(task, 8, policy, dir.path()).await;
    let token = CancellationToken::new();
    let sites: Vec<_> = ["alice", "bob", "carol", "mallory"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let mut o = test_site(running.url(), name);
            if name == "mallory" {
                o.attack = Some(flotilla_client::Attack::InflateWeight { factor: 1000 });
            }
            tokio::spawn(run_site(o, synthetic_table(name, 60, i * 60), token.clone()))
        })
        .collect();
    for s in sites {
        tokio::time::timeout(Duration::from_secs(60), s).await.expect("site ends").unwrap().unwrap();
    }
    let outcome = running.stop(Duration::from_secs(1)).await.unwrap();
    for round in &outcome.history[1..] {
        assert_eq!(round.model_hash, outcome.history[0].model_hash, "the model is kept, never aggregated with a forged weight: {round:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_the_hospitals_sign_their_keys_and_every_input_gets_in() {
    // simulate's sites hold certificates of the run's CA: each signs its round keys and checks
    // the others' before sealing shares to them.
    let dir = tempfile::tempdir().unwrap();
    let mut task = Task::hospitals();
    task.secure_aggregation = true;
    let mut opts = sim_options(SiteSource::Scenario(Scenario::Hospitals), task, 5, 2, dir.path());
    opts.tls = true;
    let sim = simulate(opts).await.unwrap();
    for round in &sim.outcome.history[1..] {
        assert_eq!(round.clients, 4, "every signed input is in the sum: {round:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_distributed_dp_the_sites_noise_the_sum_and_the_coordinator_adds_nothing() {
    // The sites add integer Skellam shares under the masks. The coordinator's DP seed is pinned:
    // if it drew the noise, two runs would give the same model; the sites' secret noise makes
    // them differ.
    let run = |out: std::path::PathBuf| async move {
        let mut task = Task::hospitals();
        task.secure_aggregation = true;
        task.privacy = Some(DpConfig { clip_norm: 1.0, noise_multiplier: 0.5, delta: 1e-5, adaptive: None, local: false, distributed: true });
        let mut opts = sim_options(SiteSource::Scenario(Scenario::Hospitals), task, 5, 2, &out);
        opts.policy.dp_seed = Some(1);
        simulate(opts).await.unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (run(dir.path().join("a")).await, run(dir.path().join("b")).await);
    assert_ne!(a.outcome.model.hash(), b.outcome.model.hash(), "the noise is the sites', not the coordinator's seed's");
    for round in &a.outcome.history[1..] {
        assert_eq!(round.clients, 4, "the noisy sum passes the range check: {round:?}");
    }
    // The accountant counts the four survivors' Skellam shares (threshold 3) at rate 1.
    let dim = a.outcome.model.values().len();
    let step = flotilla_common::privacy::distributed::release(0.5, 1.0, dim, 3, 4);
    let expected = flotilla_common::privacy::epsilon_with_skellam(&[], &[SkellamStep { count: 2, ..step }], 1e-5, default_orders()).unwrap().epsilon;
    assert!((a.outcome.history[2].epsilon.unwrap() - expected).abs() < 1e-9, "{:?} vs {expected}", a.outcome.history[2].epsilon);
}
