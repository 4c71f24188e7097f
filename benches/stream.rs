//! Figures for `StreamSince`, printed (not asserted):
//!
//! 1. time to stream a 40-page window (40,000 records, pages of 1000) with 100 ms of
//!    upstream latency per page, for several prefetch depths, against the sequential
//!    floor of 41 × 100 ms;
//! 2. the gateway's peak RSS (VmHWM) while streaming 100,000 and 1,000,000 records to a
//!    slow consumer, the gateway running as its own process with default settings.
//!
//! Run: `cargo bench --bench stream` (release build).

use std::time::{Duration, Instant};

mod support;

use confluence_sim::SimulatorConfig;
use support::stream::stream;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        prefetch_speedup().await;
        peak_rss().await;
    });
}

async fn prefetch_speedup() {
    let latency = Duration::from_millis(100);
    let floor = latency * 41;
    println!(
        "StreamSince, 40,000 records in pages of 1000, {latency:?} upstream latency per page; sequential floor 41 x {latency:?} = {floor:?}"
    );
    for prefetch in [1usize, 4, 8, 16] {
        let sim = support::simulator(SimulatorConfig {
            records: 40_000,
            latency,
            ..Default::default()
        })
        .await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stop_on = async move {
            let _ = stopped.await;
        };
        let addr = support::gateway(&sim.base_url(), |c| c.stream_prefetch = prefetch, stop_on)
            .await
            .to_string();
        let mut c = support::grpc(&addr).await;
        let t = Instant::now();
        let (records, messages) = stream(&mut c, Duration::ZERO).await;
        let took = t.elapsed();
        println!(
            "  prefetch {prefetch:>2}: {records} records in {messages} messages, {took:.2?}, {:.1}x faster than the floor, {} upstream requests",
            floor.as_secs_f64() / took.as_secs_f64(),
            sim.request_count()
        );
        let _ = stop.send(());
        sim.shutdown();
    }
}

async fn peak_rss() {
    println!("StreamSince to a slow consumer (10 ms per message), gateway as its own process:");
    let settings: [(&str, &[&str]); 2] = [
        ("default settings", &[]),
        ("--cache-max-bytes 4MiB", &["--cache-max-bytes", "4MiB"]),
    ];
    for ((label, extra), records) in settings
        .iter()
        .flat_map(|s| [100_000usize, 1_000_000].map(|r| (s, r)))
    {
        let sim = support::simulator(SimulatorConfig {
            records,
            max_limit: Some(1000),
            ..Default::default()
        })
        .await;
        let (mut child, addr) = support::spawn_gateway_binary(&sim.base_url(), extra);
        let mut c = support::grpc(&addr).await;
        let t = Instant::now();
        let (got, messages) = stream(&mut c, Duration::from_millis(10)).await;
        let hwm = support::vm_hwm_kib(child.id());
        println!(
            "  {label}: {got} records in {messages} messages, {:.1?}: gateway peak RSS {:.1} MiB",
            t.elapsed(),
            hwm as f64 / 1024.0
        );
        let _ = child.kill();
        let _ = child.wait();
        sim.shutdown();
    }
}
