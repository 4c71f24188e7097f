//! What a service mesh or a proxy sees: connections aged out with GOAWAY, gRPC-Web on the
//! same port, oversized requests refused before decoding, and long calls that end with
//! UNAVAILABLE at shutdown instead of being cut.

use std::time::Duration;

use audit_gateway::pb;
use bytes::{Buf, BufMut, BytesMut};
use confluence_sim::SimulatorConfig;
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::sim_and_gateway;

/// HTTP/2 frame type of GOAWAY.
const GOAWAY: u8 = 0x7;

/// Reads HTTP/2 frames from `conn` until one of type `kind` arrives; false at EOF.
async fn frame_of(conn: &mut TcpStream, kind: u8) -> bool {
    let mut head = [0u8; 9];
    loop {
        if conn.read_exact(&mut head).await.is_err() {
            return false;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if conn.read_exact(&mut payload).await.is_err() {
            return false;
        }
        if head[3] == kind {
            return true;
        }
    }
}

#[tokio::test]
async fn a_connection_older_than_max_connection_age_gets_goaway() {
    let (_sim, gw) = sim_and_gateway(SimulatorConfig::default(), |c| {
        c.server.max_connection_age = Some(Duration::from_millis(300));
    })
    .await;
    let mut conn = TcpStream::connect(gw.addr).await.expect("connect");
    // The client preface and an empty SETTINGS frame: an HTTP/2 connection, idle.
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    conn.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    let goaway = tokio::time::timeout(Duration::from_secs(10), frame_of(&mut conn, GOAWAY))
        .await
        .expect("a GOAWAY within 10 s");
    assert!(goaway, "the gateway sent GOAWAY to the aged connection");
}

#[tokio::test]
async fn without_max_connection_age_an_idle_connection_gets_no_goaway() {
    let (_sim, gw) = sim_and_gateway(SimulatorConfig::default(), |_| {}).await;
    let mut conn = TcpStream::connect(gw.addr).await.expect("connect");
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    conn.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    let waited = tokio::time::timeout(Duration::from_secs(1), frame_of(&mut conn, GOAWAY)).await;
    assert!(waited.is_err(), "no GOAWAY without --max-connection-age");
}

#[tokio::test]
async fn grpc_web_answers_on_the_same_port() {
    let (_sim, gw) = sim_and_gateway(SimulatorConfig::default(), |_| {}).await;
    let request = pb::GetSinceRequest {
        limit: Some(3),
        ..Default::default()
    }
    .encode_to_vec();
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(request.len() as u32);
    body.put_slice(&request);
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/confluence.audit.v1.AuditService/GetSince",
            gw.addr
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(body.freeze())
        .send()
        .await
        .expect("an HTTP/1.1 answer");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web+proto"
    );
    let mut bytes = response.bytes().await.expect("body");
    // A data frame with the page, then a trailers frame saying grpc-status 0.
    assert_eq!(bytes.get_u8(), 0, "a data frame first");
    let len = bytes.get_u32() as usize;
    let page = pb::GetSinceResponse::decode(bytes.split_to(len)).expect("a GetSinceResponse");
    assert_eq!(page.results.len(), 3);
    assert_eq!(bytes.get_u8(), 0x80, "then trailers");
    let len = bytes.get_u32() as usize;
    let trailers = String::from_utf8(bytes.split_to(len).to_vec()).expect("text");
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}

#[tokio::test]
async fn a_request_over_max_request_bytes_is_refused_before_it_is_decoded() {
    let (sim, gw) = sim_and_gateway(SimulatorConfig::default(), |c| {
        c.server.max_request_bytes = 64 << 10;
    })
    .await;
    let mut client = gw.client.clone();
    let huge = pb::GetSinceRequest {
        search_string: Some("x".repeat(100 << 10)),
        ..Default::default()
    };
    let status = client.get_since(huge).await.expect_err("refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(sim.request_count(), 0, "Confluence was not called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_at_shutdown_ends_with_unavailable_after_a_whole_message() {
    let (_sim, mut gw) = sim_and_gateway(
        SimulatorConfig {
            records: 20_000,
            latency: Duration::from_millis(50),
            ..Default::default()
        },
        |c| c.stream_prefetch = 1,
    )
    .await;
    let mut client = gw.client.clone();
    let mut stream = client
        .stream_since(pb::StreamSinceRequest {
            page_size: Some(100),
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    let first = stream.message().await.expect("ok").expect("a message");
    assert_eq!(first.records.len(), 100, "page_size records a message");
    let stopping = gw.begin_shutdown();
    let mut records = first.records.len();
    let end = loop {
        match stream.message().await {
            Ok(Some(m)) => records += m.records.len(),
            Ok(None) => panic!("the window cannot have ended: {records} of 20000 records"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    let info = end.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "SHUTTING_DOWN");
    assert!(records < 20_000);
    stopping.await.expect("joined").expect("clean stop");
}
