//! `Follow` through a real gRPC client against the simulator misbehaving as Confluence's
//! documentation allows, each adversity alone and all at once: pages capped below the
//! limit asked while echoing it (and a cap that rises as it goes), range bounds applied to
//! the second, bounds ignored, a clock seconds behind the gateway's, cut bodies and
//! transient failures. (Streams meet the same adversities in tests/it/stream.rs; the
//! property tests in src/app/follow.rs and src/app/stream.rs explore their schedules
//! against one model, src/app/model.rs.)

use std::time::Duration;

use audit_gateway::pb::{self, audit_service_client::AuditServiceClient};
use confluence_sim::{AuditEndpoint, LimitEcho, Live, RangeBounds, SimulatorConfig};
use tonic::{Code, Streaming, transport::Channel};
use tonic_types::StatusExt;

use crate::common::{assert_exactly_once, now_ms, seq, sim_and_gateway};

/// Forty minutes of records, six a group on average (records [`confluence_sim::RECORD_SPACING_MS`]
/// apart, groups of up to 11 sharing a millisecond): about 2,900, as in the report of the
/// follower that lost 2,591 of 2,920.
fn forty_minutes() -> SimulatorConfig {
    SimulatorConfig {
        records: 3_200,
        ties: 11,
        duplicate_every: 13,
        ..Default::default()
    }
}

