//! The server around the service: health, reflection, graceful shutdown, the methods
//! not built yet, and the `audit-gateway serve` binary's start-up.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use audit_gateway::{Gateway, GatewayConfig, pb, testing::process};
use confluence_sim::{SimulatorConfig, SimulatorHandle};
use prost::Message;
use tokio::net::TcpStream;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::common::{
    closed_port, plain, sim_and_gateway, spawn_gateway, spawn_simulator, test_config,
};

const AUDIT: &str = "confluence.audit.v1.AuditService";
const HEALTH: &str = "grpc.health.v1.Health";

fn small() -> pb::GetSinceRequest {
    pb::GetSinceRequest {
        limit: Some(5),
        ..Default::default()
    }
}

async fn health_status(client: &mut HealthClient<Channel>, service: &str) -> Result<i32, Code> {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| s.code())
}

/// A gateway in front of an address nothing listens on: enough for everything that
/// never calls Confluence.
async fn idle_gateway(tweak: impl FnOnce(&mut GatewayConfig)) -> crate::common::TestGateway {
    let mut config = test_config(&format!("http://{}/wiki", closed_port().await));
    tweak(&mut config);
    spawn_gateway(config).await
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_audit_service() {
    let gw = idle_gateway(|_| {}).await;
    let mut health = HealthClient::new(gw.channel().await);
    for service in ["", AUDIT] {
        assert_eq!(
            health_status(&mut health, service).await,
            Ok(ServingStatus::Serving as i32),
            "{service:?}"
        );
    }
    assert_eq!(
        health_status(&mut health, "no.such.Service").await,
        Err(Code::NotFound)
    );
    gw.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn reflection_v1_lists_services_and_serves_descriptors() {
    use v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let gw = idle_gateway(|_| {}).await;
    let mut client = ServerReflectionClient::new(gw.channel().await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol(AUDIT.into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection stream")
        .into_inner();

    let listed = answers.message().await.expect("answer").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&AUDIT), "{names:?}");
    assert!(names.contains(&HEALTH), "{names:?}");

    let file = answers.message().await.expect("answer").expect("two");
    let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
        panic!("not a descriptor: {file:?}");
    };
    let protos: Vec<_> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).expect("descriptor"))
        .collect();
    let defining = protos
        .iter()
        .find(|f| {
            f.package() == "confluence.audit.v1"
                && f.service.iter().any(|s| s.name() == "AuditService")
        })
        .unwrap_or_else(|| panic!("no file defines AuditService: {protos:?}"));
    let methods: Vec<_> = defining.service[0]
        .method
        .iter()
        .map(|m| m.name())
        .collect();
    assert!(methods.contains(&"GetSince"), "{methods:?}");
    assert!(
        answers.message().await.expect("end").is_none(),
        "one answer per request"
    );
}

#[tokio::test]
async fn reflection_v1alpha_lists_services() {
    use v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let gw = idle_gateway(|_| {}).await;
    let mut client = ServerReflectionClient::new(gw.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let listed = answers.message().await.expect("answer").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&AUDIT), "{names:?}");
    assert!(names.contains(&HEALTH), "{names:?}");
}

/// Waits (bounded) until the simulator has received `n` audit requests.
async fn upstream_reached(sim: &SimulatorHandle, n: usize) {
    for _ in 0..1000 {
        if sim.request_count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "upstream saw {} requests, expected {n}",
        sim.request_count()
    );
}

