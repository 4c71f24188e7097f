//! `Follow` end to end: every record from a starting point on, exactly once, in
//! `creationDate` order, across random cuts, resumes, a gateway restart, live bursts
//! sharing a millisecond, ties listed in a new order by every request, byte-identical
//! duplicates and records that become visible late (within `lag`).

use std::time::Duration;

use audit_gateway::pb::{self, audit_service_client::AuditServiceClient};
use confluence_sim::{AuditEndpoint, Live, SimulatorConfig};
use secrecy::SecretString;
use tonic::{Code, Streaming, transport::Channel};
use tonic_types::StatusExt;

use crate::common::{
    Canned, Finished, StubUpstream, finish_within, live_log, now_ms, requests_once_still, seq,
    sim_and_gateway, spawn_gateway, spawn_simulator, test_config,
};

const SALT: &str = "follow-tests-salt-0123456789";

fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn since(ms: i64) -> Option<pb::follow_request::From> {
    Some(pb::follow_request::From::Since(prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }))
}

fn from_checkpoint(c: &str) -> Option<pb::follow_request::From> {
    Some(pb::follow_request::From::Checkpoint(c.to_owned()))
}

/// A follow request polling every second with `lag`.
fn request(from: Option<pb::follow_request::From>, lag: Duration) -> pb::FollowRequest {
    pb::FollowRequest {
        from,
        poll_interval: Some(dur(Duration::from_secs(1))),
        lag: Some(dur(lag)),
        ..Default::default()
    }
}

async fn follow(
    client: &mut AuditServiceClient<Channel>,
    req: pb::FollowRequest,
) -> Streaming<pb::FollowResponse> {
    client
        .follow(req)
        .await
        .expect("follow starts")
        .into_inner()
}

/// Follows with `req`, which sets `max_records`, to its end (each message within
/// `within`), and returns what it delivered.
async fn follow_to_end(
    client: &mut AuditServiceClient<Channel>,
    req: pb::FollowRequest,
    within: Duration,
) -> Consumer {
    let mut s = follow(client, req).await;
    let mut consumer = Consumer::default();
    while let Some(m) = tokio::time::timeout(within, s.message())
        .await
        .expect("progress within the bound")
        .expect("no error")
    {
        consumer.take(m);
    }
    consumer
}

/// The next message, within a bound (a follower never ends by itself).
async fn next(s: &mut Streaming<pb::FollowResponse>) -> Result<pb::FollowResponse, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("a message (or heartbeat) within 20 s")
        .map(|m| m.expect("followers do not end by themselves"))
}

/// What a consumer keeps: records in arrival order as (date, seq), and its checkpoint.
#[derive(Default)]
struct Consumer {
    got: Vec<(i64, u64)>,
    checkpoint: Option<String>,
}

impl Consumer {
    fn take(&mut self, m: pb::FollowResponse) -> bool {
        assert!(
            !m.checkpoint.is_empty(),
            "every message carries a checkpoint"
        );
        let empty = m.records.is_empty();
        self.got
            .extend(m.records.iter().map(|r| (r.creation_date, seq(r))));
        self.checkpoint = Some(m.checkpoint);
        empty
    }

