//! Helpers for the integration tests: a coordinator on an ephemeral loopback port, real
//! clients in-process, and a hand-driven "raw" client that can misbehave on purpose.

pub mod proxy;
pub mod process;

use std::time::Duration;

use flotilla_common::data::RawTable;
use flotilla_common::Task;
use flotilla_coordinator::federation::Policy;
use flotilla_coordinator::run_dir::RunDir;
use flotilla_coordinator::runner::{self, Running};
use flotilla_coordinator::scenario::{load_sites, Scenario, SiteSource};

/// The four hospitals with their rows.
pub fn hospital_sites(seed: u64) -> Vec<(String, RawTable)> {
    load_sites(&SiteSource::Scenario(Scenario::Hospitals), &Task::hospitals(), seed).expect("bundled hospitals load")
}

/// A policy for tests: short lease so dead clients are noticed quickly.
pub fn test_policy(rounds: u32, min_clients: usize) -> Policy {
    Policy { rounds, min_clients, lease: Duration::from_millis(1500), ..Policy::default() }
}

/// Site options for tests: heartbeats well inside [`test_policy`]'s lease.
pub fn test_site(url: String, name: &str) -> flotilla_client::SiteOptions {
    let mut o = flotilla_client::SiteOptions::new(url, name);
    o.heartbeat = Duration::from_millis(300);
    o
}

/// Starts a coordinator on 127.0.0.1:0 writing into `out`.
pub async fn start_coordinator(task: Task, seed: u64, policy: Policy, out: &std::path::Path) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let run_dir = RunDir::create(out).expect("run dir");
    runner::start(task, seed, policy, Some(run_dir), listener, None).expect("start coordinator")
}

/// Options for an in-process simulation in tests: plaintext, no baselines, no progress bar,
/// honest sites; tests override what they exercise.
pub fn sim_options(source: SiteSource, task: Task, seed: u64, rounds: u32, out: &std::path::Path) -> flotilla_coordinator::simulate::SimulateOptions {
    flotilla_coordinator::simulate::SimulateOptions {
        source,
        task,
        seed,
        policy: Policy { rounds, ..Policy::default() },
        out: out.to_owned(),
        progress: false,
        baselines: false,
        tls: false,
        malicious: 0,
        attack_scale: 1.0,
        stragglers: 0.0,
        straggler_epochs: 1,
    }
}

/// A small synthetic CSV table: `rows` rows of `x1,x2,x3,y` with a learnable label.
pub fn synthetic_table(name: &str, rows: usize, offset: usize) -> RawTable {
    let mut text = String::from("x1,x2,x3,y\n");
    for i in offset..offset + rows {
        let a = ((i * 37) % 100) as f64 / 50.0 - 1.0;
        let b = ((i * 53) % 100) as f64 / 50.0 - 1.0;
        let y = u8::from(a + 0.5 * b > 0.0);
        text.push_str(&format!("{a:.3},{b:.3},{:.3},{y}\n", (i % 7) as f64));
    }
    RawTable::from_reader(text.as_bytes(), std::path::Path::new(&format!("{name}.csv"))).expect("synthetic csv")
}

/// The task for [`synthetic_table`].
pub fn synthetic_task(hidden: Vec<usize>) -> Task {
    let text = format!(
        "name = \"synthetic\"\n[model]\nhidden = {hidden:?}\n[training]\nlocal_epochs = 1\nbatch_size = 32\nlearning_rate = 0.001\n\
         [data]\ncategorical = []\n[data.label]\ncolumn = \"y\"\npositive_above = 0.5\n"
    );
    Task::from_toml(&text, "synthetic task").expect("synthetic task")
}
