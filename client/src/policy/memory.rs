//! An estimate of what a task needs in memory at this site, checked against the policy's
//! ceiling before the data is encoded and before training starts.

use flotilla_common::Task;

/// What the process needs besides the model and the data: runtime, TLS, burn's allocator
/// pools. Measured at about 40 MiB for the seed MLP; rounded up.
const BASE_BYTES: u64 = 64 << 20;

/// Copies of the parameters alive while a round trains: the global model, the local one,
/// its gradients, Adam's two moments, burn's autodiff copy, and the delta sent.
const PARAMETER_COPIES: u64 = 7;

/// Bytes a site needs to train `params` parameters on `train_rows` and evaluate on
/// `test_rows` encoded rows of `width` features: an upper estimate (saturating, never
/// overflowing, whatever a hostile plan announces).
pub fn estimate_bytes(task: &Task, params: u64, width: u64, train_rows: u64, test_rows: u64) -> u64 {
    // An image task's rows are its images, whatever the plan's width.
    let width = task.data.images.map_or(width, |i| i.values() as u64);
    let aug = &task.data.augmentation;
    let copies = 1u64.saturating_add(u64::from(aug.jitter_copies)).saturating_mul(if aug.oversample_minority { 2 } else { 1 });
    let rows = train_rows.saturating_mul(copies).saturating_add(test_rows);
    // f32 features plus a label per row.
    let data = rows.saturating_mul(width.saturating_add(1)).saturating_mul(4);
    let model = params.saturating_mul(4).saturating_mul(PARAMETER_COPIES);
    // Activations of one batch, forward and backward.
    let mut layers: u64 = task.model.hidden.iter().fold(width, |acc, &h| acc.saturating_add(h as u64));
    if let (Some(image), flotilla_common::task::ModelKind::Cnn) = (task.data.images, task.model.kind) {
        // Each convolution's output before its pool: filters × the side it works at.
        let mut plane = (image.height as u64).saturating_mul(image.width as u64);
        for &f in &task.model.filters {
            layers = layers.saturating_add((f as u64).saturating_mul(plane));
            plane /= 4;
        }
    }
    let activations = (task.training.batch_size as u64).saturating_mul(layers).saturating_mul(4).saturating_mul(4);
    BASE_BYTES.saturating_add(data).saturating_add(model).saturating_add(activations)
}

/// Parameters of an MLP with these layer widths, or `None` past `u64`.
pub fn checked_params(widths: &[u64]) -> Option<u64> {
    widths.windows(2).try_fold(0u64, |acc, pair| pair[0].checked_mul(pair[1])?.checked_add(pair[1])?.checked_add(acc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_counted_without_overflow() {
        assert_eq!(checked_params(&[13, 64, 32, 1]), Some(13 * 64 + 64 + 64 * 32 + 32 + 32 + 1));
        assert_eq!(checked_params(&[u64::MAX, 2, 1]), None);
        let task = Task::hospitals();
        let small = estimate_bytes(&task, 3_000, 30, 200, 50);
        assert!(small > BASE_BYTES && small < BASE_BYTES + (1 << 20), "{small}");
        assert_eq!(estimate_bytes(&task, u64::MAX, u64::MAX, u64::MAX, u64::MAX), u64::MAX);
    }
}
