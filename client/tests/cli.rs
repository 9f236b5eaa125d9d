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
