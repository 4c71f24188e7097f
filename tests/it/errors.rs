//! Failures end to end: every row of the error table through the real gRPC
//! client, retries and their limits, `Retry-After` as a floor and a credential's cool-down,
//! caller deadlines,
//! 200 bodies cut short (a transport failure) or broken (not JSON, the wrong shape), and no
//! credential in any status.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use audit_gateway::{GatewayConfig, UpstreamAuth, UpstreamFailure, metrics::METRICS, pb};
use base64::{Engine, engine::general_purpose::STANDARD};
use confluence_sim::{Fault, SimulatorConfig, SimulatorHandle};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tonic::{Code, Request, Status};
use tonic_types::{ErrorInfo, StatusExt};

use crate::common::{
    Canned, StubUpstream, TestGateway, atlassian_sample, closed_port, sim_and_gateway,
    spawn_gateway, spawn_simulator, test_config,
};

const DOMAIN: &str = "audit-gateway";

/// The harness's fast test configuration in front of `confluence_url`, changed by `tweak`.
fn config(confluence_url: &str, tweak: impl FnOnce(&mut GatewayConfig)) -> GatewayConfig {
    let mut config = test_config(confluence_url);
    tweak(&mut config);
    config
}

/// One upstream request per call.
fn no_retries(c: &mut GatewayConfig) {
    c.upstream.retries = 0;
}

