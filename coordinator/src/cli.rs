//! Command-line flags of `flotilla-coordinator`, and their validation into settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use flotilla_common::Task;
use flotilla_common::data::partition::Partition;
use flotilla_common::data::synthetic::SyntheticSpec;
use flotilla_common::strategy::StrategyName;
use flotilla_common::train::Backend;

use crate::federation::Policy;
use crate::federation::policy::Sampling;
use crate::scenario::{Scenario, SiteSource};

/// The Flotilla coordinator: runs federated training rounds over gRPC.
#[derive(Debug, Parser)]
#[command(name = "flotilla-coordinator", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (e.g. warn, info, flotilla_coordinator=debug).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,
    /// Log lines as text for people, or as JSON objects (one per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole federation in this process: a coordinator and one client per site over
    /// real gRPC on loopback, then the local-only and centralised baselines.
    Simulate(SimulateArgs),
    /// Serve a federation to remote sites (`flotilla-client`).
    Serve(ServeArgs),
    /// Write one CSV per site (a bundled scenario, or a CSV split), for `flotilla-client --data`.
    Split(SplitArgs),
    /// Certificates for mutual TLS: a federation CA, the coordinator's and the sites'.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Plan a privacy budget: the (ε, δ) that T rounds of the subsampled Gaussian mechanism
    /// spend (Rényi DP, orders 2..256, converted as in Opacus).
    Privacy(PrivacyArgs),
    /// Write synthetic data as one CSV per client, the task (`task.toml`) and a test CSV apart
    /// (`test/test.csv`), for runs with separate `flotilla-client` processes or
    /// `simulate --clients-dir` (the data `simulate --synthetic` uses).
    Synth(SynthArgs),
    /// Draft a commented task file from a CSV: column types, spellings of "missing" found,
    /// identifier-like and free-text columns to drop, and the label's rule.
    Init(InitArgs),
    /// Only the federated data profile: what each site would report of its data, side by
    /// side, with its findings (profile.json and profile.svg in --out); nothing is trained.
    Profile(SplitArgs),
    /// Compare finished runs side by side in one self-contained HTML page: settings that
    /// differ, the kept models' figures, accuracy curves, per-site results, privacy.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directories (each with its summary.json and metrics.csv).
    #[arg(value_name = "RUN_DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// The page to write.
    #[arg(long, value_name = "FILE.html", default_value = "report.html")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// A CSV as a site would hold it (a sample of it is enough).
    #[arg(long, value_name = "FILE.csv")]
    pub data: PathBuf,
    /// The column to predict.
    #[arg(long, value_name = "COLUMN")]
    pub label: String,
    /// Where to write the task.
    #[arg(long, value_name = "FILE", default_value = "task.toml")]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Clients: one CSV each, `client00000.csv`, `client00001.csv`, …
    #[arg(long, value_name = "N")]
    pub clients: usize,
    /// Rows per client.
    #[arg(long, value_name = "S")]
    pub samples: usize,
    /// Numeric feature columns (`x1`…), besides the label `y`.
    #[arg(long, value_name = "F")]
    pub features: usize,
    /// Dirichlet concentration of each client's class mix (small: skewed).
    #[arg(long, default_value_t = 1.0, value_name = "ALPHA")]
    pub skew: f64,
    /// Rows of the test CSV.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub test_samples: usize,
    /// Hidden layer widths of the task's MLP.
    #[arg(long, value_name = "W,W,…", value_delimiter = ',', default_value = "64,32")]
    pub hidden: Vec<usize>,
    /// Seed of the data (the same seed as `simulate --synthetic --seed` gives the same rows).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory: the client CSVs and task.toml; the test rows go to test/test.csv,
    /// apart, so that `simulate --clients-dir DIR` sees only the clients.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct PrivacyArgs {
    /// Probability q that a site is sampled in a round.
    #[arg(long, value_name = "Q")]
    pub sampling_rate: f64,
    /// Noise multiplier z (noise standard deviation / clipping norm).
    #[arg(long, value_name = "Z")]
    pub noise_multiplier: f64,
    /// Rounds T.
    #[arg(long, value_name = "T")]
    pub rounds: u64,
    /// Target δ.
    #[arg(long, default_value_t = 1e-5, value_name = "D")]
    pub delta: f64,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA, a coordinator certificate and one certificate per site in DIR:
    /// ca.pem, ca.key, coordinator.pem, coordinator.key, <site>.pem, <site>.key (keys 0600).
    Init {
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A site to certify (repeat for each site).
        #[arg(long = "site", value_name = "NAME")]
        sites: Vec<String>,
        /// DNS names of the coordinator (repeatable; default localhost).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// IP addresses of the coordinator (repeatable; default 127.0.0.1).
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<std::net::IpAddr>,
        /// Days the certificates are valid (at least 1).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// Sign a site's certificate signing request (from `flotilla-client certs request`).
    Sign {
        /// The CA certificate.
        #[arg(long, value_name = "CA.pem")]
        ca: PathBuf,
        /// The CA's private key.
        #[arg(long, value_name = "CA.key")]
        ca_key: PathBuf,
        /// The site's request.
        #[arg(long, value_name = "SITE.csr")]
        csr: PathBuf,
        /// Where to write the site's certificate.
        #[arg(long, value_name = "SITE.pem")]
        out: PathBuf,
        /// Days the certificate is valid (at least 1).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
}

/// Flags shared by `simulate` and `serve`: the round policy and the run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Training rounds.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Serve Prometheus metrics (/metrics), health probes (/healthz, /readyz) and the live
    /// dashboard (/) on this address. Loopback unless --metrics-allow-remote and a token.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// A file whose first line is the bearer token every request to the metrics port needs
    /// (the dashboard reads it from its URL: http://ADDR/#token=TOKEN).
    #[arg(long, value_name = "FILE", requires = "metrics_listen")]
    pub metrics_token: Option<PathBuf>,
    /// Allow --metrics-listen on an address other than loopback (needs --metrics-token).
    #[arg(long, requires = "metrics_token")]
    pub metrics_allow_remote: bool,
    /// A labelled CSV held out at the coordinator (public or synthetic data, never a site's):
    /// every round's model is evaluated on it (holdout.csv), the kept one in summary.json.
    #[arg(long, value_name = "FILE.csv")]
    pub test_data: Option<PathBuf>,
    /// Stop after P rounds without a lower federated validation loss than the best so far
    /// (the model kept is always the best round's; see `data.validation_fraction`).
    #[arg(long, value_name = "P")]
    pub early_stop: Option<u32>,
    /// Seed of every random choice (initial model, splits, shuffles, cohorts).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Run directory: metrics.csv, checkpoint, model.safetensors, summary.json, accuracy.svg.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace an earlier run in --out (its metrics, models, summary and saved state are
    /// deleted first). Without it, a folder that holds a run is refused.
    #[arg(long)]
    pub force: bool,
    /// Share of sites sampled to train in each round.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub fraction_fit: f64,
    /// How each round's cohort is drawn: uniform, or weighted by training examples.
    #[arg(long, value_enum, default_value = "uniform")]
    pub sampling: Sampling,
    /// Updates needed to change the global model in a round.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub min_fit_results: usize,
    /// Seconds without contact after which a site is dropped from the round.
    #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
    pub lease: f64,
    /// Seconds after which a training or evaluation phase closes with what it has (a training
    /// attempt with fewer than --min-fit-results updates is abandoned and retried).
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    pub round_timeout: f64,
    /// Seconds a round waits for the rest of its cohort once --min-fit-results updates are in.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub grace: f64,
    /// Select this many times the sites a round needs, and close it as soon as enough reported.
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    pub over_selection: f64,
    /// Refuse updates whose L2 norm exceeds this bound.
    #[arg(long, value_name = "NORM")]
    pub max_update_norm: Option<f64>,
    /// Only these sites may join (repeat the flag; default: any site with a valid certificate).
    #[arg(long = "allow-site", value_name = "NAME")]
    pub allow_sites: Vec<String>,
    /// Central differential privacy: clip each update to this L2 norm (turns DP-FedAvg on
    /// with --dp-noise).
    #[arg(long, value_name = "S", requires = "dp_noise")]
    pub dp_clip: Option<f64>,
    /// Central differential privacy: noise multiplier z (noise std z·S on the sum).
    #[arg(long, value_name = "Z", requires = "dp_clip")]
    pub dp_noise: Option<f64>,
    /// Central DP, for reproducible experiments only: the coordinator's secret seed of the
    /// noise it adds. Without it the noise comes from the OS's generator, which no site can
    /// know. It stays in the coordinator's durable state (so `--resume` is bit-identical) and
    /// is never sent to a site nor written to the run's records.
    #[arg(long, value_name = "N")]
    pub dp_seed: Option<u64>,
    /// δ of the reported (ε, δ) (default 1e-5; with differential privacy only).
    #[arg(long, value_name = "D")]
    pub dp_delta: Option<f64>,
    /// Hidden layer widths of the MLP, e.g. 2048,2048,512 (overrides the task's).
    #[arg(long, value_name = "W,W,…", value_delimiter = ',')]
    pub hidden: Option<Vec<usize>>,
    /// Secure aggregation (Bonawitz et al. 2017): the coordinator learns only each round's sum
    /// of updates, never one site's. FedAvg only; combines with --dp-clip/--dp-noise (sites clip,
    /// the coordinator adds the noise after unmasking) and with --dp-local.
    #[arg(long)]
    pub secure_aggregation: bool,
    /// Local DP: every site clips and noises its own update (with --dp-clip S, --dp-noise Z)
    /// before it leaves the site; the coordinator adds nothing and only averages.
    #[arg(long, requires = "dp_clip")]
    pub dp_local: bool,
    /// Distributed DP (with --secure-aggregation and --dp-clip S --dp-noise Z): the sites add
    /// the noise, as integer Skellam noise under the masks, so the coordinator never sees the
    /// exact sum; it adds nothing.
    #[arg(long, requires = "dp_clip", conflicts_with = "dp_local")]
    pub dp_distributed: bool,
    /// Adaptive clipping: --dp-clip is the initial norm, which then tracks this quantile of
    /// the update norms (the paper's default 0.5; learning rate 0.2, count noise m/20).
    #[arg(long, value_name = "GAMMA", requires = "dp_clip")]
    pub dp_adaptive_quantile: Option<f64>,
    /// Adaptive clipping: σ_b, the noise on the count of unclipped updates (default m/20 for
    /// cohorts of m; it must exceed half the noise multiplier).
    #[arg(long, value_name = "SIGMA", requires = "dp_adaptive_quantile")]
    pub dp_count_stddev: Option<f64>,
    /// Record-level DP (DP-SGD at every site): each site picks the smallest noise that keeps
    /// every one of its records within this ε (at --dp-sgd-delta) over --rounds rounds.
    #[arg(long, value_name = "EPSILON", conflicts_with = "dp_sgd_noise")]
    pub dp_sgd_epsilon: Option<f64>,
    /// Record-level DP with a fixed noise multiplier σ (each site reports the ε it spent).
    #[arg(long, value_name = "SIGMA")]
    pub dp_sgd_noise: Option<f64>,
    /// Record-level DP: the per-example gradient clip C (default 1).
    #[arg(long, value_name = "C")]
    pub dp_sgd_clip: Option<f64>,
    /// Record-level DP: δ of the per-record (ε, δ) (default 1e-5).
    #[arg(long, value_name = "D")]
    pub dp_sgd_delta: Option<f64>,
    /// Override the task's local learning rate.
    #[arg(long, value_name = "LR")]
    pub learning_rate: Option<f64>,
    /// Override the task's local epochs per round.
    #[arg(long, value_name = "E")]
    pub local_epochs: Option<u32>,
    /// The codec of the sites' updates (the task's `[compression] update`): f32, fp16, bf16,
    /// int8 (a scale per 256 values, stochastic rounding) or topk:FRACTION (error feedback).
    #[arg(long, value_name = "CODEC")]
    pub compress: Option<flotilla_common::compress::Codec>,
    /// Federation task (model, training, data spec) as TOML; see examples/.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub strategy: StrategyArgs,
    #[command(flatten)]
    pub limits: crate::cli_limits::LimitArgs,
}

