//! `flotilla-coordinator`: parses flags, sets up logging, and runs `simulate` or `serve`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use flotilla_client::shutdown::terminated;
use flotilla_common::Task;
use flotilla_common::pki;
use flotilla_coordinator::cli::{CertsCommand, Cli, Command, InitArgs, LogFormat, PrivacyArgs, ServeArgs, SimulateArgs, SplitArgs, SynthArgs};
use flotilla_coordinator::durable::StateDir;
use flotilla_coordinator::federation::{Federation, Metric};
use flotilla_coordinator::run_dir::{self, RunDir, write_final};
use flotilla_coordinator::scenario::load_sites;
use flotilla_coordinator::simulate::{SimulateOptions, report, simulate};
use flotilla_coordinator::tls::ServerTls;
use flotilla_coordinator::{custom_model, runner, summary};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulation draws a progress bar: only warnings go to the log by default there.
    let default = match cli.command {
        Command::Simulate(_) => "warn",
        Command::Serve(_)
        | Command::Split(_)
        | Command::Certs(_)
        | Command::Privacy(_)
        | Command::Synth(_)
        | Command::Init(_)
        | Command::Profile(_)
        | Command::Report(_) => "info",
    };
    let filter = cli.log.clone().unwrap_or_else(|| default.to_owned());
    // Logs go to stderr, in colour only when it is a terminal (never into a redirected file).
    let logs = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_target(false).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Command::Simulate(a) => run_simulate(a),
        Command::Serve(a) => run_serve(a),
        Command::Split(a) => run_split(a),
        Command::Certs(c) => run_certs(c),
        Command::Privacy(p) => run_privacy(&p),
        Command::Synth(s) => run_synth(&s),
        Command::Init(i) => run_init(&i),
        Command::Profile(a) => run_profile(a),
        Command::Report(r) => flotilla_coordinator::report::run(&r.runs, &r.out).map_err(anyhow::Error::msg).map(|()| println!("wrote {}", r.out.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla-coordinator: {}", flotilla_client::error::describe(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run_init(a: &InitArgs) -> anyhow::Result<()> {
    let draft = flotilla_coordinator::init::run(&a.data, &a.label, &a.out, a.force).map_err(anyhow::Error::msg)?;
    eprint!("{}", flotilla_coordinator::init::describe(&draft));
    println!(
        "wrote {}: read its comments, then run `flotilla-coordinator simulate --data {} --config {} --clients 4 --out run`",
        a.out.display(),
        a.data.display(),
        a.out.display()
    );
    Ok(())
}

#[tokio::main]
async fn run_simulate(a: SimulateArgs) -> anyhow::Result<()> {
    let source = a.source.source(a.run.config.is_some()).map_err(anyhow::Error::msg)?;
    a.check_experiments().map_err(anyhow::Error::msg)?;
    let task = a.run.task_for(a.source.scenario, a.source.synthetic).map_err(anyhow::Error::msg)?;
    let policy = a.run.policy(1).map_err(anyhow::Error::msg)?;
    let sim = simulate(SimulateOptions {
        source,
        task,
        seed: a.run.seed,
        policy,
        out: a.run.out.clone(),
        progress: !a.quiet,
        baselines: !a.no_baselines,
        tls: !a.insecure,
        malicious: a.malicious,
        attack_scale: a.attack_scale.unwrap_or(10.0),
        stragglers: a.stragglers,
        straggler_epochs: a.straggler_epochs.unwrap_or(1),
        backend: a.backend,
        force: a.run.force,
        // MNIST's own test images score every round, as in the FedAvg paper.
        test_data: held_out(a.run.test_data.as_ref(), a.source.scenario)?,
        operator: a.run.operator().map_err(anyhow::Error::msg)?,
    })
    .await?;
    if let Some(c) = &sim.comparison {
        println!("{}", report::comparison_table(c));
        println!(
            "federated pooled {metric} {:.3} vs. local-only mean {:.3} vs. centralized {:.3}",
            c.federated.pooled.headline(),
            report::local_mean_score(c),
            c.centralized.pooled.headline(),
            metric = report::metric(c),
        );
    } else if let Some(kept) = sim.outcome.best_round.and_then(|b| sim.outcome.history.iter().find(|r| r.round == b)).or(sim.outcome.history.last()) {
        let which = if sim.outcome.best_round.is_some() { "lowest validation loss" } else { "last round" };
        if let Some(r) = &kept.regression {
            let r2 = r.r2().map_or("–".into(), |v| format!("{v:.3}"));
            println!("kept global model (round {}, {which}): R² {r2}, RMSE {:.4}, MAE {:.4}", kept.round, r.rmse(), r.mae);
        } else if kept.accuracy.is_finite() {
            println!("kept global model (round {}, {which}): accuracy {:.3}, loss {:.4}", kept.round, kept.accuracy, kept.loss);
        } else {
            println!("kept global model: no site evaluated it (round {})", kept.round);
        }
    }
    println!("{} rounds in {:.1} s; run directory {}", a.run.rounds, sim.seconds, a.run.out.display());
    println!("model file sha256 {}", sim.model_sha256);
    refuse_unusable(&sim.outcome.history, &a.run.out)
}

/// The held-out set: `--test-data`, else MNIST's own test images in the MNIST scenarios (as
/// the FedAvg paper scores every round).
fn held_out(given: Option<&std::path::PathBuf>, scenario: Option<flotilla_coordinator::scenario::Scenario>) -> anyhow::Result<Option<std::path::PathBuf>> {
    Ok(match (given, scenario) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(s)) if s.is_mnist() => Some(flotilla_coordinator::scenario::mnist_test_images()?),
        (None, _) => None,
    })
}

