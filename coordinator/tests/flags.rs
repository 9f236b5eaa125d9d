#![allow(clippy::unwrap_used)] // a test file: a failed unwrap is a failed test
//! Every flag of `simulate` is honoured or refused: a flag that nothing checks is how a setting
//! gets silently ignored. Each row runs one short simulation (the hospitals, 1 round unless the
//! row says otherwise, plaintext, no baselines) with the flag and checks what it changed in the
//! run directory against the run without it. (`--quiet` only changes the terminal, `--force`
//! and the refused combinations have their own tests in `cli.rs`.)

use std::collections::HashMap;
use std::process::Command;

/// What a run left in its directory.
struct Run {
    ok: bool,
    stderr: String,
    rows: Vec<HashMap<String, String>>,
    summary: serde_json::Value,
    pki: bool,
}

impl Run {
    fn cell(&self, round: usize, column: &str) -> &str {
        self.rows.get(round).and_then(|r| r.get(column)).map_or("", String::as_str)
    }
    fn config(&self) -> &serde_json::Value {
        &self.summary["config"]
    }
    fn params(&self, round: usize) -> &str {
        self.cell(round, "params_sha256")
    }
}

fn simulate(extra: &[&str], tls: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["simulate", "--no-baselines", "--quiet", "--out", dir.path().to_str().unwrap()];
    if !extra.contains(&"--rounds") {
        args.extend(["--rounds", "1"]);
    }
    if !extra.contains(&"--synthetic") {
        args.extend(["--scenario", "hospitals"]);
    }
    if !tls {
        args.push("--insecure");
    }
    args.extend(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla-coordinator")).args(&args).env("NO_COLOR", "1").output().unwrap();
    let metrics = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap_or_default();
    let mut lines = metrics.lines();
    let header: Vec<String> = lines.next().unwrap_or_default().split(',').map(str::to_owned).collect();
    let rows = lines.map(|l| header.iter().cloned().zip(l.split(',').map(str::to_owned)).collect()).collect();
    let summary = std::fs::read_to_string(dir.path().join("summary.json")).map_or(serde_json::Value::Null, |s| serde_json::from_str(&s).unwrap());
    Run { ok: out.status.success(), stderr: String::from_utf8_lossy(&out.stderr).into_owned(), rows, summary, pki: dir.path().join("pki/ca.pem").exists() }
}

type Check = fn(&Run, &Run) -> bool;

#[test]
fn every_flag_of_simulate_changes_what_it_says_in_the_run_directory() {
    let base = simulate(&[], false);
    assert!(base.ok && base.rows.len() == 2, "{}", base.stderr);
    let synthetic = ["--synthetic", "--clients", "3", "--samples", "60", "--features", "3"];
    let synthetic_base = simulate(&synthetic, false);
    assert!(synthetic_base.ok, "{}", synthetic_base.stderr);
    let cases: Vec<(Vec<&str>, Check)> = vec![
        (vec!["--rounds", "2"], |r, _| r.rows.len() == 3),
        // The validation loss of the hospitals stops falling within 30 rounds.
        (vec!["--test-data", concat!(env!("CARGO_MANIFEST_DIR"), "/../data/heart_disease_uci.csv")], |r, b| {
            r.summary["holdout"]["examples"] == 920 && b.summary.get("holdout").is_none()
        }),
        (vec!["--rounds", "30", "--early-stop", "1"], |r, _| r.rows.len() < 31 && r.config()["round_policy"]["early_stop_patience"] == 1),
        (vec!["--seed", "7"], |r, b| r.params(0) != b.params(0) && r.config()["seed"] == 7),
        (vec!["--fraction-fit", "0.5"], |r, b| r.cell(1, "selected") == "2" && b.cell(1, "selected") == "4"),
        (vec!["--fraction-fit", "0.5", "--sampling", "weighted"], |r, _| r.cell(1, "selected") == "2" && r.config()["round_policy"]["sampling"] == "weighted"),
        (vec!["--fraction-fit", "0.5", "--over-selection", "2"], |r, _| r.cell(1, "selected") == "4" && r.config()["round_policy"]["over_selection"] == 2.0),
        (vec!["--min-fit-results", "3"], |r, _| r.config()["round_policy"]["min_fit_results"] == 3),
        (vec!["--lease", "7"], |r, _| r.config()["round_policy"]["lease_seconds"] == 7.0),
        (vec!["--round-timeout", "30"], |r, _| r.config()["round_policy"]["round_timeout_seconds"] == 30.0),
        (vec!["--grace", "5"], |r, _| r.config()["round_policy"]["grace_seconds"] == 5.0),
        (vec!["--max-update-norm", "1000"], |r, b| r.config()["round_policy"]["max_update_norm"] == 1000.0 && r.params(1) == b.params(1)),
        (vec!["--max-update-norm", "0.0001"], |r, _| !r.ok && r.cell(1, "rejected") == "4" && r.cell(1, "clients") == "0"),
        (vec!["--allow-site", "Cleveland", "--allow-site", "Hungary", "--allow-site", "Switzerland", "--allow-site", "VA Long Beach"], |r, _| {
            r.config()["round_policy"]["allowed_sites"].as_array().is_some_and(|a| a.len() == 4)
        }),
        (vec!["--dp-clip", "1", "--dp-noise", "0.5"], |r, b| !r.cell(1, "epsilon").is_empty() && b.cell(1, "epsilon").is_empty()),
        (vec!["--dp-clip", "1", "--dp-noise", "0.5", "--dp-delta", "0.001"], |r, _| r.config()["differential_privacy"]["delta"] == 0.001),
        (vec!["--dp-clip", "0.1", "--dp-noise", "0.3", "--dp-adaptive-quantile", "0.5"], |r, _| {
            !r.cell(1, "clip_norm").is_empty() && r.cell(1, "clip_norm") != "0.100000"
        }),
        (vec!["--dp-clip", "0.1", "--dp-noise", "0.3", "--dp-adaptive-quantile", "0.5", "--dp-count-stddev", "1"], |r, _| {
            r.config()["differential_privacy"]["adaptive"]["count_stddev"] == 1.0
        }),
        (vec!["--dp-clip", "1", "--dp-noise", "0.5", "--dp-local"], |r, _| r.config()["differential_privacy"]["local"] == true),
        (vec!["--dp-sgd-epsilon", "8"], |r, b| {
            r.cell(1, "record_epsilon").parse::<f64>().is_ok_and(|e| e > 7.9 && e <= 8.0) && b.cell(1, "record_epsilon").is_empty()
        }),
        (vec!["--dp-sgd-noise", "1.5"], |r, _| r.config()["record_privacy"]["noise_multiplier"] == 1.5 && !r.cell(1, "record_epsilon").is_empty()),
        (vec!["--dp-sgd-epsilon", "8", "--dp-sgd-clip", "0.5"], |r, _| r.config()["record_privacy"]["clip_norm"] == 0.5),
        (vec!["--dp-sgd-epsilon", "8", "--dp-sgd-delta", "0.000001"], |r, _| r.config()["record_privacy"]["delta"] == 1e-6),
        (vec!["--secure-aggregation", "--dp-clip", "1", "--dp-noise", "0.5", "--dp-distributed"], |r, _| {
            r.config()["differential_privacy"]["distributed"] == true && !r.cell(1, "epsilon").is_empty() && r.cell(1, "clients") == "4"
        }),
        (vec!["--secure-aggregation"], |r, _| r.config()["secure_aggregation"] == true && r.cell(1, "clients") == "4"),
        (vec!["--hidden", "8"], |r, b| r.summary["model"]["hidden"] == serde_json::json!([8]) && r.params(0) != b.params(0)),
        (vec!["--learning-rate", "0.01"], |r, b| r.params(1) != b.params(1) && r.params(0) == b.params(0)),
        (vec!["--local-epochs", "1"], |r, b| r.params(1) != b.params(1) && r.config()["training"]["local_epochs"] == 1),
        (vec!["--strategy", "median"], |r, b| r.params(1) != b.params(1) && r.config()["strategy"]["name"] == "median"),
        (vec!["--server-lr", "0.5"], |r, b| r.params(1) != b.params(1) && r.config()["server_learning_rate"] == 0.5),
        (vec!["--strategy", "fedprox", "--proximal-mu", "0.5"], |r, _| r.config()["strategy"]["proximal_mu"] == 0.5),
        (vec!["--strategy", "fedadam", "--beta1", "0.5", "--beta2", "0.9", "--tau", "0.01"], |r, _| {
            let s = &r.config()["strategy"];
            s["beta1"] == 0.5 && s["beta2"] == 0.9 && s["tau"] == 0.01
        }),
        (vec!["--strategy", "trimmed-mean", "--trim-fraction", "0.25"], |r, _| r.config()["strategy"]["trim_fraction"] == 0.25),
        (vec!["--strategy", "multi-krum", "--byzantine", "0", "--multi-krum-select", "2"], |r, _| {
            r.config()["strategy"]["byzantine"] == 0 && r.config()["strategy"]["multi_krum_select"] == 2
        }),
        (vec!["--malicious", "1"], |r, b| r.params(1) != b.params(1)),
        (vec!["--malicious", "1", "--attack-scale", "1"], |r, b| r.params(1) != b.params(1)),
        (vec!["--stragglers", "0.5"], |r, b| r.cell(1, "failed") == "2" && b.cell(1, "failed") == "0"),
        (vec!["--stragglers", "0.5", "--straggler-epochs", "5"], |r, _| r.cell(1, "failed") == "0"),
        (vec!["--backend", "flex"], |r, b| r.config()["backend"] == "flex" && b.config()["backend"] == "ndarray"),
    ];
    let mut failures = Vec::new();
    for (flags, check) in &cases {
        let run = simulate(flags, false);
        if !check(&run, &base) {
            failures.push(format!("`{}` changed nothing it should (exit ok: {}): {}", flags.join(" "), run.ok, run.stderr.lines().last().unwrap_or("")));
        }
    }
    // Mutual TLS is the default; --insecure is the exception.
    let tls = simulate(&[], true);
    if !(tls.pki && !base.pki && tls.params(1) == base.params(1)) {
        failures.push("without --insecure the run has no pki/ or another model".into());
    }
    // Every run above has --no-baselines; without it summary.json has the baselines.
    let baselines = {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_flotilla-coordinator"))
            .args(["simulate", "--scenario", "hospitals", "--rounds", "1", "--insecure", "--quiet", "--out", dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        out.status.success() && std::fs::read_to_string(dir.path().join("summary.json")).unwrap().contains("\"baselines\"")
    };
    if !baselines || base.summary.get("baselines").is_some() {
        failures.push("--no-baselines does not decide whether summary.json has baselines".into());
    }
    // The sources: --synthetic with its own flags.
    for (flag, value) in [("--skew", "0.1"), ("--features", "4")] {
        let mut flags = synthetic.to_vec();
        match flags.iter().position(|f| *f == flag) {
            Some(i) => flags[i + 1] = value,
            None => flags.extend([flag, value]),
        }
        let run = simulate(&flags, false);
        if !(run.ok && run.params(1) != synthetic_base.params(1)) {
            failures.push(format!("`{flag} {value}` did not change the synthetic run: {}", run.stderr));
        }
    }
    assert!(failures.is_empty(), "{} flag(s) silently ignored:\n{}", failures.len(), failures.join("\n"));
}
