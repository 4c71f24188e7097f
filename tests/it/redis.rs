//! The shared Redis tier against a real `redis-server` the test starts: replicas share
//! pages, a dead Redis fails no call, a restarted one is used again, values that are not
//! ours are misses, no key reveals a credential, a cool-down one replica started holds
//! the others back (a forged one is ignored), and so does a cut of the paced limit.

use std::time::{Duration, Instant};

use audit_gateway::{
    Gateway, UpstreamAuth,
    metrics::METRICS,
    pb,
    testing::redis::{RedisServer, Reply},
};
use confluence_sim::{Concurrency, Fault, SimulatorConfig, SimulatorHandle};

use crate::common::{TestGateway, spawn_gateway, spawn_simulator, stream_records, test_config};

const SALT: &str = "shared-by-all-replicas";
const TOKEN: &str = "SECRET-PAT-4711";

/// A gateway sharing `redis`, calling `confluence` with the bearer `TOKEN`.
async fn replica(confluence: &str, redis: &RedisServer) -> TestGateway {
    replica_with(confluence, redis, |_| {}).await
}

/// A replica as [`replica`] makes, with `tweak` applied to its configuration.
async fn replica_with(
    confluence: &str,
    redis: &RedisServer,
    tweak: impl FnOnce(&mut audit_gateway::GatewayConfig),
) -> TestGateway {
    let mut config = test_config(confluence);
    config.auth = UpstreamAuth::Bearer(TOKEN.into());
    config.redis.url = Some(redis.url().into());
    config.credential_salt = Some(SALT.into());
    config.redis.pause = Duration::from_millis(200);
    // Roomier than the 50 ms default: on a loaded host a first operation that times out
    // pauses the tier, and a write it skips (a page, a cool-down) fails a test that waits
    // for it. The outage tests set their own.
    config.redis.timeout = Duration::from_millis(250);
    tweak(&mut config);
    spawn_gateway(config).await
}

/// A page of 10 records from `start`.
pub(crate) fn page(start: i32) -> pb::GetSinceRequest {
    pb::GetSinceRequest {
        start: Some(start),
        limit: Some(10),
        ..Default::default()
    }
}

/// Polls until `f` holds, for at most 2 s.
async fn until(f: impl AsyncFnMut() -> bool) -> bool {
    until_for(Duration::from_secs(2), f).await
}

/// Polls until `f` holds, for at most `limit`.
pub(crate) async fn until_for(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_page_fetched_by_one_replica_is_served_by_the_other() {
    let redis = RedisServer::start().await;
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let mut a = replica(&sim.base_url(), &redis).await;
    let mut b = replica(&sim.base_url(), &redis).await;
    let first = a.client.get_since(page(0)).await.expect("a").into_inner();
    assert_eq!(sim.request_count(), 1);
    // The write to Redis happens off the caller's path: wait until it landed.
    assert!(
        until(async || !redis.keys().await.is_empty()).await,
        "page stored"
    );
    let second = b.client.get_since(page(0)).await.expect("b").into_inner();
    assert_eq!(second, first);
    assert_eq!(sim.request_count(), 1, "replica b made no upstream call");
    // And b now holds it in process too: Redis can go and b still answers from memory.
    drop(redis);
    b.client.get_since(page(0)).await.expect("b, from memory");
    assert_eq!(sim.request_count(), 1);
}

#[tokio::test]
async fn keys_are_prefixed_versioned_and_reveal_no_credential() {
    let redis = RedisServer::start().await;
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let base_url = sim.base_url();
    let mut a = replica(&base_url, &redis).await;
    let search = "Space permission";
    for start in [0, 10, 20] {
        let request = pb::GetSinceRequest {
            search_string: Some(search.into()),
            ..page(start)
        };
        a.client.get_since(request).await.expect("page");
    }
    assert!(until(async || redis.keys().await.len() == 3).await);
    let host = sim.addr().to_string();
    for key in redis.keys().await {
        // The documented shape, `{prefix}:v2:page:{hex digest}`, and nothing else.
        let digest = key
            .strip_prefix("audit-gateway:v2:page:")
            .unwrap_or_else(|| panic!("{key} is not under audit-gateway:v2:page:"));
        assert!(
            digest.len() >= 32
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{key}: not a lower-case hex digest of at least 128 bits"
        );
        let lower = key.to_lowercase();
        for part in [
            TOKEN,
            "bearer",
            SALT,
            base_url.as_str(),
            host.as_str(),
            search,
        ] {
            assert!(!lower.contains(&part.to_lowercase()), "{key} holds {part}");
        }
    }
}

#[tokio::test]
async fn a_dead_redis_fails_no_call_and_costs_no_wait() {
    let mut redis = RedisServer::start().await;
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let mut a = replica(&sim.base_url(), &redis).await;
    a.client.get_since(page(0)).await.expect("with redis");
    let (errors, outages) = (METRICS.redis_errors.get(), METRICS.redis_outages.get());
    redis.kill();
    // Every call (each a new page, so each asks Redis first) still succeeds, and
    // promptly: refused connections fail fast, then the tier is skipped. The bound is
    // generous: this checks "no hang", not speed.
    for start in 1..21 {
        let t = Instant::now();
        a.client
            .get_since(page(start))
            .await
            .expect("without redis");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "call {start} took {:?}",
            t.elapsed()
        );
    }
    assert_eq!(sim.request_count(), 21, "every page came from upstream");
    // The outage is counted once it is seen (metrics are process-wide: other tests may
    // add to them, so only growth is checked).
    assert!(METRICS.redis_errors.get() > errors);
    assert!(METRICS.redis_outages.get() > outages);
}