#[tokio::test]
async fn graceful_shutdown_drains_then_finishes_in_flight_calls() {
    let (sim, mut gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20,
            latency: Duration::from_millis(500),
            ..Default::default()
        },
        |c| c.server.drain_delay = Duration::from_millis(300),
    )
    .await;
    let addr = gw.addr;
    let mut health = HealthClient::new(gw.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: AUDIT.into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("status").expect("one");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let mut client = gw.client.clone();
    let in_flight = tokio::spawn(async move { client.get_since(small()).await });
    upstream_reached(&sim, 1).await;
    assert!(!in_flight.is_finished(), "the call is still in flight");

    let server = gw.begin_shutdown();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("an update within 5 s of the signal")
        .expect("status")
        .expect("an update");
    assert_eq!(
        next.status,
        ServingStatus::NotServing as i32,
        "watchers hear NOT_SERVING at the signal"
    );
    assert_eq!(
        health_status(&mut health, "").await,
        Ok(ServingStatus::NotServing as i32)
    );
    assert_eq!(
        health_status(&mut health, AUDIT).await,
        Ok(ServingStatus::NotServing as i32)
    );
    // A watch never ends on its own: hang it up so the server can finish.
    drop(watch);
    drop(health);

    let page = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight call ends within 10 s")
        .expect("task did not panic")
        .expect("the in-flight call completes")
        .into_inner();
    assert_eq!(page.results.len(), 5);

    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops within 10 s")
        .expect("server task did not panic");
    result.expect("the server stops cleanly");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "new connections are refused once the server returned"
    );
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn connections_are_accepted_during_the_drain_delay_only() {
    let mut gw = idle_gateway(|c| c.server.drain_delay = Duration::from_millis(300)).await;
    let addr = gw.addr;
    let started = Instant::now();
    let server = gw.begin_shutdown();
    // Still draining: a new connection is accepted and told NOT_SERVING.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("accepted while draining");
    let mut health = HealthClient::new(channel);
    assert_eq!(
        health_status(&mut health, "").await,
        Ok(ServingStatus::NotServing as i32)
    );
    drop(health);
    drop(gw);
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops within 10 s")
        .expect("server task did not panic");
    result.expect("the server stops cleanly");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the drain delay was waited: {:?}",
        started.elapsed()
    );
    assert!(TcpStream::connect(addr).await.is_err(), "refused after");
}

#[tokio::test]
async fn the_shutdown_timeout_bounds_a_call_that_never_ends() {
    // A call held up by an upstream that takes a minute to answer.
    let sim = spawn_simulator(SimulatorConfig {
        latency: Duration::from_secs(60),
        ..Default::default()
    })
    .await;
    let mut config = test_config(&sim.base_url());
    config.server.shutdown_timeout = Duration::from_millis(300);
    let mut gw = spawn_gateway(config).await;
    let mut client = gw.client.clone();
    let call = tokio::spawn(async move { client.get_since(pb::GetSinceRequest::default()).await });
    for _ in 0..200 {
        if sim.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sim.request_count(), 1, "the call is in flight");
    let started = Instant::now();
    let server = gw.begin_shutdown();
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the shutdown timeout is honoured")
        .expect("server task did not panic");
    result.expect("the server stops cleanly");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "in-flight calls were given the timeout: {:?}",
        started.elapsed()
    );
    call.abort();
}

#[tokio::test]
async fn health_watches_end_at_shutdown_instead_of_holding_it() {
    let mut gw = idle_gateway(|c| {
        c.server.shutdown_timeout = Duration::from_secs(30);
        c.server.drain_delay = Duration::from_millis(100);
    })
    .await;
    let mut health = HealthClient::new(gw.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("status").expect("one");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let started = Instant::now();
    let server = gw.begin_shutdown();
    let next = watch.message().await.expect("status").expect("an update");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    assert!(
        watch.message().await.expect("clean end").is_none(),
        "the watch ends"
    );
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops without waiting for the watch")
        .expect("server task did not panic");
    result.expect("the server stops cleanly");
    assert!(started.elapsed() < Duration::from_secs(10));
}

// --- the binary -------------------------------------------------------------------------

/// `audit-gateway serve …` with no CONFLUENCE_* or AUDIT_GATEWAY_* settings inherited.
fn gateway_command(args: &[&str]) -> Command {
    let mut cmd = crate::common::binary();
    cmd.env("RUST_LOG", "info")
        // Loopback unless a test says otherwise: only loopback may serve without callers'
        // tokens.
        .env("AUDIT_GATEWAY_LISTEN", "127.0.0.1:0")
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Waits for `child` to exit, killing it and failing after `limit`.
fn exit_within(child: &mut Child, limit: Duration) -> ExitStatus {
    process::exit_within(child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("audit-gateway still running after {limit:?}");
    })
}

/// Runs `serve` with `args` expecting a quick failure; returns its stderr.
fn failing_serve(args: &[&str]) -> String {
    let mut child = gateway_command(args).spawn().expect("binary runs");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).expect("stderr");
        s
    });
    let status = exit_within(&mut child, Duration::from_secs(10));
    let stderr = reader.join().expect("reader");
    assert!(!status.success(), "{args:?} exited {status}: {stderr}");
    stderr
}

