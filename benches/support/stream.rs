//! `StreamSince` read by a counting client, shared by `stream` and `suite`.

use std::time::Duration;

use audit_gateway::pb;
use http::uri::PathAndQuery;
use tonic::{client::Grpc, transport::Channel};

/// `StreamSinceResponse` with its records left encoded: the bench counts records rather
/// than decode them, so the machine's two cores go to the gateway being measured (a real
/// consumer decodes on its own machine).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Counted {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub records: Vec<bytes::Bytes>,
    #[prost(string, tag = "2")]
    pub resume_token: String,
}

/// Streams the whole window in pages of 1000, pausing `pause` after each message;
/// returns (records, messages).
pub async fn stream(client: &mut Grpc<Channel>, pause: Duration) -> (usize, usize) {
    stream_pages(client, 1000, pause).await
}

/// Streams the whole window in pages of `page_size`, pausing `pause` after each message;
/// returns (records, messages).
pub async fn stream_pages(
    client: &mut Grpc<Channel>,
    page_size: i32,
    pause: Duration,
) -> (usize, usize) {
    let req = pb::StreamSinceRequest {
        page_size: Some(page_size),
        ..Default::default()
    };
    client.ready().await.expect("ready");
    let path = PathAndQuery::from_static("/confluence.audit.v1.AuditService/StreamSince");
    let codec = tonic_prost::ProstCodec::<pb::StreamSinceRequest, Counted>::default();
    let mut s = client
        .server_streaming(tonic::Request::new(req), path, codec)
        .await
        .expect("stream")
        .into_inner();
    let (mut records, mut messages) = (0, 0);
    while let Some(m) = s.message().await.expect("stream ok") {
        records += m.records.len();
        messages += 1;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    (records, messages)
}
