//! The audit-log domain: what a page query is, what a page holds, and how a stream
//! walks a live log exactly once. Nothing here knows gRPC or HTTP.

pub(crate) mod anchor;
pub(crate) mod calendar;
pub(crate) mod checkpoint;
pub(crate) mod follow;
pub(crate) mod query;
pub(crate) mod record;
pub(crate) mod resume;
pub(crate) mod retention;

pub(crate) use query::{Dialect, PageQuery, Span, TimeUnit};