/// The aggregation strategy and its parameters (override the task's `[strategy]`).
#[derive(Debug, Args)]
pub struct StrategyArgs {
    /// fedavg, fedavgm, fedprox, fedadagrad, fedadam, fedyogi, scaffold, median, trimmed-mean,
    /// krum, multi-krum or bulyan.
    #[arg(long, value_name = "NAME")]
    pub strategy: Option<StrategyName>,
    /// Server learning rate η (overrides the task's server_learning_rate).
    #[arg(long, value_name = "ETA")]
    pub server_lr: Option<f32>,
    /// FedProx: μ of the proximal term.
    #[arg(long, value_name = "MU")]
    pub proximal_mu: Option<f64>,
    /// FedAvgM momentum / adaptive β₁.
    #[arg(long, value_name = "B")]
    pub beta1: Option<f64>,
    /// Adaptive β₂.
    #[arg(long, value_name = "B")]
    pub beta2: Option<f64>,
    /// Adaptive τ.
    #[arg(long, value_name = "TAU")]
    pub tau: Option<f64>,
    /// Trimmed mean: share trimmed from each end.
    #[arg(long, value_name = "BETA")]
    pub trim_fraction: Option<f64>,
    /// Krum, Multi-Krum, Bulyan: Byzantine sites to tolerate.
    #[arg(long, value_name = "F")]
    pub byzantine: Option<usize>,
    /// Multi-Krum: how many updates to average.
    #[arg(long, value_name = "M")]
    pub multi_krum_select: Option<usize>,
}