#[test]
fn serve_rejects_wrong_settings_naming_them() {
    let url = "http://127.0.0.1:9/wiki";
    let cases: [(&[&str], &str); 5] = [
        (&["--confluence-url", "ftp://x"], "--confluence-url"),
        (
            &["--confluence-url", "http://x/wiki/rest/api/audit/since"],
            "--confluence-url",
        ),
        (
            &["--confluence-url", url, "--cache-ttl", "soon"],
            "--cache-ttl",
        ),
        (
            &[
                "--confluence-url",
                url,
                "--confluence-email",
                "a@example.com",
            ],
            "--confluence-api-token",
        ),
        (
            &["--confluence-url", url, "--upstream-retries", "11"],
            "--upstream-retries",
        ),
    ];
    for (args, setting) in cases {
        let stderr = failing_serve(args);
        assert!(
            stderr.contains(setting),
            "{args:?}: stderr does not name {setting}: {stderr}"
        );
    }
    let stderr = failing_serve(&[]);
    assert!(stderr.contains("--confluence-url"), "{stderr}");
}

#[test]
fn serve_is_secure_by_default() {
    // Reachable from other hosts with no way to tell callers apart: refused, naming why.
    let stderr = failing_serve(&[
        "--confluence-url",
        "http://127.0.0.1:9/wiki",
        "--listen",
        "0.0.0.0:0",
    ]);
    assert!(
        stderr.contains("--listen") && stderr.contains("--caller-tokens-file"),
        "{stderr}"
    );
    // A plain-HTTP Confluence elsewhere: the credential would cross the network in clear.
    let stderr = failing_serve(&["--confluence-url", "http://confluence.example.com/"]);
    assert!(
        stderr.contains("--confluence-url") && stderr.contains("https"),
        "{stderr}"
    );
    // A short salt.
    let stderr = failing_serve(&[
        "--confluence-url",
        "http://127.0.0.1:9/wiki",
        "--credential-salt",
        "short",
    ]);
    assert!(stderr.contains("--credential-salt"), "{stderr}");
}

#[test]
fn serve_reports_a_listen_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("bound").to_string();
    let stderr = failing_serve(&[
        "--confluence-url",
        "http://127.0.0.1:9/wiki",
        "--listen",
        &addr,
    ]);
    assert!(stderr.contains("--listen"), "{stderr}");
}

/// The child's stderr lines, read on a thread.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(plain(&line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `audit-gateway serve` on port 0, once it has logged its "listening" line (returned).
fn serving_binary() -> (KillOnDrop, String) {
    let (child, mut lines) = serving_binary_with(&["--listen", "127.0.0.1:0"]);
    let listening = lines.pop().expect("the 'listening' line");
    (child, listening)
}

