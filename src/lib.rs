//! audit-gateway: a gRPC gateway to the Confluence audit log.
//!
//! Start one with [`Gateway::bind`] and a [`GatewayConfig`]; call it with the generated
//! client in [`pb`]. `docs/ARCHITECTURE.md` maps the modules: the gRPC edge (`grpc`,
//! `server`, `health`) calls the application (`app`), which calls the protobuf
//! conversion (`pb`), the page cache (`cache`) and the Confluence client (`upstream`),
//! all of them over the domain (`audit`, `error`).

#![warn(missing_docs, unreachable_pub)]

mod app;
mod audit;
mod cache;
mod callers;
mod cli;
mod config;
mod credential;
mod error;
#[cfg(test)]
mod fuzz_tests;
mod gateway;
mod grpc;
mod health;
pub mod metrics;
pub mod pb;
mod reload;
mod server;
pub mod telemetry;
mod tls;
mod upstream;

pub use cli::Cli;
pub use config::{
    CacheConfig, ConfigError, GatewayConfig, ResponseCompression, UpstreamAuth, UpstreamConfig,
};
pub use error::{GatewayError, UpstreamFailure};
pub use gateway::{Gateway, shutdown_signal};
pub use server::ServeError;

/// The steps of a page conversion, for the benches to time one by one.
pub mod bench {
    use crate::{audit::record::Page, pb};

    pub use crate::pb::convert::encode_page;

    /// Parses a Confluence body into the gateway's borrowed, typed page.
    pub fn parse(body: &[u8]) -> Option<impl Sized + '_> {
        Page::parse(body).ok()
    }

    /// Parses a Confluence body and builds the protobuf page, without encoding it.
    pub fn parse_and_convert(body: &[u8]) -> Option<pb::GetSinceResponse> {
        Page::parse(body).ok().map(pb::convert::page_to_proto)
    }
}
