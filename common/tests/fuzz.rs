//! Property-based fuzzing of everything that reads untrusted input: protocol messages
//! (decoding, validation, chunk reassembly) and CSV files. Nothing may panic.
//!
//! `PROPTEST_CASES` sets the number of cases per property (CI uses the default of 256;
//! `scripts/fuzz.sh` runs far more).

use std::path::Path;

use flotilla_common::Task;
use flotilla_common::data::{RawTable, SiteRows};
use flotilla_common::wire::{self, Assembler, ModelReceiver, UpdatePart};
use flotilla_proto::pb;
use proptest::prelude::*;
use prost::Message;

fn chunk_strategy() -> impl Strategy<Value = pb::ModelChunk> {
    prop_oneof![
        (proptest::collection::vec(("[a-z.0-9]{0,8}", proptest::collection::vec(0u64..64, 0..3)), 0..4), "[0-9a-f]{0,64}", any::<u64>(), any::<u32>())
            .prop_map(|(tensors, fp, total, round)| pb::ModelChunk {
                kind: Some(pb::model_chunk::Kind::Header(pb::ModelHeader {
                    layout: Some(pb::Layout { tensors: tensors.into_iter().map(|(name, shape)| pb::Tensor { name, shape }).collect(), fingerprint: fp }),
                    model_hash: String::new(),
                    round,
                    total_values: total % 4096,
                    encoding: round % 3,
                    base_model_hash: if round % 2 == 0 { "base".into() } else { String::new() },
                    encoded_bytes: total % 8192,
                })),
            }),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| pb::ModelChunk { kind: Some(pb::model_chunk::Kind::Data(b.into())) }),
        Just(pb::ModelChunk { kind: None }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_message_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(c) = pb::UpdateChunk::decode(bytes.as_slice())
            && let Ok(UpdatePart::Data(d)) = wire::update_part(c) {
                let mut asm = Assembler::new(16, "fingerprint").unwrap();
                let _ = asm.push(&d);
                let _ = asm.finish();
            }
        if let Ok(p) = pb::Plan::decode(bytes.as_slice()) {
            let _ = wire::plan_from_pb(p);
        }
        if let Ok(r) = pb::ReportStatsRequest::decode(bytes.as_slice()) {
            let n = r.num_train_examples;
            let _ = wire::stats_from_pb(r).validate(n, &flotilla_common::data::StatsLimits::default());
        }
        if let Ok(r) = pb::EvaluationResult::decode(bytes.as_slice()) {
            let _ = wire::evaluation_from_pb(&r);
        }
        if let Ok(l) = pb::Layout::decode(bytes.as_slice()) {
            let _ = wire::layout_from_pb(&l);
        }
    }

    #[test]
    fn arbitrary_chunk_sequences_never_panic_the_model_receiver(chunks in proptest::collection::vec(chunk_strategy(), 0..6)) {
        let mut rx = ModelReceiver::default();
        for c in chunks {
            if rx.push(c).is_err() {
                return Ok(());
            }
        }
        let _ = rx.finish();
    }

    #[test]
    fn a_delta_download_with_arbitrary_or_damaged_bytes_never_panics_nor_gives_a_wrong_model(
        declared in 0u64..4096, flip in any::<usize>(), cut in any::<usize>(), noise in proptest::collection::vec(any::<u8>(), 0..256), honest in any::<bool>(),
    ) {
        let layout = flotilla_common::Layout::new(vec![flotilla_common::params::TensorSpec { name: "w".into(), shape: vec![64] }]);
        let base = std::sync::Arc::new(flotilla_common::FlatParams::new(layout.clone(), (0..64).map(|i| i as f32 * 0.01).collect()).unwrap());
        let target = flotilla_common::FlatParams::new(layout.clone(), (0..64).map(|i| i as f32 * 0.01 + 1e-4).collect()).unwrap();
        let mut bytes = flotilla_common::compress::delta::encode(base.values(), target.values()).unwrap();
        if honest {
            // A real stream, damaged: one bit flipped, or cut short.
            let i = flip % bytes.len();
            bytes[i] ^= 1 << (flip % 8);
            bytes.truncate(bytes.len() - cut % 2);
        } else {
            bytes = noise;
        }
        let encoded_bytes = if honest { bytes.len() as u64 } else { declared };
        let mut chunks = wire::delta_chunks(&layout, bytes.into(), 1, target.hash(), "base".into()).collect::<Vec<_>>();
        if let Some(pb::model_chunk::Kind::Header(h)) = &mut chunks[0].kind {
            h.encoded_bytes = encoded_bytes;
        }
        let mut rx = ModelReceiver::expecting(layout).with_base("base".into(), base);
        let mut ok = true;
        for c in chunks {
            ok &= rx.push(c).is_ok();
        }
        // Whatever comes out is the target, bit for bit: a damaged delta never becomes a model.
        if ok && let Ok((_, m)) = rx.finish() {
            prop_assert_eq!(m.hash(), target.hash());
        }
    }

    #[test]
    fn arbitrary_update_streams_are_bounded_by_their_declaration(declared in 0u64..2048, parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1024), 0..8)) {
        let mut asm = Assembler::new(declared, "fingerprint").unwrap();
        let mut accepted = 0u64;
        for p in &parts {
            if asm.push(p).is_ok() {
                accepted += (p.len() / 4) as u64;
            }
        }
        prop_assert!(accepted <= declared);
        // The checksum computed on the way is the one of the values that were kept.
        if let Ok((values, sum)) = asm.finish() {
            prop_assert_eq!(sum, flotilla_common::params::checksum("fingerprint", &values));
        }
    }

    #[test]
    fn arbitrary_csv_text_never_panics_the_reader_or_the_cleaner(text in "(?s)[a-z0-9,\"\n .TRUE-]{0,400}", header in proptest::bool::ANY) {
        let body = if header { format!("id,age,sex,dataset,cp,trestbps,chol,fbs,restecg,thalch,exang,oldpeak,slope,ca,thal,num\n{text}") } else { text };
        if let Ok(table) = RawTable::from_reader(body.as_bytes(), Path::new("fuzz.csv")) {
            let _ = SiteRows::from_table(&table, &Task::hospitals().data);
            let _ = SiteRows::from_table(&table, &Task::banks().data);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_csv_reader(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(table) = RawTable::from_reader(bytes.as_slice(), Path::new("fuzz.csv")) {
            let _ = SiteRows::from_table(&table, &Task::hospitals().data);
        }
    }
}