/// A small simulator (fast pages) with `faults` scripted, and a gateway in front of it.
async fn setup(
    faults: Vec<Fault>,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> (SimulatorHandle, TestGateway) {
    sim_and_gateway(
        SimulatorConfig {
            records: 20,
            faults,
            ..Default::default()
        },
        tweak,
    )
    .await
}

fn page_request() -> pb::GetSinceRequest {
    pb::GetSinceRequest {
        limit: Some(10),
        ..Default::default()
    }
}

/// One `GetSince` call, expected to fail.
async fn fail(gw: &mut TestGateway) -> Status {
    gw.client
        .get_since(page_request())
        .await
        .expect_err("the call should fail")
}

/// One `GetSince` call, expected to succeed with records.
async fn succeed(gw: &mut TestGateway) -> pb::GetSinceResponse {
    let page = gw
        .client
        .get_since(page_request())
        .await
        .expect("the call should succeed")
        .into_inner();
    assert_eq!(page.results.len(), 10);
    page
}

fn fault(text: &str) -> Fault {
    text.parse().expect("valid fault")
}

/// A status fault whose Atlassian JSON body carries `message`.
fn json_fault(code: u16, message: &str) -> Fault {
    Fault::Status {
        code,
        retry_after: None,
        body: Some(
            serde_json::json!({"statusCode": code, "message": message, "data": {}}).to_string(),
        ),
    }
}

/// The `ErrorInfo` detail, checked to be the gateway's.
fn error_info(status: &Status) -> ErrorInfo {
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo detail in {status:?}"));
    assert_eq!(info.domain, DOMAIN, "{status:?}");
    info
}

/// Asserts code, `ErrorInfo.reason` and `http_status` metadata.
fn assert_status(status: &Status, code: Code, reason: &str, http_status: Option<u16>) {
    assert_eq!(status.code(), code, "{status:?}");
    let info = error_info(status);
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(
        info.metadata.get("http_status").cloned(),
        http_status.map(|s| s.to_string()),
        "{status:?}"
    );
}

fn retry_delay(status: &Status) -> Option<Duration> {
    status
        .get_error_details()
        .retry_info()
        .unwrap_or_else(|| panic!("no RetryInfo detail in {status:?}"))
        .retry_delay
}

// ---------------------------------------------------------------------------------------
// 1. The error table, one upstream request per call (--upstream-retries 0).
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn http_errors_map_to_their_codes_with_confluences_message() {
    let (sim, mut gw) = setup(vec![], no_retries).await;
    let rows = [
        (400, Code::InvalidArgument, "UPSTREAM_BAD_REQUEST"),
        (401, Code::Unauthenticated, "UPSTREAM_UNAUTHENTICATED"),
        (404, Code::NotFound, "UPSTREAM_NOT_FOUND"),
        (429, Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED"),
        (500, Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
        (502, Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
        (503, Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
        (504, Code::DeadlineExceeded, "UPSTREAM_TIMEOUT"),
    ];
    for (i, (http, code, reason)) in rows.into_iter().enumerate() {
        let message = format!("simulated {http}: searchString is rubbish & so on");
        sim.push_faults([json_fault(http, &message)]);
        let status = fail(&mut gw).await;
        assert_status(&status, code, reason, Some(http));
        assert!(
            status.message().contains(&message),
            "{http}: Confluence's message is kept: {:?}",
            status.message()
        );
        assert_eq!(sim.request_count(), i + 1, "{http}: exactly one request");
    }
}

#[tokio::test]
async fn forbidden_with_an_empty_body_names_the_missing_permission() {
    // "403" is an empty text/plain body, as real Confluence answers.
    let (sim, mut gw) = setup(vec![fault("403")], no_retries).await;
    let status = fail(&mut gw).await;
    assert_status(
        &status,
        Code::PermissionDenied,
        "UPSTREAM_PERMISSION_DENIED",
        Some(403),
    );
    assert!(
        status.message().contains("Confluence Administrator"),
        "{:?}",
        status.message()
    );
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn rate_limits_carry_retry_info_from_retry_after() {
    let (sim, mut gw) = setup(vec![fault("429:retry-after=2"), fault("429")], no_retries).await;
    let status = fail(&mut gw).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        "UPSTREAM_RATE_LIMITED",
        Some(429),
    );
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(2)));
    assert!(
        status.message().contains("Rate limit exceeded"),
        "{:?}",
        status.message()
    );
    // Without Retry-After there is still a RetryInfo (the caller should back off).
    let status = fail(&mut gw).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        retry_delay(&status),
        Some(Duration::from_secs(1)),
        "{status:?}"
    );
    assert_eq!(sim.request_count(), 2);
}

#[tokio::test]
async fn an_absurd_retry_after_is_bounded_to_a_day_in_retry_info() {
    let (sim, mut gw) = setup(vec![fault("429:retry-after=9223372036854775807")], |c| {
        no_retries(c);
        c.upstream.max_backoff = Duration::from_secs(1);
        c.upstream.max_cooldown = Duration::from_secs(3 * 24 * 3600);
    })
    .await;
    let status = fail(&mut gw).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Not --upstream-max-backoff: the caller is told the wait was long (a day at most,
    // even with an --upstream-max-cooldown of three).
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(24 * 3600)));
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let addr = closed_port().await;
    let mut gw = spawn_gateway(config(&format!("http://{addr}/wiki"), no_retries)).await;
    let status = fail(&mut gw).await;
    assert_status(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE", None);
    assert!(
        !status.message().contains(&addr.port().to_string()),
        "no URL in the message: {:?}",
        status.message()
    );
}

#[tokio::test]
async fn a_reset_connection_is_unavailable() {
    let (sim, mut gw) = setup(vec![Fault::Reset], no_retries).await;
    let status = fail(&mut gw).await;
    assert_status(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE", None);
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn an_upstream_slower_than_the_upstream_timeout_is_deadline_exceeded() {
    let (sim, mut gw) = setup(vec![Fault::Delay(Duration::from_secs(5))], |c| {
        no_retries(c);
        c.upstream.timeout = Duration::from_millis(200);
    })
    .await;
    let started = Instant::now();
    let status = fail(&mut gw).await;
    let elapsed = started.elapsed();
    assert_status(&status, Code::DeadlineExceeded, "UPSTREAM_TIMEOUT", None);
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn malformed_and_wrong_shape_bodies_are_internal() {
    let (sim, mut gw) = setup(vec![Fault::Malformed, Fault::WrongShape], no_retries).await;
    let rows = [
        ("malformed", "is not JSON"),
        ("wrong-shape", "is not an AuditRecordArray"),
    ];
    for (i, (what, says)) in rows.into_iter().enumerate() {
        let status = fail(&mut gw).await;
        assert_status(&status, Code::Internal, "UPSTREAM_MALFORMED_BODY", None);
        assert!(
            status.message().contains(says),
            "{what}: {:?}",
            status.message()
        );
        assert_eq!(sim.request_count(), i + 1, "{what}");
    }
    // Not a poisoned state: the next answer is served.
    succeed(&mut gw).await;
}

#[tokio::test]
async fn a_body_over_the_cap_is_internal() {
    // The stub sends a Content-Length: refused before reading.
    let stub = StubUpstream::start(Canned::json(atlassian_sample())).await;
    // Retries on: an oversized body is still not retried (unlike a broken one).
    let mut gw = spawn_gateway(config(&stub.base_url(), |c| c.upstream.max_body = 1024)).await;
    let status = fail(&mut gw).await;
    assert_status(&status, Code::Internal, "UPSTREAM_BODY_TOO_LARGE", None);
    assert_eq!(
        error_info(&status)
            .metadata
            .get("max_body_bytes")
            .map(String::as_str),
        Some("1024")
    );
    assert_eq!(stub.seen().len(), 1);
}

#[tokio::test]
async fn a_chunked_body_over_the_cap_is_internal_never_truncated() {
    // No Content-Length: the cap must be enforced while reading.
    let upstream = ChunkedUpstream::start(atlassian_sample()).await;
    let mut gw = spawn_gateway(config(&upstream.base_url(), |c| {
        no_retries(c);
        c.upstream.max_body = 1024;
    }))
    .await;
    let status = fail(&mut gw).await;
    assert_status(&status, Code::Internal, "UPSTREAM_BODY_TOO_LARGE", None);
    assert_eq!(upstream.requests(), 1);

    // The same upstream under a cap it fits in: served whole.
    let mut gw = spawn_gateway(config(&upstream.base_url(), |c| {
        no_retries(c);
        c.upstream.max_body = 64 * 1024;
    }))
    .await;
    let page = gw
        .client
        .get_since(pb::GetSinceRequest::default())
        .await
        .expect("fits the cap")
        .into_inner();
    assert_eq!(page.results.len(), 2);
}

// ---------------------------------------------------------------------------------------
// 2. Retries.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn transient_faults_are_retried_until_success() {
    let transient = [
        "503",
        "502",
        "504",
        "reset",
        "429:retry-after=0",
        "503:empty",
    ];
    for text in transient {
        for n in [1, 4] {
            // Default --upstream-retries is 4: four faults still end in success.
            let faults = vec![fault(text); n];
            let (sim, mut gw) = setup(faults, |_| {}).await;
            gw.client
                .get_since(page_request())
                .await
                .unwrap_or_else(|s| panic!("{n} x {text} then OK: {s:?}"));
            assert_eq!(sim.request_count(), n + 1, "{n} x {text}");
        }
    }
}

#[tokio::test]
async fn mixed_transient_faults_are_retried_until_success() {
    let faults = ["reset", "429:retry-after=0", "502", "503"].map(fault);
    let (sim, mut gw) = setup(faults.to_vec(), |_| {}).await;
    succeed(&mut gw).await;
    assert_eq!(sim.request_count(), 5);
}

#[tokio::test]
async fn upstream_timeouts_are_retried() {
    let (sim, mut gw) = setup(vec![Fault::Delay(Duration::from_secs(5))], |c| {
        c.upstream.timeout = Duration::from_millis(300)
    })
    .await;
    succeed(&mut gw).await;
    assert_eq!(sim.request_count(), 2);
}

#[tokio::test]
async fn a_plain_500_is_retried_at_most_once() {
    let (sim, mut gw) = setup(vec![fault("500"), fault("500")], |_| {}).await;
    let status = fail(&mut gw).await;
    assert_status(
        &status,
        Code::Unavailable,
        "UPSTREAM_UNAVAILABLE",
        Some(500),
    );
    assert_eq!(sim.request_count(), 2);

    // One 500 is retried.
    let (sim, mut gw) = setup(vec![fault("500")], |_| {}).await;
    succeed(&mut gw).await;
    assert_eq!(sim.request_count(), 2);

    // Other transient faults do not spend the 500's single retry.
    let (sim, mut gw) = setup(["503", "500", "503"].map(fault).to_vec(), |_| {}).await;
    succeed(&mut gw).await;
    assert_eq!(sim.request_count(), 4);
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    let (sim, mut gw) = setup(vec![], |c| c.upstream.retries = 4).await;
    let rows = [
        ("400", Code::InvalidArgument),
        ("401", Code::Unauthenticated),
        ("403", Code::PermissionDenied),
        ("404", Code::NotFound),
    ];
    for (i, (text, code)) in rows.into_iter().enumerate() {
        // A success queued behind the fault would show up as OK if it were retried.
        sim.push_faults([fault(text)]);
        let status = fail(&mut gw).await;
        assert_eq!(status.code(), code, "{text}: {status:?}");
        assert_eq!(sim.request_count(), i + 1, "{text} is not retried");
    }
}

#[tokio::test]
async fn retries_stop_at_the_configured_count() {
    // Exactly --upstream-retries faults: still OK.
    let (sim, mut gw) = setup(vec![fault("503"); 2], |c| c.upstream.retries = 2).await;
    succeed(&mut gw).await;
    assert_eq!(sim.request_count(), 3);

    // One more: the last failure is returned after 1 + 2 requests.
    let (sim, mut gw) = setup(vec![fault("503"); 3], |c| c.upstream.retries = 2).await;
    let status = fail(&mut gw).await;
    assert_status(
        &status,
        Code::Unavailable,
        "UPSTREAM_UNAVAILABLE",
        Some(503),
    );
    assert_eq!(sim.request_count(), 3);

    // The last failure is the one reported.
    let (sim, mut gw) = setup(
        ["503", "502", "429:retry-after=0"].map(fault).to_vec(),
        |c| c.upstream.retries = 2,
    )
    .await;
    let status = fail(&mut gw).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        "UPSTREAM_RATE_LIMITED",
        Some(429),
    );
    assert_eq!(sim.request_count(), 3);

    // --upstream-retries 0: one request only.
    let (sim, mut gw) = setup(vec![fault("503")], no_retries).await;
    fail(&mut gw).await;
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn in_an_outage_retries_stay_within_the_retry_budget() {
    // Every request fails with a transient fault (503, 429 with Retry-After: 0, reset).
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20,
            fault_rate: 1.0,
            ..Default::default()
        },
        |c| {
            c.upstream.retries = 4;
            c.cache.ttl = Duration::ZERO;
        },
    )
    .await;
    const CALLS: usize = 80;
    let exhausted = METRICS.upstream_retry_budget_exhausted.get();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut client = gw.client.clone();
            tokio::spawn(async move {
                for _ in 0..CALLS / 8 {
                    client
                        .get_since(page_request())
                        .await
                        .expect_err("Confluence is down");
                }
            })
        })
        .collect();
    for call in calls {
        call.await.expect("no panic");
    }
    // Without a budget: 80 * (1 + 4) = 400 requests. With it (src/upstream/budget.rs):
    // the floor of 10 a second over its 10 s window, plus half the requests.
    let most = CALLS + 100 + CALLS / 2;
    assert!(CALLS < sim.request_count(), "some were retried");
    assert!(
        sim.request_count() <= most,
        "{} requests",
        sim.request_count()
    );
    assert!(METRICS.upstream_retry_budget_exhausted.get() > exhausted);
}

