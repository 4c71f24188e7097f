//! `StreamSince` end to end: every record of the window exactly once and in order, over
//! capped limits, live inserts, cache/fresh mixes, faults, cuts and resumes.

use std::time::Duration;

use audit_gateway::{
    GatewayConfig,
    metrics::METRICS,
    pb::{self, audit_service_client::AuditServiceClient},
};
use confluence_sim::{Fault, SimulatorConfig, SimulatorHandle};
use tonic::{Code, Streaming, transport::Channel};
use tonic_types::StatusExt;

use crate::common::{TestGateway, requests_once_still, seq, sim_and_gateway};

/// The gateway's default `stream_prefetch`.
fn default_prefetch() -> usize {
    GatewayConfig::DEFAULT.stream_prefetch
}

fn window(page_size: i32) -> pb::StreamSinceRequest {
    pb::StreamSinceRequest {
        page_size: Some(page_size),
        ..Default::default()
    }
}

/// Every message of a stream, and how it ended.
async fn drain(
    mut s: Streaming<pb::StreamSinceResponse>,
) -> (Vec<pb::StreamSinceResponse>, Option<tonic::Status>) {
    let mut out = Vec::new();
    loop {
        match s.message().await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return (out, None),
            Err(status) => return (out, Some(status)),
        }
    }
}

async fn stream_all(
    client: &mut AuditServiceClient<Channel>,
    req: pb::StreamSinceRequest,
) -> Vec<pb::StreamSinceResponse> {
    let s = client
        .stream_since(req)
        .await
        .expect("stream opens")
        .into_inner();
    let (messages, end) = drain(s).await;
    assert!(end.is_none(), "stream failed: {end:?}");
    messages
}

fn seqs(messages: &[pb::StreamSinceResponse]) -> Vec<u64> {
    messages
        .iter()
        .flat_map(|m| m.records.iter().map(seq))
        .collect()
}

/// `n` newest-first sequence numbers ending at 0: what a whole log of `n` streams as.
fn whole(n: u64) -> Vec<u64> {
    (0..n).rev().collect()
}

