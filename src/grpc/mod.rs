//! The gRPC edge: request validation, metadata, protobuf conversion, status mapping and
//! the `AuditService` implementation.

pub mod convert;
pub mod encoded;
pub mod metadata;
pub mod service;
pub mod status;
pub mod validate;

pub use service::{AuditGrpc, CredentialMode};
