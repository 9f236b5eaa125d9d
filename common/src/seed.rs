//! Seeds derived from the federation seed, so every random choice is reproducible and
//! independent of the order in which sites join or report.

use sha2::{Digest, Sha256};

/// A 64-bit seed from the federation seed and a path of labels (site name, round, purpose).
pub fn derive_seed(seed: u64, labels: &[&str]) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    for l in labels {
        h.update((l.len() as u64).to_le_bytes());
        h.update(l.as_bytes());
    }
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_not_ambiguous() {
        assert_ne!(derive_seed(1, &["ab", "c"]), derive_seed(1, &["a", "bc"]));
        assert_eq!(derive_seed(1, &["a"]), derive_seed(1, &["a"]));
        assert_ne!(derive_seed(1, &["a"]), derive_seed(2, &["a"]));
    }
}
