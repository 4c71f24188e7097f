//! Figures for the unary gateway, printed (not asserted): conversion speed against a bare
//! `serde_json::Value` parse, and `GetSince` latency cold (upstream fetch) and warm (page
//! cache) through a real gRPC client over loopback, against the simulator.
//!
//! Run: `cargo bench --bench gateway` (release build).

use std::time::{Duration, Instant};

mod support;

use audit_gateway::{
    pb::{self, audit_service_client::AuditServiceClient},
    testing::bench,
};
use confluence_sim::{PageSpec, SimulatorConfig, render_page};
use tonic::{Request, metadata::MetadataValue};

fn main() {
    conversion();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(latency());
}

/// Best of several rounds of `iters` runs of `f`, per run.
fn time_per_run(iters: u32, mut f: impl FnMut()) -> Duration {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed() / iters
        })
        .min()
        .unwrap_or_default()
}

fn conversion() {
    let body = render_page(&PageSpec::default()).expect("page");
    let value = time_per_run(50, || {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        std::hint::black_box(v);
    });
    let parse = time_per_run(50, || {
        std::hint::black_box(bench::parse(&body).expect("page"));
    });
    let convert = time_per_run(50, || {
        std::hint::black_box(bench::parse_and_convert(&body).expect("page"));
    });
    println!("  of which: typed parse {parse:.2?}; parse + protobuf structs {convert:.2?}");
    let typed = time_per_run(50, || {
        std::hint::black_box(bench::encode_page(&body).expect("page"));
    });
    println!(
        "conversion, 1000-record page ({} KiB): serde_json::Value parse {value:.2?}; \
         typed parse + protobuf + encode {typed:.2?}; ratio {:.2}x",
        body.len() / 1024,
        value.as_secs_f64() / typed.as_secs_f64()
    );
}

async fn latency() {
    let sim = support::simulator(SimulatorConfig {
        records: 5000,
        ..Default::default()
    })
    .await;
    let addr = support::gateway(&sim.base_url(), |_| {}, std::future::pending()).await;
    let mut client = AuditServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);

    for limit in [10, 1000] {
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        for _ in 0..100 {
            let req = || pb::GetSinceRequest {
                limit: Some(limit),
                ..Default::default()
            };
            let mut fresh = Request::new(req());
            fresh
                .metadata_mut()
                .insert("cache-control", MetadataValue::from_static("no-cache"));
            let t = Instant::now();
            client.get_since(fresh).await.expect("cold call");
            cold.push(t.elapsed());
            let t = Instant::now();
            client.get_since(req()).await.expect("warm call");
            warm.push(t.elapsed());
        }
        println!(
            "GetSince limit={limit}: cold (upstream fetch) p50 {:.2?} p99 {:.2?}; warm (cache hit) p50 {:.2?} p99 {:.2?}",
            support::pct(&mut cold, 50),
            support::pct(&mut cold, 99),
            support::pct(&mut warm, 50),
            support::pct(&mut warm, 99)
        );
    }
    println!("upstream requests: {}", sim.request_count());
}