#[tokio::main]
async fn run_serve(a: ServeArgs) -> anyhow::Result<()> {
    let tls = match (&a.tls_cert, &a.tls_key, &a.client_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(ServerTls::from_files(cert, key, ca)?),
        _ if a.insecure => None,
        _ => anyhow::bail!(
            "give the coordinator its certificate (--tls-cert coordinator.pem --tls-key coordinator.key --client-ca ca.pem; \
             `flotilla-coordinator certs init` makes them), or pass --insecure for plaintext"
        ),
    };
    if tls.is_none() && !a.listen.ip().is_loopback() {
        if !a.allow_insecure_network {
            anyhow::bail!("refusing plaintext on non-loopback address {}: add --allow-insecure-network if you really mean it", a.listen);
        }
        tracing::warn!(listen = %a.listen, "SERVING PLAINTEXT ON A NETWORK ADDRESS: models and updates can be read and altered in transit");
    }
    let mut task = a.run.task(a.scenario).map_err(anyhow::Error::msg)?;
    let initial = match &a.init_model {
        Some(path) => Some(std::sync::Arc::new(custom_model::take_initial(&mut task, path).map_err(anyhow::Error::msg)?)),
        None => None,
    };
    custom_model::check_servable(&task, a.run.test_data.is_some()).map_err(anyhow::Error::msg)?;
    let policy = a.run.policy(a.min_clients).map_err(anyhow::Error::msg)?;
    policy.validate_for_task(&task).map_err(anyhow::Error::msg)?;
    if let Some(allowed) = &policy.allowed_sites {
        policy.validate_for_sites(allowed.len()).map_err(|e| anyhow::anyhow!("{e} (the allow list names {} sites)", allowed.len()))?;
    }
    task.strategy.validate(policy.cohort_size(policy.min_clients)).map_err(anyhow::Error::msg)?;
    if let Some(dp) = &task.privacy {
        dp.validate_for_cohort(policy.cohort_size(policy.min_clients)).map_err(anyhow::Error::msg)?;
    }
    if !a.resume {
        run_dir::claim_for_new_run(&a.run.out, a.run.force, "continue it with --resume, replace it with --force, or choose another --out folder")?;
    }
    let state = StateDir::create(&a.run.out)?;
    let (federation, run_dir) = if a.resume {
        let (snapshot, updates) = state.load()?;
        let history = snapshot.history.clone();
        let kept = updates.len();
        let federation = Federation::resume(task.clone(), a.run.seed, policy.clone(), snapshot, updates, std::time::Instant::now())
            .map_err(|e| anyhow::anyhow!("cannot resume the run in {}: {e}", a.run.out.display()))?;
        if let Some(outcome) = federation.outcome() {
            return finished_already(&a, &task, &policy, &outcome);
        }
        tracing::info!(
            round = federation.round(),
            rounds_done = history.len().saturating_sub(1),
            kept_updates = kept,
            "resuming the saved run; waiting for its sites to rejoin"
        );
        (federation, RunDir::resume(&a.run.out, &history)?)
    } else {
        state.clear()?;
        (Federation::new(task.clone(), a.run.seed, policy.clone()), RunDir::create(&a.run.out)?)
    };
    let mut federation = federation;
    if let Some(initial) = initial {
        federation.set_initial_model(initial).map_err(|e| anyhow::anyhow!("--init-model: {e}"))?;
    }
    let test_data = held_out(a.run.test_data.as_ref(), a.scenario)?;
    let run_dir = match &test_data {
        Some(data) => {
            let mut dir = run_dir.with_holdout(data, &task)?;
            if let Some(plan) = federation.plan() {
                dir.plan_ready(&plan)?;
            }
            dir
        }
        None => run_dir,
    };
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
    let operator = a.run.operator().map_err(anyhow::Error::msg)?;
    let running = runner::start_federation(federation, &policy, Some(run_dir), Some(state), listener, tls)?;
    if let Some((addr, access)) = operator {
        let port = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} (--metrics-listen)"))?;
        running.serve_operator(port, access)?;
    }
    tracing::info!(url = %running.url(), rounds = a.run.rounds, min_clients = a.min_clients, "coordinator listening");
    let interrupted = CancellationToken::new();
    let on_signal = interrupted.clone();
    tokio::spawn(async move {
        terminated().await;
        tracing::warn!("interrupted: stopping; the saved state stays in the run directory");
        on_signal.cancel();
    });
    let finished = running.wait_done(&interrupted).await;
    let outcome = running.finish(Duration::from_secs(if finished { 10 } else { 0 })).await?;
    let Some(outcome) = outcome else {
        let checkpoint = a.run.out.join("checkpoint.safetensors");
        if checkpoint.exists() {
            tracing::warn!("stopped before the last round; the model of the last closed round is {}; continue with --resume", checkpoint.display());
        } else {
            tracing::warn!(
                "stopped before any round closed: there is no checkpoint yet; --resume starts again from the saved state in {}",
                a.run.out.join("state").display()
            );
        }
        return Ok(());
    };
    let mut summary = summary::summary(&task, a.run.seed, &outcome, None);
    summary["config"] = summary::config(&task, &policy, a.run.seed, None);
    if let Some(data) = &test_data {
        summary["holdout"] = flotilla_coordinator::holdout::summary_of_kept(data, &task, &outcome.plan, &outcome.model).map_err(anyhow::Error::msg)?;
    }
    let sha = write_final(&a.run.out, &task, &outcome, &summary)?;
    if let Some(last) = outcome.history.last() {
        tracing::info!(accuracy = %Metric(Some(last.accuracy)), loss = %Metric(Some(last.loss)), model_file_sha256 = %sha, "federation finished");
    }
    refuse_unusable(&outcome.history, &a.run.out)
}