// ---------------------------------------------------------------------------------------
// 3. Retry-After is a floor; a longer one than --upstream-max-backoff is not retried.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_after_is_a_floor_on_429_and_503() {
    for first in ["429:retry-after=1", "503:retry-after=1"] {
        let (sim, mut gw) = setup(vec![fault(first)], |c| {
            c.upstream.max_backoff = Duration::from_secs(5);
        })
        .await;
        let started = Instant::now();
        succeed(&mut gw).await;
        let elapsed = started.elapsed();
        assert_eq!(sim.request_count(), 2, "{first}");
        // The backoff alone (10 ms ceiling) would retry at once.
        assert!(elapsed >= Duration::from_secs(1), "{first}: {elapsed:?}");
    }
}

#[tokio::test]
async fn a_retry_after_longer_than_the_max_backoff_fails_at_once_with_the_wait_asked_for() {
    // Honoured up to --upstream-max-cooldown (5 minutes by default), which callers are
    // told; with a longer one, what Confluence asked, up to a day.
    let day = Duration::from_secs(24 * 3600);
    for (retry_after, max_cooldown, told) in [
        ("3600", None, Duration::from_secs(300)),
        ("3600", Some(2 * day), Duration::from_secs(3600)),
        ("9223372036854775807", Some(2 * day), day),
    ] {
        let (sim, mut gw) = setup(
            vec![fault(&format!("429:retry-after={retry_after}"))],
            |c| {
                c.upstream.max_backoff = Duration::from_secs(1);
                if let Some(m) = max_cooldown {
                    c.upstream.max_cooldown = m;
                }
            },
        )
        .await;
        // A deadline far beyond the max backoff: nothing but the max backoff stops a retry.
        let (status, elapsed) = call_with_timeout(&mut gw, Duration::from_secs(120)).await;
        assert_status(
            &status,
            Code::ResourceExhausted,
            "UPSTREAM_RATE_LIMITED",
            Some(429),
        );
        assert_eq!(retry_delay(&status), Some(told), "{retry_after}");
        assert_eq!(sim.request_count(), 1, "{retry_after}: not retried");
        assert!(
            elapsed < Duration::from_secs(1),
            "{retry_after}: {elapsed:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. Caller deadlines.
// ---------------------------------------------------------------------------------------

async fn call_with_timeout(gw: &mut TestGateway, timeout: Duration) -> (Status, Duration) {
    let mut request = Request::new(page_request());
    request.set_timeout(timeout);
    let started = Instant::now();
    let status = gw
        .client
        .get_since(request)
        .await
        .expect_err("the call should fail");
    (status, started.elapsed())
}

#[tokio::test]
async fn a_slow_upstream_fails_at_the_callers_deadline() {
    let sim = spawn_simulator(SimulatorConfig {
        records: 20,
        latency: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let mut gw = spawn_gateway(test_config(&sim.base_url())).await;
    let (status, elapsed) = call_with_timeout(&mut gw, Duration::from_millis(300)).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The gateway's own status, not the transport's.
    let reason = error_info(&status).reason;
    assert!(
        ["DEADLINE_EXCEEDED", "UPSTREAM_TIMEOUT"].contains(&reason.as_str()),
        "{status:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn a_delayed_answer_fails_at_the_callers_deadline_despite_retries() {
    let (_sim, mut gw) = setup(vec![Fault::Delay(Duration::from_secs(5))], |_| {}).await;
    let (status, elapsed) = call_with_timeout(&mut gw, Duration::from_millis(300)).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    error_info(&status);
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_is_returned_at_once() {
    let (sim, mut gw) = setup(vec![fault("429:retry-after=30")], |c| {
        c.upstream.max_backoff = Duration::from_secs(60)
    })
    .await;
    let (status, elapsed) = call_with_timeout(&mut gw, Duration::from_secs(5)).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        "UPSTREAM_RATE_LIMITED",
        Some(429),
    );
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(30)));
    assert_eq!(sim.request_count(), 1);
    // Neither the 30 s wait nor the 5 s deadline.
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}

// ---------------------------------------------------------------------------------------
// 4b. A Retry-After holds back every request of the credential (src/upstream/cooldown.rs).
// ---------------------------------------------------------------------------------------

/// A one-record page at `start`: a page of its own in the cache.
fn page_at(start: i32, timeout: Duration) -> Request<pb::GetSinceRequest> {
    let mut request = Request::new(pb::GetSinceRequest {
        start: Some(start),
        limit: Some(1),
        ..Default::default()
    });
    request.set_timeout(timeout);
    request
}

#[tokio::test]
async fn a_rate_limit_holds_back_every_request_of_the_credential_until_retry_after() {
    let (sim, mut gw) = setup(vec![fault("429:retry-after=2")], |c| {
        no_retries(c);
        c.upstream.max_backoff = Duration::from_secs(5);
    })
    .await;
    let status = fail(&mut gw).await;
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(2)));
    let limited_at = sim.requests()[0].received;

    // Ten pages no cache holds, each its own load, all during the cool-down.
    let started = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let mut client = gw.client.clone();
            tokio::spawn(async move {
                let page = client.get_since(page_at(i, Duration::from_secs(10))).await;
                (page, Instant::now())
            })
        })
        .collect();
    // One whose deadline ends before the cool-down is refused at once, not timed out.
    let mut client = gw.client.clone();
    let status = client
        .get_since(page_at(10, Duration::from_millis(500)))
        .await
        .expect_err("refused during the cool-down");
    assert_status(
        &status,
        Code::ResourceExhausted,
        "UPSTREAM_RATE_LIMITED",
        None,
    );
    let left = retry_delay(&status).expect("a delay");
    assert!(
        left > Duration::ZERO && left <= Duration::from_secs(2),
        "{left:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(400));

    for call in calls {
        let (page, ended) = call.await.expect("no panic");
        let page = page.expect("served after the cool-down").into_inner();
        assert_eq!(page.results.len(), 1);
        assert!(ended < started + Duration::from_secs(10));
    }
    let requests = sim.requests();
    // The first 429 and the ten pages. The refused page's load sends nothing: when the
    // cool-down is over, nobody waits for it any more.
    assert_eq!(requests.len(), 11);
    for r in &requests[1..] {
        let after = r.received.duration_since(limited_at);
        assert!(
            after >= Duration::from_secs(2),
            "a request {after:?} after the 429"
        );
    }
}

/// Requests already queued for an upstream slot when a 429 arrives are not sent into the
/// rate limit: each looks at the credential's cool-down again once its turn comes.
#[tokio::test]
async fn requests_queued_when_a_rate_limit_arrives_wait_out_its_cool_down() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20,
            latency: Duration::from_millis(200),
            faults: vec![fault("429:retry-after=2")],
            ..Default::default()
        },
        |c| {
            no_retries(c);
            c.upstream.concurrency = 1;
            c.upstream.max_backoff = Duration::from_secs(5);
        },
    )
    .await;
    // Six pages at once: the first takes the one slot and is answered 429 200 ms later;
    // the others wait in the queue meanwhile, past the cool-down check.
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let mut client = gw.client.clone();
            tokio::spawn(async move { client.get_since(page_at(i, Duration::from_secs(15))).await })
        })
        .collect();
    let mut refused = 0;
    for c in calls {
        match c.await.expect("no panic") {
            Ok(_) => {}
            Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
            Err(s) => panic!("{s:?}"),
        }
    }
    assert_eq!(refused, 1, "only the page answered 429 fails (no retries)");
    let requests = sim.requests();
    let limited_at = requests[0].received;
    assert_eq!(requests.len(), 6, "one request per page");
    for r in &requests[1..] {
        let after = r.received.duration_since(limited_at);
        assert!(
            after >= Duration::from_millis(1900),
            "a queued request went {after:?} after the 429 that asked for 2 s"
        );
    }
}

