//! What the benches share: an in-process gateway and simulator, and percentiles.

// Each bench uses its own part of this module.
#![allow(dead_code)]

pub mod follow;
pub mod h2load;
pub mod hit;
pub mod stream;

use std::{net::SocketAddr, process::Child, time::Duration};

use audit_gateway::{GatewayConfig, testing::harness};
use confluence_sim::{SimulatorConfig, SimulatorHandle};
use tonic::{client::Grpc, transport::Channel};

/// A simulator on a free loopback port (the harness the integration tests use too).
pub async fn simulator(config: SimulatorConfig) -> SimulatorHandle {
    harness::simulator(config).await
}

/// A simulator on a thread and runtime of its own, until it is shut down: the times it
/// records requests at are not held up by the load the bench puts on its own runtime
/// (100 streams' clients and a gateway on two cores delay a shared runtime's tasks by
/// tens of milliseconds).
pub fn simulator_apart(config: SimulatorConfig) -> SimulatorHandle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let sim = harness::simulator(config).await;
            tx.send(sim.clone()).expect("handed over");
            sim.stopped().await;
        });
    });
    rx.recv().expect("simulator started")
}

/// A gateway in this process in front of `confluence`, its defaults changed by
/// `tweak`; it runs until `stop` resolves.
pub async fn gateway(
    confluence: &str,
    tweak: impl FnOnce(&mut GatewayConfig),
    stop: impl Future<Output = ()> + Send + 'static,
) -> SocketAddr {
    let mut config = harness::loopback(confluence);
    config.server.shutdown_timeout = Duration::from_secs(1);
    tweak(&mut config);
    let running = harness::InProcess::start(config).await;
    let addr = running.addr;
    tokio::spawn(async move {
        stop.await;
        drop(running);
    });
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
/// settings in front of `url`; returns the child and its gRPC address (from its
/// `--ready-file`).
pub fn spawn_gateway_binary(url: &str, extra: &[&str]) -> (Child, String) {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_audit-gateway"));
    let args = [&["--listen", "127.0.0.1:0", "--confluence-url", url], extra].concat();
    let (child, addr) = harness::binary(exe, &args);
    (child, addr.to_string())
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
