//! Overload protection end to end: the cap on open `StreamSince` calls, the per-connection
//! HTTP/2 stream limit, the cap on requests in flight to Confluence, and idle streams.

use std::time::{Duration, Instant};

use audit_gateway::pb::{self, audit_service_client::AuditServiceClient};
use confluence_sim::SimulatorConfig;
use tonic::{Code, Status, Streaming, transport::Channel};
use tonic_types::StatusExt;

use crate::common::sim_and_gateway;

fn window(page_size: i32) -> pb::StreamSinceRequest {
    pb::StreamSinceRequest {
        page_size: Some(page_size),
        ..Default::default()
    }
}

/// Records received, or the status the stream ended with.
async fn drain(mut s: Streaming<pb::StreamSinceResponse>) -> Result<usize, Status> {
    let mut n = 0;
    while let Some(m) = s.message().await? {
        n += m.records.len();
    }
    Ok(n)
}

fn assert_refused(status: &Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let d = status.get_error_details();
    assert_eq!(
        d.error_info().map(|i| i.reason.as_str()),
        Some("TOO_MANY_STREAMS")
    );
    assert!(d.retry_info().is_some(), "{status:?}");
}

/// Opens a stream, retrying refusals for up to 5 s: a slot is given back when the
/// gateway drops the response stream, a moment after the client sees its end.
async fn open_when_free(
    client: &mut AuditServiceClient<Channel>,
    req: pb::StreamSinceRequest,
) -> Streaming<pb::StreamSinceResponse> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match client.stream_since(req.clone()).await {
            Ok(s) => return s.into_inner(),
            Err(status) if Instant::now() < until => {
                assert_refused(&status);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(status) => panic!("no slot came free within 5 s: {status:?}"),
        }
    }
}

#[tokio::test]
async fn streams_beyond_the_cap_are_refused_at_once_and_the_rest_served() {
    let max_streams = 8;
    let records = 60;
    // Each stream takes at least two round trips of 400 ms (its first page alone, then
    // the rest): the refusals must all come back before any of the 8 ends.
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records,
            latency: Duration::from_millis(400),
            ..Default::default()
        },
        |c| c.max_streams = max_streams,
    )
    .await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let mut client = gw.client.clone();
        tasks.push(tokio::spawn(async move {
            let result = match client.stream_since(window(10)).await {
                Ok(s) => drain(s.into_inner()).await.map(Ok),
                Err(status) => Ok(Err(status)),
            };
            (result, started.elapsed())
        }));
    }
    let mut served_ends = Vec::new();
    let mut refusals = Vec::new();
    for t in tasks {
        match t.await.expect("caller") {
            (Ok(Ok(n)), at) => {
                assert_eq!(n, records, "a served stream delivers the whole window");
                served_ends.push(at);
            }
            (Ok(Err(status)), at) => {
                assert_refused(&status);
                refusals.push(at);
            }
            (Err(status), _) => panic!("a served stream failed: {status:?}"),
        }
    }
    assert_eq!(
        (served_ends.len(), refusals.len()),
        (max_streams, 30 - max_streams)
    );
    let first_end = served_ends.iter().min().expect("served");
    let last_refusal = refusals.iter().max().expect("refused");
    assert!(
        last_refusal < first_end,
        "refusals came by {last_refusal:?}, the first served stream ended at {first_end:?}: \
         they were queued"
    );
    assert!(sim.request_count() > 0);
}

#[tokio::test]
async fn a_slot_is_held_for_the_stream_s_life_and_freed_when_it_ends_or_is_cancelled() {
    let (_sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20_000,
            ..Default::default()
        },
        |c| c.max_streams = 1,
    )
    .await;
    let mut client = gw.small_window_client().await;
    // A long stream, read once and then left unread: it stays open and holds the slot.
    let mut long = client
        .stream_since(window(200))
        .await
        .expect("opens")
        .into_inner();
    long.message().await.expect("ok").expect("a page");
    let status = client
        .stream_since(window(200))
        .await
        .expect_err("the only slot is taken");
    assert_refused(&status);
    // Cancelled: the slot comes back.
    drop(long);
    let short = pb::StreamSinceRequest {
        max_records: Some(5),
        ..window(5)
    };
    let s = open_when_free(&mut client, short.clone()).await;
    assert_eq!(drain(s).await.expect("served"), 5);
    // Ended: the slot comes back too.
    let s = open_when_free(&mut client, short).await;
    assert_eq!(drain(s).await.expect("served"), 5);
}

