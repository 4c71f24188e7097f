//! Confluence's REST API: the HTTP client (`client.rs`), its retry policy (`retry.rs`)
//! and retry budget (`budget.rs`), the fair sharing of its request slots between
//! callers (`fair.rs`) within each credential's adaptive limit (`pacing.rs`),
//! per-credential cool-downs (`cooldown.rs`), Atlassian's
//! rate-limit headers (`ratelimit.rs`) and Confluence's clock (`clock.rs`).

pub(crate) mod budget;
pub(crate) mod client;
pub(crate) mod clock;
pub(crate) mod cooldown;
pub(crate) mod fair;
pub(crate) mod pacing;
pub(crate) mod ratelimit;
pub(crate) mod retry;

pub(crate) use client::ConfluenceClient;
pub use client::{ConfluenceFlavor, UpstreamConfig};
pub(crate) use retry::RetryClass;
