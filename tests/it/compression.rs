//! `--compress-responses`: which encoding a caller that advertises gzip or zstd gets,
//! read from the response's `grpc-encoding` header through a real tonic client.

use audit_gateway::{GatewayConfig, ResponseCompression, pb};
use confluence_sim::SimulatorConfig;
use tonic::codec::CompressionEncoding;

use crate::common::sim_and_gateway;

/// The `grpc-encoding` of a `GetSince` answer to a client accepting `accept`, and the
/// records the answer held.
async fn encoding_of(
    gw: &crate::common::TestGateway,
    accept: CompressionEncoding,
) -> (Option<String>, usize) {
    let mut client = pb::audit_service_client::AuditServiceClient::new(gw.channel().await)
        .accept_compressed(accept);
    let answer = client
        .get_since(pb::GetSinceRequest {
            limit: Some(50),
            ..Default::default()
        })
        .await
        .expect("call");
    let encoding = answer
        .metadata()
        .get("grpc-encoding")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (encoding, answer.into_inner().results.len())
}

#[tokio::test]
async fn responses_are_compressed_only_as_configured() {
    // Off by default: a caller advertising gzip (as grpcio does) gets identity.
    assert_eq!(
        GatewayConfig::DEFAULT.server.compress_responses,
        ResponseCompression::None
    );
    for setting in [
        ResponseCompression::None,
        ResponseCompression::Gzip,
        ResponseCompression::Zstd,
        ResponseCompression::Both,
    ] {
        let (_sim, gw) = sim_and_gateway(SimulatorConfig::default(), |c| {
            c.server.compress_responses = setting;
        })
        .await;
        for (accept, name, on) in [
            (CompressionEncoding::Gzip, "gzip", setting.gzip()),
            (CompressionEncoding::Zstd, "zstd", setting.zstd()),
        ] {
            let (encoding, records) = encoding_of(&gw, accept).await;
            // gRPC lets a server answer identity whatever the caller accepts; tonic then
            // sends no grpc-encoding header at all.
            let expected = on.then(|| name.to_owned());
            assert_eq!(encoding, expected, "{setting}, client accepts {name}");
            assert_eq!(records, 50, "{setting}, client accepts {name}");
        }
        // Twice, so the second answer is a cache hit: cached pages are compressed too.
        let (encoding, _) = encoding_of(&gw, CompressionEncoding::Gzip).await;
        assert_eq!(encoding.is_some(), setting.gzip(), "{setting}, cache hit");
    }
}

#[test]
fn the_setting_parses_its_names() {
    for name in ["none", "gzip", "zstd", "both"] {
        let parsed: ResponseCompression = name.parse().expect("a known name");
        assert_eq!(parsed.to_string(), name);
    }
    assert!("brotli".parse::<ResponseCompression>().is_err());
}
