//! The four rounds of secure aggregation (Bonawitz et al., CCS 2017, semi-honest setting).
//!
//! 0. **Advertise keys** — each client sends two X25519 public keys: `c` (to seal shares to
//!    other clients) and `s` (to agree pairwise mask seeds). The server publishes the roster.
//! 1. **Share keys** — each client draws a self-mask seed `b`, Shamir-shares `b` and its secret
//!    `s` key with threshold `t`, and seals one share pair to every other client (ChaCha20-
//!    Poly1305 under a key from `c`-agreement). The server only routes the sealed boxes.
//! 2. **Masked input** — each client sends `y = x + PRG(b) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)`
//!    in Z/2^64. The server adds the `y`s as they arrive and keeps only the running sum.
//! 3. **Unmasking** — given the survivors, each client reveals, for every other client of round
//!    1, the share of `b` if it survived, or of its `s` key if it dropped — never both. With `t`
//!    answers the server removes the self-masks of survivors and the pairwise masks of the
//!    dropped, and is left with `Σ x` over the survivors.
//!
//! The threshold must be a strict majority of the roster, so the server cannot collect both
//! secrets of one client. Beyond `n − t` dropouts the round fails with an error, never with a
//! wrong sum.

use std::collections::{BTreeMap, BTreeSet};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use super::masking::{apply_mask, derive_key};
use super::shamir::{self, Share};

/// Why a secure-aggregation round cannot go on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecAggError {
    #[error("secure aggregation: {stage}: {have} participants, the threshold needs {need}")]
    TooFew { stage: &'static str, have: usize, need: usize },
    #[error("secure aggregation: threshold {t} for {n} participants must be a strict majority and at most {n}")]
    Threshold { t: usize, n: usize },
    #[error("secure aggregation: `{0}` is not in the roster")]
    Stranger(String),
    #[error("secure aggregation: `{0}` already sent this round's message")]
    Duplicate(String),
    #[error("secure aggregation: a sealed share from `{from}` does not open (tampered or misrouted)")]
    Seal { from: String },
    #[error("secure aggregation: the masked input of `{from}` has {got} values, not {want}")]
    Length { from: String, got: usize, want: usize },
    #[error("secure aggregation: the shares of `{0}`'s secret do not reconstruct it (inconsistent shares)")]
    BadShares(String),
    #[error("secure aggregation: message out of order: {0}")]
    Order(&'static str),
}

/// Round 0: a client's two public keys, and a commitment to its self-mask seed (its SHA-256),
/// so that a wrong reconstruction of the seed is detected rather than silently wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKeys {
    pub c: [u8; 32],
    pub s: [u8; 32],
    pub b_commitment: [u8; 32],
}

/// The participants of round 1 with their keys, sorted by id; position + 1 is the share point.
#[derive(Debug, Clone, PartialEq)]
pub struct Roster {
    pub threshold: usize,
    pub members: Vec<(String, PublicKeys)>,
    /// Signed secure aggregation: each member's signature over its keys, with its certificate.
    pub endorsements: BTreeMap<String, super::endorse::Endorsement>,
}

impl Roster {
    fn position(&self, id: &str) -> Option<usize> {
        self.members.binary_search_by(|(m, _)| m.as_str().cmp(id)).ok()
    }
}

/// Round 1: a share pair sealed from one client to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    pub from: String,
    pub to: String,
    pub ciphertext: Vec<u8>,
}

/// Round 3: what a surviving client reveals, by the id of the client the share belongs to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reveal {
    pub from: String,
    /// Shares of `b` of survivors.
    pub self_mask: Vec<(String, Share)>,
    /// Shares of the `s` secret key of clients that dropped after round 1.
    pub secret_key: Vec<(String, Share)>,
}

fn nonce(from: &str, to: &str) -> [u8; 12] {
    let h = Sha256::new().chain_update(from.as_bytes()).chain_update([0]).chain_update(to.as_bytes()).finalize();
    let mut n = [0u8; 12];
    n.copy_from_slice(&h[..12]);
    n
}

fn pairwise_seed(own: &StaticSecret, other: &[u8; 32]) -> [u8; 32] {
    derive_key("mask", own.diffie_hellman(&PublicKey::from(*other)).as_bytes())
}

