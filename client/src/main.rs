//! `flotilla-client`: one site of a federation. Parses flags, reads the site's CSV, and runs
//! the site until the coordinator says the federation is done.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flotilla_client::shutdown::terminated;
use flotilla_client::{ClientTls, SiteOptions, run_site};
use flotilla_common::data::RawTable;
use flotilla_common::pki;
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
    /// δ of this site's budget.
    #[arg(long, default_value_t = 1e-5, value_name = "DELTA")]
    max_delta: f64,
    /// Seed of this site's randomness (train/test split, shuffles, augmentation).
    /// Default: the federation's seed, so the coordinator's --seed reproduces the whole run.
    #[arg(long, value_name = "SEED")]
    seed: Option<u64>,
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

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
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
    let table = RawTable::read(&data).with_context(|| format!("reading the data of site `{site}`"))?;
    let mut opts = SiteOptions::new(coordinator, site.clone());
    opts.tls = tls;
    opts.heartbeat = Duration::from_secs_f64(args.heartbeat);
    opts.connect_patience = Duration::from_secs_f64(args.connect_timeout);
    opts.seed = args.seed;
    opts.backend = args.backend;
    opts.budget = args.max_epsilon.map(|e| (e, args.max_delta));
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        terminated().await;
        tracing::warn!("interrupted: leaving the federation");
        signal.cancel();
    });
    let report = run_site(opts, table, shutdown).await.with_context(|| format!("site `{site}`"))?;
    tracing::info!(
        trained = report.rounds_trained,
        evaluations = report.evaluations,
        train = report.train_examples,
        test = report.test_examples,
        refused_updates = report.refused_updates,
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
