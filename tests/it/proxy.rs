//! The gateway behind a real L7 proxy: nginx (`grpc_pass`) in front of two `audit-gateway
//! serve` processes sharing a `redis-server` and a credential salt, the first the primary,
//! the second nginx's backup. SIGTERM to the replica serving an open `StreamSince` or
//! `Follow` call must end that call at the client with UNAVAILABLE after whole messages —
//! not a cut HTTP/2 stream, which nginx resets (RST_STREAM INTERNAL_ERROR: tonic's
//! INTERNAL "h2 protocol error") — and the call resumed through nginx, now failing over to
//! the other replica, must deliver every record exactly once and in order.
//!
//! Needs `redis-server` and `nginx` (on PATH or in /usr/sbin); scripts/test installs both
//! on Debian.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use audit_gateway::{
    pb::{self, audit_service_client::AuditServiceClient},
    testing::{nginx::Nginx, process, redis::RedisServer},
};
use confluence_sim::SimulatorConfig;
use tonic::{Code, Status, Streaming, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::common::{live_log, now_ms, plain, seq, spawn_simulator};

/// The salt both replicas share, so each accepts the other's resume tokens and checkpoints.
const SALT: &str = "proxy-tests-salt-shared-by-replicas";

/// How long a replica reports NOT_SERVING before it refuses connections and ends streams.
const DRAIN_DELAY: &str = "300ms";

// --- the processes ----------------------------------------------------------------------

/// An `audit-gateway serve` process on a port of its own, its stderr kept line by line (the
/// test waits on what it logs), killed on drop.
struct Replica {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    /// Starts a replica in front of `confluence`, sharing `redis` and [`SALT`], and waits
    /// for the address it writes to its `--ready-file` once bound.
    async fn start(name: &'static str, confluence: &str, redis: &RedisServer) -> Self {
        let ready = audit_gateway::testing::harness::ready_file(name);
        let mut child = crate::common::binary()
            .env("RUST_LOG", "info")
            // The test reads the shutdown steps from text log lines.
            .env("AUDIT_GATEWAY_LOG_FORMAT", "text")
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--confluence-url", confluence])
            .args(["--redis-url", &redis.url(), "--credential-salt", SALT])
            .args(["--drain-delay", DRAIN_DELAY, "--shutdown-timeout", "20s"])
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the audit-gateway binary runs");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        // Read to the end, so the replica never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().expect("log").push(plain(&line));
            }
        });
        let mut replica = Self {
            name,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            log,
        };
        replica.addr = crate::common::ready_addr(&ready, Duration::from_secs(20)).await;
        let _ = std::fs::remove_file(&ready);
        replica
    }

    /// The first log line holding `needle`, waiting up to `limit` for it.
    async fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .expect("log")
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!(
                    "replica {} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "replica {} did not log {needle:?} within {limit:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// SIGTERM, then waits until the replica has ended open streams and refuses new
    /// connections (its log says so: the drain delay is over).
    async fn terminate_and_wait_for_drain(&mut self) {
        process::terminate(&self.child);
        self.wait_for_log("refusing new connections", Duration::from_secs(10))
            .await;
    }

    /// Waits for the process to exit after SIGTERM; it must exit cleanly.
    async fn wait_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(25);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} still running 25 s after SIGTERM:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            status.success(),
            "replica {} exited with {status}:\n{}",
            self.name,
            self.log_text()
        );
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx in front of `primary` with `backup` as its backup server, logging each gRPC
/// call's upstreams and statuses.
struct Proxy(Nginx);

