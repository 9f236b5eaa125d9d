//! Top-k sparsification: the `k = ⌈F·n⌉` values largest in magnitude.
//!
//! - `topk` (wire 4): a count, then `k` strictly increasing u32 indices, then their `k` f32
//!   values (little-endian): 8 bytes a kept value.
//! - `topk8` (wire 5): a count, then the gaps between kept indices (`i − previous − 1`) as
//!   LEB128 varints, then the kept values as int8 with per-block scales and stochastic
//!   rounding ([`super::int8`]): about 2 bytes a kept value at a fraction of 0.05 (a gap under
//!   128 is one byte). Error feedback carries both what was dropped and the rounding.

use rand_chacha::ChaCha8Rng;

use super::CodecError;
use super::int8;

/// The most bytes an encoding of `n` values can take (every value kept).
pub fn max_encoded_len(n: usize) -> usize {
    n.saturating_mul(8).saturating_add(4)
}

/// How many values a fraction keeps of `n` (at least one of a non-empty update).
pub fn kept(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).ceil() as usize).clamp(usize::from(n > 0), n)
}

/// The kept indices, increasing: the `⌈F·n⌉` largest magnitudes, ties by index.
fn largest(values: &[f32], fraction: f64) -> Vec<u32> {
    let k = kept(values.len(), fraction);
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    // Largest magnitude first; ties by index, so the choice does not depend on the sort.
    let by_size = |a: &u32, b: &u32| values[*b as usize].abs().total_cmp(&values[*a as usize].abs()).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k, by_size);
        order.truncate(k);
    }
    order.sort_unstable();
    order
}

pub fn encode(values: &[f32], fraction: f64) -> Vec<u8> {
    let order = largest(values, fraction);
    let k = order.len();
    let mut out = Vec::with_capacity(4 + 8 * k);
    out.extend_from_slice(&(k as u32).to_le_bytes());
    for &i in &order {
        out.extend_from_slice(&i.to_le_bytes());
    }
    for &i in &order {
        out.extend_from_slice(&values[i as usize].to_le_bytes());
    }
    out
}

/// The count of kept values that opens both encodings, at most `n`.
fn kept_count(codec: &'static str, bytes: &[u8], n: usize) -> Result<usize, CodecError> {
    let Some(head) = bytes.get(..4) else {
        return Err(CodecError::Length { codec, bytes: bytes.len(), values: n, expected: "at least 4".into() });
    };
    let k = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if k > n {
        return Err(CodecError::Invalid { codec, message: format!("{k} values kept of an update of {n}") });
    }
    Ok(k)
}

pub fn decode(bytes: &[u8], n: usize) -> Result<Vec<f32>, CodecError> {
    let invalid = |message: String| CodecError::Invalid { codec: "topk", message };
    let k = kept_count("topk", bytes, n)?;
    if bytes.len() != 4 + 8 * k {
        return Err(CodecError::Length { codec: "topk", bytes: bytes.len(), values: n, expected: format!("{} for {k} kept values", 4 + 8 * k) });
    }
    let (indices, vals) = bytes[4..].split_at(4 * k);
    let mut out = vec![0f32; n];
    let mut previous: Option<usize> = None;
    for (ib, vb) in indices.chunks_exact(4).zip(vals.chunks_exact(4)) {
        let i = u32::from_le_bytes([ib[0], ib[1], ib[2], ib[3]]) as usize;
        if i >= n {
            return Err(invalid(format!("index {i} is outside the update's {n} values")));
        }
        if previous.is_some_and(|p| i <= p) {
            return Err(invalid(format!("index {i} is repeated or out of order")));
        }
        previous = Some(i);
        out[i] = f32::from_le_bytes([vb[0], vb[1], vb[2], vb[3]]);
    }
    Ok(out)
}

/// The most bytes a `topk8` encoding of `n` values can take (every value kept, gaps of 5 bytes).
pub fn max_packed_len(n: usize) -> usize {
    n.saturating_mul(5).saturating_add(4).saturating_add(int8::encoded_len(n))
}