fn check_threshold(t: usize, n: usize) -> Result<(), SecAggError> {
    if 2 * t <= n || t > n || t < 2 {
        return Err(SecAggError::Threshold { t, n });
    }
    Ok(())
}

/// The smallest allowed threshold for `n` participants: a strict majority.
pub fn majority(n: usize) -> usize {
    (n / 2 + 1).max(2)
}

/// Subsets of shares tried per secret before the round fails: enough to outvote a few lying
/// helpers, bounded so that a hostile reveal cannot make unmasking run for long.
const MAX_SUBSETS: usize = 256;

/// The `k`-subsets of `0..n` in lexicographic order.
struct Combinations {
    n: usize,
    next: Option<Vec<usize>>,
}

impl Combinations {
    fn new(n: usize, k: usize) -> Self {
        Self { n, next: (k <= n && k > 0).then(|| (0..k).collect()) }
    }
}

impl Iterator for Combinations {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        let current = self.next.take()?;
        let k = current.len();
        let mut following = current.clone();
        // The rightmost position that can still move right.
        if let Some(i) = (0..k).rev().find(|&i| following[i] < self.n - k + i) {
            following[i] += 1;
            for j in i + 1..k {
                following[j] = following[j - 1] + 1;
            }
            self.next = Some(following);
        }
        Some(current)
    }
}

/// A client's side of one round.
pub struct Client {
    id: String,
    c_sk: StaticSecret,
    s_sk: StaticSecret,
    b: [u8; 32],
    roster: Option<Roster>,
    /// Shares other clients sealed to us: (share of their `s` key, share of their `b`).
    held: BTreeMap<String, (Share, Share)>,
    /// Round 1 survivors, as the server announced them with our inbox.
    shared: BTreeSet<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.id).finish_non_exhaustive() // never the secrets
    }
}

impl Client {
    /// Round 0: fresh keys; returns the client and its public keys.
    pub fn new(id: impl Into<String>, rng: &mut impl RngCore) -> (Client, PublicKeys) {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        let c_sk = StaticSecret::from(bytes);
        rng.fill_bytes(&mut bytes);
        let s_sk = StaticSecret::from(bytes);
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        let keys = PublicKeys { c: PublicKey::from(&c_sk).to_bytes(), s: PublicKey::from(&s_sk).to_bytes(), b_commitment: Sha256::digest(b).into() };
        (Client { id: id.into(), c_sk, s_sk, b, roster: None, held: BTreeMap::new(), shared: BTreeSet::new() }, keys)
    }

    /// Round 1: shares `b` and the `s` key among the roster, one sealed box per other member.
    pub fn share_keys(&mut self, roster: Roster, rng: &mut impl RngCore) -> Result<Vec<Sealed>, SecAggError> {
        let n = roster.members.len();
        check_threshold(roster.threshold, n)?;
        let me = roster.position(&self.id).ok_or_else(|| SecAggError::Stranger(self.id.clone()))?;
        let s_shares = shamir::split(&self.s_sk.to_bytes(), n, roster.threshold, rng);
        let b_shares = shamir::split(&self.b, n, roster.threshold, rng);
        let mut out = Vec::with_capacity(n - 1);
        for (i, (id, keys)) in roster.members.iter().enumerate() {
            if i == me {
                self.held.insert(id.clone(), (s_shares[i], b_shares[i]));
                continue;
            }
            let key = derive_key("seal", self.c_sk.diffie_hellman(&PublicKey::from(keys.c)).as_bytes());
            let mut plain = s_shares[i].to_bytes().to_vec();
            plain.extend_from_slice(&b_shares[i].to_bytes());
            let ciphertext = ChaCha20Poly1305::new(Key::from_slice(&key))
                .encrypt(Nonce::from_slice(&nonce(&self.id, id)), plain.as_slice())
                .map_err(|_| SecAggError::Seal { from: self.id.clone() })?;
            out.push(Sealed { from: self.id.clone(), to: id.clone(), ciphertext });
        }
        self.roster = Some(roster);
        Ok(out)
    }

