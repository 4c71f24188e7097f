//! The generated protobuf messages, gRPC client and server of `confluence.audit.v1`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod json;
pub mod wire;

tonic::include_proto!("confluence.audit.v1");
include!(concat!(
    env!("OUT_DIR"),
    "/confluence.audit.v1.AuditService.rs"
));

/// The encoded `FileDescriptorSet` of the API (and the well-known types it imports),
/// served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/audit_descriptor.bin"));

/// The fully-qualified gRPC service name.
pub const SERVICE_NAME: &str = "confluence.audit.v1.AuditService";
