//! Local training throughput of the FedAvg paper's CNN (McMahan et al. 2017: 5×5 conv 32,
//! 2×2 max-pool, 5×5 conv 64, 2×2 max-pool, 512, softmax; 1,663,370 parameters): one local
//! epoch of SGD at batch 10 over MNIST-sized images, as a site trains at E = 1, on each
//! backend. `scripts/fedavg_paper.sh throughput` runs it pinned to one core beside PyTorch's
//! eager loop for the same model (`scripts/cnn_throughput.py`).
//!
//! Run: `taskset -c 0 cargo bench -p flotilla-common --bench cnn_throughput -- [IMAGES] [BACKEND...]`
//! Prints one JSON line per backend: images, seconds, images per second.

use std::time::Instant;

use flotilla_common::Task;
use flotilla_common::data::Dataset;
use flotilla_common::model::ModelShape;
use flotilla_common::train::local::LocalConfig;
use flotilla_common::train::{Backend, Optim, train_local};

fn main() {
    // `cargo bench` passes `--bench`; the numbers and backend names are ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let images: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(600);
    let backends: Vec<Backend> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let backends = if backends.is_empty() { Backend::ALL.to_vec() } else { backends };
    // The task's image, not the plan's width, is the CNN's input.
    let shape = ModelShape::for_task(&Task::mnist_cnn(), 0);
    assert_eq!(shape.num_params(), 1_663_370);
    let global = shape.init_params(1);
    // Values do not change the arithmetic; a fixed pattern keeps runs comparable.
    let features: Vec<f32> = (0..images * 784).map(|i| ((i * 7919) % 256) as f32 / 255.0 - 0.5).collect();
    let labels: Vec<u32> = (0..images).map(|i| (i % 10) as u32).collect();
    let data = Dataset { features, n_features: 784, labels, num_classes: 10, ..Default::default() };
    for backend in backends {
        let cfg = LocalConfig {
            epochs: 1,
            batch_size: 10,
            learning_rate: 0.05,
            seed: 1,
            proximal_mu: 0.0,
            scaffold_correction: None,
            backend,
            optimizer: Optim::Sgd { momentum: 0.0 },
        };
        // One small warm-up (allocations, first-call set-up) outside the timing.
        let warm = Dataset { features: data.features[..20 * 784].to_vec(), labels: data.labels[..20].to_vec(), ..data.clone() };
        train_local(&global, &shape, &warm, &cfg).expect("warm-up trains");
        let start = Instant::now();
        train_local(&global, &shape, &data, &cfg).expect("the CNN trains");
        let seconds = start.elapsed().as_secs_f64();
        println!("{{\"backend\": \"{backend}\", \"images\": {images}, \"seconds\": {seconds:.3}, \"images_per_s\": {:.1}}}", images as f64 / seconds);
    }
}
