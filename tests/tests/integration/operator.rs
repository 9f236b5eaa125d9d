#![allow(clippy::unwrap_used)] // a test file: a failed unwrap is a failed test
//! The operator's port: `/metrics` parses as Prometheus text and counts what the federation
//! did, the probes answer, the dashboard's API lists the sites and the refusals, nothing
//! secret is served, and a token-protected port refuses requests without the token.

use std::time::Duration;

use flotilla_common::Task;
use flotilla_coordinator::observe::http::Access;
use flotilla_tests::{RawSite, hospital_sites, start_coordinator, test_policy, test_site};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A plain HTTP/1.1 GET: (status, body).
async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// A chunked body, joined (axum streams JSON and text with chunked encoding).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return body.to_owned() };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    if out.is_empty() { body.to_owned() } else { out }
}

fn value(samples: &prometheus_parse::Scrape, name: &str) -> f64 {
    let s = samples.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("no sample {name}"));
    match s.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("{name} is not a number"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_probes_and_the_dashboard_api_follow_a_federation() {
    let dir = tempfile::tempdir().unwrap();
    let rounds = 3;
    let running = start_coordinator(Task::hospitals(), 5, test_policy(rounds, 4), dir.path()).await;
    let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = running.serve_operator(port, Access::Loopback).unwrap();
    assert_eq!(get(addr, "/healthz", None).await.0, 200);
    assert_eq!(get(addr, "/readyz", None).await.0, 200);

    // A hostile join (a name with control characters) is refused and counted, by kind only.
    let err = RawSite::join_only(running.url(), "bad\u{7}name", 10, vec!["num".into()]).await.err().expect("refused");
    assert!(err.message().contains("control characters"), "{}", err.message());

    let stop = CancellationToken::new();
    let mut sites = Vec::new();
    for (name, table) in hospital_sites(5) {
        let opts = test_site(running.url(), &name);
        let token = stop.child_token();
        sites.push(tokio::spawn(async move { flotilla_client::run_site(opts, table, token).await }));
    }
    assert!(running.wait_done(&CancellationToken::new()).await);

    let (status, body) = get(addr, "/metrics", None).await;
    assert_eq!(status, 200);
    let text = dechunk(&body);
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    assert_eq!(value(&scrape, "flotilla_rounds_closed_total"), f64::from(rounds + 1), "round 0 and the trained rounds");
    assert_eq!(value(&scrape, "flotilla_round"), f64::from(rounds));
    assert_eq!(value(&scrape, "flotilla_sites_joined_total"), 4.0);
    assert_eq!(value(&scrape, "flotilla_updates_accepted_total"), f64::from(4 * rounds));
    assert!(value(&scrape, "flotilla_received_bytes_total") > 0.0 && value(&scrape, "flotilla_sent_bytes_total") > 0.0);
    // One aggregation timed per trained round (round 0 aggregates nothing).
    let aggregations = scrape
        .samples
        .iter()
        .find_map(|s| match (s.metric.as_str(), &s.value) {
            ("flotilla_aggregation_duration_seconds_count", prometheus_parse::Value::Untyped(n) | prometheus_parse::Value::Counter(n)) => Some(*n),
            ("flotilla_aggregation_duration_seconds", prometheus_parse::Value::Histogram(b)) => {
                b.iter().find(|b| b.less_than == f64::INFINITY).map(|b| b.count)
            }
            _ => None,
        })
        .expect("aggregations timed");
    assert_eq!(aggregations, f64::from(rounds));
    let accuracy = value(&scrape, "flotilla_evaluation_accuracy");
    assert!((0.5..=1.0).contains(&accuracy), "{accuracy}");
    let refused = scrape.samples.iter().find(|s| s.metric == "flotilla_refused_total").expect("refusals counted");
    assert_eq!((refused.labels.get("what"), refused.labels.get("kind")), (Some("join"), Some("invalid_argument")));
    assert!(scrape.samples.iter().any(|s| s.metric == "flotilla_phase" && s.labels.get("phase") == Some("done")));
    for s in &scrape.samples {
        for (k, v) in s.labels.iter() {
            assert!(!["Cleveland", "Hungary", "Switzerland", "VA Long Beach"].contains(&v.as_str()), "a site name in label {k} of {}", s.metric);
        }
    }

    let (status, body) = get(addr, "/api/status", None).await;
    assert_eq!(status, 200);
    let st: serde_json::Value = serde_json::from_str(&dechunk(&body)).unwrap();
    assert_eq!((st["done"].as_bool(), st["round"].as_u64(), st["task"].as_str()), (Some(true), Some(u64::from(rounds)), Some("hospitals")));
    assert_eq!(st["sites"].as_object().unwrap().len(), 4);
    assert_eq!(st["sites"]["Cleveland"]["rounds_contributed"], rounds);
    assert!(st["sites"]["Cleveland"]["accuracy"].as_f64().is_some());
    assert_eq!(st["other_refusals"], 1);
    assert!(st["findings"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("`ca`")));
    let (_, body) = get(addr, "/api/rounds", None).await;
    let history: serde_json::Value = serde_json::from_str(&dechunk(&body)).unwrap();
    assert_eq!(history.as_array().unwrap().len(), rounds as usize + 1);
    let (status, page) = get(addr, "/", None).await;
    assert!(status == 200 && dechunk(&page).contains("api/status"), "the dashboard page");
    for secret in ["noise_seed", "dp_seed", "PRIVATE KEY"] {
        assert!(!text.contains(secret) && !st.to_string().contains(secret), "{secret} is served");
    }
    stop.cancel();
    for s in sites {
        let _ = tokio::time::timeout(Duration::from_secs(10), s).await;
    }
    let _ = running.stop(Duration::ZERO).await;
}

#[tokio::test]
async fn a_port_beyond_loopback_needs_a_token_and_refuses_requests_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let any: std::net::SocketAddr = "0.0.0.0:9464".parse().unwrap();
    let err = Access::for_address(any, None, false).unwrap_err();
    assert!(err.contains("--metrics-token"), "{err}");
    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").unwrap();
    assert!(Access::for_address("127.0.0.1:1".parse().unwrap(), Some(&short), false).unwrap_err().contains("16 characters"));
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret-token-0123456789\n").unwrap();
    assert!(Access::for_address(any, Some(&file), false).unwrap_err().contains("--metrics-allow-remote"));
    assert!(matches!(Access::for_address(any, Some(&file), true), Ok(Access::Token(_))));

    let running = start_coordinator(Task::hospitals(), 5, test_policy(1, 4), &dir.path().join("run")).await;
    let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let access = Access::for_address("127.0.0.1:0".parse().unwrap(), Some(&file), false).unwrap();
    let addr = running.serve_operator(port, access).unwrap();
    assert_eq!(get(addr, "/metrics", None).await.0, 401);
    assert_eq!(get(addr, "/api/status", Some("s3cret-token-012345678X")).await.0, 401);
    assert_eq!(get(addr, "/metrics", Some("s3cret-token-0123456789")).await.0, 200);
    assert_eq!(get(addr, "/", None).await.0, 200, "the page holds no data; it sends the token from its URL fragment");
    let _ = running.stop(Duration::ZERO).await;
}