#[tokio::test]
async fn a_hung_redis_is_cut_off_by_the_timeout() {
    // A listener that accepts and never answers: the worst Redis there is.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = hung.local_addr().expect("addr").port();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut config = test_config(&sim.base_url());
    config.redis.url = Some(url.into());
    config.credential_salt = Some(SALT.into());
    config.redis.timeout = Duration::from_millis(50);
    let mut a = spawn_gateway(config).await;
    for start in 0..5 {
        let t = Instant::now();
        a.client
            .get_since(page(start))
            .await
            .expect("served from upstream");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "call {start} took {:?}",
            t.elapsed()
        );
    }
    keep.abort();
}

#[tokio::test]
async fn a_restarted_redis_is_shared_again() {
    let mut redis = RedisServer::start().await;
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let mut a = replica(&sim.base_url(), &redis).await;
    let mut b = replica(&sim.base_url(), &redis).await;
    redis.kill();
    a.client.get_since(page(0)).await.expect("redis down");
    redis.launch().await;
    // After the pause, a's next miss stores its page again and b is served from it.
    let mut start = 100;
    let shared = until(async || {
        start += 10;
        let before = sim.request_count();
        a.client.get_since(page(start)).await.expect("a");
        tokio::time::sleep(Duration::from_millis(30)).await;
        b.client.get_since(page(start)).await.expect("b");
        sim.request_count() == before + 1
    })
    .await;
    assert!(shared, "replicas never shared a page after Redis came back");
}

#[tokio::test]
async fn values_that_are_not_ours_are_misses() {
    let redis = RedisServer::start().await;
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let mut a = replica(&sim.base_url(), &redis).await;
    a.client.get_since(page(0)).await.expect("page");
    assert!(until(async || redis.keys().await.len() == 1).await);
    let key = redis.keys().await.remove(0);
    for junk in ["garbage", "AGP1", "AGP1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"] {
        assert_eq!(
            redis.command(&["SET", &key, junk]).await,
            Some(Reply::Text("OK".into()))
        );
        // A fresh replica has nothing in process: it must treat the value as a miss.
        let mut b = replica(&sim.base_url(), &redis).await;
        let before = sim.request_count();
        let got = b
            .client
            .get_since(page(0))
            .await
            .expect("served despite junk");
        assert_eq!(got.into_inner().results.len(), 10);
        assert_eq!(sim.request_count(), before + 1, "{junk:?} was not a miss");
    }
}

