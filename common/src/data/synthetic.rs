//! Seeded synthetic classification data, in the spirit of scikit-learn's
//! `make_classification`: two Gaussian clusters (one per class) in F dimensions, and a label
//! skew across clients drawn from a Dirichlet (Beta for two classes), so benchmarks run
//! without Python and without downloads.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, StandardNormal};

use crate::seed::derive_seed;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticSpec {
    pub clients: usize,
    pub samples: usize,
    pub features: usize,
    /// Dirichlet concentration of each client's class mix (small: skewed; large: balanced).
    pub skew: f64,
    /// Distance between the class centroids, in standard deviations per feature.
    pub class_sep: f64,
}

impl SyntheticSpec {
    pub fn new(clients: usize, samples: usize, features: usize) -> Self {
        Self { clients, samples, features, skew: 1.0, class_sep: 0.5 }
    }

    /// The CSV header: `x1..xF,y`.
    pub fn header(&self) -> String {
        let mut h: Vec<String> = (1..=self.features).map(|i| format!("x{i}")).collect();
        h.push("y".into());
        h.join(",")
    }

    /// Client `k`'s rows as CSV text (with header). Deterministic in (seed, k).
    pub fn client_csv(&self, seed: u64, k: usize) -> Result<String, String> {
        let (mu0, mu1) = self.centroids(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &["synthetic", "client", &k.to_string()]));
        let a = self.skew.max(1e-3);
        let p: f64 = Beta::new(a, a).map_err(|e| format!("skew {a}: {e}"))?.sample(&mut rng);
        Ok(self.rows(&mut rng, |r| r.random_bool(p.clamp(0.0, 1.0)), &mu0, &mu1, self.samples))
    }

    /// A balanced test set of `n` rows from the same clusters.
    pub fn test_csv(&self, seed: u64, n: usize) -> String {
        let (mu0, mu1) = self.centroids(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &["synthetic", "test"]));
        self.rows(&mut rng, |r| r.random_bool(0.5), &mu0, &mu1, n)
    }

    fn centroids(&self, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &["synthetic", "centroids"]));
        let mut draw = || -> Vec<f64> { (0..self.features).map(|_| rng.sample::<f64, _>(StandardNormal) * self.class_sep).collect() };
        (draw(), draw())
    }

    fn rows(&self, rng: &mut ChaCha8Rng, label: impl Fn(&mut ChaCha8Rng) -> bool, mu0: &[f64], mu1: &[f64], n: usize) -> String {
        let mut out = String::with_capacity(n * self.features * 8 + 64);
        out.push_str(&self.header());
        out.push('\n');
        for _ in 0..n {
            let y = label(rng);
            let mu = if y { mu1 } else { mu0 };
            for m in mu {
                let x = m + rng.sample::<f64, _>(StandardNormal);
                out.push_str(&format!("{x:.4},"));
            }
            out.push_str(if y { "1\n" } else { "0\n" });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_rows_and_skew_moves_the_class_mix() {
        let spec = SyntheticSpec { skew: 0.1, ..SyntheticSpec::new(20, 200, 5) };
        assert_eq!(spec.client_csv(1, 3).unwrap(), spec.client_csv(1, 3).unwrap());
        assert_ne!(spec.client_csv(1, 3).unwrap(), spec.client_csv(2, 3).unwrap());
        let share = |csv: &str| csv.lines().skip(1).filter(|l| l.ends_with(",1")).count() as f64 / 200.0;
        let shares: Vec<f64> = (0..20).map(|k| share(&spec.client_csv(1, k).unwrap())).collect();
        let skewed = shares.iter().filter(|s| **s < 0.1 || **s > 0.9).count();
        assert!(skewed >= 10, "Dirichlet(0.1) makes most clients nearly one-class: {shares:?}");
        let test = spec.test_csv(1, 1000);
        assert_eq!(test.lines().count(), 1001);
        assert!(test.lines().next() == Some("x1,x2,x3,x4,x5,y"));
    }
}
