//! The cache-hit figure, printed (not asserted): `GetSince` requests/s when
//! every call is a page-cache hit, against a bare tonic server of the same service that
//! answers the same pre-encoded bytes and does nothing else. Both in this process, both
//! driven by the same closed loop of concurrent callers over loopback.
//!
//! Run: `cargo bench --bench cache_hit` (release build).

mod support;

use std::{
    net::SocketAddr,
    pin::Pin,
    time::{Duration, Instant},
};

use audit_gateway::pb::{
    self, EncodedMessage,
    audit_service_server::{AuditService, AuditServiceServer},
};
use bytes::Bytes;
use confluence_sim::SimulatorConfig;
use http::uri::PathAndQuery;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Answers every `GetSince` with the same encoded page: the reference.
struct Bare(Bytes);

#[tonic::async_trait]
impl AuditService for Bare {
    async fn get_since(
        &self,
        _: Request<pb::GetSinceRequest>,
    ) -> Result<Response<EncodedMessage>, Status> {
        Ok(Response::new(EncodedMessage(self.0.clone())))
    }

    type StreamSinceStream =
        Pin<Box<dyn Stream<Item = Result<EncodedMessage, Status>> + Send + 'static>>;

    async fn stream_since(
        &self,
        _: Request<pb::StreamSinceRequest>,
    ) -> Result<Response<Self::StreamSinceStream>, Status> {
        Err(Status::unimplemented("reference server"))
    }

    type FollowStream =
        Pin<Box<dyn Stream<Item = Result<EncodedMessage, Status>> + Send + 'static>>;

    async fn follow(
        &self,
        _: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        Err(Status::unimplemented("reference server"))
    }
}

/// The page left encoded on the client side too, so the loop measures the servers.
#[derive(Clone, PartialEq, prost::Message)]
struct Raw {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    results: Vec<Bytes>,
}

/// Requests/s of `callers` concurrent loops of `GetSince` for `run`.
async fn rate(addr: SocketAddr, limit: i32, callers: usize, run: Duration) -> f64 {
    let mut tasks = Vec::new();
    let until = Instant::now() + run;
    for _ in 0..callers {
        let mut client = support::grpc(addr).await;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                client.ready().await.expect("ready");
                let req = pb::GetSinceRequest {
                    limit: Some(limit),
                    ..Default::default()
                };
                let path = PathAndQuery::from_static("/confluence.audit.v1.AuditService/GetSince");
                let codec = tonic_prost::ProstCodec::<pb::GetSinceRequest, Raw>::default();
                client
                    .unary(Request::new(req), path, codec)
                    .await
                    .expect("call");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("caller");
    }
    total as f64 / run.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sim = support::simulator(SimulatorConfig {
            records: 5000,
            ..Default::default()
        })
        .await;
        let gateway = support::gateway(&sim.base_url(), |_| {}, std::future::pending()).await;
        for limit in [10, 1000] {
            // Warm the cache, and take the exact bytes the gateway serves for the reference.
            let mut c = support::grpc(gateway).await;
            c.ready().await.expect("ready");
            let req = pb::GetSinceRequest {
                limit: Some(limit),
                ..Default::default()
            };
            let path = PathAndQuery::from_static("/confluence.audit.v1.AuditService/GetSince");
            let page: pb::GetSinceResponse = c
                .unary(
                    Request::new(req),
                    path,
                    tonic_prost::ProstCodec::<pb::GetSinceRequest, pb::GetSinceResponse>::default(),
                )
                .await
                .expect("warm")
                .into_inner();
            let bytes = Bytes::from(prost::Message::encode_to_vec(&page));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let bare = listener.local_addr().expect("addr");
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(AuditServiceServer::new(Bare(bytes.clone())))
                    .serve_with_incoming(
                        tonic::transport::server::TcpIncoming::from(listener)
                            .with_nodelay(Some(true)),
                    ),
            );
            // Interleaved rounds, best of each: order and warm-up favour neither side.
            let run = Duration::from_secs(2);
            let (mut reference, mut ours) = (0f64, 0f64);
            for _ in 0..3 {
                reference = reference.max(rate(bare, limit, 16, run).await);
                ours = ours.max(rate(gateway, limit, 16, run).await);
            }
            println!(
                "GetSince cache hit, limit={limit} ({} KiB page), 16 callers: gateway {ours:.0} req/s, bare tonic server with the same bytes {reference:.0} req/s: {:.0}%",
                bytes.len() / 1024,
                100.0 * ours / reference
            );
        }
        println!("upstream requests: {} (the warm-up calls)", sim.request_count());
    });
}
