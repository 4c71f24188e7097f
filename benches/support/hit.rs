//! Cache hits under load: the bare reference server, closed-loop requests/s and
//! open-loop latency, shared by `cache_hit` and `suite`.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use audit_gateway::pb::{
    self, EncodedMessage,
    audit_service_server::{AuditService, AuditServiceServer},
};
use bytes::Bytes;
use http::uri::PathAndQuery;
use tokio_stream::Stream;
use tonic::{
    Request, Response, Status, client::Grpc, codec::CompressionEncoding, transport::Channel,
};

/// Answers every `GetSince` with the same encoded page: the reference.
pub struct Bare(pub Bytes);

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

    async fn get_retention(
        &self,
        _: Request<pb::GetRetentionRequest>,
    ) -> Result<Response<pb::GetRetentionResponse>, Status> {
        Err(Status::unimplemented("reference server"))
    }
}

/// The page left encoded on the client side too, so the loop measures the servers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Raw {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    results: Vec<Bytes>,
}

/// The `GetSince` request every load loop sends.
fn request(limit: i32) -> Request<pb::GetSinceRequest> {
    Request::new(pb::GetSinceRequest {
        limit: Some(limit),
        ..Default::default()
    })
}

/// One `GetSince` of `limit` records on `client`, its records left encoded.
async fn call(client: &mut Grpc<Channel>, limit: i32) {
    client.ready().await.expect("ready");
    let path = PathAndQuery::from_static("/confluence.audit.v1.AuditService/GetSince");
    let codec = tonic_prost::ProstCodec::<pb::GetSinceRequest, Raw>::default();
    client
        .unary(request(limit), path, codec)
        .await
        .expect("call");
}

/// Warms the gateway's cache for a page of `limit` records and returns the page's exact
/// encoded bytes, which the reference server then answers with.
pub async fn warm(gateway: SocketAddr, limit: i32) -> Bytes {
    let mut c = super::grpc(gateway).await;
    c.ready().await.expect("ready");
    let path = PathAndQuery::from_static("/confluence.audit.v1.AuditService/GetSince");
    let page: pb::GetSinceResponse = c
        .unary(
            request(limit),
            path,
            tonic_prost::ProstCodec::<pb::GetSinceRequest, pb::GetSinceResponse>::default(),
        )
        .await
        .expect("warm")
        .into_inner();
    Bytes::from(prost::Message::encode_to_vec(&page))
}

/// Starts a bare tonic server answering `bytes` on a free loopback port.
pub async fn bare(bytes: Bytes) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuditServiceServer::new(Bare(bytes)))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    addr
}

/// How a load loop calls: over how many connections, how many calls in flight on each,
/// and which response encoding it advertises (`grpc-accept-encoding`).
#[derive(Clone, Copy, Debug)]
pub struct Callers {
    /// HTTP/2 connections.
    pub connections: usize,
    /// Concurrent calls (streams) on each connection.
    pub per_connection: usize,
    /// The encoding advertised; `None`: identity only.
    pub accept: Option<CompressionEncoding>,
}

/// `callers.connections` clients of `addr`, each advertising `callers.accept`.
async fn clients(addr: SocketAddr, callers: Callers) -> Vec<Grpc<Channel>> {
    let mut clients = Vec::new();
    for _ in 0..callers.connections {
        let mut c = super::grpc(addr).await;
        if let Some(enc) = callers.accept {
            c = c.accept_compressed(enc);
        }
        clients.push(c);
    }
    clients
}

/// Requests/s of a closed loop of `GetSince` calls for `limit` records for `run`.
pub async fn rate(addr: SocketAddr, limit: i32, callers: Callers, run: Duration) -> f64 {
    let mut tasks = Vec::new();
    let until = Instant::now() + run;
    for client in clients(addr, callers).await {
        for _ in 0..callers.per_connection {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    call(&mut client, limit).await;
                    n += 1;
                }
                n
            }));
        }
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("caller");
    }
    total as f64 / run.as_secs_f64()
}

/// Latencies of an open loop of `GetSince` calls at `per_second` for `run`, each measured
/// from when it was due (not when it was sent), so a server that falls behind is charged
/// for the queue it builds. A thread of its own schedules the calls: std's sleep is
/// precise to tens of microseconds, tokio's timer only to a millisecond.
pub async fn open_loop(
    addr: SocketAddr,
    limit: i32,
    connections: usize,
    per_second: f64,
    run: Duration,
) -> Vec<Duration> {
    let clients = clients(
        addr,
        Callers {
            connections,
            per_connection: 1,
            accept: None,
        },
    )
    .await;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let runtime = tokio::runtime::Handle::current();
    let sink = latencies.clone();
    let period = Duration::from_secs_f64(1.0 / per_second);
    let scheduler = std::thread::spawn(move || {
        let start = Instant::now();
        let end = start + run;
        let (mut due, mut i) = (start, 0usize);
        let mut calls = Vec::new();
        while due < end {
            let now = Instant::now();
            while due <= now && due < end {
                let mut client = clients[i % clients.len()].clone();
                let sink = sink.clone();
                let at = due;
                calls.push(runtime.spawn(async move {
                    call(&mut client, limit).await;
                    let took = at.elapsed();
                    sink.lock().expect("not poisoned").push(took);
                }));
                i += 1;
                due = start + period.mul_f64(i as f64);
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        calls
    });
    let calls = tokio::task::spawn_blocking(move || scheduler.join().expect("scheduler"))
        .await
        .expect("scheduler");
    for c in calls {
        c.await.expect("call");
    }
    std::mem::take(&mut *latencies.lock().expect("not poisoned"))
}
