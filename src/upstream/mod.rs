//! Confluence's REST API: the HTTP client and its retry policy.

pub(crate) mod budget;
pub(crate) mod client;
pub(crate) mod clock;
pub(crate) mod cooldown;
pub(crate) mod ratelimit;
pub(crate) mod retry;

pub(crate) use client::{ConfluenceClient, UpstreamSettings};
pub(crate) use retry::{RetryClass, RetryPolicy};
