//! The cache-hit figure, printed (not asserted): `GetSince` requests/s when
//! every call is a page-cache hit, against a bare tonic server of the same service that
//! answers the same pre-encoded bytes and does nothing else. Both in this process, both
//! driven by the same closed loop of concurrent callers over loopback.
//!
//! Run: `cargo bench --bench cache_hit` (release build).

mod support;

use std::time::Duration;

use confluence_sim::SimulatorConfig;
use support::hit::{self, Callers};

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
        // Sixteen callers, each on a connection of its own.
        let callers = Callers {
            connections: 16,
            per_connection: 1,
            accept: None,
        };
        for limit in [10, 1000] {
            // Warm the cache, and take the exact bytes the gateway serves for the reference.
            let bytes = hit::warm(gateway, limit).await;
            let bare = hit::bare(bytes.clone()).await;
            // Interleaved rounds, best of each: order and warm-up favour neither side.
            let run = Duration::from_secs(2);
            let (mut reference, mut ours) = (0f64, 0f64);
            for _ in 0..3 {
                reference = reference.max(hit::rate(bare, limit, callers, run).await);
                ours = ours.max(hit::rate(gateway, limit, callers, run).await);
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
