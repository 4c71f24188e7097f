//! Figures for the shared Redis tier, printed (not asserted): `GetSince` latency for a
//! replica-to-replica hit (page fetched by replica A, served to replica B from Redis),
//! against an in-process hit and an upstream miss, through real gRPC clients over
//! loopback, two gateways and a real `redis-server` (which must be on PATH).
//!
//! Run: `cargo bench --bench redis` (release build).

use std::time::{Duration, Instant};

mod support;

use audit_gateway::{
    pb::{self, audit_service_client::AuditServiceClient},
    testing::redis::RedisServer,
};
use confluence_sim::SimulatorConfig;
use tonic::transport::Channel;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let redis = RedisServer::start().await;
        measure(redis.port()).await;
    });
}

async fn replica(confluence: &str, redis_port: u16) -> AuditServiceClient<Channel> {
    let redis = format!("redis://127.0.0.1:{redis_port}/0");
    let shared = |c: &mut audit_gateway::GatewayConfig| {
        c.redis.url = Some(redis.into());
        c.credential_salt = Some("a salt the two bench replicas share".into());
    };
    let addr = support::gateway(confluence, shared, std::future::pending()).await;
    AuditServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
}

async fn timed(client: &mut AuditServiceClient<Channel>, req: pb::GetSinceRequest) -> Duration {
    let t = Instant::now();
    client.get_since(req).await.expect("call");
    t.elapsed()
}

async fn measure(redis_port: u16) {
    let sim = support::simulator(SimulatorConfig {
        records: 200_000,
        ..Default::default()
    })
    .await;
    // Wait for redis-server to accept connections.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut a = replica(&sim.base_url(), redis_port).await;
    let mut b = replica(&sim.base_url(), redis_port).await;
    for limit in [10, 1000] {
        let (mut miss, mut shared, mut local) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..100 {
            let req = pb::GetSinceRequest {
                start: Some(i * limit),
                limit: Some(limit),
                ..Default::default()
            };
            miss.push(timed(&mut a, req.clone()).await);
            // A stores the page in Redis off its caller's path; give it a moment.
            tokio::time::sleep(Duration::from_millis(5)).await;
            shared.push(timed(&mut b, req.clone()).await);
            local.push(timed(&mut b, req).await);
        }
        println!(
            "GetSince limit={limit}, p50 (p99): upstream miss {:.2?} ({:.2?}); replica-to-replica hit via Redis {:.2?} ({:.2?}); in-process hit {:.2?} ({:.2?})",
            support::pct(&mut miss, 50),
            support::pct(&mut miss, 99),
            support::pct(&mut shared, 50),
            support::pct(&mut shared, 99),
            support::pct(&mut local, 50),
            support::pct(&mut local, 99),
        );
    }
    println!(
        "upstream requests: {} (one per page: B never called Confluence)",
        sim.request_count()
    );
}