    /// Round 2: opens the shares sealed to us by the clients that completed round 1, and masks
    /// `x` (already encoded in Z/2^64) for the server.
    pub fn masked_input(&mut self, x: &[u64], inbox: &[Sealed]) -> Result<Vec<u64>, SecAggError> {
        let roster = self.roster.as_ref().ok_or(SecAggError::Order("masked input before the key shares"))?;
        let mut shared = BTreeSet::from([self.id.clone()]);
        for sealed in inbox {
            let pos = roster.position(&sealed.from).ok_or_else(|| SecAggError::Stranger(sealed.from.clone()))?;
            if sealed.to != self.id || !shared.insert(sealed.from.clone()) {
                return Err(SecAggError::Duplicate(sealed.from.clone()));
            }
            let key = derive_key("seal", self.c_sk.diffie_hellman(&PublicKey::from(roster.members[pos].1.c)).as_bytes());
            let plain = ChaCha20Poly1305::new(Key::from_slice(&key))
                .decrypt(Nonce::from_slice(&nonce(&sealed.from, &self.id)), sealed.ciphertext.as_slice())
                .map_err(|_| SecAggError::Seal { from: sealed.from.clone() })?;
            let half = plain.len() / 2;
            let (s, b) = (Share::from_bytes(&plain[..half]), Share::from_bytes(&plain[half..]));
            let (Some(s), Some(b)) = (s, b) else { return Err(SecAggError::Seal { from: sealed.from.clone() }) };
            self.held.insert(sealed.from.clone(), (s, b));
        }
        if shared.len() < roster.threshold {
            return Err(SecAggError::TooFew { stage: "key shares", have: shared.len(), need: roster.threshold });
        }
        let mut y = x.to_vec();
        apply_mask(&mut y, &self.b, false);
        for (id, keys) in &roster.members {
            if *id == self.id || !shared.contains(id) {
                continue;
            }
            // The lower id adds, the higher subtracts: the pair cancels in the sum.
            apply_mask(&mut y, &pairwise_seed(&self.s_sk, &keys.s), self.id > *id);
        }
        self.shared = shared;
        Ok(y)
    }

    /// Round 3: for each client of round 1, the share of `b` if it survived, of its `s` key if
    /// it dropped. Refuses fewer than `t` survivors (the sum would not be recoverable anyway)
    /// and survivors that did not complete round 1.
    pub fn reveal(&self, survivors: &[String]) -> Result<Reveal, SecAggError> {
        let roster = self.roster.as_ref().ok_or(SecAggError::Order("unmasking before the key shares"))?;
        let survivors: BTreeSet<&String> = survivors.iter().collect();
        if survivors.len() < roster.threshold {
            return Err(SecAggError::TooFew { stage: "unmasking", have: survivors.len(), need: roster.threshold });
        }
        if let Some(s) = survivors.iter().find(|s| !self.shared.contains(**s)) {
            return Err(SecAggError::Stranger((*s).clone()));
        }
        let mut reveal = Reveal { from: self.id.clone(), ..Reveal::default() };
        for id in &self.shared {
            let Some((s_share, b_share)) = self.held.get(id) else { continue };
            if survivors.contains(id) {
                reveal.self_mask.push((id.clone(), *b_share));
            } else {
                reveal.secret_key.push((id.clone(), *s_share));
            }
        }
        Ok(reveal)
    }
}

/// The server's side of one round. It never holds an individual input: masked inputs are
/// added to the running sum as they arrive.
#[derive(Debug)]
pub struct Server {
    threshold: usize,
    len: usize,
    roster: Option<Roster>,
    shared: BTreeSet<String>,
    sum: Vec<u64>,
    survivors: BTreeSet<String>,
    /// Senders dropped at routing for not sealing one box to every other member.
    incomplete: BTreeSet<String>,
    /// Helpers whose reveal was malformed (a share at another point than theirs, an id twice
    /// or in both lists, an id outside the round), left out of the unmasking.
    malformed: BTreeSet<String>,
}

impl Server {
    /// A round over vectors of `len` values with threshold `threshold`.
    pub fn new(threshold: usize, len: usize) -> Self {
        Self {
            threshold,
            len,
            roster: None,
            shared: BTreeSet::new(),
            sum: vec![0; len],
            survivors: BTreeSet::new(),
            incomplete: BTreeSet::new(),
            malformed: BTreeSet::new(),
        }
    }

