//! Images end to end: MNIST cut into sites as the FedAvg paper does, the 2NN and a CNN
//! federated in-process, and a site that reads its own IDX files as `flotilla-client` does.

use flotilla_client::run_site;
use flotilla_common::Task;
use flotilla_common::data::partition::Partition;
use flotilla_common::site::SiteInput;
use flotilla_common::task::ModelKind;
use flotilla_coordinator::scenario::{SiteSource, load_sites};
use flotilla_coordinator::simulate::simulate;
use flotilla_tests::{sim_options, start_coordinator, test_policy, test_site};
use tokio_util::sync::CancellationToken;

/// A small MNIST federation of `clients` sites of `per_site` images, 3 rounds; its final
/// model's hash and the pooled test accuracy of its last round.
async fn short_federation(task: Task, clients: usize, per_site: usize, out: &std::path::Path) -> (String, f64) {
    let source = SiteSource::Mnist { clients, per_site, partition: Partition::Iid };
    let sim = simulate(sim_options(source, task, 7, 3, out)).await.unwrap();
    let last = sim.outcome.history.last().unwrap();
    (sim.outcome.model.hash(), last.accuracy)
}

fn small(mut task: Task) -> Task {
    // More test images per site than the paper's 5%, so that the accuracy means something.
    task.data.test_fraction = 0.2;
    task.training.local_epochs = 2;
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_mnist_federation_with_the_2nn_learns_and_is_reproducible() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let task = small(Task::mnist_2nn());
    let (first, accuracy) = short_federation(task.clone(), 4, 150, dirs[0].path()).await;
    let (second, _) = short_federation(task, 4, 150, dirs[1].path()).await;
    assert_eq!(first, second, "the same seed gives the same model");
    assert!(accuracy > 0.6, "ten classes, chance is 0.1: accuracy {accuracy:.3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_mnist_federation_with_a_cnn_learns_and_is_reproducible() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // The paper's CNN with fewer filters and units, on fewer images, so that a debug build
    // trains it in seconds (convolutions are the slow part of CPU training).
    let mut task = small(Task::mnist_cnn());
    assert_eq!(task.model.kind, ModelKind::Cnn);
    (task.model.filters, task.model.hidden, task.training.local_epochs) = (vec![2, 4], vec![16], 1);
    let (first, accuracy) = short_federation(task.clone(), 2, 100, dirs[0].path()).await;
    let (second, _) = short_federation(task, 2, 100, dirs[1].path()).await;
    assert_eq!(first, second, "the same seed gives the same model");
    assert!(accuracy > 0.4, "ten classes, chance is 0.1: accuracy {accuracy:.3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_read_their_own_idx_files_and_the_coordinator_holds_out_mnists_test_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut task = small(Task::mnist_2nn());
    task.training.local_epochs = 1;
    let sites = load_sites(&SiteSource::Mnist { clients: 2, per_site: 100, partition: Partition::Shards(2) }, &task, 3).unwrap();
    let classes = task.data.label.classes.clone().unwrap();
    let running = start_coordinator(task.clone(), 3, test_policy(2, 2), dir.path()).await;
    let mut handles = Vec::new();
    for (name, input) in sites {
        let SiteInput::Images(images) = input else { panic!("MNIST sites hold images") };
        // As `flotilla-coordinator split` writes them and `flotilla-client --data` reads them.
        let path = dir.path().join(format!("{name}-images-idx3-ubyte.gz"));
        images.write_idx(&path, &dir.path().join(format!("{name}-labels-idx1-ubyte.gz")), &classes).unwrap();
        assert!(SiteInput::looks_like_images(&path));
        let input = SiteInput::image_files(&path).unwrap();
        assert_eq!(input.len(), 100, "counted without decoding");
        let opts = test_site(running.url(), &name);
        handles.push(tokio::spawn(run_site(opts, input, CancellationToken::new())));
    }
    for h in handles {
        let report = h.await.unwrap().unwrap();
        assert_eq!(report.rounds_trained, 2, "{report:?}");
    }
    let outcome = running.finish(std::time::Duration::ZERO).await.unwrap().expect("finished");
    assert_eq!(outcome.shape.inputs, 784, "the image is the input, whatever the plan's width");
    assert_eq!(outcome.plan.columns.len(), 1, "one channel's mean and deviation: {:?}", outcome.plan.columns);
    assert_eq!(outcome.history.last().unwrap().clients, 2);
    // The model file scores MNIST's own test images as `flotilla-client evaluate` does.
    flotilla_coordinator::run_dir::write_final(dir.path(), &task, &outcome, &serde_json::json!({})).unwrap();
    let model = flotilla_common::predict::Model::load(&dir.path().join("model.safetensors")).unwrap();
    let test =
        flotilla_common::data::images::ImageSet::read(&flotilla_coordinator::scenario::mnist_test_images().unwrap(), task.data.images.unwrap(), &classes)
            .unwrap();
    assert_eq!(test.len(), 10_000);
    let first: Vec<usize> = (0..1000).collect();
    let e = model.evaluate_images(&test.subset(&first, "t10k".into()), flotilla_common::train::Backend::Ndarray).unwrap();
    assert!(e.examples == 1000 && e.accuracy > 0.15, "above chance (0.1) with two sites of about two digits each, two rounds: {e:?}");
    let table = flotilla_tests::synthetic_table("csv", 40, 0);
    assert!(model.evaluate(&table, flotilla_common::train::Backend::Ndarray).unwrap_err().to_string().contains("this model classifies images"));
}

#[test]
fn a_table_task_refuses_images_and_an_image_task_refuses_tables() {
    let sites = load_sites(&SiteSource::Mnist { clients: 2, per_site: 20, partition: Partition::Iid }, &Task::mnist_2nn(), 1).unwrap();
    let err = flotilla_common::site::PreparedSite::from_input("a", &sites[0].1, &Task::hospitals(), 1, 5).unwrap_err().to_string();
    assert!(err.contains("holds images, and this task trains on a table"), "{err}");
    let table = flotilla_tests::synthetic_table("b", 40, 0);
    let err = flotilla_common::site::PreparedSite::new("b", &table, &Task::mnist_2nn(), 1).unwrap_err().to_string();
    assert!(err.contains("is a table, and this task trains on images"), "{err}");
}

#[test]
fn augmentation_adds_transformed_training_images_and_leaves_the_test_split_alone() {
    let mut task = Task::mnist_2nn();
    task.data.test_fraction = 0.2;
    let aug = &mut task.data.augmentation;
    (aug.image_copies, aug.crop_padding, aug.rotation_degrees) = (2, 2, 10.0);
    task.validate().unwrap();
    let sites = load_sites(&SiteSource::Mnist { clients: 2, per_site: 50, partition: Partition::Iid }, &task, 1).unwrap();
    let prepared = flotilla_common::site::PreparedSite::from_input("a", &sites[0].1, &task, 1, 5).unwrap();
    let plan = flotilla_common::data::Plan::combine(&[&prepared.stats]);
    let data = prepared.encode(&plan, &task, 1).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (3 * prepared.train.len(), prepared.test.len()));
    let n = data.train.n_features;
    assert_ne!(data.train.features[..prepared.train.len() * n], data.train.features[prepared.train.len() * n..2 * prepared.train.len() * n], "copies differ");
    // Refused where it cannot apply, or where a copy of a record would count as another record.
    let mut table = Task::hospitals();
    table.data.augmentation.flip = true;
    assert!(table.validate().unwrap_err().to_string().contains("transform images; this task has none"));
    task.data.augmentation.crop_padding = 28;
    assert!(task.validate().unwrap_err().to_string().contains("out of itself"));
}
