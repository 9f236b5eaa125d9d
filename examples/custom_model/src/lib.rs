//! Your own burn model in a Flotilla federation.
//!
//! [`TinyNet`] is defined in this crate, not in Flotilla. Registering it ([`register`]) is
//! all a site binary adds to the stock site: the coordinator never runs the model's code (it
//! starts from the layout and initial values in `init.safetensors`, or in-process from the
//! task's layout), and the sites keep mutual TLS, their policy, the strategies and the
//! validation of everything they receive.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! // A whole federation of TinyNet on MNIST in this process, with mutual TLS.
//! let out = std::path::Path::new("runs/custom_model");
//! let sim = flotilla_example_custom_model::simulate(4, 300, 3, 1, out, false).await?;
//! println!("model {}", sim.model_sha256);
//! # Ok(()) }
//! ```

pub mod model;

use std::path::Path;
use std::sync::OnceLock;

use flotilla_common::model::initial::initial_params;
use flotilla_common::model::{ModelShape, register as register_model};
use flotilla_common::{FlatParams, Task};
use flotilla_coordinator::federation::Policy;
use flotilla_coordinator::scenario::{SiteSource, mnist_test_images};
use flotilla_coordinator::simulate::{SimulateOptions, Simulation, simulate as run_simulation};

pub use model::TinyNet;

/// The task of this example (`task.toml`), without its layout.
pub fn task_file() -> anyhow::Result<Task> {
    Ok(Task::from_toml(include_str!("../task.toml"), "examples/custom_model/task.toml")?)
}

/// Makes [`TinyNet`] this process's custom model `tiny-net` (once; later calls are no-ops).
pub fn register() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| register_model::<TinyNet>(model::NAME).map_err(|e| e.to_string())).clone().map_err(anyhow::Error::msg)
}

/// TinyNet's initial parameters for `task`, from the federation's seeded rule: the values a
/// coordinator with this seed would start from, written to a file for `serve --init-model`.
pub fn initial_model(task: &Task, seed: u64) -> anyhow::Result<FlatParams> {
    Ok(initial_params::<TinyNet>(&ModelShape::for_task(task, 0), seed, false)?)
}

/// The task with TinyNet's layout filled in, for a coordinator in this process (which then
/// starts from the seeded initialisation, the same values as [`initial_model`]).
pub fn task_with_layout(seed: u64) -> anyhow::Result<Task> {
    let mut task = task_file()?;
    task.model.layout = Some(initial_model(&task, seed)?.layout().tensors().to_vec());
    task.validate()?;
    Ok(task)
}

/// A federation of `sites` MNIST sites of `images` each (IID), `rounds` rounds, everything in
/// this process with mutual TLS; MNIST's 10,000 test images are scored every round when
/// `holdout`.
pub async fn simulate(sites: usize, images: usize, rounds: u32, seed: u64, out: &Path, holdout: bool) -> anyhow::Result<Simulation> {
    register()?;
    let opts = SimulateOptions {
        source: SiteSource::Mnist { clients: sites, per_site: images, partition: flotilla_common::data::partition::Partition::Iid },
        task: task_with_layout(seed)?,
        seed,
        policy: Policy { rounds, ..Policy::default() },
        out: out.to_owned(),
        progress: false,
        baselines: false,
        tls: true,
        malicious: 0,
        attack_scale: 1.0,
        stragglers: 0.0,
        straggler_epochs: 1,
        backend: flotilla_common::train::Backend::default(),
        force: true,
        test_data: if holdout { Some(mnist_test_images()?) } else { None },
        operator: None,
    };
    Ok(run_simulation(opts).await?)
}
