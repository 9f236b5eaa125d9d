//! A site's side of secure aggregation (Bonawitz et al. 2017) over the network: it advertises
//! fresh keys, shares them, sends its masked input and helps unmask the sum. Its update never
//! leaves the site unmasked; its keys and self-mask come from the OS-seeded generator.

use std::sync::Arc;

use flotilla_common::secagg::{Client, SecAggError};
use flotilla_common::wire::{self, UpdateHeader};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::connection::{Connection, SecAggReply, SecAggSend};
use crate::error::ClientError;

/// Takes part in round `round` with input `x` (see `secagg::masking::encode_weighted`);
/// `header` describes the masked upload (model hash, layout, metrics). Returns how it ended.
pub async fn take_part(conn: &Connection, client_id: &str, site: &str, round: u32, x: Vec<u64>, header: UpdateHeader) -> Result<String, ClientError> {
    let mut rng = ChaCha20Rng::from_rng(&mut rand::rng());
    let (mut client, keys) = Client::new(site, &mut rng);
    // A protocol failure on this side (too few shares, a box that does not open) ends this
    // site's part of the round, not the site: the coordinator will see it as dropped.
    let gave_up = |e: SecAggError| format!("gave up: {e}");
    let mut reply = conn.secagg(client_id, round, SecAggSend::Keys(keys)).await?;
    let roster = loop {
        match reply {
            SecAggReply::Roster(r) => break r,
            SecAggReply::Wait => reply = conn.secagg(client_id, round, SecAggSend::Poll(1)).await?,
            SecAggReply::Done(reason) => return Ok(reason),
            other => return Err(unexpected("the roster", &other)),
        }
    };
    let boxes = match client.share_keys(roster, &mut rng) {
        Ok(b) => b,
        Err(e) => return Ok(gave_up(e)),
    };
    reply = conn.secagg(client_id, round, SecAggSend::Shares(boxes)).await?;
    let inbox = loop {
        match reply {
            SecAggReply::Inbox(i) => break i,
            SecAggReply::Wait => reply = conn.secagg(client_id, round, SecAggSend::Poll(2)).await?,
            SecAggReply::Done(reason) => return Ok(reason),
            other => return Err(unexpected("the inbox", &other)),
        }
    };
    let y = match client.masked_input(&x, &inbox) {
        Ok(y) => y,
        Err(e) => return Ok(gave_up(e)),
    };
    drop(x);
    let header = UpdateHeader { total_values: y.len() as u64, values_sha256: wire::masked_checksum(&header.layout_fingerprint, &y), masked: true, ..header };
    conn.upload_masked(header, Arc::new(y)).await?;
    reply = conn.secagg(client_id, round, SecAggSend::Poll(3)).await?;
    let survivors = loop {
        match reply {
            SecAggReply::Survivors(s) => break s,
            SecAggReply::Wait => reply = conn.secagg(client_id, round, SecAggSend::Poll(3)).await?,
            SecAggReply::Done(reason) => return Ok(reason),
            other => return Err(unexpected("the survivors", &other)),
        }
    };
    let reveal = match client.reveal(&survivors) {
        Ok(r) => r,
        Err(e) => return Ok(gave_up(e)),
    };
    match conn.secagg(client_id, round, SecAggSend::Reveal(reveal)).await? {
        SecAggReply::Done(reason) => Ok(reason),
        other => Err(unexpected("the end of the exchange", &other)),
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
