//! Protobuf: the generated messages, gRPC client and server stubs of
//! `confluence.audit.v1`, the JSON ⇄ protobuf conversion (`convert`), and wire-level
//! helpers that move records between encoded pages without decoding them (`wire`).

pub mod convert;
mod encoded;
pub(crate) mod wire;

pub use encoded::EncodedMessage;

/// The generated code (prost messages, tonic client and server stubs).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("confluence.audit.v1");
    include!(concat!(
        env!("OUT_DIR"),
        "/confluence.audit.v1.AuditService.rs"
    ));
}

pub use generated::*;

/// The encoded `FileDescriptorSet` of the API (and the well-known types it imports),
/// served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/audit_descriptor.bin"));

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = "confluence.audit.v1.AuditService";
