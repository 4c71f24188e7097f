//! The page cache end to end: hits, distinct keys, single-flight (a shared load owned by
//! no caller: neither a caller's deadline nor its cancellation ends it), `cache-control`,
//! TTL, credential isolation under `--auth-passthrough`, and errors that are never cached.

use std::time::Duration;

use audit_gateway::{
    UpstreamAuth,
    pb::{self, audit_service_client::AuditServiceClient},
};
use confluence_sim::{Fault, SimulatorConfig};
use tonic::{Code, Request};

use crate::common::sim_and_gateway;

/// A small page, so calls stay cheap.
fn small() -> pb::GetSinceRequest {
    pb::GetSinceRequest {
        limit: Some(5),
        ..Default::default()
    }
}

fn sim_config(records: usize) -> SimulatorConfig {
    SimulatorConfig {
        records,
        ..Default::default()
    }
}

/// `req` with `key: value` request metadata.
fn with_md(req: pb::GetSinceRequest, md: &[(&'static str, &str)]) -> Request<pb::GetSinceRequest> {
    let mut r = Request::new(req);
    for (k, v) in md {
        r.metadata_mut()
            .insert(*k, v.parse().expect("ascii metadata"));
    }
    r
}

/// The simulator's sequence number of the page's first (newest) record.
fn head_seq(page: &pb::GetSinceResponse) -> u64 {
    let summary = &page.results.first().expect("a non-empty page").summary;
    summary
        .rsplit_once('#')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("no #seq in summary {summary:?}"))
}

#[tokio::test]
async fn a_repeated_call_is_a_hit_and_each_query_field_is_part_of_the_key() {
    let (sim, mut gw) = sim_and_gateway(sim_config(200), |_| {}).await;

    let first = gw
        .client
        .get_since(small())
        .await
        .expect("miss")
        .into_inner();
    let second = gw
        .client
        .get_since(small())
        .await
        .expect("hit")
        .into_inner();
    assert_eq!(sim.request_count(), 1, "the second identical call is a hit");
    assert_eq!(first, second);
    assert_eq!(first.results.len(), 5);

    let variants = [
        (
            "start",
            pb::GetSinceRequest {
                start: Some(5),
                ..small()
            },
        ),
        (
            "limit",
            pb::GetSinceRequest {
                limit: Some(6),
                ..small()
            },
        ),
        (
            "search_string",
            pb::GetSinceRequest {
                search_string: Some("space".into()),
                ..small()
            },
        ),
        (
            "number",
            pb::GetSinceRequest {
                number: Some(2),
                ..small()
            },
        ),
        (
            "units",
            pb::GetSinceRequest {
                units: pb::TimeUnit::Years as i32,
                ..small()
            },
        ),
    ];
    for (i, (field, req)) in variants.iter().enumerate() {
        gw.client
            .get_since(req.clone())
            .await
            .unwrap_or_else(|s| panic!("{field}: {s:?}"));
        assert_eq!(
            sim.request_count(),
            i + 2,
            "a different {field} is a different entry"
        );
    }
    // Each variant is now cached in its own right.
    for (field, req) in &variants {
        gw.client
            .get_since(req.clone())
            .await
            .unwrap_or_else(|s| panic!("{field}: {s:?}"));
    }
    assert_eq!(sim.request_count(), 1 + variants.len());
    // The upstream saw each distinct query once.
    let queries: Vec<_> = sim.requests().into_iter().map(|r| r.raw_query).collect();
    assert_eq!(queries.len(), 1 + variants.len());
    let mut distinct = queries.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), queries.len(), "{queries:?}");
}

#[tokio::test]
async fn defaults_are_applied_before_the_key_is_made() {
    let (sim, mut gw) = sim_and_gateway(sim_config(50), |_| {}).await;
    gw.client
        .get_since(pb::GetSinceRequest::default())
        .await
        .expect("defaults");
    let explicit = pb::GetSinceRequest {
        number: Some(3),
        units: pb::TimeUnit::Months as i32,
        search_string: Some(String::new()),
        start: Some(0),
        limit: Some(1000),
    };
    gw.client.get_since(explicit).await.expect("explicit");
    assert_eq!(
        sim.request_count(),
        1,
        "spelled-out defaults are the same page as omitted ones"
    );
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_call() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 100,
            latency: Duration::from_millis(200),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let channel = gw.channel().await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = AuditServiceClient::new(channel.clone());
            tokio::spawn(async move { client.get_since(small()).await })
        })
        .collect();
    let mut pages = Vec::new();
    for call in calls {
        let page = call
            .await
            .expect("task did not panic")
            .expect("call succeeds")
            .into_inner();
        pages.push(page);
    }
    assert_eq!(sim.request_count(), 1, "50 identical misses share one load");
    assert_eq!(pages.len(), 50);
    assert_eq!(pages[0].results.len(), 5);
    assert!(
        pages.iter().all(|p| *p == pages[0]),
        "everyone got one page"
    );
}