    /// Senders dropped at routing for missing or repeated boxes (to say who, in logs).
    pub fn incomplete(&self) -> &BTreeSet<String> {
        &self.incomplete
    }

    /// Round 0 → 1: the roster of the clients that advertised keys.
    pub fn roster(&mut self, keys: BTreeMap<String, PublicKeys>) -> Result<Roster, SecAggError> {
        if keys.len() < self.threshold {
            return Err(SecAggError::TooFew { stage: "advertised keys", have: keys.len(), need: self.threshold });
        }
        check_threshold(self.threshold, keys.len())?;
        let roster = Roster { threshold: self.threshold, members: keys.into_iter().collect(), endorsements: BTreeMap::new() };
        self.roster = Some(roster.clone());
        Ok(roster)
    }

    /// Round 1 → 2: routes sealed shares; each client that sent its boxes gets the boxes sent
    /// to it by the others that did. A sender must seal exactly one box to every other roster
    /// member: one that left a member out (whose pairwise mask would then never cancel) or
    /// sealed two to one is dropped from the round, as if it had not shared its keys.
    pub fn route(&mut self, sealed: Vec<Vec<Sealed>>) -> Result<BTreeMap<String, Vec<Sealed>>, SecAggError> {
        let roster = self.roster.as_ref().ok_or(SecAggError::Order("key shares before the roster"))?;
        let others = roster.members.len().saturating_sub(1);
        let mut senders = BTreeSet::new();
        let mut seen = BTreeSet::new();
        self.incomplete.clear();
        for batch in &sealed {
            let Some(first) = batch.first() else { continue };
            if roster.position(&first.from).is_none() {
                return Err(SecAggError::Stranger(first.from.clone()));
            }
            if batch.iter().any(|s| s.from != first.from || roster.position(&s.to).is_none()) {
                return Err(SecAggError::Stranger(first.from.clone()));
            }
            if !seen.insert(first.from.clone()) {
                return Err(SecAggError::Duplicate(first.from.clone()));
            }
            let to: BTreeSet<&str> = batch.iter().map(|s| s.to.as_str()).collect();
            if batch.len() != others || to.len() != others || to.contains(first.from.as_str()) {
                self.incomplete.insert(first.from.clone());
                continue;
            }
            senders.insert(first.from.clone());
        }
        if senders.len() < self.threshold {
            return Err(SecAggError::TooFew { stage: "key shares", have: senders.len(), need: self.threshold });
        }
        let mut inbox: BTreeMap<String, Vec<Sealed>> = senders.iter().map(|s| (s.clone(), Vec::new())).collect();
        for s in sealed.into_iter().flatten() {
            if let Some(b) = inbox.get_mut(&s.to)
                && senders.contains(&s.from)
            {
                b.push(s);
            }
        }
        self.shared = senders;
        Ok(inbox)
    }

    /// Round 2: adds one client's masked input to the sum (and forgets it).
    pub fn add_masked(&mut self, from: &str, y: &[u64]) -> Result<(), SecAggError> {
        if !self.shared.contains(from) {
            return Err(SecAggError::Stranger(from.to_owned()));
        }
        if y.len() != self.len {
            return Err(SecAggError::Length { from: from.to_owned(), got: y.len(), want: self.len });
        }
        if !self.survivors.insert(from.to_owned()) {
            return Err(SecAggError::Duplicate(from.to_owned()));
        }
        self.sum.iter_mut().zip(y).for_each(|(s, v)| *s = s.wrapping_add(*v));
        Ok(())
    }

    /// Round 2 → 3: the clients whose masked input is in the sum.
    pub fn survivors(&self) -> Result<Vec<String>, SecAggError> {
        if self.survivors.len() < self.threshold {
            return Err(SecAggError::TooFew { stage: "masked inputs", have: self.survivors.len(), need: self.threshold });
        }
        Ok(self.survivors.iter().cloned().collect())
    }

