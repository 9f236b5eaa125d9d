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
    let reply = conn.secagg(client_id, round, SecAggSend::Keys(keys)).await?;
    let roster = match wait_for(conn, client_id, round, reply, 1, "the roster", |r| match r {
        SecAggReply::Roster(r) => Ok(r),
        other => Err(other),
    })
    .await?
    {
        Ok(r) => r,
        Err(reason) => return Ok(reason),
    };
    let boxes = match client.share_keys(roster, &mut rng) {
        Ok(b) => b,
        Err(e) => return Ok(gave_up(e)),
    };
    let reply = conn.secagg(client_id, round, SecAggSend::Shares(boxes)).await?;
    let inbox = match wait_for(conn, client_id, round, reply, 2, "the inbox", |r| match r {
        SecAggReply::Inbox(i) => Ok(i),
        other => Err(other),
    })
    .await?
    {
        Ok(i) => i,
        Err(reason) => return Ok(reason),
    };
    let y = match client.masked_input(&x, &inbox) {
        Ok(y) => y,
        Err(e) => return Ok(gave_up(e)),
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
        Err(reason) => return Ok(reason),
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
