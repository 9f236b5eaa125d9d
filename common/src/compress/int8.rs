//! int8 with a per-block scale and stochastic rounding.
//!
//! Each block of [`BLOCK`] values is stored as its scale `s = max |x| / 127` (f32) and one
//! signed byte `q ∈ [−127, 127]` per value, with `q = ⌊x/s⌋ + 1` with probability
//! `x/s − ⌊x/s⌋` and `⌊x/s⌋` otherwise: `E[q·s] = x` (unbiased), and the error is below `s`.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::CodecError;

/// Values per scale: a scale costs 4 bytes, so a block of 256 adds 1.6% to the 1 byte a value.
pub const BLOCK: usize = 256;

/// Bytes of `n` encoded values.
pub fn encoded_len(n: usize) -> usize {
    n.saturating_add(4usize.saturating_mul(n.div_ceil(BLOCK)))
}

pub fn encode(values: &[f32], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(values.len()));
    for block in values.chunks(BLOCK) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max.is_finite() && max > 0.0 { max / 127.0 } else { 0.0 };
        out.extend_from_slice(&scale.to_le_bytes());
        for &x in block {
            let q = if scale > 0.0 {
                let t = f64::from(x) / f64::from(scale);
                let low = t.floor();
                let up = rng.random::<f64>() < t - low;
                (low + f64::from(u8::from(up))).clamp(-127.0, 127.0) as i8
            } else {
                0
            };
            out.push(q as u8);
        }
    }
    out
}

pub fn decode(bytes: &[u8], n: usize) -> Result<Vec<f32>, CodecError> {
    if bytes.len() != encoded_len(n) {
        return Err(CodecError::Length { codec: "int8", bytes: bytes.len(), values: n, expected: encoded_len(n).to_string() });
    }
    let mut out = Vec::with_capacity(n);
    let mut rest = bytes;
    let mut left = n;
    while left > 0 {
        let len = left.min(BLOCK);
        let (head, tail) = rest.split_at(4 + len);
        let scale = f32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(CodecError::Invalid { codec: "int8", message: format!("block {} has a scale that is negative or not finite", (n - left) / BLOCK) });
        }
        for &b in &head[4..] {
            let q = b as i8;
            if q == i8::MIN {
                return Err(CodecError::Invalid { codec: "int8", message: "−128 is outside the symmetric range an encoder writes".into() });
            }
            out.push(f32::from(q) * scale);
        }
        rest = tail;
        left -= len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn stochastic_rounding_is_unbiased() {
        // 0.3 of a step above a grid point: over many draws the mean decodes to the value.
        let values: Vec<f32> = [1.0f32].into_iter().chain(std::iter::repeat_n(0.3 / 127.0, BLOCK - 1)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let draws = 2000;
        let mut mean = vec![0f64; BLOCK];
        for _ in 0..draws {
            for (m, v) in mean.iter_mut().zip(decode(&encode(&values, &mut rng), BLOCK).unwrap()) {
                *m += f64::from(v) / f64::from(draws);
            }
        }
        let target = 0.3 / 127.0;
        let average: f64 = mean[1..].iter().sum::<f64>() / (BLOCK - 1) as f64;
        assert!((average - target).abs() < 0.01 * target, "mean {average} vs {target}");
        // Each draw is on the grid: 0 or one step.
        let once = decode(&encode(&values, &mut rng), BLOCK).unwrap();
        assert!(once[1..].iter().all(|&v| v == 0.0 || (v - 1.0 / 127.0).abs() < 1e-9));
    }

    #[test]
    fn malformed_streams_are_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let bytes = encode(&[0.5; 300], &mut rng);
        assert_eq!(bytes.len(), encoded_len(300));
        assert!(matches!(decode(&bytes[..bytes.len() - 1], 300), Err(CodecError::Length { .. })));
        let mut bad = bytes.clone();
        bad[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(decode(&bad, 300).unwrap_err().to_string().contains("block 0"));
        let mut bad = bytes.clone();
        bad[4 + BLOCK..8 + BLOCK].copy_from_slice(&(-1.0f32).to_le_bytes());
        assert!(decode(&bad, 300).unwrap_err().to_string().contains("block 1"));
        let mut bad = bytes;
        bad[5] = 0x80;
        assert!(decode(&bad, 300).is_err());
    }
}
