//! Integration tests: one binary (built and linked once), one module per concern.

mod adversary;
mod cache;
mod callers;
mod cli;
mod clients;
mod common;
mod compression;
mod docs;
mod errors;
mod export;
mod fairness;
mod follow;
mod get_since;
mod interop;
mod mesh;
mod monitoring;
mod nesting;
mod otel;
mod overload;
mod pacing;
mod proxy;
mod redis;
mod redis_cluster;
mod server;
mod stream;
mod tls;
