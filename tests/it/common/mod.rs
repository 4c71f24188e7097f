//! Test harness: a gateway on port 0 in front of a real HTTP upstream (the simulator, or
//! a stub that answers fixed bodies), called through the generated tonic client.

use std::{net::SocketAddr, time::Duration};

use audit_gateway::{
    GatewayConfig, ServeError,
    pb::{self, audit_service_client::AuditServiceClient},
    testing::harness,
};
use confluence_sim::{Live, SimulatorConfig, SimulatorHandle};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::transport::Channel;

/// A running gateway (`audit_gateway::testing::harness`, the harness the benches use too)
/// and a client connected to it.
pub struct TestGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client over loopback.
    pub client: AuditServiceClient<Channel>,
    /// Where it serves `/metrics`, with `metrics_listen` set.
    pub metrics: Option<SocketAddr>,
    /// Where it serves HTTP/JSON, with `http_listen` set.
    pub http: Option<SocketAddr>,
    running: harness::InProcess,
}

impl TestGateway {
    /// A client with small HTTP/2 windows, so unread messages are not absorbed by its
    /// receive buffers (2 MiB by default) and the gateway must hold back.
    pub async fn small_window_client(&self) -> AuditServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .initial_stream_window_size(Some(65_535))
            .initial_connection_window_size(Some(65_535))
            .connect()
            .await
            .expect("connect");
        AuditServiceClient::new(channel)
    }

    /// A new channel to the gateway.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("valid uri")
            .connect()
            .await
            .expect("gateway reachable")
    }

    /// Sends the shutdown signal and waits for the server to return.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.running.shutdown().await
    }

    /// Sends the shutdown signal without waiting; returns the server task.
    pub fn begin_shutdown(&mut self) -> JoinHandle<Result<(), ServeError>> {
        self.running.begin_shutdown()
    }
}

/// A gateway configuration in front of `confluence_url` for fast tests: port 0 on
/// loopback, short backoffs; tests change its fields.
pub fn test_config(confluence_url: &str) -> GatewayConfig {
    let mut config = harness::loopback(confluence_url);
    config.upstream.backoff = Duration::from_millis(10);
    config.upstream.max_backoff = Duration::from_secs(2);
    config.upstream.timeout = Duration::from_secs(5);
    config
}

/// Starts a gateway with `config` (through `Gateway`, as `main` does) and connects a
/// client to it.
pub async fn spawn_gateway(config: GatewayConfig) -> TestGateway {
    let running = harness::InProcess::start(config).await;
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .expect("valid uri")
        .connect()
        .await
        .expect("gateway reachable");
    TestGateway {
        addr: running.addr,
        client: AuditServiceClient::new(channel),
        metrics: running.metrics,
        http: running.http,
        running,
    }
}

/// Starts a simulator on port 0.
pub async fn spawn_simulator(config: SimulatorConfig) -> SimulatorHandle {
    harness::simulator(config).await
}

/// A simulator and a gateway in front of it, its `test_config` changed by `tweak`.
pub async fn sim_and_gateway(
    config: SimulatorConfig,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> (SimulatorHandle, TestGateway) {
    let sim = spawn_simulator(config).await;
    let mut gateway = test_config(&sim.base_url());
    tweak(&mut gateway);
    let gw = spawn_gateway(gateway).await;
    (sim, gw)
}

/// The simulator's request count once it stops moving (looked at every 30 ms, for 1.5 s
/// at most).
pub async fn requests_once_still(sim: &SimulatorHandle) -> usize {
    let mut last = sim.request_count();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let now = sim.request_count();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

pub use audit_gateway::testing::stub::{Canned, StubUpstream};

/// The `audit-gateway` binary as a command with no gateway settings inherited from the
/// environment (`harness::command`).
pub fn binary() -> std::process::Command {
    harness::command(std::path::Path::new(env!("CARGO_BIN_EXE_audit-gateway")))
}
pub use harness::ready_addr;

/// An address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("bound")
}

/// Atlassian's sample 200 body for `GET /wiki/rest/api/audit/since` (tests/fixtures).
pub fn atlassian_sample() -> &'static [u8] {
    include_bytes!("../../fixtures/atlassian-audit-since-sample.json")
}

/// Strips ANSI escape sequences from a log line, should the log be coloured anyway.
pub fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The simulator's sequence number of a record (its summary ends with `#<seq>`).
pub fn seq(r: &pb::AuditRecord) -> u64 {
    r.summary
        .rsplit_once('#')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("no sequence number in {:?}", r.summary))
}

/// Every record of a whole `StreamSince` call, in order; the stream must end OK.
pub async fn stream_records(
    client: &mut AuditServiceClient<Channel>,
    req: pb::StreamSinceRequest,
) -> Vec<pb::AuditRecord> {
    let mut s = client
        .stream_since(req)
        .await
        .expect("stream opens")
        .into_inner();
    let mut records = Vec::new();
    while let Some(m) = s.message().await.expect("the stream ends OK") {
        records.extend(m.records);
    }
    records
}

/// Now, epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Asserts that `got` (records as (`creationDate`, sequence number), in arrival order)
/// holds every record of `want` exactly once, as a multiset, and that dates never go back.
pub fn assert_exactly_once(got: &[(i64, u64)], want: Vec<(i64, u64)>) {
    assert!(
        got.windows(2).all(|w| w[0].0 <= w[1].0),
        "records out of creationDate order"
    );
    // The multiset differences, both ways.
    let mut left: std::collections::HashMap<(i64, u64), i64> = std::collections::HashMap::new();
    for r in &want {
        *left.entry(*r).or_default() += 1;
    }
    for r in got {
        *left.entry(*r).or_default() -= 1;
    }
    let mut missing: Vec<_> = left
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, _)| *r)
        .collect();
    let mut repeated: Vec<_> = left
        .iter()
        .filter(|(_, n)| **n < 0)
        .map(|(r, _)| *r)
        .collect();
    missing.sort_unstable();
    repeated.sort_unstable();
    assert!(
        missing.is_empty() && repeated.is_empty(),
        "delivered {} records, expected {}; {} missing, e.g. {:?}; {} too many, e.g. {:?}",
        got.len(),
        want.len(),
        missing.len(),
        &missing[..missing.len().min(5)],
        repeated.len(),
        &repeated[..repeated.len().min(5)],
    );
}

pub use audit_gateway::testing::process::{Finished, finish_within};

/// A live log: bursts sharing a millisecond, listed in a new order by every request,
/// byte-identical duplicates, and a third of new records visible only up to 300 ms late.
pub fn live_log(seed: u64) -> SimulatorConfig {
    SimulatorConfig {
        records: 3000,
        seed,
        ties: 4,
        duplicate_every: 9,
        live: Some(Live {
            per_second: 150.0,
            burst: 6,
        }),
        late_share: 0.3,
        late_by: Duration::from_millis(300),
        ..Default::default()
    }
}
