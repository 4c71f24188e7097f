//! The audit-log domain: what a page query is, what a page holds, and how a stream
//! walks a live log exactly once. Nothing here knows gRPC or HTTP.

pub mod anchor;
pub mod query;
pub mod record;
pub mod resume;

pub use query::{PageQuery, TimeUnit};
