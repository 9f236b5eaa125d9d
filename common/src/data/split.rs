//! Seeded, stratified train/test split of a site's rows.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Splits row indices into (train, test): `test_fraction` of each class goes to test
/// (rounded, and never the last example of a class), both sorted back into file order.
pub fn stratified_split(labels: &[u32], test_fraction: f64, rng: &mut ChaCha8Rng) -> (Vec<usize>, Vec<usize>) {
    let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for c in 0..classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] as usize == c).collect();
        idx.shuffle(rng);
        let n_test = ((idx.len() as f64 * test_fraction).round() as usize).min(idx.len().saturating_sub(1));
        test.extend_from_slice(&idx[..n_test]);
        train.extend_from_slice(&idx[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn split_is_stratified_disjoint_and_seeded() {
        let labels: Vec<u32> = (0..100).map(|i| u32::from(i % 4 == 0)).collect(); // 25 positives
        let (train, test) = stratified_split(&labels, 0.2, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!((train.len(), test.len()), (80, 20));
        assert_eq!(test.iter().filter(|&&i| labels[i] == 1).count(), 5);
        assert!(train.iter().all(|i| !test.contains(i)));
        let again = stratified_split(&labels, 0.2, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!((train.clone(), test.clone()), again);
        let other = stratified_split(&labels, 0.2, &mut ChaCha8Rng::seed_from_u64(8));
        assert_ne!(test, other.1);
    }

    #[test]
    fn a_singleton_class_stays_in_train() {
        let (train, test) = stratified_split(&[0, 0, 0, 0, 1], 0.5, &mut ChaCha8Rng::seed_from_u64(1));
        assert!(train.contains(&4));
        assert_eq!(test.len(), 2);
    }
}
