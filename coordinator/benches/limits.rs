//! The limits Flotilla's workloads are measured against, on this machine: local training alone
//! (no federation), memory bandwidth, loopback TCP throughput, and the exact aggregation of a
//! W2-sized update. Run: `cargo bench -p flotilla-coordinator --bench limits` (prints
//! Markdown rows; `scripts/bench.sh` puts them into BENCHMARKS.md).

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use flotilla_common::Task;
use flotilla_common::aggregate::WeightedSum;
use flotilla_common::data::synthetic::SyntheticSpec;
use flotilla_common::data::{Plan, RawTable};
use flotilla_common::model::ModelShape;
use flotilla_common::site::PreparedSite;
use flotilla_common::train::local::LocalConfig;
use flotilla_common::train::{Backend, train_local};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Seconds for one epoch of local training over `clients` clients of `samples` × `features`
/// with `hidden`, one after the other, as a federation round would do it without the federation.
fn training_only(clients: usize, samples: usize, features: usize, hidden: &[usize], backend: Backend) -> (f64, usize) {
    let spec = SyntheticSpec::new(clients, samples, features);
    let task = Task::synthetic(hidden.to_vec());
    let mut prepared = Vec::new();
    for k in 0..clients {
        let csv = spec.client_csv(1, k).expect("synthetic rows");
        let table = RawTable::from_reader(csv.as_bytes(), Path::new("synthetic.csv")).expect("csv");
        prepared.push(PreparedSite::new(&format!("client{k}"), &table, &task, 1).expect("site"));
    }
    let stats: Vec<_> = prepared.iter().map(|p| &p.stats).collect();
    let plan = Plan::combine(&stats);
    let shape = ModelShape::for_task(&task, plan.width());
    let global = shape.init_params(1);
    let data: Vec<_> = prepared.iter().map(|p| p.encode(&plan, &task, 1).expect("encode")).collect();
    let cfg = LocalConfig {
        epochs: 1,
        batch_size: 32,
        learning_rate: 0.001,
        seed: 1,
        proximal_mu: 0.0,
        scaffold_correction: None,
        backend,
        optimizer: Default::default(),
    };
    let n: usize = data.iter().map(|d| d.train.len()).sum();
    let start = Instant::now();
    for d in &data {
        black_box(train_local(&global, &shape, &d.train, &cfg).expect("train"));
    }
    (start.elapsed().as_secs_f64(), n)
}

/// GB/s of copying a 512 MiB buffer (best of 5).
fn memcpy_bandwidth() -> f64 {
    let n = 512 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(black_box(&src));
        best = best.min(t.elapsed().as_secs_f64());
        black_box(&dst);
    }
    // A copy reads and writes every byte.
    2.0 * n as f64 / best / 1e9
}

/// MB/s of sending 1 GiB over one loopback TCP connection.
fn loopback_throughput() -> f64 {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let total: usize = 1 << 30;
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0;
            while got < total {
                let n = s.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                got += n;
            }
            got
        });
        let mut w = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let chunk = vec![7u8; 1 << 20];
        let t = Instant::now();
        for _ in 0..total / chunk.len() {
            w.write_all(&chunk).await.expect("write");
        }
        w.shutdown().await.expect("shutdown");
        let got = reader.await.expect("reader");
        got as f64 / t.elapsed().as_secs_f64() / 1e6
    })
}

/// GB/s of adding W2-sized updates (6.85 M parameters) into the exact sum, counted as the f32
/// bytes read per update.
fn aggregation_throughput() -> f64 {
    let shape = ModelShape { inputs: 784, hidden: vec![2048, 2048, 512], outputs: 1, conv: None, custom: None };
    let delta = shape.init_params(2);
    let mut sum = WeightedSum::new(delta.layout().clone());
    // Untimed: the first add faults the accumulator in; the coordinator reuses it every round.
    sum.add(&delta, 200).expect("add");
    let updates = 10;
    let t = Instant::now();
    for _ in 0..updates {
        sum.add(black_box(&delta), 200).expect("add");
    }
    let secs = t.elapsed().as_secs_f64();
    black_box(sum.mean());
    (updates * delta.values().len() * 4) as f64 / secs / 1e9
}

fn main() {
    println!("| limit | value |");
    println!("|---|---|");
    for backend in Backend::ALL {
        let (w1, n1) = training_only(100, 500, 20, &[64, 32], backend);
        let (w3, n3) = training_only(5, 120, 30, &[64, 32], backend);
        let (w2, n2) = training_only(10, 200, 784, &[2048, 2048, 512], backend);
        println!("| training only, W1 round (100 × 500 × 20, 1 epoch, one thread after the other), {backend} | {w1:.3} s ({:.0} samples/s) |", n1 as f64 / w1);
        println!("| training only, W3 round (5 × 120 × 30), {backend} | {w3:.4} s ({:.0} samples/s) |", n3 as f64 / w3);
        println!("| training only, W2 round (10 × 200 × 784, MLP 2048-2048-512), {backend} | {w2:.2} s ({:.0} samples/s) |", n2 as f64 / w2);
    }
    println!("| memory bandwidth (memcpy 512 MiB, read + write) | {:.1} GB/s |", memcpy_bandwidth());
    println!("| loopback TCP, one connection | {:.0} MB/s |", loopback_throughput());
    let agg = aggregation_throughput();
    // Per value: the f32 read, and the 16-byte accumulator read and written back.
    println!("| exact aggregation of a 6.85 M-parameter update (i128 sum) | {agg:.2} GB/s of f32 input ({:.1} GB/s of memory traffic) |", agg * 9.0);
}