#[tokio::test]
async fn a_cool_down_longer_than_the_max_backoff_refuses_calls_without_a_request() {
    let (sim, mut gw) = setup(vec![fault("503:retry-after=3600")], |c| {
        c.upstream.max_backoff = Duration::from_secs(1)
    })
    .await;
    let status = fail(&mut gw).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // An hour asked, five minutes (--upstream-max-cooldown) honoured: then a probe.
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(300)));
    let refusals = METRICS.upstream_cooldown_refusals.get();
    let (status, elapsed) = call_with_timeout(&mut gw, Duration::from_secs(120)).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        "UPSTREAM_RATE_LIMITED",
        None,
    );
    let left = retry_delay(&status).expect("a delay");
    assert!(
        left > Duration::from_secs(290) && left <= Duration::from_secs(300),
        "{left:?}"
    );
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(sim.request_count(), 1, "no request during the cool-down");
    assert!(METRICS.upstream_cooldown_refusals.get() > refusals);
}

#[tokio::test]
async fn a_call_whose_deadline_ends_within_the_cool_down_is_refused_not_timed_out() {
    // No cache: the load runs in the call, under its deadline.
    let (sim, mut gw) = setup(vec![fault("429:retry-after=2")], |c| {
        no_retries(c);
        c.cache.ttl = Duration::ZERO;
        c.upstream.max_backoff = Duration::from_secs(5);
    })
    .await;
    fail(&mut gw).await;
    let (status, elapsed) = call_with_timeout(&mut gw, Duration::from_millis(500)).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        "UPSTREAM_RATE_LIMITED",
        None,
    );
    let left = retry_delay(&status).expect("a delay");
    assert!(
        left > Duration::from_secs(1) && left <= Duration::from_secs(2),
        "{left:?}"
    );
    assert!(elapsed < Duration::from_millis(400), "{elapsed:?}");
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn a_success_near_the_rate_limit_halves_the_requests_in_flight_without_a_pause() {
    let (sim, mut gw) = setup(vec![fault("near-limit=1s")], |c| {
        c.upstream.max_backoff = Duration::from_secs(5);
    })
    .await;
    let cuts = METRICS.limit_moves("near_limit");
    succeed(&mut gw).await;
    assert!(
        METRICS.limit_moves("near_limit") > cuts,
        "the warning cut the paced limit"
    );
    let page = gw
        .client
        .get_since(page_at(3, Duration::from_secs(10)))
        .await
        .expect("served");
    assert_eq!(page.into_inner().results.len(), 1);
    let requests = sim.requests();
    assert_eq!(requests.len(), 2);
    // Budget is left (Remaining: 1): the next request goes at once, not after the reset.
    let gap = requests[1].received.duration_since(requests[0].received);
    assert!(gap < Duration::from_millis(500), "{gap:?}");
}

