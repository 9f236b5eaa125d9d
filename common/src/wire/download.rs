//! Model downloads: a header, then the model's bytes, either plain f32 values or the
//! difference from a model the site already holds ([`crate::compress::delta`]). The
//! receiver bounds what it buffers by what the header may honestly declare, and the model
//! it hands back always hashes to the header's hash.

use std::sync::Arc;

use bytes::Bytes;
use flotilla_proto::pb;

use super::{Assembler, CHUNK_BYTES, CHUNK_VALUES, WireError, layout_from_pb, layout_to_pb};
use crate::compress::delta;
use crate::params::{FlatParams, Layout, checksum};

/// `ModelHeader.encoding` of plain little-endian f32 values.
pub const PLAIN: u32 = 0;

/// The chunks of a global model: a header, then 1 MiB data chunks produced lazily, so the
/// sender holds the shared model and one chunk, never a serialised copy of the whole.
pub fn model_chunks(model: Arc<FlatParams>, round: u32, hash: String) -> impl Iterator<Item = pb::ModelChunk> + Send {
    let header = pb::ModelChunk {
        kind: Some(pb::model_chunk::Kind::Header(pb::ModelHeader {
            layout: Some(layout_to_pb(model.layout())),
            model_hash: hash,
            round,
            total_values: model.values().len() as u64,
            encoding: PLAIN,
            base_model_hash: String::new(),
            encoded_bytes: 4 * model.values().len() as u64,
        })),
    };
    let n_chunks = model.values().len().div_ceil(CHUNK_VALUES);
    std::iter::once(header).chain((0..n_chunks).map(move |i| {
        let v = model.values();
        let slice = &v[i * CHUNK_VALUES..((i + 1) * CHUNK_VALUES).min(v.len())];
        pb::ModelChunk { kind: Some(pb::model_chunk::Kind::Data(Bytes::from(crate::params::f32_to_le_bytes(slice)))) }
    }))
}

/// The chunks of a model of `layout` sent as `encoded`, its difference from model
/// `base_hash` ([`delta::encode`]); the chunks share `encoded`'s buffer.
pub fn delta_chunks(layout: &Layout, encoded: Bytes, round: u32, hash: String, base_hash: String) -> impl Iterator<Item = pb::ModelChunk> + Send + use<> {
    let header = pb::ModelChunk {
        kind: Some(pb::model_chunk::Kind::Header(pb::ModelHeader {
            layout: Some(layout_to_pb(layout)),
            model_hash: hash,
            round,
            total_values: layout.total() as u64,
            encoding: delta::DIFF_ZSTD,
            base_model_hash: base_hash,
            encoded_bytes: encoded.len() as u64,
        })),
    };
    let n_chunks = encoded.len().div_ceil(CHUNK_BYTES);
    std::iter::once(header).chain(
        (0..n_chunks).map(move |i| pb::ModelChunk {
            kind: Some(pb::model_chunk::Kind::Data(encoded.slice(i * CHUNK_BYTES..((i + 1) * CHUNK_BYTES).min(encoded.len())))),
        }),
    )
}

/// The header of a model download, as a domain value.
#[derive(Debug, Clone)]
pub struct ModelHeader {
    pub layout: Layout,
    pub hash: String,
    pub round: u32,
    /// The bytes the data chunks carry (4 a value for a plain model, fewer for a delta).
    pub encoded_bytes: u64,
    /// The model the data is a difference from, for a delta download.
    pub base_hash: Option<String>,
}

/// Reads a downloaded model: header first, then data, verified against the declared hash.
pub fn model_from_chunks(chunks: impl IntoIterator<Item = pb::ModelChunk>) -> Result<(ModelHeader, FlatParams), WireError> {
    let mut state = ModelReceiver::default();
    for c in chunks {
        state.push(c)?;
    }
    state.finish()
}

/// Incremental form of [`model_from_chunks`] for streams.
#[derive(Debug, Default)]
pub struct ModelReceiver {
    header: Option<(ModelHeader, Body)>,
    /// The layout the receiver knows the model must have (a site knows its plan's shape).
    expected: Option<Layout>,
    /// The model the receiver holds, which a delta may be taken from.
    base: Option<(String, Arc<FlatParams>)>,
}

#[derive(Debug)]
enum Body {
    Plain(Assembler),
    Delta { declared: usize, bytes: Vec<u8>, base: Arc<FlatParams> },
}

impl ModelReceiver {
    /// A receiver that refuses a header announcing any other layout than `layout`, before
    /// allocating for it.
    pub fn expecting(layout: Layout) -> Self {
        Self { expected: Some(layout), ..Self::default() }
    }

    /// Accepts a delta from `base` (whose hash is `hash`) besides a plain model.
    pub fn with_base(mut self, hash: String, base: Arc<FlatParams>) -> Self {
        self.base = Some((hash, base));
        self
    }