/// `serve --resume` on a run that already finished: says so (writing the final files if the
/// coordinator stopped before it could) instead of waiting for sites that will not come.
fn finished_already(
    a: &ServeArgs,
    task: &Task,
    policy: &flotilla_coordinator::federation::Policy,
    outcome: &flotilla_coordinator::federation::Outcome,
) -> anyhow::Result<()> {
    let out = &a.run.out;
    if !out.join("model.safetensors").exists() || !out.join("summary.json").exists() {
        let mut summary = summary::summary(task, a.run.seed, outcome, None);
        summary["config"] = summary::config(task, policy, a.run.seed, None);
        write_final(out, task, outcome, &summary)?;
    }
    println!(
        "the run in {} is complete ({} rounds): nothing to resume; its model is {}",
        out.display(),
        outcome.history.last().map_or(0, |r| r.round),
        out.join("model.safetensors").display()
    );
    refuse_unusable(&outcome.history, out)
}

/// A federation that ran to its end without a usable model fails (after its files are written).
fn refuse_unusable(history: &[flotilla_coordinator::federation::RoundRecord], out: &std::path::Path) -> anyhow::Result<()> {
    match flotilla_coordinator::verdict::unusable_model(history) {
        Some(reason) => anyhow::bail!("the federation ended without a usable model: {reason} (run directory {})", out.display()),
        None => Ok(()),
    }
}