// ---------------------------------------------------------------------------------------
// 5. 200 bodies cut short (shorter than their Content-Length, reset mid-body, stalled):
//    retried like a reset, then UNAVAILABLE (UPSTREAM_BODY_CUT). Broken ones (complete, but
//    not JSON or the wrong shape): retried under their own bound (2), then INTERNAL. Neither
//    is ever cached.
// ---------------------------------------------------------------------------------------

/// Requests a persistently broken body gets: the first and its 2 retries.
const BAD_BODY_REQUESTS: usize = 3;

/// Requests a body cut every time gets from a `GetSince`: the first and the harness's
/// `--upstream-retries` (the default, 4).
const CUT_BODY_REQUESTS: usize = 5;

/// The sample page as the gateway serves it (2 records).
async fn sample_page(gw: &mut TestGateway) -> pb::GetSinceResponse {
    let page = gw
        .client
        .get_since(pb::GetSinceRequest::default())
        .await
        .expect("the call should succeed")
        .into_inner();
    assert_eq!(page.results.len(), 2);
    page
}

#[tokio::test]
async fn a_cut_body_then_a_good_one_succeeds() {
    let upstream = ScriptedUpstream::start(vec![Answer::Cut(100)]).await;
    let mut gw = spawn_gateway(test_config(&upstream.base_url())).await;
    sample_page(&mut gw).await;
    assert_eq!(upstream.requests(), 2, "the cut body was retried");
    // The good page was cached; the cut one never was.
    sample_page(&mut gw).await;
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn cut_bodies_are_unavailable_after_the_retries_and_not_cached() {
    let sample = atlassian_sample().len();
    let upstream = ScriptedUpstream::start(vec![Answer::Cut(100); CUT_BODY_REQUESTS]).await;
    let mut gw = spawn_gateway(test_config(&upstream.base_url())).await;
    assert_eq!(
        test_config("http://x").upstream.retries as usize + 1,
        CUT_BODY_REQUESTS
    );
    let before = METRICS.upstream_failures(UpstreamFailure::BodyCut);
    let status = gw
        .client
        .get_since(pb::GetSinceRequest::default())
        .await
        .expect_err("every body was cut");
    // A transport failure: the code clients retry, with a pause suggested.
    assert_status(&status, Code::Unavailable, "UPSTREAM_BODY_CUT", None);
    assert!(
        status.get_error_details().retry_info().is_some(),
        "{status:?}"
    );
    let says = format!("cut after 100 of {sample} bytes");
    assert!(status.message().contains(&says), "{:?}", status.message());
    assert_eq!(
        upstream.requests(),
        CUT_BODY_REQUESTS,
        "retried like a reset, past the broken body's bound of 2, within --upstream-retries"
    );
    // Metrics are process-wide (other tests add to them): only growth is checked.
    assert!(
        METRICS.upstream_failures(UpstreamFailure::BodyCut) >= before + CUT_BODY_REQUESTS as u64
    );
    // Not cached: the next call asks again (and gets the good page).
    sample_page(&mut gw).await;
    assert_eq!(upstream.requests(), CUT_BODY_REQUESTS + 1);
}

#[tokio::test]
async fn a_body_the_simulator_keeps_cutting_is_unavailable_and_a_wrong_shape_one_internal() {
    // Confluence's full Content-Length, half the body, the connection closed.
    let (sim, mut gw) = setup(vec![Fault::Cut; CUT_BODY_REQUESTS], |_| {}).await;
    let status = fail(&mut gw).await;
    assert_status(&status, Code::Unavailable, "UPSTREAM_BODY_CUT", None);
    assert!(status.message().contains("was cut after"), "{status:?}");
    assert_eq!(sim.request_count(), CUT_BODY_REQUESTS);
    // A complete body of the wrong shape is Confluence's answer, not the transport's.
    let (sim, mut gw) = setup(vec![Fault::WrongShape; BAD_BODY_REQUESTS], |_| {}).await;
    let status = fail(&mut gw).await;
    assert_status(&status, Code::Internal, "UPSTREAM_MALFORMED_BODY", None);
    assert_eq!(sim.request_count(), BAD_BODY_REQUESTS);
}

#[tokio::test]
async fn a_chunked_body_cut_short_is_retried() {
    let upstream = ScriptedUpstream::start(vec![Answer::ChunkedCut(100)]).await;
    let mut gw = spawn_gateway(test_config(&upstream.base_url())).await;
    sample_page(&mut gw).await;
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_and_retried() {
    let sample = atlassian_sample().len();
    let upstream = ScriptedUpstream::start(vec![Answer::Stall(100)]).await;
    let mut gw = spawn_gateway(config(&upstream.base_url(), |c| {
        no_retries(c);
        c.upstream.timeout = Duration::from_millis(300);
    }))
    .await;
    let status = gw
        .client
        .get_since(pb::GetSinceRequest::default())
        .await
        .expect_err("the body never ends");
    // The headers came, the body stopped: a transport failure, as a reset mid-body is.
    assert_status(&status, Code::Unavailable, "UPSTREAM_BODY_CUT", None);
    let says = format!("stalled after 100 of {sample} bytes");
    assert!(status.message().contains(&says), "{:?}", status.message());
    assert_eq!(upstream.requests(), 1);
    // With a retry, the next attempt gets the whole page.
    let upstream = ScriptedUpstream::start(vec![Answer::Stall(100)]).await;
    let mut gw = spawn_gateway(config(&upstream.base_url(), |c| {
        c.upstream.timeout = Duration::from_millis(300);
    }))
    .await;
    sample_page(&mut gw).await;
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn a_body_stalled_past_the_callers_deadline_is_the_deadline() {
    let upstream = ScriptedUpstream::start(vec![Answer::Stall(100)]).await;
    let mut gw = spawn_gateway(config(&upstream.base_url(), no_retries)).await;
    let mut request = Request::new(pb::GetSinceRequest::default());
    request.set_timeout(Duration::from_millis(300));
    let status = gw
        .client
        .get_since(request)
        .await
        .expect_err("the body never ends");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn a_malformed_or_wrong_shape_body_then_a_good_one_succeeds() {
    for bad in [Fault::Malformed, Fault::WrongShape] {
        let (sim, mut gw) = setup(vec![bad.clone()], |_| {}).await;
        succeed(&mut gw).await;
        assert_eq!(sim.request_count(), 2, "{bad:?} was retried");
        succeed(&mut gw).await;
        assert_eq!(sim.request_count(), 2, "{bad:?}: the good page is cached");
    }
}

#[tokio::test]
async fn persistent_bad_bodies_are_internal_after_their_retries_and_not_cached() {
    let rows = [
        (vec![Fault::Malformed; BAD_BODY_REQUESTS], "is not JSON"),
        (
            vec![Fault::WrongShape; BAD_BODY_REQUESTS],
            "is not an AuditRecordArray",
        ),
        // Kinds of broken body share one bound; the last one is reported.
        (
            vec![Fault::WrongShape, Fault::Malformed, Fault::WrongShape],
            "is not an AuditRecordArray",
        ),
    ];
    for (faults, says) in rows {
        let what = format!("{faults:?}");
        let (sim, mut gw) = setup(faults, |_| {}).await;
        let status = fail(&mut gw).await;
        assert_status(&status, Code::Internal, "UPSTREAM_MALFORMED_BODY", None);
        assert!(
            status.message().contains(says),
            "{what}: {:?}",
            status.message()
        );
        assert_eq!(sim.request_count(), BAD_BODY_REQUESTS, "{what}");
        succeed(&mut gw).await;
        assert_eq!(
            sim.request_count(),
            BAD_BODY_REQUESTS + 1,
            "{what}: the failure was not cached"
        );
    }
}

#[tokio::test]
async fn bad_bodies_and_other_failures_keep_separate_bounds() {
    // Two broken bodies spend theirs; the 503s the general one (4).
    let faults = [
        Fault::Malformed,
        fault("503"),
        Fault::WrongShape,
        fault("503"),
    ];
    let (sim, mut gw) = setup(faults.to_vec(), |_| {}).await;
    succeed(&mut gw).await;
    assert_eq!(sim.request_count(), 5);
    // --upstream-retries bounds them too.
    let (sim, mut gw) = setup(vec![Fault::Malformed], |c| c.upstream.retries = 0).await;
    let status = fail(&mut gw).await;
    assert_status(&status, Code::Internal, "UPSTREAM_MALFORMED_BODY", None);
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn a_bad_body_is_not_retried_past_the_callers_deadline() {
    // A backoff of seconds (jittered below 3 s) against a 300 ms deadline.
    let (_sim, mut gw) = setup(vec![Fault::Malformed; BAD_BODY_REQUESTS], |c| {
        c.upstream.backoff = Duration::from_secs(3);
        c.upstream.max_backoff = Duration::from_secs(3);
    })
    .await;
    let (status, elapsed) = call_with_timeout(&mut gw, Duration::from_millis(300)).await;
    // The body's own error when the next attempt would start too late, else the deadline.
    assert!(
        [Code::Internal, Code::DeadlineExceeded].contains(&status.code()),
        "{status:?}"
    );
    error_info(&status);
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

// ---------------------------------------------------------------------------------------
// 6. No credential in any status.
// ---------------------------------------------------------------------------------------

const EMAIL: &str = "a@b";
const TOKEN: &str = "SECRET-TOKEN-123";

fn basic_header() -> String {
    format!("Basic {}", STANDARD.encode(format!("{EMAIL}:{TOKEN}")))
}

/// Basic auth with `EMAIL` and `TOKEN`, one upstream request per call.
fn with_credential(c: &mut GatewayConfig) {
    c.auth = UpstreamAuth::Basic {
        email: EMAIL.into(),
        api_token: TOKEN.into(),
    };
    no_retries(c);
}

fn assert_no_secret(what: &str, status: &Status) {
    let forbidden = [
        TOKEN.to_owned(),
        STANDARD.encode(format!("{EMAIL}:{TOKEN}")),
        STANDARD.encode(TOKEN),
        basic_header(),
    ];
    let mut haystack: Vec<u8> = status.message().as_bytes().to_vec();
    haystack.extend_from_slice(status.details());
    for (name, value) in status.metadata().clone().into_headers().iter() {
        haystack.extend_from_slice(name.as_str().as_bytes());
        haystack.push(b'=');
        haystack.extend_from_slice(value.as_bytes());
        haystack.push(b'\n');
    }
    let details = status.get_error_details();
    if let Some(info) = details.error_info() {
        for (k, v) in &info.metadata {
            haystack.extend_from_slice(format!("{k}={v}\n").as_bytes());
        }
    }
    let haystack = String::from_utf8_lossy(&haystack).to_lowercase();
    for secret in &forbidden {
        assert!(
            !haystack.contains(&secret.to_lowercase()),
            "{what}: the credential leaked into {status:?}"
        );
    }
}

#[tokio::test]
async fn no_failure_reveals_the_credential() {
    let sim = spawn_simulator(SimulatorConfig {
        records: 20,
        required_authorization: Some(basic_header()),
        ..Default::default()
    })
    .await;
    let mut gw = spawn_gateway(config(&sim.base_url(), |c| {
        with_credential(c);
        c.upstream.timeout = Duration::from_secs(1);
        // No cache: every call below must reach the simulator.
        c.cache.ttl = Duration::ZERO;
    }))
    .await;
    // The credential is really sent (else this test proves nothing).
    succeed(&mut gw).await;
    assert_eq!(
        sim.requests()[0].authorization.as_deref(),
        Some(basic_header().as_str())
    );

    let kinds = [
        "400",
        "401",
        "403",
        "403:json",
        "404",
        "429:retry-after=1",
        "500",
        "502",
        "503",
        "504",
        "reset",
        "malformed",
        "wrong-shape",
        "delay=2s",
    ];
    let mut seen = 1;
    for kind in kinds {
        sim.push_faults([fault(kind)]);
        let status = fail(&mut gw).await;
        seen += 1;
        assert_eq!(sim.request_count(), seen, "{kind}");
        assert_no_secret(kind, &status);
    }

    // The caller's deadline.
    sim.push_faults([fault("delay=2s")]);
    let (status, _) = call_with_timeout(&mut gw, Duration::from_millis(150)).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_no_secret("caller deadline", &status);

    // A real 401: Confluence refuses this very credential.
    let refusing = spawn_simulator(SimulatorConfig {
        records: 20,
        required_authorization: Some("Bearer someone-else".into()),
        ..Default::default()
    })
    .await;
    let mut gw = spawn_gateway(config(&refusing.base_url(), with_credential)).await;
    let status = fail(&mut gw).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_no_secret("refused credential", &status);

    // Over the body cap.
    let mut gw = spawn_gateway(config(&sim.base_url(), |c| {
        with_credential(c);
        c.upstream.max_body = 1024;
    }))
    .await;
    let status = fail(&mut gw).await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_no_secret("body cap", &status);

    // Nobody listening.
    let addr = closed_port().await;
    let mut gw = spawn_gateway(config(&format!("http://{addr}/wiki"), with_credential)).await;
    let status = fail(&mut gw).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_no_secret("connection refused", &status);
}

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 upstream answering with a chunked body (no Content-Length).
// ---------------------------------------------------------------------------------------

struct ChunkedUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl ChunkedUpstream {
    async fn start(body: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("bound");
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                        .to_vec();
                    for chunk in body.chunks(256) {
                        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        out.extend_from_slice(chunk);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                    let _ = stream.write_all(&out).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { addr, requests }
    }

    fn base_url(&self) -> String {
        format!("http://{}/wiki", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 upstream answering each request by a script, then with the sample page.
// ---------------------------------------------------------------------------------------

/// One scripted answer: a 200 of the sample page, ended early in some way.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// `Content-Length` of the whole page, this many bytes of it, then the connection
    /// closes.
    Cut(usize),
    /// A chunked body: this many bytes of the page, then the connection closes without
    /// the last chunk.
    ChunkedCut(usize),
    /// `Content-Length` of the whole page, this many bytes of it, then nothing (the
    /// connection stays open).
    Stall(usize),
}

struct ScriptedUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl ScriptedUpstream {
    /// Answers request `i` with `script[i]`, and every request after the script with
    /// the whole sample page.
    async fn start(script: Vec<Answer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("bound");
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let script = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (count, script) = (count.clone(), script.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let body = atlassian_sample();
                    let sized = |sent: usize| {
                        let mut out = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        out.extend_from_slice(&body[..sent]);
                        out
                    };
                    match script.get(n).copied() {
                        None => {
                            let _ = stream.write_all(&sized(body.len())).await;
                        }
                        Some(Answer::Cut(sent)) => {
                            let _ = stream.write_all(&sized(sent)).await;
                        }
                        Some(Answer::ChunkedCut(sent)) => {
                            let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                                .to_vec();
                            out.extend_from_slice(format!("{sent:x}\r\n").as_bytes());
                            out.extend_from_slice(&body[..sent]);
                            out.extend_from_slice(b"\r\n");
                            let _ = stream.write_all(&out).await;
                        }
                        Some(Answer::Stall(sent)) => {
                            let _ = stream.write_all(&sized(sent)).await;
                            // Hold the connection open, the body unfinished.
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { addr, requests }
    }

    fn base_url(&self) -> String {
        format!("http://{}/wiki", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}
