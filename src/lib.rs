//! audit-gateway: a gRPC gateway to the Confluence audit log.
//!
//! `config` parses the command line, `server` runs the gRPC service, `grpc` converts at the
//! gRPC edge, `audit` holds the domain (queries, pages, records), `upstream` talks to
//! Confluence, `cache` keeps fetched pages and `simulator` stands in for Confluence.

#![warn(missing_docs)]

pub mod audit;
pub mod cache;
pub mod client;
pub mod config;
pub mod credential;
pub mod demo;
pub mod error;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod pages;
pub mod pb;
pub mod server;
pub mod simulator;
pub mod stream;
pub mod telemetry;
pub mod upstream;
