//! Encoded examples: a row-major feature matrix and class labels.

/// Examples ready for training: `features` holds `len() × n_features` values, row-major.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    pub features: Vec<f32>,
    pub n_features: usize,
    pub labels: Vec<u32>,
    pub num_classes: usize,
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

    /// Appends every example of `other` (same encoding).
    pub fn extend(&mut self, other: &Dataset) {
        self.features.extend_from_slice(&other.features);
        self.labels.extend_from_slice(&other.labels);
    }

    /// The union of several datasets with the same encoding.
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a Dataset>) -> Dataset {
        let mut out = Dataset::default();
        for p in parts {
            if out.n_features == 0 {
                out.n_features = p.n_features;
                out.num_classes = p.num_classes;
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
