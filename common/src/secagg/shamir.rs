//! Shamir secret sharing of 32-byte secrets over the prime field GF(2^61 − 1).
//!
//! A secret is cut into five 7-byte limbs (35 bytes ≥ 32), each shared with its own random
//! polynomial of degree t − 1; share `i` is the polynomials evaluated at `x = i`. Any t shares
//! give the secret back by Lagrange interpolation at 0; fewer reveal nothing about it. A prime
//! field this large allows far more participants than a byte field (GF(2^8) stops at 255).

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The Mersenne prime 2^61 − 1.
pub const P: u64 = (1 << 61) - 1;
const LIMBS: usize = 5;
const LIMB_BYTES: usize = 7;

/// One participant's share of one secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The evaluation point (1-based position in the roster).
    pub x: u64,
    pub y: [u64; LIMBS],
}

impl Share {
    /// Bytes for sealing: x then the limbs, little-endian.
    pub fn to_bytes(&self) -> [u8; 8 * (LIMBS + 1)] {
        let mut out = [0u8; 8 * (LIMBS + 1)];
        out[..8].copy_from_slice(&self.x.to_le_bytes());
        for (i, y) in self.y.iter().enumerate() {
            out[8 * (i + 1)..8 * (i + 2)].copy_from_slice(&y.to_le_bytes());
        }
        out
    }

    /// Reads [`Self::to_bytes`]; `None` on a wrong length or a value outside the field.
    pub fn from_bytes(b: &[u8]) -> Option<Share> {
        if b.len() != 8 * (LIMBS + 1) {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(b[8 * i..8 * (i + 1)].try_into().unwrap_or([0xff; 8]));
        let share = Share { x: word(0), y: std::array::from_fn(|i| word(i + 1)) };
        (share.x != 0 && share.x < P && share.y.iter().all(|&y| y < P)).then_some(share)
    }
}

fn add(a: u64, b: u64) -> u64 {
    let s = a + b; // both < 2^61: no overflow
    if s >= P { s - P } else { s }
}

fn sub(a: u64, b: u64) -> u64 {
    if a >= b { a - b } else { a + P - b }
}

fn mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    // x mod 2^61−1 = (x & P) + (x >> 61), folded twice.
    let lo = (p as u64) & P;
    let hi = (p >> 61) as u64;
    add(lo, hi % P)
}

fn pow(mut base: u64, mut e: u64) -> u64 {
    let mut acc = 1;
    while e > 0 {
        if e & 1 == 1 {
            acc = mul(acc, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    acc
}

fn inv(a: u64) -> u64 {
    pow(a, P - 2) // Fermat; callers never pass 0
}

fn random_element(rng: &mut impl RngCore) -> u64 {
    loop {
        let v = rng.next_u64() >> 3; // 61 bits
        if v < P {
            return v;
        }
    }
}

/// Shares `secret` among `n` participants (x = 1..=n) so that any `t` recover it.
pub fn split(secret: &[u8; 32], n: usize, t: usize, rng: &mut impl RngCore) -> Vec<Share> {
    let mut padded = [0u8; LIMBS * LIMB_BYTES];
    padded[..32].copy_from_slice(secret);
    // Coefficients per limb: the limb itself, then t − 1 random ones.
    let coefficients: Vec<Vec<u64>> = (0..LIMBS)
        .map(|l| {
            let mut limb = [0u8; 8];
            limb[..LIMB_BYTES].copy_from_slice(&padded[l * LIMB_BYTES..(l + 1) * LIMB_BYTES]);
            std::iter::once(u64::from_le_bytes(limb)).chain((1..t.max(1)).map(|_| random_element(rng))).collect()
        })
        .collect();
    (1..=n as u64).map(|x| Share { x, y: std::array::from_fn(|l| coefficients[l].iter().rev().fold(0, |acc, &c| add(mul(acc, x), c))) }).collect()
}

/// The Lagrange weights at 0 for the evaluation points `xs` (distinct, non-zero).
pub fn lagrange_at_zero(xs: &[u64]) -> Vec<u64> {
    xs.iter()
        .enumerate()
        .map(|(i, &xi)| {
            let (mut num, mut den) = (1, 1);
            for (j, &xj) in xs.iter().enumerate() {
                if i != j {
                    num = mul(num, xj);
                    den = mul(den, sub(xj, xi));
                }
            }
            mul(num, inv(den))
        })
        .collect()
}

/// Recovers a secret from shares with the given Lagrange `weights` (same order).
pub fn combine_with(shares: &[Share], weights: &[u64]) -> Option<[u8; 32]> {
    let mut padded = [0u8; LIMBS * LIMB_BYTES];
    for l in 0..LIMBS {
        let v = shares.iter().zip(weights).fold(0, |acc, (s, &w)| add(acc, mul(s.y[l], w)));
        if v >> (8 * LIMB_BYTES) != 0 {
            return None; // not a limb we could have shared: wrong or too few shares
        }
        padded[l * LIMB_BYTES..(l + 1) * LIMB_BYTES].copy_from_slice(&v.to_le_bytes()[..LIMB_BYTES]);
    }
    if padded[32..].iter().any(|&b| b != 0) {
        return None;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&padded[..32]);
    Some(out)
}

/// Recovers a secret from the first `t` of `shares` (distinct x); `None` if there are fewer
/// or they are inconsistent.
pub fn combine(shares: &[Share], t: usize) -> Option<[u8; 32]> {
    let mut chosen: Vec<Share> = Vec::with_capacity(t);
    for s in shares {
        if !chosen.iter().any(|c| c.x == s.x) {
            chosen.push(*s);
        }
        if chosen.len() == t {
            break;
        }
    }
    if chosen.len() < t.max(1) {
        return None;
    }
    let xs: Vec<u64> = chosen.iter().map(|s| s.x).collect();
    combine_with(&chosen, &lagrange_at_zero(&xs))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    #[test]
    fn field_arithmetic_is_right_at_the_edges() {
        assert_eq!(mul(P - 1, P - 1), 1, "(−1)² = 1");
        assert_eq!(mul(inv(12345), 12345), 1);
        assert_eq!(add(P - 1, 1), 0);
        assert_eq!(sub(0, 1), P - 1);
        assert_eq!(mul(1 << 40, 1 << 40), 1 << 19, "2^80 = 2^19 · 2^61 ≡ 2^19");
    }

    #[test]
    fn any_t_shares_recover_the_secret_and_fewer_do_not() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        secret[31] = 0xff;
        let shares = split(&secret, 500, 251, &mut rng);
        assert_eq!(combine(&shares[..251], 251), Some(secret));
        assert_eq!(combine(&shares[249..], 251), Some(secret), "any 251 of them");
        let mut reversed = shares.clone();
        reversed.reverse();
        assert_eq!(combine(&reversed, 251), Some(secret));
        assert_ne!(combine(&shares[..250], 250), Some(secret), "250 shares interpolate a different polynomial");
        assert_eq!(combine(&shares[..250], 251), None, "too few");
        let bytes = shares[7].to_bytes();
        assert_eq!(Share::from_bytes(&bytes), Some(shares[7]));
        assert_eq!(Share::from_bytes(&bytes[1..]), None);
    }
}