    fn assert_exactly(&self, want: Vec<(i64, u64)>) {
        crate::common::assert_exactly_once(&self.got, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_resumed_at_random_while_the_log_grows_every_record_arrives_once_in_order() {
    let (sim, gw) = sim_and_gateway(live_log(7), |c| {
        c.credential_salt = Some(SecretString::from(SALT));
    })
    .await;
    let lag = Duration::from_millis(700);
    // A starting point among the initial records, so the run backfills, then tails.
    let start = 0;
    let mut rng = fastrand::Rng::with_seed(11);
    let mut consumer = Consumer::default();
    let mut client = gw.client.clone();
    let stop_at = now_ms() + 3_500;
    sim.stop_live_at(stop_at);
    let settled_by = stop_at + lag.as_millis() as i64 + 2_500;
    let mut cuts = 0;
    'follow: loop {
        let from = match &consumer.checkpoint {
            None => since(start),
            Some(c) => from_checkpoint(c),
        };
        let mut s = follow(&mut client, request(from, lag)).await;
        // Read a random number of messages, then cut the call.
        for _ in 0..rng.usize(1..4) {
            let m = next(&mut s).await.expect("no error");
            let heartbeat = consumer.take(m);
            if heartbeat && now_ms() > settled_by {
                break 'follow;
            }
        }
        cuts += 1;
        drop(s);
    }
    assert!(cuts > 3, "the follower was cut and resumed ({cuts} times)");
    let want = sim.expected_records(start, stop_at);
    assert!(
        want.len() > 3000 / 2,
        "a backfill and live records ({})",
        want.len()
    );
    consumer.assert_exactly(want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_now_delivers_only_what_is_created_after_the_call_and_heartbeats() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            live: Some(Live {
                per_second: 50.0,
                burst: 3,
            }),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let before = now_ms();
    let mut client = gw.client.clone();
    let mut s = follow(&mut client, request(None, Duration::from_millis(200))).await;
    let after = now_ms();
    let stop_at = now_ms() + 1_500;
    sim.stop_live_at(stop_at);
    let mut consumer = Consumer::default();
    let mut heartbeats_after_stop = 0;
    while heartbeats_after_stop < 2 {
        if consumer.take(next(&mut s).await.expect("no error")) && now_ms() > stop_at + 1_300 {
            heartbeats_after_stop += 1;
        }
    }
    assert!(
        consumer.got.iter().all(|(d, _)| *d >= before),
        "a record created before the call was delivered"
    );
    let mut want = sim.expected_records(after, stop_at);
    // Records created between `before` and `after` may or may not count as "from now".
    let early: Vec<_> = consumer
        .got
        .iter()
        .filter(|(d, _)| *d < after)
        .copied()
        .collect();
    want.extend(early);
    assert!(!want.is_empty(), "live records were created");
    consumer.assert_exactly(want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_log_gets_a_heartbeat_with_a_fresh_checkpoint_every_poll() {
    let (_sim, gw) = sim_and_gateway(SimulatorConfig::default(), |_| {}).await;
    let mut client = gw.client.clone();
    let mut s = follow(&mut client, request(None, Duration::ZERO)).await;
    let started = std::time::Instant::now();
    let mut checkpoints = Vec::new();
    while checkpoints.len() < 3 {
        let m = next(&mut s).await.expect("no error");
        assert!(m.records.is_empty(), "nothing is created after the call");
        checkpoints.push(m.checkpoint);
    }
    // Three heartbeats in at most ~2 poll intervals (the first comes at once).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(
        checkpoints[1], checkpoints[2],
        "each heartbeat's checkpoint moves on"
    );
}

/// A gateway's first follower learns Confluence's clock from its first range's answer,
/// not from a request of its own: in step with the gateway's clock, one range request
/// reads the first tick. With Confluence's clock 5 s behind, that range (asked as if the
/// clocks agreed, so reaching past what Confluence has settled) is asked again, ending
/// earlier, once the clock is known; nothing is read from the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_follower_learns_confluences_clock_from_its_first_range() {
    for (offset_ms, asked) in [(0, 1), (-5_000, 2)] {
        let (sim, gw) = sim_and_gateway(
            SimulatorConfig {
                records: 100,
                clock_offset: offset_ms,
                ..Default::default()
            },
            |_| {},
        )
        .await;
        let mut client = gw.client.clone();
        // 100 records 5 s apart, the newest at the simulator's now: all of them after
        // `start`, and the oldest 50 settled at once.
        let start = sim.now_ms() - 10 * 60 * 1000;
        let mut req = request(since(start), Duration::from_secs(1));
        req.max_records = Some(50);
        let consumer = follow_to_end(&mut client, req, Duration::from_secs(20)).await;
        let want = sim.expected_records(start, sim.now_ms());
        consumer.assert_exactly(want[..50].to_vec());
        // Each range's first page (a confirming read at the page's end aside).
        let ranges: Vec<(i64, i64)> = sim
            .requests()
            .iter()
            .filter(|r| r.endpoint == Some(AuditEndpoint::Range))
            .filter(|r| r.param("start") == Some("0"))
            .map(|r| {
                let date = |name| r.param(name).and_then(|v| v.parse::<i64>().ok());
                (
                    date("startDate").expect("a date"),
                    date("endDate").expect("a date"),
                )
            })
            .collect();
        assert_eq!(ranges.len(), asked, "offset {offset_ms} ms: {ranges:?}");
        assert!(
            ranges.iter().all(|&(from, _)| from <= start),
            "a range asked for the clock alone: {ranges:?}"
        );
        if asked == 2 {
            assert!(
                ranges[1].1 < ranges[0].1 && ranges[0].0 == ranges[1].0,
                "the range asked again ends earlier: {ranges:?}"
            );
        }
    }
}

/// Followers that start together on a gateway that has not seen Confluence's clock yet
/// do not each ask their first range past the cache: one does, the others then read it
/// through the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_starting_together_ask_their_first_range_about_once() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 100,
            latency: Duration::from_millis(50),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let start = sim.now_ms() - 10 * 60 * 1000;
    let followers: Vec<_> = (0..10)
        .map(|_| {
            let mut client = gw.client.clone();
            let mut req = request(since(start), Duration::from_secs(1));
            req.max_records = Some(50);
            tokio::spawn(async move {
                follow_to_end(&mut client, req, Duration::from_secs(20))
                    .await
                    .got
                    .len()
            })
        })
        .collect();
    for f in followers {
        assert_eq!(f.await.expect("a follower"), 50);
    }
    let first_pages = sim
        .requests()
        .iter()
        .filter(|r| r.endpoint == Some(AuditEndpoint::Range))
        .filter(|r| r.param("start") == Some("0"))
        .count();
    // One past the cache, then one shared by the rest per range they compute (the poll
    // grid is a second: on a slow machine one or two boundaries may fall between them).
    assert!(
        first_pages <= 4,
        "{first_pages} first pages for 10 followers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_records_ends_with_ok_after_exactly_that_many() {
    let (_sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 5000,
            ties: 5,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let mut client = gw.client.clone();
    let mut req = request(since(0), Duration::ZERO);
    req.max_records = Some(2345);
    let consumer = follow_to_end(&mut client, req, Duration::from_secs(20)).await;
    assert_eq!(consumer.got.len(), 2345);
    assert!(consumer.got.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_without_an_upstream_request() {
    let (sim, gw) = sim_and_gateway(SimulatorConfig::default(), |_| {}).await;
    let mut client = gw.client.clone();
    // A checkpoint of a follower of another filter.
    let mut s = follow(&mut client, request(None, Duration::ZERO)).await;
    let other = next(&mut s).await.expect("heartbeat").checkpoint;
    drop(s);
    let resume_token = {
        let mut st = client
            .stream_since(pb::StreamSinceRequest {
                max_records: Some(1),
                ..Default::default()
            })
            .await
            .expect("stream")
            .into_inner();
        st.message().await.expect("ok").expect("one").resume_token
    };
    let before = sim.request_count();
    let cases: Vec<(pb::FollowRequest, &str)> = vec![
        (
            request(from_checkpoint("garbage"), Duration::ZERO),
            "checkpoint",
        ),
        (
            request(from_checkpoint(&resume_token), Duration::ZERO),
            "checkpoint",
        ),
        (
            pb::FollowRequest {
                search_string: Some("x".into()),
                ..request(from_checkpoint(&other), Duration::ZERO)
            },
            "checkpoint",
        ),
        (
            pb::FollowRequest {
                max_records: Some(0),
                ..request(None, Duration::ZERO)
            },
            "max_records",
        ),
        (
            pb::FollowRequest {
                poll_interval: Some(dur(Duration::from_millis(500))),
                ..request(None, Duration::ZERO)
            },
            "poll_interval",
        ),
        (
            pb::FollowRequest {
                lag: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..request(None, Duration::ZERO)
            },
            "lag",
        ),
    ];
    for (req, field) in cases {
        let status = client.follow(req).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let violations = status
            .get_details_bad_request()
            .expect("BadRequest details")
            .field_violations;
        assert_eq!(violations[0].field, field, "{status:?}");
    }
    assert_eq!(sim.request_count(), before, "Confluence was not called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_followers_cost_about_as_many_upstream_requests_as_one() {
    async fn requests_per_tick(followers: usize) -> f64 {
        let (sim, gw) = sim_and_gateway(
            SimulatorConfig {
                records: 10,
                live: Some(Live {
                    per_second: 40.0,
                    burst: 2,
                }),
                ..Default::default()
            },
            |_| {},
        )
        .await;
        let mut streams = Vec::new();
        for _ in 0..followers {
            let mut client = gw.client.clone();
            streams.push(follow(&mut client, request(None, Duration::from_millis(100))).await);
        }
        // Wait for everyone's first heartbeat, then count what 3 ticks cost.
        for s in &mut streams {
            next(s).await.expect("first message");
        }
        let before = sim.request_count_of(AuditEndpoint::Range);
        let mut got = vec![0usize; followers];
        let ticks = 3;
        for _ in 0..ticks {
            for (i, s) in streams.iter_mut().enumerate() {
                got[i] += next(s).await.expect("message").records.len();
            }
        }
        let cost = sim.request_count_of(AuditEndpoint::Range) - before;
        assert!(
            got.iter().all(|&n| n == got[0]),
            "every follower got the same: {got:?}"
        );
        cost as f64 / ticks as f64
    }
    let one = requests_per_tick(1).await;
    let twenty = requests_per_tick(20).await;
    assert!(one >= 1.0, "one follower reads each tick ({one})");
    assert!(
        twenty <= one * 1.5 + 0.5,
        "20 followers: {twenty} upstream requests per tick, one follower: {one}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_followers_with_unavailable_and_another_gateway_resumes_exactly() {
    let sim_config = live_log(23);
    let (sim, mut first) = sim_and_gateway(sim_config, |c| {
        c.credential_salt = Some(SecretString::from(SALT));
        c.server.drain_delay = Duration::ZERO;
    })
    .await;
    let lag = Duration::from_millis(500);
    let start = now_ms() - 20_000;
    let mut consumer = Consumer::default();
    let mut client = first.client.clone();
    let mut s = follow(&mut client, request(since(start), lag)).await;
    for _ in 0..3 {
        consumer.take(next(&mut s).await.expect("no error"));
    }
    let stopping = first.begin_shutdown();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("the follower ends before the shutdown time-out")
        {
            Ok(Some(m)) => {
                consumer.take(m);
            }
            Ok(None) => panic!("a follower must not end with OK at shutdown"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    stopping.await.expect("joined").expect("clean stop");

    // Another gateway with the same salt continues from the checkpoint.
    let mut config = test_config(&sim.base_url());
    config.credential_salt = Some(SecretString::from(SALT));
    let second = spawn_gateway(config).await;
    let stop_at = now_ms() + 1_500;
    sim.stop_live_at(stop_at);
    let mut client = second.client.clone();
    let checkpoint = consumer.checkpoint.clone().expect("a checkpoint");
    let mut s = follow(&mut client, request(from_checkpoint(&checkpoint), lag)).await;
    let settled_by = stop_at + lag.as_millis() as i64 + 2_500;
    loop {
        if consumer.take(next(&mut s).await.expect("no error")) && now_ms() > settled_by {
            break;
        }
    }
    consumer.assert_exactly(sim.expected_records(start, stop_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_200000_records_arrives_whole_in_order() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 200_000,
            ties: 3,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let mut client = gw.client.clone();
    let mut req = request(since(0), Duration::ZERO);
    req.max_records = Some(200_000);
    let consumer = follow_to_end(&mut client, req, Duration::from_secs(60)).await;
    consumer.assert_exactly(sim.expected_records(i64::MIN, i64::MAX));
    let requests = sim.request_count_of(AuditEndpoint::Range);
    eprintln!("backfill: {requests} requests");
    assert!(
        requests < 200_000 / 1000 * 4,
        "{requests} upstream requests for 200 pages of records"
    );
}

/// A follower reads ranges ahead only as far as its reader needs, as a stream does: a
/// slow reader of a backfill finds its ranges landed, and the look-ahead shrinks to a
/// few ranges instead of keeping the whole prefetch (32) in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_backfill_is_read_ahead_only_as_far_as_it_needs() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 200_000,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let mut client = gw.small_window_client().await;
    let mut s = follow(&mut client, request(since(0), Duration::ZERO)).await;
    // A range a message here; the look-ahead sheds a range for each one read while
    // more than the spare wait, so 80 take it from the prefetch down to its least.
    let mut newest = i64::MIN;
    for _ in 0..80 {
        let m = next(&mut s).await.expect("no error");
        assert!(!m.records.is_empty(), "a range of the backfill");
        newest = m
            .records
            .iter()
            .map(|r| r.creation_date)
            .max()
            .unwrap_or(newest);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    requests_once_still(&sim).await;
    // Ranges asked for past what was delivered: those read ahead.
    let ahead = sim
        .requests()
        .iter()
        .filter(|r| r.endpoint == Some(AuditEndpoint::Range))
        .filter_map(|r| r.param("startDate"))
        .filter(|v| v.parse::<i64>().is_ok_and(|start| start > newest))
        .count();
    // About three ranges; room left for fetches slowed by a busy machine (one found
    // in flight doubles the depth).
    assert!(
        ahead <= 12,
        "{ahead} ranges asked for past the newest record delivered"
    );
    drop(s);
}

/// Records that turn visible later than `lag` are noticed, never delivered out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_later_than_lag_are_counted_not_delivered_out_of_order() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 0,
            live: Some(Live {
                per_second: 100.0,
                burst: 1,
            }),
            late_share: 0.5,
            late_by: Duration::from_millis(1_500),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let late_before = audit_gateway::metrics::METRICS.follow_late_records.get();
    let mut client = gw.client.clone();
    let mut s = follow(&mut client, request(None, Duration::ZERO)).await;
    // Four ticks of records: a record is counted late only when the tick that first reads
    // its range comes before it shows and the next one after, which a host too busy to
    // keep the follower's ticks on time can miss for a tick or two.
    let stop_at = now_ms() + 4_000;
    sim.stop_live_at(stop_at);
    let mut consumer = Consumer::default();
    while now_ms() < stop_at + 4_000 {
        consumer.take(next(&mut s).await.expect("no error"));
    }
    assert!(
        consumer.got.windows(2).all(|w| w[0].0 <= w[1].0),
        "out of order"
    );
    let mut got = consumer.got.clone();
    got.sort_unstable();
    got.dedup();
    assert_eq!(
        got.len(),
        consumer.got.len(),
        "a record was delivered twice"
    );
    let noticed = audit_gateway::metrics::METRICS.follow_late_records.get() - late_before;
    assert!(noticed > 0, "late records were counted");
}

/// The `follow` command, killed at random moments and started again each time, ends
/// with an output file holding every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follow_command_resumes_from_its_checkpoint_file_after_being_killed() {
    let (sim, gw) = sim_and_gateway(live_log(31), |_| {}).await;
    let dir = std::env::temp_dir().join(format!("follow-cmd-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (checkpoint, output) = (dir.join("checkpoint.json"), dir.join("audit.ndjson"));
    let run = || {
        crate::common::binary()
            .args(["follow", "--gateway", &format!("http://{}", gw.addr)])
            .args(["--since", "10m", "--poll-interval", "1s", "--lag", "500ms"])
            .arg("--checkpoint-file")
            .arg(&checkpoint)
            .arg("--output")
            .arg(&output)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the binary starts")
    };
    let mut rng = fastrand::Rng::with_seed(5);
    let t0 = now_ms() - 600_000;
    let mut child = run();
    let t1 = now_ms() - 600_000;
    let stop_at = now_ms() + 4_000;
    sim.stop_live_at(stop_at);
    let settled_by = stop_at + 500 + 3_000;
    let mut kills = 0;
    while now_ms() < settled_by {
        // The first kill comes early, most likely before the first checkpoint: the
        // restart must begin where the first run did and cut back what it wrote.
        let wait = if kills == 0 {
            rng.u64(5..60)
        } else {
            rng.u64(200..1200)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().expect("killed");
        child.wait().expect("reaped");
        kills += 1;
        child = run();
    }
    // Let the last one catch up with the stop, then stop it as an operator would: SIGTERM
    // ends it between two messages (a kill now would leave a cut line, which only the
    // next start cuts back).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    audit_gateway::testing::process::terminate(&child);
    let status = child.wait().expect("reaped");
    assert!(
        status.success(),
        "SIGTERM ends the follow command cleanly: {status}"
    );

    let text = std::fs::read_to_string(&output).expect("output");
    let got: Vec<(i64, u64)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON lines");
            let date = v["creationDate"].as_i64().expect("creationDate");
            (date, confluence_sim::record_seq(&v).expect("seq"))
        })
        .collect();
    assert!(kills >= 5, "killed {kills} times");
    assert!(got.iter().all(|(d, _)| *d >= t0), "a record before --since");
    let mut want = sim.expected_records(t1, stop_at);
    want.extend(got.iter().filter(|(d, _)| *d < t1).copied());
    let consumer = Consumer {
        got,
        checkpoint: None,
    };
    consumer.assert_exactly(want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `audit-gateway follow` against `gateway` with `args`, run to its end (at most 60 s).
async fn follow_command(gateway: std::net::SocketAddr, args: &[&str]) -> Finished {
    let child = follow_child(gateway, args);
    tokio::task::spawn_blocking(move || finish_within(child, Duration::from_secs(60)))
        .await
        .expect("joined")
}

/// `audit-gateway follow` against `gateway` with `args`, started (stdout, stderr piped).
fn follow_child(gateway: std::net::SocketAddr, args: &[&str]) -> std::process::Child {
    crate::common::binary()
        .args(["follow", "--gateway", &format!("http://{gateway}")])
        .args(["--poll-interval", "1s", "--lag", "0s"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// The (date, seq) of each whole line of an ndjson output.
fn shipped(output: &std::path::Path) -> Vec<(i64, u64)> {
    std::fs::read_to_string(output)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let date = v["creationDate"].as_i64().expect("creationDate");
            (date, confluence_sim::record_seq(&v).expect("seq"))
        })
        .collect()
}

/// Waits until `done` holds, polling; fails after `limit` with `what`.
async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one line the command ends with, checked to be the whole error.
fn error_line(f: &Finished) -> &str {
    let line = f.stderr.lines().last().unwrap_or_default();
    assert!(line.starts_with("error: "), "{}", f.stderr);
    line
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The shipper outlives a gateway restart with the same salt (UNAVAILABLE, then the
/// checkpoint on the new process), and stops with one line naming the cause when the
/// gateway comes back without a salt: its checkpoint is signed with another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follow_command_resumes_across_a_restart_and_names_a_changed_salt() {
    let sim = spawn_simulator(SimulatorConfig {
        records: 40,
        live: Some(Live {
            per_second: 20.0,
            burst: 2,
        }),
        ..Default::default()
    })
    .await;
    let config = |listen, salt: Option<&str>| {
        let mut c = test_config(&sim.base_url());
        c.listen = listen;
        c.credential_salt = salt.map(SecretString::from);
        c
    };
    let first = spawn_gateway(config(([127, 0, 0, 1], 0).into(), Some(SALT))).await;
    let addr = first.addr;
    let dir = temp_dir("follow-restart");
    let (checkpoint, output) = (dir.join("checkpoint.json"), dir.join("audit.ndjson"));
    let (cp, out) = (
        checkpoint.to_str().expect("utf-8"),
        output.to_str().expect("utf-8"),
    );
    let since = "2000-01-01T00:00:00Z";
    let child = follow_child(
        addr,
        &["--since", since, "--checkpoint-file", cp, "--output", out],
    );
    until(
        Duration::from_secs(20),
        "the backfill and live records",
        || shipped(&output).len() > 50,
    )
    .await;
    first.shutdown().await.expect("a clean stop");

    // The same salt on the same address: the shipper goes on from its checkpoint.
    let second = spawn_gateway(config(addr, Some(SALT))).await;
    let had = shipped(&output).len();
    until(
        Duration::from_secs(20),
        "records through the second gateway",
        || shipped(&output).len() > had + 5,
    )
    .await;
    let stop_at = now_ms();
    sim.stop_live_at(stop_at);
    let want = sim.expected_records(946_684_800_000, stop_at);
    until(
        Duration::from_secs(20),
        "every record up to the stop",
        || shipped(&output).len() >= want.len(),
    )
    .await;
    second.shutdown().await.expect("a clean stop");

    // Restarted without --credential-salt: the checkpoint is refused, and said why.
    let _third = spawn_gateway(config(addr, None)).await;
    let finished =
        tokio::task::spawn_blocking(move || finish_within(child, Duration::from_secs(30)))
            .await
            .expect("joined");
    assert_eq!(
        finished.status.and_then(|s| s.code()),
        Some(3),
        "INVALID_ARGUMENT's code: {}",
        finished.stderr
    );
    let line = error_line(&finished);
    for part in [
        "another credential salt",
        "--credential-salt",
        cp,
        "--since TIME",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    let consumer = Consumer {
        got: shipped(&output),
        checkpoint: None,
    };
    consumer.assert_exactly(want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint of another `--search`, or a damaged one, ends the command with one line
/// saying which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follow_command_says_why_its_checkpoint_is_refused() {
    let (_sim, gw) = sim_and_gateway(SimulatorConfig::default(), |c| {
        c.credential_salt = Some(SecretString::from(SALT));
    })
    .await;
    let dir = temp_dir("follow-refused");
    let checkpoint = dir.join("checkpoint.json");
    let cp = checkpoint.to_str().expect("utf-8");
    let out = dir.join("audit.ndjson");
    let out = out.to_str().expect("utf-8");
    let first = follow_command(
        gw.addr,
        &[
            "--since",
            "2000-01-01T00:00:00Z",
            "--max-records",
            "3",
            "--checkpoint-file",
            cp,
            "--output",
            out,
        ],
    )
    .await;
    assert_eq!(
        first.status.and_then(|s| s.code()),
        Some(0),
        "{}",
        first.stderr
    );

    let other_search = follow_command(gw.addr, &["--checkpoint-file", cp, "--search", "x"]).await;
    assert_eq!(
        other_search.status.and_then(|s| s.code()),
        Some(3),
        "{}",
        other_search.stderr
    );
    let line = error_line(&other_search);
    assert!(line.contains("another --search"), "{line}");
    assert!(line.contains("--since TIME"), "{line}");

    // The file is JSON still, but the checkpoint in it is cut short.
    let mut saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&checkpoint).expect("the file")).expect("JSON");
    let token = saved["checkpoint"]
        .as_str()
        .expect("a checkpoint")
        .to_owned();
    saved["checkpoint"] = token[..token.len() / 2].into();
    std::fs::write(&checkpoint, saved.to_string()).expect("written");
    let damaged = follow_command(gw.addr, &["--checkpoint-file", cp]).await;
    assert_eq!(
        damaged.status.and_then(|s| s.code()),
        Some(3),
        "{}",
        damaged.stderr
    );
    let line = error_line(&damaged);
    assert!(line.contains("damaged"), "{line}");
    assert!(!line.contains("credential salt"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// INTERNAL is not retried forever: a few calls in a row, then the command ends with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follow_command_gives_up_on_a_repeating_internal_error() {
    // Every page Confluence sends is not JSON: INTERNAL after the gateway's retries.
    let upstream = StubUpstream::start(Canned::json("not json")).await;
    let gw = spawn_gateway(test_config(&upstream.base_url())).await;
    let finished = follow_command(gw.addr, &["--since", "1h"]).await;
    assert_eq!(
        finished.status.and_then(|s| s.code()),
        Some(13),
        "INTERNAL's code, not a loop: {}",
        finished.stderr
    );
    let line = error_line(&finished);
    assert!(line.contains("Internal"), "{line}");
    assert!(line.contains("not retried further"), "{line}");
    assert_eq!(
        finished.stderr.matches("following again").count(),
        2,
        "{}",
        finished.stderr
    );
}

/// `since` spans google.protobuf.Timestamp's years, 0001 to 9999, and is followed from
/// either end without a date overflowing; beyond them, and for durations out of their
/// bounds (negative, overflowing), INVALID_ARGUMENT names the field before any upstream
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_inputs_are_bounded_and_far_off_instants_are_followed() {
    let (sim, gw) = sim_and_gateway(SimulatorConfig::default(), |_| {}).await;
    let mut client = gw.client.clone();
    let at = |seconds, nanos| {
        Some(pb::follow_request::From::Since(prost_types::Timestamp {
            seconds,
            nanos,
        }))
    };
    let pd = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
    let (first, last) = (-62_135_596_800, 253_402_300_799);
    let now = request(None, Duration::ZERO);
    let cases = [
        (
            pb::FollowRequest {
                from: at(first - 1, 999_999_999),
                ..now.clone()
            },
            "since",
        ),
        (
            pb::FollowRequest {
                from: at(last + 1, 0),
                ..now.clone()
            },
            "since",
        ),
        (
            pb::FollowRequest {
                from: at(i64::MIN, 0),
                ..now.clone()
            },
            "since",
        ),
        (
            pb::FollowRequest {
                poll_interval: pd(i64::MAX, 999_999_999),
                ..now.clone()
            },
            "poll_interval",
        ),
        (
            pb::FollowRequest {
                poll_interval: pd(3600, 1),
                ..now.clone()
            },
            "poll_interval",
        ),
        (
            pb::FollowRequest {
                poll_interval: pd(2, -1),
                ..now.clone()
            },
            "poll_interval",
        ),
        (
            pb::FollowRequest {
                lag: pd(i64::MIN, 0),
                ..now.clone()
            },
            "lag",
        ),
        (
            pb::FollowRequest {
                lag: pd(24 * 3600, 1),
                ..now.clone()
            },
            "lag",
        ),
    ];
    let before = sim.request_count();
    for (req, field) in cases {
        let status = client.follow(req.clone()).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{req:?}: {status:?}");
        let violations = status
            .get_details_bad_request()
            .expect("BadRequest details")
            .field_violations;
        assert_eq!(violations[0].field, field, "{req:?}: {status:?}");
    }
    assert_eq!(sim.request_count(), before, "Confluence was not called");

    // From the first instant of year 1: the whole log, oldest first.
    let mut req = request(at(first, 0), Duration::ZERO);
    req.max_records = Some(3);
    let consumer = follow_to_end(&mut client, req, Duration::from_secs(20)).await;
    assert_eq!(consumer.got.len(), 3);
    // From the last instant of year 9999: nothing yet, a heartbeat, then more.
    let mut s = follow(&mut client, request(at(last, 999_999_999), Duration::ZERO)).await;
    for _ in 0..2 {
        let m = next(&mut s).await.expect("a heartbeat");
        assert!(m.records.is_empty(), "nothing is that new");
    }
}