    /// Takes the next chunk.
    pub fn push(&mut self, chunk: pb::ModelChunk) -> Result<(), WireError> {
        match (chunk.kind, &mut self.header) {
            (Some(pb::model_chunk::Kind::Header(h)), None) => {
                let layout = layout_from_pb(h.layout.as_ref().ok_or(WireError::Missing("layout"))?)?;
                if layout.total() as u64 != h.total_values {
                    return Err(WireError::Invalid(format!("header declares {} values but its layout holds {}", h.total_values, layout.total())));
                }
                if let Some(expected) = &self.expected
                    && *expected != layout
                {
                    return Err(WireError::Invalid(format!(
                        "the model announced has {} values in {} tensors; the federation's plan makes {} in {}",
                        layout.total(),
                        layout.tensors().len(),
                        expected.total(),
                        expected.tensors().len()
                    )));
                }
                let body = match h.encoding {
                    PLAIN => Body::Plain(Assembler::new(h.total_values, layout.fingerprint())?),
                    delta::DIFF_ZSTD => self.delta_body(&h, &layout)?,
                    other => {
                        return Err(WireError::Invalid(format!(
                            "model encoding {other} is not one this site reads ({PLAIN} = f32 values, {} = diff-zstd delta)",
                            delta::DIFF_ZSTD
                        )));
                    }
                };
                let base_hash = (h.encoding == delta::DIFF_ZSTD).then_some(h.base_model_hash);
                let encoded_bytes = match &body {
                    Body::Plain(_) => 4 * h.total_values,
                    Body::Delta { declared, .. } => *declared as u64,
                };
                self.header = Some((ModelHeader { layout, hash: h.model_hash, round: h.round, encoded_bytes, base_hash }, body));
                Ok(())
            }
            (Some(pb::model_chunk::Kind::Header(_)), Some(_)) => Err(WireError::UnexpectedHeader),
            (Some(pb::model_chunk::Kind::Data(d)), Some((_, Body::Plain(asm)))) => asm.push(&d),
            (Some(pb::model_chunk::Kind::Data(d)), Some((_, Body::Delta { declared, bytes, .. }))) => {
                if bytes.len() + d.len() > *declared {
                    return Err(WireError::Invalid(format!("the delta declared {declared} bytes but sent more")));
                }
                bytes.extend_from_slice(&d);
                Ok(())
            }
            (Some(pb::model_chunk::Kind::Data(_)), None) => Err(WireError::DataBeforeHeader),
            (None, _) => Err(WireError::Missing("chunk kind")),
        }
    }

    /// The body of a delta download: only from the model this receiver holds, and no longer
    /// than an honest encoding of the layout can be.
    fn delta_body(&self, h: &pb::ModelHeader, layout: &Layout) -> Result<Body, WireError> {
        let Some((held, base)) = &self.base else {
            return Err(WireError::Invalid(format!("the model comes as a delta from {}, but this site asked for the full model", short(&h.base_model_hash))));
        };
        if *held != h.base_model_hash {
            return Err(WireError::Invalid(format!("the model comes as a delta from {}, but this site holds {}", short(&h.base_model_hash), short(held))));
        }
        if base.layout() != layout {
            return Err(WireError::Invalid("the delta's layout is not the layout of the model it is taken from".into()));
        }
        let bound = delta::max_encoded_len(layout.total());
        if h.encoded_bytes > bound as u64 {
            return Err(WireError::Invalid(format!("the delta declares {} bytes; {} values take at most {bound}", h.encoded_bytes, layout.total())));
        }
        Ok(Body::Delta { declared: h.encoded_bytes as usize, bytes: Vec::with_capacity(h.encoded_bytes as usize), base: base.clone() })
    }

    /// The model; its hash must equal the one the header announced.
    pub fn finish(self) -> Result<(ModelHeader, FlatParams), WireError> {
        let (header, body) = self.header.ok_or(WireError::Empty)?;
        let (values, hash) = match body {
            Body::Plain(asm) => asm.finish()?,
            Body::Delta { declared, bytes, base } => {
                if bytes.len() != declared {
                    return Err(WireError::Invalid(format!("the delta declared {declared} bytes but ended after {}", bytes.len())));
                }
                let values = delta::decode(base.values(), &bytes).map_err(|e| WireError::Invalid(e.to_string()))?;
                let hash = checksum(header.layout.fingerprint(), &values);
                (values, hash)
            }
        };
        let params = FlatParams::new(header.layout.clone(), values).map_err(|e| WireError::Invalid(e.to_string()))?;
        if hash != header.hash {
            return Err(WireError::Invalid(format!("model hash {hash} does not match the announced {}", header.hash)));
        }
        Ok((header, params))
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
