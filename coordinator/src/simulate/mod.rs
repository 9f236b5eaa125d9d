//! `simulate`: a whole federation in one process — a coordinator and one client per site,
//! talking real gRPC over loopback — followed by the baselines and the comparison table.

pub mod baselines;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_client::{Attack, ClientTls, SiteOptions, run_site};
use flotilla_common::Task;
use flotilla_common::pki;
use flotilla_common::site::{PreparedSite, SiteData};
use flotilla_common::train::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::federation::{Outcome, Policy};
use crate::run_dir::{RunDir, RunDirError, write_final};
use crate::scenario::{ScenarioError, SiteSource, load_sites};
use crate::summary;
use crate::tls::ServerTls;
use crate::{chart, runner};
use baselines::Comparison;

/// A simulation to run.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub source: SiteSource,
    pub task: Task,
    pub seed: u64,
    /// Round policy; `min_clients` is raised to the number of sites so all take part.
    pub policy: Policy,
    pub out: PathBuf,
    /// Show a progress bar (off in tests).
    pub progress: bool,
    /// Compute the local-only and centralised baselines.
    pub baselines: bool,
    /// Mutual TLS with a throwaway CA written to `<out>/pki` (plaintext loopback otherwise).
    pub tls: bool,
    /// Experiments: the last `malicious` sites (by name) send sign-flipped updates scaled
    /// by `attack_scale`.
    pub malicious: usize,
    pub attack_scale: f32,
    /// Experiments: the first `stragglers` share of sites (by name) complete only
    /// `straggler_epochs` local epochs per round.
    pub stragglers: f64,
    pub straggler_epochs: u32,
    /// The burn backend the simulated sites (and the baselines) compute with.
    pub backend: Backend,
    /// Replace an earlier run in `out`; without it a folder that holds one is refused.
    pub force: bool,
    /// A labelled CSV held out at the coordinator, evaluated every round.
    pub test_data: Option<PathBuf>,
    /// The operator's port (metrics, probes, dashboard), when asked for.
    pub operator: Option<(std::net::SocketAddr, crate::observe::http::Access)>,
}

/// What a simulation produced.
#[derive(Debug)]
pub struct Simulation {
    pub outcome: Outcome,
    pub comparison: Option<Comparison>,
    pub summary: serde_json::Value,
    pub model_sha256: String,
    pub seconds: f64,
}

/// Why a simulation failed.
/// Plaintext sites per shared HTTP/2 connection in large simulations (each holds at most a
/// couple of streams open, well under HTTP/2's usual limit of 200 concurrent streams).
const SITES_PER_CONNECTION: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("{0}")]
    Policy(String),
    #[error("cannot listen on loopback: {0}")]
    Listen(std::io::Error),
    #[error("{0}")]
    Site(String),
    #[error("the federation stopped before its last round")]
    Unfinished,
    #[error("certificates: {0}")]
    Pki(#[from] flotilla_common::pki::PkiError),
    #[error("baselines: {0}")]
    Baselines(String),
}