/// A cap of 100 records a page that answers `"limit": 1000`.
fn lying_cap(config: SimulatorConfig) -> SimulatorConfig {
    SimulatorConfig {
        max_limit: Some(100),
        limit_echo: LimitEcho::Requested,
        ..config
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn request(since_ms: i64, lag: Duration) -> pb::FollowRequest {
    pb::FollowRequest {
        from: Some(pb::follow_request::From::Since(timestamp(since_ms))),
        poll_interval: Some(duration(Duration::from_secs(1))),
        lag: Some(duration(lag)),
        ..Default::default()
    }
}

/// Follows with `req` (resuming from the last checkpoint after UNAVAILABLE, as a shipper
/// does) until `done`, asked after every message with whether it was a heartbeat, says
/// so; returns the records as (date, seq) in arrival order.
async fn follow_until(
    client: &mut AuditServiceClient<Channel>,
    mut req: pb::FollowRequest,
    done: impl Fn(bool) -> bool,
) -> Result<Vec<(i64, u64)>, tonic::Status> {
    let mut got = Vec::new();
    let mut resumes = 0;
    loop {
        let mut s: Streaming<pb::FollowResponse> = client.follow(req.clone()).await?.into_inner();
        let end = loop {
            let m = tokio::time::timeout(Duration::from_secs(30), s.message())
                .await
                .expect("a message or a heartbeat within 30 s");
            match m {
                Ok(Some(m)) => {
                    let heartbeat = m.records.is_empty();
                    got.extend(m.records.iter().map(|r| (r.creation_date, seq(r))));
                    req.from = Some(pb::follow_request::From::Checkpoint(m.checkpoint));
                    if done(heartbeat) {
                        return Ok(got);
                    }
                }
                Ok(None) => panic!("a follower does not end by itself"),
                Err(status) => break status,
            }
        };
        if end.code() != Code::Unavailable || resumes == 50 {
            return Err(end);
        }
        resumes += 1;
    }
}

/// Backfills forty minutes from `config` and checks every record arrived once, in order.
async fn backfill_forty_minutes(config: SimulatorConfig) {
    let (sim, gw) = sim_and_gateway(config, |_| {}).await;
    let start = now_ms() - 40 * 60 * 1000;
    let mut client = gw.client.clone();
    let got = follow_until(&mut client, request(start, Duration::ZERO), |heartbeat| {
        heartbeat
    })
    .await
    .expect("no error");
    let want = sim.expected_records(start, i64::MAX);
    assert!(
        want.len() > 2_500,
        "forty minutes of records ({})",
        want.len()
    );
    assert_exactly_once(&got, want);
    let requests = sim.request_count_of(AuditEndpoint::Range);
    eprintln!("{requests} range requests");
    assert!(
        requests < 200,
        "{requests} range requests for about 30 pages of records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_of_100_echoing_1000_loses_nothing() {
    backfill_forty_minutes(lying_cap(forty_minutes())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_with_no_limit_echoed_loses_nothing() {
    backfill_forty_minutes(SimulatorConfig {
        limit_echo: LimitEcho::Omitted,
        ..lying_cap(forty_minutes())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_bounds_rounded_to_the_second_repeat_nothing() {
    backfill_forty_minutes(SimulatorConfig {
        range_bounds: RangeBounds::Seconds,
        ..forty_minutes()
    })
    .await;
    backfill_forty_minutes(SimulatorConfig {
        range_bounds: RangeBounds::Seconds,
        ..lying_cap(forty_minutes())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_the_range_ends_the_call_with_failed_precondition() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            range_bounds: RangeBounds::Ignored,
            ..lying_cap(forty_minutes())
        },
        |_| {},
    )
    .await;
    let start = now_ms() - 40 * 60 * 1000;
    let mut client = gw.client.clone();
    let err = follow_until(&mut client, request(start, Duration::ZERO), |heartbeat| {
        heartbeat
    })
    .await
    .expect_err("the call ends");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("ignores the date range"),
        "{}",
        err.message()
    );
    assert_eq!(
        err.get_error_details()
            .error_info()
            .map(|i| i.reason.clone()),
        Some("UPSTREAM_BREAKS_CONTRACT".to_owned())
    );
    // The range (its answer gives Confluence's clock too), its confirming read, then the
    // piece read and those ahead (`--stream-prefetch`) until the first of them shows the
    // bounds ignored: no storm.
    let requests = sim.request_count_of(AuditEndpoint::Range);
    let prefetch = audit_gateway::GatewayConfig::DEFAULT.stream_prefetch;
    assert!(
        requests <= 3 + prefetch,
        "{requests} requests: a cut of the range cascaded"
    );
}

/// A live log on a simulator whose clock is `offset_ms` off the gateway's, followed with
/// a lag shorter than the offset, plus `more` adversities; returns after checking every
/// record created before live creation stopped arrived once, in order.
async fn follow_a_live_log(offset_ms: i64, more: impl FnOnce(SimulatorConfig) -> SimulatorConfig) {
    let config = more(SimulatorConfig {
        records: 600,
        ties: 4,
        duplicate_every: 9,
        live: Some(Live {
            per_second: 80.0,
            burst: 5,
        }),
        clock_offset: offset_ms,
        ..Default::default()
    });
    let (sim, gw) = sim_and_gateway(config, |c| c.upstream.retries = 6).await;
    let lag = Duration::from_secs(1);
    // The simulator's clock: its initial records end at its own now.
    let start = sim.now_ms() - 10 * 60 * 1000;
    let mut client = gw.client.clone();
    let host_stop = now_ms() + 4_000;
    let stop = std::sync::OnceLock::new();
    let got = follow_until(&mut client, request(start, lag), |heartbeat| {
        if now_ms() < host_stop {
            return false;
        }
        let stop = *stop.get_or_init(|| sim.stop_live());
        // A quiet tick settled, by Confluence's clock, well after the stop.
        heartbeat && sim.now_ms() > stop + 3_000
    })
    .await
    .expect("no error");
    let stop = *stop.get().expect("stopped");
    assert_exactly_once(&got, sim.expected_records(start, stop));
}

/// A fresh gateway's first range, asked before Confluence's clock is known, is not read
/// from when that clock shows it was not settled when asked, on the first tick or a later
/// one: Confluence 3 s behind, a follower from a grid line whose tick is settled by the
/// gateway's clock (lag 1 s) but not by Confluence's, and the log growing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_range_asked_before_the_clock_was_known_is_not_taken_for_settled() {
    const POLL: i64 = 4_000;
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 50,
            live: Some(Live {
                per_second: 80.0,
                burst: 5,
            }),
            clock_offset: -3_000,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    // 1.2-2.5 s into a poll interval: the interval before, [grid, grid + POLL), ended
    // 5.2-6.5 s ago by the gateway's clock, 2.2-3.5 s ago by Confluence's (not settled
    // with lag 1 s), so records dated in its last 0.5-1.8 s are still to come.
    while !(1_200..2_500).contains(&now_ms().rem_euclid(POLL)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grid = now_ms().div_euclid(POLL) * POLL - POLL;
    let mut req = request(grid, Duration::from_secs(1));
    req.poll_interval = Some(duration(Duration::from_millis(POLL as u64)));
    let until = grid + 2 * POLL;
    let mut client = gw.client.clone();
    // Live creation stops once Confluence's clock passed `until`; a quiet tick settled
    // after that ends the follow.
    let stop = std::sync::OnceLock::new();
    let got = follow_until(&mut client, req, |heartbeat| {
        if sim.now_ms() < until {
            return false;
        }
        let stop = *stop.get_or_init(|| sim.stop_live());
        heartbeat && sim.now_ms() > stop + 2 * POLL
    })
    .await
    .expect("no error");
    let got: Vec<_> = got.into_iter().filter(|&(date, _)| date < until).collect();
    assert_exactly_once(&got, sim.expected_records(grid, until - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confluence_clock_5_s_behind_loses_nothing() {
    follow_a_live_log(-5_000, |c| c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_adversity_at_once_loses_nothing_and_repeats_nothing() {
    follow_a_live_log(-5_000, |c| SimulatorConfig {
        range_bounds: RangeBounds::Seconds,
        max_limit_rises_every: Some(7),
        late_share: 0.3,
        late_by: Duration::from_millis(300),
        cut_rate: 0.15,
        fault_rate: 0.2,
        ..lying_cap(c)
    })
    .await;
}
