//! Fair sharing between callers: one caller's load never decides another's wait
//! (`src/upstream/fair.rs`), each caller meets its own caps (`src/app/caps.rs`), and a
//! caller guessing passthrough credentials is not relayed to Confluence
//! (`src/app/pages.rs`).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use audit_gateway::{GatewayConfig, UpstreamAuth, metrics::METRICS, pb};
use confluence_sim::{SimulatorConfig, SimulatorHandle};
use tokio_stream::StreamExt;
use tonic::{Code, Request, Status, metadata::MetadataValue};
use tonic_types::StatusExt;

use crate::common::{TestGateway, sim_and_gateway};

/// A tokens file naming `names`, each with the token `tok-{name}`.
fn tokens_file(test: &str, names: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fairness-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("callers");
    let lines: String = names.iter().map(|n| format!("{n}:tok-{n}\n")).collect();
    std::fs::write(&file, lines).expect("write");
    file
}

fn as_caller<T>(name: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer tok-{name}")).expect("ascii");
    req.metadata_mut().insert("authorization", value);
    req
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// A page only the polite caller asks for, once: its search string names it.
fn polite_page(i: usize) -> pb::GetSinceRequest {
    pb::GetSinceRequest {
        search_string: Some(format!("polite-{i}")),
        limit: Some(5),
        ..Default::default()
    }
}

/// Whether the simulator's request `r` is the polite caller's `i`th.
fn is_polite(r: &confluence_sim::RecordedRequest, i: usize) -> bool {
    let want = format!("polite-{i}");
    r.param("searchString") == Some(want.as_str())
}

/// Starts the greedy caller: 40 streams over distinct windows, read slowly, and 20
/// threads of `GetSince` misses, until the returned handles are aborted.
fn greedy(gw: &TestGateway) -> Vec<tokio::task::JoinHandle<()>> {
    let mut load = Vec::new();
    for w in 0..40i64 {
        let mut client = gw.client.clone();
        load.push(tokio::spawn(async move {
            let req = pb::StreamSinceRequest {
                number: Some(30 + w),
                units: pb::TimeUnit::Days.into(),
                page_size: Some(20),
                ..Default::default()
            };
            if let Ok(stream) = client.stream_since(as_caller("greedy", req)).await {
                let mut stream = stream.into_inner();
                while let Some(Ok(_)) = stream.next().await {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for t in 0..20i32 {
        let mut client = gw.client.clone();
        load.push(tokio::spawn(async move {
            for n in 0.. {
                let req = pb::GetSinceRequest {
                    start: Some(t * 100_000 + n),
                    limit: Some(5),
                    ..Default::default()
                };
                let _ = client.get_since(as_caller("greedy", req)).await;
            }
        }));
    }
    load
}

/// The polite caller's ten calls, one at a time: each one's latency, and how many of
/// the greedy caller's requests reached Confluence between the call and its own request.
async fn polite_calls(
    gw: &TestGateway,
    sim: &SimulatorHandle,
    round: usize,
) -> Vec<(Duration, usize)> {
    let mut client = gw.client.clone();
    let mut out = Vec::new();
    for i in round * 10..round * 10 + 10 {
        let called = Instant::now();
        let mut req = as_caller("polite", polite_page(i));
        req.set_timeout(Duration::from_secs(20));
        client
            .get_since(req)
            .await
            .expect("the polite call succeeds");
        let took = called.elapsed();
        let requests = sim.requests();
        let own = requests
            .iter()
            .find(|r| is_polite(r, i))
            .expect("the polite page was fetched")
            .received;
        let ahead = requests
            .iter()
            .filter(|r| r.received > called && r.received < own)
            .count();
        out.push((took, ahead));
    }
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Beside a caller with 40 streams and 20 threads of misses queued, a second caller's
/// requests wait one turn, not behind the queue: between its call and its own request
/// only requests already on their way (one per upstream slot) and those granted while
/// its call reached the queue (one per slot at most) reach Confluence. First come, first
/// served, it would wait behind the hundreds queued.
#[tokio::test]
async fn a_polite_caller_waits_one_turn_beside_a_greedy_one() {
    let file = tokens_file("polite", &["greedy", "polite"]);
    let concurrency = 4;
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 2000,
            latency: Duration::from_millis(100),
            ..Default::default()
        },
        |c| {
            c.caller_tokens_file = Some(file.clone());
            c.upstream.concurrency = concurrency;
            c.caller_miss_rate = 0;
        },
    )
    .await;
    let alone = polite_calls(&gw, &sim, 0).await;
    let load = greedy(&gw);
    // The greedy caller's queue is full before the polite caller asks.
    let queued = Instant::now();
    while METRICS.caller_upstream_requests("greedy") < 20 {
        assert!(queued.elapsed() < Duration::from_secs(10), "no greedy load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let beside = polite_calls(&gw, &sim, 1).await;
    for l in &load {
        l.abort();
    }
    for (i, (_, ahead)) in beside.iter().enumerate() {
        assert!(
            *ahead <= 2 * concurrency,
            "call {i}: {ahead} greedy requests went first: {beside:?}"
        );
    }
    let solo = median(alone.iter().map(|x| x.0).collect());
    let loaded = median(beside.iter().map(|x| x.0).collect());
    eprintln!("polite caller p50: {solo:?} alone, {loaded:?} beside the greedy caller");
    assert!(METRICS.caller_upstream_requests("polite") >= 20);
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}

/// `--caller-max-streams 4`: a caller's fifth stream is refused with
/// RESOURCE_EXHAUSTED naming the cap, while another caller opens its own; one ended,
/// the first caller opens another.
#[tokio::test]
async fn a_caller_at_its_stream_cap_is_refused_while_another_opens_streams() {
    let file = tokens_file("streams", &["a", "b"]);
    let (_sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 5000,
            ..Default::default()
        },
        |c| {
            c.caller_tokens_file = Some(file.clone());
            c.caller_max_streams = Some(4);
        },
    )
    .await;
    let open = |name: &str| {
        let mut client = gw.client.clone();
        let req = as_caller(
            name,
            pb::StreamSinceRequest {
                number: Some(30),
                units: pb::TimeUnit::Days.into(),
                page_size: Some(10),
                ..Default::default()
            },
        );
        async move { client.stream_since(req).await }
    };
    // Left unread, each holds its slot.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(open("a").await.expect("under the cap"));
    }
    let status = open("a").await.expect_err("the fifth");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "CALLER_MAX_STREAMS", "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("cap").map(String::as_str),
        Some("caller-max-streams")
    );
    assert!(details.retry_info().is_some(), "{status:?}");
    let b = open("b").await.expect("b has its own share");
    assert!(METRICS.caller_refusals_of("a", "caller-max-streams") >= 1);

    // One of a's streams ends: a may open another once its producer has returned.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open("a").await {
            Ok(s) => {
                held.push(s);
                break;
            }
            Err(s) if reason(&s) == "CALLER_MAX_STREAMS" => {
                assert!(Instant::now() < deadline, "the slot never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    drop((held, b));
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}

/// Callers a mesh names in `--caller-header` are callers of their own: each has its
/// own stream cap.
#[tokio::test]
async fn a_mesh_header_names_callers_with_shares_of_their_own() {
    let (_sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 5000,
            ..Default::default()
        },
        |c: &mut GatewayConfig| {
            c.caller_header = Some("x-forwarded-client-cert".into());
            c.caller_max_streams = Some(1);
        },
    )
    .await;
    let open = |uri: &str| {
        let mut client = gw.client.clone();
        let mut req = Request::new(pb::StreamSinceRequest {
            number: Some(30),
            units: pb::TimeUnit::Days.into(),
            page_size: Some(10),
            ..Default::default()
        });
        let xfcc = format!("By=spiffe://mesh/ns/audit/sa/gateway;Hash=ab;URI={uri}");
        req.metadata_mut()
            .insert("x-forwarded-client-cert", xfcc.parse().expect("ascii"));
        async move { client.stream_since(req).await }
    };
    let first = open("spiffe://mesh/ns/siem/sa/shipper")
        .await
        .expect("first");
    let status = open("spiffe://mesh/ns/siem/sa/shipper")
        .await
        .expect_err("second");
    assert_eq!(reason(&status), "CALLER_MAX_STREAMS", "{status:?}");
    let other = open("spiffe://mesh/ns/billing/sa/report")
        .await
        .expect("another workload");
    drop((first, other));
}

/// With `--auth-passthrough`, 1,000 calls with ten garbage credentials make at most one
/// request to Confluence per credential: its 401 is remembered and answers the rest,
/// and a credential Confluence has not accepted yet waits in one small share, so the
/// calls queued behind the first are refused without a request.
#[tokio::test]
async fn garbage_passthrough_credentials_reach_confluence_once_each() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 50,
            required_authorization: Some("Bearer the-real-one".into()),
            ..Default::default()
        },
        |c| {
            c.auth = UpstreamAuth::Passthrough;
            c.upstream.retries = 0;
        },
    )
    .await;
    let refused_before = METRICS.passthrough_refused_locally.get();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..1000usize {
        let mut client = gw.client.clone();
        calls.spawn(async move {
            let mut req = Request::new(pb::GetSinceRequest {
                // Distinct pages: no single-flight folds the calls together.
                start: Some(i32::try_from(n).expect("small")),
                limit: Some(1),
                ..Default::default()
            });
            let value = format!("Bearer guess-{}", n % 10);
            req.metadata_mut()
                .insert("authorization", value.parse().expect("ascii"));
            client.get_since(req).await.map(drop)
        });
        // A real caller in the middle of it is served.
        if n == 500 {
            let mut client = gw.client.clone();
            let mut req = Request::new(pb::GetSinceRequest {
                limit: Some(1),
                ..Default::default()
            });
            req.metadata_mut().insert(
                "authorization",
                "Bearer the-real-one".parse().expect("ascii"),
            );
            client
                .get_since(req)
                .await
                .expect("the real credential is served");
        }
    }
    while let Some(result) = calls.join_next().await {
        let status = result.expect("no panic").expect_err("a guess is refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let guesses = sim
        .requests()
        .iter()
        .filter(|r| r.authorization.as_deref() != Some("Bearer the-real-one"))
        .count();
    assert!(
        guesses <= 10,
        "{guesses} requests for 10 guessed credentials"
    );
    assert!(METRICS.passthrough_refused_locally.get() > refused_before);
}
