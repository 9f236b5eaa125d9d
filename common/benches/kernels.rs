//! Criterion benchmarks of the kernels every round runs over a whole model: the exact
//! aggregation, (de)serialisation to little-endian bytes, chunking into and reassembly from
//! protocol messages (with the SHA-256 the receiver recomputes), and DP clipping.
//!
//! Run: `cargo bench -p flotilla-common --bench kernels` (add `-- aggregate` to pick a group).
//! Throughput is given in bytes of f32 model data, so it compares with memory bandwidth and
//! loopback throughput (`cargo bench -p flotilla-coordinator --bench limits`).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flotilla_common::aggregate::WeightedSum;
use flotilla_common::model::ModelShape;
use flotilla_common::params::{FlatParams, extend_from_le_bytes, f32_to_le_bytes};
use flotilla_common::privacy::dp_fedavg::clip;
use flotilla_common::wire::{ModelReceiver, model_chunks};

/// The seed MLP (4,097 parameters) and W2's big MLP (6.85 M parameters, 27 MB).
fn models() -> Vec<(&'static str, FlatParams)> {
    let seed = ModelShape { inputs: 20, hidden: vec![64, 32], outputs: 1, conv: None, custom: None };
    let big = ModelShape { inputs: 784, hidden: vec![2048, 2048, 512], outputs: 1, conv: None, custom: None };
    vec![("seed_mlp", seed.init_params(1)), ("w2_mlp", big.init_params(2))]
}

fn bytes(p: &FlatParams) -> Throughput {
    Throughput::Bytes(p.values().len() as u64 * 4)
}

fn aggregate(c: &mut Criterion) {
    let mut g = c.benchmark_group("aggregate");
    for (name, delta) in models() {
        g.throughput(bytes(&delta));
        let mut sum = WeightedSum::new(delta.layout().clone());
        // Adds into a running sum, as the coordinator does when an update arrives.
        g.bench_function(format!("add_exact/{name}"), |b| {
            b.iter(|| {
                if sum.count() + 1 >= flotilla_common::aggregate::MAX_UPDATES {
                    sum = WeightedSum::new(delta.layout().clone());
                }
                sum.add(black_box(&delta), 200).expect("in range")
            })
        });
        let mut full = WeightedSum::new(delta.layout().clone());
        full.add(&delta, 200).expect("in range");
        g.bench_function(format!("mean/{name}"), |b| b.iter(|| black_box(full.mean())));
    }
    g.finish();
}

fn serialise(c: &mut Criterion) {
    let mut g = c.benchmark_group("serialise");
    for (name, p) in models() {
        g.throughput(bytes(&p));
        g.bench_function(format!("to_le_bytes/{name}"), |b| b.iter(|| black_box(f32_to_le_bytes(black_box(p.values())))));
        let raw = f32_to_le_bytes(p.values());
        g.bench_function(format!("from_le_bytes/{name}"), |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(p.values().len());
                extend_from_le_bytes(&mut out, black_box(&raw)).expect("whole values");
                out
            })
        });
        g.bench_function(format!("sha256/{name}"), |b| b.iter(|| black_box(&p).hash()));
    }
    g.finish();
}

fn chunking(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunking");
    g.sample_size(20);
    for (name, p) in models() {
        g.throughput(bytes(&p));
        let hash = p.hash();
        let shared = Arc::new(p);
        // What the sender does: the header and 1 MiB data chunks, produced lazily.
        g.bench_function(format!("model_chunks/{name}"), |b| b.iter(|| model_chunks(shared.clone(), 1, hash.clone()).for_each(|c| drop(black_box(c)))));
        // What the receiver does: reassemble into one buffer and verify the announced hash.
        let chunks: Vec<_> = model_chunks(shared.clone(), 1, hash.clone()).collect();
        g.bench_function(format!("receive_and_verify/{name}"), |b| {
            b.iter_batched(
                || chunks.clone(),
                |chunks| {
                    let mut r = ModelReceiver::default();
                    for c in chunks {
                        r.push(c).expect("well formed");
                    }
                    r.finish().expect("hash matches")
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn clipping(c: &mut Criterion) {
    let mut g = c.benchmark_group("clipping");
    for (name, p) in models() {
        g.throughput(bytes(&p));
        g.bench_function(format!("clip/{name}"), |b| b.iter_batched_ref(|| p.values().to_vec(), |d| clip(d, 0.5), BatchSize::LargeInput));
    }
    g.finish();
}

criterion_group!(kernels, aggregate, serialise, chunking, clipping);
criterion_main!(kernels);
