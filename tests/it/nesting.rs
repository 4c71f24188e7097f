//! Records holding JSON nested far deeper than protobuf's recursion limit (100 levels of
//! message nesting, which prost, the client here, enforces): through GetSince, StreamSince
//! and Follow they decode, and print back as the JSON the simulator sent.

use std::time::Duration;

use audit_gateway::pb::{self, convert::ToJson};
use confluence_sim::SimulatorConfig;
use serde_json::Value;

use crate::common::sim_and_gateway;

/// JSON levels of the simulator's `nested` value: 60 levels cost 150 levels of message
/// nesting as plain `google.protobuf.Value`s.
const DEPTH: usize = 60;
const RECORDS: usize = 40;

fn config() -> SimulatorConfig {
    SimulatorConfig {
        records: RECORDS,
        nested_depth: Some(DEPTH),
        ..SimulatorConfig::default()
    }
}

/// Levels of objects and arrays in `value`, and the string innermost.
fn depth_and_bottom(value: &Value) -> (usize, Option<&str>) {
    let inner = match value {
        Value::Object(map) => map.values().next_back(),
        Value::Array(items) => items.last(),
        _ => return (0, value.as_str()),
    };
    let (depth, bottom) = inner.map_or((0, None), depth_and_bottom);
    (depth + 1, bottom)
}

/// Checks that `record` carried part of its deep values as text and prints back whole:
/// `nested` (and, for odd sequence numbers, `author.operations`) `DEPTH` levels deep
/// down to `"bottom #<seq>"`. Returns the record's sequence number.
fn check(record: &pb::AuditRecord) -> u64 {
    let seq: u64 = record
        .summary
        .rsplit_once('#')
        .and_then(|(_, n)| n.parse().ok())
        .expect("a sequence number");
    assert!(
        record
            .json_text_paths
            .iter()
            .any(|p| p.starts_with("/nested/")),
        "{:?}",
        record.json_text_paths
    );
    let json = record.to_json();
    let bottom = format!("bottom #{seq}");
    assert_eq!(
        depth_and_bottom(&json["nested"]),
        (DEPTH, Some(bottom.as_str()))
    );
    if seq % 2 == 1 {
        assert_eq!(json["author"]["operations"], json["nested"]);
        assert!(
            record
                .json_text_paths
                .iter()
                .any(|p| p.starts_with("/author/operations/"))
        );
    }
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_records_decode_through_every_method() {
    let (_sim, gw) = sim_and_gateway(config(), |_| {}).await;
    let mut client = gw.client.clone();

    let page = client
        .get_since(pb::GetSinceRequest::default())
        .await
        .expect("GetSince decodes")
        .into_inner();
    assert_eq!(page.results.len(), RECORDS);
    let mut want: Vec<u64> = page.results.iter().map(check).collect();
    want.sort_unstable();

    let mut stream = client
        .stream_since(pb::StreamSinceRequest {
            page_size: Some(7),
            ..Default::default()
        })
        .await
        .expect("StreamSince starts")
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(m) = stream.message().await.expect("StreamSince decodes") {
        streamed.extend(m.records.iter().map(check));
    }
    streamed.sort_unstable();
    assert_eq!(streamed, want);

    let mut follow = client
        .follow(pb::FollowRequest {
            from: Some(pb::follow_request::From::Since(
                prost_types::Timestamp::default(),
            )),
            poll_interval: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            lag: Some(prost_types::Duration::default()),
            max_records: Some(RECORDS as i64),
            ..Default::default()
        })
        .await
        .expect("Follow starts")
        .into_inner();
    let mut followed = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(20), follow.message())
        .await
        .expect("Follow ends within 20 s")
        .expect("Follow decodes")
    {
        followed.extend(m.records.iter().map(check));
    }
    followed.sort_unstable();
    assert_eq!(followed, want);
}
