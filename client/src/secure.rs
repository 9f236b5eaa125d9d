//! A site's side of secure aggregation (Bonawitz et al. 2017) over the network: it advertises
//! fresh keys, shares them, sends its masked input and helps unmask the sum. Its update never
//! leaves the site unmasked; its keys and self-mask come from the OS-seeded generator.
//!
//! With a certificate (mutual TLS), the exchange is signed: the site signs its keys with its
//! certificate's key, and seals shares only to members whose keys carry a valid signature
//! from a certificate of the federation's CA naming them. A coordinator that substitutes its
//! own keys for a site's is then refused, not obeyed.

use std::sync::Arc;

use flotilla_common::pki;
use flotilla_common::secagg::{Client, Endorsement, PublicKeys, Roster, SecAggError, endorsed_bytes};
use flotilla_common::wire::{self, UpdateHeader};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::connection::{Connection, SecAggReply, SecAggSend};
use crate::error::ClientError;
use crate::tls::ClientTls;

/// What the site adds to the plain protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct Protections<'a> {
    /// Signed secure aggregation: the site's certificate and key, and the CA to check others'.
    pub identity: Option<&'a ClientTls>,
    /// Distributed DP: the noise multiplier z and clip S whose noise share the site adds.
    pub distributed: Option<(f64, f64)>,
}

/// The site's signature over its round keys, with its certificate.
fn endorse(tls: &ClientTls, round: u32, site: &str, keys: &PublicKeys) -> Result<Endorsement, ClientError> {
    let signature = pki::sign(&tls.key_pem, &endorsed_bytes(round, site, keys)).map_err(|e| ClientError::Certificate(e.to_string()))?;
    let certificate = pki::certificate_der(&tls.cert_pem).map_err(|e| ClientError::Certificate(e.to_string()))?;
    Ok(Endorsement { signature, certificate })
}