#[tokio::test]
async fn no_cache_refetches_and_refreshes_the_entry() {
    let (sim, mut gw) = sim_and_gateway(sim_config(100), |_| {}).await;
    let old = gw
        .client
        .get_since(small())
        .await
        .expect("miss")
        .into_inner();
    assert_eq!(head_seq(&old), 99);

    sim.insert_records(3);
    let cached = gw
        .client
        .get_since(small())
        .await
        .expect("hit")
        .into_inner();
    assert_eq!(sim.request_count(), 1);
    assert_eq!(cached, old, "a plain call is served the cached copy");

    let fresh = gw
        .client
        .get_since(with_md(small(), &[("cache-control", "no-cache")]))
        .await
        .expect("refetch")
        .into_inner();
    assert_eq!(sim.request_count(), 2, "no-cache reaches upstream");
    assert_eq!(head_seq(&fresh), 102, "the refetch sees the new records");

    let after = gw
        .client
        .get_since(small())
        .await
        .expect("hit")
        .into_inner();
    assert_eq!(
        sim.request_count(),
        2,
        "the refreshed entry serves plain calls"
    );
    assert_eq!(after, fresh);
}

#[tokio::test]
async fn concurrent_identical_no_cache_calls_share_fresh_refreshes() {
    // Latency longer than it takes to start every call: all of them ask while the first
    // refresh is in flight.
    let (sim, mut gw) = sim_and_gateway(
        SimulatorConfig {
            records: 100,
            latency: Duration::from_millis(1500),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    gw.client.get_since(small()).await.expect("cached");
    // Arrived before any of the calls below: every answer must hold them.
    sim.insert_records(3);
    let channel = gw.channel().await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = AuditServiceClient::new(channel.clone());
            tokio::spawn(async move {
                client
                    .get_since(with_md(small(), &[("cache-control", "no-cache")]))
                    .await
            })
        })
        .collect();
    for call in calls {
        let page = call
            .await
            .expect("task did not panic")
            .expect("call succeeds")
            .into_inner();
        assert_eq!(
            head_seq(&page),
            102,
            "a refresh answered with an older page"
        );
    }
    // The first refresh, and at most one more (everyone who asked after the first was
    // sent shares it, sent once the first is back), besides the first plain call.
    let refreshes = sim.request_count() - 1;
    assert!(
        (1..=2).contains(&refreshes),
        "50 identical no-cache calls made {refreshes} upstream requests"
    );
}

