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
mod config;
mod credential;
mod error;
#[cfg(test)]
mod fuzz_tests;
mod gateway;
mod grpc;
mod health;
mod http;
pub mod metrics;
pub mod pb;
mod reload;
mod server;
mod shutdown;
pub mod telemetry;
mod tls;
mod upstream;

pub use cache::{CacheConfig, RedisConfig};
pub use config::{ConfigError, GatewayConfig, UpstreamAuth};
pub use error::{CallerCap, Chain, GatewayError, UpstreamFailure};
pub use gateway::{Gateway, shutdown_signal};
pub use server::{ResponseCompression, ServeError, ServerConfig, UnknownCompression};
pub use upstream::{ConfluenceFlavor, UpstreamConfig};

/// Hooks into private parts for the benches (`bench`: a page conversion step by step)
/// and the fuzz targets (`fuzz`: the decoders of untrusted or cached bytes); not an API.
/// Compiled only with the `testing` feature, which the benches, the integration tests
/// and `fuzz/` turn on, and in unit tests.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
