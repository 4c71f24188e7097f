//! Starting what the tests and benches run against, one way for both: the simulator on a
//! free loopback port, a gateway in this process, and the gateway binary, whose address
//! comes from its `--ready-file` rather than its log.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use confluence_sim::{Simulator, SimulatorConfig, SimulatorHandle};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::{Gateway, GatewayConfig, ServeError};

/// A simulator on a free loopback port.
pub async fn simulator(config: SimulatorConfig) -> SimulatorHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    Simulator::start(config, listener)
        .await
        .expect("simulator starts")
}

/// A configuration in front of `confluence` on a free loopback port, otherwise default.
pub fn loopback(confluence: &str) -> GatewayConfig {
    let mut config = GatewayConfig::new(confluence);
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config
}

/// A gateway running in this process (through [`Gateway::bind`], as `main` does); it
/// stops when dropped.
pub struct InProcess {
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    /// Where it serves `/metrics`, with `metrics_listen` set.
    pub metrics: Option<SocketAddr>,
    /// Where it serves HTTP/JSON, with `http_listen` set.
    pub http: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl InProcess {
    /// Binds and serves `config`; panics on settings that cannot work (a test's mistake).
    pub async fn start(config: GatewayConfig) -> Self {
        let gateway = Gateway::bind(config).await.expect("valid settings");
        let addr = gateway.local_addr();
        let metrics = gateway.metrics_addr();
        let http = gateway.http_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics,
            http,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts stopping it without waiting; the server's task, to await.
    pub fn begin_shutdown(&mut self) -> JoinHandle<Result<(), ServeError>> {
        self.stop.take().map(|s| s.send(()));
        self.task
            .take()
            .unwrap_or_else(|| tokio::spawn(async { Ok(()) }))
    }

    /// Stops it and waits (10 s at most) for the server to return.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        let task = self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server stops within 10 s")
            .expect("the server task did not panic")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.take().map(|s| s.send(()));
    }
}

/// The gateway binary `exe` as a command that inherits none of the settings of the
/// environment it runs in (`CONFLUENCE_*`, `AUDIT_GATEWAY_*`, `REDIS_URL`), with no
/// colours in its log and nothing on its standard input.
pub fn command(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("CONFLUENCE_") || n.starts_with("AUDIT_GATEWAY_") || n == "REDIS_URL" {
            cmd.env_remove(&name);
        }
    }
    cmd.env("NO_COLOR", "1").stdin(Stdio::null());
    cmd
}

/// Starts the gateway binary `exe` with `serve` and `args` (add `--listen` and the rest),
/// its output discarded, and waits (30 s at most) for the gRPC address it writes to its
/// `--ready-file`.
// The child goes to the caller, who kills and waits for it; clippy cannot follow it
// out of the function.
#[allow(clippy::zombie_processes)]
pub fn binary(exe: &Path, args: &[&str]) -> (Child, SocketAddr) {
    let ready = ready_file("binary");
    let mut child = command(exe)
        .arg("serve")
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the gateway binary runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(addr) = read_ready(&ready) {
            let _ = std::fs::remove_file(&ready);
            return (child, addr);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no ready file within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A path for a `--ready-file` of its own (tests run at once in one process).
pub fn ready_file(tag: &str) -> std::path::PathBuf {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    let n = MADE.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "audit-gateway-{tag}-{}-{n}.ready",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// The gRPC address a gateway started with `--ready-file path` wrote there, waiting up
/// to `limit` for it.
pub async fn ready_addr(path: &Path, limit: Duration) -> SocketAddr {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(addr) = read_ready(path) {
            return addr;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ready file within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gRPC address in a ready file, once it is there.
fn read_ready(path: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    let line: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the ready file is one JSON line ({e}): {text:?}"));
    let addr = line["grpc"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no grpc address in {text:?}"));
    Some(addr)
}
