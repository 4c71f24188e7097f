//! Confluence Data Center behind the same service: the simulator's Data Center dialect
//! (`/rest/auditing/1.0/events`) answers every RPC, each record mapped as
//! docs/data-center.md says with every unmapped field kept, exactly once under the same
//! adversities as Cloud (arrivals, deletions, capped and cut pages, faults), and
//! `--confluence-flavor auto` telling the two apart.

use std::time::Duration;

use audit_gateway::{ConfluenceFlavor, GatewayConfig, UpstreamAuth, pb, pb::convert::ToJson};
use confluence_sim::{AuditEndpoint, Flavor, Live, SimulatorConfig, SimulatorHandle};
use serde_json::Value;
use tonic::Code;

use crate::common::{TestGateway, assert_exactly_once, live_log, now_ms, seq, sim_and_gateway};

/// `config` served as a Data Center site at the server's root (no `/wiki`).
fn data_center(config: SimulatorConfig) -> SimulatorConfig {
    SimulatorConfig {
        flavor: Flavor::DataCenter,
        base_path: String::new(),
        ..config
    }
}

/// A Data Center simulator and a gateway reading it as Data Center.
async fn dc_gateway(
    config: SimulatorConfig,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> (SimulatorHandle, TestGateway) {
    sim_and_gateway(data_center(config), |c| {
        c.upstream.flavor = ConfluenceFlavor::DataCenter;
        tweak(c);
    })
    .await
}

/// The simulator's own page of events, newest first, as its JSON.
async fn raw_events(sim: &SimulatorHandle, limit: usize) -> Vec<Value> {
    let url = format!("{}/rest/auditing/1.0/events?limit={limit}", sim.base_url());
    let bytes = reqwest::get(url)
        .await
        .expect("the simulator answers")
        .bytes()
        .await
        .expect("a body");
    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
    body["entities"].as_array().expect("entities").clone()
}

#[tokio::test]
async fn get_since_maps_every_event_and_keeps_every_unmapped_field() {
    let (sim, gw) = dc_gateway(
        SimulatorConfig {
            records: 420,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let page = gw
        .client
        .clone()
        .get_since(pb::GetSinceRequest {
            limit: Some(420),
            ..Default::default()
        })
        .await
        .expect("a page")
        .into_inner();
    let events = raw_events(&sim, 420).await;
    assert_eq!(page.results.len(), events.len());
    assert_eq!(page.results.len(), 420, "the whole log");
    assert!(
        page.unknown_fields
            .as_ref()
            .is_some_and(|u| u.fields.contains_key("pagingInfo")),
        "pagingInfo kept"
    );
    assert_eq!(
        sim.request_count_of(AuditEndpoint::Since),
        0,
        "Cloud's API never asked"
    );
    for (r, e) in page.results.iter().zip(&events) {
        check_mapping(r, e);
        // Nothing lost: the record prints back as the very event Data Center sent.
        assert_eq!(r.to_json(), *e);
    }
}

/// One record against the event it came from, field by field (docs/data-center.md).
fn check_mapping(r: &pb::AuditRecord, e: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    assert_eq!(r.dialect, pb::Dialect::DataCenter as i32);
    assert_eq!(Some(r.creation_date), confluence_sim::record_date_ms(e));
    let t = r.creation_time.as_ref().expect("creation_time");
    assert_eq!(
        t.seconds * 1000 + i64::from(t.nanos / 1_000_000),
        r.creation_date
    );
    assert_eq!(r.summary, s(&e["type"]["action"]));
    assert_eq!(r.category, s(&e["type"]["category"]));
    assert_eq!(r.remote_address, s(&e["source"]));
    let author = r.author.as_ref().expect("author");
    assert_eq!(author.display_name, s(&e["author"]["name"]));
    assert_eq!(author.r#type, s(&e["author"]["type"]));
    assert_eq!(author.user_key.as_deref(), e["author"]["id"].as_str());
    let objects = e["affectedObjects"].as_array().cloned().unwrap_or_default();
    let typed: Vec<&pb::AffectedObject> = r
        .affected_object
        .iter()
        .chain(&r.associated_objects)
        .collect();
    assert_eq!(typed.len(), objects.len(), "{e}");
    for (o, want) in typed.iter().zip(&objects) {
        assert_eq!(o.name, s(&want["name"]));
        assert_eq!(o.object_type, s(&want["type"]));
    }
    let changed = e["changedValues"].as_array().cloned().unwrap_or_default();
    assert_eq!(r.changed_values.len(), changed.len());
    for (c, want) in r.changed_values.iter().zip(&changed) {
        assert_eq!(c.name, s(&want["key"]));
        assert_eq!(c.old_value, s(&want["from"]));
        assert_eq!(c.new_value, s(&want["to"]));
    }
    // What has no typed home is in unknown_fields, under its Data Center name.
    let unknown = r.unknown_fields.as_ref().expect("unknown fields");
    for key in ["system", "node", "method", "extraAttributes"] {
        assert_eq!(
            e.get(key).is_some(),
            unknown.fields.contains_key(key),
            "{key} in {e}"
        );
    }
    let leftover = match unknown.fields.get("type").and_then(|v| v.kind.as_ref()) {
        Some(prost_types::value::Kind::StructValue(t)) => t,
        other => panic!("type's i18n keys kept as an object: {other:?}"),
    };
    for key in ["categoryI18nKey", "actionI18nKey"] {
        assert!(
            leftover.fields.contains_key(key),
            "{key} kept: {leftover:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_arrivals_deletions_and_faults_delivers_every_surviving_event_once() {
    let (sim, gw) = dc_gateway(
        SimulatorConfig {
            records: 3000,
            ties: 5,
            inserts_per_request: 3,
            deletes_per_request: 2,
            max_limit: Some(40),
            cut_rate: 0.1,
            fault_rate: 0.05,
            ..Default::default()
        },
        |c| c.upstream.retries = 6,
    )
    .await;
    let mut client = gw.client.clone();
    let mut delivered: Vec<pb::AuditRecord> = Vec::new();
    let mut token = String::new();
    for calls in 1.. {
        assert!(calls < 200, "the window did not end");
        let req = pb::StreamSinceRequest {
            max_records: Some(500),
            resume_token: token.clone(),
            page_size: Some(100),
            ..Default::default()
        };
        let mut s = client.stream_since(req).await.expect("opens").into_inner();
        let mut got = 0;
        let end = loop {
            match s.message().await {
                Ok(Some(m)) => {
                    got += m.records.len();
                    token = m.resume_token.clone();
                    delivered.extend(m.records);
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        match end {
            Some(status) => assert_ne!(status.code(), Code::InvalidArgument, "{status:?}"),
            None if got == 500 => {}
            None => break,
        }
    }
    assert!(
        delivered
            .windows(2)
            .all(|p| p[0].creation_date >= p[1].creation_date),
        "newest first"
    );
    let mut got: Vec<u64> = delivered.iter().map(seq).collect();
    got.sort_unstable();
    assert!(
        got.windows(2).all(|w| w[0] != w[1]),
        "an event delivered twice"
    );
    let top = seq(&delivered[0]);
    let surviving: Vec<u64> = sim
        .expected_records(i64::MIN, i64::MAX)
        .into_iter()
        .map(|(_, seq)| seq)
        .filter(|&s| s <= top)
        .collect();
    assert!(surviving.len() > 1000, "enough of the window survived");
    let missing = surviving
        .iter()
        .filter(|s| got.binary_search(s).is_err())
        .count();
    assert_eq!(missing, 0, "surviving events missing");
    assert!(sim.request_count_of(AuditEndpoint::Events) > 75);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_and_resumed_over_a_live_log_gets_every_event_once_in_order() {
    let (sim, gw) = dc_gateway(
        SimulatorConfig {
            duplicate_every: 0,
            ..live_log(13)
        },
        |_| {},
    )
    .await;
    let lag = Duration::from_millis(700);
    let dur = |d: Duration| prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    };
    let stop_at = now_ms() + 3_500;
    sim.stop_live_at(stop_at);
    let settled_by = stop_at + lag.as_millis() as i64 + 2_500;
    let mut client = gw.client.clone();
    let mut rng = fastrand::Rng::with_seed(3);
    let (mut got, mut checkpoint): (Vec<(i64, u64)>, Option<String>) = (Vec::new(), None);
    let mut cuts = 0;
    'follow: loop {
        let from = Some(match &checkpoint {
            Some(c) => pb::follow_request::From::Checkpoint(c.clone()),
            None => pb::follow_request::From::Since(prost_types::Timestamp::default()),
        });
        let req = pb::FollowRequest {
            from,
            poll_interval: Some(dur(Duration::from_secs(1))),
            lag: Some(dur(lag)),
            ..Default::default()
        };
        let mut s = client
            .follow(req)
            .await
            .expect("follow starts")
            .into_inner();
        for _ in 0..rng.usize(1..4) {
            let m = tokio::time::timeout(Duration::from_secs(20), s.message())
                .await
                .expect("a message within 20 s")
                .expect("no error")
                .expect("followers do not end by themselves");
            let heartbeat = m.records.is_empty();
            got.extend(m.records.iter().map(|r| (r.creation_date, seq(r))));
            checkpoint = Some(m.checkpoint);
            if heartbeat && now_ms() > settled_by {
                break 'follow;
            }
        }
        cuts += 1;
    }
    assert!(cuts >= 2, "cut and resumed ({cuts} times)");
    let want = sim.expected_records(0, stop_at);
    assert!(
        want.len() > 3000,
        "a backfill and live events ({})",
        want.len()
    );
    assert_exactly_once(&got, want);
    assert_eq!(
        sim.request_count_of(AuditEndpoint::Range),
        0,
        "Cloud's API never asked"
    );
}

#[tokio::test]
async fn auto_tells_data_center_from_cloud() {
    for flavor in [Flavor::Cloud, Flavor::DataCenter] {
        let config = SimulatorConfig {
            records: 30,
            flavor,
            ..Default::default()
        };
        let (sim, gw) =
            sim_and_gateway(config, |c| c.upstream.flavor = ConfluenceFlavor::Auto).await;
        let page = gw
            .client
            .clone()
            .get_since(pb::GetSinceRequest::default())
            .await
            .expect("a page")
            .into_inner();
        assert_eq!(page.results.len(), 30, "{flavor:?}");
        let dialect = match flavor {
            Flavor::Cloud => pb::Dialect::Cloud,
            Flavor::DataCenter => pb::Dialect::DataCenter,
        };
        assert!(
            page.results.iter().all(|r| r.dialect == dialect as i32),
            "{flavor:?}"
        );
        let (asked, other) = match flavor {
            Flavor::Cloud => (AuditEndpoint::Since, AuditEndpoint::Events),
            Flavor::DataCenter => (AuditEndpoint::Events, AuditEndpoint::Since),
        };
        assert!(sim.request_count_of(asked) >= 1, "{flavor:?}");
        // The probe is the one request the other dialect's endpoint may see.
        assert!(sim.request_count_of(other) <= 1, "{flavor:?}");
    }
}

#[tokio::test]
async fn a_search_longer_than_data_center_takes_is_refused_naming_the_field() {
    let (sim, gw) = dc_gateway(SimulatorConfig::default(), |_| {}).await;
    let long = "x".repeat(101);
    let status = gw
        .client
        .clone()
        .get_since(pb::GetSinceRequest {
            search_string: Some(long.clone()),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("search_string"),
        "{}",
        status.message()
    );
    let stream = gw
        .client
        .clone()
        .stream_since(pb::StreamSinceRequest {
            search_string: Some(long),
            ..Default::default()
        })
        .await;
    assert_eq!(stream.err().map(|s| s.code()), Some(Code::InvalidArgument));
    assert_eq!(sim.request_count(), 0, "refused before any request");
    // A hundred characters go through.
    gw.client
        .clone()
        .get_since(pb::GetSinceRequest {
            search_string: Some("x".repeat(100)),
            ..Default::default()
        })
        .await
        .expect("answered");
}

/// An absolute range read from Data Center: every event of it once, then OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_a_past_range_delivers_it_once_and_ends() {
    let (sim, gw) = dc_gateway(
        SimulatorConfig {
            records: 5000,
            ties: 3,
            live: Some(Live {
                per_second: 50.0,
                burst: 3,
            }),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let now = now_ms();
    let (from, until) = (now - 3 * 3_600_000, now - 600_000);
    let ts = |ms: i64| prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    };
    let mut s = gw
        .client
        .clone()
        .follow(pb::FollowRequest {
            from: Some(pb::follow_request::From::Since(ts(from))),
            until: Some(ts(until)),
            ..Default::default()
        })
        .await
        .expect("follow starts")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(30), s.message())
        .await
        .expect("progress")
        .expect("no error")
    {
        got.extend(m.records.iter().map(|r| (r.creation_date, seq(r))));
    }
    let want = sim.expected_records(from, until - 1);
    assert!(want.len() > 1000, "a range of events ({})", want.len());
    assert_exactly_once(&got, want);
}

/// A personal access token goes as `Bearer`; a wrong one runs as anonymous at Data
/// Center, which is refused 403: PERMISSION_DENIED, not a retry.
#[tokio::test]
async fn a_personal_access_token_reads_and_a_wrong_one_is_permission_denied() {
    for (token, ok) in [("pat-0123456789", true), ("pat-wrong", false)] {
        let (_sim, gw) = dc_gateway(
            SimulatorConfig {
                records: 10,
                personal_access_token: Some("pat-0123456789".into()),
                ..Default::default()
            },
            |c| c.auth = UpstreamAuth::Bearer(token.to_owned().into()),
        )
        .await;
        let answer = gw
            .client
            .clone()
            .get_since(pb::GetSinceRequest::default())
            .await;
        match (ok, answer) {
            (true, Ok(page)) => assert_eq!(page.into_inner().results.len(), 10),
            (false, Err(status)) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
            (_, other) => panic!("{token}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn get_retention_answers_the_sites_period() {
    let (_sim, gw) = sim_and_gateway(
        SimulatorConfig {
            retention: confluence_sim::Retention {
                number: 7,
                units: confluence_sim::RetentionUnit::Years,
            },
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let r = gw
        .client
        .clone()
        .get_retention(pb::GetRetentionRequest {})
        .await
        .expect("answered")
        .into_inner();
    assert_eq!((r.number, r.units), (7, pb::TimeUnit::Years as i32));
}
