#![allow(clippy::unwrap_used)] // a test file: a failed unwrap is a failed test
//! The `flotilla-client` binary as a site runs it: setup mistakes are refused at start with
//! the flags to change, before any connection is tried; logs go to stderr.

use std::process::{Command, Output};

fn client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla-client")).args(args).output().expect("run flotilla-client")
}

#[test]
fn a_url_that_contradicts_the_transport_is_a_setup_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("site.csv");
    std::fs::write(&data, "x,y\n1,0\n").unwrap();
    let data = data.to_str().unwrap();
    // Nothing listens on port 1: a connection attempt would say "cannot reach".
    let https = client(&["--coordinator", "https://127.0.0.1:1", "--site", "a", "--data", data, "--insecure", "--connect-timeout", "0"]);
    let err = String::from_utf8_lossy(&https.stderr);
    assert!(!https.status.success() && err.contains("--insecure") && err.contains("https://") && !err.contains("cannot reach"), "{err}");
    let http = client(&["--coordinator", "http://127.0.0.1:1", "--site", "a", "--data", data, "--connect-timeout", "0"]);
    let err = String::from_utf8_lossy(&http.stderr);
    assert!(!http.status.success() && err.contains("http://") && err.contains("--insecure") && !err.contains("cannot reach"), "{err}");
}

#[test]
fn a_failed_start_says_so_on_stderr_without_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("site.csv");
    std::fs::write(&data, "x,y\n1,0\n").unwrap();
    let out = client(&[
        "--coordinator",
        "http://127.0.0.1:1",
        "--site",
        "a",
        "--data",
        data.to_str().unwrap(),
        "--insecure",
        "--connect-timeout",
        "0",
        "--log",
        "debug",
    ]);
    assert!(!out.status.success() && !out.stderr.is_empty());
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!out.stderr.contains(&0x1b), "colour codes in a redirected log: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_data_officer_checks_a_policy_pins_a_task_and_reads_the_audit() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let policy = root.join("examples/site-policy.toml");
    let task = root.join("examples/hospitals.toml");
    let ok = client(&["policy", "check", "--policy", policy.to_str().unwrap(), "--task", task.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success() && text.contains("accepted"), "{text}{}", String::from_utf8_lossy(&ok.stderr));

    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny-batches.toml");
    std::fs::write(&tiny, std::fs::read_to_string(&task).unwrap().replace("batch_size = 32", "batch_size = 1")).unwrap();
    let refused = client(&["policy", "check", "--policy", policy.to_str().unwrap(), "--task", tiny.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("bounds.min_batch_size") && err.contains("batch size is 1"), "{err}");

    let fp = client(&["policy", "fingerprint", "--task", task.to_str().unwrap()]);
    let fp = String::from_utf8_lossy(&fp.stdout).trim().to_owned();
    assert_eq!(fp, flotilla_common::Task::hospitals().fingerprint());
    let pinned = dir.path().join("pinned.toml");
    std::fs::write(&pinned, format!("[task]\nfingerprint = \"{fp}\"\n")).unwrap();
    let other = client(&["policy", "check", "--policy", pinned.to_str().unwrap(), "--task", tiny.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&other.stderr).contains("task.fingerprint"));

    // A broken policy names its file, line and key.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[bounds]\nmin_batch = 3\n").unwrap();
    let bad = client(&["policy", "check", "--policy", broken.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("broken.toml") && err.contains("min_batch") && err.contains("line 2"), "{err}");

    // The audit summary of a state directory.
    let state = dir.path().join("state");
    let s = flotilla_client::state::StateDir::open(&state).unwrap();
    let mut ledger = s.load_ledger().unwrap();
    ledger.record(&fp, Some(1.0));
    s.save_ledger(&ledger).unwrap();
    s.audit()
        .unwrap()
        .append(flotilla_client::state::AuditEvent::Refused { round: Some(3), rule: "bounds.max_rounds".into(), message: "enough".into() })
        .unwrap();
    drop(s);
    let audit = client(&["audit", "--state-dir", state.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.status.success() && text.contains("refusals: 1") && text.contains("1 at noise multiplier 1") && text.contains("ε = "), "{text}");
}
