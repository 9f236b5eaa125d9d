//! Encoded examples: a row-major feature matrix and class labels (or regression targets).

/// How a regression target was standardised: `target = (value − mean) / std`, with the
/// label's federation-wide moments from the plan.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetScale {
    pub mean: f64,
    pub std: f64,
}

impl TargetScale {
    /// No scaling (a regression plan without the label's moments).
    pub const IDENTITY: TargetScale = TargetScale { mean: 0.0, std: 1.0 };

    /// A value in the label's own units to standard units.
    pub fn standardise(&self, value: f64) -> f64 {
        (value - self.mean) / self.std
    }

    /// A model output in standard units back to the label's own units.
    pub fn restore(&self, standard: f64) -> f64 {
        standard * self.std + self.mean
    }
}

/// Examples ready for training: `features` holds `len() × n_features` values, row-major.
/// A classification dataset has a class per example in `labels`; a regression dataset has
/// `target_scale`, every label 0 (one class) and the values in `targets`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    pub features: Vec<f32>,
    pub n_features: usize,
    pub labels: Vec<u32>,
    pub num_classes: usize,
    /// Regression: each example's target in standard units (empty in classification).
    pub targets: Vec<f32>,
    /// Regression: how the targets were standardised; `None` in classification.
    pub target_scale: Option<TargetScale>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The features of example `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.n_features..(i + 1) * self.n_features]
    }

    /// True for a regression dataset.
    pub fn is_regression(&self) -> bool {
        self.target_scale.is_some()
    }

    /// Appends every example of `other` (same encoding).
    pub fn extend(&mut self, other: &Dataset) {
        self.features.extend_from_slice(&other.features);
        self.labels.extend_from_slice(&other.labels);
        self.targets.extend_from_slice(&other.targets);
    }

    /// Appends example `i` of `source` (same encoding) with `features` in place of its own.
    pub fn push_copy(&mut self, source: &Dataset, i: usize, features: &[f32]) {
        self.features.extend_from_slice(features);
        self.labels.push(source.labels[i]);
        if let Some(&t) = source.targets.get(i) {
            self.targets.push(t);
        }
    }

    /// The union of several datasets with the same encoding.
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a Dataset>) -> Dataset {
        let mut out = Dataset::default();
        for p in parts {
            if out.n_features == 0 {
                out.n_features = p.n_features;
                out.num_classes = p.num_classes;
                out.target_scale = p.target_scale;
            }
            out.extend(p);
        }
        out
    }

    /// Number of examples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes.max(1)];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}
