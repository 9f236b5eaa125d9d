//! Helpers for the integration tests: a coordinator on an ephemeral loopback port, real
//! clients in-process, and a hand-driven "raw" client that can misbehave on purpose.

pub mod fake_coordinator;
pub mod process;
pub mod proxy;

use std::time::Duration;

use flotilla_common::Task;
use flotilla_common::data::RawTable;
use flotilla_coordinator::federation::Policy;
use flotilla_coordinator::run_dir::RunDir;
use flotilla_coordinator::runner::{self, Running};
use flotilla_coordinator::scenario::{Scenario, SiteSource, load_sites};

/// The four hospitals with their rows.
pub fn hospital_sites(seed: u64) -> Vec<(String, RawTable)> {
    let sites = load_sites(&SiteSource::Scenario(Scenario::Hospitals), &Task::hospitals(), seed).expect("bundled hospitals load");
    sites.into_iter().map(|(name, input)| (name, input.table().cloned().expect("the hospitals are tables"))).collect()
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
///
/// The integration tests' harness: a coordinator and real sites in one process.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() {
/// use flotilla_tests::{hospital_sites, start_coordinator, test_policy, test_site};
///
/// let out = tempfile::tempdir().unwrap();
/// let running = start_coordinator(flotilla_common::Task::hospitals(), 1, test_policy(1, 4), out.path()).await;
/// let sites: Vec<_> = hospital_sites(1)
///     .into_iter()
///     .map(|(name, rows)| tokio::spawn(flotilla_client::run_site(test_site(running.url(), &name), rows, Default::default())))
///     .collect();
/// for site in sites {
///     site.await.unwrap().unwrap();
/// }
/// assert!(running.stop(std::time::Duration::from_secs(5)).await.is_some());
/// assert!(out.path().join("metrics.csv").is_file(), "the run directory is written");
/// # }
/// ```
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
        backend: flotilla_common::train::Backend::Ndarray,
        force: false,
        test_data: None,
        operator: None,
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

/// The task for [`synthetic_table`] (label `y`, numeric features).
pub fn synthetic_task(hidden: Vec<usize>) -> Task {
    Task::synthetic(hidden)
}

/// A site driven by hand over the raw protocol, to send what an honest client never would.
pub struct RawSite {
    pub rpc: flotilla_proto::pb::federation_client::FederationClient<tonic::transport::Channel>,
    pub id: String,
    /// Training examples declared at join.
    pub declared: u64,
}

impl RawSite {
    /// Joins as `name` with `table` and reports its aggregates like an honest site.
    pub async fn join(url: String, name: &str, table: &RawTable) -> RawSite {
        use flotilla_proto::pb;
        let mut rpc = pb::federation_client::FederationClient::connect(url).await.expect("connect");
        let j = rpc
            .join(pb::JoinRequest {
                site: name.into(),
                protocol_version: flotilla_proto::PROTOCOL_VERSION,
                num_rows: table.rows.len() as u64,
                columns: table.header.clone(),
            })
            .await
            .expect("join")
            .into_inner();
        let task = Task::from_toml(&j.task_toml, "task").expect("task");
        let prepared = flotilla_common::site::PreparedSite::new(name, table, &task, j.seed).expect("prepared");
        let declared = prepared.num_train() as u64;
        rpc.report_stats(flotilla_common::wire::stats_to_pb(&j.client_id, &prepared.stats, declared)).await.expect("stats");
        RawSite { rpc, id: j.client_id, declared }
    }

    /// Joins as `name` declaring `num_rows` rows and `columns`, and reports nothing: a
    /// hostile site decides what (and whether) to report.
    pub async fn join_only(url: String, name: &str, num_rows: u64, columns: Vec<String>) -> Result<RawSite, tonic::Status> {
        use flotilla_proto::pb;
        let mut rpc = pb::federation_client::FederationClient::connect(url).await.expect("connect");
        let j = rpc.join(pb::JoinRequest { site: name.into(), protocol_version: flotilla_proto::PROTOCOL_VERSION, num_rows, columns }).await?.into_inner();
        Ok(RawSite { rpc, id: j.client_id, declared: 0 })
    }

    /// Reports `columns` as this site's aggregates over `num_train` training rows.
    pub async fn report(&mut self, columns: Vec<flotilla_proto::pb::ColumnStats>, num_train: u64) -> Result<(), tonic::Status> {
        let r = flotilla_proto::pb::ReportStatsRequest { client_id: self.id.clone(), columns, num_train_examples: num_train, ..Default::default() };
        self.rpc.report_stats(r).await?;
        self.declared = num_train;
        Ok(())
    }

    /// Keeps the lease alive.
    pub async fn heartbeat(&mut self) -> Result<(), tonic::Status> {
        self.rpc.heartbeat(flotilla_proto::pb::HeartbeatRequest { client_id: self.id.clone() }).await.map(|_| ())
    }

    /// The next work item.
    pub async fn pull(&mut self) -> flotilla_proto::pb::work_item::Kind {
        let req = flotilla_proto::pb::PullWorkRequest { client_id: self.id.clone(), known_round: 0 };
        self.rpc.pull_work(req).await.expect("pull").into_inner().kind.expect("work kind")
    }

    /// Pulls work, answering evaluations, until this site is asked to train.
    pub async fn until_fit(&mut self) -> flotilla_proto::pb::FitWork {
        use flotilla_proto::pb::work_item::Kind;
        loop {
            match self.pull().await {
                Kind::Evaluate(e) => self.evaluate(e).await,
                Kind::Fit(f) => return f,
                _ => {}
            }
        }
    }

    /// Answers an evaluation with made-up but valid numbers.
    pub async fn evaluate(&mut self, e: flotilla_proto::pb::EvaluateWork) {
        let r = flotilla_proto::pb::EvaluationResult {
            client_id: self.id.clone(),
            round: e.round,
            model_hash: e.model_hash,
            num_examples: 12,
            loss: 0.7,
            accuracy: 0.5,
            auc: None,
            ..Default::default()
        };
        self.rpc.submit_evaluation(r).await.expect("evaluation");
    }

    /// Downloads the global model named in `fit`.
    pub async fn global(&mut self, fit: &flotilla_proto::pb::FitWork) -> flotilla_common::FlatParams {
        let req =
            flotilla_proto::pb::DownloadModelRequest { client_id: self.id.clone(), round: fit.round, model_hash: fit.model_hash.clone(), ..Default::default() };
        let mut s = self.rpc.download_model(req).await.expect("download").into_inner();
        let mut chunks = Vec::new();
        while let Some(c) = s.message().await.expect("chunk") {
            chunks.push(c);
        }
        flotilla_common::wire::model_from_chunks(chunks).expect("model").1
    }

    /// Uploads `values` as the update for `fit` (header with a correct checksum).
    pub async fn upload(&mut self, fit: &flotilla_proto::pb::FitWork, layout_fingerprint: &str, values: &[f32]) -> Result<(), tonic::Status> {
        use flotilla_proto::pb;
        let header = pb::UpdateHeader {
            client_id: self.id.clone(),
            round: fit.round,
            base_model_hash: fit.model_hash.clone(),
            layout_fingerprint: layout_fingerprint.to_owned(),
            total_values: values.len() as u64,
            num_examples: self.declared,
            metrics: Some(pb::TrainMetrics { epochs: 1, ..Default::default() }),
            values_sha256: flotilla_common::params::checksum(layout_fingerprint, values),
            masked: false,
            encoding: 0,
        };
        let mut chunks = vec![pb::UpdateChunk { kind: Some(pb::update_chunk::Kind::Header(header)) }];
        for part in values.chunks(1 << 18) {
            chunks.push(pb::UpdateChunk { kind: Some(pb::update_chunk::Kind::Data(flotilla_common::params::f32_to_le_bytes(part).into())) });
        }
        self.rpc.upload_update(tokio_stream::iter(chunks)).await.map(|_| ())
    }
}
