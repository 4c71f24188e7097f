//! The Data Center dialect and the retention endpoint, queried over real TCP.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::tests::{Client, Reply, get, live, sorted, start};
use super::*;

const EVENTS: &str = "/rest/auditing/1.0/events";
const RETENTION: &str = "/rest/api/audit/retention";

/// A Data Center site at the root (`base_path` `""`, as DC commonly is).
fn dc(records: usize) -> SimulatorConfig {
    SimulatorConfig {
        flavor: Flavor::DataCenter,
        base_path: String::new(),
        records,
        ..SimulatorConfig::default()
    }
}

/// The 200 page for `query`, checked for the `{entities, pagingInfo}` shape.
async fn events(sim: &SimulatorHandle, query: &str) -> Value {
    events_at(sim, &format!("{EVENTS}?{query}")).await
}

async fn events_at(sim: &SimulatorHandle, target: &str) -> Value {
    let reply = get(sim, target).await;
    assert_eq!(
        reply.status,
        200,
        "{target}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.body.len(), reply.content_length(), "a whole body");
    let body = reply.json();
    let entities = body["entities"].as_array().unwrap();
    let info = body["pagingInfo"].as_object().unwrap();
    assert_eq!(info["size"], entities.len());
    let next = ["nextPageOffset", "nextPageCursor", "nextPageLink"];
    if info["lastPage"].as_bool().unwrap() {
        assert_eq!(info.len(), 2, "no next* keys on the last page: {info:?}");
    } else {
        assert!(next.iter().all(|key| info.contains_key(*key)), "{info:?}");
        assert_eq!(info["nextPageOffset"], 0);
        assert!(info["nextPageCursor"].is_string());
    }
    body
}

/// (timestamp ms, [`record_seq`]) of each event.
fn dated(body: &Value) -> Vec<(i64, u64)> {
    let entities = body["entities"].as_array().unwrap();
    let date_and_seq = |e: &Value| (record_date_ms(e).unwrap(), record_seq(e).unwrap());
    entities.iter().map(date_and_seq).collect()
}

fn last_page(body: &Value) -> bool {
    body["pagingInfo"]["lastPage"].as_bool().unwrap()
}

/// The request target of a page's `nextPageLink` on `sim`.
fn next_target(sim: &SimulatorHandle, body: &Value) -> String {
    let link = body["pagingInfo"]["nextPageLink"].as_str().unwrap();
    let origin = format!("http://{}", sim.addr());
    link.strip_prefix(&origin).unwrap().to_owned()
}

/// Pages from `first` on, following `nextPageCursor` (or `nextPageLink` when `by_link`),
/// sleeping `pause` between pages; returns every event and the pages served.
async fn traverse(
    sim: &SimulatorHandle,
    first: &str,
    by_link: bool,
    pause: Duration,
) -> (Vec<(i64, u64)>, usize) {
    let mut body = events(sim, first).await;
    let (mut all, mut pages) = (dated(&body), 1);
    while !last_page(&body) {
        tokio::time::sleep(pause).await;
        let target = if by_link {
            next_target(sim, &body)
        } else {
            let cursor = body["pagingInfo"]["nextPageCursor"].as_str().unwrap();
            format!("{EVENTS}?{first}&pageCursor={cursor}")
        };
        body = events_at(sim, &target).await;
        all.extend(dated(&body));
        pages += 1;
        // A cursor that does not move on would page forever: fail instead.
        assert!(pages < 1000, "{pages} pages from {first}");
    }
    (all, pages)
}

#[tokio::test]
async fn cursor_paging_over_a_live_log_delivers_every_event_exactly_once() {
    for (seed, limit, by_link) in [
        (1, 37, false),
        (7, 50, true),
        (42, 13, true),
        (99, 64, false),
    ] {
        let sim = start(SimulatorConfig {
            seed,
            live: live(3000.0, 4),
            // No duplicates here: a live duplicate can be created a burst after the record
            // it copies yet carry its date, a late commit that a cursor already past it
            // rightly misses (the ties test pages over duplicates).
            ties: 3,
            ..dc(400)
        })
        .await;
        let before = sim.record_count();
        let first = format!("limit={limit}");
        let (delivered, pages) = traverse(&sim, &first, by_link, Duration::from_millis(2)).await;
        assert!(pages > 5, "seed {seed}: {pages} pages");
        assert!(
            sim.record_count() > before,
            "seed {seed}: events arrived while paging"
        );
        assert!(
            delivered.windows(2).all(|pair| pair[0].0 >= pair[1].0),
            "seed {seed}: newest first"
        );
        // The traversal is bounded by its first page: what existed up to its newest event.
        let newest = delivered[0].0;
        let expected = sim.expected_records(i64::MIN, newest);
        assert!(expected.len() >= 400);
        assert_eq!(sorted(delivered), expected, "seed {seed}");
    }
}

#[tokio::test]
async fn a_cursor_is_the_last_events_millisecond_and_id_and_the_link_keeps_the_query() {
    let sim = start(dc(100)).await;
    let body = events(&sim, "limit=3&search=%23&offset=0").await;
    let last = &body["entities"][2];
    let cursor = body["pagingInfo"]["nextPageCursor"].as_str().unwrap();
    let (ms, id) = cursor.split_once(',').unwrap();
    assert_eq!(ms.parse::<i64>().unwrap(), record_date_ms(last).unwrap());
    // The hidden id is the sequence number plus one.
    assert_eq!(id.parse::<u64>().unwrap(), record_seq(last).unwrap() + 1);
    let link = body["pagingInfo"]["nextPageLink"].as_str().unwrap();
    assert_eq!(
        link,
        format!(
            "{}{EVENTS}?limit=3&search=%23&offset=0&pageCursor={cursor}",
            sim.base_url()
        )
    );
    let next = events_at(&sim, &next_target(&sim, &body)).await;
    let seqs: Vec<u64> = dated(&next).iter().map(|&(_, seq)| seq).collect();
    assert_eq!(seqs, [96, 95, 94]);
}

#[tokio::test]
async fn offset_paging_shifts_as_events_arrive_and_a_cursor_does_not() {
    let sim = start(SimulatorConfig {
        inserts_per_request: 5,
        ..dc(100)
    })
    .await;
    let first = dated(&events(&sim, "limit=10").await);
    let second = dated(&events(&sim, "limit=10&offset=10").await);
    // Five events arrived before the second request: its first five were on page one.
    assert_eq!(second[..5], first[5..]);
    let cursor_query = format!("limit=10&pageCursor={},{}", first[9].0, first[9].1 + 1);
    let after_cursor = dated(&events(&sim, &cursor_query).await);
    let first_seq = first[9].1;
    let expected: Vec<u64> = (first_seq - 10..first_seq).rev().collect();
    let seqs: Vec<u64> = after_cursor.iter().map(|&(_, seq)| seq).collect();
    assert_eq!(
        seqs, expected,
        "a cursor page continues where page one ended"
    );
}

#[tokio::test]
async fn ties_are_listed_by_id_and_cursor_pages_split_them_exactly() {
    let sim = start(SimulatorConfig {
        ties: 6,
        duplicate_every: 4,
        ..dc(120)
    })
    .await;
    let whole = dated(&events(&sim, "limit=1000").await);
    assert_eq!(whole.len(), 120);
    assert_eq!(
        sorted(whole.clone()),
        sim.expected_records(i64::MIN, i64::MAX)
    );
    let seqs: HashSet<u64> = whole.iter().map(|&(_, seq)| seq).collect();
    assert!(seqs.len() < 120, "some events are duplicates");
    // Listed by id descending, which is creation order reversed, on every request.
    let mut reversed = whole.clone();
    reversed.reverse();
    assert_eq!(reversed, sim.expected_records(i64::MIN, i64::MAX));
    assert_eq!(dated(&events(&sim, "limit=1000").await), whole);
    let mut per_ms = std::collections::HashMap::<i64, u32>::new();
    for &(ms, _) in &whole {
        *per_ms.entry(ms).or_default() += 1;
    }
    assert!(
        per_ms.values().any(|&n| n >= 3),
        "groups share a millisecond"
    );
    for limit in [1, 2, 5, 7] {
        let (paged, _) = traverse(&sim, &format!("limit={limit}"), false, Duration::ZERO).await;
        assert_eq!(paged, whole, "limit {limit}");
    }
}

#[tokio::test]
async fn deletions_while_paging_never_repeat_an_event() {
    let sim = start(SimulatorConfig {
        deletes_per_request: 7,
        ..dc(300)
    })
    .await;
    let (delivered, pages) = traverse(&sim, "limit=20", true, Duration::ZERO).await;
    let unique: HashSet<u64> = delivered.iter().map(|&(_, seq)| seq).collect();
    assert_eq!(unique.len(), delivered.len());
    // Each request deleted 7 of the oldest before it was served.
    assert_eq!(sim.record_count(), 300 - 7 * pages);
    let still_there = sim.expected_records(i64::MIN, i64::MAX);
    assert!(still_there.iter().all(|record| delivered.contains(record)));
    assert!(
        delivered.len() < 300,
        "the oldest were deleted before the end was reached"
    );
}

#[tokio::test]
async fn from_and_to_are_inclusive_instants_and_search_ors_its_tokens() {
    let sim = start(dc(100)).await;
    let whole = dated(&events(&sim, "").await);
    assert_eq!(whole.len(), 100, "to absent is now; from absent the epoch");
    let (newest, oldest) = (whole[10].0, whole[20].0);
    let query = format!(
        "from={}&to={}",
        instant::iso_instant(oldest),
        instant::iso_instant(newest)
    );
    let window = dated(&events(&sim, &query.replace(':', "%3A")).await);
    assert_eq!(window, whole[10..=20]);
    let future = instant::iso_instant(sim.now_ms() + 60_000);
    assert!(dated(&events(&sim, &format!("from={future}")).await).is_empty());
    assert_eq!(sim.empty_page_count(AuditEndpoint::Events), 1);

    // `#42` matches one action, `#7` ten more (#7, #70..#79), `SYSTEM` every system event.
    let body = events(&sim, "search=%2342%20%237&limit=200").await;
    let mut seqs: Vec<u64> = dated(&body).iter().map(|&(_, seq)| seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [7, 42, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79]);
    let system = events(&sim, "search=SYSTEM&limit=200").await;
    let entities = system["entities"].as_array().unwrap();
    assert_eq!(entities.len(), 25, "one event in four is the system's");
    assert!(entities.iter().all(|e| e["method"] == "System"));
    // Offset applies after the search, and a cursor with it.
    let second = events(&sim, "search=%237&limit=3&offset=2").await;
    let seqs: Vec<u64> = dated(&second).iter().map(|&(_, seq)| seq).collect();
    assert_eq!(seqs, [77, 76, 75]);
}

#[tokio::test]
async fn invalid_parameters_are_400_invalid_query() {
    let sim = start(dc(10)).await;
    let reply = get(
        &sim,
        &format!("{EVENTS}?from=2024-01-01T00:00:00%2B01:00&limit=0&pageCursor=x&offset=-1"),
    )
    .await;
    assert_eq!(reply.status, 400);
    let body = reply.json();
    assert_eq!(body["status"], 400);
    assert_eq!(body["message"], "Invalid Query");
    assert!(instant::parse_instant(body["timestamp"].as_str().unwrap()).is_some());
    let keys: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| {
            assert!(error["message"].is_string());
            error["key"].as_str().unwrap()
        })
        .collect();
    assert_eq!(keys, ["from", "offset", "pageCursor", "limit"]);
    let long = "a".repeat(101);
    for bad in [
        format!("search={long}"),
        "to=yesterday".to_owned(),
        "limit=100001".to_owned(),
        "from=".to_owned(),
    ] {
        let reply = get(&sim, &format!("{EVENTS}?{bad}")).await;
        assert_eq!(reply.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn a_limit_over_10000_is_a_plain_500_and_a_server_cap_clamps() {
    let sim = start(SimulatorConfig {
        max_limit: Some(25),
        ..dc(100)
    })
    .await;
    for limit in [10_001, 100_000] {
        let reply = get(&sim, &format!("{EVENTS}?limit={limit}")).await;
        assert_eq!(reply.status, 500);
        assert_eq!(reply.body, b"Maximum allowed page size is 10000");
        assert!(
            reply
                .header("content-type")
                .unwrap()
                .starts_with("text/plain")
        );
    }
    let body = events(&sim, "limit=10000").await;
    assert_eq!(
        body["pagingInfo"]["size"], 25,
        "clamped to the cap, not refused"
    );
    assert!(!last_page(&body));
    let (all, pages) = traverse(&sim, "limit=10000", true, Duration::ZERO).await;
    assert_eq!((all.len(), pages), (100, 4));
    // The default page is 200 events.
    let sim = start(dc(500)).await;
    assert_eq!(events(&sim, "").await["pagingInfo"]["size"], 200);
}

#[tokio::test]
async fn bearer_and_basic_are_accepted_and_a_bad_token_runs_as_anonymous() {
    let basic = "Basic dXNlcjpwYXNz";
    let sim = start(SimulatorConfig {
        required_authorization: Some(basic.to_owned()),
        personal_access_token: Some("NjQ2OTk0".to_owned()),
        forbidden_authorization: Some("Bearer viewer".to_owned()),
        ..dc(10)
    })
    .await;
    let mut client = Client::connect(&sim).await;
    let mut status = async |auth: Option<&str>| -> Reply {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        client.get(EVENTS, &headers).await.unwrap()
    };
    assert_eq!(status(Some(basic)).await.status, 200);
    assert_eq!(status(Some("Bearer NjQ2OTk0")).await.status, 200);
    let not_allowed = json!({
        "status-code": 403,
        "message": "The user is not allowed to view audit events",
    });
    for anonymous in [
        Some("Bearer wrong"),
        Some("bearer NjQ2OTk1"),
        None,
        Some("Bearer viewer"),
    ] {
        let reply = status(anonymous).await;
        assert_eq!(reply.status, 403, "{anonymous:?}");
        assert_eq!(reply.json(), not_allowed);
    }
    let wrong_basic = status(Some("Basic dXNlcjpvdGhlcg==")).await;
    assert_eq!(wrong_basic.status, 401);
    // Retention takes the same credentials, with the Cloud API's empty 403.
    let retention = async |auth: &str| {
        let mut client = Client::connect(&sim).await;
        client
            .get(RETENTION, &[("authorization", auth)])
            .await
            .unwrap()
    };
    assert_eq!(retention("Bearer NjQ2OTk0").await.status, 200);
    let forbidden = retention("Bearer viewer").await;
    assert_eq!((forbidden.status, forbidden.body.len()), (403, 0));
    assert_eq!(retention("Bearer wrong").await.status, 403);
}

#[tokio::test]
async fn cloud_takes_no_bearer_token_and_forbids_with_an_empty_body() {
    let sim = start(SimulatorConfig {
        required_authorization: Some("Basic dXNlcjpwYXNz".to_owned()),
        personal_access_token: Some("pat".to_owned()),
        forbidden_authorization: Some("Basic dmlld2VyOng=".to_owned()),
        ..tests_cloud(5)
    })
    .await;
    let mut client = Client::connect(&sim).await;
    let since = "/wiki/rest/api/audit/since";
    let bearer = client
        .get(since, &[("authorization", "Bearer pat")])
        .await
        .unwrap();
    assert_eq!(bearer.status, 401);
    let forbidden = client
        .get(since, &[("authorization", "Basic dmlld2VyOng=")])
        .await
        .unwrap();
    assert_eq!((forbidden.status, forbidden.body.len()), (403, 0));
    let right = [("authorization", "Basic dXNlcjpwYXNz")];
    assert_eq!(client.get(since, &right).await.unwrap().status, 200);
}

fn tests_cloud(records: usize) -> SimulatorConfig {
    SimulatorConfig {
        records,
        ..SimulatorConfig::default()
    }
}

#[tokio::test]
async fn each_flavor_answers_404_at_the_others_endpoints_but_both_serve_retention() {
    let sim = start(SimulatorConfig {
        faults: vec![Fault::status_json(503)],
        ..dc(10)
    })
    .await;
    for path in ["/rest/api/audit/since", "/rest/api/audit"] {
        assert_eq!(get(&sim, path).await.status, 404, "{path}");
    }
    assert_eq!(get(&sim, RETENTION).await.status, 200);
    // Neither the 404s nor retention took the scripted fault: the first listing did.
    assert_eq!(get(&sim, EVENTS).await.status, 503);
    assert_eq!(get(&sim, EVENTS).await.status, 200);
    assert_eq!(sim.request_count_of(AuditEndpoint::Since), 1);
    assert_eq!(sim.request_count_of(AuditEndpoint::Range), 1);
    assert_eq!(sim.request_count_of(AuditEndpoint::Retention), 1);
    assert_eq!(sim.request_count_of(AuditEndpoint::Events), 2);
    assert_eq!(sim.request_count(), 2, "only served listings");

    let cloud = start(SimulatorConfig {
        faults: vec![Fault::status_json(503)],
        ..tests_cloud(10)
    })
    .await;
    // The gateway's probe for a Data Center site.
    let probe = get(&cloud, &format!("/wiki{EVENTS}?limit=1")).await;
    assert_eq!(probe.status, 404);
    assert_eq!(get(&cloud, &format!("/wiki{RETENTION}")).await.status, 200);
    assert_eq!(get(&cloud, "/wiki/rest/api/audit/since").await.status, 503);
    assert_eq!(cloud.request_count_of(AuditEndpoint::Events), 1);
    assert_eq!(cloud.request_count(), 1);
    let dc_probe = get(&sim, &format!("{EVENTS}?limit=1")).await;
    assert_eq!(dc_probe.status, 200);
}

#[tokio::test]
async fn retention_is_configurable_and_serves_every_unit() {
    let sim = start(tests_cloud(1)).await;
    let target = format!("/wiki{RETENTION}");
    let reply = get(&sim, &target).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(reply.json(), json!({"number": 3, "units": "MONTHS"}));
    for units in RetentionUnit::ALL {
        sim.set_retention(Retention { number: 7, units });
        let body = get(&sim, &target).await.json();
        assert_eq!(body, json!({"number": 7, "units": units.name()}));
    }
    let sim = start(SimulatorConfig {
        retention: "2:YEARS".parse().unwrap(),
        required_authorization: Some("Basic eDp5".to_owned()),
        ..tests_cloud(1)
    })
    .await;
    assert_eq!(get(&sim, &target).await.status, 401);
    let mut client = Client::connect(&sim).await;
    let reply = client
        .get(&target, &[("authorization", "Basic eDp5")])
        .await
        .unwrap();
    assert_eq!(reply.json(), json!({"number": 2, "units": "YEARS"}));
}

#[tokio::test]
async fn rate_limits_speak_data_centers_headers() {
    let sim = start(SimulatorConfig {
        faults: vec![
            "429:retry-after=2".parse().unwrap(),
            "429".parse().unwrap(),
            "near-limit=1s".parse().unwrap(),
        ],
        ..dc(10)
    })
    .await;
    let limited = get(&sim, EVENTS).await;
    assert_eq!(limited.status, 429);
    for (name, value) in [
        ("x-ratelimit-limit", "100"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-interval-seconds", "1"),
        ("x-ratelimit-fillrate", "10"),
        ("retry-after", "2"),
    ] {
        assert_eq!(limited.header(name), Some(value), "{name}");
    }
    for cloud_only in ["x-ratelimit-nearlimit", "x-ratelimit-reset"] {
        assert_eq!(limited.header(cloud_only), None);
    }
    assert_eq!(get(&sim, EVENTS).await.header("retry-after"), Some("1"));
    let near = get(&sim, EVENTS).await;
    assert_eq!(near.status, 200);
    assert_eq!(near.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(near.header("x-ratelimit-nearlimit"), None);
}

#[tokio::test]
async fn concurrency_refusals_and_cut_bodies_apply_to_data_center() {
    let sim = start(SimulatorConfig {
        faults: vec![Fault::Cut, Fault::WrongShape],
        ..dc(50)
    })
    .await;
    let mut client = Client::connect(&sim).await;
    let cut = client.get(EVENTS, &[]).await.unwrap();
    assert_eq!(cut.status, 200);
    assert_eq!(cut.body.len(), cut.content_length() / 2);
    assert!(serde_json::from_slice::<Value>(&cut.body).is_err());
    let wrong = get(&sim, EVENTS).await;
    assert_eq!(wrong.json(), json!({"entities": 5}));

    let sim = start(SimulatorConfig {
        concurrency: Some(Concurrency {
            allowed: 1,
            near: 1,
        }),
        latency: Duration::from_millis(100),
        ..dc(10)
    })
    .await;
    let (a, b) = tokio::join!(get(&sim, EVENTS), async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        get(&sim, EVENTS).await
    });
    assert_eq!(a.status, 200);
    assert_eq!(b.status, 429);
    assert_eq!(b.header("x-ratelimit-fillrate"), Some("10"));
    assert_eq!(sim.over_limit().0, 1);
    assert_eq!(sim.max_in_flight(), 2);
}

/// A simulator whose clock, hence its newest initial record, is at `millisecond` of a second
/// (tried a few times, as the host's clock may tick while it starts).
async fn start_at_millisecond(config: SimulatorConfig, millisecond: i64) -> SimulatorHandle {
    for _ in 0..20 {
        let offset = (millisecond - state::now_ms()).rem_euclid(1000);
        let sim = start(SimulatorConfig {
            clock_offset: offset,
            ..config.clone()
        })
        .await;
        let newest = sim.expected_records(i64::MIN, i64::MAX).last().map(|r| r.0);
        if newest.is_some_and(|ms| ms.rem_euclid(1000) == millisecond) {
            return sim;
        }
    }
    panic!("could not start a simulator at millisecond {millisecond}");
}

#[tokio::test]
async fn events_come_from_the_cloud_log_and_show_every_shape() {
    // Initial records are RECORD_SPACING_MS apart from the start time, so they share its
    // millisecond: start one site on a whole second, one at .120.
    let on_the_second = start_at_millisecond(dc(10), 0).await;
    let body = events(&on_the_second, "").await;
    for event in body["entities"].as_array().unwrap() {
        let stamp = event["timestamp"].as_str().unwrap();
        assert!(
            stamp.len() == 20 && !stamp.contains('.'),
            "no fraction: {stamp}"
        );
    }
    let sim = start_at_millisecond(dc(5000), 120).await;
    let body = events(&sim, "limit=5000").await;
    assert!(last_page(&body));
    let entities = body["entities"].as_array().unwrap();
    assert_eq!(
        sorted(dated(&body)),
        sim.expected_records(i64::MIN, i64::MAX)
    );
    let seen = |what: &str, test: &dyn Fn(&Value) -> bool| {
        assert!(entities.iter().any(test), "no event with {what}");
    };
    let absent = |value: &Value, key: &str| value.get(key).is_none();
    seen("timestamp with milliseconds", &|e| {
        let stamp = e["timestamp"].as_str().unwrap();
        stamp.len() == 24 && stamp.ends_with(".120Z")
    });
    seen("author with id and uri", &|e| {
        e["author"]["uri"].is_string()
    });
    seen("author with id, no uri", &|e| {
        e["author"]["id"].is_string() && absent(&e["author"], "uri")
    });
    seen("author with no id", &|e| absent(&e["author"], "id"));
    seen("no affected object", &|e| e["affectedObjects"] == json!([]));
    seen("several affected objects", &|e| {
        e["affectedObjects"].as_array().unwrap().len() >= 2
    });
    seen("affected object with id and uri", &|e| {
        e["affectedObjects"][0]["uri"].is_string()
    });
    seen("affected object with id only", &|e| {
        e["affectedObjects"][0]["id"].is_string() && absent(&e["affectedObjects"][0], "uri")
    });
    seen("affected object with neither", &|e| {
        e["affectedObjects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| absent(o, "id") && absent(o, "uri"))
    });
    seen("no changed value", &|e| e["changedValues"] == json!([]));
    for (from, to) in [(true, true), (true, false), (false, true), (false, false)] {
        seen("changed value shape", &|e| {
            e["changedValues"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v.get("from").is_some() == from && v.get("to").is_some() == to)
        });
    }
    seen("no source", &|e| absent(e, "source"));
    seen("source", &|e| e["source"].is_string());
    seen("no node", &|e| absent(e, "node"));
    seen("node", &|e| e["node"].is_string());
    for method in ["Browser", "System", "REST"] {
        seen(method, &|e| e["method"] == method);
    }
    seen("no extra attribute", &|e| e["extraAttributes"] == json!([]));
    seen("extra attribute without value", &|e| {
        e["extraAttributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| absent(a, "value"))
    });
    seen("three extra attributes", &|e| {
        e["extraAttributes"].as_array().unwrap().len() == 3
    });
    for e in entities {
        assert_eq!(e["author"]["avatarUri"], "");
        assert_eq!(e["system"], sim.base_url());
        assert_eq!(e["method"] == "System", absent(e, "source"));
        let names: Vec<&str> = e["extraAttributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert!(names.is_sorted(), "{names:?}");
        let kind = e["type"].as_object().unwrap();
        assert_eq!(kind.len(), 4, "category, action and their keys only");
        for id in [&e["author"]["id"], &e["affectedObjects"][0]["id"]] {
            assert!(id.is_null() || id.is_string(), "ids are strings");
        }
    }
    let cloud = start(tests_cloud(5000)).await;
    assert_eq!(
        cloud.expected_records(i64::MIN, i64::MAX).len(),
        entities.len()
    );
}

#[test]
fn flavor_and_retention_flags_parse() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: cli::SimulateArgs,
    }
    let parse = |args: &[&str]| {
        let cli = <Cli as clap::Parser>::try_parse_from(
            std::iter::once("sim").chain(args.iter().copied()),
        )
        .map_err(|e| e.to_string())?;
        cli.args.to_config()
    };
    let plain = parse(&[]).unwrap();
    assert_eq!(
        (plain.flavor, plain.retention),
        (Flavor::Cloud, Retention::default())
    );
    let config = parse(&[
        "--flavor",
        "data-center",
        "--retention",
        "2:YEARS",
        "--personal-access-token",
        "pat",
    ])
    .unwrap();
    assert_eq!(config.flavor, Flavor::DataCenter);
    assert_eq!(
        config.retention,
        Retention {
            number: 2,
            units: RetentionUnit::Years
        }
    );
    assert_eq!(config.personal_access_token.as_deref(), Some("pat"));
    assert!(parse(&["--flavor", "server"]).is_err());
    assert!(parse(&["--retention", "2:FORTNIGHTS"]).is_err());
}