/// Runs the federation, then the baselines; writes the run directory.
pub async fn simulate(opts: SimulateOptions) -> Result<Simulation, SimulateError> {
    let start = Instant::now();
    crate::custom_model::check_servable(&opts.task, opts.test_data.is_some()).map_err(SimulateError::Policy)?;
    let sites = load_sites(&opts.source, &opts.task, opts.seed)?;
    let mut policy = opts.policy.clone();
    policy.min_clients = policy.min_clients.max(sites.len());
    policy.validate().map_err(SimulateError::Policy)?;
    policy.validate_for_sites(sites.len()).map_err(SimulateError::Policy)?;
    policy.validate_for_task(&opts.task).map_err(SimulateError::Policy)?;
    opts.task.strategy.validate(policy.cohort_size(policy.min_clients)).map_err(SimulateError::Policy)?;
    if let Some(dp) = &opts.task.privacy {
        dp.validate_for_cohort(policy.cohort_size(policy.min_clients)).map_err(SimulateError::Policy)?;
    }
    if let Some(allowed) = &policy.allowed_sites
        && let Some((stranger, _)) = sites.iter().find(|(name, _)| !allowed.contains(name))
    {
        return Err(SimulateError::Policy(format!(
            "site `{stranger}` of this simulation is not on the allow list (--allow-site): it would be refused at join"
        )));
    }
    if opts.malicious > sites.len() {
        return Err(SimulateError::Policy(format!("--malicious {} is more than the {} sites", opts.malicious, sites.len())));
    }
    let first_malicious = sites.len() - opts.malicious;
    let stragglers = (opts.stragglers.clamp(0.0, 1.0) * sites.len() as f64).round() as usize;
    // Only now that the configuration is known to work is the folder claimed (an earlier run
    // there is refused, or with `force` deleted).
    crate::run_dir::claim_for_new_run(&opts.out, opts.force, "replace it with --force, or choose another --out folder")?;
    let mut run_dir = RunDir::create(&opts.out)?;
    if let Some(data) = &opts.test_data {
        run_dir = run_dir.with_holdout(data, &opts.task)?;
    }
    let pki = if opts.tls { Some(provision(&opts.out.join("pki"), &sites)?) } else { None };
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(SimulateError::Listen)?;
    let server_tls = pki.as_ref().map(|p| p.server.clone());
    let running = runner::start(opts.task.clone(), opts.seed, policy.clone(), Some(run_dir), listener, server_tls).map_err(SimulateError::Listen)?;
    tracing::info!(url = %running.url(), sites = sites.len(), "coordinator listening");
    if let Some((addr, access)) = &opts.operator {
        let listener = TcpListener::bind(addr).await.map_err(SimulateError::Listen)?;
        let addr = running.serve_operator(listener, access.clone()).map_err(SimulateError::Listen)?;
        if opts.progress {
            eprintln!("dashboard: http://{addr}/   metrics: http://{addr}/metrics");
        }
    }

    let stop_clients = CancellationToken::new();
    // In a simulation every site is ours: one that fails (bad data, say) stops the run.
    let site_failed = CancellationToken::new();
    let failure = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let mut clients = Vec::new();
    // Thousands of plaintext sites would need a socket pair each (and run out of file
    // descriptors): they share HTTP/2 connections, SITES_PER_CONNECTION to one. With mutual
    // TLS every site keeps its own connection, since the connection carries its identity.
    let mut shared = Vec::new();
    if pki.is_none() && sites.len() > SITES_PER_CONNECTION {
        for _ in 0..sites.len().div_ceil(SITES_PER_CONNECTION) {
            let conn = flotilla_client::connection::Connection::connect(&running.url(), None, std::time::Duration::from_secs(30))
                .await
                .map_err(|e| SimulateError::Site(e.to_string()))?;
            shared.push(conn);
        }
    }
    // One site computes per core at a time: as fast as all at once, without a thread and a
    // training graph in memory for each of thousands of sites.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cpu_slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cores));
    // The sites take their tables; a copy stays here only for the baselines, which need all
    // the data after the run (with 10,000 sites a copy of every table is hundreds of MB).
    let kept_for_baselines = opts.baselines.then(|| sites.clone());
    for (i, (name, table)) in sites.into_iter().enumerate() {
        let mut site_opts = SiteOptions::new(running.url(), name.clone());
        site_opts.cpu_slots = Some(cpu_slots.clone());
        site_opts.backend = opts.backend;
        site_opts.tls = pki.as_ref().and_then(|p| p.sites.get(&name).cloned());
        site_opts.connection = shared.get(i / SITES_PER_CONNECTION).cloned();
        if i >= first_malicious {
            site_opts.attack = Some(Attack::SignFlip { scale: opts.attack_scale });
        }
        if i < stragglers {
            site_opts.max_epochs = Some(opts.straggler_epochs);
        }
        let opts = site_opts;
        let token = stop_clients.child_token();
        let (failed, failure) = (site_failed.clone(), failure.clone());
        clients.push(tokio::spawn(async move {
            let r = run_site(opts, table, token).await;
            if let Err(e) = &r {
                if let Ok(mut f) = failure.lock() {
                    f.get_or_insert_with(|| format!("site `{name}`: {e}"));
                }
                failed.cancel();
            }
            r
        }));
    }

    let bar = progress_bar(opts.progress, policy.rounds);
    let watcher = {
        let mut rx = running.handle.progress();
        let bar = bar.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let p = rx.borrow_and_update().clone();
                if let Some(r) = &p.last {
                    bar.set_position(u64::from(r.round));
                    let eps = r.epsilon.map_or(String::new(), |e| format!("  ε {e:.2}"));
                    let headline = match &r.regression {
                        Some(m) => format!("R² {}  rmse {:.3}", m.r2().map_or("–".into(), |v| format!("{v:.3}")), m.rmse()),
                        None => format!("accuracy {:.3}  auc {}", r.accuracy, r.auc.map_or("–".into(), |a| format!("{a:.3}"))),
                    };
                    bar.set_message(format!("{headline}{eps}"));
                }
                if p.done {
                    break;
                }
            }
        })
    };
    let finished = running.wait_done(&site_failed).await;
    if !finished {
        bar.abandon();
        stop_clients.cancel();
        let _ = running.stop(Duration::ZERO).await;
        let message = failure.lock().ok().and_then(|f| f.clone()).unwrap_or_else(|| "a site failed".into());
        return Err(SimulateError::Site(message));
    }
    let _ = watcher.await;
    bar.finish();
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
    }
    stop_clients.cancel();
    let telemetry = running.handle.telemetry();
    let outcome =
        running.finish(Duration::from_secs(2)).await.map_err(|e| SimulateError::Site(e.to_string()))?.filter(|_| finished).ok_or(SimulateError::Unfinished)?;
    let federation_seconds = start.elapsed().as_secs_f64();

    // The baselines see all the data at once: only a simulation can compute them.
    let comparison = if let Some(sites) = kept_for_baselines {
        let (task, seed, rounds, patience, o, backend) = (opts.task.clone(), opts.seed, policy.rounds, policy.patience, outcome.clone(), opts.backend);
        let b = bar_spinner(opts.progress, "training the local-only and centralized baselines");
        let c = tokio::task::spawn_blocking(move || -> Result<Comparison, String> {
            let data = encode_sites(&sites, &task, &o, seed).map_err(|e| e.to_string())?;
            let schedule = baselines::Rounds { rounds, patience, seed, backend };
            baselines::compare(&task, &o.shape, &data, &o.model, schedule).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| SimulateError::Baselines(e.to_string()))?
        .map_err(SimulateError::Baselines)?;
        b.finish_and_clear();
        Some(c)
    } else {
        None
    };
    if let Some(c) = &comparison {
        let path = opts.out.join("site-metrics.csv");
        report::write_site_metrics(&path, c).map_err(|e| RunDirError::Other { path, message: e.to_string() })?;
        let refs = vec![("centralized".to_owned(), c.centralized.pooled.headline()), ("local-only mean".to_owned(), report::local_mean_score(c))];
        let path = opts.out.join("accuracy.svg");
        chart::write_accuracy_chart(&path, &outcome.history, &refs).map_err(|e| RunDirError::Other { path, message: e.to_string() })?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut summary = summary::summary(&opts.task, opts.seed, &outcome, comparison.as_ref());
    summary["timings"] = serde_json::json!({ "total_seconds": seconds, "federation_seconds": federation_seconds });
    // What crossed the wire for models: the bytes of updates as encoded (compressed or not)
    // and of model downloads (deltas where a site held the previous model), with what the
    // deltas saved against full downloads.
    let m = &telemetry.metrics;
    summary["transfer"] = serde_json::json!({
        "update_encoding": opts.task.compression.update.to_string(),
        "update_bytes": m.received_bytes.get(),
        "download_bytes": m.sent_bytes.get(),
        "delta_downloads": m.delta_downloads.get(),
        "download_bytes_saved_by_deltas": m.delta_saved_bytes.get(),
    });
    // Sites all ran this backend: models are reproducible on one backend, not across the two.
    summary["backend"] = serde_json::Value::String(opts.backend.to_string());
    summary["config"] = summary::config(&opts.task, &policy, opts.seed, Some(&opts.backend.to_string()));
    if let Some(data) = &opts.test_data {
        summary["holdout"] = crate::holdout::summary_of_kept(data, &opts.task, &outcome.plan, &outcome.model).map_err(SimulateError::Baselines)?;
    }
    let model_sha256 = write_final(&opts.out, &opts.task, &outcome, &summary)?;
    summary["model_file_sha256"] = serde_json::Value::String(model_sha256.clone());
    summary["params_sha256"] = serde_json::Value::String(outcome.model.hash());
    Ok(Simulation { outcome, comparison, summary, model_sha256, seconds })
}

/// A throwaway PKI for one simulation: the files go to `dir` so they can be inspected.
struct SimulationPki {
    server: ServerTls,
    sites: BTreeMap<String, ClientTls>,
}

fn provision(dir: &std::path::Path, sites: &[(String, flotilla_common::site::SiteInput)]) -> Result<SimulationPki, SimulateError> {
    let names: Vec<String> = sites.iter().map(|(n, _)| n.clone()).collect();
    pki::init_dir(dir, &names, &["localhost".to_owned()], &[std::net::IpAddr::from([127, 0, 0, 1])], 2)?;
    let server = ServerTls::from_files(&dir.join("coordinator.pem"), &dir.join("coordinator.key"), &dir.join("ca.pem"))?;
    let mut out = BTreeMap::new();
    for n in names {
        let tls = ClientTls::from_files(&dir.join("ca.pem"), &dir.join(format!("{n}.pem")), &dir.join(format!("{n}.key")))?;
        out.insert(n, tls);
    }
    Ok(SimulationPki { server, sites: out })
}

/// Every site's data, encoded with the federation's final plan (as the sites did).
fn encode_sites(
    sites: &[(String, flotilla_common::site::SiteInput)],
    task: &Task,
    o: &Outcome,
    seed: u64,
) -> Result<BTreeMap<String, SiteData>, flotilla_common::DataError> {
    let mut out = BTreeMap::new();
    for (name, input) in sites {
        let prepared = PreparedSite::from_input(name, input, task, seed, task.data.min_category_count)?;
        out.insert(name.clone(), prepared.encode(&o.plan, task, seed)?);
    }
    Ok(out)
}

fn progress_bar(visible: bool, rounds: u32) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(u64::from(rounds));
    bar.set_style(
        ProgressStyle::with_template("{spinner} round {pos:>3}/{len} [{bar:30.cyan/blue}] {msg}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message("waiting for sites");
    bar
}

fn bar_spinner(visible: bool, msg: &'static str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new_spinner();
    b.set_message(msg);
    b.enable_steady_tick(Duration::from_millis(120));
    b
}
