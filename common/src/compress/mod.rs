//! Update compression: how a site's delta is encoded on the wire.
//!
//! A codec turns the delta's `n` values into bytes and back. `f32` is the plain encoding;
//! `fp16` and `bf16` cast each value; `int8` quantises blocks of values against a per-block
//! scale with stochastic rounding (unbiased: the expected decoded value is the value);
//! `topk:F` keeps the largest `F·n` values by magnitude, with their indices; `topk8:F` keeps
//! the same values in about a quarter of the bytes (varint gaps, int8 values). The lossy codecs
//! are paired with error feedback at the site ([`ErrorFeedback`]): what was not sent is
//! added to the next round's delta, so nothing is lost over rounds.
//!
//! The coordinator decodes every update before it checks, clips or sums it, so validation,
//! the robust rules and central DP see dense `f32` deltas, and the sum stays exact and
//! order-independent: a compressed federation is as reproducible as a plain one. Decoding
//! is strict: a stream of the wrong length, an index out of range or repeated, a scale or a
//! value that is not finite is refused with the reason.

pub mod delta;
mod feedback;
mod int8;
mod topk;

use std::fmt;
use std::str::FromStr;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use feedback::ErrorFeedback;

/// How an update's values travel.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Codec {
    /// 4 bytes a value, exact.
    #[default]
    F32,
    /// IEEE half precision, 2 bytes a value (round to nearest).
    F16,
    /// bfloat16, 2 bytes a value (f32's range, 8 bits of mantissa).
    Bf16,
    /// 1 byte a value plus a 4-byte scale per block of [`int8::BLOCK`] values.
    Int8,
    /// The largest `fraction` of the values by magnitude, 8 bytes each (index and value).
    TopK { fraction: f64 },
    /// The same values, packed: varint gaps between their indices and int8 values (about 2
    /// bytes each at a fraction of 0.05).
    TopK8 { fraction: f64 },
}

/// Why a compressed stream cannot be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("{codec}: {bytes} bytes cannot hold {values} values (expected {expected})")]
    Length { codec: &'static str, bytes: usize, values: usize, expected: String },
    #[error("{codec}: {message}")]
    Invalid { codec: &'static str, message: String },
}

impl Codec {
    /// The wire number of the encoding (`UpdateHeader.encoding`); 0 is plain `f32`, which
    /// every coordinator accepts.
    pub fn wire_id(self) -> u32 {
        match self {
            Codec::F32 => 0,
            Codec::F16 => 1,
            Codec::Bf16 => 2,
            Codec::Int8 => 3,
            Codec::TopK { .. } => 4,
            Codec::TopK8 { .. } => 5,
        }
    }

    /// The codec of a wire number. `topk`'s fraction is not needed to decode (the stream
    /// says how many values it holds).
    pub fn from_wire(id: u32) -> Option<Codec> {
        Some(match id {
            0 => Codec::F32,
            1 => Codec::F16,
            2 => Codec::Bf16,
            3 => Codec::Int8,
            4 => Codec::TopK { fraction: 0.0 },
            5 => Codec::TopK8 { fraction: 0.0 },
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::F32 => "f32",
            Codec::F16 => "fp16",
            Codec::Bf16 => "bf16",
            Codec::Int8 => "int8",
            Codec::TopK { .. } => "topk",
            Codec::TopK8 { .. } => "topk8",
        }
    }

    /// True when decoding gives back exactly what was encoded.
    pub fn is_lossless(self) -> bool {
        self == Codec::F32
    }

    /// True for the codecs whose error is carried to the next round by error feedback:
    /// sparsification drops most of each update, which would otherwise be lost.
    pub fn uses_error_feedback(self) -> bool {
        matches!(self, Codec::TopK { .. } | Codec::TopK8 { .. })
    }

    /// The most bytes an honest encoding of `n` values takes: what a receiver may buffer.
    pub fn max_encoded_len(self, n: usize) -> usize {
        match self {
            Codec::F32 => n.saturating_mul(4),
            Codec::F16 | Codec::Bf16 => n.saturating_mul(2),
            Codec::Int8 => int8::encoded_len(n),
            Codec::TopK { .. } => topk::max_encoded_len(n),
            Codec::TopK8 { .. } => topk::max_packed_len(n),
        }
    }

    /// Encodes `values`; `rng` draws int8's stochastic rounding (seeded by the caller, so a
    /// federation stays reproducible).
    pub fn encode(self, values: &[f32], rng: &mut ChaCha8Rng) -> Vec<u8> {
        match self {
            Codec::F32 => crate::params::f32_to_le_bytes(values),
            Codec::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            Codec::Bf16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            Codec::Int8 => int8::encode(values, rng),
            Codec::TopK { fraction } => topk::encode(values, fraction),
            Codec::TopK8 { fraction } => topk::encode_packed(values, fraction, rng),
        }
    }

    /// Decodes `bytes` into exactly `n` values, refusing anything an honest encoder of this
    /// codec cannot have produced, or a value that is not finite.
    pub fn decode(self, bytes: &[u8], n: usize) -> Result<Vec<f32>, CodecError> {
        let values = match self {
            Codec::F32 | Codec::F16 | Codec::Bf16 => {
                let width = if self == Codec::F32 { 4 } else { 2 };
                if bytes.len() != n.saturating_mul(width) {
                    return Err(CodecError::Length { codec: self.name(), bytes: bytes.len(), values: n, expected: format!("{}", n.saturating_mul(width)) });
                }
                match self {
                    Codec::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                    Codec::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                    _ => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                }
            }
            Codec::Int8 => int8::decode(bytes, n)?,
            Codec::TopK { .. } => topk::decode(bytes, n)?,
            Codec::TopK8 { .. } => topk::decode_packed(bytes, n)?,
        };
        match values.iter().position(|v: &f32| !v.is_finite()) {
            Some(i) => Err(CodecError::Invalid { codec: self.name(), message: format!("value {i} is not finite") }),
            None => Ok(values),
        }
    }

    /// What the receiver will decode from `values`: the encoding and its decoding, as the
    /// site computes it to hash and to keep its error-feedback residual.
    pub fn round_trip(self, values: &[f32], rng: &mut ChaCha8Rng) -> Result<(Vec<u8>, Vec<f32>), CodecError> {
        let bytes = self.encode(values, rng);
        let decoded = self.decode(&bytes, values.len())?;
        Ok((bytes, decoded))
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::TopK { fraction } => write!(f, "topk:{fraction}"),
            Codec::TopK8 { fraction } => write!(f, "topk8:{fraction}"),
            c => f.write_str(c.name()),
        }
    }
}

impl FromStr for Codec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "f32" | "none" => Ok(Codec::F32),
            "fp16" | "f16" => Ok(Codec::F16),
            "bf16" => Ok(Codec::Bf16),
            "int8" => Ok(Codec::Int8),
            _ => {
                let (packed, rest) = match (s.strip_prefix("topk8:"), s.strip_prefix("topk:")) {
                    (Some(rest), _) => (true, rest),
                    (None, Some(rest)) => (false, rest),
                    (None, None) => return Err(format!("unknown codec `{s}`: expected f32, fp16, bf16, int8, topk:FRACTION or topk8:FRACTION")),
                };
                match rest.parse::<f64>() {
                    Ok(fraction) if fraction > 0.0 && fraction <= 1.0 => Ok(if packed { Codec::TopK8 { fraction } } else { Codec::TopK { fraction } }),
                    _ => Err(format!("`{s}`: top-k needs a fraction in (0, 1], as in topk:0.01")),
                }
            }
        }
    }
}

