//! Top-k sparsification: the `k = ⌈F·n⌉` values largest in magnitude, as a count, then
//! `k` strictly increasing u32 indices, then their `k` f32 values (little-endian).

use super::CodecError;

/// The most bytes an encoding of `n` values can take (every value kept).
pub fn max_encoded_len(n: usize) -> usize {
    n.saturating_mul(8).saturating_add(4)
}

/// How many values a fraction keeps of `n` (at least one of a non-empty update).
pub fn kept(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).ceil() as usize).clamp(usize::from(n > 0), n)
}

pub fn encode(values: &[f32], fraction: f64) -> Vec<u8> {
    let k = kept(values.len(), fraction);
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    // Largest magnitude first; ties by index, so the choice does not depend on the sort.
    let by_size = |a: &u32, b: &u32| values[*b as usize].abs().total_cmp(&values[*a as usize].abs()).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k, by_size);
        order.truncate(k);
    }
    order.sort_unstable();
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

pub fn decode(bytes: &[u8], n: usize) -> Result<Vec<f32>, CodecError> {
    let invalid = |message: String| CodecError::Invalid { codec: "topk", message };
    let Some(head) = bytes.get(..4) else {
        return Err(CodecError::Length { codec: "topk", bytes: bytes.len(), values: n, expected: "at least 4".into() });
    };
    let k = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if k > n {
        return Err(invalid(format!("{k} values kept of an update of {n}")));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
