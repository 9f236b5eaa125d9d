//! `flotilla-client`: one site of a federation. Parses flags, reads the site's CSV, and runs
//! the site until the coordinator says the federation is done.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flotilla_client::policy::SitePolicy;
use flotilla_client::shutdown::terminated;
use flotilla_client::{ClientTls, SiteOptions, run_site};
use flotilla_common::Task;
use flotilla_common::data::RawTable;
use flotilla_common::pki;
use flotilla_common::site::SiteInput;
use flotilla_common::train::Backend;
use tokio_util::sync::CancellationToken;

/// A site of a Flotilla federation: trains on local data, sends only weight deltas.
#[derive(Debug, Parser)]
#[command(name = "flotilla-client", version, about, long_about = None, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The coordinator's URL: https://HOST:PORT (mutual TLS) or, with --insecure, http://.
    #[arg(long, value_name = "URL", required = true)]
    coordinator: Option<String>,
    /// This site's CSV file (a header row, then only this site's rows).
    #[arg(long, value_name = "FILE", required = true)]
    data: Option<PathBuf>,
    /// This site's name in the federation (must match the name in its certificate).
    #[arg(long, value_name = "NAME", required = true)]
    site: Option<String>,
    /// The federation CA certificate (PEM): the only issuer trusted for the coordinator.
    #[arg(long, value_name = "CA.pem", requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// This site's certificate (PEM).
    #[arg(long, value_name = "SITE.pem", requires = "ca")]
    cert: Option<PathBuf>,
    /// This site's private key (PEM).
    #[arg(long, value_name = "SITE.key", requires = "ca")]
    key: Option<PathBuf>,
    /// Connect in plaintext to an http:// coordinator: no authentication, no confidentiality.
    /// Refused for a non-loopback coordinator unless --allow-insecure-network is given too.
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// Allow plaintext to a coordinator that is not on this machine. Anyone on the path can
    /// read the model and alter what the site receives.
    #[arg(long, requires = "insecure")]
    allow_insecure_network: bool,
    /// Seconds between heartbeats while training.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    heartbeat: f64,
    /// Seconds to keep trying to reach the coordinator at start.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    connect_timeout: f64,
    /// This site's privacy budget: stop training before the rounds it took part in would
    /// spend more than this ε (from the federation's announced DP parameters).
    #[arg(long, value_name = "EPSILON")]
    max_epsilon: Option<f64>,
    /// This site's policy (TOML): what it accepts from the coordinator; see
    /// examples/site-policy.toml. Refusals name the rule and the value.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Where this site keeps what must survive a restart: its privacy ledger (ledger.json)
    /// and its audit log (audit.jsonl), and the error-feedback residual of compressed updates
    /// (residual.safetensors). Without it the budget is counted in memory only.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The codec of this site's updates, in place of the task's: f32, fp16, bf16, int8 or
    /// topk:FRACTION (with error feedback).
    #[arg(long, value_name = "CODEC")]
    compress: Option<flotilla_common::compress::Codec>,
    /// Always download full models, never the difference from the model this site holds
    /// (which costs one more model copy in memory while it is applied).
    #[arg(long)]
    full_downloads: bool,
    /// The most CPU threads this site computes with (an edge device shares its cores): a
    /// pool of N for training and evaluation, N runtime threads, and on Linux the process
    /// pinned to N CPUs. The policy's resources.threads, when lower, wins. The model does
    /// not depend on N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// δ of this site's budget.
    #[arg(long, default_value_t = 1e-5, value_name = "DELTA")]
    max_delta: f64,
    /// Seed of this site's randomness (train/test split, shuffles, augmentation).
    /// Default: the federation's seed, so the coordinator's --seed reproduces the whole run.
    #[arg(long, value_name = "SEED")]
    seed: Option<u64>,
    /// Record-level DP, experiments only: this site's own seed for its DP-SGD sampling and
    /// noise (to repeat a run). Never the federation's; without it the OS's generator.
    #[arg(long, value_name = "N")]
    dp_seed: Option<u64>,
    /// The burn CPU backend that trains and evaluates: ndarray (the default) or flex (burn
    /// 0.22's newer backend: 1.6× on the seed MLP, 2.5× on large ones; see BENCHMARKS.md).
    #[arg(long, default_value_t = Backend::Ndarray, value_name = "ndarray|flex")]
    backend: Backend,
    /// Log filter (e.g. info, debug, flotilla_client=debug).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificates: make this site's key and a signing request for the federation's CA.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Print a summary of this site's audit log and privacy ledger, for its data officer.
    Audit {
        /// The site's state directory (its --state-dir).
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Site policies: check a policy file, or print a task's fingerprint to pin it.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Predict every row of a CSV with a model a run wrote (its model.safetensors carries the
    /// task and the preprocessing plan): writes line, probability and class per row (for
    /// regression, the predicted value under the label's name).
    Predict {
        /// The model file (a run's model.safetensors or model-last.safetensors).
        #[arg(long, value_name = "FILE")]
        model: PathBuf,
        /// Rows to predict: a CSV with the model's feature columns (the label may be absent).
        #[arg(long, value_name = "FILE")]
        data: PathBuf,
        /// Where to write the predictions (CSV).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A column of the input to copy into each prediction row (a record id).
        #[arg(long, value_name = "COLUMN")]
        id: Option<String>,
        #[arg(long, default_value_t = Backend::Ndarray, value_name = "ndarray|flex")]
        backend: Backend,
    },
    /// Evaluate a model on a labelled CSV: examples, loss, accuracy and ROC AUC (regression:
    /// loss, MAE, RMSE and R²), as JSON.
    Evaluate {
        #[arg(long, value_name = "FILE")]
        model: PathBuf,
        #[arg(long, value_name = "FILE")]
        data: PathBuf,
        #[arg(long, default_value_t = Backend::Ndarray, value_name = "ndarray|flex")]
        backend: Backend,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Check a policy file; with --task, check that task against it.
    Check {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        #[arg(long, value_name = "TASK.toml")]
        task: Option<PathBuf>,
    },
    /// Print the fingerprint of a task file (for `[task] fingerprint` in a policy).
    Fingerprint {
        #[arg(long, value_name = "TASK.toml")]
        task: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write <site>.key (mode 0600, stays here) and <site>.csr (send it to the CA holder,
    /// who runs `flotilla-coordinator certs sign`).
    Request {
        /// This site's name.
        #[arg(long, value_name = "NAME")]
        site: String,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Logs go to stderr, like the coordinator's, in colour only when it is a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let result = match args.command {
        Some(Command::Certs(CertsCommand::Request { site, out })) => request(&site, &out),
        Some(Command::Audit { state_dir }) => audit(&state_dir),
        Some(Command::Policy(PolicyCommand::Check { policy, task })) => check_policy(&policy, task.as_deref()),
        Some(Command::Policy(PolicyCommand::Fingerprint { task })) => Task::from_file(&task).map(|t| println!("{}", t.fingerprint())).map_err(Into::into),
        Some(Command::Predict { model, data, out, id, backend }) => predict(&model, &data, &out, id.as_deref(), backend),
        Some(Command::Evaluate { model, data, backend }) => evaluate(&model, &data, backend),
        None => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla-client: {}", flotilla_client::error::describe(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn request(site: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let req = pki::request(site)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    pki::write_pem(&out.join(format!("{site}.key")), &req.key_pem, true)?;
    pki::write_pem(&out.join(format!("{site}.csr")), &req.csr_pem, false)?;
    println!("wrote {0}.key (keep it here) and {0}.csr (send it to the federation's CA) in {1}", site, out.display());
    Ok(())
}

/// The audit log's summary, then the ledger's totals.
fn audit(dir: &std::path::Path) -> anyhow::Result<()> {
    let path = dir.join("audit.jsonl");
    print!("{}", flotilla_client::state::audit::summary(&path)?);
    let ledger = flotilla_client::state::Ledger::load(&dir.join("ledger.json"))?;
    let rounds: Vec<String> = ledger.dp_rounds.iter().map(|r| format!("{} at noise multiplier {}", r.rounds, r.noise_multiplier)).collect();
    println!(
        "  ledger: {} rounds trained ({} with DP: {}; {} without)",
        ledger.rounds(),
        ledger.dp_rounds.iter().map(|r| r.rounds).sum::<u64>(),
        if rounds.is_empty() { "none".to_owned() } else { rounds.join(", ") },
        ledger.plain_rounds
    );
    if ledger.plain_rounds > 0 {
        println!("  ε unbounded: rounds without differential privacy were trained");
        return Ok(());
    }
    for delta in [1e-5, 1e-6] {
        match ledger.epsilon_with(None, delta) {
            Ok(e) => println!("  ε = {e:.3} at δ = {delta:e} (every round counted with sampling rate 1)"),
            Err(e) => println!("  ε: {e}"),
        }
    }
    Ok(())
}

/// `predict`: a CSV of predictions, one row per input row, in input order.
fn predict(model: &std::path::Path, data: &std::path::Path, out: &std::path::Path, id: Option<&str>, backend: Backend) -> anyhow::Result<()> {
    let m = flotilla_common::predict::Model::load(model)?;
    if m.card.task.data.images.is_some() {
        anyhow::bail!("{}: this model classifies images; `predict` reads CSV rows (`evaluate` reads labelled images)", model.display());
    }
    let table = RawTable::read(data)?;
    let id_index = id.map(|c| table.column_index(c).with_context(|| format!("{}: --id column `{c}` is not in the header", data.display()))).transpose()?;
    let predictions = m.predict(&table, backend)?;
    let mut w = csv::Writer::from_path(out).with_context(|| format!("creating {}", out.display()))?;
    let regression = m.card.task.data.label.is_regression();
    let binary = m.shape.outputs == 1;
    let mut header = vec!["line".to_owned()];
    header.extend(id.map(str::to_owned));
    header.extend(match (regression, binary) {
        (true, _) => vec![m.card.task.data.label.column.clone()],
        (false, true) => ["probability", "class"].map(str::to_owned).to_vec(),
        (false, false) => ["class", "label", "probability"].map(str::to_owned).to_vec(),
    });
    w.write_record(&header)?;
    for (p, raw) in predictions.iter().zip(&table.rows) {
        let mut record = vec![p.line.to_string()];
        record.extend(id_index.map(|i| raw.fields[i].clone()));
        if let Some(v) = p.value {
            record.push(format!("{v:.6}"));
        } else if binary {
            record.extend([format!("{:.6}", p.probability), p.class.to_string()]);
        } else {
            record.extend([p.class.to_string(), m.class_name(p.class), format!("{:.6}", p.probability)]);
        }
        w.write_record(&record)?;
    }
    w.flush().with_context(|| format!("writing {}", out.display()))?;
    eprintln!("{} predictions of {} (round {} of task `{}`) written to {}", predictions.len(), model.display(), m.card.round, m.card.task.name, out.display());
    Ok(())
}

/// `evaluate`: the model's metrics on a labelled CSV (or labelled images, for an image
/// model), as JSON on stdout.
fn evaluate(model: &std::path::Path, data: &std::path::Path, backend: Backend) -> anyhow::Result<()> {
    let m = flotilla_common::predict::Model::load(model)?;
    let e = match m.card.task.data.images {
        Some(spec) => {
            let images = flotilla_common::data::images::ImageSet::read(data, spec, m.card.task.data.label.classes.as_deref().unwrap_or_default())?;
            m.evaluate_images(&images, backend)?
        }
        None => m.evaluate(&RawTable::read(data)?, backend)?,
    };
    println!("{}", e.metrics_json());
    Ok(())
}

fn check_policy(policy: &std::path::Path, task: Option<&std::path::Path>) -> anyhow::Result<()> {
    let p = SitePolicy::from_file(policy)?;
    println!("{}: a valid site policy", policy.display());
    if let Some(task) = task {
        let t = Task::from_file(task)?;
        match p.check_task(&t) {
            Ok(()) => println!("{}: accepted (fingerprint {})", task.display(), t.fingerprint()),
            Err(v) => anyhow::bail!("{}: refused by {}, {v}", task.display(), policy.display()),
        }
    }
    Ok(())
}

/// Reads the policy, then starts the runtime with the threads it and `--threads` allow.
fn run(args: Args) -> anyhow::Result<()> {
    let policy = args.policy.as_deref().map(SitePolicy::from_file).transpose()?.map(Arc::new);
    let threads = [policy.as_ref().and_then(|p| p.resources.threads), args.threads.map(usize::from)].into_iter().flatten().min();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = threads {
        // Before any thread exists, so that every thread the process starts inherits it.
        match flotilla_client::threads::pin_to_cpus(n) {
            Ok(cpus) if !cpus.is_empty() => tracing::info!(threads = n, ?cpus, "compute capped"),
            Ok(_) => tracing::info!(threads = n, "compute capped (thread pools only on this system)"),
            Err(e) => tracing::warn!(error = %e, "could not pin the process to CPUs; the thread pools still cap it"),
        }
        // Training and evaluation run in a pool of n (the site's options); the async runtime,
        // its blocking threads and rayon's global pool are held to n as well.
        runtime.worker_threads(n).max_blocking_threads(n);
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("limiting compute threads")?;
    }
    runtime.build().context("starting the async runtime")?.block_on(run_site_from_args(args, policy))
}

async fn run_site_from_args(args: Args, policy: Option<Arc<SitePolicy>>) -> anyhow::Result<()> {
    // clap enforces these without a subcommand.
    let (Some(coordinator), Some(data), Some(site)) = (args.coordinator.clone(), args.data.clone(), args.site.clone()) else {
        anyhow::bail!("--coordinator, --data and --site are required");
    };
    check_scheme(&coordinator, args.insecure)?;
    let tls = match (&args.ca, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => Some(ClientTls::from_files(ca, cert, key)?),
        _ if args.insecure => None,
        _ => anyhow::bail!("give the site its certificate (--ca ca.pem --cert SITE.pem --key SITE.key), or pass --insecure for plaintext"),
    };
    if tls.is_none() && !is_loopback_url(&coordinator) {
        if !args.allow_insecure_network {
            anyhow::bail!("refusing plaintext to {coordinator}, which is not on this machine: use TLS, or add --allow-insecure-network if you really mean it");
        }
        tracing::warn!(%coordinator, "TALKING PLAINTEXT OVER A NETWORK: the model and this site's updates can be read and altered in transit");
    }
    if !(args.heartbeat > 0.0 && args.connect_timeout >= 0.0) {
        anyhow::bail!("--heartbeat must be positive and --connect-timeout non-negative");
    }
    // With a policy, columns it does not allow are never read past the header. Images are
    // counted now and read once the task says their size and classes.
    let input = if SiteInput::looks_like_images(&data) {
        SiteInput::image_files(&data)
    } else {
        match &policy {
            Some(p) => RawTable::read_keeping(&data, &|c| p.may_read(c)),
            None => RawTable::read(&data),
        }
        .map(SiteInput::Table)
    }
    .with_context(|| format!("reading the data of site `{site}`"))?;
    let mut opts = SiteOptions::new(coordinator, site.clone());
    opts.tls = tls;
    opts.heartbeat = Duration::from_secs_f64(args.heartbeat);
    opts.connect_patience = Duration::from_secs_f64(args.connect_timeout);
    opts.seed = args.seed;
    opts.backend = args.backend;
    opts.dp_seed = args.dp_seed;
    opts.budget = args.max_epsilon.map(|e| (e, args.max_delta));
    opts.policy = policy;
    opts.state_dir = args.state_dir.clone();
    opts.compress = args.compress;
    opts.full_downloads = args.full_downloads;
    opts.threads = args.threads.map(usize::from);
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        terminated().await;
        tracing::warn!("interrupted: leaving the federation");
        signal.cancel();
    });
    let report = run_site(opts, input, shutdown).await.with_context(|| format!("site `{site}`"))?;
    tracing::info!(
        trained = report.rounds_trained,
        evaluations = report.evaluations,
        train = report.train_examples,
        test = report.test_examples,
        refused_updates = report.refused_updates,
        rounds_declined = report.rounds_declined,
        "{}",
        report.reason
    );
    Ok(())
}

/// Refuses a URL whose scheme contradicts the transport asked for: `--insecure` talks
/// plaintext (`http://`); mutual TLS needs `https://`. Either mix-up is a setup mistake, not a
/// coordinator that cannot be reached.
fn check_scheme(url: &str, insecure: bool) -> anyhow::Result<()> {
    match (url.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase()), insecure) {
        (Some(s), true) if s == "https" => anyhow::bail!(
            "--coordinator {url} is an https:// URL but --insecure asks for plaintext: use http://HOST:PORT with --insecure, \
             or drop --insecure and give --ca, --cert and --key"
        ),
        (Some(s), false) if s == "http" => anyhow::bail!(
            "--coordinator {url} is a plaintext http:// URL: use https://HOST:PORT with --ca, --cert and --key, \
             or pass --insecure if plaintext is really meant"
        ),
        (Some(s), _) if s == "http" || s == "https" => Ok(()),
        _ => anyhow::bail!("--coordinator {url}: give a URL with its scheme, https://HOST:PORT (or http://HOST:PORT with --insecure)"),
    }
}

/// True for http(s) URLs whose host is localhost or a loopback address.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host =
        if let Some(v6) = authority.strip_prefix('[') { v6.split(']').next().unwrap_or("") } else { authority.rsplit_once(':').map_or(authority, |(h, _)| h) };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::{check_scheme, is_loopback_url};

    #[test]
    fn a_scheme_that_contradicts_the_transport_is_refused() {
        let https = check_scheme("https://127.0.0.1:1", true).unwrap_err().to_string();
        assert!(https.contains("--insecure") && https.contains("https://"), "{https}");
        let http = check_scheme("http://127.0.0.1:1", false).unwrap_err().to_string();
        assert!(http.contains("http://") && http.contains("--insecure"), "{http}");
        assert!(check_scheme("127.0.0.1:1", true).is_err());
        assert!(check_scheme("https://c:1", false).is_ok() && check_scheme("http://c:1", true).is_ok());
    }

    #[test]
    fn loopback_urls_are_recognised() {
        assert!(is_loopback_url("http://127.0.0.1:50051"));
        assert!(is_loopback_url("http://localhost:1"));
        assert!(is_loopback_url("http://[::1]:5"));
        assert!(!is_loopback_url("http://10.0.0.5:50051"));
        assert!(!is_loopback_url("http://coordinator.example.org:50051"));
    }
}
