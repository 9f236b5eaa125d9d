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
