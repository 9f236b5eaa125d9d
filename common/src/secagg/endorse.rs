//! Signed secure aggregation: a site signs its round keys with its certificate's key, and
//! every other site checks the signature against the federation CA before sealing shares to
//! those keys. The coordinator routes the keys; without this it could substitute its own and
//! read the shares (the active-adversary variant of Bonawitz et al. 2017, §6).
//!
//! This module holds what is signed and how it travels; signing and verifying are the
//! site's (`flotilla_client::secure`), which holds the key and the CA.

use super::protocol::PublicKeys;

/// Bounds on what a hostile peer can make a site parse.
pub const MAX_CERTIFICATE_BYTES: usize = 16 << 10;
pub const MAX_SIGNATURE_BYTES: usize = 1024;

/// A site's signature over its round keys and the certificate (DER) that verifies it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endorsement {
    pub signature: Vec<u8>,
    pub certificate: Vec<u8>,
}

/// The bytes a site signs: its keys bound to the protocol, the round and its own name, so
/// that keys cannot be replayed into another round or claimed for another site.
pub fn endorsed_bytes(round: u32, site: &str, keys: &PublicKeys) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + site.len() + 96);
    m.extend_from_slice(b"flotilla secure aggregation keys v1\0");
    m.extend_from_slice(&round.to_le_bytes());
    m.extend_from_slice(&(site.len() as u64).to_le_bytes());
    m.extend_from_slice(site.as_bytes());
    m.extend_from_slice(&keys.c);
    m.extend_from_slice(&keys.s);
    m.extend_from_slice(&keys.b_commitment);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_bytes_bind_round_site_and_every_key() {
        let k = PublicKeys { c: [1; 32], s: [2; 32], b_commitment: [3; 32] };
        let base = endorsed_bytes(4, "alice", &k);
        assert_ne!(base, endorsed_bytes(5, "alice", &k));
        assert_ne!(base, endorsed_bytes(4, "alicf", &k));
        for i in 0..3 {
            let mut other = k;
            [&mut other.c, &mut other.s, &mut other.b_commitment][i][0] ^= 1;
            assert_ne!(base, endorsed_bytes(4, "alice", &other));
        }
    }
}
