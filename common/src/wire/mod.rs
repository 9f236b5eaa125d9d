//! Conversions between domain types and the `flotilla.v1` protocol, and model chunking.
//!
//! The only module of this crate that names `pb::` types. Incoming messages are checked
//! here (fingerprints recomputed, sizes bounded) before they become domain values.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_proto::pb;

use crate::compress::Codec;
use crate::data::stats::Bin;
use crate::data::{ColumnKind, ColumnPlan, ColumnStats, Plan, SiteStats, TargetScale};
use crate::params::{Checksum, FlatParams, Layout, TensorSpec, extend_from_le_bytes};
use crate::train::evaluate::RegressionMetrics;
use crate::train::{Evaluation, TrainReport};

/// Bytes of f32 data per chunk: 1 MiB, far below tonic's 4 MiB message limit.
pub const CHUNK_BYTES: usize = 1 << 20;
const CHUNK_VALUES: usize = CHUNK_BYTES / 4;
/// Most values a layout may declare (1 Gi values = 4 GiB); anything larger is refused unread.
pub const MAX_VALUES: u64 = 1 << 30;

/// A message that does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("layout fingerprint {claimed} does not match its tensors ({computed})")]
    Fingerprint { claimed: String, computed: String },
    #[error("stream declared {declared} values but sent more")]
    TooMuchData { declared: u64 },
    #[error("stream declared {declared} values but ended after {received}")]
    Truncated { declared: u64, received: u64 },
    #[error("declared {0} values, more than the limit of {MAX_VALUES}")]
    TooLarge(u64),
    #[error("a header arrived in the middle of the stream")]
    UnexpectedHeader,
    #[error("data arrived before the header")]
    DataBeforeHeader,
    #[error("empty stream")]
    Empty,
    #[error("{0}")]
    Invalid(String),
}

// ---- layout -------------------------------------------------------------------------------

/// The protocol form of a layout.
pub fn layout_to_pb(layout: &Layout) -> pb::Layout {
    pb::Layout {
        tensors: layout.tensors().iter().map(|t| pb::Tensor { name: t.name.clone(), shape: t.shape.iter().map(|&d| d as u64).collect() }).collect(),
        fingerprint: layout.fingerprint().to_owned(),
    }
}

/// A layout from the wire; its fingerprint must match its tensors.
pub fn layout_from_pb(l: &pb::Layout) -> Result<Layout, WireError> {
    let mut total: u64 = 0;
    let mut tensors = Vec::with_capacity(l.tensors.len());
    for t in &l.tensors {
        let n = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or(WireError::TooLarge(u64::MAX))?;
        total = total.checked_add(n).ok_or(WireError::TooLarge(u64::MAX))?;
        tensors.push(TensorSpec { name: t.name.clone(), shape: t.shape.iter().map(|&d| d as usize).collect() });
    }
    if total > MAX_VALUES {
        return Err(WireError::TooLarge(total));
    }
    let layout = Layout::new(tensors);
    if layout.fingerprint() != l.fingerprint {
        return Err(WireError::Fingerprint { claimed: l.fingerprint.clone(), computed: layout.fingerprint().to_owned() });
    }
    Ok(layout)
}

mod download;
pub use download::{ModelHeader, ModelReceiver, delta_chunks, model_chunks, model_from_chunks};

// ---- reassembly ---------------------------------------------------------------------------

/// Reassembles a stream of values into one preallocated buffer, refusing more than declared,
/// and computes their checksum (with the layout's fingerprint) as the bytes arrive.
#[derive(Debug)]
pub struct Assembler {
    declared: u64,
    values: Vec<f32>,
    checksum: Checksum,
}

impl Assembler {
    /// An assembler for `declared` values of a layout with `fingerprint`; the buffer is
    /// allocated once, up front.
    pub fn new(declared: u64, fingerprint: &str) -> Result<Self, WireError> {
        if declared > MAX_VALUES {
            return Err(WireError::TooLarge(declared));
        }
        Ok(Self { declared, values: Vec::with_capacity(declared as usize), checksum: Checksum::new(fingerprint) })
    }