    /// Round 3: removes the masks with the revealed shares; returns `Σ x` over the survivors.
    ///
    /// Each helper's shares are checked: all at its own point (its roster position + 1), each
    /// id once, a survivor's `b` or a dropped client's `s` and never both. A malformed reveal
    /// is left out (one helper cannot make the round fail). A secret is accepted only when it
    /// matches what its owner committed to (the `b` commitment, the advertised `s` key); with
    /// more than `t` shares, other subsets are tried, so a lying helper is outvoted when there
    /// are spare shares, and detected (the round fails, never with a wrong sum) when not.
    pub fn unmask(mut self, reveals: Vec<Reveal>) -> Result<Vec<u64>, SecAggError> {
        let roster = self.roster.take().ok_or(SecAggError::Order("unmasking before the roster"))?;
        let mut seen = BTreeSet::new();
        let mut b_shares: BTreeMap<String, Vec<Share>> = BTreeMap::new();
        let mut s_shares: BTreeMap<String, Vec<Share>> = BTreeMap::new();
        for r in reveals {
            if !self.survivors.contains(&r.from) {
                return Err(SecAggError::Stranger(r.from));
            }
            if seen.contains(&r.from) || self.malformed.contains(&r.from) {
                return Err(SecAggError::Duplicate(r.from));
            }
            let point = roster.position(&r.from).map_or(0, |p| p as u64 + 1);
            let mut ids = BTreeSet::new();
            let well_formed = r.self_mask.iter().all(|(id, sh)| sh.x == point && self.survivors.contains(id) && ids.insert(id.clone()))
                && r.secret_key.iter().all(|(id, sh)| sh.x == point && self.shared.contains(id) && !self.survivors.contains(id) && ids.insert(id.clone()));
            if !well_formed {
                self.malformed.insert(r.from);
                continue;
            }
            seen.insert(r.from.clone());
            for (id, share) in r.self_mask {
                b_shares.entry(id).or_default().push(share);
            }
            for (id, share) in r.secret_key {
                s_shares.entry(id).or_default().push(share);
            }
        }
        if seen.len() < self.threshold {
            return Err(SecAggError::TooFew { stage: "reveals", have: seen.len(), need: self.threshold });
        }
        let mut sum = std::mem::take(&mut self.sum);
        let t = self.threshold;
        // Lagrange weights depend only on which points answered: computed once per point set.
        let mut weights: BTreeMap<Vec<u64>, Vec<u64>> = BTreeMap::new();
        let mut recover = |shares: &[Share], valid: &dyn Fn(&[u8; 32]) -> bool| -> Option<[u8; 32]> {
            let mut tries = 0;
            for chosen in Combinations::new(shares.len(), t) {
                tries += 1;
                if tries > MAX_SUBSETS {
                    break;
                }
                let chosen: Vec<Share> = chosen.iter().map(|&i| shares[i]).collect();
                let xs: Vec<u64> = chosen.iter().map(|s| s.x).collect();
                let w = weights.entry(xs.clone()).or_insert_with(|| shamir::lagrange_at_zero(&xs));
                if let Some(secret) = shamir::combine_with(&chosen, w)
                    && valid(&secret)
                {
                    return Some(secret);
                }
            }
            None
        };
        for id in &self.survivors {
            let pos = roster.position(id).ok_or_else(|| SecAggError::Stranger(id.clone()))?;
            let commitment = roster.members[pos].1.b_commitment;
            let b = recover(b_shares.get(id).map_or(&[][..], Vec::as_slice), &|b| <[u8; 32]>::from(Sha256::digest(b)) == commitment)
                .ok_or_else(|| SecAggError::BadShares(id.clone()))?;
            apply_mask(&mut sum, &b, true);
        }
        for id in self.shared.difference(&self.survivors) {
            let pos = roster.position(id).ok_or_else(|| SecAggError::Stranger(id.clone()))?;
            let advertised = roster.members[pos].1.s;
            // The reconstructed key must be the one the client advertised.
            let bytes = recover(s_shares.get(id).map_or(&[][..], Vec::as_slice), &|k| PublicKey::from(&StaticSecret::from(*k)).to_bytes() == advertised)
                .ok_or_else(|| SecAggError::BadShares(id.clone()))?;
            let s_sk = StaticSecret::from(bytes);
            for (u, keys) in &roster.members {
                if self.survivors.contains(u) {
                    // Survivor u applied +mask if u < id, −mask otherwise: undo exactly that.
                    apply_mask(&mut sum, &pairwise_seed(&s_sk, &keys.s), u < id);
                }
            }
        }
        Ok(sum)
    }
}
