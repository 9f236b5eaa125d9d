//! Augmentation of a site's training split: Gaussian jitter of standardised numeric
//! features and random oversampling of minority classes. Never applied to test data.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::dataset::Dataset;
use crate::task::Augmentation;

/// Applies the task's augmentation to a training split; `numeric` are the jittered positions.
pub fn augment(train: &Dataset, aug: &Augmentation, numeric: &[usize], rng: &mut ChaCha8Rng) -> Dataset {
    let mut out = train.clone();
    if aug.oversample_minority {
        out = oversample(&out, rng);
    }
    if aug.jitter_std > 0.0 && aug.jitter_copies > 0 {
        out = jitter(&out, aug.jitter_std, aug.jitter_copies, numeric, rng);
    }
    out
}

/// Duplicates random rows of each smaller class until every class has as many rows as the largest.
pub fn oversample(data: &Dataset, rng: &mut ChaCha8Rng) -> Dataset {
    let counts = data.class_counts();
    let target = counts.iter().copied().max().unwrap_or(0);
    let mut out = data.clone();
    for (class, &n) in counts.iter().enumerate() {
        let members: Vec<usize> = (0..data.len()).filter(|&i| data.labels[i] as usize == class).collect();
        if members.is_empty() {
            continue;
        }
        for _ in n..target {
            let i = members[rng.random_range(0..members.len())];
            out.push_copy(data, i, data.row(i));
        }
    }
    out
}

/// Appends `copies` noisy copies of every row: numeric features get N(0, std²) noise.
pub fn jitter(data: &Dataset, std: f64, copies: u32, numeric: &[usize], rng: &mut ChaCha8Rng) -> Dataset {
    let mut out = data.clone();
    // std > 0 was validated with the task; fall back to no noise rather than panic.
    let Ok(noise) = Normal::new(0.0, std) else { return out };
    for _ in 0..copies {
        for i in 0..data.len() {
            let mut row = data.row(i).to_vec();
            for &p in numeric {
                row[p] += noise.sample(rng) as f32;
            }
            out.push_copy(data, i, &row);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn data() -> Dataset {
        Dataset { features: vec![0.0, 1.0, 0.5, 1.0, 1.0, 0.0], n_features: 2, labels: vec![0, 0, 1], num_classes: 2, ..Default::default() }
    }

    #[test]
    fn oversampling_balances_classes() {
        let out = oversample(&data(), &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(out.class_counts(), vec![2, 2]);
        assert_eq!(out.row(3), &[1.0, 0.0]);
    }

    #[test]
    fn jitter_touches_only_numeric_features() {
        let out = jitter(&data(), 0.1, 2, &[0], &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(out.len(), 9);
        for i in 3..9 {
            assert_eq!(out.row(i)[1], data().row(i % 3)[1]);
            assert_ne!(out.row(i)[0], data().row(i % 3)[0]);
            assert_eq!(out.labels[i], data().labels[i % 3]);
        }
    }
}