fn run_synth(a: &SynthArgs) -> anyhow::Result<()> {
    use flotilla_common::data::synthetic::SyntheticSpec;
    let spec = SyntheticSpec { skew: a.skew, ..SyntheticSpec::new(a.clients, a.samples, a.features) };
    let task = Task::synthetic(a.hidden.clone());
    task.validate().with_context(|| format!("--hidden {:?}", a.hidden))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let write = |name: &str, text: &str| {
        let path = a.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    for k in 0..a.clients {
        write(&format!("client{k:05}.csv"), &spec.client_csv(a.seed, k).map_err(anyhow::Error::msg)?)?;
    }
    write("task.toml", &task.to_toml())?;
    // The test rows are no site's: apart, so that `--clients-dir` does not take them for one.
    let test_dir = a.out.join("test");
    std::fs::create_dir_all(&test_dir).with_context(|| format!("creating {}", test_dir.display()))?;
    write("test/test.csv", &spec.test_csv(a.seed, a.test_samples))?;
    println!(
        "{} clients × {} rows × {} features and task.toml in {}; a test set of {} rows in {}",
        a.clients,
        a.samples,
        a.features,
        a.out.display(),
        a.test_samples,
        test_dir.join("test.csv").display()
    );
    Ok(())
}

fn run_privacy(p: &PrivacyArgs) -> anyhow::Result<()> {
    use flotilla_common::privacy::accountant::{Step, default_orders, epsilon};
    let spent = epsilon(&[Step { q: p.sampling_rate, sigma: p.noise_multiplier, count: p.rounds }], p.delta, default_orders())?;
    println!(
        "epsilon {:.4} at delta {:e} (Renyi order {}) for {} rounds, sampling rate {}, noise multiplier {}",
        spent.epsilon, spent.delta, spent.order, p.rounds, p.sampling_rate, p.noise_multiplier
    );
    Ok(())
}

/// The task and the sites of `split` and `profile` (`verb` names the command in the error).
fn task_and_sites(a: &SplitArgs, verb: &str) -> anyhow::Result<(Task, Vec<(String, flotilla_common::site::SiteInput)>)> {
    let source = a.source.source(a.config.is_some()).map_err(anyhow::Error::msg)?;
    let task = match (&a.config, a.source.scenario) {
        (Some(path), _) => Task::from_file(path)?,
        (None, Some(s)) => s.task(),
        (None, None) => anyhow::bail!("--config FILE.toml is needed to {verb} --data"),
    };
    let sites = load_sites(&source, &task, a.seed)?;
    Ok((task, sites))
}

fn run_profile(a: SplitArgs) -> anyhow::Result<()> {
    let (task, sites) = task_and_sites(&a, "profile")?;
    let profile = flotilla_coordinator::profile::of_sites(&sites, &task, a.seed)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    profile.write(&a.out).map_err(anyhow::Error::msg)?;
    print!("{}", flotilla_coordinator::profile::describe(&profile));
    println!("wrote {} and {}", a.out.join("profile.json").display(), a.out.join("profile.svg").display());
    Ok(())
}

fn run_split(a: SplitArgs) -> anyhow::Result<()> {
    let (task, sites) = task_and_sites(&a, "split")?;
    // Every name is checked before anything is written: a data value cannot escape --out.
    let paths = sites
        .iter()
        .map(|(name, _)| flotilla_coordinator::site_files::site_csv_path(&a.out, name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for ((_, input), path) in sites.iter().zip(&paths) {
        match input {
            flotilla_common::site::SiteInput::Table(table) => {
                table.write(path)?;
                println!("{} rows -> {}", table.rows.len(), path.display());
            }
            // Images go out as an IDX pair, which `flotilla-client --data` reads.
            flotilla_common::site::SiteInput::Images(images) => {
                let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("site");
                let (pixels, labels) =
                    (path.with_file_name(format!("{name}-images-idx3-ubyte.gz")), path.with_file_name(format!("{name}-labels-idx1-ubyte.gz")));
                images.write_idx(&pixels, &labels, task.data.label.classes.as_deref().unwrap_or_default())?;
                println!("{} images -> {}", images.len(), pixels.display());
            }
            flotilla_common::site::SiteInput::ImageFiles { path, .. } => anyhow::bail!("{}: images not read yet", path.display()),
        }
    }
    Ok(())
}

fn run_certs(c: CertsCommand) -> anyhow::Result<()> {
    match c {
        CertsCommand::Init { out, sites, dns, ips, days } => {
            let dns = if dns.is_empty() { vec!["localhost".to_owned()] } else { dns };
            let ips = if ips.is_empty() { vec![std::net::IpAddr::from([127, 0, 0, 1])] } else { ips };
            pki::init_dir(&out, &sites, &dns, &ips, days)?;
            println!("wrote ca.pem, ca.key, coordinator.pem, coordinator.key and {} site certificate(s) to {}", sites.len(), out.display());
            println!("keep ca.key offline; give each site its <site>.pem, <site>.key and ca.pem");
        }
        CertsCommand::Sign { ca, ca_key, csr, out, days } => {
            let ca = pki::Issued {
                cert_pem: pki::read_pem(&ca).context("reading the CA certificate (--ca)")?,
                key_pem: pki::read_pem(&ca_key).context("reading the CA key (--ca-key)")?,
            };
            let request = pki::read_pem(&csr).context("reading the site's signing request (--csr)")?;
            let (cert, site) = pki::sign_request(&ca, &request, pki::Validity::days(days)).with_context(|| format!("signing {} (--csr)", csr.display()))?;
            pki::write_pem(&out, &cert, false).context("writing the certificate (--out)")?;
            println!("signed a certificate for site `{site}`, valid {days} days: {}", out.display());
        }
    }
    Ok(())
}
