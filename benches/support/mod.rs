//! What the benches share: an in-process gateway and simulator, and percentiles.

// Each bench uses its own part of this module.
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use audit_gateway::{
    config::{Cli, Command},
    server::{self, ShutdownSettings},
    simulator::{Simulator, SimulatorConfig, SimulatorHandle},
};
use clap::Parser;
use tonic::{client::Grpc, transport::Channel};

/// A simulator on a free loopback port.
pub async fn simulator(config: SimulatorConfig) -> SimulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    Simulator::start(config, listener).await.expect("simulator")
}

/// A gateway in this process in front of `confluence`, with `extra` serve flags; it
/// runs until `stop` resolves.
pub async fn gateway(
    confluence: &str,
    extra: &[&str],
    stop: impl Future<Output = ()> + Send + 'static,
) -> SocketAddr {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut argv = vec![
        "audit-gateway",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--confluence-url",
        confluence,
    ];
    argv.extend_from_slice(extra);
    let Command::Serve(args) = Cli::parse_from(argv).command else {
        unreachable!("serve")
    };
    let service = server::build_service(&args).expect("service");
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::run(
        service,
        listener,
        stop,
        ShutdownSettings {
            drain_delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
        },
    ));
    addr
}

/// A generic gRPC client of `addr` that takes pages up to 64 MiB.
pub async fn grpc(addr: impl std::fmt::Display) -> Grpc<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    Grpc::new(channel).max_decoding_message_size(64 << 20)
}

/// The `p`th percentile of `v`.
pub fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}
