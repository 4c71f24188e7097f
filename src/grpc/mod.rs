//! The gRPC edge: request validation, metadata, status mapping and the `AuditService`
//! implementation. Only this module (with `server.rs` and `health.rs`) knows tonic's
//! request and status types; it calls the application layer (`src/app/`).

mod metadata;
mod observe;
mod service;
mod status;
mod validate;

pub(crate) use observe::code_name;
pub(crate) use service::AuditGrpc;
