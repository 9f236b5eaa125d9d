#![allow(clippy::unwrap_used)] // a test file: a failed unwrap is a failed test
//! The `flotilla-coordinator` binary as a user runs it: answers, and errors that say what is
//! wrong. (Building this test also builds the binary the crash tests in `tests/` start.)

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn coordinator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla-coordinator")).args(args).env("NO_COLOR", "1").output().expect("run flotilla-coordinator")
}

#[test]
fn privacy_prints_the_epsilon_of_a_planned_run() {
    let out = coordinator(&["privacy", "--sampling-rate", "1", "--noise-multiplier", "1", "--rounds", "1", "--delta", "1e-5"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("epsilon 4.75"), "{text}");
}

#[test]
fn resume_without_saved_state_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let out = coordinator(&["serve", "--insecure", "--listen", "127.0.0.1:0", "--scenario", "hospitals", "--resume", "--out", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("snapshot.safetensors") && err.contains("no saved state"), "{err}");
}

#[test]
fn an_unknown_backend_is_refused_with_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let out = coordinator(&["simulate", "--scenario", "hospitals", "--backend", "cuda", "--out", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--backend") && err.contains("`cuda`") && err.contains("flex"), "{err}");
}

#[test]
fn json_logs_are_one_object_a_line_and_a_remote_dashboard_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = coordinator(&[
        "--log-format",
        "json",
        "--log",
        "info",
        "simulate",
        "--scenario",
        "hospitals",
        "--rounds",
        "1",
        "--no-baselines",
        "--quiet",
        "--insecure",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = err.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "round closed" && l["level"] == "INFO"), "{err}");

    let out = coordinator(&["simulate", "--scenario", "hospitals", "--metrics-listen", "0.0.0.0:0", "--out", dir.path().join("b").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not loopback") && err.contains("--metrics-token"), "{err}");
}

/// Starts `serve` in `out`, waits until it has written its state, and kills it.
fn start_and_kill(out: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla-coordinator"))
        .args(["serve", "--insecure", "--listen", "127.0.0.1:0", "--scenario", "hospitals", "--seed", "7", "--out", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.join("state/snapshot.safetensors").exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "serve never wrote its state");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn resume_refuses_a_different_seed_or_task() {
    let dir = tempfile::tempdir().unwrap();
    start_and_kill(dir.path());
    let out_dir = dir.path().to_str().unwrap();
    let base = ["serve", "--insecure", "--listen", "127.0.0.1:0", "--resume", "--out", out_dir];
    let seed = coordinator(&[&base[..], &["--scenario", "hospitals", "--seed", "8"]].concat());
    let err = String::from_utf8_lossy(&seed.stderr);
    assert!(!seed.status.success() && err.contains("seed 7, not 8"), "{err}");
    let task = coordinator(&[&base[..], &["--scenario", "hospitals", "--seed", "7", "--local-epochs", "2"]].concat());
    let err = String::from_utf8_lossy(&task.stderr);
    assert!(!task.status.success() && err.contains("task") && err.contains("local_epochs"), "{err}");
}

/// A path in the repository (tests run in the crate's folder).
fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path).display().to_string()
}

/// `base` followed by `extra`, owned.
fn with(base: &[&str], extra: &[&str]) -> Vec<String> {
    base.iter().chain(extra).map(|s| (*s).to_owned()).collect()
}

fn own(args: Vec<&str>) -> Vec<String> {
    args.into_iter().map(str::to_owned).collect()
}

/// Runs the binary with `args` and returns stderr, asserting it failed.
fn refused(args: &[&str]) -> String {
    let out = coordinator(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "`{}` should be refused; stdout: {}", args.join(" "), String::from_utf8_lossy(&out.stdout));
    err
}

#[test]
fn a_folder_that_holds_a_run_is_never_overwritten_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("metrics.csv"), "round,accuracy\n0,0.5\n1,0.7\n").unwrap();
    std::fs::write(dir.path().join("summary.json"), "{\"earlier\": true}").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let before = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let (metrics, summary) = (before("metrics.csv"), before("summary.json"));

    let err = refused(&["simulate", "--scenario", "hospitals", "--rounds", "1", "--no-baselines", "--insecure", "--quiet", "--out", out]);
    assert!(err.contains(out) && err.contains("earlier run") && err.contains("--force") && err.contains("metrics.csv"), "{err}");
    let err = refused(&["serve", "--insecure", "--listen", "127.0.0.1:0", "--scenario", "hospitals", "--out", out]);
    assert!(err.contains(out) && err.contains("--resume") && err.contains("--force"), "{err}");
    assert_eq!((before("metrics.csv"), before("summary.json")), (metrics, summary), "a refused command touched the earlier run");
    assert!(!dir.path().join("state").exists() && !dir.path().join("pki").exists(), "a refused command wrote into the folder");
    let err = refused(&["serve", "--insecure", "--listen", "127.0.0.1:0", "--scenario", "hospitals", "--resume", "--force", "--out", out]);
    assert!(err.contains("--resume") && err.contains("--force"), "{err}");

    // Asked for, the earlier run is replaced: its files, and nothing else.
    let ok = coordinator(&["simulate", "--scenario", "hospitals", "--rounds", "1", "--no-baselines", "--insecure", "--quiet", "--force", "--out", out]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let metrics = String::from_utf8(before("metrics.csv")).unwrap();
    assert!(metrics.starts_with("round,accuracy,loss,auc") && metrics.lines().count() == 3, "{metrics}");
    assert_eq!(before("notes.txt"), b"mine");
}

#[test]
fn flags_that_cannot_work_together_are_refused_at_start_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let (data, hospitals) = (repo("data/heart_disease_uci.csv"), repo("examples/hospitals.toml"));
    let sim = ["simulate", "--scenario", "hospitals", "--rounds", "1", "--no-baselines", "--insecure", "--quiet", "--out", out];
    let serve = ["serve", "--insecure", "--listen", "127.0.0.1:0", "--scenario", "hospitals", "--out", out];
    let (sim_s, serve_s) = (&sim[..], &serve[..]);
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (with(sim_s, &["--min-fit-results", "5"]), &["--min-fit-results 5", "at most 4 of the 4 sites"]),
        (with(sim_s, &["--secure-aggregation", "--max-update-norm", "1"]), &["--max-update-norm", "--secure-aggregation", "binds no malicious site"]),
        (with(serve_s, &["--secure-aggregation", "--max-update-norm", "1"]), &["--max-update-norm", "--secure-aggregation", "binds no malicious site"]),
        (with(serve_s, &["--allow-site", "Cleveland", "--min-fit-results", "2"]), &["--min-fit-results 2", "allow list names 1"]),
        (with(sim_s, &["--clients", "3"]), &["--clients", "--scenario"]),
        (with(sim_s, &["--samples", "10"]), &["--samples"]),
        (with(sim_s, &["--partition", "iid"]), &["--partition", "--scenario"]),
        (with(sim_s, &["--allow-site", "Cleveland"]), &["Hungary", "--allow-site"]),
        (with(sim_s, &["--proximal-mu", "0.1"]), &["--proximal-mu", "fedavg", "fedprox"]),
        (with(sim_s, &["--strategy", "fedadagrad", "--beta2", "0.9"]), &["--beta2", "fedadagrad", "fedadam"]),
        (with(sim_s, &["--sampling", "weighted"]), &["--sampling weighted", "--fraction-fit"]),
        (with(sim_s, &["--over-selection", "1.5"]), &["--over-selection", "--fraction-fit"]),
        (with(sim_s, &["--dp-delta", "1e-6"]), &["--dp-delta", "--dp-clip"]),
        (with(sim_s, &["--dp-seed", "7"]), &["--dp-seed", "central DP"]),
        (with(sim_s, &["--dp-clip", "1", "--dp-noise", "0.5", "--dp-local", "--dp-seed", "7"]), &["--dp-seed", "--dp-local"]),
        (with(sim_s, &["--attack-scale", "3"]), &["--attack-scale", "--malicious"]),
        (with(sim_s, &["--straggler-epochs", "2"]), &["--straggler-epochs", "--stragglers"]),
        (with(sim_s, &["--dp-clip", "1", "--dp-noise", "5", "--dp-adaptive-quantile", "0.5"]), &["--dp-count-stddev", "count_stddev"]),
        (
            own(vec!["simulate", "--data", &data, "--config", &hospitals, "--partition", "column:dataset", "--clients", "2", "--out", out]),
            &["column:dataset", "--clients 2"],
        ),
        (own(vec!["simulate", "--data", &data, "--config", &hospitals, "--out", out]), &["--clients", "column:NAME"]),
        (own(vec!["certs", "sign", "--ca", "ca.pem", "--ca-key", "ca.key", "--csr", "x.csr", "--out", "x.pem", "--days", "0"]), &["--days", "0"]),
        (own(vec!["certs", "init", "--out", out, "--days", "0"]), &["--days", "0"]),
    ];
    for (args, words) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = refused(&args);
        for w in words {
            assert!(err.contains(w), "`{}`: the refusal does not name `{w}`: {err}", args.join(" "));
        }
        assert!(!Path::new(out).join("metrics.csv").exists(), "`{}` was refused only after it started", args.join(" "));
    }
}

