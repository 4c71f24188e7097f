//! The audit-log domain: what a page query is and what a page holds. Nothing here knows
//! gRPC or HTTP.

pub mod query;
pub mod record;

pub use query::{PageQuery, TimeUnit};