#[tokio::test]
async fn a_genuine_value_moved_to_another_key_is_never_served() {
    let redis = RedisServer::start().await;
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let mut a = replica(&sim.base_url(), &redis).await;
    let first = a
        .client
        .get_since(page(0))
        .await
        .expect("page")
        .into_inner();
    assert!(until(async || redis.keys().await.len() == 1).await);
    let k0 = redis.keys().await.remove(0);
    let tenth = a
        .client
        .get_since(page(10))
        .await
        .expect("page")
        .into_inner();
    assert!(until(async || redis.keys().await.len() == 2).await);
    let k10 = redis
        .keys()
        .await
        .into_iter()
        .find(|k| *k != k0)
        .expect("the second key");
    // Someone with access to Redis (but not the salt) puts page 0's value under page
    // 10's key: a well-formed value of ours, in the wrong place.
    assert_eq!(
        redis.command(&["COPY", &k0, &k10, "REPLACE"]).await,
        Some(Reply::Integer(1))
    );
    let mut b = replica(&sim.base_url(), &redis).await;
    let before = sim.request_count();
    let got = b
        .client
        .get_since(page(10))
        .await
        .expect("page")
        .into_inner();
    let summaries = |p: &pb::GetSinceResponse| -> Vec<String> {
        p.results.iter().map(|r| r.summary.clone()).collect()
    };
    assert_eq!(
        summaries(&got),
        summaries(&tenth),
        "served another page's records"
    );
    assert_ne!(summaries(&got), summaries(&first));
    assert_eq!(
        sim.request_count(),
        before + 1,
        "the moved value was not a miss"
    );
}

