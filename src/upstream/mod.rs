//! Confluence's REST API: the HTTP client and its retry policy.

pub mod client;
pub mod retry;

pub use client::{ConfluenceClient, UpstreamSettings};
pub use retry::RetryPolicy;