async fn setup(
    records: usize,
    config: SimulatorConfig,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> (SimulatorHandle, TestGateway) {
    sim_and_gateway(SimulatorConfig { records, ..config }, tweak).await
}

#[tokio::test]
async fn windows_of_every_size_stream_exactly_once_in_order() {
    for (records, page_size) in [(0, 10), (1, 10), (10, 10), (11, 10), (95, 10), (250, 7)] {
        let (sim, mut gw) = setup(records, SimulatorConfig::default(), |_| {}).await;
        let messages = stream_all(&mut gw.client, window(page_size)).await;
        assert_eq!(
            seqs(&messages),
            whole(records as u64),
            "{records} records, pages of {page_size}"
        );
        assert!(
            messages
                .iter()
                .all(|m| !m.records.is_empty() && !m.resume_token.is_empty())
        );
        assert!(
            sim.request_count() <= records / page_size as usize + 2 + default_prefetch(),
            "{records}: {} requests",
            sim.request_count()
        );
    }
}

#[tokio::test]
async fn server_capped_limits_still_deliver_everything_once() {
    let (_sim, mut gw) = setup(
        500,
        SimulatorConfig {
            max_limit: Some(33),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let messages = stream_all(&mut gw.client, window(1000)).await;
    assert_eq!(seqs(&messages), whole(500));
    assert!(messages.iter().all(|m| m.records.len() <= 33));
}

#[tokio::test]
async fn live_inserts_before_every_page_neither_repeat_nor_skip() {
    let (sim, mut gw) = setup(
        300,
        SimulatorConfig {
            inserts_per_request: 7,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let got = seqs(&stream_all(&mut gw.client, window(20)).await);
    // Everything from the newest record when the first page was read down to the oldest,
    // each once: consecutive sequence numbers ending at 0.
    let head = got[0];
    assert!(head >= 300 + 7 - 1, "head {head}");
    assert_eq!(got, whole(head + 1));
    assert!(
        sim.record_count() > head as usize + 1,
        "events kept arriving during the stream"
    );
}

#[tokio::test]
async fn a_mix_of_stale_cached_and_fresh_pages_is_realigned() {
    let (sim, mut gw) = setup(100, SimulatorConfig::default(), |_| {}).await;
    // Cache pages 2 and 4 of the stream's walk (starts 20 and 40, 11 records each) as they
    // are now, then let events arrive: those cached pages are stale snapshots.
    for start in [20, 40] {
        gw.client
            .get_since(pb::GetSinceRequest {
                start: Some(start),
                limit: Some(11),
                ..Default::default()
            })
            .await
            .expect("prime cache");
    }
    sim.insert_records(3);
    let got = seqs(&stream_all(&mut gw.client, window(10)).await);
    assert_eq!(got, whole(103));
}

#[tokio::test]
async fn random_upstream_faults_are_retried_without_repeats_or_gaps() {
    let (sim, mut gw) = setup(
        400,
        SimulatorConfig {
            fault_rate: 0.2,
            inserts_per_request: 7,
            max_limit: Some(50),
            ..Default::default()
        },
        |c| c.upstream.retries = 8,
    )
    .await;
    let got = seqs(&stream_all(&mut gw.client, window(1000)).await);
    assert_eq!(got, whole(got[0] + 1));
    assert!(got.len() >= 400);
    let faulted = sim.request_count();
    assert!(
        faulted > got.len() / 50,
        "faults were injected ({faulted} requests)"
    );
}

#[tokio::test]
async fn a_long_stream_rides_out_cut_bodies_in_one_call() {
    // 15 % of 200 bodies cut short (full Content-Length, half the body, connection
    // closed), at the gateway's default retry settings but for a quick backoff.
    let (sim, mut gw) = setup(
        5000,
        SimulatorConfig {
            cut_rate: 0.15,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    // Pages of 100: about 50 pages, so about 9 cut bodies, each retried.
    let messages = stream_all(&mut gw.client, window(100)).await;
    assert_eq!(
        seqs(&messages),
        whole(5000),
        "every record once, in one call"
    );
    let pages = 5000 / 100;
    eprintln!("5,000 records, 15 % cut: {} requests", sim.request_count());
    assert!(
        sim.request_count() > pages + 1,
        "bodies were cut and fetched again ({} requests)",
        sim.request_count()
    );
}

#[tokio::test]
async fn a_stream_retries_the_500s_and_cut_bodies_a_get_since_gives_up_on() {
    // Three plain 500s and three cut bodies in a row: past a one-shot call's bounds (one
    // retry after a 500), within a long call's (3 x --upstream-retries, all alike).
    let faults = || {
        let cut = Fault::Cut;
        [
            Fault::status_json(500),
            cut.clone(),
            Fault::status_json(500),
            cut.clone(),
        ]
        .into_iter()
        .chain([Fault::status_json(500), cut])
    };
    let (sim, mut gw) = setup(300, SimulatorConfig::default(), |_| {}).await;
    sim.push_faults(faults());
    // The first page is fetched alone, so every fault lands on its attempts.
    let messages = stream_all(&mut gw.client, window(100)).await;
    assert_eq!(seqs(&messages), whole(300));
    let (sim, mut gw) = setup(300, SimulatorConfig::default(), |_| {}).await;
    sim.push_faults(faults());
    let status = gw
        .client
        .get_since(pb::GetSinceRequest::default())
        .await
        .expect_err("a one-shot call retries a plain 500 once");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone()),
        Some("UPSTREAM_UNAVAILABLE".to_owned()),
        "{status:?}"
    );
    assert_eq!(sim.request_count(), 3, "500, cut, 500: no more");
}

#[tokio::test]
async fn concurrent_streams_ride_out_a_fifth_of_answers_failing() {
    // 500, 502, 503, 429 with Retry-After 0, resets and cut bodies, one answer in five.
    let (sim, gw) = setup(
        3000,
        SimulatorConfig {
            fault_rate: 0.2,
            ..Default::default()
        },
        // No cache: each stream fetches every page itself, so each meets the faults.
        |c| c.cache.ttl = Duration::ZERO,
    )
    .await;
    const STREAMS: usize = 20;
    let retries = METRICS.upstream_retries.get();
    let streams: Vec<_> = (0..STREAMS)
        .map(|_| {
            let mut client = gw.client.clone();
            tokio::spawn(async move { seqs(&stream_all(&mut client, window(500)).await) })
        })
        .collect();
    for (i, stream) in streams.into_iter().enumerate() {
        let got = stream.await.expect("no panic");
        assert_eq!(got, whole(3000), "stream {i}: every record once");
    }
    // Each stream asks for at least 7 pages (6 full, then the short one).
    let pages = STREAMS * 7;
    eprintln!(
        "{STREAMS} streams, 20 % faults: {} requests",
        sim.request_count()
    );
    assert!(sim.request_count() >= pages);
    let retried = METRICS.upstream_retries.get() - retries;
    assert!(
        retried >= (pages / 10) as u64,
        "faults were met and retried ({retried} retries for at least {pages} pages)"
    );
}

#[tokio::test]
async fn max_records_ends_exactly_and_resume_continues_after_it() {
    let (sim, mut gw) = setup(120, SimulatorConfig::default(), |_| {}).await;
    let first = stream_all(
        &mut gw.client,
        pb::StreamSinceRequest {
            max_records: Some(25),
            ..window(10)
        },
    )
    .await;
    assert_eq!(seqs(&first), (95..120).rev().collect::<Vec<_>>());
    // Events arrive between the cut and the resume; nothing repeats, nothing is lost.
    sim.insert_records(4);
    let token = first.last().expect("messages").resume_token.clone();
    let rest = stream_all(
        &mut gw.client,
        pb::StreamSinceRequest {
            resume_token: token,
            ..window(10)
        },
    )
    .await;
    assert_eq!(seqs(&rest), whole(95));
}

#[tokio::test]
async fn a_failed_page_ends_the_stream_after_what_was_delivered_and_resume_recovers() {
    let (sim, mut gw) = setup(60, SimulatorConfig::default(), |c| {
        c.upstream.retries = 0;
        c.stream_prefetch = 1;
    })
    .await;
    // Pages 1 and 2 succeed, page 3 is refused.
    sim.push_faults([
        Fault::Delay(Duration::ZERO),
        Fault::Delay(Duration::ZERO),
        Fault::status_json(403),
    ]);
    let s = gw
        .client
        .stream_since(window(10))
        .await
        .expect("opens")
        .into_inner();
    let (delivered, end) = drain(s).await;
    let status = end.expect("the stream ends with the page's status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Pages ask for the 10 per message plus an overlap of 8: the first delivers 18, the
    // second (starting just before the last record delivered) 16 new ones.
    assert_eq!(seqs(&delivered), (26..60).rev().collect::<Vec<_>>());
    let token = delivered.last().expect("two pages").resume_token.clone();
    let rest = stream_all(
        &mut gw.client,
        pb::StreamSinceRequest {
            resume_token: token,
            ..window(10)
        },
    )
    .await;
    assert_eq!(seqs(&rest), whole(26));
}

#[tokio::test]
async fn bad_tokens_and_fields_are_invalid_arguments_before_any_upstream_call() {
    let (sim, mut gw) = setup(30, SimulatorConfig::default(), |_| {}).await;
    let first = stream_all(
        &mut gw.client,
        pb::StreamSinceRequest {
            max_records: Some(5),
            ..window(5)
        },
    )
    .await;
    let token = first[0].resume_token.clone();
    let before = sim.request_count();
    let mut corrupted = token.clone().into_bytes();
    corrupted[4] = if corrupted[4] == b'A' { b'B' } else { b'A' };
    let cases = [
        (
            pb::StreamSinceRequest {
                resume_token: token.clone(),
                search_string: Some("other".into()),
                ..window(5)
            },
            "resume_token",
        ),
        (
            pb::StreamSinceRequest {
                resume_token: String::from_utf8(corrupted).expect("ascii"),
                ..window(5)
            },
            "resume_token",
        ),
        (window(0), "page_size"),
        (window(1001), "page_size"),
        (
            pb::StreamSinceRequest {
                max_records: Some(-1),
                ..window(5)
            },
            "max_records",
        ),
        (
            pb::StreamSinceRequest {
                units: 42,
                ..window(5)
            },
            "units",
        ),
    ];
    for (req, field) in cases {
        let status = gw.client.stream_since(req).await.expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let details = status.get_error_details();
        assert_eq!(
            details.bad_request().expect("BadRequest").field_violations[0].field,
            field
        );
    }
    assert_eq!(sim.request_count(), before);
}

#[tokio::test]
async fn many_consumers_of_one_window_cost_one_upstream_call_per_page() {
    let (sim, gw) = setup(
        200,
        SimulatorConfig {
            latency: Duration::from_millis(20),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut client = gw.client.clone();
        tasks.push(tokio::spawn(async move {
            seqs(&stream_all(&mut client, window(10)).await)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("consumer"), whole(200));
    }
    // 20 pages (the last one short of the 11 asked), plus at most the prefetch window of
    // look-ahead past the end, each fetched once for all consumers.
    let pages = 20;
    assert!(
        sim.request_count() <= pages + default_prefetch(),
        "{} upstream requests for {pages} pages",
        sim.request_count()
    );
}

/// The upstream requests made, once they stop, for a reader that takes `read` pages of
/// a 20,000-record window through small HTTP/2 windows, `pause` after each, and then
/// stops reading, from a gateway with `tweak`'s settings.
async fn requests_for_a_slow_reader(
    read: usize,
    pause: Duration,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> usize {
    let (sim, gw) = setup(20_000, SimulatorConfig::default(), tweak).await;
    let mut client = gw.small_window_client().await;
    let mut s = client
        .stream_since(window(200))
        .await
        .expect("opens")
        .into_inner();
    for _ in 0..read {
        s.message().await.expect("ok").expect("a page");
        tokio::time::sleep(pause).await;
    }
    let last = requests_once_still(&sim).await;
    drop(s);
    last
}

#[tokio::test]
async fn a_slow_consumer_holds_the_gateway_to_the_prefetch_window() {
    let (prefetch, read) = (4, 5);
    let last =
        requests_for_a_slow_reader(read, Duration::ZERO, |c| c.stream_prefetch = prefetch).await;
    // Ahead of what was read: a message in flow-control buffers, one in the channel,
    // one held by the producer, and the prefetch window.
    let bound = read + 3 + prefetch;
    assert!(
        last <= bound,
        "{last} upstream requests with {read} pages read (bound {bound})"
    );
}

#[tokio::test]
async fn a_slow_reader_is_read_ahead_only_as_far_as_it_needs() {
    // Pages land in milliseconds, the reader takes one every 20 ms: a page or two ahead
    // covers a fetch, not the default prefetch of 32. The pages that landed while it
    // waited for its first look-ahead page are taken as a backlog (`Depth`), so the
    // depth shrinks only after them: 60 pages show it.
    let read = 60;
    let last = requests_for_a_slow_reader(read, Duration::from_millis(20), |_| {}).await;
    // As in the test above, three pages between the reader and the producer; then the
    // look-ahead, with room for fetches slowed by a busy machine.
    let bound = read + 3 + default_prefetch() / 2;
    assert!(
        last <= bound,
        "{last} upstream requests with {read} pages read (bound {bound})"
    );
}

#[tokio::test]
async fn a_cancelled_stream_stops_fetching() {
    let (sim, gw) = setup(
        20_000,
        SimulatorConfig {
            latency: Duration::from_millis(100),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let mut client = gw.small_window_client().await;
    let mut s = client
        .stream_since(window(200))
        .await
        .expect("opens")
        .into_inner();
    s.message().await.expect("ok").expect("a page");
    s.message().await.expect("ok").expect("a page");
    drop(s);
    // Let requests already on the wire land (latency 100 ms), then check that no new
    // ones start: the producer stopped and its pending fetches were aborted.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let settled = sim.request_count();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        sim.request_count(),
        settled,
        "requests continued after the caller left"
    );
    // Far short of the window's 100 pages: two read, a few between producer and wire,
    // and the prefetch window.
    assert!(settled <= 2 + 3 + default_prefetch(), "{settled} requests");
}

#[tokio::test]
async fn the_window_filters_reach_confluence_on_every_page() {
    let (sim, mut gw) = setup(50, SimulatorConfig::default(), |_| {}).await;
    let req = pb::StreamSinceRequest {
        number: Some(2),
        units: pb::TimeUnit::Days as i32,
        search_string: Some("#1".into()),
        page_size: Some(5),
        ..Default::default()
    };
    let got = seqs(&stream_all(&mut gw.client, req).await);
    assert!(!got.is_empty());
    assert!(
        got.iter().all(|s| s.to_string().starts_with('1')),
        "{got:?}"
    );
    for r in sim.requests() {
        let q: Vec<(&str, &str)> = r
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert!(
            q.contains(&("number", "2")) && q.contains(&("units", "DAYS")),
            "{q:?}"
        );
        assert!(
            q.contains(&("searchString", "#1")) && q.contains(&("limit", "13")),
            "{q:?}"
        );
    }
}

#[tokio::test]
async fn tokens_are_signed_with_the_salt_so_replicas_share_them_and_nobody_forges_one() {
    let sim = crate::common::spawn_simulator(SimulatorConfig {
        records: 40,
        ..Default::default()
    })
    .await;
    let replica = |salt: &'static str| {
        let mut config = crate::common::test_config(&sim.base_url());
        config.credential_salt = Some(salt.into());
        crate::common::spawn_gateway(config)
    };
    let mut a = replica("one salt for every replica").await;
    let mut b = replica("one salt for every replica").await;
    let mut other = replica("somebody else's salt").await;
    let first = stream_all(
        &mut a.client,
        pb::StreamSinceRequest {
            max_records: Some(15),
            ..window(10)
        },
    )
    .await;
    let token = first.last().expect("messages").resume_token.clone();
    let resume = || pb::StreamSinceRequest {
        resume_token: token.clone(),
        ..window(10)
    };

    // A gateway with another salt cannot read it, and asks Confluence nothing.
    let before = sim.request_count();
    let status = other
        .client
        .stream_since(resume())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(sim.request_count(), before);

    // A replica with the same salt continues the stream.
    let rest = stream_all(&mut b.client, resume()).await;
    let mut all = seqs(&first);
    all.extend(seqs(&rest));
    assert_eq!(all, whole(40));
}

#[tokio::test]
async fn a_misbehaving_confluence_still_gets_every_surviving_record_exactly_once() {
    // Everything Confluence is allowed to do at once: ties reshuffled on every request,
    // arrivals and deletions of the oldest records before every request, pages capped at
    // 40 while the requested limit is echoed, 10 % of bodies cut, other faults.
    let (sim, mut gw) = setup(
        3000,
        SimulatorConfig {
            ties: 5,
            inserts_per_request: 3,
            deletes_per_request: 2,
            max_limit: Some(40),
            limit_echo: confluence_sim::LimitEcho::Requested,
            cut_rate: 0.1,
            fault_rate: 0.05,
            ..Default::default()
        },
        |c| c.upstream.retries = 6,
    )
    .await;
    let mut delivered: Vec<pb::AuditRecord> = Vec::new();
    let mut token = String::new();
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls < 200, "the window did not end");
        if calls == 3 {
            // Halfway, the server stops echoing any limit at all.
            sim.set_limit_echo(confluence_sim::LimitEcho::Omitted);
        }
        let req = pb::StreamSinceRequest {
            max_records: Some(500),
            resume_token: token.clone(),
            ..window(100)
        };
        let s = gw
            .client
            .stream_since(req)
            .await
            .expect("opens")
            .into_inner();
        let (messages, end) = drain(s).await;
        let got: usize = messages.iter().map(|m| m.records.len()).sum();
        if let Some(last) = messages.last() {
            token = last.resume_token.clone();
        }
        delivered.extend(messages.into_iter().flat_map(|m| m.records));
        match end {
            // Failures after retries (a cut body, a 503): resume, as a client would.
            Some(status) => assert_ne!(status.code(), Code::InvalidArgument, "{status:?}"),
            None if got == 500 => {}
            None => break,
        }
    }
    for pair in delivered.windows(2) {
        assert!(
            pair[0].creation_date >= pair[1].creation_date,
            "order broken: {} then {}",
            pair[0].summary,
            pair[1].summary
        );
    }
    let mut got: Vec<u64> = delivered.iter().map(seq).collect();
    got.sort_unstable();
    let repeated: Vec<u64> = got
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(repeated.is_empty(), "delivered twice: {repeated:?}");
    // The window's top is the first record delivered; what survives of it is what the
    // simulator holds now up to that sequence number (later ones arrived after the stream
    // began). Read from the simulator, not through a page: the newest millisecond holds
    // several arrivals, listed in a fresh order on every request, so no one record of a
    // page tells the newest sequence number, nor therefore the oldest.
    let top = seq(&delivered[0]);
    let surviving: Vec<u64> = sim
        .expected_records(i64::MIN, i64::MAX)
        .into_iter()
        .map(|(_, seq)| seq)
        .filter(|&s| s <= top)
        .collect();
    assert!(
        surviving.len() > 1000,
        "too little of the window survived to tell: {} of them, {} requests, top {top}",
        surviving.len(),
        sim.request_count()
    );
    let missing: Vec<u64> = surviving
        .iter()
        .copied()
        .filter(|s| got.binary_search(s).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} surviving records missing, e.g. {:?}",
        missing.len(),
        surviving.len(),
        &missing[..missing.len().min(10)]
    );
}

#[tokio::test]
async fn a_token_older_than_the_window_ends_promptly_without_walking_it() {
    let (sim, mut gw) = setup(3000, SimulatorConfig::default(), |_| {}).await;
    let first = stream_all(
        &mut gw.client,
        pb::StreamSinceRequest {
            max_records: Some(20),
            ..window(10)
        },
    )
    .await;
    assert_eq!(seqs(&first), (2980..3000).rev().collect::<Vec<_>>());
    let token = first.last().expect("messages").resume_token.clone();
    // Everything at and past where the stream stood leaves the log (retention, or the
    // relative window's lower bound moving on), and 2000 events arrive meanwhile.
    sim.delete_records(2981);
    sim.insert_records(2000);
    let before = sim.request_count();
    let rest = stream_all(
        &mut gw.client,
        pb::StreamSinceRequest {
            resume_token: token,
            ..window(10)
        },
    )
    .await;
    assert!(seqs(&rest).is_empty(), "{:?}", seqs(&rest));
    // Locating the boundary by date takes a few requests, not one per page of the 2000.
    let asked = sim.request_count() - before;
    assert!(asked <= 30, "{asked} requests");
}

/// Look-ahead past a window's end is dropped once the stream ends: loads still waiting
/// for an upstream slot send nothing, since nobody waits for them any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_ahead_past_the_end_sends_nothing_once_the_stream_is_done() {
    let (sim, gw) = setup(
        5_050,
        SimulatorConfig {
            latency: Duration::from_millis(30),
            ..Default::default()
        },
        |c| {
            // One request at a time, so look-ahead queues for its slot.
            c.upstream.concurrency = 1;
            c.stream_prefetch = 8;
        },
    )
    .await;
    let mut client = gw.client.clone();
    let messages = stream_all(&mut client, window(1000)).await;
    assert_eq!(seqs(&messages), whole(5_050));
    // Queued behind whatever look-ahead is left (the slot is first come, first served):
    // when it is answered, every earlier load has been sent or dropped.
    let mut sentinel = client.clone();
    sentinel
        .get_since(pb::GetSinceRequest {
            start: Some(1),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .expect("sentinel");
    let starts: Vec<i64> = sim
        .requests()
        .iter()
        .filter_map(|r| r.param("start").and_then(|v| v.parse().ok()))
        .collect();
    let past_end = starts.iter().filter(|&&s| s >= 5_050).count();
    // The page after the short one may have been in flight already; the rest queued.
    assert!(
        past_end <= 2,
        "{past_end} requests past the window's end (starts {starts:?})"
    );
}
