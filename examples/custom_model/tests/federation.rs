//! TinyNet, a module this crate defines, trained through the stock coordinator's path for
//! custom models (`serve --init-model`): the coordinator only ever sees its layout and values.

use std::sync::Arc;
use std::time::Duration;

use flotilla_client::{SiteOptions, run_site};
use flotilla_common::data::partition::Partition;
use flotilla_common::model::initial::write_initial_model;
use flotilla_coordinator::custom_model::take_initial;
use flotilla_coordinator::federation::{Federation, Policy};
use flotilla_coordinator::runner;
use flotilla_coordinator::scenario::{SiteSource, load_sites};
use flotilla_example_custom_model as example;
use tokio_util::sync::CancellationToken;

const SITES: usize = 3;
const IMAGES: usize = 100;
const ROUNDS: u32 = 2;
const SEED: u64 = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_model_trains_from_its_initial_file_as_it_does_in_process() {
    example::register().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // What `custom-model init` and `serve --init-model` do.
    let mut task = example::task_file().unwrap();
    let initial = example::initial_model(&task, SEED).unwrap();
    assert_eq!(initial.values().len(), 9_098, "TinyNet's parameters for MNIST");
    let path = dir.path().join("init.safetensors");
    write_initial_model(&path, &initial).unwrap();
    let read = take_initial(&mut task, &path).unwrap();
    assert_eq!(read, initial);
    assert_eq!(task.model.initial.as_deref(), Some(initial.hash().as_str()), "the task the sites get is bound to the values");

    let policy = Policy { rounds: ROUNDS, min_clients: SITES, ..Policy::default() };
    let mut federation = Federation::new(task.clone(), SEED, policy.clone());
    let mut other = initial.clone();
    other.values_mut()[0] += 1.0;
    assert!(federation.set_initial_model(Arc::new(other)).unwrap_err().contains("hashes to"), "other values than the task names are refused");
    federation.set_initial_model(Arc::new(initial.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = runner::start_federation(federation, &policy, None, None, listener, None).unwrap();
    let sites = load_sites(&SiteSource::Mnist { clients: SITES, per_site: IMAGES, partition: Partition::Iid }, &task, SEED).unwrap();
    let mut clients = Vec::new();
    for (name, input) in sites {
        let mut opts = SiteOptions::new(running.url(), name);
        opts.heartbeat = Duration::from_millis(300);
        clients.push(tokio::spawn(run_site(opts, input, CancellationToken::new())));
    }
    for c in clients {
        let report = c.await.unwrap().unwrap();
        assert_eq!(report.rounds_trained, ROUNDS);
    }
    let outcome = running.stop(Duration::from_secs(5)).await.expect("the federation finished");
    assert_eq!(outcome.model.layout(), initial.layout());
    assert_ne!(outcome.model.hash(), initial.hash(), "the sites trained it");
    let last = outcome.history.last().unwrap();
    assert!(last.accuracy > 0.3, "above chance (0.1) after {ROUNDS} rounds: {}", last.accuracy);

    // The same federation in one process (mutual TLS, the task's layout, the seeded
    // initialisation, which the initial file holds): the same model, bit for bit.
    let sim = example::simulate(SITES, IMAGES, ROUNDS, SEED, &dir.path().join("sim"), false).await.unwrap();
    assert_eq!(sim.outcome.model.hash(), outcome.model.hash(), "through --init-model or in process, the same model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_without_the_model_refuses_to_train_it_and_says_why() {
    // The stock coordinator's plan and this crate's task, but a site whose process has no
    // module `tiny-net-v2`: it stops before training with the reason.
    example::register().unwrap();
    let mut task = example::task_with_layout(SEED).unwrap();
    task.model.name = Some("tiny-net-v2".into());
    let policy = Policy { rounds: 1, min_clients: 1, lease: Duration::from_secs(2), ..Policy::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = runner::start(task.clone(), SEED, policy, None, listener, None).unwrap();
    let (name, input) = load_sites(&SiteSource::Mnist { clients: 1, per_site: 50, partition: Partition::Iid }, &task, SEED).unwrap().remove(0);
    let err = run_site(SiteOptions::new(running.url(), name), input, CancellationToken::new()).await.unwrap_err().to_string();
    assert!(err.contains("tiny-net-v2") && err.contains("tiny-net") && err.contains("register"), "{err}");
    running.stop(Duration::from_secs(1)).await;
}