pub fn encode_packed(values: &[f32], fraction: f64, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let order = largest(values, fraction);
    let mut out = Vec::with_capacity(4 + 3 * order.len());
    out.extend_from_slice(&(order.len() as u32).to_le_bytes());
    let mut next = 0u32;
    for &i in &order {
        let mut gap = i - next;
        loop {
            let byte = (gap & 0x7f) as u8;
            gap >>= 7;
            if gap == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        next = i + 1;
    }
    let kept: Vec<f32> = order.iter().map(|&i| values[i as usize]).collect();
    out.extend_from_slice(&int8::encode(&kept, rng));
    out
}

pub fn decode_packed(bytes: &[u8], n: usize) -> Result<Vec<f32>, CodecError> {
    let invalid = |message: String| CodecError::Invalid { codec: "topk8", message };
    let k = kept_count("topk8", bytes, n)?;
    let mut indices = Vec::with_capacity(k);
    let (mut at, mut next) = (4usize, 0u64);
    for j in 0..k {
        let (mut gap, mut shift) = (0u64, 0u32);
        loop {
            let Some(&byte) = bytes.get(at) else {
                return Err(CodecError::Length {
                    codec: "topk8",
                    bytes: bytes.len(),
                    values: n,
                    expected: format!("more: the gap of kept value {j} is cut off"),
                });
            };
            at += 1;
            // A u32 gap takes at most 5 bytes; a last byte of 0 after others is not minimal.
            if shift > 28 || (byte == 0 && shift > 0) {
                return Err(invalid(format!("the gap of kept value {j} is not a minimal u32 varint")));
            }
            gap |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let i = next + gap;
        if i >= n as u64 {
            return Err(invalid(format!("index {i} is outside the update's {n} values")));
        }
        indices.push(i as usize);
        next = i + 1;
    }
    let rest = &bytes[at..];
    if rest.len() != int8::encoded_len(k) {
        return Err(CodecError::Length {
            codec: "topk8",
            bytes: bytes.len(),
            values: n,
            expected: format!("{} for {k} kept values", at + int8::encoded_len(k)),
        });
    }
    let kept = int8::decode(rest, k)?;
    let mut out = vec![0f32; n];
    for (i, v) in indices.into_iter().zip(kept) {
        out[i] = v;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn packed_top_k_keeps_the_largest_positions_and_values_within_the_int8_bound() {
        let v: Vec<f32> = (0..5000).map(|i| (((i * 7919) % 1000) as f32 / 1000.0 - 0.5) * if i % 97 == 0 { 40.0 } else { 1.0 }).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let bytes = encode_packed(&v, 0.05, &mut rng);
        let back = decode_packed(&bytes, v.len()).unwrap();
        let plain = decode(&encode(&v, 0.05), v.len()).unwrap();
        let positions = |x: &[f32]| x.iter().map(|&a| a != 0.0).collect::<Vec<bool>>();
        // Same positions as plain top-k (a kept value may round to 0 only if tiny; none here).
        assert_eq!(positions(&back), positions(&plain));
        let scale = v.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        assert!(plain.iter().zip(&back).all(|(a, b)| (a - b).abs() <= scale * 1.0001), "int8's error is below one step of its block");
        assert!(bytes.len() <= max_packed_len(v.len()));
        assert!(bytes.len() * 4 < encode(&v, 0.05).len() * 2, "under half of plain top-k's bytes: {}", bytes.len());
        // Gaps of several varint bytes, the first and last positions.
        let mut sparse = vec![0f32; 300_000];
        sparse[0] = 1.0;
        sparse[200_000] = -2.0;
        sparse[299_999] = 3.0;
        let back = decode_packed(&encode_packed(&sparse, 1e-5, &mut rng), sparse.len()).unwrap();
        assert_eq!(back.iter().filter(|v| **v != 0.0).count(), 3);
        assert_eq!((back[0] > 0.0, back[200_000] < 0.0, back[299_999]), (true, true, 3.0));
    }

    #[test]
    fn malformed_packed_streams_are_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let good = encode_packed(&[1.0, 0.0, 3.0, 4.0], 0.5, &mut rng); // indices 2, 3: gaps 2, 0
        assert_eq!(&good[4..6], &[2, 0]);
        assert_eq!(decode_packed(&good, 4).unwrap()[3], 4.0);
        let with = |at: usize, byte: u8| {
            let mut b = good.clone();
            b[at] = byte;
            decode_packed(&b, 4)
        };
        assert!(with(5, 1).unwrap_err().to_string().contains("outside"), "a gap past the end");
        assert!(with(4, 9).unwrap_err().to_string().contains("outside"));
        assert!(with(0, 5).unwrap_err().to_string().contains("5 values kept of an update of 4"));
        assert!(matches!(decode_packed(&good[..good.len() - 1], 4), Err(CodecError::Length { .. })));
        assert!(matches!(decode_packed(&good[..5], 4), Err(CodecError::Length { .. })), "cut inside the gaps");
        let mut longer = good.clone();
        longer.insert(6, 0);
        assert!(matches!(decode_packed(&longer, 4), Err(CodecError::Length { .. })));
        // Overlong varints: `0x82 0x00` is 2 written in two bytes; six bytes overflow u32.
        let mut overlong = good.clone();
        overlong.splice(4..5, [0x82, 0x00]);
        assert!(decode_packed(&overlong, 4).unwrap_err().to_string().contains("minimal"));
        let mut huge = good.clone();
        huge.splice(4..5, [0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(decode_packed(&huge, 1 << 20).unwrap_err().to_string().contains("minimal"));
        // A bad int8 scale is int8's refusal.
        let mut scale = good.clone();
        let at = scale.len() - 6;
        scale[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(decode_packed(&scale, 4).is_err());
    }

    #[test]
    fn the_largest_values_are_kept_exactly_and_the_rest_are_zero() {
        let v = [0.1, -5.0, 0.2, 3.0, -0.3, 0.0];
        let back = decode(&encode(&v, 0.34), v.len()).unwrap();
        assert_eq!(back, vec![0.0, -5.0, 0.0, 3.0, -0.3, 0.0], "k = ⌈0.34·6⌉ = 3");
        let back = decode(&encode(&v, 0.3), v.len()).unwrap();
        assert_eq!(back, vec![0.0, -5.0, 0.0, 3.0, 0.0, 0.0], "k = ⌈0.3·6⌉ = 2");
        assert_eq!(encode(&v, 0.3).len(), 4 + 8 * 2);
        assert_eq!(decode(&encode(&v, 1.0), v.len()).unwrap(), v.to_vec(), "everything kept is lossless");
    }

    #[test]
    fn malformed_streams_are_refused() {
        let good = encode(&[1.0, 2.0, 3.0, 4.0], 0.5); // indices 2, 3
        let with = |at: usize, value: u32| {
            let mut b = good.clone();
            b[at..at + 4].copy_from_slice(&value.to_le_bytes());
            decode(&b, 4)
        };
        assert!(with(4, 9).unwrap_err().to_string().contains("outside"));
        assert!(with(8, 2).unwrap_err().to_string().contains("repeated"));
        assert!(with(4, 3).unwrap_err().to_string().contains("repeated or out of order"));
        assert!(with(0, 5).unwrap_err().to_string().contains("5 values kept of an update of 4"));
        assert!(matches!(with(0, 1), Err(CodecError::Length { .. })));
        assert!(matches!(decode(&good[..3], 4), Err(CodecError::Length { .. })));
    }
}