/// Every member of the roster carries keys signed by a certificate of the federation's CA
/// that names it; this site's own entry is the keys it sent. The first failure is the reason.
pub fn check_roster(roster: &Roster, tls: &ClientTls, round: u32, site: &str, own: &PublicKeys) -> Result<(), String> {
    for (member, keys) in &roster.members {
        if member == site {
            if keys != own {
                return Err(format!("the roster's keys for this site (`{site}`) are not the ones it sent"));
            }
            continue;
        }
        let e = roster.endorsements.get(member).ok_or_else(|| format!("the keys of `{member}` are not signed"))?;
        pki::verify_site_signature(&tls.ca_pem, &e.certificate, member, &endorsed_bytes(round, member, keys), &e.signature).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Takes part in round `round` with input `x` (see `secagg::masking::encode_weighted`);
/// `header` describes the masked upload (model hash, layout, metrics). Returns how it ended,
/// and whether the masked input was sent.
pub async fn take_part(
    conn: &Connection,
    client_id: &str,
    site: &str,
    round: u32,
    mut x: Vec<u64>,
    header: UpdateHeader,
    with: Protections<'_>,
) -> Result<(String, bool), ClientError> {
    let Protections { identity, distributed } = with;
    let mut rng = ChaCha20Rng::from_rng(&mut rand::rng());
    let (mut client, keys) = Client::new(site, &mut rng);
    // A protocol failure on this side (too few shares, a box that does not open) ends this
    // site's part of the round, not the site: the coordinator will see it as dropped.
    let gave_up = |e: SecAggError| format!("gave up: {e}");
    let endorsement = match identity {
        Some(tls) => Some(endorse(tls, round, site, &keys)?),
        None => None,
    };
    let reply = conn.secagg(client_id, round, SecAggSend::Keys(keys, endorsement)).await?;
    let roster = match wait_for(conn, client_id, round, reply, 1, "the roster", |r| match r {
        SecAggReply::Roster(r) => Ok(r),
        other => Err(other),
    })
    .await?
    {
        Ok(r) => r,
        Err(reason) => return Ok((reason, false)),
    };
    if let Some(tls) = identity
        && let Err(reason) = check_roster(&roster, tls, round, site, &keys)
    {
        tracing::warn!(site, round, "secure aggregation: {reason}; not sharing keys (the coordinator may be substituting keys)");
        return Ok((format!("refused the roster: {reason}"), false));
    }
    // Distributed DP: this site's share of the noise, sized by the round's threshold (the
    // fewest survivors an unmasking can have), added before masking; the weight stays exact.
    if let Some((z, clip)) = distributed {
        let values = x.len().saturating_sub(1);
        let variance = flotilla_common::privacy::distributed::site_variance(z, clip, roster.threshold);
        flotilla_common::privacy::distributed::add_skellam(&mut x[..values], variance, &mut rng).map_err(flotilla_common::wire::WireError::Invalid)?;
    }
    let boxes = match client.share_keys(roster, &mut rng) {
        Ok(b) => b,
        Err(e) => return Ok((gave_up(e), false)),
    };
    let reply = conn.secagg(client_id, round, SecAggSend::Shares(boxes)).await?;
    let inbox = match wait_for(conn, client_id, round, reply, 2, "the inbox", |r| match r {
        SecAggReply::Inbox(i) => Ok(i),
        other => Err(other),
    })
    .await?
    {
        Ok(i) => i,
        Err(reason) => return Ok((reason, false)),
    };
    let y = match client.masked_input(&x, &inbox) {
        Ok(y) => y,
        Err(e) => return Ok((gave_up(e), false)),
    };
    drop(x);
    let header = UpdateHeader { total_values: y.len() as u64, values_sha256: wire::masked_checksum(&header.layout_fingerprint, &y), masked: true, ..header };
    conn.upload_masked(header, Arc::new(y)).await?;
    let reply = conn.secagg(client_id, round, SecAggSend::Poll(3)).await?;
    let survivors = match wait_for(conn, client_id, round, reply, 3, "the survivors", |r| match r {
        SecAggReply::Survivors(s) => Ok(s),
        other => Err(other),
    })
    .await?
    {
        Ok(s) => s,
        Err(reason) => return Ok((reason, true)),
    };
    let reveal = match client.reveal(&survivors) {
        Ok(r) => r,
        Err(e) => return Ok((gave_up(e), true)),
    };
    match conn.secagg(client_id, round, SecAggSend::Reveal(reveal)).await? {
        SecAggReply::Done(reason) => Ok((reason, true)),
        other => Err(unexpected("the end of the exchange", &other)),
    }
}

/// Polls for stage `stage` until `pick` accepts the reply; `Ok(Err(reason))` when the
/// coordinator says this site's part is over.
async fn wait_for<T>(
    conn: &Connection,
    client_id: &str,
    round: u32,
    mut reply: SecAggReply,
    stage: u32,
    what: &str,
    pick: impl Fn(SecAggReply) -> Result<T, SecAggReply>,
) -> Result<Result<T, String>, ClientError> {
    loop {
        reply = match pick(reply) {
            Ok(t) => return Ok(Ok(t)),
            Err(SecAggReply::Wait) => conn.secagg(client_id, round, SecAggSend::Poll(stage)).await?,
            Err(SecAggReply::Done(reason)) => return Ok(Err(reason)),
            Err(other) => return Err(unexpected(what, &other)),
        };
    }
}

fn unexpected(waiting_for: &str, got: &SecAggReply) -> ClientError {
    let got = match got {
        SecAggReply::Roster(_) => "a roster",
        SecAggReply::Inbox(_) => "an inbox",
        SecAggReply::Survivors(_) => "survivors",
        SecAggReply::Wait => "wait",
        SecAggReply::Done(_) => "done",
    };
    ClientError::Wire(wire::WireError::Invalid(format!("secure aggregation: waiting for {waiting_for}, the coordinator sent {got}")))
}

#[cfg(test)]
mod tests {
    use flotilla_common::pki::{Validity, issue_client, new_ca};
    use rand::SeedableRng;

    use super::*;

    fn tls_of(ca: &pki::Issued, site: &str) -> ClientTls {
        let cert = issue_client(ca, site, Validity::days(1)).unwrap();
        ClientTls { ca_pem: ca.cert_pem.clone(), cert_pem: cert.cert_pem, key_pem: cert.key_pem }
    }

    /// A roster of alice, bob and carol, each with keys signed for round 3.
    fn signed_roster(ca: &pki::Issued) -> (Roster, Vec<(ClientTls, PublicKeys)>) {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut members = Vec::new();
        let mut endorsements = std::collections::BTreeMap::new();
        let mut sites = Vec::new();
        for site in ["alice", "bob", "carol"] {
            let tls = tls_of(ca, site);
            let (_, keys) = Client::new(site, &mut rng);
            endorsements.insert(site.to_owned(), endorse(&tls, 3, site, &keys).unwrap());
            members.push((site.to_owned(), keys));
            sites.push((tls, keys));
        }
        (Roster { threshold: 2, members, endorsements }, sites)
    }

    #[test]
    fn a_coordinator_cannot_substitute_keys_in_a_signed_roster() {
        let ca = new_ca("test", Validity::days(1)).unwrap();
        let (roster, sites) = signed_roster(&ca);
        let (alice, alice_keys) = &sites[0];
        assert_eq!(check_roster(&roster, alice, 3, "alice", alice_keys), Ok(()));

        // The coordinator puts its own keys in bob's place.
        let mut swapped = roster.clone();
        let (_, own) = Client::new("bob", &mut ChaCha20Rng::seed_from_u64(9));
        swapped.members[1].1 = own;
        assert!(check_roster(&swapped, alice, 3, "alice", alice_keys).unwrap_err().contains("signature of `bob` does not verify"));
        // ... or re-signs them with a certificate of its own CA, or with carol's certificate.
        let rogue = new_ca("rogue", Validity::days(1)).unwrap();
        let mut forged = swapped.clone();
        forged.endorsements.insert("bob".into(), endorse(&tls_of(&rogue, "bob"), 3, "bob", &own).unwrap());
        assert!(check_roster(&forged, alice, 3, "alice", alice_keys).unwrap_err().contains("not issued by the federation's CA"));
        let mut borrowed = swapped.clone();
        borrowed.endorsements.insert("bob".into(), endorse(&sites[2].0, 3, "bob", &own).unwrap());
        assert!(check_roster(&borrowed, alice, 3, "alice", alice_keys).unwrap_err().contains("names `carol`"));
        // ... or drops the signature, replays bob's keys of another round, or changes alice's own.
        // A certificate that is not one, or an empty signature: refused with a reason, no panic.
        let mut garbage = roster.clone();
        garbage.endorsements.insert("bob".into(), Endorsement { signature: Vec::new(), certificate: vec![0x30, 0x82, 0xff] });
        assert!(check_roster(&garbage, alice, 3, "alice", alice_keys).unwrap_err().contains("`bob`"));
        let mut unsigned = roster.clone();
        unsigned.endorsements.remove("bob");
        assert!(check_roster(&unsigned, alice, 3, "alice", alice_keys).unwrap_err().contains("not signed"));
        assert!(check_roster(&roster, alice, 4, "alice", alice_keys).unwrap_err().contains("does not verify"), "signatures are bound to the round");
        let mut mine = roster.clone();
        mine.members[0].1 = own;
        assert!(check_roster(&mine, alice, 3, "alice", alice_keys).unwrap_err().contains("not the ones it sent"));
    }
}
