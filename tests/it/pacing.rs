//! Adaptive pacing (`src/upstream/pacing.rs`) against a simulated site that limits
//! requests in flight: a lone stream grows into the capacity nobody else uses, and a
//! site that warns it is near its limit is backed off from before it refuses anything;
//! look-ahead past two pages takes room in `--stream-buffer-bytes`.

use std::time::Duration;

use audit_gateway::{metrics::METRICS, pb};
use confluence_sim::{Concurrency, SimulatorConfig};

use crate::common::{seq, sim_and_gateway, stream_records};

/// Streams a whole window in pages of 100; the records' sequence numbers, in order.
/// Small pages keep the simulator's rendering (a debug build, two cores) well below its
/// latency, so first-byte times measure Confluence's queue, not the test machine.
async fn stream_window(
    client: &mut pb::audit_service_client::AuditServiceClient<tonic::transport::Channel>,
) -> Vec<u64> {
    let req = pb::StreamSinceRequest {
        page_size: Some(100),
        ..Default::default()
    };
    stream_records(client, req).await.iter().map(seq).collect()
}

fn site(records: usize, allowed: usize, near: usize) -> SimulatorConfig {
    SimulatorConfig {
        records,
        latency: Duration::from_millis(100),
        concurrency: Some(Concurrency { allowed, near }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_stream_grows_past_its_starting_limit_without_a_refusal() {
    // Defaults: a ceiling of 16, each credential starting at 8.
    let (sim, mut gw) = sim_and_gateway(site(4_000, 16, 16), |_| {}).await;
    let seqs = stream_window(&mut gw.client).await;
    assert_eq!(seqs, (0..4_000).rev().collect::<Vec<u64>>());
    let most = sim.max_in_flight();
    assert!(
        most > 8,
        "{most} in flight at most: the limit did not grow past where it started"
    );
    assert!(most <= 16, "{most} in flight: past the ceiling");
    assert_eq!(sim.over_limit(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_near_the_limit_back_off_before_any_refusal() {
    let cuts = METRICS.limit_moves("near_limit");
    // The site refuses past 10 in flight and warns past 6; the gateway starts at 8.
    let (sim, mut gw) = sim_and_gateway(site(4_000, 10, 6), |_| {}).await;
    let seqs = stream_window(&mut gw.client).await;
    assert_eq!(seqs, (0..4_000).rev().collect::<Vec<u64>>());
    let (refused, warned) = sim.over_limit();
    assert!(warned > 0, "the site warned");
    assert_eq!(
        refused, 0,
        "a 429 came: the warnings did not slow the gateway"
    );
    assert!(sim.max_in_flight() <= 10);
    assert!(METRICS.limit_moves("near_limit") > cuts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_floor_equal_to_the_ceiling_is_a_fixed_limit() {
    let (sim, mut gw) = sim_and_gateway(site(2_000, 100, 100), |c| {
        c.upstream.concurrency = 4;
        c.upstream.concurrency_floor = 4;
    })
    .await;
    let seqs = stream_window(&mut gw.client).await;
    assert_eq!(seqs.len(), 2_000);
    assert_eq!(sim.max_in_flight(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_ahead_past_two_pages_waits_for_room_in_the_stream_buffer() {
    // A site that carries anything; 30 pages of 100 at 100 ms each.
    let site = || site(3_000, 100, 100);
    // No room at all: each stream keeps its next page and two ahead, no more.
    let (sim, mut gw) = sim_and_gateway(site(), |c| c.stream_buffer_bytes = 0).await;
    let seqs = stream_window(&mut gw.client).await;
    assert_eq!(seqs, (0..3_000).rev().collect::<Vec<u64>>());
    let most = sim.max_in_flight();
    assert!(most <= 3, "{most} in flight with no look-ahead budget");
    // The default budget lets the same stream read as deep as the pacing allows.
    let (sim, mut gw) = sim_and_gateway(site(), |_| {}).await;
    let seqs = stream_window(&mut gw.client).await;
    assert_eq!(seqs, (0..3_000).rev().collect::<Vec<u64>>());
    let most = sim.max_in_flight();
    assert!(most > 3, "{most} in flight with the default budget");
}