impl StrategyArgs {
    /// Refuses a strategy parameter that `name` does not read: it would be silently ignored.
    pub fn check_applies_to(&self, name: StrategyName) -> Result<(), String> {
        let given = [
            ("proximal_mu", "--proximal-mu", self.proximal_mu.is_some()),
            ("beta1", "--beta1", self.beta1.is_some()),
            ("beta2", "--beta2", self.beta2.is_some()),
            ("tau", "--tau", self.tau.is_some()),
            ("trim_fraction", "--trim-fraction", self.trim_fraction.is_some()),
            ("byzantine", "--byzantine", self.byzantine.is_some()),
            ("multi_krum_select", "--multi-krum-select", self.multi_krum_select.is_some()),
        ];
        for (parameter, flag, on) in given {
            if on && !name.parameters().contains(&parameter) {
                let users: Vec<&str> = StrategyName::using(parameter).into_iter().map(StrategyName::as_str).collect();
                return Err(format!("{flag} does not apply to --strategy {name} (only to {}): drop it, or choose one of those", users.join(", ")));
            }
        }
        Ok(())
    }

    /// Applies the flags that were given to the task's strategy.
    pub fn apply(&self, task: &mut Task) {
        let s = &mut task.strategy;
        if let Some(n) = self.strategy {
            s.name = n;
        }
        if let Some(v) = self.server_lr {
            task.training.server_learning_rate = v;
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { s.$f = v; } )* };
        }
        set!(proximal_mu, beta1, beta2, tau, trim_fraction, byzantine);
        if self.multi_krum_select.is_some() {
            s.multi_krum_select = self.multi_krum_select;
        }
    }
}

