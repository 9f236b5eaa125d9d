//! Fixed-point encoding of updates into Z/2^64 and the masks added to them.
//!
//! Masks are ChaCha20 keystreams (via `rand_chacha`) expanded from 32-byte seeds; adding and
//! subtracting the same stream cancels exactly in modular arithmetic, so the server's sum of
//! masked vectors equals the sum of the plain ones once every mask is accounted for.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

/// Adds (or subtracts) the mask expanded from `seed` to `acc`, in Z/2^64.
pub fn apply_mask(acc: &mut [u64], seed: &[u8; 32], subtract: bool) {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    if subtract {
        acc.iter_mut().for_each(|a| *a = a.wrapping_sub(rng.next_u64()));
    } else {
        acc.iter_mut().for_each(|a| *a = a.wrapping_add(rng.next_u64()));
    }
}

/// A 32-byte key from a Diffie–Hellman secret and what it is for (domain separation).
pub fn derive_key(purpose: &str, shared: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"flotilla-secagg/");
    h.update(purpose.as_bytes());
    h.update(shared);
    h.finalize().into()
}

/// Real numbers as fixed-point integers in Z/2^64 (two's complement): `v ↦ round(v · scale)`.
/// Sums decode correctly while |Σ v · scale| < 2^63.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedPoint {
    pub scale: f64,
}

impl Default for FixedPoint {
    /// 2^24: a resolution of 6e-8, and room for sums up to about 5e11.
    fn default() -> Self {
        Self { scale: (1u64 << 24) as f64 }
    }
}

impl FixedPoint {
    /// Encodes one value; `None` if it is not finite or too large to sum safely (|v| ≥ 2^30).
    pub fn encode(&self, v: f64) -> Option<u64> {
        let scaled = (v * self.scale).round();
        (scaled.is_finite() && scaled.abs() < (1u64 << 54) as f64).then_some(scaled as i64 as u64)
    }

    /// Decodes a (summed) value.
    pub fn decode(&self, v: u64) -> f64 {
        v as i64 as f64 / self.scale
    }
}

/// A site's input to secure aggregation: `w·Δ` in fixed point, then the weight `w` itself
/// (an integer), so the unmasked sum gives Σ w·Δ and Σ w and nothing per site.
pub fn encode_weighted(delta: &[f32], weight: u64) -> Result<Vec<u64>, String> {
    let fp = FixedPoint::default();
    let mut out = Vec::with_capacity(delta.len() + 1);
    for (i, v) in delta.iter().enumerate() {
        out.push(fp.encode(weight as f64 * f64::from(*v)).ok_or_else(|| format!("value {v} at index {i} cannot be encoded for secure aggregation"))?);
    }
    out.push(weight);
    Ok(out)
}

/// The sum of [`encode_weighted`] inputs back to (Σ w·Δ, Σ w).
pub fn decode_weighted(sum: &[u64]) -> Result<(Vec<f32>, u64), String> {
    let (weight, values) = sum.split_last().ok_or("an empty secure sum")?;
    let fp = FixedPoint::default();
    Ok((values.iter().map(|v| fp.decode(*v) as f32).collect(), *weight))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_cancel_and_fixed_point_round_trips_signed_values() {
        let mut v = vec![5u64, u64::MAX, 0];
        let original = v.clone();
        apply_mask(&mut v, &[7; 32], false);
        assert_ne!(v, original);
        apply_mask(&mut v, &[7; 32], true);
        assert_eq!(v, original);
        let fp = FixedPoint::default();
        let sum = fp.encode(-1.25).unwrap().wrapping_add(fp.encode(0.5).unwrap());
        assert_eq!(fp.decode(sum), -0.75);
        assert_eq!(fp.encode(f64::NAN), None);
        assert_eq!(fp.encode(1e12), None);
    }
}