    /// Appends one data chunk.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if self.values.len() as u64 + (bytes.len() as u64) / 4 > self.declared {
            return Err(WireError::TooMuchData { declared: self.declared });
        }
        extend_from_le_bytes(&mut self.values, bytes).map_err(|e| WireError::Invalid(e.to_string()))?;
        self.checksum.update(bytes);
        Ok(())
    }

    /// The values and their checksum ([`crate::params::checksum`]), once exactly `declared`
    /// have arrived.
    pub fn finish(self) -> Result<(Vec<f32>, String), WireError> {
        if self.values.len() as u64 != self.declared {
            return Err(WireError::Truncated { declared: self.declared, received: self.values.len() as u64 });
        }
        Ok((self.values, self.checksum.finish()))
    }
}

// ---- update upload ------------------------------------------------------------------------

/// What a site says about its update, before the values.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateHeader {
    pub client_id: String,
    pub round: u32,
    pub base_model_hash: String,
    pub layout_fingerprint: String,
    pub total_values: u64,
    pub num_examples: u64,
    pub metrics: TrainReport,
    /// `FlatParams::hash` of the delta: the receiver recomputes it over what arrived.
    pub values_sha256: String,
    /// Secure aggregation: the values are a masked input (u64), not a plain delta.
    pub masked: bool,
    /// How the values are encoded in the data chunks (plain `f32` unless compressed); the
    /// checksum covers the decoded values.
    pub encoding: Codec,
}

/// The chunks of an update (a delta), header first; produced lazily like [`model_chunks`].
pub fn update_chunks(header: UpdateHeader, delta: Arc<FlatParams>) -> impl Iterator<Item = pb::UpdateChunk> + Send {
    let m = header.metrics;
    let first = pb::UpdateChunk {
        kind: Some(pb::update_chunk::Kind::Header(pb::UpdateHeader {
            client_id: header.client_id,
            round: header.round,
            base_model_hash: header.base_model_hash,
            layout_fingerprint: header.layout_fingerprint,
            total_values: header.total_values,
            num_examples: header.num_examples,
            metrics: Some(pb::TrainMetrics {
                loss: m.loss,
                accuracy: m.accuracy,
                steps: m.steps,
                seconds: m.seconds,
                epochs: m.epochs,
                record_epsilon: m.record_epsilon,
            }),
            values_sha256: header.values_sha256,
            masked: header.masked,
            encoding: header.encoding.wire_id(),
        })),
    };
    let n_chunks = delta.values().len().div_ceil(CHUNK_VALUES);
    std::iter::once(first).chain((0..n_chunks).map(move |i| {
        let v = delta.values();
        let slice = &v[i * CHUNK_VALUES..((i + 1) * CHUNK_VALUES).min(v.len())];
        pb::UpdateChunk { kind: Some(pb::update_chunk::Kind::Data(Bytes::from(crate::params::f32_to_le_bytes(slice)))) }
    }))
}

/// The chunks of a compressed update: its header (whose `encoding` names the codec), then the
/// encoded bytes.
pub fn encoded_update_chunks(header: UpdateHeader, encoded: Bytes) -> impl Iterator<Item = pb::UpdateChunk> + Send {
    let mut first = update_chunks(header, Arc::new(FlatParams::zeros(Layout::new(Vec::new()))));
    let head = first.next();
    let n_chunks = encoded.len().div_ceil(CHUNK_BYTES);
    head.into_iter().chain((0..n_chunks).map(move |i| {
        let end = ((i + 1) * CHUNK_BYTES).min(encoded.len());
        pb::UpdateChunk { kind: Some(pb::update_chunk::Kind::Data(encoded.slice(i * CHUNK_BYTES..end))) }
    }))
}

/// Reassembles a compressed update's bytes, at most what an honest encoding of the declared
/// number of values takes, then decodes them (strictly) and checksums the decoded values.
#[derive(Debug)]
pub struct EncodedAssembler {
    codec: Codec,
    declared: u64,
    bytes: Vec<u8>,
    fingerprint: String,
}

