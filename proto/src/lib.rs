//! The Flotilla wire protocol, `flotilla.v1`.
//!
//! Generated code only. Conversions to domain types live in the wire modules
//! (`flotilla_common::wire`); nothing else in the workspace should name `pb::` types.

/// Generated messages and the `Federation` service stubs.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("flotilla.v1");
}

/// The protocol version a client announces at join; the coordinator refuses others.
pub const PROTOCOL_VERSION: u32 = 1;
