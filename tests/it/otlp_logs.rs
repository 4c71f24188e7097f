//! `follow --otlp-logs-endpoint` end to end: records reach a real OTLP `LogsService`
//! receiver (the collector's, from the published protos) as log records, every one of
//! them, while the receiver is killed and restarted on its port and the shipper is
//! killed and restarted; a duplicate may only come from a batch whose acknowledgement a
//! kill may have lost. A refusal ends the command with its status and no checkpoint.

use std::{
    collections::HashMap,
    net::{Shutdown, SocketAddr},
    path::Path,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use audit_gateway::testing::process::{self, TempDir};
use confluence_sim::SimulatorConfig;
use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    logs::v1::LogRecord,
};
use serde_json::{Map, Value as Json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status};

use crate::common::{Finished, finish_within, live_log, now_ms, sim_and_gateway};

/// One Export the receiver recorded, before it answered.
struct Batch {
    /// The receiver's life (0, 1, …) that recorded it.
    life: u32,
    request: ExportLogsServiceRequest,
}

/// What every life of the receiver shares.
#[derive(Default)]
struct Recorded {
    /// The life now serving; a handler of an older one records nothing.
    life: u32,
    batches: Vec<Batch>,
    /// Batches whose acknowledgement a kill may have lost (the shipper has at most one
    /// batch unacknowledged or acknowledged but not checkpointed: the last one recorded).
    ack_maybe_lost: Vec<usize>,
    /// What the receiver answers; `None`: success.
    refuse: Option<tonic::Code>,
}

/// The receiver's service for one life.
#[derive(Clone)]
struct Receiver {
    life: u32,
    shared: Arc<Mutex<Recorded>>,
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        {
            let mut shared = self.shared.lock().expect("lock");
            if let Some(code) = shared.refuse {
                return Err(Status::new(code, "this receiver refuses audit logs"));
            }
            if shared.life != self.life {
                return Err(Status::unavailable("killed"));
            }
            shared.batches.push(Batch {
                life: self.life,
                request: request.into_inner(),
            });
        }
        // Recorded first, answered after a pause in which a kill loses the answer.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..40))).await;
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// A receiver serving on a port: killed, it refuses connections and cuts the ones it has.
struct Running {
    server: JoinHandle<()>,
    connections: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

/// Starts life `life` of the receiver on `addr` (retrying while the port is not free).
async fn start(addr: SocketAddr, life: u32, shared: &Arc<Mutex<Recorded>>) -> Running {
    shared.lock().expect("lock").life = life;
    let listener = {
        let mut tries = 0;
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    eprintln!("rebinding {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {addr} again: {e}"),
            }
        }
    };
    let connections: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
    let kept = connections.clone();
    // Each accepted connection kept (a clone of its socket) so a kill can cut it: the
    // server's connection tasks outlive its accept loop.
    let incoming = TcpListenerStream::new(listener).map(move |s| {
        let s = s?.into_std()?;
        kept.lock().expect("lock").push(s.try_clone()?);
        tokio::net::TcpStream::from_std(s)
    });
    let service = LogsServiceServer::new(Receiver {
        life,
        shared: shared.clone(),
    });
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Running {
        server,
        connections,
    }
}

