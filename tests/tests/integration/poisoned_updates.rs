//! Every malformed or dishonest update is refused with its reason, counted, and never
//! changes the global model: the model is bit-identical to a run without that site's update.

use std::time::Duration;

use flotilla_client::run_site;
use flotilla_common::params::checksum;
use flotilla_coordinator::federation::Policy;
use flotilla_proto::pb::{self, federation_client::FederationClient};
use flotilla_tests::{RawSite, start_coordinator, synthetic_table, synthetic_task, test_site};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Streams an update made of `values` under `header`; returns the status, or Ok.
/// The checksum is computed over `values` unless the header already carries one.
async fn upload(rpc: &mut FederationClient<Channel>, mut header: pb::UpdateHeader, values: Vec<f32>) -> Result<(), tonic::Status> {
    if header.values_sha256.is_empty() {
        header.values_sha256 = checksum(&header.layout_fingerprint, &values);
    }
    let mut chunks = vec![pb::UpdateChunk { kind: Some(pb::update_chunk::Kind::Header(header)) }];
    for part in values.chunks(1 << 18) {
        let bytes = part.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        chunks.push(pb::UpdateChunk { kind: Some(pb::update_chunk::Kind::Data(bytes.into())) });
    }
    rpc.upload_update(tokio_stream::iter(chunks)).await.map(|_| ())
}

/// Streams an update whose data chunks hold `bytes` as they are (a compressed encoding).
async fn upload_bytes(rpc: &mut FederationClient<Channel>, header: pb::UpdateHeader, bytes: Vec<u8>) -> Result<(), tonic::Status> {
    let chunks = vec![
        pb::UpdateChunk { kind: Some(pb::update_chunk::Kind::Header(header)) },
        pb::UpdateChunk { kind: Some(pb::update_chunk::Kind::Data(bytes.into())) },
    ];
    rpc.upload_update(tokio_stream::iter(chunks)).await.map(|_| ())
}

/// Joins like an honest site, evaluates round 0 honestly, then (if `attack`) sends every kind
/// of bad update for round 1, and vanishes. Returns the refusals it got.
async fn mallory(url: String, attack: bool) -> Vec<(tonic::Code, String)> {
    let mut site = RawSite::join(url, "mallory", &synthetic_table("mallory", 60, 500)).await;
    let (id, declared) = (site.id.clone(), site.declared);
    let mut refusals = Vec::new();
    loop {
        match site.pull().await {
            pb::work_item::Kind::Evaluate(e) => site.evaluate(e).await,
            pb::work_item::Kind::Fit(fit) if attack => {
                let global = site.global(&fit).await;
                let n = global.values().len();
                let header = pb::UpdateHeader {
                    client_id: id.clone(),
                    round: fit.round,
                    base_model_hash: fit.model_hash.clone(),
                    layout_fingerprint: global.layout().fingerprint().to_owned(),
                    total_values: n as u64,
                    num_examples: declared,
                    metrics: None,
                    values_sha256: String::new(),
                    masked: false,
                    encoding: 0,
                };
                let small = vec![0.001f32; n];
                let mut inf = small.clone();
                inf[0] = f32::NEG_INFINITY;
                // Refusals of the header, the stream or the checksum leave the site its round;
                // refused values cost it the round (the same update would come back), so one
                // kind of them comes last (NaN, the norm bound, and that nothing more is taken
                // from the site in that round are in the state machine's tests).
                let attempts = vec![
                    (pb::UpdateHeader { total_values: n as u64 - 1, ..header.clone() }, vec![0.001; n - 1]),
                    (pb::UpdateHeader { layout_fingerprint: "00".repeat(32), ..header.clone() }, small.clone()),
                    (pb::UpdateHeader { round: fit.round + 1, ..header.clone() }, small.clone()),
                    (pb::UpdateHeader { base_model_hash: "11".repeat(32), ..header.clone() }, small.clone()),
                    (pb::UpdateHeader { num_examples: declared * 10, ..header.clone() }, small.clone()),
                    (header.clone(), vec![0.001; n + 1000]),
                    // One bit flipped in transit: the checksum (of the values sent) catches it.
                    (pb::UpdateHeader { values_sha256: checksum(&header.layout_fingerprint, &small), ..header.clone() }, {
                        let mut v = small.clone();
                        v[n / 2] = f32::from_bits(v[n / 2].to_bits() ^ 1);
                        v
                    }),
                    (header.clone(), inf),
                ];
                // Compressed streams that no honest encoder writes: top-k with an index past the
                // end, top-k with a repeated index, int8 one byte short, an unknown encoding.
                let topk = |indices: [u32; 2]| {
                    let mut b = 2u32.to_le_bytes().to_vec();
                    indices.iter().for_each(|i| b.extend(i.to_le_bytes()));
                    b.extend([0.001f32, 0.002].iter().flat_map(|v| v.to_le_bytes()));
                    b
                };
                let compressed = vec![(4, topk([1, n as u32])), (4, topk([3, 3])), (3, vec![0u8; n + 4 * n.div_ceil(256) - 1]), (9, vec![0u8; 8])];
                let sum = checksum(&header.layout_fingerprint, &small);
                let mut attempts = attempts.into_iter();
                for (h, values) in attempts.by_ref().take(6) {
                    let status = upload(&mut site.rpc, h, values).await.expect_err("a bad update must be refused");
                    refusals.push((status.code(), status.message().to_owned()));
                }
                for (encoding, bytes) in compressed {
                    let h = pb::UpdateHeader { encoding, values_sha256: sum.clone(), ..header.clone() };
                    let status = upload_bytes(&mut site.rpc, h, bytes).await.expect_err("a malformed compressed update must be refused");
                    refusals.push((status.code(), status.message().to_owned()));
                }
                for (h, values) in attempts {
                    let status = upload(&mut site.rpc, h, values).await.expect_err("a bad update must be refused");
                    refusals.push((status.code(), status.message().to_owned()));
                }
                return refusals; // and vanish
            }
            pb::work_item::Kind::Fit(_) => return refusals, // vanish without a word
            pb::work_item::Kind::Wait(_) => {}
            pb::work_item::Kind::Done(_) => panic!("done before round 1"),
        }
    }
}