#[tokio::test]
async fn no_cache_on_a_cold_entry_is_one_upstream_call() {
    let (sim, mut gw) = sim_and_gateway(sim_config(20), |_| {}).await;
    gw.client
        .get_since(with_md(small(), &[("cache-control", "no-cache")]))
        .await
        .expect("page");
    gw.client.get_since(small()).await.expect("hit");
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn a_zero_ttl_sends_every_call_upstream() {
    let (sim, mut gw) = sim_and_gateway(sim_config(20), |c| c.cache.ttl = Duration::ZERO).await;
    for i in 1..=3 {
        gw.client.get_since(small()).await.expect("page");
        assert_eq!(sim.request_count(), i);
    }
}

#[tokio::test]
async fn passthrough_without_a_credential_is_unauthenticated_before_upstream() {
    let (sim, mut gw) =
        sim_and_gateway(sim_config(20), |c| c.auth = UpstreamAuth::Passthrough).await;
    let status = gw
        .client
        .get_since(small())
        .await
        .expect_err("no credential");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    for bad in ["Digest x", "Bearer", "Bearer    ", "token-a"] {
        let status = gw
            .client
            .get_since(with_md(small(), &[("authorization", bad)]))
            .await
            .expect_err("malformed credential");
        assert_eq!(status.code(), Code::Unauthenticated, "{bad:?}: {status:?}");
    }
    assert_eq!(sim.request_count(), 0, "nothing reached Confluence");
}

#[tokio::test]
async fn passthrough_callers_get_their_own_entries_and_headers() {
    let (sim, mut gw) =
        sim_and_gateway(sim_config(20), |c| c.auth = UpstreamAuth::Passthrough).await;
    let a = || with_md(small(), &[("authorization", "Bearer token-a")]);
    let b = || with_md(small(), &[("authorization", "Bearer token-b")]);

    let page_a = gw.client.get_since(a()).await.expect("A").into_inner();
    let page_b = gw.client.get_since(b()).await.expect("B").into_inner();
    assert_eq!(sim.request_count(), 2, "B does not get A's cached page");
    assert_eq!(page_a, page_b, "same log, same page");
    // And each is cached under its own credential.
    gw.client.get_since(a()).await.expect("A again");
    gw.client.get_since(b()).await.expect("B again");
    assert_eq!(sim.request_count(), 2);

    let seen: Vec<_> = sim
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert_eq!(
        seen,
        vec![
            Some("Bearer token-a".to_owned()),
            Some("Bearer token-b".to_owned())
        ],
        "each caller's header forwarded verbatim"
    );
}

#[tokio::test]
async fn a_cached_page_never_reaches_a_caller_upstream_refuses() {
    let (sim, mut gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20,
            required_authorization: Some("Bearer token-a".into()),
            ..Default::default()
        },
        |c| c.auth = UpstreamAuth::Passthrough,
    )
    .await;
    let page = gw
        .client
        .get_since(with_md(small(), &[("authorization", "Bearer token-a")]))
        .await
        .expect("A is authorised")
        .into_inner();
    assert_eq!(page.results.len(), 5);

    for _ in 0..2 {
        let status = gw
            .client
            .get_since(with_md(small(), &[("authorization", "Bearer token-b")]))
            .await
            .expect_err("B is not authorised");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(
        sim.request_count(),
        2,
        "B's first call was put to Confluence; its refusal answers the second \
         (--passthrough-negative-ttl), no page is served to it"
    );
    // A still has its page, from cache.
    gw.client
        .get_since(with_md(small(), &[("authorization", "Bearer token-a")]))
        .await
        .expect("A from cache");
    assert_eq!(sim.request_count(), 2);
}

#[tokio::test]
async fn a_configured_bearer_token_reaches_upstream() {
    let (sim, mut gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20,
            required_authorization: Some("Bearer X".into()),
            ..Default::default()
        },
        |c| c.auth = UpstreamAuth::Bearer("X".into()),
    )
    .await;
    // A caller's own authorization metadata does not override the configured one.
    gw.client
        .get_since(with_md(small(), &[("authorization", "Bearer other")]))
        .await
        .expect("page");
    let seen: Vec<_> = sim
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert_eq!(seen, vec![Some("Bearer X".to_owned())]);
}

#[tokio::test]
async fn errors_are_not_cached() {
    let (sim, mut gw) = sim_and_gateway(sim_config(20), |c| c.upstream.retries = 0).await;
    sim.push_faults([Fault::status_json(503)]);
    let status = gw.client.get_since(small()).await.expect_err("503");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(sim.request_count(), 1);

    let page = gw
        .client
        .get_since(small())
        .await
        .expect("the failure was not cached")
        .into_inner();
    assert_eq!(page.results.len(), 5);
    assert_eq!(sim.request_count(), 2);
    gw.client.get_since(small()).await.expect("hit");
    assert_eq!(sim.request_count(), 2, "the success is cached");
}

#[tokio::test]
async fn a_failed_shared_load_fails_every_waiter_and_is_not_kept() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20,
            latency: Duration::from_millis(200),
            faults: vec![Fault::status_json(503)],
            ..Default::default()
        },
        |c| c.upstream.retries = 0,
    )
    .await;
    let channel = gw.channel().await;
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let mut client = AuditServiceClient::new(channel.clone());
            tokio::spawn(async move { client.get_since(small()).await })
        })
        .collect();
    for call in calls {
        let status = call
            .await
            .expect("task did not panic")
            .expect_err("the shared load failed");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(sim.request_count(), 1);
    let mut client = AuditServiceClient::new(channel);
    client.get_since(small()).await.expect("retried afresh");
    assert_eq!(sim.request_count(), 2);
}

#[tokio::test]
async fn a_short_deadline_does_not_fail_callers_who_joined_its_load() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20,
            latency: Duration::from_millis(400),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let channel = gw.channel().await;
    let mut hasty = AuditServiceClient::new(channel.clone());
    let first = tokio::spawn(async move {
        let mut req = Request::new(small());
        req.set_timeout(Duration::from_millis(150));
        hasty.get_since(req).await
    });
    for _ in 0..1000 {
        if sim.request_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        sim.request_count(),
        1,
        "the hasty caller's load is under way"
    );
    // A patient caller joins the same page while the hasty caller's load is in flight.
    let mut patient = AuditServiceClient::new(channel);
    let second = patient.get_since(small()).await;

    let status = first
        .await
        .expect("task did not panic")
        .expect_err("the hasty caller times out");
    // The gateway's DEADLINE_EXCEEDED, or on a loaded host the client's own time-out
    // first (tonic reports it as CANCELLED): either way the caller left. What matters
    // here is the patient caller (tests/it/errors.rs checks the gateway's status).
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    let page = second
        .expect("the patient caller is not failed by someone else's deadline")
        .into_inner();
    assert_eq!(page.results.len(), 5);
    assert_eq!(
        sim.request_count(),
        1,
        "the patient caller was served by the load the hasty one started"
    );
}

