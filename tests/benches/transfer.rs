//! Model transfer over gRPC on loopback, against raw TCP: W2's 27.4 MB model (784 → 2048 →
//! 2048 → 512 → 1) downloaded by a site from a real coordinator, as sites do it (1 MiB chunks,
//! reassembled into one buffer, SHA-256 verified), and one update uploaded (checksummed,
//! added to the exact sum). Prints Markdown rows for BENCHMARKS.md.
//! Run: `cargo bench -p flotilla-tests --bench transfer`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_client::connection::Connection;
use flotilla_common::data::RawTable;
use flotilla_common::data::synthetic::SyntheticSpec;
use flotilla_common::params::checksum;
use flotilla_common::wire::UpdateHeader;
use flotilla_common::{FlatParams, Task};
use flotilla_proto::pb::work_item::Kind;
use flotilla_tests::{RawSite, start_coordinator, test_policy};

const DOWNLOADS: usize = 10;

async fn fit_work(site: &mut RawSite) -> flotilla_proto::pb::FitWork {
    loop {
        match site.pull().await {
            Kind::Fit(f) => return f,
            Kind::Evaluate(e) => site.evaluate(e).await,
            Kind::Wait(_) => continue,
            other => panic!("unexpected work {other:?}"),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = SyntheticSpec::new(2, 200, 784);
    let table = |k: usize| {
        let csv = spec.client_csv(42, k).expect("synthetic rows");
        RawTable::from_reader(csv.as_bytes(), Path::new(&format!("client{k:05}.csv"))).expect("csv")
    };
    // Two sites, so that the timed upload does not also close the round.
    let mut policy = test_policy(2, 2);
    policy.lease = Duration::from_secs(600);
    let running = start_coordinator(Task::synthetic(vec![2048, 2048, 512]), 42, policy, dir.path()).await;
    let mut site = RawSite::join(running.url(), "client00000", &table(0)).await;
    let mut other = RawSite::join(running.url(), "client00001", &table(1)).await;
    let (fit, _) = tokio::join!(fit_work(&mut site), fit_work(&mut other));
    let conn = Connection::connect(&running.url(), None, Duration::from_secs(10)).await.expect("connect");

    let mut model = None;
    let t = Instant::now();
    for _ in 0..DOWNLOADS {
        model = Some(conn.download_model(&site.id, fit.round, &fit.model_hash, None, None).await.expect("download"));
    }
    let download = t.elapsed().as_secs_f64() / DOWNLOADS as f64;
    let model: FlatParams = model.expect("downloaded");
    let bytes = model.values().len() as f64 * 4.0;

    // Round 1 allocates the coordinator's accumulator; from round 2 on it is reused. Both
    // sites upload in round 1 so it closes, then site A's round-2 upload is the one timed.
    let upload_of = |site: &RawSite, fit: &flotilla_proto::pb::FitWork| {
        let delta = Arc::new(FlatParams::zeros(model.layout().clone()));
        let header = UpdateHeader {
            client_id: site.id.clone(),
            round: fit.round,
            base_model_hash: fit.model_hash.clone(),
            layout_fingerprint: model.layout().fingerprint().to_owned(),
            total_values: model.values().len() as u64,
            num_examples: site.declared,
            metrics: flotilla_common::train::TrainReport { epochs: 1, ..Default::default() },
            values_sha256: checksum(model.layout().fingerprint(), delta.values()),
            masked: false,
            encoding: flotilla_common::compress::Codec::F32,
        };
        (header, delta)
    };
    for s in [&site, &other] {
        let (h, d) = upload_of(s, &fit);
        conn.upload_update(h, d).await.expect("round-1 upload");
    }
    let (fit, _) = tokio::join!(fit_work(&mut site), fit_work(&mut other));
    let (h, d) = upload_of(&site, &fit);
    let t = Instant::now();
    conn.upload_update(h, d).await.expect("upload");
    let upload = t.elapsed().as_secs_f64();

    println!("| gRPC model download, {:.1} MB, verified (mean of {DOWNLOADS}) | {:.3} s ({:.0} MB/s) |", bytes / 1e6, download, bytes / download / 1e6);
    println!(
        "| gRPC update upload, {:.1} MB, checksummed and added to the exact sum (round 2, round left open) | {:.3} s ({:.0} MB/s) |",
        bytes / 1e6,
        upload,
        bytes / upload / 1e6
    );
    drop(conn);
    let _ = running.stop(Duration::from_secs(1)).await;
}
