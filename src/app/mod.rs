//! The application layer: pages through the cache (`pages`), whole windows as streams
//! (`stream`), the log followed (`follow`), each caller's own caps (`caps`), the
//! gateway-wide budget of pages read ahead (`lookahead`) and the log's retention period
//! (`retention`). It
//! speaks domain types and encoded protobuf bytes; the gRPC edge
//! (`src/grpc/`) calls it, and it calls the cache, the upstream client and the
//! protobuf conversion.

pub(crate) mod caps;
pub(crate) mod follow;
pub(crate) mod lookahead;
#[cfg(test)]
pub(crate) mod model;
pub(crate) mod pages;
pub(crate) mod retention;
pub(crate) mod stream;

pub(crate) use pages::{AheadOf, PageRequest, PageService};