impl Running {
    /// Kills this life: no more recording, the port closed, its connections cut.
    async fn kill(self, shared: &Arc<Mutex<Recorded>>) {
        {
            let mut shared = shared.lock().expect("lock");
            shared.life += 1000;
            mark_last(&mut shared);
        }
        self.server.abort();
        let _ = self.server.await;
        for c in self.connections.lock().expect("lock").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// The last batch recorded may not have been acknowledged (or checkpointed).
fn mark_last(shared: &mut Recorded) {
    if let Some(last) = shared.batches.len().checked_sub(1)
        && shared.ack_maybe_lost.last() != Some(&last)
    {
        shared.ack_maybe_lost.push(last);
    }
}

/// An OTLP value as JSON (the inverse of the shipper's mapping).
fn json(v: &AnyValue) -> Json {
    match &v.value {
        None => Json::Null,
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(i)) => Json::from(*i),
        Some(Value::DoubleValue(d)) => Json::from(*d),
        Some(Value::StringValue(s)) => Json::String(s.clone()),
        Some(Value::ArrayValue(a)) => Json::Array(a.values.iter().map(json).collect()),
        Some(Value::KvlistValue(kv)) => Json::Object(
            kv.values
                .iter()
                .map(|k| (k.key.clone(), k.value.as_ref().map_or(Json::Null, json)))
                .collect::<Map<_, _>>(),
        ),
        Some(other) => panic!("no JSON value maps to {other:?}"),
    }
}

/// A string attribute's value.
fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// A batch's log records, checked against the fields the shipper promises, as (date, seq).
fn checked(request: &ExportLogsServiceRequest, started: i64) -> Vec<(i64, u64)> {
    let mut keys = Vec::new();
    for resource_logs in &request.resource_logs {
        let resource = resource_logs.resource.as_ref().expect("a resource");
        assert_eq!(
            attr(&resource.attributes, "service.name"),
            Some("audit-gateway")
        );
        for scope_logs in &resource_logs.scope_logs {
            let scope = scope_logs.scope.as_ref().expect("a scope");
            assert_eq!(scope.name, "audit-gateway.follow");
            for log in &scope_logs.log_records {
                keys.push(check(log, started));
            }
        }
    }
    keys
}

/// One log record's fields: its time is the body's creationDate in nanoseconds, INFO,
/// the ECS-like attributes; its (date, seq).
fn check(log: &LogRecord, started: i64) -> (i64, u64) {
    let body = json(log.body.as_ref().expect("a body"));
    let date = body["creationDate"].as_i64().expect("creationDate");
    assert_eq!(log.time_unix_nano, date as u64 * 1_000_000, "{body}");
    assert!(
        log.observed_time_unix_nano >= started as u64 * 1_000_000
            && log.observed_time_unix_nano <= (now_ms() as u64 + 1) * 1_000_000,
        "observed during the run: {}",
        log.observed_time_unix_nano
    );
    assert_eq!(
        (log.severity_number, log.severity_text.as_str()),
        (9, "INFO")
    );
    let a = &log.attributes;
    assert_eq!(attr(a, "event.action"), body["summary"].as_str(), "{body}");
    assert_eq!(
        attr(a, "confluence.audit.category"),
        body["category"].as_str().filter(|c| !c.is_empty())
    );
    let author = &body["author"];
    let user = author["accountId"].as_str().or(author["userKey"].as_str());
    assert_eq!(attr(a, "user.id"), user.filter(|u| !u.is_empty()), "{body}");
    assert_eq!(
        attr(a, "user.full_name"),
        author["displayName"].as_str().filter(|n| !n.is_empty())
    );
    assert_eq!(
        attr(a, "source.ip"),
        body["remoteAddress"].as_str().filter(|ip| !ip.is_empty())
    );
    let seq = confluence_sim::record_seq(&body).expect("seq");
    (date, seq)
}

/// `follow --otlp-logs-endpoint` against `gateway`, its stderr to `log`.
fn shipper(gateway: SocketAddr, otlp: SocketAddr, checkpoint: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    crate::common::binary()
        .args(["follow", "--gateway", &format!("http://{gateway}")])
        .args(["--otlp-logs-endpoint", &format!("http://{otlp}")])
        .args(["--since", "10m", "--poll-interval", "1s", "--lag", "500ms"])
        .arg("--checkpoint-file")
        .arg(checkpoint)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the binary starts")
}

/// What a kill in the run hits.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// The receiver, restarted after a while.
    Receiver,
    /// The shipper, restarted at once.
    Shipper,
    /// The shipper while the receiver is down (so while it holds a batch it could not
    /// send), then both restarted.
    Both,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_an_otlp_receiver_that_dies_and_comes_back() {
    let (sim, gw) = sim_and_gateway(live_log(41), |_| {}).await;
    let dir = TempDir::new("otlp-logs");
    let (checkpoint, log) = (dir.path().join("checkpoint.json"), dir.path().join("log"));
    let shared: Arc<Mutex<Recorded>> = Arc::default();
    let otlp = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("bound");
    let mut life = 0;
    let mut receiver = start(otlp, life, &shared).await;

    let started = now_ms();
    let t0 = now_ms() - 600_000;
    let mut child = shipper(gw.addr, otlp, &checkpoint, &log);
    let t1 = now_ms() - 600_000;

    // Kills in a random order at random moments.
    let mut rng = fastrand::Rng::with_seed(17);
    let mut kills = [Kill::Receiver, Kill::Receiver, Kill::Shipper, Kill::Both];
    rng.shuffle(&mut kills);
    for kill in kills {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        // Down longer than a poll interval: an Export meets the closed port.
        let down = Duration::from_millis(rng.u64(1100..2500));
        match kill {
            Kill::Receiver => {
                receiver.kill(&shared).await;
                tokio::time::sleep(down).await;
                life += 1;
                receiver = start(otlp, life, &shared).await;
            }
            Kill::Shipper => {
                child.kill().expect("killed");
                child.wait().expect("reaped");
                // Whatever the dead shipper had sent is recorded by now.
                tokio::time::sleep(Duration::from_millis(300)).await;
                mark_last(&mut shared.lock().expect("lock"));
                child = shipper(gw.addr, otlp, &checkpoint, &log);
            }
            Kill::Both => {
                receiver.kill(&shared).await;
                tokio::time::sleep(down).await;
                child.kill().expect("killed");
                child.wait().expect("reaped");
                life += 1;
                receiver = start(otlp, life, &shared).await;
                child = shipper(gw.addr, otlp, &checkpoint, &log);
            }
        }
        eprintln!("{kill:?} killed at {}", now_ms() - started);
    }
    // Records are created until every kill is over, so each one meets Exports.
    let stop_at = now_ms() + 1_000;
    sim.stop_live_at(stop_at);

    // Settled: every record up to the stop has arrived (and a little more time for any
    // stray resend), then stopped as an operator would.
    tokio::time::sleep(Duration::from_millis(
        (stop_at + 1_500 - now_ms()).max(0) as u64
    ))
    .await;
    let want = sim.expected_records(t1, stop_at);
    assert!(want.len() > 3000 / 2, "a backfill and live records");
    let received = |shared: &Mutex<Recorded>| -> HashMap<(i64, u64), usize> {
        let mut n = HashMap::new();
        for b in &shared.lock().expect("lock").batches {
            for k in checked(&b.request, started) {
                *n.entry(k).or_default() += 1;
            }
        }
        n
    };
    let deadline = now_ms() + 60_000;
    loop {
        let got = received(&shared);
        let mut wanted: HashMap<(i64, u64), usize> = HashMap::new();
        for k in &want {
            *wanted.entry(*k).or_default() += 1;
        }
        if wanted
            .iter()
            .all(|(k, n)| got.get(k).copied().unwrap_or(0) >= *n)
        {
            break;
        }
        assert!(now_ms() < deadline, "every record within 60 s of the stop");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    process::terminate(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined")
        .expect("reaped");
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "SIGTERM ends it cleanly: {status}\n{stderr}"
    );
    receiver.kill(&shared).await;

    let shared = shared.lock().expect("lock");
    eprintln!("the shipper said:\n{stderr}");
    let lives: std::collections::BTreeSet<u32> = shared.batches.iter().map(|b| b.life).collect();
    assert!(lives.len() >= 2, "batches reached several lives: {lives:?}");
    assert!(
        stderr.contains("sending the same"),
        "the shipper sent a batch again after a failed Export"
    );
    // What arrived, batch by batch, each in date order.
    let batches: Vec<Vec<(i64, u64)>> = shared
        .batches
        .iter()
        .map(|b| checked(&b.request, started))
        .collect();
    for b in &batches {
        assert!(
            b.windows(2).all(|w| w[0].0 <= w[1].0),
            "a batch out of order"
        );
    }
    let all: Vec<(i64, u64)> = batches.iter().flatten().copied().collect();
    assert!(all.iter().all(|(d, _)| *d >= t0), "a record before --since");
    // Records created between the two ends of "10 minutes ago" may or may not count.
    let mut want = want;
    let mut early: Vec<(i64, u64)> = all.iter().filter(|(d, _)| *d < t1).copied().collect();
    early.sort_unstable();
    early.dedup();
    want.extend(early);
    let mut surplus: HashMap<(i64, u64), i64> = HashMap::new();
    for k in &all {
        *surplus.entry(*k).or_default() += 1;
    }
    for k in &want {
        *surplus.entry(*k).or_default() -= 1;
    }
    let missing: Vec<_> = surplus.iter().filter(|(_, n)| **n < 0).collect();
    assert!(missing.is_empty(), "never received: {missing:?}");
    // A record received more often than it exists was in a batch whose acknowledgement a
    // kill may have lost, at most as often more as it is in such batches (the simulator's
    // byte-identical twins are one record twice).
    let mut duplicates = 0;
    for (k, n) in surplus.iter().filter(|(_, n)| **n > 0) {
        let risky = shared
            .ack_maybe_lost
            .iter()
            .map(|i| batches[*i].iter().filter(|r| *r == k).count())
            .sum::<usize>() as i64;
        assert!(
            *n <= risky,
            "{k:?} received {n} times too often, {risky} times in batches whose ack may be lost"
        );
        duplicates += n;
    }
    eprintln!(
        "{} records in {} batches, {duplicates} duplicates, {} batches with their ack maybe \
         lost",
        all.len(),
        batches.len(),
        shared.ack_maybe_lost.len()
    );
    // Without an output file, the checkpoint file holds the checkpoint and no length.
    let saved: Json =
        serde_json::from_slice(&std::fs::read(&checkpoint).expect("checkpoint")).expect("JSON");
    assert!(saved["checkpoint"].is_string(), "{saved}");
    assert!(saved["output_bytes"].is_null(), "{saved}");
}

/// A status no retry cures ends the command with its exit code and one line, the
/// checkpoint file claiming nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_receiver_ends_the_command_with_its_status() {
    let (_sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 50,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let dir = TempDir::new("otlp-refused");
    let checkpoint = dir.path().join("checkpoint.json");
    let shared: Arc<Mutex<Recorded>> = Arc::default();
    shared.lock().expect("lock").refuse = Some(tonic::Code::PermissionDenied);
    let otlp = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("bound");
    let _receiver = start(otlp, 0, &shared).await;
    let child = crate::common::binary()
        .args(["follow", "--gateway", &format!("http://{}", gw.addr)])
        .args(["--otlp-logs-endpoint", &format!("http://{otlp}")])
        .args(["--since", "2000-01-01T00:00:00Z", "--poll-interval", "1s"])
        .arg("--checkpoint-file")
        .arg(&checkpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let finished: Finished =
        tokio::task::spawn_blocking(move || finish_within(child, Duration::from_secs(30)))
            .await
            .expect("joined");
    assert_eq!(
        finished.status.and_then(|s| s.code()),
        Some(7),
        "PERMISSION_DENIED's code: {}",
        finished.stderr
    );
    let line = finished.stderr.lines().last().unwrap_or_default();
    assert!(line.starts_with("error: PermissionDenied"), "{line}");
    assert!(line.contains(&otlp.to_string()), "{line}");
    assert!(!finished.stderr.contains("sending the same"), "not retried");
    let saved: Json =
        serde_json::from_slice(&std::fs::read(&checkpoint).expect("checkpoint")).expect("JSON");
    assert!(saved["checkpoint"].is_null(), "nothing claimed: {saved}");
}