impl EncodedAssembler {
    pub fn new(codec: Codec, declared: u64, fingerprint: &str) -> Result<Self, WireError> {
        if declared > MAX_VALUES {
            return Err(WireError::TooLarge(declared));
        }
        Ok(Self { codec, declared, bytes: Vec::new(), fingerprint: fingerprint.to_owned() })
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let max = self.codec.max_encoded_len(self.declared as usize);
        if self.bytes.len().saturating_add(bytes.len()) > max {
            return Err(WireError::Invalid(format!("{}: more bytes than {} values can take ({max})", self.codec.name(), self.declared)));
        }
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    /// The decoded values and their checksum; the number of encoded bytes received.
    pub fn finish(self) -> Result<(Vec<f32>, String, usize), WireError> {
        let values = self.codec.decode(&self.bytes, self.declared as usize).map_err(|e| WireError::Invalid(e.to_string()))?;
        let mut checksum = Checksum::new(&self.fingerprint);
        checksum.update(&crate::params::f32_to_le_bytes(&values));
        Ok((values, checksum.finish(), self.bytes.len()))
    }
}

/// Splits an upload chunk into header or data.
pub enum UpdatePart {
    Header(UpdateHeader),
    Data(Bytes),
}

/// Reads one upload chunk.
pub fn update_part(chunk: pb::UpdateChunk) -> Result<UpdatePart, WireError> {
    match chunk.kind.ok_or(WireError::Missing("chunk kind"))? {
        pb::update_chunk::Kind::Header(h) => {
            let encoding = Codec::from_wire(h.encoding).ok_or_else(|| {
                WireError::Invalid(format!(
                    "update of `{}` for round {}: unknown update encoding {} (this coordinator reads 0 to 4: f32, fp16, bf16, int8, topk)",
                    h.client_id, h.round, h.encoding
                ))
            })?;
            let m = h.metrics.unwrap_or_default();
            Ok(UpdatePart::Header(UpdateHeader {
                client_id: h.client_id,
                round: h.round,
                base_model_hash: h.base_model_hash,
                layout_fingerprint: h.layout_fingerprint,
                total_values: h.total_values,
                num_examples: h.num_examples,
                metrics: TrainReport {
                    loss: m.loss,
                    accuracy: m.accuracy,
                    steps: m.steps,
                    epochs: m.epochs,
                    seconds: m.seconds,
                    // A hostile value is dropped rather than recorded: it is a report, not a guarantee.
                    record_epsilon: m.record_epsilon.filter(|e| e.is_finite() && *e >= 0.0),
                },
                values_sha256: h.values_sha256,
                masked: h.masked,
                encoding,
            }))
        }
        pb::update_chunk::Kind::Data(d) => Ok(UpdatePart::Data(d)),
    }
}

// ---- data aggregates and plan -------------------------------------------------------------

/// A site's aggregates on the wire.
pub fn stats_to_pb(client_id: &str, stats: &SiteStats, num_train: u64) -> pb::ReportStatsRequest {
    pb::ReportStatsRequest {
        client_id: client_id.to_owned(),
        columns: stats.columns.iter().map(column_stats_to_pb).collect(),
        num_train_examples: num_train,
        label_counts: stats.label_counts.clone(),
        label_present: stats.label_present.clone(),
        label_values: stats.label_values.as_ref().map(column_stats_to_pb),
    }
}

fn column_stats_to_pb(c: &ColumnStats) -> pb::ColumnStats {
    pb::ColumnStats {
        name: c.name.clone(),
        numeric_count: c.numeric_count,
        sum: c.sum,
        sum_squares: c.sum_squares,
        missing: c.missing,
        categories: c.categories.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        categorical: c.categorical,
        identifier_like: c.identifier_like,
        histogram_upper: c.histogram.iter().map(|b| b.upper).collect(),
        histogram_counts: c.histogram.iter().map(|b| b.count).collect(),
    }
}

fn column_stats_from_pb(c: pb::ColumnStats) -> ColumnStats {
    let histogram = if c.histogram_upper.len() == c.histogram_counts.len() {
        c.histogram_upper.iter().zip(&c.histogram_counts).map(|(&upper, &count)| Bin { upper, count }).collect()
    } else {
        Vec::new()
    };
    ColumnStats {
        name: c.name,
        categorical: c.categorical,
        numeric_count: c.numeric_count,
        sum: c.sum,
        sum_squares: c.sum_squares,
        missing: c.missing,
        categories: c.categories.into_iter().collect::<BTreeMap<_, _>>(),
        identifier_like: c.identifier_like,
        histogram,
    }
}

/// A site's aggregates from the wire, as they came: `SiteStats::validate` (in the federation,
/// against what the site declared) decides whether they are acceptable. A histogram whose
/// edges and counts differ in length is dropped here (it cannot be read).
pub fn stats_from_pb(report: pb::ReportStatsRequest) -> SiteStats {
    SiteStats {
        columns: report.columns.into_iter().map(column_stats_from_pb).collect(),
        label_counts: report.label_counts,
        label_present: report.label_present,
        label_values: report.label_values.map(column_stats_from_pb),
    }
}

/// The plan on the wire.
pub fn plan_to_pb(plan: &Plan) -> pb::Plan {
    pb::Plan {
        ready: true,
        fingerprint: plan.fingerprint(),
        columns: plan
            .columns
            .iter()
            .map(|c| pb::ColumnPlan {
                name: c.name.clone(),
                kind: Some(match &c.kind {
                    ColumnKind::Numeric { mean, std } => pb::column_plan::Kind::Numeric(pb::NumericPlan { mean: *mean, std: *std }),
                    ColumnKind::Categorical { vocabulary } => pb::column_plan::Kind::Categorical(pb::CategoricalPlan { vocabulary: vocabulary.clone() }),
                }),
            })
            .collect(),
        target: plan.target.map(|t| pb::NumericPlan { mean: t.mean, std: t.std }),
    }
}

/// The plan from the wire; `None` while it is not ready. Its fingerprint must match.
pub fn plan_from_pb(p: pb::Plan) -> Result<Option<Plan>, WireError> {
    if !p.ready {
        return Ok(None);
    }
    let mut columns = Vec::with_capacity(p.columns.len());
    for c in p.columns {
        let kind = match c.kind.ok_or(WireError::Missing("column kind"))? {
            pb::column_plan::Kind::Numeric(n) => {
                if !(n.mean.is_finite() && n.std.is_finite() && n.std > 0.0) {
                    return Err(WireError::Invalid(format!("column `{}`: bad mean or std", c.name)));
                }
                ColumnKind::Numeric { mean: n.mean, std: n.std }
            }
            pb::column_plan::Kind::Categorical(v) => ColumnKind::Categorical { vocabulary: v.vocabulary },
        };
        columns.push(ColumnPlan { name: c.name, kind });
    }
    let target = match p.target {
        Some(t) if !(t.mean.is_finite() && t.std.is_finite() && t.std > 0.0) => return Err(WireError::Invalid("the label's target: bad mean or std".into())),
        t => t.map(|t| TargetScale { mean: t.mean, std: t.std }),
    };
    let plan = Plan { columns, target };
    if plan.fingerprint() != p.fingerprint {
        return Err(WireError::Invalid("plan fingerprint does not match its contents".into()));
    }
    Ok(Some(plan))
}

// ---- evaluation ---------------------------------------------------------------------------

/// A site's evaluation of a global model on the wire.
pub fn evaluation_to_pb(client_id: &str, round: u32, model_hash: &str, e: &Evaluation) -> pb::EvaluationResult {
    pb::EvaluationResult {
        client_id: client_id.to_owned(),
        round,
        model_hash: model_hash.to_owned(),
        num_examples: e.examples,
        loss: e.loss,
        accuracy: e.accuracy,
        auc: e.auc,
        validation_loss: e.validation_loss,
        validation_examples: e.validation_examples,
        regression: e.regression.map(|r| pb::RegressionMetrics { mae: r.mae, mse: r.mse, total_squares: r.total_squares }),
    }
}

/// An evaluation from the wire; metrics must be in range.
pub fn evaluation_from_pb(r: &pb::EvaluationResult) -> Result<Evaluation, WireError> {
    let ok01 = |x: f64| (0.0..=1.0).contains(&x);
    let ok0 = |x: f64| x.is_finite() && x >= 0.0;
    // A regression evaluation has no accuracy (whatever was sent is dropped) nor AUC.
    let accuracy_ok = r.regression.is_some() || ok01(r.accuracy);
    if r.num_examples == 0 || !accuracy_ok || !ok0(r.loss) || r.auc.is_some_and(|a| !ok01(a) || r.regression.is_some()) {
        return Err(WireError::Invalid("evaluation metrics out of range".into()));
    }
    if let Some(m) = &r.regression
        && !(ok0(m.mae) && ok0(m.mse) && ok0(m.total_squares) && m.mae * m.mae <= m.mse * (1.0 + 1e-9) + 1e-12)
    {
        // Mean |e|² ≤ mean e² (Jensen): no honest site reports otherwise.
        return Err(WireError::Invalid("regression metrics out of range (negative, not finite, or an MAE above the RMSE)".into()));
    }
    if r.validation_loss.is_some_and(|l| !(l.is_finite() && l >= 0.0)) || r.validation_loss.is_some() != (r.validation_examples > 0) {
        return Err(WireError::Invalid("validation loss out of range, or without validation rows".into()));
    }
    Ok(Evaluation {
        examples: r.num_examples,
        loss: r.loss,
        accuracy: if r.regression.is_some() { f64::NAN } else { r.accuracy },
        auc: r.auc,
        validation_loss: r.validation_loss,
        validation_examples: r.validation_examples,
        regression: r.regression.map(|m| RegressionMetrics { mae: m.mae, mse: m.mse, total_squares: m.total_squares }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelShape;

    #[test]
    fn regression_metrics_cross_the_wire_and_hostile_ones_are_refused() {
        let m = RegressionMetrics { mae: 3.0, mse: 16.0, total_squares: 100.0 };
        let e = Evaluation { examples: 20, loss: 0.16, accuracy: f64::NAN, auc: None, validation_loss: Some(0.2), validation_examples: 4, regression: Some(m) };
        let pb = evaluation_to_pb("c", 3, "h", &e);
        let back = evaluation_from_pb(&pb).unwrap();
        assert!(back.accuracy.is_nan() && back.regression == Some(m));
        let hostile = |f: &dyn Fn(&mut pb::RegressionMetrics)| {
            let mut p = pb.clone();
            if let Some(r) = p.regression.as_mut() {
                f(r);
            }
            evaluation_from_pb(&p)
        };
        assert!(hostile(&|r| r.mse = -1.0).is_err());
        assert!(hostile(&|r| r.total_squares = f64::INFINITY).is_err());
        assert!(hostile(&|r| r.mae = 5.0).is_err(), "an MAE above the RMSE (4) is no data's");
        assert!(evaluation_from_pb(&pb::EvaluationResult { auc: Some(0.5), ..pb.clone() }).is_err(), "no AUC for a regression");
        assert!(evaluation_from_pb(&pb::EvaluationResult { regression: None, ..pb.clone() }).is_err(), "a NaN accuracy without regression metrics");
    }

    #[test]
    fn a_plan_with_a_bad_or_tampered_target_is_refused() {
        let plan = Plan { columns: Vec::new(), target: Some(TargetScale { mean: 120.0, std: 20.0 }) };
        let pb = plan_to_pb(&plan);
        assert_eq!(plan_from_pb(pb.clone()).unwrap(), Some(plan));
        for std in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let bad = pb::Plan { target: Some(pb::NumericPlan { mean: 120.0, std }), ..pb.clone() };
            assert!(plan_from_pb(bad).unwrap_err().to_string().contains("target"), "std {std}");
        }
        let moved = pb::Plan { target: Some(pb::NumericPlan { mean: 121.0, std: 20.0 }), ..pb.clone() };
        assert!(plan_from_pb(moved).unwrap_err().to_string().contains("fingerprint"), "the fingerprint covers the target");
        let dropped = pb::Plan { target: None, ..pb };
        assert!(plan_from_pb(dropped).is_err());
    }

    #[test]
    fn a_compressed_stream_is_bounded_by_its_codec_before_it_is_decoded() {
        assert!(matches!(EncodedAssembler::new(Codec::Int8, MAX_VALUES + 1, "f"), Err(WireError::TooLarge(_))));
        let mut asm = EncodedAssembler::new(Codec::F16, 10, "f").unwrap();
        asm.push(&[0; 20]).unwrap();
        assert!(asm.push(&[0]).unwrap_err().to_string().contains("more bytes than 10 values can take (20)"));
        let mut asm = EncodedAssembler::new(Codec::TopK { fraction: 0.0 }, 4, "f").unwrap();
        assert!(asm.push(&[0; 37]).is_err(), "top-k of 4 values takes at most 4 + 8·4 bytes");
        let mut asm = EncodedAssembler::new(Codec::F16, 2, "f").unwrap();
        asm.push(&half::f16::from_f32(1.5).to_le_bytes()).unwrap();
        assert!(asm.finish().unwrap_err().to_string().contains("cannot hold"), "a truncated stream is refused at the end");
        // What arrives decoded is what is checksummed: the same sum as the plain values'.
        let mut asm = EncodedAssembler::new(Codec::F16, 2, "f").unwrap();
        asm.push(&[half::f16::from_f32(1.5), half::f16::from_f32(-2.0)].iter().flat_map(|h| h.to_le_bytes()).collect::<Vec<_>>()).unwrap();
        let (values, sum, bytes) = asm.finish().unwrap();
        assert_eq!((values.clone(), bytes), (vec![1.5, -2.0], 4));
        assert_eq!(sum, crate::params::checksum("f", &values));
    }

    #[test]
    fn a_hostile_record_epsilon_is_dropped_not_recorded() {
        let header = |e: f64| pb::UpdateChunk {
            kind: Some(pb::update_chunk::Kind::Header(pb::UpdateHeader {
                metrics: Some(pb::TrainMetrics { record_epsilon: Some(e), ..Default::default() }),
                ..Default::default()
            })),
        };
        for (sent, kept) in [(2.5, Some(2.5)), (f64::NAN, None), (-1.0, None), (f64::INFINITY, None)] {
            let Ok(UpdatePart::Header(h)) = update_part(header(sent)) else { panic!("a header") };
            assert_eq!(h.metrics.record_epsilon, kept, "{sent}");
        }
    }

    #[test]
    fn key_endorsements_travel_with_the_roster_and_are_bounded() {
        let keys = PublicKeys { c: [1; 32], s: [2; 32], b_commitment: [3; 32] };
        let e = Endorsement { signature: vec![9; 70], certificate: vec![7; 500] };
        let roster =
            Roster { threshold: 2, members: vec![("a".into(), keys), ("b".into(), keys)], endorsements: [("a".to_owned(), e.clone())].into_iter().collect() };
        let back = roster_from_pb(&roster_to_pb(&roster)).unwrap();
        assert_eq!(back, roster, "b unsigned stays unsigned");
        let mut big = keys_to_pb(&keys, Some(&e));
        big.certificate = vec![0; crate::secagg::endorse::MAX_CERTIFICATE_BYTES + 1];
        assert!(endorsement_from_pb(&big).unwrap_err().to_string().contains("larger than allowed"));
    }

    #[test]
    fn model_round_trips_through_chunks() {
        // 600k values: three chunks, the last one partial.
        let shape = ModelShape { inputs: 1000, hidden: vec![600], outputs: 1, conv: None, custom: None };
        let model = Arc::new(shape.init_params(1));
        let hash = model.hash();
        let chunks: Vec<_> = model_chunks(model.clone(), 3, hash.clone()).collect();
        assert_eq!(chunks.len(), 1 + model.values().len().div_ceil(CHUNK_VALUES));
        let (header, back) = model_from_chunks(chunks).unwrap();
        assert_eq!((header.round, header.hash), (3, hash));
        assert_eq!(&back, model.as_ref());
    }

    #[test]
    fn tampered_streams_are_refused() {
        let shape = ModelShape { inputs: 4, hidden: vec![3], outputs: 1, conv: None, custom: None };
        let model = Arc::new(shape.init_params(1));
        let good: Vec<_> = model_chunks(model.clone(), 1, model.hash()).collect();

        let mut extra = good.clone();
        extra.push(good[1].clone());
        assert!(matches!(model_from_chunks(extra), Err(WireError::TooMuchData { .. })));

        assert!(matches!(model_from_chunks(good[..1].to_vec()), Err(WireError::Truncated { .. })));
        assert!(matches!(model_from_chunks(good[1..].to_vec()), Err(WireError::DataBeforeHeader)));

        let mut flipped = good.clone();
        if let Some(pb::model_chunk::Kind::Data(d)) = &flipped[1].kind {
            let mut b = d.to_vec();
            b[0] ^= 1;
            flipped[1].kind = Some(pb::model_chunk::Kind::Data(Bytes::from(b)));
        }
        assert!(model_from_chunks(flipped).unwrap_err().to_string().contains("hash"));

        let mut wrong_fp = good.clone();
        if let Some(pb::model_chunk::Kind::Header(h)) = &mut wrong_fp[0].kind {
            h.layout.as_mut().unwrap().tensors[0].shape = vec![3, 4];
        }
        assert!(matches!(model_from_chunks(wrong_fp), Err(WireError::Fingerprint { .. })));
    }

    #[test]
    fn oversized_declarations_are_refused_before_allocating() {
        assert!(matches!(Assembler::new(MAX_VALUES + 1, "f"), Err(WireError::TooLarge(_))));
    }
}

// ---- secure aggregation -------------------------------------------------------------------

use crate::secagg::shamir::Share;
use crate::secagg::{Endorsement, PublicKeys, Reveal, Roster, Sealed};

fn key32(b: &[u8], what: &'static str) -> Result<[u8; 32], WireError> {
    b.try_into().map_err(|_| WireError::Invalid(format!("{what} must be 32 bytes, got {}", b.len())))
}

pub fn keys_to_pb(k: &PublicKeys, e: Option<&Endorsement>) -> pb::SecAggKeys {
    pb::SecAggKeys {
        c: k.c.to_vec(),
        s: k.s.to_vec(),
        b_commitment: k.b_commitment.to_vec(),
        signature: e.map_or_else(Vec::new, |e| e.signature.clone()),
        certificate: e.map_or_else(Vec::new, |e| e.certificate.clone()),
    }
}

/// The endorsement that came with keys (`None` when unsigned), bounded in size.
pub fn endorsement_from_pb(k: &pb::SecAggKeys) -> Result<Option<Endorsement>, WireError> {
    if k.signature.is_empty() && k.certificate.is_empty() {
        return Ok(None);
    }
    if k.signature.len() > crate::secagg::endorse::MAX_SIGNATURE_BYTES || k.certificate.len() > crate::secagg::endorse::MAX_CERTIFICATE_BYTES {
        return Err(WireError::Invalid(format!(
            "a key endorsement of {} signature and {} certificate bytes is larger than allowed",
            k.signature.len(),
            k.certificate.len()
        )));
    }
    Ok(Some(Endorsement { signature: k.signature.clone(), certificate: k.certificate.clone() }))
}

pub fn keys_from_pb(k: &pb::SecAggKeys) -> Result<PublicKeys, WireError> {
    Ok(PublicKeys { c: key32(&k.c, "key c")?, s: key32(&k.s, "key s")?, b_commitment: key32(&k.b_commitment, "commitment")? })
}

pub fn roster_to_pb(r: &Roster) -> pb::SecAggRoster {
    pb::SecAggRoster {
        threshold: r.threshold as u32,
        members: r.members.iter().map(|(site, k)| pb::SecAggMember { site: site.clone(), keys: Some(keys_to_pb(k, r.endorsements.get(site))) }).collect(),
    }
}

pub fn roster_from_pb(r: &pb::SecAggRoster) -> Result<Roster, WireError> {
    let mut members = Vec::with_capacity(r.members.len());
    let mut endorsements = std::collections::BTreeMap::new();
    for m in &r.members {
        let keys = m.keys.as_ref().ok_or(WireError::Missing("roster keys"))?;
        members.push((m.site.clone(), keys_from_pb(keys)?));
        if let Some(e) = endorsement_from_pb(keys)? {
            endorsements.insert(m.site.clone(), e);
        }
    }
    if !members.windows(2).all(|w| w[0].0 < w[1].0) {
        return Err(WireError::Invalid("the roster must be sorted by site, without repeats".into()));
    }
    Ok(Roster { threshold: r.threshold as usize, members, endorsements })
}

pub fn sealed_to_pb(s: &[Sealed]) -> pb::SecAggShares {
    pb::SecAggShares { boxes: s.iter().map(|b| pb::SecAggSealed { from: b.from.clone(), to: b.to.clone(), ciphertext: b.ciphertext.clone() }).collect() }
}

pub fn sealed_from_pb(s: pb::SecAggShares) -> Vec<Sealed> {
    s.boxes.into_iter().map(|b| Sealed { from: b.from, to: b.to, ciphertext: b.ciphertext }).collect()
}

fn share_to_pb(owner: &str, s: &Share) -> pb::SecAggShare {
    pb::SecAggShare { owner: owner.to_owned(), x: s.x, y: s.y.to_vec() }
}

fn share_from_pb(s: &pb::SecAggShare) -> Result<(String, Share), WireError> {
    let mut bytes = s.x.to_le_bytes().to_vec();
    if s.y.len() != 5 {
        return Err(WireError::Invalid(format!("a share of `{}` has {} limbs, not 5", s.owner, s.y.len())));
    }
    s.y.iter().for_each(|y| bytes.extend_from_slice(&y.to_le_bytes()));
    let share = Share::from_bytes(&bytes).ok_or_else(|| WireError::Invalid(format!("a share of `{}` is outside the field", s.owner)))?;
    Ok((s.owner.clone(), share))
}

pub fn reveal_to_pb(r: &Reveal) -> pb::SecAggReveal {
    pb::SecAggReveal {
        self_mask: r.self_mask.iter().map(|(o, s)| share_to_pb(o, s)).collect(),
        secret_key: r.secret_key.iter().map(|(o, s)| share_to_pb(o, s)).collect(),
    }
}

pub fn reveal_from_pb(from: &str, r: &pb::SecAggReveal) -> Result<Reveal, WireError> {
    Ok(Reveal {
        from: from.to_owned(),
        self_mask: r.self_mask.iter().map(share_from_pb).collect::<Result<_, _>>()?,
        secret_key: r.secret_key.iter().map(share_from_pb).collect::<Result<_, _>>()?,
    })
}

/// Checksum of a masked input: SHA-256 of the fingerprint and the little-endian u64 values.
pub fn masked_checksum(fingerprint: &str, values: &[u64]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(fingerprint.as_bytes());
    values.iter().for_each(|v| h.update(v.to_le_bytes()));
    hex::encode(h.finalize())
}

/// The chunks of a masked input (u64 values), header first.
pub fn masked_chunks(header: UpdateHeader, values: Arc<Vec<u64>>) -> impl Iterator<Item = pb::UpdateChunk> + Send {
    let first = update_chunks(UpdateHeader { masked: true, ..header }, Arc::new(FlatParams::zeros(Layout::new(Vec::new())))).next();
    let per = CHUNK_BYTES / 8;
    let n = values.len().div_ceil(per);
    first.into_iter().chain((0..n).map(move |i| {
        let part = &values[i * per..((i + 1) * per).min(values.len())];
        let bytes: Vec<u8> = part.iter().flat_map(|v| v.to_le_bytes()).collect();
        pb::UpdateChunk { kind: Some(pb::update_chunk::Kind::Data(Bytes::from(bytes))) }
    }))
}

/// Reassembles a masked input of `declared` u64 values, refusing more.
#[derive(Debug)]
pub struct MaskedAssembler {
    declared: u64,
    values: Vec<u64>,
}

impl MaskedAssembler {
    pub fn new(declared: u64) -> Result<Self, WireError> {
        if declared > MAX_VALUES {
            return Err(WireError::TooLarge(declared));
        }
        Ok(Self { declared, values: Vec::with_capacity(declared as usize) })
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if !bytes.len().is_multiple_of(8) {
            return Err(WireError::Invalid(format!("a masked chunk of {} bytes is not whole u64 values", bytes.len())));
        }
        if self.values.len() as u64 + (bytes.len() as u64) / 8 > self.declared {
            return Err(WireError::TooMuchData { declared: self.declared });
        }
        self.values.extend(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))));
        Ok(())
    }

    pub fn finish(self) -> Result<Vec<u64>, WireError> {
        if self.values.len() as u64 != self.declared {
            return Err(WireError::Truncated { declared: self.declared, received: self.values.len() as u64 });
        }
        Ok(self.values)
    }
}
