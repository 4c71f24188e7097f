//! What the benches share: an in-process gateway and simulator, and percentiles.

// Each bench uses its own part of this module.
#![allow(dead_code)]

pub mod follow;
pub mod hit;
pub mod stream;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use audit_gateway::{Gateway, GatewayConfig};
use confluence_sim::{Simulator, SimulatorConfig, SimulatorHandle};
use tonic::{client::Grpc, transport::Channel};

/// A simulator on a free loopback port.
pub async fn simulator(config: SimulatorConfig) -> SimulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    Simulator::start(config, listener).await.expect("simulator")
}

/// A gateway in this process in front of `confluence`, its defaults changed by
/// `tweak`; it runs until `stop` resolves.
pub async fn gateway(
    confluence: &str,
    tweak: impl FnOnce(&mut GatewayConfig),
    stop: impl Future<Output = ()> + Send + 'static,
) -> SocketAddr {
    let mut config = GatewayConfig::new(confluence);
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.shutdown_timeout = Duration::from_secs(1);
    tweak(&mut config);
    let gateway = Gateway::bind(config).await.expect("gateway starts");
    let addr = gateway.local_addr();
    tokio::spawn(gateway.run_until_stopped(stop));
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

/// Starts the gateway binary (the caller's bench target must depend on it) with default settings in front of `url`; returns the child
/// and its gRPC address (read from its log).
pub fn spawn_gateway_binary(url: &str, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--confluence-url", url])
        .args(extra)
        .env("RUST_LOG", "info")
        // Its address is read from the text log line.
        .env("AUDIT_GATEWAY_LOG_FORMAT", "text")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("gateway binary");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("gateway log line").expect("utf-8 log");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

pub fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
