//! `GetSince` end to end: lossless records, the exact upstream query, validation.

use audit_gateway::pb::{self, convert::ToJson};
use confluence_sim::SimulatorConfig;
use prost_types::value::Kind;
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::common::{
    Canned, StubUpstream, atlassian_sample, sim_and_gateway, spawn_gateway, test_config,
};

#[tokio::test]
async fn atlassian_sample_arrives_field_for_field() {
    let stub = StubUpstream::start(Canned::json(atlassian_sample())).await;
    let mut gw = spawn_gateway(test_config(&stub.base_url())).await;
    let page = gw
        .client
        .get_since(pb::GetSinceRequest::default())
        .await
        .expect("page")
        .into_inner();

    assert_eq!(
        (page.start, page.limit, page.size),
        (-42437008, 95954729, -54456786)
    );
    assert!(page.links.is_empty());
    assert_eq!(page.results.len(), 2);
    let r = &page.results[0];
    let author = r.author.as_ref().expect("author");
    assert_eq!(author.r#type, "user");
    assert_eq!(author.display_name, "eu qui amet");
    assert_eq!(
        author.operations.as_ref().and_then(|v| v.kind.clone()),
        Some(Kind::NullValue(0)),
        "null operations stay null, not absent"
    );
    assert_eq!(author.username.as_deref(), Some("ut"));
    assert_eq!(author.user_key.as_deref(), Some("amet ut eu Ut"));
    assert_eq!(author.account_id, None);
    assert_eq!(r.remote_address, "irure sed commodo tempor");
    assert_eq!(r.creation_date, -28489517);
    let ts = r.creation_time.expect("timestamp");
    assert_eq!((ts.seconds, ts.nanos), (-28490, 483_000_000));
    assert_eq!(r.summary, "reprehenderit occaecat");
    assert_eq!(r.description, "sed in occaecat");
    assert_eq!(r.category, "magna qui Lorem");
    assert!(!r.sys_admin);
    assert_eq!(r.super_admin, None);
    let affected = r.affected_object.as_ref().expect("affected object");
    assert_eq!(
        (affected.name.as_str(), affected.object_type.as_str()),
        ("Ut est ad eu anim", "tempor Excepteur")
    );
    assert_eq!(r.changed_values.len(), 2);
    assert_eq!(r.changed_values[1].new_value, "occaecat ad");
    assert_eq!(
        r.associated_objects[0].object_type,
        "aute sint quis eiusmod qui"
    );
    assert!(page.results[1].sys_admin);
    assert_eq!(page.results[1].associated_objects[0].object_type, "");
    assert!(r.unknown_fields.is_none() && author.unknown_fields.is_none());

    // And printed back as JSON, it is Atlassian's body exactly.
    let want: serde_json::Value = serde_json::from_slice(atlassian_sample()).expect("json");
    assert_eq!(page.to_json(), want);
}

#[tokio::test]
async fn upstream_sees_the_query_a_careful_curl_sends() {
    let stub = StubUpstream::start(Canned::json(atlassian_sample())).await;
    let mut gw = spawn_gateway(test_config(&stub.base_url())).await;
    gw.client
        .get_since(pb::GetSinceRequest::default())
        .await
        .expect("defaults");
    gw.client
        .get_since(pb::GetSinceRequest {
            number: Some(2),
            units: pb::TimeUnit::HalfDays as i32,
            search_string: Some("a&b#c+d%e f/é=?".into()),
            start: Some(5),
            limit: Some(10),
        })
        .await
        .expect("explicit");
    assert_eq!(
        stub.seen(),
        vec![
            "/wiki/rest/api/audit/since?number=3&units=MONTHS&start=0&limit=1000".to_owned(),
            "/wiki/rest/api/audit/since?number=2&units=HALF_DAYS&searchString=a%26b%23c%2Bd%25e%20f%2F%C3%A9%3D%3F&start=5&limit=10".to_owned(),
        ]
    );
}

#[tokio::test]
async fn every_simulated_variant_survives_the_round_trip() {
    let (sim, mut gw) = sim_and_gateway(
        SimulatorConfig {
            records: 300,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let page = gw
        .client
        .get_since(pb::GetSinceRequest {
            limit: Some(300),
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(page.results.len(), 300);
    let url = format!("{}/rest/api/audit/since?limit=300", sim.base_url());
    let body = reqwest::get(url)
        .await
        .expect("simulator reachable")
        .bytes()
        .await
        .expect("body");
    let direct: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(page.to_json()["results"], direct["results"]);
    // The simulator's mix holds what the tolerant conversion must keep.
    let authors: Vec<_> = page
        .results
        .iter()
        .filter_map(|r| r.author.as_ref())
        .collect();
    assert!(authors.iter().any(|a| matches!(
        a.operations.as_ref().and_then(|o| o.kind.as_ref()),
        Some(Kind::ListValue(_))
    )));
    assert!(authors.iter().any(|a| a.is_guest.is_some()));
    assert!(page.results.iter().any(|r| r.unknown_fields.is_some()));
}

#[tokio::test]
async fn invalid_requests_name_the_field_and_never_reach_upstream() {
    let (sim, mut gw) = sim_and_gateway(SimulatorConfig::default(), |_| {}).await;
    let base = pb::GetSinceRequest::default;
    let cases = [
        (
            pb::GetSinceRequest {
                number: Some(-1),
                ..base()
            },
            "number",
        ),
        (
            pb::GetSinceRequest {
                units: 99,
                ..base()
            },
            "units",
        ),
        (
            pb::GetSinceRequest {
                start: Some(-5),
                ..base()
            },
            "start",
        ),
        (
            pb::GetSinceRequest {
                limit: Some(1001),
                ..base()
            },
            "limit",
        ),
        (
            pb::GetSinceRequest {
                limit: Some(-1),
                ..base()
            },
            "limit",
        ),
        (
            pb::GetSinceRequest {
                search_string: Some("x".repeat(5000)),
                ..base()
            },
            "search_string",
        ),
    ];
    for (req, field) in cases {
        let status = gw.client.get_since(req).await.expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let details = status.get_error_details();
        let violation = &details
            .bad_request()
            .expect("BadRequest detail")
            .field_violations[0];
        assert_eq!(violation.field, field);
        assert!(status.message().contains(field), "{}", status.message());
    }
    assert_eq!(
        sim.request_count(),
        0,
        "no invalid request reached Confluence"
    );
}

#[tokio::test]
async fn compressed_calls_are_answered() {
    let stub = StubUpstream::start(Canned::json(atlassian_sample())).await;
    let gw = spawn_gateway(test_config(&stub.base_url())).await;
    for enc in [
        tonic::codec::CompressionEncoding::Gzip,
        tonic::codec::CompressionEncoding::Zstd,
    ] {
        let mut client = pb::audit_service_client::AuditServiceClient::new(gw.channel().await)
            .send_compressed(enc)
            .accept_compressed(enc);
        let page = client
            .get_since(Request::new(pb::GetSinceRequest::default()))
            .await
            .expect("compressed call")
            .into_inner();
        assert_eq!(page.results.len(), 2, "{enc:?}");
    }
}
