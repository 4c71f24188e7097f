//! CPU per rendered page: 300 consecutive 1000-record pages of a 1,000,000-record log, as
//! the backfill benchmark fetches them. Prints ms and bytes per page: wall time and, where
//! Linux reports it, the thread's CPU time (steadier on a shared machine).

use std::hint::black_box;
use std::time::Instant;

use confluence_sim::{PageSpec, render_page};

const PAGES: u32 = 300;

/// This thread's CPU time in ns so far, from `/proc/thread-self/schedstat` (Linux only).
fn cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

fn main() {
    let spec = |i: u32| PageSpec {
        total: 1_000_000,
        start: i * 1000,
        ..PageSpec::default()
    };
    // Warm-up: the allocator and caches.
    for i in 0..10 {
        black_box(render_page(&spec(i)).unwrap());
    }
    for _ in 0..5 {
        let (mut bytes, began, cpu_began) = (0, Instant::now(), cpu_ns());
        for i in 0..PAGES {
            bytes += black_box(render_page(&spec(i)).unwrap()).len();
        }
        let per_page = |ms: f64| ms / f64::from(PAGES);
        let wall = per_page(began.elapsed().as_secs_f64() * 1000.0);
        let cpu = cpu_began
            .zip(cpu_ns())
            .map(|(from, to)| format!("{:.3}", per_page((to - from) as f64 / 1e6)));
        println!(
            "render_page: {wall:.3} ms/page wall, {} ms/page CPU, {} bytes/page ({PAGES} pages)",
            cpu.as_deref().unwrap_or("?"),
            bytes / PAGES as usize
        );
    }
}