#[tokio::test]
async fn redis_needs_a_shared_salt() {
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let mut config = test_config(&sim.base_url());
    config.redis.url = Some("redis://127.0.0.1:1/0".into());
    let err = match Gateway::bind(config).await {
        Ok(_) => panic!("a Redis tier without a credential salt was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.flag, "--credential-salt", "{err}");
    assert!(err.to_string().starts_with("--credential-salt: "), "{err}");
    assert!(err.to_string().contains("--redis-url"), "{err}");
}

#[tokio::test]
async fn no_cache_refreshes_the_shared_tier_too() {
    let redis = RedisServer::start().await;
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let mut a = replica(&sim.base_url(), &redis).await;
    let old = a.client.get_since(page(0)).await.expect("a").into_inner();
    assert!(until(async || redis.keys().await.len() == 1).await);
    sim.insert_records(3);
    let mut fresh = tonic::Request::new(page(0));
    fresh
        .metadata_mut()
        .insert("cache-control", "no-cache".parse().expect("ascii"));
    let new = a
        .client
        .get_since(fresh)
        .await
        .expect("refresh")
        .into_inner();
    assert_ne!(new, old, "the refresh saw the new records");
    assert_eq!(sim.request_count(), 2);
    // A replica that never saw the page is served the refreshed copy from Redis (the
    // write happens off the caller's path; give it a moment to land).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = replica(&sim.base_url(), &redis).await;
    let got = c.client.get_since(page(0)).await.expect("c").into_inner();
    assert_eq!(got, new, "Redis kept the stale page");
    assert_eq!(sim.request_count(), 2, "replica c made no upstream call");
}

/// The simulator's requests for pages starting at `start`, in order.
pub(crate) fn received_at(sim: &confluence_sim::SimulatorHandle, start: i32) -> Vec<Instant> {
    let start = start.to_string();
    sim.requests()
        .into_iter()
        .filter(|r| r.param("start") == Some(start.as_str()))
        .map(|r| r.received)
        .collect()
}

/// After a 429 with `Retry-After: 2` at replica `a`, a request of replica `b` waits until
/// the cool-down ends: it travels through the shared tier, whose keys `keys` lists. Both
/// calls then succeed, with one upstream request each (`warm`: requests made before).
pub(crate) async fn a_cool_down_holds_the_other_replica_back(
    sim: &SimulatorHandle,
    mut a: TestGateway,
    b: &mut TestGateway,
    mut keys: impl AsyncFnMut() -> Vec<String>,
    warm: usize,
) {
    sim.push_faults([Fault::Status {
        code: 429,
        retry_after: Some("2".into()),
        body: None,
    }]);
    // A is refused, cools down for 2 s (within its --upstream-max-backoff) and retries.
    let first = tokio::spawn(async move { a.client.get_since(page(0)).await });
    let is_cool_down = |k: &String| k.starts_with("audit-gateway:v1:cooldown:");
    assert!(
        until(async || keys().await.iter().any(is_cool_down)).await,
        "the cool-down was not shared"
    );
    let refused_at = received_at(sim, 0)[0];
    // B asks for another page within the cool-down: it waits, then asks Confluence.
    b.client
        .get_since(page(10))
        .await
        .expect("b after the cool-down");
    first
        .await
        .expect("no panic")
        .expect("a after the cool-down");
    let asked = received_at(sim, 10);
    assert_eq!(asked.len(), 1);
    let after = asked[0].duration_since(refused_at);
    assert!(
        after >= Duration::from_millis(1900),
        "replica b asked Confluence {after:?} after the 429 that asked for 2 s"
    );
    assert_eq!(
        sim.request_count(),
        warm + 3,
        "the 429, then one request per replica"
    );
}

#[tokio::test]
async fn a_cool_down_one_replica_started_holds_the_others_back_and_a_forged_one_is_ignored() {
    let redis = RedisServer::start().await;
    let sim = spawn_simulator(SimulatorConfig::default()).await;
    let a = replica(&sim.base_url(), &redis).await;
    let mut b = replica(&sim.base_url(), &redis).await;
    a_cool_down_holds_the_other_replica_back(&sim, a, &mut b, async || redis.keys().await, 0).await;
    let is_cool_down = |k: &String| k.starts_with("audit-gateway:v1:cooldown:");

    // A value without the salt's MAC, under the same key, asking for a minute: ignored.
    let key = redis
        .keys()
        .await
        .into_iter()
        .find(is_cool_down)
        .unwrap_or_else(|| "audit-gateway:v1:cooldown:unknown".into());
    let forged = format!("AGP2{}", "9".repeat(24));
    // Each a page no replica holds, so each call asks Confluence (after the cool-down
    // check).
    for (junk, start) in [(forged.as_str(), 20), ("garbage", 30)] {
        assert_eq!(
            redis.command(&["SET", &key, junk, "PX", "60000"]).await,
            Some(Reply::Text("OK".into()))
        );
        let mut c = replica(&sim.base_url(), &redis).await;
        let t = Instant::now();
        let before = sim.request_count();
        c.client
            .get_since(page(start))
            .await
            .expect("not held back");
        assert_eq!(sim.request_count(), before + 1);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{junk:?} held the call back for {:?}",
            t.elapsed()
        );
    }
}

/// A 429 asking for a day, with `--upstream-max-cooldown 5s`, on two replicas sharing
/// Redis: calls on both wait out 5 s, not a day; then exactly one request probes
/// Confluence, the others go only once its answer came, and every call succeeds within
/// 10 s of the 429.
#[tokio::test]
async fn a_day_long_retry_after_ends_after_the_max_cooldown_with_one_probe_for_all_replicas() {
    let redis = RedisServer::start().await;
    let latency = Duration::from_millis(300);
    let sim = spawn_simulator(SimulatorConfig {
        latency,
        ..Default::default()
    })
    .await;
    let five = |c: &mut audit_gateway::GatewayConfig| {
        c.upstream.max_cooldown = Duration::from_secs(5);
        // The default: calls wait out a cool-down this short rather than refuse it.
        c.upstream.max_backoff = Duration::from_secs(30);
    };
    let a = replica_with(&sim.base_url(), &redis, five).await;
    let b = replica_with(&sim.base_url(), &redis, five).await;
    sim.push_faults([Fault::Status {
        code: 429,
        retry_after: Some("86400".into()),
        body: None,
    }]);
    let call = |gw: &TestGateway, start: i32| {
        let mut client = gw.client.clone();
        tokio::spawn(async move {
            let mut req = tonic::Request::new(page(start));
            req.set_timeout(Duration::from_secs(20));
            let answer = client.get_since(req).await;
            (answer, Instant::now())
        })
    };
    // A is refused and retries after the 5 s it honours of the day asked.
    let mut calls = vec![call(&a, 0)];
    assert!(
        until(async || redis.keys().await.iter().any(|k| k.contains(":cooldown:"))).await,
        "the cool-down was not shared"
    );
    let limited_at = received_at(&sim, 0)[0];
    // Five more calls on each replica, each a page no cache holds.
    for i in 1..=5 {
        calls.push(call(&a, i * 10));
        calls.push(call(&b, 100 + i * 10));
    }
    for c in calls {
        let (answer, ended) = c.await.expect("no panic");
        answer.expect("served once the cool-down ended");
        let took = ended.duration_since(limited_at);
        assert!(
            took < Duration::from_secs(10),
            "a call ended {took:?} after the 429"
        );
    }
    let mut after: Vec<Instant> = sim.requests()[1..].iter().map(|r| r.received).collect();
    after.sort();
    assert_eq!(after.len(), 11, "one request per page after the 429");
    let probe = after[0];
    assert!(
        probe.duration_since(limited_at) >= Duration::from_millis(4900),
        "the probe went {:?} after the 429",
        probe.duration_since(limited_at)
    );
    // Nothing else went until the probe was answered (it takes `latency`).
    let next = after[1].duration_since(probe);
    assert!(
        next >= latency - Duration::from_millis(50),
        "a second request went {next:?} after the probe, before its answer"
    );
    assert!(METRICS.upstream_cooldown_probes.get() >= 1);
}

/// Streams a window of `number` days in pages of 100; the records received.
async fn stream_days(gw: &mut TestGateway, number: i64) -> usize {
    let req = pb::StreamSinceRequest {
        number: Some(number),
        units: pb::TimeUnit::Days as i32,
        page_size: Some(100),
        ..Default::default()
    };
    stream_records(&mut gw.client, req).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_one_replica_made_holds_the_other_from_its_first_batch() {
    let redis = RedisServer::start().await;
    // A site that warns past 2 requests of a credential in flight and refuses none.
    let sim = spawn_simulator(SimulatorConfig {
        records: 3_000,
        latency: Duration::from_millis(100),
        concurrency: Some(Concurrency {
            allowed: 100,
            near: 2,
        }),
        ..Default::default()
    })
    .await;
    let mut a = replica(&sim.base_url(), &redis).await;
    // A's first batch (8 in flight, each credential starts at half the ceiling of 16)
    // draws warnings: it cuts its limit and records the cut.
    assert_eq!(stream_days(&mut a, 30).await, 3_000);
    let (_, warned_a) = sim.over_limit();
    assert!(
        warned_a >= 6,
        "{warned_a} warnings: A's first batch was not 8"
    );
    assert!(
        until(async || redis
            .keys()
            .await
            .iter()
            .any(|k| k.starts_with("audit-gateway:v1:pace:")))
        .await,
        "the cut was not shared"
    );
    // B, new, streams another window (pages A never fetched): it looks for the fleet's
    // cut before its first batch, so that batch stays near what the site carries.
    let shared_before = METRICS.limit_moves("shared");
    let mut b = replica(&sim.base_url(), &redis).await;
    assert_eq!(stream_days(&mut b, 31).await, 3_000);
    assert!(
        METRICS.limit_moves("shared") > shared_before,
        "B did not take the cut in"
    );
    // B's first page goes alone; its first batch of look-ahead goes when that page is
    // answered, a round trip later. Alone it would be 8 requests, as A's was.
    let of_b: Vec<Instant> = sim
        .requests()
        .into_iter()
        .filter(|r| r.param("number") == Some("31"))
        .map(|r| r.received)
        .collect();
    let first = of_b[0];
    let batch = of_b
        .iter()
        .filter(|t| {
            let after = t.duration_since(first);
            after >= Duration::from_millis(50) && after < Duration::from_millis(150)
        })
        .count();
    assert!(
        (1..=4).contains(&batch),
        "B's first batch was {batch} requests: it started as if alone"
    );
    assert_eq!(sim.over_limit().0, 0, "nothing refused");
}