/// `audit-gateway serve` with `args` in front of a closed port, once it has logged its
/// "listening" line: every line it logged, that one last.
fn serving_binary_with(args: &[&str]) -> (KillOnDrop, Vec<String>) {
    let mut child = KillOnDrop(
        gateway_command(&[&["--confluence-url", "http://127.0.0.1:9/wiki"], args].concat())
            .spawn()
            .expect("binary runs"),
    );
    let lines = stderr_lines(&mut child.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("a 'listening' line within 10 s ({e}): {seen:?}"));
        let listening = line.contains("listening");
        seen.push(line);
        if listening {
            return (child, seen);
        }
    }
}

#[test]
fn serve_on_a_reachable_address_needs_a_salt_or_says_tokens_are_ephemeral() {
    // Callers are accounted for; a random key per process is not, by default.
    let stderr = failing_serve(&[
        "--confluence-url",
        "http://127.0.0.1:9/wiki",
        "--listen",
        "0.0.0.0:0",
        "--allow-unauthenticated",
    ]);
    assert!(
        stderr.contains("--credential-salt") && stderr.contains("--allow-ephemeral-tokens"),
        "{stderr}"
    );
    // Said explicitly: it serves, and warns that tokens and checkpoints die with it.
    let (_child, lines) = serving_binary_with(&[
        "--listen",
        "0.0.0.0:0",
        "--allow-unauthenticated",
        "--allow-ephemeral-tokens",
    ]);
    let warning = lines
        .iter()
        .find(|l| l.contains("no --credential-salt"))
        .unwrap_or_else(|| panic!("no warning about the salt in {lines:?}"));
    let event: serde_json::Value =
        serde_json::from_str(warning).unwrap_or_else(|e| panic!("not JSON: {warning:?}: {e}"));
    assert_eq!(event["level"], "WARN", "{warning}");
    assert!(warning.contains("checkpoints"), "{warning}");
}

#[test]
fn serve_on_loopback_without_a_salt_warns_that_checkpoints_die_with_it() {
    let (_child, lines) = serving_binary_with(&["--listen", "127.0.0.1:0"]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"WARN\"") && l.contains("follow checkpoints")),
        "{lines:?}"
    );
    let salt = "a salt of sixteen or more";
    let (_child, lines) =
        serving_binary_with(&["--listen", "127.0.0.1:0", "--credential-salt", salt]);
    assert!(
        !lines.iter().any(|l| l.contains("no --credential-salt")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn serve_logs_the_bound_address_and_serves_there() {
    let (_child, line) = serving_binary();
    // stderr is a pipe here, so the log is JSON, one object per line, by default.
    let event: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["message"], "audit-gateway listening", "{line}");
    let addr: SocketAddr = event["addr"]
        .as_str()
        .unwrap_or_else(|| panic!("no addr in {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the bound port, not the requested one");

    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("the logged address serves");
    let mut health = HealthClient::new(channel);
    assert_eq!(
        health_status(&mut health, "").await,
        Ok(ServingStatus::Serving as i32)
    );
}

#[cfg(unix)]
#[tokio::test]
async fn serve_exits_cleanly_on_sigterm() {
    // Once `serving_binary` returns, nobody reads the gateway's stderr any more: the log
    // lines of its shutdown hit a closed pipe, which must not make it crash.
    let (mut child, _) = serving_binary();
    process::terminate(&child.0);
    let status = exit_within(&mut child.0, Duration::from_secs(10));
    assert!(status.success(), "exit after SIGTERM: {status}");
}

/// The value of the first sample of `series` in an exposition, 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text_format() {
    let mut config = test_config(&format!("http://{}/wiki", closed_port().await));
    config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.upstream.retries = 0;
    let gateway = Gateway::bind(config).await.expect("valid settings");
    let addr = gateway.metrics_addr().expect("metrics are served");
    assert_ne!(addr.port(), 0, "the bound port, not the requested one");
    let grpc = gateway.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let scrape = || async {
        let response = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("scrape");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with("application/openmetrics-text"),
        );
        String::from_utf8(response.bytes().await.expect("body").to_vec()).expect("utf-8")
    };
    let unavailable = "audit_gateway_grpc_server_handled_total{grpc_method=\"GetSince\",grpc_code=\"UNAVAILABLE\"}";
    let before = sample(&scrape().await, unavailable);
    // One call, which fails: Confluence's port is closed.
    let mut client =
        pb::audit_service_client::AuditServiceClient::connect(format!("http://{grpc}"))
            .await
            .expect("connect");
    let status = client.get_since(small()).await.expect_err("no Confluence");
    assert_eq!(status.code(), Code::Unavailable);
    let text = scrape().await;
    assert!(
        text.contains("# TYPE audit_gateway_page_requests counter"),
        "{text}"
    );
    assert_eq!(sample(&text, unavailable), before + 1.0, "{text}");
    assert!(
        sample(
            &text,
            "audit_gateway_upstream_failures_total{reason=\"UPSTREAM_UNAVAILABLE\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &text,
            "audit_gateway_upstream_requests_total{status=\"error\"}"
        ) >= 1.0
    );
    assert!(
        text.contains("audit_gateway_grpc_server_handling_seconds_bucket{le="),
        "a latency histogram: {text}"
    );
    assert!(!text.contains("Bearer"), "no credential in metrics");
    let other = reqwest::get(format!("http://{addr}/other"))
        .await
        .expect("404");
    assert_eq!(other.status().as_u16(), 404);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the gateway stops within 10 s")
        .expect("server task did not panic")
        .expect("the gateway stops cleanly");
}

