//! Generates the protobuf messages and the gRPC client with `tonic-prost-build`, from a
//! descriptor set compiled by `protox` (so no system `protoc` is needed), and the gRPC
//! server by hand-built service description so every method answers with messages
//! assembled from pre-encoded cached pages instead of decoding and re-encoding them.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO: &str = "proto/confluence/audit/v1/audit.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let fds = protox::compile([PROTO], ["proto"])?;
    // Served by gRPC reflection; holds the imported well-known types too.
    fs::write(out_dir.join("audit_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;

    let service = tonic_build::manual::Service::builder()
        .name("AuditService")
        .package("confluence.audit.v1")
        .comment("Reads the Confluence audit log (server side; messages come from prost).")
        .method(
            tonic_build::manual::Method::builder()
                .name("get_since")
                .route_name("GetSince")
                .comment("Answers one upstream page, already encoded.")
                .input_type("super::GetSinceRequest")
                .output_type("crate::pb::EncodedMessage")
                .codec_path("tonic_prost::ProstCodec")
                .build(),
        )
        .method(
            tonic_build::manual::Method::builder()
                .name("stream_since")
                .route_name("StreamSince")
                .comment("Streams every record of a time window, messages already encoded.")
                .input_type("super::StreamSinceRequest")
                .output_type("crate::pb::EncodedMessage")
                .codec_path("tonic_prost::ProstCodec")
                .server_streaming()
                .build(),
        )
        .method(
            tonic_build::manual::Method::builder()
                .name("follow")
                .route_name("Follow")
                .comment("Follows the log from a starting point, messages already encoded.")
                .input_type("super::FollowRequest")
                .output_type("crate::pb::EncodedMessage")
                .codec_path("tonic_prost::ProstCodec")
                .server_streaming()
                .build(),
        )
        .method(
            tonic_build::manual::Method::builder()
                .name("get_retention")
                .route_name("GetRetention")
                .comment("How long Confluence keeps its audit log.")
                .input_type("super::GetRetentionRequest")
                .output_type("super::GetRetentionResponse")
                .codec_path("tonic_prost::ProstCodec")
                .build(),
        )
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_server(true)
        .build_transport(true)
        .compile(&[service]);
    Ok(())
}
