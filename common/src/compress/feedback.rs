//! Error feedback (Stich et al. 2018; Karimireddy et al. 2019): a site adds to each delta
//! what its earlier compressed updates left out, and keeps what this one leaves out. Over
//! rounds the sum of what was sent plus the residual equals the sum of the true deltas.
//!
//! The residual belongs to one model lineage (the federation's task and the model's layout):
//! a site that joins another federation, or one whose model changed shape, starts from zero.

use std::collections::HashMap;
use std::path::Path;

use crate::error::ParamsError;
use crate::model_file::{from_safetensors, to_safetensors};
use crate::params::FlatParams;

/// The residual of a site's compressed updates.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ErrorFeedback {
    residual: Option<(String, FlatParams)>,
}

impl ErrorFeedback {
    /// `delta` plus the residual kept for `lineage` (none for another lineage or layout).
    pub fn compensate(&self, lineage: &str, delta: &FlatParams) -> FlatParams {
        match &self.residual {
            Some((l, r)) if l == lineage && r.layout() == delta.layout() => {
                let values = delta.values().iter().zip(r.values()).map(|(d, e)| d + e).collect();
                FlatParams::new(delta.layout().clone(), values).unwrap_or_else(|_| delta.clone())
            }
            _ => delta.clone(),
        }
    }

    /// Keeps what `sent` (the decoded update) left out of `compensated` for `lineage`.
    pub fn record(&mut self, lineage: &str, compensated: &FlatParams, sent: &[f32]) {
        let values = compensated.values().iter().zip(sent).map(|(c, s)| c - s).collect();
        self.residual = FlatParams::new(compensated.layout().clone(), values).ok().map(|r| (lineage.to_owned(), r));
    }

    /// The residual's L2 norm (0 without one).
    pub fn norm(&self) -> f64 {
        self.residual.as_ref().map_or(0.0, |(_, r)| r.l2_norm())
    }

    /// Reads the residual a site saved (`None` when the file does not exist).
    pub fn load(path: &Path) -> Result<Self, ParamsError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(ParamsError::Safetensors(format!("{}: {e}", path.display()))),
        };
        let (residual, meta) = from_safetensors(&bytes).map_err(|e| ParamsError::Safetensors(format!("{}: {e}", path.display())))?;
        let lineage = meta.get("lineage").cloned().unwrap_or_default();
        Ok(Self { residual: Some((lineage, residual)) })
    }

    /// Writes the residual atomically (a temporary file renamed over the old one).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let Some((lineage, residual)) = &self.residual else { return Ok(()) };
        let bytes = to_safetensors(residual, HashMap::from([("lineage".to_owned(), lineage.clone())])).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::compress::Codec;
    use crate::params::{Layout, TensorSpec};

    fn params(values: Vec<f32>) -> FlatParams {
        FlatParams::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![values.len()] }]), values).unwrap()
    }

    #[test]
    fn error_feedback_loses_nothing_over_rounds() {
        let codec = Codec::TopK { fraction: 0.1 };
        let mut ef = ErrorFeedback::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut true_sum, mut sent_sum) = (vec![0f64; 100], vec![0f64; 100]);
        for round in 0..20 {
            let delta = params((0..100).map(|i| ((i * 37 + round * 11) % 17) as f32 / 17.0 - 0.5).collect());
            let compensated = ef.compensate("run", &delta);
            let (_, sent) = codec.round_trip(compensated.values(), &mut rng).unwrap();
            ef.record("run", &compensated, &sent);
            for i in 0..100 {
                true_sum[i] += f64::from(delta.values()[i]);
                sent_sum[i] += f64::from(sent[i]);
            }
        }
        let residual = ef.residual.as_ref().unwrap().1.values().to_vec();
        for i in 0..100 {
            assert!((sent_sum[i] + f64::from(residual[i]) - true_sum[i]).abs() < 1e-4, "value {i}");
        }
    }

    #[test]
    fn the_residual_survives_a_restart_and_another_lineage_starts_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("residual.safetensors");
        assert_eq!(ErrorFeedback::load(&path).unwrap(), ErrorFeedback::default(), "no file, no residual");
        let mut ef = ErrorFeedback::default();
        ef.record("run-a", &params(vec![1.0, 2.0]), &[1.0, 0.0]);
        ef.save(&path).unwrap();
        let back = ErrorFeedback::load(&path).unwrap();
        assert_eq!(back, ef);
        assert_eq!(back.compensate("run-a", &params(vec![0.5, 0.5])).values(), &[0.5, 2.5]);
        assert_eq!(back.compensate("run-b", &params(vec![0.5, 0.5])).values(), &[0.5, 0.5], "another federation's residual is not used");
        assert_eq!(back.compensate("run-a", &params(vec![0.5, 0.5, 0.5])).values(), &[0.5, 0.5, 0.5], "nor one of another shape");
        std::fs::write(&path, b"not a residual").unwrap();
        assert!(ErrorFeedback::load(&path).is_err(), "a damaged file is an error, not a silent reset");
    }
}