#[tokio::test]
async fn upstream_requests_never_exceed_the_concurrency_cap_and_all_are_served() {
    let cap = 4;
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 100,
            latency: Duration::from_millis(100),
            ..Default::default()
        },
        |c| c.upstream.concurrency = cap,
    )
    .await;
    let mut tasks = Vec::new();
    for start in 0..40 {
        let mut client = gw.client.clone();
        // Distinct pages: the cache cannot merge them into fewer loads.
        tasks.push(tokio::spawn(async move {
            client
                .get_since(pb::GetSinceRequest {
                    start: Some(start),
                    limit: Some(5),
                    ..Default::default()
                })
                .await
        }));
    }
    for t in tasks {
        let page = t.await.expect("caller").expect("served").into_inner();
        assert_eq!(page.results.len(), 5);
    }
    assert_eq!(sim.request_count(), 40);
    assert_eq!(
        sim.max_in_flight(),
        cap,
        "Confluence saw {} requests at once",
        sim.max_in_flight()
    );
}

#[tokio::test]
async fn a_caller_waiting_for_an_upstream_slot_leaves_at_its_deadline() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 100,
            latency: Duration::from_secs(2),
            ..Default::default()
        },
        |c| c.upstream.concurrency = 1,
    )
    .await;
    let page = |start| pb::GetSinceRequest {
        start: Some(start),
        limit: Some(5),
        ..Default::default()
    };
    // Takes the only slot for 2 s.
    let mut holder = gw.client.clone();
    let held = tokio::spawn(async move { holder.get_since(page(0)).await });
    let until = Instant::now() + Duration::from_secs(5);
    while sim.request_count() == 0 {
        assert!(
            Instant::now() < until,
            "the first call never reached Confluence"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut client = gw.client.clone();
    let mut req = tonic::Request::new(page(1));
    req.set_timeout(Duration::from_millis(300));
    let asked = Instant::now();
    let status = client.get_since(req).await.expect_err("no slot in time");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "answered after {:?}",
        asked.elapsed()
    );
    held.await.expect("holder").expect("served");
}

/// Requests the simulator received for windows of `number` units.
fn requests_for(sim: &confluence_sim::SimulatorHandle, number: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.param("number") == Some(number))
        .count()
}

#[tokio::test]
async fn a_stream_left_unread_ends_and_gives_back_its_slot() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20_000,
            ..Default::default()
        },
        |c| {
            c.max_streams = 1;
            c.stream_idle_timeout = Duration::from_millis(300);
        },
    )
    .await;
    let mut client = gw.small_window_client().await;
    let idle_window = pb::StreamSinceRequest {
        number: Some(3),
        ..window(200)
    };
    let mut idle = client
        .stream_since(idle_window)
        .await
        .expect("opens")
        .into_inner();
    idle.message().await.expect("ok").expect("a page");
    // Read nothing more. The only slot comes back once the idle time-out ends the
    // producer (without it, never: the stream stays open).
    let mut other = gw.client.clone();
    let probe = pb::StreamSinceRequest {
        number: Some(2),
        max_records: Some(5),
        ..window(5)
    };
    let s = open_when_free(&mut other, probe).await;
    assert_eq!(drain(s).await.expect("served"), 5);
    // The idle stream's producer is gone: its window sees no more requests.
    let settled = requests_for(&sim, "3");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        requests_for(&sim, "3"),
        settled,
        "the idle stream kept fetching"
    );
    assert!(
        settled < 100,
        "{settled} requests: the whole window was fetched"
    );
    // Reading again: what was queued, then the reason the stream ended.
    let status = loop {
        match idle.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("an idle stream looked complete"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone()),
        Some("STREAM_IDLE".to_owned())
    );
}

#[tokio::test]
async fn one_connection_opens_at_most_its_stream_limit_at_once() {
    let (_sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20_000,
            ..Default::default()
        },
        |c| c.server.max_connection_streams = 2,
    )
    .await;
    // Small stream windows, and a connection window with room for both streams': the
    // first stream's unread messages must not take all of it, or the second's first
    // message never comes (once the first stream's next page lands before it).
    let window_size = 65_535;
    let channel = Channel::from_shared(format!("http://{}", gw.addr))
        .expect("uri")
        .initial_stream_window_size(Some(window_size))
        .initial_connection_window_size(Some(4 * window_size))
        .connect()
        .await
        .expect("connect");
    let mut client = AuditServiceClient::new(channel);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = client
            .stream_since(window(200))
            .await
            .expect("opens")
            .into_inner();
        s.message().await.expect("ok").expect("a page");
        held.push(s);
    }
    // The gateway advertised 2 concurrent streams: the client holds a third back (for as
    // long as both stay open), while another connection is served at once.
    let mut third_client = client.clone();
    let third = tokio::spawn(async move { third_client.stream_since(window(200)).await });
    let mut other = gw.small_window_client().await;
    other
        .stream_since(window(200))
        .await
        .expect("another connection is served");
    assert!(
        !third.is_finished(),
        "a third stream opened on the connection"
    );
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third stream opens once one ends")
        .expect("caller")
        .expect("opens");
}
