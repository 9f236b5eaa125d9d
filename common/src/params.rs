//! Flat model parameters: one `Vec<f32>` plus the layout (names and shapes) that gives it meaning.
//!
//! Everything outside the burn bridge (`model::bridge`) sees models only in this form:
//! aggregation, hashing, the wire and the run directory need no tensor backend.

use sha2::{Digest, Sha256};

use crate::error::ParamsError;

/// One named tensor inside a flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorSpec {
    /// Dotted module path, e.g. `layers.0.weight`.
    pub name: String,
    /// Dimensions; the tensor occupies `shape.iter().product()` values.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Number of values this tensor holds.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for a tensor with a zero dimension.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Names and shapes of the tensors of a model, in a fixed order, with a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    tensors: Vec<TensorSpec>,
    fingerprint: String,
    total: usize,
}

impl Layout {
    /// Builds a layout; the fingerprint is derived from names and shapes.
    pub fn new(tensors: Vec<TensorSpec>) -> Self {
        let mut h = Sha256::new();
        for t in &tensors {
            h.update(t.name.as_bytes());
            h.update([0u8]);
            for d in &t.shape {
                h.update((*d as u64).to_le_bytes());
            }
            h.update([0xffu8]);
        }
        let total = tensors.iter().map(TensorSpec::len).sum();
        Self { tensors, fingerprint: hex::encode(h.finalize()), total }
    }

    /// The tensors in order.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Hex SHA-256 over names and shapes: two models with equal fingerprints can be averaged.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Total number of values.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The layout of a SCAFFOLD update: the model's tensors, then a `control.`-prefixed copy
    /// for the change of the site's control variate.
    pub fn with_control(&self) -> Layout {
        let control = self.tensors.iter().map(|t| TensorSpec { name: format!("control.{}", t.name), shape: t.shape.clone() });
        Layout::new(self.tensors.iter().cloned().chain(control).collect())
    }

    /// Fails unless `other` is the same layout.
    pub fn ensure_same(&self, other: &Layout) -> Result<(), ParamsError> {
        if self.fingerprint != other.fingerprint {
            return Err(ParamsError::LayoutMismatch { expected: self.fingerprint.clone(), found: other.fingerprint.clone() });
        }
        Ok(())
    }
}

/// A model as a flat vector of values with its layout.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatParams {
    layout: Layout,
    values: Vec<f32>,
}

impl FlatParams {
    /// Joins a layout and its values; fails when the lengths disagree.
    pub fn new(layout: Layout, values: Vec<f32>) -> Result<Self, ParamsError> {
        if values.len() != layout.total() {
            return Err(ParamsError::LengthMismatch { expected: layout.total(), found: values.len() });
        }
        Ok(Self { layout, values })
    }

    /// All zeros with the given layout.
    pub fn zeros(layout: Layout) -> Self {
        let values = vec![0.0; layout.total()];
        Self { layout, values }
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The values in layout order.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Mutable access to the values (the layout cannot change).
    pub fn values_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }

    /// Splits into layout and values.
    pub fn into_parts(self) -> (Layout, Vec<f32>) {
        (self.layout, self.values)
    }

    /// The values of one tensor, by position in the layout.
    pub fn tensor_values(&self, index: usize) -> &[f32] {
        let start: usize = self.layout.tensors[..index].iter().map(TensorSpec::len).sum();
        &self.values[start..start + self.layout.tensors[index].len()]
    }

    /// Hex SHA-256 over the layout fingerprint and the little-endian bytes of every value.
    ///
    /// Two models with the same hash are bit-identical; the hash names a model on the wire.
    pub fn hash(&self) -> String {
        checksum(&self.layout.fingerprint, &self.values)
    }

    /// `self - base`, value by value; both must share a layout.
    pub fn delta_from(&self, base: &FlatParams) -> Result<FlatParams, ParamsError> {
        self.layout.ensure_same(&base.layout)?;
        let values = self.values.iter().zip(&base.values).map(|(a, b)| a - b).collect();
        Ok(FlatParams { layout: self.layout.clone(), values })
    }

