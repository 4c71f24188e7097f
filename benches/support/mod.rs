//! What the benches share: an in-process gateway and simulator, and percentiles.

// Each bench uses its own part of this module.
#![allow(dead_code)]

pub mod follow;
pub mod hit;
pub mod stream;

use std::{
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

/// Starts the gateway binary (the caller's bench target must depend on it) with default
/// settings in front of `url`; returns the child and its gRPC address, which it writes to
/// its `--ready-file` once bound.
pub fn spawn_gateway_binary(url: &str, extra: &[&str]) -> (Child, String) {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ready = std::env::temp_dir().join(format!(
        "audit-gateway-bench-{}-{n}.ready",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(env!("CARGO_BIN_EXE_audit-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--confluence-url", url])
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("gateway binary");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let line: serde_json::Value = serde_json::from_str(&text).expect("one JSON line");
            break line["grpc"].as_str().expect("the gRPC address").to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway binary wrote no ready file within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_file(&ready);
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