impl Proxy {
    async fn start(label: &str, primary: SocketAddr, backup: SocketAddr) -> Self {
        // `listen … http2` rather than `http2 on;`: the latter needs nginx 1.25.1, and
        // Debian 12 ships 1.22 (newer versions accept both, warning about this one). A
        // plain-text HTTP/2 listener takes prior-knowledge h2c, which is what gRPC clients
        // speak. Without `keepalive` in the upstream block, each call gets a connection
        // of its own to the gateway, so a stopped replica's GOAWAY concerns that call only.
        // `$upstream_trailer_grpc_status` is what the gateway sent in its trailers,
        // `$upstream_http_grpc_status` a trailers-only answer's: the access log shows both.
        let nginx = Nginx::start(label, |port, dir| {
            let d = dir.display();
            format!(
                r#"    log_format grpc '$request_uri upstream=$upstream_addr status=$status upstream_status=$upstream_status grpc_status=$upstream_trailer_grpc_status/$upstream_http_grpc_status grpc_message="$upstream_trailer_grpc_message" sent=$body_bytes_sent';
    access_log {d}/access.log grpc;
    upstream backend {{
        server {primary} max_fails=1 fail_timeout=60s;
        server {backup} backup;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://backend;
            grpc_read_timeout 300s;
            grpc_send_timeout 300s;
        }}
    }}"#
            )
        })
        .await;
        Self(nginx)
    }

    fn file(&self, name: &str) -> String {
        self.0.file(name)
    }

    /// The access log's lines for calls of `method`, waiting until there are `n` (nginx
    /// writes a call's line once it has finished it, just after the client's last frame).
    async fn access_lines(&self, method: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<String> = self
                .file("access.log")
                .lines()
                .filter(|l| l.contains(&format!("/{method} ")))
                .map(str::to_owned)
                .collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A client through nginx, once nginx reaches a serving gateway.
    async fn client(&self) -> AuditServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", self.0.port()))
            .expect("uri")
            .connect()
            .await
            .expect("nginx reachable");
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: pb::SERVICE_NAME.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health through nginx: {e:?}\n{}", self.file("error.log")))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32);
        AuditServiceClient::new(channel)
    }

    /// What nginx logged, for a failing assertion's message or the test's output.
    fn logs(&self) -> String {
        format!(
            "--- nginx access.log\n{}--- nginx error.log (notices and above)\n{}",
            self.file("access.log"),
            self.file("error.log")
                .lines()
                .filter(|l| !l.contains("[info]"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

/// Everything a test runs against: Redis, the simulator, replicas A (nginx's primary) and
/// B (its backup), and nginx. Dropped in reverse order: nginx first.
struct Setup {
    sim: confluence_sim::SimulatorHandle,
    _redis: RedisServer,
    a: Replica,
    b: Replica,
    nginx: Proxy,
}

async fn setup(label: &str, sim: SimulatorConfig) -> Setup {
    let redis = RedisServer::start().await;
    let sim = spawn_simulator(sim).await;
    let a = Replica::start("A", &sim.base_url(), &redis).await;
    let b = Replica::start("B", &sim.base_url(), &redis).await;
    let nginx = Proxy::start(label, a.addr, b.addr).await;
    Setup {
        sim,
        _redis: redis,
        a,
        b,
        nginx,
    }
}

/// The `upstream=` field of an access log line: the gateways nginx tried, in order.
fn upstreams(line: &str) -> String {
    line.split(" upstream=")
        .nth(1)
        .and_then(|rest| rest.split(" status=").next())
        .unwrap_or_else(|| panic!("no upstream= in {line:?}"))
        .to_owned()
}

/// Reports how a call ended at the client and checks that it is the gateway's shutdown:
/// UNAVAILABLE with reason SHUTTING_DOWN, not a cut stream.
fn assert_shutting_down(end: &Status, what: &str, nginx: &Proxy) {
    let info = end.get_details_error_info();
    eprintln!(
        "{what}: at SIGTERM, the client through nginx saw code {:?}, message {:?}, \
         ErrorInfo {:?}",
        end.code(),
        end.message(),
        info.as_ref().map(|i| (&i.reason, &i.domain)),
    );
    assert_eq!(end.code(), Code::Unavailable, "{end:?}\n{}", nginx.logs());
    assert_eq!(
        info.map(|i| i.reason).as_deref(),
        Some("SHUTTING_DOWN"),
        "{end:?}"
    );
}

// --- StreamSince --------------------------------------------------------------------------

const STREAM_RECORDS: usize = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_stream_ends_with_unavailable_at_sigterm_and_resumes_on_the_backup_once() {
    let mut t = setup(
        "stream",
        SimulatorConfig {
            records: STREAM_RECORDS,
            // Groups of up to 4 records in one millisecond, listed in a new order by every
            // request: the resume must stand at a boundary inside a tie group correctly.
            ties: 4,
            latency: Duration::from_millis(2),
            ..Default::default()
        },
    )
    .await;
    let mut client = t.nginx.client().await;
    let window = |resume_token: String| pb::StreamSinceRequest {
        page_size: Some(100),
        resume_token,
        ..Default::default()
    };
    let mut s = client
        .stream_since(window(String::new()))
        .await
        .expect("stream opens through nginx")
        .into_inner();
    // (date, seq) of every record received, in arrival order, and the last token.
    let mut got: Vec<(i64, u64)> = Vec::new();
    let mut token = String::new();
    let take = |m: pb::StreamSinceResponse, got: &mut Vec<(i64, u64)>, token: &mut String| {
        assert!(!m.resume_token.is_empty(), "every message has a token");
        assert!(m.records.len() <= 100, "page_size bounds a message");
        got.extend(m.records.iter().map(|r| (r.creation_date, seq(r))));
        *token = m.resume_token;
    };
    for _ in 0..10 {
        let m = s.message().await.expect("no error").expect("a message");
        take(m, &mut got, &mut token);
    }
    // The client reads nothing now, so most of the window is still to come when A stops:
    // its producer waits on a full channel and full HTTP/2 windows. SIGTERM, and wait
    // until A's drain delay is over (it then ends streams and refuses connections).
    t.a.terminate_and_wait_for_drain().await;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .expect("the stream ends within 30 s of the drain")
        {
            Ok(Some(m)) => take(m, &mut got, &mut token),
            Ok(None) => panic!(
                "the stream ended with OK after {} of {STREAM_RECORDS} records",
                got.len()
            ),
            Err(status) => break status,
        }
    };
    let at_sigterm = got.len();
    eprintln!("stream: {at_sigterm} records delivered by A");
    assert_shutting_down(&end, "stream", &t.nginx);
    assert!(
        at_sigterm < STREAM_RECORDS,
        "the window was not over at SIGTERM"
    );
    t.a.wait_exit().await;
    let first = t.nginx.access_lines("StreamSince", 1).await;
    assert_eq!(
        upstreams(&first[0]),
        t.a.addr.to_string(),
        "A served the stream"
    );

    // Resume through nginx: A refuses connections now, so nginx fails over to B.
    let mut s = client
        .stream_since(window(token.clone()))
        .await
        .unwrap_or_else(|e| panic!("resume through nginx: {e:?}\n{}", t.nginx.logs()))
        .into_inner();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .expect("a message within 30 s")
        {
            Ok(Some(m)) => take(m, &mut got, &mut token),
            Ok(None) => break,
            Err(status) => panic!("the resumed stream failed: {status:?}\n{}", t.nginx.logs()),
        }
    }
    let lines = t.nginx.access_lines("StreamSince", 2).await;
    eprintln!("{}", lines.join("\n"));
    assert!(
        upstreams(&lines[1]).ends_with(&t.b.addr.to_string()),
        "B served the resumed stream: {}",
        lines[1]
    );

    // Every record of the window once, newest first.
    assert!(
        got.windows(2).all(|w| w[0].0 >= w[1].0),
        "dates must not increase"
    );
    let mut want = t.sim.expected_records(i64::MIN, i64::MAX);
    assert_eq!(want.len(), STREAM_RECORDS);
    want.sort_unstable();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    let mut seqs: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        got.len(),
        "a record was delivered twice ({} records, {} distinct)",
        got.len(),
        seqs.len()
    );
    assert_eq!(sorted, want, "not exactly the window's records");
}

// --- Follow -----------------------------------------------------------------------------

fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A follow request polling every second with `lag`.
fn follow_request(from: pb::follow_request::From, lag: Duration) -> pb::FollowRequest {
    pb::FollowRequest {
        from: Some(from),
        poll_interval: Some(dur(Duration::from_secs(1))),
        lag: Some(dur(lag)),
        ..Default::default()
    }
}

/// What a follower's consumer keeps: records as (date, seq) in arrival order, and its
/// checkpoint.
#[derive(Default)]
struct Consumer {
    got: Vec<(i64, u64)>,
    checkpoint: String,
}

impl Consumer {
    /// Keeps `m`'s records and checkpoint; whether it was a heartbeat (no records).
    fn take(&mut self, m: pb::FollowResponse) -> bool {
        assert!(!m.checkpoint.is_empty(), "every message has a checkpoint");
        self.got
            .extend(m.records.iter().map(|r| (r.creation_date, seq(r))));
        self.checkpoint = m.checkpoint;
        m.records.is_empty()
    }
}

/// The next message of a follower, within a bound (a follower never ends by itself).
async fn next(s: &mut Streaming<pb::FollowResponse>) -> Result<Option<pb::FollowResponse>, Status> {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("a message (or heartbeat) within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_follower_ends_with_unavailable_at_sigterm_and_resumes_on_the_backup_once() {
    let mut t = setup(
        "follow",
        SimulatorConfig {
            latency: Duration::from_millis(2),
            ..live_log(17)
        },
    )
    .await;
    let mut client = t.nginx.client().await;
    let lag = Duration::from_millis(500);
    // Two hours back (about 3,700 of the initial records, 5 s apart in groups of up to 4),
    // so the follower backfills, then tails the live log.
    let start = now_ms() - 2 * 3600 * 1000;
    let mut consumer = Consumer::default();
    let mut s = client
        .follow(follow_request(
            pb::follow_request::From::Since(timestamp(start)),
            lag,
        ))
        .await
        .expect("follow starts through nginx")
        .into_inner();
    for _ in 0..3 {
        let m = next(&mut s).await.expect("no error").expect("no end");
        consumer.take(m);
    }
    process::terminate(&t.a.child);
    // The follower keeps delivering during A's drain delay, then ends.
    let end = loop {
        match next(&mut s).await {
            Ok(Some(m)) => {
                consumer.take(m);
            }
            Ok(None) => panic!("a follower must not end with OK at shutdown"),
            Err(status) => break status,
        }
    };
    eprintln!("follow: {} records delivered by A", consumer.got.len());
    assert_shutting_down(&end, "follow", &t.nginx);
    t.a.wait_exit().await;
    let first = t.nginx.access_lines("Follow", 1).await;
    assert_eq!(
        upstreams(&first[0]),
        t.a.addr.to_string(),
        "A served the follower"
    );

    // Resume from the checkpoint through nginx, which fails over to B; stop the live log
    // and read until it is settled (a heartbeat past stop + lag + a margin for late ones).
    let stop_at = now_ms() + 1_500;
    t.sim.stop_live_at(stop_at);
    let settled_by = stop_at + lag.as_millis() as i64 + 2_500;
    let mut s = client
        .follow(follow_request(
            pb::follow_request::From::Checkpoint(consumer.checkpoint.clone()),
            lag,
        ))
        .await
        .unwrap_or_else(|e| panic!("resume through nginx: {e:?}\n{}", t.nginx.logs()))
        .into_inner();
    loop {
        let m = next(&mut s)
            .await
            .unwrap_or_else(|e| panic!("the resumed follower failed: {e:?}\n{}", t.nginx.logs()))
            .expect("no end");
        if consumer.take(m) && now_ms() > settled_by {
            break;
        }
    }
    drop(s);
    let lines = t.nginx.access_lines("Follow", 2).await;
    eprintln!("{}", lines.join("\n"));
    // The resumed call is still open for nginx until it sees the cancel; its line may be
    // missing, so only check it when it is there.
    if let Some(line) = lines.get(1) {
        assert!(
            upstreams(line).ends_with(&t.b.addr.to_string()),
            "B served the resumed follower: {line}"
        );
    }

    // Exactly the records created since `start`, in creationDate order.
    let want = t.sim.expected_records(start, stop_at);
    assert!(want.len() > 1000, "a backfill and live records");
    crate::common::assert_exactly_once(&consumer.got, want);
}