    /// `[self ; other]` under the SCAFFOLD layout of `self`'s layout (see [`Layout::with_control`]).
    pub fn concat_control(&self, control: &FlatParams) -> Result<FlatParams, ParamsError> {
        self.layout.ensure_same(&control.layout)?;
        let mut values = Vec::with_capacity(self.values.len() * 2);
        values.extend_from_slice(&self.values);
        values.extend_from_slice(&control.values);
        FlatParams::new(self.layout.with_control(), values)
    }

    /// Splits a SCAFFOLD update `[Δy ; Δc]` into its halves, each with the model layout.
    pub fn split_control(&self, model: &Layout) -> Result<(FlatParams, FlatParams), ParamsError> {
        self.layout.ensure_same(&model.with_control())?;
        let (a, b) = self.values.split_at(model.total());
        Ok((FlatParams::new(model.clone(), a.to_vec())?, FlatParams::new(model.clone(), b.to_vec())?))
    }

    /// Euclidean norm, accumulated in f64.
    pub fn l2_norm(&self) -> f64 {
        self.values.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt()
    }
}

/// Little-endian bytes of a slice of f32 (the wire and file format of every model).
/// SHA-256 (hex) of a layout fingerprint and values: the hash of models and the checksum of
/// updates.
pub fn checksum(fingerprint: &str, values: &[f32]) -> String {
    let mut h = Checksum::new(fingerprint);
    if cfg!(target_endian = "little") {
        h.update(bytemuck::cast_slice(values)); // the values' own bytes: no copy
    } else {
        for chunk in values.chunks(16 * 1024) {
            h.update(&f32_to_le_bytes(chunk));
        }
    }
    h.finish()
}

/// [`checksum`] computed incrementally over the little-endian bytes of the values as they
/// arrive, so a receiver verifies a stream without a second pass over it.
#[derive(Debug, Clone)]
pub struct Checksum(Sha256);

impl Checksum {
    pub fn new(fingerprint: &str) -> Self {
        let mut h = Sha256::new();
        h.update(fingerprint.as_bytes());
        Self(h)
    }

    /// Feeds the next little-endian bytes of the values.
    pub fn update(&mut self, le_bytes: &[u8]) {
        self.0.update(le_bytes);
    }

    /// The hex digest.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

pub fn f32_to_le_bytes(values: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        return bytemuck::cast_slice(values).to_vec();
    }
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Appends little-endian f32 values decoded from `bytes` to `out`; `bytes.len()` must be a multiple of 4.
pub fn extend_from_le_bytes(out: &mut Vec<f32>, bytes: &[u8]) -> Result<(), ParamsError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(ParamsError::RaggedBytes { len: bytes.len() });
    }
    out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(vec![TensorSpec { name: "a.weight".into(), shape: vec![2, 3] }, TensorSpec { name: "a.bias".into(), shape: vec![3] }])
    }

    #[test]
    fn fingerprint_depends_on_names_and_shapes() {
        let other = Layout::new(vec![TensorSpec { name: "a.weight".into(), shape: vec![3, 2] }, TensorSpec { name: "a.bias".into(), shape: vec![3] }]);
        assert_eq!(layout().fingerprint(), layout().fingerprint());
        assert_ne!(layout().fingerprint(), other.fingerprint());
        assert!(layout().ensure_same(&other).is_err());
        assert_eq!(layout().total(), 9);
    }

    #[test]
    fn wrong_length_is_refused() {
        let err = FlatParams::new(layout(), vec![0.0; 8]).unwrap_err();
        assert!(err.to_string().contains("expected 9"), "{err}");
    }

    #[test]
    fn hash_changes_with_a_single_bit() {
        let a = FlatParams::new(layout(), vec![1.0; 9]).unwrap();
        let mut b = a.clone();
        b.values_mut()[4] = f32::from_bits(1.0f32.to_bits() + 1);
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), a.clone().hash());
    }

    #[test]
    fn bytes_round_trip() {
        let v = vec![1.5f32, -0.0, f32::MIN_POSITIVE, 3.25e7];
        let mut back = Vec::new();
        extend_from_le_bytes(&mut back, &f32_to_le_bytes(&v)).unwrap();
        assert_eq!(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), back.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        assert!(extend_from_le_bytes(&mut back, &[1, 2, 3]).is_err());
    }
}