async fn run(attack: bool) -> (String, Vec<(tonic::Code, String)>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy { rounds: 1, min_clients: 3, lease: Duration::from_millis(1500), max_update_norm: Some(100.0), ..Policy::default() };
    let running = start_coordinator(synthetic_task(vec![16]), 9, policy, dir.path()).await;
    let token = CancellationToken::new();
    let honest: Vec<_> = ["alice", "bob"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| tokio::spawn(run_site(test_site(running.url(), name), synthetic_table(name, 60, i * 60), token.clone())))
        .collect();
    let refusals = mallory(running.url(), attack).await;
    for h in honest {
        h.await.unwrap().unwrap();
    }
    let outcome = running.stop(Duration::from_secs(1)).await.unwrap();
    let round = &outcome.history[1];
    assert_eq!((round.clients, round.selected, round.failed), (2, 3, 1), "{round:?}");
    (outcome.model.hash(), refusals, round.rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_are_refused_and_the_model_is_as_if_they_were_never_sent() {
    let (attacked, refusals, rejected) = run(true).await;
    let expected = [
        (tonic::Code::InvalidArgument, "has layout"),
        (tonic::Code::InvalidArgument, "has layout"),
        (tonic::Code::FailedPrecondition, "round 2 is not open"),
        (tonic::Code::FailedPrecondition, "was computed from model"),
        (tonic::Code::InvalidArgument, "it declared"),
        (tonic::Code::InvalidArgument, "sent more"),
        (tonic::Code::InvalidArgument, "outside the update"),
        (tonic::Code::InvalidArgument, "repeated"),
        (tonic::Code::InvalidArgument, "cannot hold"),
        (tonic::Code::InvalidArgument, "unknown update encoding 9"),
        (tonic::Code::DataLoss, "checksum mismatch"),
        (tonic::Code::InvalidArgument, "is not finite"),
    ];
    assert_eq!(refusals.len(), expected.len());
    for ((code, message), (want_code, want)) in refusals.iter().zip(expected) {
        assert_eq!(*code, want_code, "{message}");
        assert!(message.contains(want), "expected `{want}` in `{message}`");
        assert!(message.contains("mallory") || message.contains("round"), "the reason names the site or round: {message}");
    }
    // The update for round 2 counts against round 2, which never opened; an unknown encoding
    // is refused with the header, before the update is claimed (a refused message, not update).
    assert_eq!(rejected, expected.len() - 2);

    let (clean, none, rejected) = run(false).await;
    assert!(none.is_empty());
    assert_eq!(rejected, 0);
    assert_eq!(attacked, clean, "the global model is bit-identical to the run without mallory's update");
}