/// Where simulated sites come from.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// A bundled scenario.
    #[arg(long, value_enum, conflicts_with_all = ["data", "clients_dir"])]
    pub scenario: Option<Scenario>,
    /// A CSV file to split across simulated sites (needs --config and --clients).
    #[arg(long, value_name = "FILE.csv", conflicts_with = "clients_dir")]
    pub data: Option<PathBuf>,
    /// Number of simulated sites for --data (MNIST: 100).
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// How --data (or MNIST) is split: iid (the default), dirichlet:ALPHA, shards:N (the
    /// FedAvg paper's pathological non-IID split: N label-sorted shards per site), or
    /// column:NAME (one site per value of column NAME; then without --clients).
    #[arg(long, value_name = "HOW")]
    pub partition: Option<String>,
    /// A directory with one CSV per site (the file stem is the site name; needs --config).
    #[arg(long, value_name = "DIR")]
    pub clients_dir: Option<PathBuf>,
    /// Seeded synthetic clients (two Gaussian classes, label skew across clients): with
    /// --clients N --samples S --features F [--skew ALPHA].
    #[arg(long, conflicts_with_all = ["scenario", "data", "clients_dir"], requires_all = ["clients", "samples", "features"])]
    pub synthetic: bool,
    /// Rows per synthetic client (MNIST: images per site, 600).
    #[arg(long, value_name = "S")]
    pub samples: Option<usize>,
    /// Features of the synthetic data.
    #[arg(long, value_name = "F")]
    pub features: Option<usize>,
    /// Dirichlet concentration of each synthetic client's class mix (small: skewed; default 1).
    #[arg(long, value_name = "ALPHA")]
    pub skew: Option<f64>,
}

