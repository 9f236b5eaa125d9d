//! `custom-model`: the example's one binary. `simulate` trains TinyNet in a federation in one
//! command; `init` and `site` run it across processes with the stock coordinator:
//!
//! ```text
//! custom-model init --out init.safetensors
//! flotilla-coordinator serve --config examples/custom_model/task.toml --init-model init.safetensors --insecure --min-clients 2 --out runs/tiny
//! flotilla-coordinator split --scenario mnist --clients 2 --samples 300 --out sites/
//! custom-model site --coordinator http://127.0.0.1:50051 --insecure --site site-001 --data sites/site-001-images-idx3-ubyte.gz
//! custom-model site --coordinator http://127.0.0.1:50051 --insecure --site site-002 --data sites/site-002-images-idx3-ubyte.gz
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flotilla_client::{ClientTls, SiteOptions, run_site};
use flotilla_common::model::initial::write_initial_model;
use flotilla_common::site::SiteInput;
use flotilla_example_custom_model as example;
use tokio_util::sync::CancellationToken;

/// Your own burn model (TinyNet, defined in this crate) in a Flotilla federation.
#[derive(Debug, Parser)]
#[command(name = "custom-model", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A federation of MNIST sites in this process (mutual TLS), TinyNet scored on MNIST's
    /// 10,000 test images every round.
    Simulate {
        #[arg(long, default_value_t = 4)]
        sites: usize,
        /// Training images per site.
        #[arg(long, default_value_t = 600)]
        images: usize,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "runs/custom_model")]
        out: PathBuf,
    },
    /// Write TinyNet's initial parameters for `flotilla-coordinator serve --init-model`.
    Init {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "init.safetensors")]
        out: PathBuf,
    },
    /// One site: `flotilla-client` with TinyNet registered.
    Site {
        #[arg(long, value_name = "URL")]
        coordinator: String,
        #[arg(long)]
        site: String,
        /// The site's images: an IDX file (its labels beside it) or a folder per class.
        #[arg(long, value_name = "PATH")]
        data: PathBuf,
        #[arg(long, value_name = "CA.pem", requires_all = ["cert", "key"])]
        ca: Option<PathBuf>,
        #[arg(long, value_name = "SITE.pem")]
        cert: Option<PathBuf>,
        #[arg(long, value_name = "SITE.key")]
        key: Option<PathBuf>,
        /// Plaintext to a loopback coordinator.
        #[arg(long, conflicts_with = "ca")]
        insecure: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into())).init();
    match Args::parse().command {
        Command::Simulate { sites, images, rounds, seed, out } => {
            eprintln!("training TinyNet on {sites} MNIST sites of {images} images, {rounds} rounds (results in {})", out.display());
            let sim = example::simulate(sites, images, rounds, seed, &out, true).await?;
            for r in sim.outcome.history.iter().filter(|r| r.round > 0) {
                println!("round {:>3}: accuracy on the sites' test images {:.4}", r.round, r.accuracy);
            }
            // holdout.csv: round, loss, accuracy, … of every round's model on MNIST's test set.
            let holdout = std::fs::read_to_string(out.join("holdout.csv")).unwrap_or_default();
            if let Some(accuracy) = holdout.lines().last().and_then(|l| l.split(',').nth(2)) {
                println!("accuracy on MNIST's 10,000 test images after the last round: {accuracy}");
            }
            println!("model SHA-256 {} ({} parameters) in {:.1} s; {}", sim.model_sha256, sim.outcome.model.values().len(), sim.seconds, out.display());
        }
        Command::Init { seed, out } => {
            let params = example::initial_model(&example::task_file()?, seed)?;
            write_initial_model(&out, &params)?;
            println!("wrote {} ({} tensors, {} parameters, SHA-256 {})", out.display(), params.layout().tensors().len(), params.values().len(), params.hash());
        }
        Command::Site { coordinator, site, data, ca, cert, key, insecure } => {
            example::register()?;
            let mut opts = SiteOptions::new(coordinator, site);
            opts.tls = match (ca, cert, key) {
                (Some(ca), Some(cert), Some(key)) => Some(ClientTls::from_files(&ca, &cert, &key)?),
                _ if insecure => None,
                _ => anyhow::bail!("give the site's certificate (--ca --cert --key), or --insecure for a plaintext loopback coordinator"),
            };
            opts.connect_patience = Duration::from_secs(30);
            let input = SiteInput::image_files(&data).with_context(|| format!("reading {}", data.display()))?;
            let report = run_site(opts, input, CancellationToken::new()).await?;
            println!("{report:?}");
        }
    }
    Ok(())
}