#[tokio::test]
async fn a_load_goes_on_when_the_caller_who_started_it_times_out() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20,
            latency: Duration::from_millis(400),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let mut client = AuditServiceClient::new(gw.channel().await);
    let mut hasty = Request::new(small());
    hasty.set_timeout(Duration::from_millis(100));
    let status = client.get_since(hasty).await.expect_err("too hasty");
    // The gateway's DEADLINE_EXCEEDED, or on a loaded host the client's own time-out
    // first (tonic reports it as CANCELLED): either way the caller left. What matters
    // here is the load that goes on (tests/it/errors.rs checks the gateway's status).
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // Whether this call joins the load still in flight or finds the page it stored,
    // Confluence is asked once.
    let page = client.get_since(small()).await.expect("page").into_inner();
    assert_eq!(page.results.len(), 5);
    assert_eq!(sim.request_count(), 1, "the load outlived its starter");
}

#[tokio::test]
async fn callers_who_start_a_slow_load_and_cancel_it_never_restart_it() {
    let (sim, gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20,
            latency: Duration::from_secs(2),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let channel = gw.channel().await;
    // One after another, each dropped (the call cancelled) long before Confluence answers.
    for i in 0..300 {
        let mut client = AuditServiceClient::new(channel.clone());
        let call = tokio::time::timeout(Duration::from_millis(3), client.get_since(small()));
        if let Ok(answer) = call.await {
            // Only possible once the load has finished: a cache hit.
            answer.unwrap_or_else(|s| panic!("call {i}: {s:?}"));
        }
    }
    let mut patient = AuditServiceClient::new(channel);
    let page = patient
        .get_since(small())
        .await
        .expect("the load was neither restarted into a panic nor lost")
        .into_inner();
    assert_eq!(page.results.len(), 5);
    assert_eq!(
        sim.request_count(),
        1,
        "one load served every caller, however many cancelled"
    );
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_cached_page() {
    let (sim, mut gw) = sim_and_gateway(sim_config(100), |c| c.upstream.retries = 0).await;
    let cached = gw
        .client
        .get_since(small())
        .await
        .expect("miss")
        .into_inner();
    sim.push_faults([Fault::status_json(503)]);
    let status = gw
        .client
        .get_since(with_md(small(), &[("cache-control", "no-cache")]))
        .await
        .expect_err("the refresh fails");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let after = gw
        .client
        .get_since(small())
        .await
        .expect("still cached")
        .into_inner();
    assert_eq!(after, cached);
    assert_eq!(
        sim.request_count(),
        2,
        "the plain call after the failed refresh is a hit"
    );
}

#[tokio::test]
async fn passthrough_serves_cached_pages_only_to_credentials_confluence_accepted_lately() {
    let (sim, mut gw) = sim_and_gateway(sim_config(20), |c| {
        c.auth = UpstreamAuth::Passthrough;
        c.passthrough_revalidate = Duration::from_millis(300);
        // Every refusal is asked again: what is tested is revalidation alone.
        c.passthrough_negative_ttl = Duration::ZERO;
        c.upstream.retries = 0;
    })
    .await;
    let call = || with_md(small(), &[("authorization", "Bearer token-a")]);
    gw.client.get_since(call()).await.expect("accepted");
    gw.client.get_since(call()).await.expect("from the cache");
    assert_eq!(
        sim.request_count(),
        1,
        "accepted a moment ago: the cache serves it"
    );

    // The token is revoked upstream; once the revalidation time has passed, the gateway
    // asks Confluence again instead of serving the cached page.
    tokio::time::sleep(Duration::from_millis(400)).await;
    sim.push_faults([Fault::status_json(401)]);
    let status = gw
        .client
        .get_since(call())
        .await
        .expect_err("a revoked credential reads nothing, cached or not");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(sim.request_count(), 2);

    // Accepted again (the fault is spent): served, and cached for it once more.
    gw.client.get_since(call()).await.expect("accepted again");
    gw.client.get_since(call()).await.expect("from the cache");
    assert_eq!(sim.request_count(), 3);
}
