//! Followers of a live log: the setup and the upstream-requests-per-tick measurement
//! shared by `follow` and `suite`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use audit_gateway::pb::{self, audit_service_client::AuditServiceClient};
use confluence_sim::{AuditEndpoint, Live, SimulatorConfig, SimulatorHandle};
use http::uri::PathAndQuery;
use tonic::transport::Channel;

/// How often followers read the head (the smallest interval Follow accepts).
pub const POLL: Duration = Duration::from_secs(1);
/// How late a record may turn visible; the simulator's are never late here.
pub const LAG: Duration = Duration::from_millis(500);
/// Ticks counted in part 1.
pub const TICKS: u32 = 5;
/// The live log of parts 1 and 2: 50 records a second, in bursts of up to 5 sharing a
/// millisecond.
pub const LIVE: Live = Live {
    per_second: 50.0,
    burst: 5,
};

/// `d` as a protobuf duration.
pub fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A follow request polling every `POLL` with `LAG`, from `from` (none: from now).
pub fn request(from: Option<pb::follow_request::From>) -> pb::FollowRequest {
    pb::FollowRequest {
        from,
        poll_interval: Some(dur(POLL)),
        lag: Some(dur(LAG)),
        ..Default::default()
    }
}

/// A typed client of the gateway at `addr` that takes messages up to 64 MiB.
pub async fn client(addr: &str) -> AuditServiceClient<Channel> {
    AuditServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
}

/// A simulator with only a live log (no initial records, none late) and an in-process
/// gateway in front of it, which stops when the returned sender is dropped or fired.
pub async fn live_setup() -> (SimulatorHandle, String, tokio::sync::oneshot::Sender<()>) {
    let sim = super::simulator(SimulatorConfig {
        records: 0,
        live: Some(LIVE),
        ..Default::default()
    })
    .await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stop_on = async move {
        let _ = stopped.await;
    };
    let addr = super::gateway(&sim.base_url(), |_| {}, stop_on)
        .await
        .to_string();
    (sim, addr, stop)
}

/// What one follower received: each message's arrival and record count.
pub type Received = Arc<Mutex<Vec<(Instant, usize)>>>;

/// A copy of what a follower received so far (its task keeps appending).
pub fn messages(r: &Received) -> Vec<(Instant, usize)> {
    r.lock().expect("not poisoned").clone()
}

/// Upstream range requests per tick with `followers` followers from now, and the records
/// each follower received within the measured ticks.
pub async fn upstream_per_tick(followers: usize) -> (f64, Vec<usize>) {
    let (sim, addr, stop) = live_setup().await;
    // Ten connections at most, as ten client processes would hold.
    let mut connections = Vec::new();
    for _ in 0..followers.min(10) {
        connections.push(client(&addr).await);
    }
    let mut received: Vec<Received> = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..followers {
        let mut c = connections[i % connections.len()].clone();
        let got = Received::default();
        received.push(got.clone());
        let mut s = c.follow(request(None)).await.expect("follow").into_inner();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(m)) = s.message().await {
                let at = Instant::now();
                got.lock()
                    .expect("not poisoned")
                    .push((at, m.records.len()));
            }
        }));
    }
    // Everyone's first message (a heartbeat, at once), then two ticks' messages: the
    // first tick after the call may find nothing settled since it (a heartbeat, no
    // request), and a tick checks the range the tick before it read for late records,
    // so only from the third message on does every tick cost what it costs for good.
    while received.iter().any(|r| messages(r).len() < 3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Half a tick later the tick's requests (its range, and the late check of the one
    // before) are long done and the next tick's have not begun: a window starting here
    // and lasting whole poll intervals holds exactly that many ticks.
    tokio::time::sleep(POLL / 2).await;
    let (t0, before) = (Instant::now(), sim.request_count_of(AuditEndpoint::Range));
    tokio::time::sleep(POLL * TICKS).await;
    let (t1, after) = (Instant::now(), sim.request_count_of(AuditEndpoint::Range));
    let records = received
        .iter()
        .map(|r| {
            messages(r)
                .iter()
                .filter(|(at, _)| (t0..t1).contains(at))
                .map(|(_, n)| n)
                .sum()
        })
        .collect();
    tasks.iter().for_each(|t| t.abort());
    let _ = stop.send(());
    sim.shutdown();
    ((after - before) as f64 / f64::from(TICKS), records)
}

/// `FollowResponse` with its records left encoded: the bench counts records rather than
/// decode them, so the machine's two cores go to the gateway being measured.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Counted {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    records: Vec<bytes::Bytes>,
    #[prost(string, tag = "2")]
    checkpoint: String,
}

/// Follows from the log's beginning until `max` records; returns (records, messages).
pub async fn backfill(addr: &str, max: usize) -> (usize, usize) {
    let mut client = super::grpc(addr).await;
    let req = pb::FollowRequest {
        max_records: Some(max as i64),
        ..request(Some(pb::follow_request::From::Since(
            prost_types::Timestamp::default(),
        )))
    };
    client.ready().await.expect("ready");
    let path = PathAndQuery::from_static("/confluence.audit.v1.AuditService/Follow");
    let codec = tonic_prost::ProstCodec::<pb::FollowRequest, Counted>::default();
    let mut s = client
        .server_streaming(tonic::Request::new(req), path, codec)
        .await
        .expect("follow")
        .into_inner();
    let (mut records, mut messages) = (0, 0);
    while let Some(m) = s.message().await.expect("follow ok") {
        records += m.records.len();
        messages += 1;
    }
    (records, messages)
}