#[test]
fn a_missing_request_is_named_with_its_flag_and_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    assert!(coordinator(&["certs", "init", "--out", pki.to_str().unwrap()]).status.success());
    let (ca, key) = (pki.join("ca.pem"), pki.join("ca.key"));
    let err = refused(&["certs", "sign", "--ca", ca.to_str().unwrap(), "--ca-key", key.to_str().unwrap(), "--csr", "Nowhere.csr", "--out", "x.pem"]);
    assert!(err.contains("--csr") && err.contains("Nowhere.csr"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn help_texts_list_every_choice_and_say_what_each_flag_needs() {
    let help = |args: &[&str]| String::from_utf8(coordinator(args).stdout).unwrap();
    let simulate = help(&["simulate", "--help"]);
    assert!(simulate.contains("scaffold") && simulate.contains("--dp-count-stddev") && simulate.contains("--force"), "{simulate}");
    let split = help(&["split", "--help"]);
    assert!(split.contains("needed with --data"), "{split}");
    let synth = help(&["synth", "--help"]);
    for flag in ["--clients <N>", "--samples <S>", "--features <F>", "--seed <SEED>", "--out <DIR>"] {
        let line = synth.lines().find(|l| l.contains(flag)).unwrap_or_else(|| panic!("no {flag} in {synth}"));
        let described =
            line.trim().len() > flag.len() + 4 || synth.split(flag).nth(1).is_some_and(|rest| rest.lines().nth(1).is_some_and(|l| !l.trim().starts_with('-')));
        assert!(described, "synth's {flag} has no help text: {synth}");
    }
}

#[test]
fn synth_puts_its_test_rows_apart_so_that_clients_dir_sees_only_the_clients() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ok = coordinator(&["synth", "--clients", "2", "--samples", "40", "--features", "3", "--out", data.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(data.join("test/test.csv").exists() && !data.join("test.csv").exists());
    let out = dir.path().join("run");
    let run = coordinator(&[
        "simulate",
        "--clients-dir",
        data.to_str().unwrap(),
        "--config",
        data.join("task.toml").to_str().unwrap(),
        "--rounds",
        "1",
        "--no-baselines",
        "--insecure",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let round1 = metrics.lines().nth(2).unwrap();
    assert_eq!(round1.split(',').nth(5), Some("2"), "two sites selected, not the test rows as a third: {metrics}");
}

#[test]
fn a_federation_that_never_accepts_an_update_records_every_round_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let run = coordinator(&[
        "simulate",
        "--scenario",
        "hospitals",
        "--rounds",
        "2",
        "--no-baselines",
        "--insecure",
        "--quiet",
        "--max-update-norm",
        "0.0001",
        "--out",
        out,
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("without a usable model") && err.contains("no round accepted an update"), "{err}");
    let metrics = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    let rows: Vec<Vec<&str>> = metrics.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "every round is recorded, not only round 0: {metrics}");
    for r in &rows[1..] {
        // clients, selected, failed, rejected: every site refused, none dropped out.
        assert_eq!(&r[4..8], &["0", "4", "4", "4"], "{metrics}");
    }
    assert!(dir.path().join("summary.json").exists() && dir.path().join("model.safetensors").exists(), "the files are written all the same");
}