impl Serialize for Codec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Codec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect()
    }

    #[test]
    fn every_codec_round_trips_within_its_bound() {
        let v = values(10_000);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (codec, bound) in [(Codec::F32, 0.0), (Codec::F16, 1e-3), (Codec::Bf16, 4e-3), (Codec::Int8, 0.5 / 127.0 + 1e-6)] {
            let (bytes, back) = codec.round_trip(&v, &mut rng).unwrap();
            assert!(bytes.len() <= codec.max_encoded_len(v.len()), "{codec}");
            let worst = v.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= bound, "{codec}: worst error {worst} above {bound}");
        }
        assert_eq!(Codec::F32.round_trip(&v, &mut rng).unwrap().1, v, "f32 is exact");
    }

    #[test]
    fn names_parse_and_bad_ones_are_refused() {
        for c in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8, Codec::TopK { fraction: 0.01 }, Codec::TopK8 { fraction: 0.05 }] {
            assert_eq!(c.to_string().parse::<Codec>().unwrap(), c);
            assert_eq!(Codec::from_wire(c.wire_id()).map(Codec::wire_id), Some(c.wire_id()));
        }
        assert!("topk:0".parse::<Codec>().is_err() && "topk:1.5".parse::<Codec>().is_err() && "zip".parse::<Codec>().is_err());
        assert!("topk8:nan".parse::<Codec>().is_err() && "topk8:".parse::<Codec>().is_err());
        assert_eq!(Codec::from_wire(9), None);
    }

    #[test]
    fn a_cast_stream_of_the_wrong_length_or_with_a_non_finite_value_is_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let bytes = Codec::F16.encode(&values(10), &mut rng);
        assert!(matches!(Codec::F16.decode(&bytes[..19], 10), Err(CodecError::Length { .. })));
        assert!(matches!(Codec::F16.decode(&bytes, 11), Err(CodecError::Length { .. })));
        let mut nan = bytes.clone();
        nan[2..4].copy_from_slice(&half::f16::NAN.to_le_bytes());
        assert!(Codec::F16.decode(&nan, 10).unwrap_err().to_string().contains("value 1 is not finite"));
        // A finite f32 beyond f16's range becomes infinite: the site refuses its own encoding.
        assert!(Codec::F16.round_trip(&[1e6], &mut rng).is_err());
    }
}
