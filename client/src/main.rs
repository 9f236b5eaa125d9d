//! `flotilla-client`: one site of a federation. Parses flags, reads the site's CSV, and runs
//! the site until the coordinator says the federation is done.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use flotilla_client::{run_site, SiteOptions};
use flotilla_common::data::RawTable;
use tokio_util::sync::CancellationToken;

/// A site of a Flotilla federation: trains on local data, sends only weight deltas.
#[derive(Debug, Parser)]
#[command(name = "flotilla-client", version, about, long_about = None)]
struct Args {
    /// The coordinator's URL, e.g. http://127.0.0.1:50051.
    #[arg(long, value_name = "URL")]
    coordinator: String,
    /// This site's CSV file (a header row, then only this site's rows).
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// This site's name in the federation.
    #[arg(long, value_name = "NAME")]
    site: String,
    /// Connect without TLS. Required for now: TLS is not implemented yet, so only use this
    /// on loopback or a network you trust.
    #[arg(long)]
    insecure: bool,
    /// Seconds between heartbeats while training.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    heartbeat: f64,
    /// Seconds to keep trying to reach the coordinator at start.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    connect_timeout: f64,
    /// Seed of this site's randomness (train/test split, shuffles, augmentation).
    /// Default: the federation's seed, so the coordinator's --seed reproduces the whole run.
    #[arg(long, value_name = "SEED")]
    seed: Option<u64>,
    /// Log filter (e.g. info, debug, flotilla_client=debug).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(&args.log)).with_target(false).init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
    if !args.insecure {
        anyhow::bail!("TLS is not available yet: pass --insecure to connect in plaintext (loopback or a trusted network only)");
    }
    if !(args.heartbeat > 0.0 && args.connect_timeout >= 0.0) {
        anyhow::bail!("--heartbeat must be positive and --connect-timeout non-negative");
    }
    let table = RawTable::read(&args.data).with_context(|| format!("reading the data of site `{}`", args.site))?;
    let mut opts = SiteOptions::new(args.coordinator.clone(), args.site.clone());
    opts.heartbeat = Duration::from_secs_f64(args.heartbeat);
    opts.connect_patience = Duration::from_secs_f64(args.connect_timeout);
    opts.seed = args.seed;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: leaving the federation");
            signal.cancel();
        }
    });
    let report = run_site(opts, table, shutdown).await.with_context(|| format!("site `{}`", args.site))?;
    tracing::info!(
        trained = report.rounds_trained,
        evaluations = report.evaluations,
        train = report.train_examples,
        test = report.test_examples,
        "{}",
        report.reason
    );
    Ok(())
}