impl SourceArgs {
    /// The synthetic spec of `--synthetic`.
    pub fn synthetic_spec(&self) -> Option<SyntheticSpec> {
        match (self.synthetic, self.clients, self.samples, self.features) {
            (true, Some(c), Some(s), Some(f)) => Some(SyntheticSpec { skew: self.skew.unwrap_or(1.0), ..SyntheticSpec::new(c, s, f) }),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Skip the local-only and centralised baselines.
    #[arg(long)]
    pub no_baselines: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Talk plaintext on loopback instead of mutual TLS with a throwaway CA.
    #[arg(long)]
    pub insecure: bool,
    /// Experiments: this many sites (the last by name) are malicious and send their delta
    /// flipped and scaled by --attack-scale.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub malicious: usize,
    /// Scale of the malicious sites' sign-flipped updates (default 10; with --malicious).
    #[arg(long, value_name = "S")]
    pub attack_scale: Option<f32>,
    /// Experiments: this share of sites (the first by name) are stragglers that only manage
    /// --straggler-epochs local epochs per round.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub stragglers: f64,
    /// Epochs a straggler completes (default 1; with --stragglers).
    #[arg(long, value_name = "E")]
    pub straggler_epochs: Option<u32>,
    /// The burn CPU backend the simulated sites train and evaluate with: ndarray (the
    /// default) or flex (burn 0.22's newer backend: 1.6× on the seed MLP, 2.5× on large ones).
    #[arg(long, default_value_t = Backend::Ndarray, value_name = "ndarray|flex")]
    pub backend: Backend,
    #[command(flatten)]
    pub run: RunArgs,
}

impl SimulateArgs {
    /// Refuses the experiment flags that would be ignored without the experiment they tune.
    pub fn check_experiments(&self) -> Result<(), String> {
        if self.attack_scale.is_some() && self.malicious == 0 {
            return Err("--attack-scale tunes the attack of --malicious K sites; without --malicious it would be ignored".into());
        }
        if self.straggler_epochs.is_some() && self.stragglers <= 0.0 {
            return Err("--straggler-epochs tunes --stragglers F; without --stragglers it would be ignored".into());
        }
        Ok(())
    }
}

/// Writes each simulated site's rows to its own CSV, for `flotilla-client --data`.
#[derive(Debug, Args)]
pub struct SplitArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Federation task: needed with --data (any split: the label and columns come from it);
    /// a --scenario brings its own.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Seed of the split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Directory for `<site>.csv` files.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Sites that must have joined before training starts.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub min_clients: usize,
    /// The task of a bundled scenario (instead of --config).
    #[arg(long, value_enum, conflicts_with = "config")]
    pub scenario: Option<Scenario>,
    /// The coordinator's certificate (PEM), e.g. from `certs init`.
    #[arg(long, value_name = "FILE.pem", requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The coordinator's private key (PEM).
    #[arg(long, value_name = "FILE.key", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA whose certificates identify sites (mutual TLS).
    #[arg(long, value_name = "CA.pem", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Serve plaintext, without TLS: no authentication of sites, no confidentiality.
    /// Refused on a non-loopback address unless --allow-insecure-network is given too.
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure: bool,
    /// Allow plaintext on a non-loopback address. Anyone on the path can read and alter models.
    #[arg(long)]
    pub allow_insecure_network: bool,
    /// Continue the run saved in --out (after a crash or a stop) instead of starting afresh.
    /// The task, seed and round policy must be the ones the run was started with.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// A custom model's initial parameters (`[model] kind = "custom"`): a safetensors file of
    /// f32 tensors in burn's order, written by the model's own binary (see
    /// `examples/custom_model`). The coordinator takes the model's layout from it and never
    /// runs the model's code; every site checks the layout against its own module.
    #[arg(long, value_name = "FILE.safetensors")]
    pub init_model: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

impl RunArgs {
    /// The operator's port and who may read it, when asked for.
    pub fn operator(&self) -> Result<Option<(SocketAddr, crate::observe::http::Access)>, String> {
        let Some(addr) = self.metrics_listen else { return Ok(None) };
        let access = crate::observe::http::Access::for_address(addr, self.metrics_token.as_deref(), self.metrics_allow_remote)?;
        Ok(Some((addr, access)))
    }

    /// The round policy these flags describe.
    pub fn policy(&self, min_clients: usize) -> Result<Policy, String> {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 { Ok(Duration::from_secs_f64(v)) } else { Err(format!("--{name} must be a positive number of seconds")) }
        };
        let p = Policy {
            rounds: self.rounds,
            min_clients,
            fraction_fit: self.fraction_fit,
            min_fit_results: self.min_fit_results,
            lease: secs("lease", self.lease)?,
            round_timeout: secs("round-timeout", self.round_timeout)?,
            grace: secs("grace", self.grace)?,
            over_selection: self.over_selection,
            max_update_norm: self.max_update_norm,
            sampling: self.sampling,
            allowed_sites: (!self.allow_sites.is_empty()).then(|| self.allow_sites.iter().cloned().collect()),
            dp_seed: self.dp_seed,
            patience: self.early_stop,
            ..Policy::default()
        };
        let p = self.limits.apply(p);
        p.validate()?;
        // With every site in every round, how the cohort is drawn cannot matter.
        if p.fraction_fit >= 1.0 && p.sampling == Sampling::Weighted {
            return Err("--sampling weighted has no effect with --fraction-fit 1 (every site trains every round): lower --fraction-fit".into());
        }
        if p.fraction_fit >= 1.0 && p.over_selection > 1.0 {
            return Err(format!(
                "--over-selection {} has no effect with --fraction-fit 1 (every site is already selected): lower --fraction-fit",
                p.over_selection
            ));
        }
        Ok(p)
    }

    /// The task: the config file if given, else `fallback` (a scenario, or with `synthetic`
    /// the synthetic task); with flag overrides applied.
    pub fn task(&self, fallback: Option<Scenario>) -> Result<Task, String> {
        self.task_for(fallback, false)
    }

    /// Like [`Self::task`], for synthetic data when `synthetic`.
    pub fn task_for(&self, fallback: Option<Scenario>, synthetic: bool) -> Result<Task, String> {
        let mut task = match (&self.config, fallback) {
            (Some(path), _) => Task::from_file(path).map_err(|e| e.to_string())?,
            (None, _) if synthetic => Task::synthetic(vec![64, 32]),
            (None, Some(s)) => s.task(),
            (None, None) => return Err("a task is needed: pass --config FILE.toml or --scenario".into()),
        };
        if let Some(e) = self.local_epochs {
            task.training.local_epochs = e;
        }
        if let Some(codec) = self.compress {
            task.compression.update = codec;
        }
        if let Some(hidden) = &self.hidden {
            task.model.hidden = hidden.clone();
        }
        if let Some(lr) = self.learning_rate {
            task.training.learning_rate = lr;
        }
        self.strategy.apply(&mut task);
        self.strategy.check_applies_to(task.strategy.name)?;
        if let (Some(clip_norm), Some(noise_multiplier)) = (self.dp_clip, self.dp_noise) {
            let adaptive = self.dp_adaptive_quantile.map(|target_quantile| flotilla_common::privacy::dp_fedavg::AdaptiveClip {
                target_quantile,
                count_stddev: self.dp_count_stddev,
                ..Default::default()
            });
            task.privacy = Some(flotilla_common::privacy::DpConfig {
                clip_norm,
                noise_multiplier,
                delta: self.dp_delta.unwrap_or(1e-5),
                adaptive,
                local: self.dp_local,
                distributed: self.dp_distributed,
            });
        } else if let Some(delta) = self.dp_delta {
            match task.privacy.as_mut() {
                Some(dp) => dp.delta = delta,
                None => return Err("--dp-delta needs differential privacy: --dp-clip S --dp-noise Z, or [privacy] in the task file".into()),
            }
        }
        if self.secure_aggregation {
            task.secure_aggregation = true;
        }
        if self.dp_sgd_epsilon.is_some() || self.dp_sgd_noise.is_some() {
            task.record_privacy = Some(flotilla_common::privacy::RecordDp {
                clip_norm: self.dp_sgd_clip.unwrap_or(1.0),
                noise_multiplier: self.dp_sgd_noise,
                target_epsilon: self.dp_sgd_epsilon,
                rounds: None,
                delta: self.dp_sgd_delta.unwrap_or(1e-5),
            });
        } else if self.dp_sgd_clip.is_some() || self.dp_sgd_delta.is_some() {
            match task.record_privacy.as_mut() {
                Some(r) => {
                    r.clip_norm = self.dp_sgd_clip.unwrap_or(r.clip_norm);
                    r.delta = self.dp_sgd_delta.unwrap_or(r.delta);
                }
                None => {
                    return Err(
                        "--dp-sgd-clip and --dp-sgd-delta need record-level DP: --dp-sgd-epsilon E or --dp-sgd-noise Z, or [record_privacy] in the task file"
                            .into(),
                    );
                }
            }
        }
        // A target ε lasts the run's rounds: the sites plan their noise for --rounds.
        if let Some(r) = task.record_privacy.as_mut()
            && r.target_epsilon.is_some()
        {
            r.rounds = Some(self.rounds);
        }
        if self.dp_seed.is_some() && task.privacy.is_none_or(|dp| dp.local) {
            return Err("--dp-seed seeds the noise the coordinator adds under central DP (--dp-clip S --dp-noise Z, or [privacy] \
                        in the task file, without --dp-local); this run has none"
                .into());
        }
        task.validate().map_err(|e| e.to_string())?;
        Ok(task)
    }
}

impl SourceArgs {
    /// Where the simulated sites come from; custom data needs a task file (`has_config`).
    /// A flag the chosen source would ignore is refused, naming it.
    pub fn source(&self, has_config: bool) -> Result<SiteSource, String> {
        let need_config = |flag: &str| {
            if has_config { Ok(()) } else { Err(format!("{flag} needs --config FILE.toml (label and columns of the task)")) }
        };
        // Which flags each source reads; any other that was given would be silently ignored.
        let given: [(&str, bool); 5] = [
            ("--clients", self.clients.is_some()),
            ("--partition", self.partition.is_some()),
            ("--samples", self.samples.is_some()),
            ("--features", self.features.is_some()),
            ("--skew", self.skew.is_some()),
        ];
        let only = |source: &str, reads: &[&str]| -> Result<(), String> {
            match given.iter().find(|(flag, on)| *on && !reads.contains(flag)) {
                Some((flag, _)) => Err(format!("{flag} does not apply to {source}: drop it (it would be ignored)")),
                None => Ok(()),
            }
        };
        if self.synthetic {
            only("--synthetic", &["--clients", "--samples", "--features", "--skew"])?;
            return self.synthetic_spec().map(SiteSource::Synthetic).ok_or_else(|| "--synthetic needs --clients N --samples S --features F".into());
        }
        match (&self.scenario, &self.data, &self.clients_dir) {
            (Some(s), None, None) if s.is_mnist() => {
                only("--scenario mnist", &["--clients", "--partition", "--samples"])?;
                let partition: Partition = self.partition.as_deref().unwrap_or("iid").parse()?;
                if let Partition::Column(c) = &partition {
                    return Err(format!("--partition column:{c}: MNIST's images have no columns; use iid, shards:N or dirichlet:ALPHA"));
                }
                let clients = self.clients.unwrap_or(crate::scenario::MNIST_SITES);
                let per_site = self.samples.unwrap_or(crate::scenario::MNIST_PER_SITE);
                Ok(SiteSource::Mnist { clients, per_site, partition })
            }
            (Some(s), None, None) => {
                only("--scenario", &[])?;
                Ok(SiteSource::Scenario(*s))
            }
            (None, Some(file), None) => {
                only("--data", &["--clients", "--partition"])?;
                let partition: Partition = self.partition.as_deref().unwrap_or("iid").parse()?;
                let clients = match (&partition, self.clients) {
                    (Partition::Column(name), Some(n)) => {
                        return Err(format!(
                            "--partition column:{name} makes one site per value of column `{name}`; --clients {n} cannot apply: drop --clients"
                        ));
                    }
                    (Partition::Column(_), None) => 0,
                    (_, Some(n)) => n,
                    (_, None) => return Err("--data needs --clients N (or --partition column:NAME, one site per value)".into()),
                };
                need_config("--data")?;
                Ok(SiteSource::Csv { file: file.clone(), clients, partition })
            }
            (None, None, Some(dir)) => {
                only("--clients-dir", &[])?;
                need_config("--clients-dir")?;
                Ok(SiteSource::Dir(dir.clone()))
            }
            _ => Err("say where the sites come from: --scenario hospitals|banks|mnist|mnist-cnn, --data FILE.csv --clients N, or --clients-dir DIR".into()),
        }
    }
}