#[tokio::test]
async fn the_gateway_reports_how_far_confluences_clock_is_off() {
    // Confluence's clock 5 s behind the host's.
    let sim = spawn_simulator(SimulatorConfig {
        records: 20,
        clock_offset: -5000,
        ..Default::default()
    })
    .await;
    let mut config = test_config(&sim.base_url());
    config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    // Every call reaches Confluence, so each answer's Date is seen.
    config.cache.ttl = Duration::ZERO;
    let mut gw = spawn_gateway(config).await;
    let addr = gw.metrics.expect("metrics are served");
    let scrape = || async {
        let response = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("scrape");
        let text = String::from_utf8(response.bytes().await.expect("body").to_vec());
        text.expect("utf-8")
    };
    let offset = "audit_gateway_confluence_clock_offset_seconds";
    let text = scrape().await;
    assert!(text.contains(&format!("# TYPE {offset} gauge")), "{text}");
    assert_eq!(sample(&text, offset), 0.0, "nothing seen yet: 0");
    for _ in 0..5 {
        gw.client.get_since(small()).await.expect("a page");
    }
    assert_eq!(sim.request_count(), 5);
    let seen = sample(&scrape().await, offset);
    // Each Date says the second only; the estimate is within it (and the round trip).
    assert!((-5.6..=-4.4).contains(&seen), "{seen} s, not about -5 s");
    gw.shutdown().await.expect("the gateway stops cleanly");
}

/// `--ready-file`: once bound, the binary writes where it listens as one JSON line, so a
/// script that starts it on port 0 learns its address without reading its log.
#[tokio::test]
async fn the_ready_file_says_where_the_binary_listens() {
    let ready = std::env::temp_dir().join(format!("audit-gateway-ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let ready_arg = ready.to_string_lossy().into_owned();
    let _child = KillOnDrop(
        gateway_command(&[
            "--confluence-url",
            "http://127.0.0.1:9/wiki",
            "--metrics-listen",
            "127.0.0.1:0",
            "--ready-file",
            &ready_arg,
        ])
        .spawn()
        .expect("binary runs"),
    );
    let addr = crate::common::ready_addr(&ready, Duration::from_secs(20)).await;
    let text = std::fs::read_to_string(&ready).expect("written");
    let line: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let metrics: SocketAddr = line["metrics"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the metrics address in {text:?}"));
    assert!(addr.port() != 0 && metrics.port() != 0, "{text}");
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("it listens where it said");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let _ = std::fs::remove_file(&ready);
}
