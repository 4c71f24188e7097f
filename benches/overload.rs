//! Figures for a gateway shared by many callers, printed (not asserted):
//!
//! 1. 1,000 concurrent `StreamSince` calls with slow readers, the gateway as its own
//!    process: its peak RSS, and the most upstream requests in flight at once (against
//!    `--upstream-concurrency`);
//! 2. how fast a stream past `--max-streams` is refused, while 8 slow streams hold the
//!    slots;
//! 3. the upstream requests 50 concurrent callers cause during a 2-second cool-down that
//!    one 429 with `Retry-After: 2` started.
//!
//! Run: `cargo bench --bench overload` (release build).

use std::time::{Duration, Instant};

mod support;

use audit_gateway::pb::{self, audit_service_client::AuditServiceClient};
use confluence_sim::{Fault, SimulatorConfig};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        many_slow_streams().await;
        refusals().await;
        cool_down().await;
    });
}

async fn client(addr: &str) -> AuditServiceClient<tonic::transport::Channel> {
    AuditServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
}

/// Reads a whole stream, pausing `pause` after each message; returns the records.
async fn read_slowly(
    mut c: AuditServiceClient<tonic::transport::Channel>,
    pause: Duration,
) -> usize {
    let req = pb::StreamSinceRequest {
        page_size: Some(100),
        ..Default::default()
    };
    let mut s = match c.stream_since(req).await {
        Ok(s) => s.into_inner(),
        Err(_) => return 0,
    };
    let mut records = 0;
    while let Ok(Some(m)) = s.message().await {
        records += m.records.len();
        tokio::time::sleep(pause).await;
    }
    records
}

async fn many_slow_streams() {
    let sim = support::simulator(SimulatorConfig {
        records: 5_000,
        latency: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    let (mut child, addr) = support::spawn_gateway_binary(
        &sim.base_url(),
        &["--max-streams", "1000", "--max-connection-streams", "1000"],
    );
    let t = Instant::now();
    let mut tasks = Vec::new();
    // Ten connections, a hundred streams each, as ten client processes would.
    let mut connections = Vec::new();
    for _ in 0..10 {
        connections.push(client(&addr).await);
    }
    for i in 0..1000 {
        let c = connections[i % 10].clone();
        tasks.push(tokio::spawn(read_slowly(c, Duration::from_millis(50))));
    }
    let mut records = 0;
    for task in tasks {
        records += task.await.unwrap_or(0);
    }
    println!(
        "1,000 concurrent streams of a 5,000-record window, readers pausing 50 ms per message: {records} records in {:.1?}; gateway peak RSS {:.1} MiB; at most {} upstream requests in flight (--upstream-concurrency 8); {} upstream requests",
        t.elapsed(),
        support::vm_hwm_kib(child.id()) as f64 / 1024.0,
        sim.max_in_flight(),
        sim.request_count()
    );
    let _ = child.kill();
    let _ = child.wait();
}

async fn refusals() {
    // A window larger than what HTTP/2 and the kernel buffer for a slow reader, so the
    // eight streams' producers really are still at work.
    let sim = support::simulator(SimulatorConfig {
        records: 200_000,
        latency: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let addr = support::gateway(
        &sim.base_url(),
        |c| c.max_streams = 8,
        std::future::pending(),
    )
    .await
    .to_string();
    let mut holders = Vec::new();
    for _ in 0..8 {
        let c = client(&addr).await;
        holders.push(tokio::spawn(read_slowly(c, Duration::from_secs(1))));
    }
    // Let the eight take their slots.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = client(&addr).await;
    let mut times = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let r = c.stream_since(pb::StreamSinceRequest::default()).await;
        times.push(t.elapsed());
        if matches!(r, Err(s) if s.code() == tonic::Code::ResourceExhausted) {
            refused += 1;
        }
    }
    println!(
        "past --max-streams 8 (8 slow streams open): {refused} of 200 refused, p50 {:.2?} p99 {:.2?}",
        support::pct(&mut times, 50),
        support::pct(&mut times, 99)
    );
    holders.iter().for_each(|h| h.abort());
}

async fn cool_down() {
    let sim = support::simulator(SimulatorConfig {
        records: 5_000,
        ..Default::default()
    })
    .await;
    let addr = support::gateway(&sim.base_url(), |_| {}, std::future::pending())
        .await
        .to_string();
    sim.push_faults(["429:retry-after=2".parse::<Fault>().expect("fault")]);
    let mut first = client(&addr).await;
    let page = |start: i32| pb::GetSinceRequest {
        start: Some(start),
        limit: Some(10),
        ..Default::default()
    };
    let t = Instant::now();
    let mut tasks = vec![tokio::spawn(async move {
        first.get_since(page(0)).await.is_ok()
    })];
    // Once the 429 is in, 50 more callers ask for other pages.
    while sim.request_count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_429 = sim.request_count();
    for i in 1..=50 {
        let mut c = client(&addr).await;
        tasks.push(tokio::spawn(async move {
            c.get_since(page(i * 10)).await.is_ok()
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = sim.request_count() - at_429;
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.unwrap_or(false));
    }
    println!(
        "one 429 with Retry-After: 2, then 50 concurrent callers: {during} upstream requests in the next 1.5 s; {ok} of 51 calls succeeded after {:.2?}; {} upstream requests in all",
        t.elapsed(),
        sim.request_count()
    );
}
