//! The performance targets P1–P9 (docs/benchmarks.md), each figure measured next to its
//! reference in the same run, printed (never asserted) as one table. Each row is also
//! printed as a machine-readable `ROW` line as soon as it is measured.
//!
//! Run: `scripts/bench`, or `cargo bench --bench suite` (release build); `--rows P1,P7`
//! measures only those rows (P6 then measures P1's rate itself).

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use audit_gateway::{ResponseCompression, testing::bench};
use confluence_sim::{AuditEndpoint, Concurrency, PageSpec, SimulatorConfig, render_page};
use support::{
    h2load,
    hit::{self, Callers},
};
use tonic::codec::CompressionEncoding;

/// One line of the table.
struct Row {
    /// Target number, e.g. "P1".
    id: &'static str,
    /// What generated the load (or timed the work), and where it ran.
    generator: &'static str,
    /// What was measured.
    measure: String,
    /// The figure.
    value: String,
    /// Its reference, measured in the same run.
    reference: String,
    /// value / reference (or reference / value where the target is "faster").
    ratio: f64,
    /// The spec's target.
    target: &'static str,
    /// Whether the target is met.
    met: bool,
}

impl Row {
    /// Prints the row as a `ROW` line, for scripts.
    fn emit(&self) {
        println!(
            "ROW {} generator={:?} value={:?} reference={:?} ratio={:.3} target={:?} met={} measure={:?}",
            self.id,
            self.generator,
            self.value,
            self.reference,
            self.ratio,
            self.target,
            self.met,
            self.measure
        );
    }
}

/// GetSince page size of P1, P6 and P7: 100 records.
const LIMIT: i32 = 100;

/// h2load's connections (`-c`) for P1 and P6.
const H2LOAD_CONNECTIONS: usize = 8;

/// h2load's calls in flight per connection (`-m`) for P1.
const H2LOAD_STREAMS: usize = 16;

/// Many concurrent HTTP/2 streams: 4 connections of 16 calls in flight each.
const MANY: Callers = Callers {
    connections: 4,
    per_connection: 16,
    accept: None,
};

fn main() {
    // P1 and P6 re-run this executable as the bare reference server (its own process).
    h2load::serve_bare_if_asked();
    // `cargo bench` passes `--bench`; only `--rows` is ours.
    let args: Vec<String> = std::env::args().collect();
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .map(|r| r.split(',').map(|s| s.trim().to_uppercase()).collect());
    let want = |id: &str| only.as_ref().is_none_or(|o| o.iter().any(|w| w == id));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut rows = Vec::new();
    if want("P2") {
        rows.push(p2_conversion());
        rows.last().expect("row").emit();
    }
    rt.block_on(async {
        if (want("P1") || want("P6")) && !h2load::available() {
            eprintln!("h2load not found (Debian: nghttp2-client; scripts/bench installs it): P1 and P6 measured in process only");
        } else if want("P1") || want("P6") {
            // P6's rate is half of P1's, so P6 alone measures P1 too.
            let outside = Outside::start().await;
            let (row, rate) = outside.p1();
            if want("P1") {
                row.emit();
                rows.push(row);
            }
            if want("P6") {
                let row = outside.p6(rate / 2.0);
                row.emit();
                rows.push(row);
            }
        }
        let mut p1_rate = None;
        if want("P1") || want("P6") {
            let (row, rate) = p1_cache_hits().await;
            p1_rate = Some(rate);
            if want("P1") {
                row.emit();
                rows.push(row);
            }
        }
        if let (true, Some(rate)) = (want("P6"), p1_rate) {
            let row = p6_latency(rate / 2.0).await;
            row.emit();
            rows.push(row);
        }
        if want("P7") {
            for row in p7_compression().await {
                row.emit();
                rows.push(row);
            }
        }
        if want("P3") {
            for row in p3_prefetch().await {
                row.emit();
                rows.push(row);
            }
        }
        if want("P5") {
            for row in p5_shared_window().await {
                row.emit();
                rows.push(row);
            }
        }
        if want("P8") {
            let row = p8_followers().await;
            row.emit();
            rows.push(row);
        }
        if want("P9") {
            let row = p9_backfill().await;
            row.emit();
            rows.push(row);
        }
        if want("P4") {
            for row in p4_peak_rss().await {
                row.emit();
                rows.push(row);
            }
        }
    });
    rows.sort_by_key(|r| r.id);
    print_table(&rows);
    println!("(measured in {:.0?})", started.elapsed());
}

/// Prints `rows` as a Markdown table, columns padded.
fn print_table(rows: &[Row]) {
    let header = [
        "row",
        "generator",
        "measure",
        "value",
        "reference",
        "ratio",
        "target",
        "result",
    ]
    .map(String::from);
    let lines: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_owned(),
                r.generator.to_owned(),
                r.measure.clone(),
                r.value.clone(),
                r.reference.clone(),
                format!("{:.2}x", r.ratio),
                r.target.to_owned(),
                if r.met { "met" } else { "MISSED" }.to_owned(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let print = |cells: &[String; 8]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    println!();
    print(&header);
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    lines.iter().for_each(print);
}

/// The time per run of `iters` runs of `f`.
fn time_per_run(iters: u32, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed() / iters
}

/// P2: a 1000-record JSON page to encoded protobuf, against a `serde_json::Value` parse
/// of the same bytes; seven interleaved rounds of 30 runs each, best round of each (a
/// co-tenant's burst then slows both sides' rounds alike, not one side's).
fn p2_conversion() -> Row {
    let body = render_page(&PageSpec::default()).expect("page");
    let (mut value, mut ours) = (Duration::MAX, Duration::MAX);
    for _ in 0..7 {
        value = value.min(time_per_run(30, || {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            std::hint::black_box(v);
        }));
        ours = ours.min(time_per_run(30, || {
            std::hint::black_box(bench::encode_page(&body).expect("page"));
        }));
    }
    let ratio = value.as_secs_f64() / ours.as_secs_f64();
    Row {
        id: "P2",
        generator: "none: timed in process",
        measure: format!(
            "1000-record JSON page ({} KiB) -> encoded protobuf",
            body.len() / 1024
        ),
        value: format!("{ours:.2?}"),
        reference: format!("serde_json Value parse {value:.2?}"),
        ratio,
        target: ">= 2x faster",
        met: ratio >= 2.0,
    }
}

/// A simulator of `records` records and an in-process gateway in front of it, its
/// defaults changed by `tweak`, running until the process ends.
async fn sim_and_gateway(
    records: usize,
    tweak: impl FnOnce(&mut audit_gateway::GatewayConfig),
) -> (confluence_sim::SimulatorHandle, SocketAddr) {
    let sim = support::simulator(SimulatorConfig {
        records,
        ..Default::default()
    })
    .await;
    let gateway = support::gateway(&sim.base_url(), tweak, std::future::pending()).await;
    (sim, gateway)
}

/// P1 and P6 measured from outside: h2load in its own process against the gateway binary
/// (in front of the simulator, its page warmed so every call is a cache hit) and against
/// the bare tonic server answering the same bytes, run as a process of its own too.
struct Outside {
    sim: confluence_sim::SimulatorHandle,
    gateway: h2load::Process,
    bare: h2load::Process,
    files: h2load::Files,
    /// The encoded page both servers answer with.
    page: usize,
}

/// One h2load run's figure and the server's CPU time per call meanwhile.
struct Round<T> {
    figure: T,
    cpu_per_call: Duration,
    /// Fresh pages the kernel mapped into the server per call (minor faults).
    faults_per_call: f64,
}

impl Outside {
    /// Starts the simulator, the gateway binary and the bare server; warms the page and
    /// checks, with a real gRPC client, that both answer it.
    async fn start() -> Self {
        let sim = support::simulator(SimulatorConfig {
            records: 5000,
            ..Default::default()
        })
        .await;
        // Default settings but the cache's lifetime: the rows outlast the default 60 s,
        // and every call must stay a hit.
        let (child, addr) = support::spawn_gateway_binary(&sim.base_url(), &["--cache-ttl", "1h"]);
        let gateway = h2load::Process::adopt(child, addr.parse().expect("the gateway's address"));
        // The first call is the miss that fills the cache; the second, a hit, gives the
        // bytes every later call gets.
        hit::warm(gateway.addr, LIMIT).await;
        let bytes = h2load::page_bytes(gateway.addr, LIMIT).await;
        let files = h2load::Files::get_since(LIMIT);
        let bare = h2load::spawn_bare(&files, &bytes);
        // Before timing: a real client gets the page's bytes from each, and so does every
        // call of a counted h2load run (its body bytes: one frame of the page per call).
        let calls = 2000;
        for (name, addr) in [("gateway", gateway.addr), ("bare server", bare.addr)] {
            assert!(
                h2load::page_bytes(addr, LIMIT).await == bytes,
                "the {name} answers the warmed page's bytes"
            );
            let counted = h2load::counted(&files, addr, H2LOAD_CONNECTIONS, H2LOAD_STREAMS, calls);
            assert!(
                counted.ok == calls && counted.data == calls * (bytes.len() as u64 + 5),
                "h2load gets the page from the {name} on every call: {counted:?}, page {} B",
                bytes.len()
            );
        }
        Self {
            sim,
            gateway,
            bare,
            files,
            page: bytes.len(),
        }
    }

    /// Runs `measure` against `server` (blocking: h2load is a child process, and only
    /// the idle simulator needs this process's runtime meanwhile), with the server's CPU
    /// time per call over the run (warm-up included, hence `calls`' estimate of it).
    fn round<T>(
        server: &h2load::Process,
        measure: impl FnOnce(SocketAddr) -> T,
        calls: impl FnOnce(&T) -> f64,
    ) -> Round<T> {
        let (before, faults) = (
            h2load::cpu_time(server.id()),
            h2load::minor_faults(server.id()),
        );
        let figure = measure(server.addr);
        let used = h2load::cpu_time(server.id()).saturating_sub(before);
        let faults = h2load::minor_faults(server.id()).saturating_sub(faults);
        let n = calls(&figure).max(1.0);
        Round {
            figure,
            cpu_per_call: used.div_f64(n),
            faults_per_call: faults as f64 / n,
        }
    }

    /// `rounds` interleaved runs of `measure` on each server, the order alternating so a
    /// drift in the machine's load favours neither: (gateway's rounds, bare server's).
    fn interleaved<T>(
        &self,
        rounds: usize,
        measure: impl Fn(SocketAddr) -> T,
        calls: impl Fn(&T) -> f64,
    ) -> (Vec<Round<T>>, Vec<Round<T>>) {
        let (mut ours, mut reference) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            if i % 2 == 0 {
                ours.push(Self::round(&self.gateway, &measure, &calls));
                reference.push(Self::round(&self.bare, &measure, &calls));
            } else {
                reference.push(Self::round(&self.bare, &measure, &calls));
                ours.push(Self::round(&self.gateway, &measure, &calls));
            }
        }
        (ours, reference)
    }

    /// P1: closed loop, h2load `-c 8 -m 16`, three interleaved 3-s rounds per server;
    /// the figures are each side's median round. Returns the row and the gateway's
    /// median rate, for P6.
    fn p1(&self) -> (Row, f64) {
        let run = Duration::from_secs(3);
        // Warm-up (500 ms) calls run at the same rate and count in the CPU time.
        let whole = run + Duration::from_millis(500);
        let upstream = self.sim.request_count();
        let (ours, reference) = self.interleaved(
            3,
            |addr| h2load::closed(&self.files, addr, H2LOAD_CONNECTIONS, H2LOAD_STREAMS, run),
            |c| c.rate * whole.as_secs_f64(),
        );
        let misses = self.sim.request_count() - upstream;
        let rates =
            |r: &[Round<h2load::Counted>]| r.iter().map(|r| r.figure.rate).collect::<Vec<_>>();
        let (ours_rates, ref_rates) = (rates(&ours), rates(&reference));
        let (median_ours, median_ref) = (median(&ours_rates), median(&ref_rates));
        for (side, rounds) in [("gateway", &ours), ("bare", &reference)] {
            for r in rounds.iter() {
                eprintln!(
                    "P1 h2load {side}: {:?}, server CPU per call {:.1?}, page faults per call {:.2}",
                    r.figure, r.cpu_per_call, r.faults_per_call
                );
            }
        }
        let failed: u64 = ours.iter().chain(&reference).map(|r| r.figure.failed).sum();
        let ratio = median_ours / median_ref;
        let row = Row {
            id: "P1",
            generator: "h2load, own process",
            measure: format!(
                "cache-hit GetSince req/s, {LIMIT}-record page ({} KiB), gateway binary vs bare tonic, each its own process; h2load -c {H2LOAD_CONNECTIONS} -m {H2LOAD_STREAMS}, median of 3 interleaved {run:?} rounds (rounds: {}); server CPU per call {} vs {}; {failed} failed, {misses} upstream requests",
                self.page / 1024,
                spread(&ours_rates, &ref_rates),
                median_cpu(&ours),
                median_cpu(&reference),
            ),
            value: format!("{median_ours:.0} req/s"),
            reference: format!("bare tonic {median_ref:.0} req/s"),
            ratio,
            target: ">= 0.95x",
            met: ratio >= 0.95 && failed == 0 && misses == 0,
        };
        (row, median_ours)
    }

    /// P6: open loop at `per_second` over 8 connections (h2load `--rps`), five
    /// interleaved 2-s rounds per server; the figures are each side's median-round p99.
    fn p6(&self, per_second: f64) -> Row {
        let run = Duration::from_secs(2);
        let per_client = per_second / H2LOAD_CONNECTIONS as f64;
        let upstream = self.sim.request_count();
        let (mut ours, mut reference) = self.interleaved(
            5,
            |addr| h2load::open(&self.files, addr, H2LOAD_CONNECTIONS, per_client, run),
            |o| o.latencies.len() as f64 * (run.as_secs_f64() + 0.5) / run.as_secs_f64(),
        );
        let misses = self.sim.request_count() - upstream;
        for (side, rounds) in [("gateway", &mut ours), ("bare", &mut reference)] {
            for r in rounds.iter_mut() {
                let l = &mut r.figure.latencies;
                eprintln!(
                    "P6 h2load {side}: {} calls, {} failed, {} cut off at the end, p50 {:.2?}, p99 {:.2?}, server CPU per call {:.1?}",
                    l.len(),
                    r.figure.failed,
                    r.figure.cut_off,
                    support::pct(l, 50),
                    support::pct(l, 99),
                    r.cpu_per_call
                );
            }
        }
        let failed: u64 = ours.iter().chain(&reference).map(|r| r.figure.failed).sum();
        let calls: usize = ours.iter().map(|r| r.figure.latencies.len()).sum();
        let pcts = |rounds: &mut [Round<h2load::Open>], p| {
            rounds
                .iter_mut()
                .map(|r| support::pct(&mut r.figure.latencies, p))
                .collect::<Vec<_>>()
        };
        let (mut p99_ours, mut p99_ref) = (pcts(&mut ours, 99), pcts(&mut reference, 99));
        let (mut p50_ours, mut p50_ref) = (pcts(&mut ours, 50), pcts(&mut reference, 50));
        let rounds = p99_ours
            .iter()
            .zip(&p99_ref)
            .map(|(o, r)| format!("{:.1}", o.as_secs_f64() / r.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("/");
        let (cpu_ours, cpu_ref) = (median_cpu(&ours), median_cpu(&reference));
        let (p99_o, p99_r) = (
            support::pct(&mut p99_ours, 50),
            support::pct(&mut p99_ref, 50),
        );
        let ratio = p99_o.as_secs_f64() / p99_r.as_secs_f64();
        Row {
            id: "P6",
            generator: "h2load --rps, own process",
            measure: format!(
                "p99 latency of cache hits, gateway binary vs bare tonic, each its own process; open loop at {per_second:.0} req/s (half the h2load P1's median gateway round: --rps {per_client:.0} x {H2LOAD_CONNECTIONS} connections), {calls} calls, latency from when h2load sent each; median p50 {:.2?} vs {:.2?}; server CPU per call {cpu_ours} vs {cpu_ref} (rounds' p99 ratios: {rounds}); {failed} failed, {misses} upstream requests",
                support::pct(&mut p50_ours, 50),
                support::pct(&mut p50_ref, 50),
            ),
            value: format!("p99 {p99_o:.2?}"),
            reference: format!("bare tonic p99 {p99_r:.2?}"),
            ratio,
            target: "<= 1.2x",
            met: ratio <= 1.2 && failed == 0 && misses == 0,
        }
    }
}

/// The median of `v` (the upper one of an even count).
fn median(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The median round's server CPU time per call, e.g. "41.2µs".
fn median_cpu<T>(rounds: &[Round<T>]) -> String {
    let mut cpu: Vec<Duration> = rounds.iter().map(|r| r.cpu_per_call).collect();
    format!("{:.1?}", support::pct(&mut cpu, 50))
}

/// P1: cache-hit `GetSince` req/s of a 100-record page over 64 concurrent streams,
/// against a bare tonic server answering the same bytes; three interleaved 2-second
/// rounds, best of each. Returns the row and the gateway's median round: P6 runs at half
/// of that, as the best round can be a moment the co-tenants left the CPUs alone.
async fn p1_cache_hits() -> (Row, f64) {
    let (_sim, gateway) = sim_and_gateway(5000, |_| {}).await;
    let bytes = hit::warm(gateway, LIMIT).await;
    let bare = hit::bare(bytes.clone()).await;
    let run = Duration::from_secs(2);
    let (mut reference, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        reference.push(hit::rate(bare, LIMIT, MANY, run).await);
        ours.push(hit::rate(gateway, LIMIT, MANY, run).await);
    }
    let (best_ref, best_ours) = (max(&reference), max(&ours));
    let ratio = best_ours / best_ref;
    let row = Row {
        id: "P1",
        generator: "in-process tonic client",
        measure: format!(
            "diagnosis, client and both servers in the bench's process: cache-hit GetSince req/s, {LIMIT}-record page ({} KiB), 4 conns x 16 streams, best of 3 rounds (rounds: {})",
            bytes.len() / 1024,
            spread(&ours, &reference)
        ),
        value: format!("{best_ours:.0} req/s"),
        reference: format!("bare tonic {best_ref:.0} req/s"),
        ratio,
        target: ">= 0.95x",
        met: ratio >= 0.95,
    };
    let mut sorted = ours.clone();
    sorted.sort_by(f64::total_cmp);
    (row, sorted[sorted.len() / 2])
}

/// The largest of `v`.
fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Each round's ratio of `ours` to `reference`, for the noise they show.
fn spread(ours: &[f64], reference: &[f64]) -> String {
    ours.iter()
        .zip(reference)
        .map(|(o, r)| format!("{:.2}", o / r))
        .collect::<Vec<_>>()
        .join("/")
}

/// P6: p99 latency of cache hits under an open loop at `per_second` (half of P1's
/// median gateway round)
/// over 4 connections, against the bare server at the same rate: five interleaved
/// 1.5-second rounds each; the figures are the median round's p99 of each side, so a
/// round a co-tenant's burst spoiled does not decide the row (every round's ratio is
/// printed for the noise).
async fn p6_latency(per_second: f64) -> Row {
    let (_sim, gateway) = sim_and_gateway(5000, |_| {}).await;
    let bytes = hit::warm(gateway, LIMIT).await;
    let bare = hit::bare(bytes).await;
    let run = Duration::from_millis(1500);
    let (mut reference, mut ours, mut rounds, mut calls) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let (mut p50_ref, mut p50_ours) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let mut r = hit::open_loop(bare, LIMIT, 4, per_second, run).await;
        let mut o = hit::open_loop(gateway, LIMIT, 4, per_second, run).await;
        calls += o.len();
        let (pr, po) = (support::pct(&mut r, 99), support::pct(&mut o, 99));
        rounds.push(format!("{:.1}", po.as_secs_f64() / pr.as_secs_f64()));
        reference.push(pr);
        ours.push(po);
        p50_ref.push(support::pct(&mut r, 50));
        p50_ours.push(support::pct(&mut o, 50));
    }
    let (p99_ref, p99_ours) = (
        support::pct(&mut reference, 50),
        support::pct(&mut ours, 50),
    );
    let ratio = p99_ours.as_secs_f64() / p99_ref.as_secs_f64();
    Row {
        id: "P6",
        generator: "in-process tonic client (own scheduler thread)",
        measure: format!(
            "diagnosis, client and both servers in the bench's process: p99 latency of cache hits, open loop at {per_second:.0} req/s (half the in-process P1's median round), {calls} calls, from when each call was due; median p50 {:.2?} vs {:.2?} (rounds' p99 ratios: {})",
            support::pct(&mut p50_ours, 50),
            support::pct(&mut p50_ref, 50),
            rounds.join("/")
        ),
        value: format!("p99 {p99_ours:.2?}"),
        reference: format!("bare tonic p99 {p99_ref:.2?}"),
        ratio,
        target: "<= 1.2x",
        met: ratio <= 1.2,
    }
}

/// P7: cache-hit req/s with a client advertising gzip or zstd against the same client
/// advertising identity, on a gateway compressing responses (`--compress-responses
/// both`) and on one with the default (`none`); two interleaved 2-second rounds, best
/// of each.
async fn p7_compression() -> Vec<Row> {
    let run = Duration::from_secs(2);
    let with = |accept| Callers { accept, ..MANY };
    let mut rows = Vec::new();
    let (_sim, compressing) = sim_and_gateway(5000, |c| {
        c.server.compress_responses = ResponseCompression::Both
    })
    .await;
    let (_sim2, default) = sim_and_gateway(5000, |_| {}).await;
    let bytes = hit::warm(compressing, LIMIT).await;
    hit::warm(default, LIMIT).await;
    let (mut identity, mut gzip, mut zstd) = (Vec::new(), Vec::new(), Vec::new());
    let (mut default_identity, mut default_gzip) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        identity.push(hit::rate(compressing, LIMIT, with(None), run).await);
        gzip.push(
            hit::rate(
                compressing,
                LIMIT,
                with(Some(CompressionEncoding::Gzip)),
                run,
            )
            .await,
        );
        zstd.push(
            hit::rate(
                compressing,
                LIMIT,
                with(Some(CompressionEncoding::Zstd)),
                run,
            )
            .await,
        );
        default_identity.push(hit::rate(default, LIMIT, with(None), run).await);
        default_gzip
            .push(hit::rate(default, LIMIT, with(Some(CompressionEncoding::Gzip)), run).await);
    }
    let page = format!("{LIMIT}-record page ({} KiB)", bytes.len() / 1024);
    for (name, figures) in [("gzip", &gzip), ("zstd", &zstd)] {
        let ratio = max(figures) / max(&identity);
        rows.push(Row {
            id: "P7",
            generator: "in-process tonic client",
            measure: format!(
                "--compress-responses both: {name} cache hits req/s, {page} (rounds: {})",
                spread(figures, &identity)
            ),
            value: format!("{:.0} req/s", max(figures)),
            reference: format!("identity {:.0} req/s", max(&identity)),
            ratio,
            target: ">= 0.9x",
            met: ratio >= 0.9,
        });
    }
    let ratio = max(&default_gzip) / max(&default_identity);
    rows.push(Row {
        id: "P7",
        generator: "in-process tonic client",
        measure: format!(
            "--compress-responses none (default): client advertising gzip, req/s, {page} (rounds: {})",
            spread(&default_gzip, &default_identity)
        ),
        value: format!("{:.0} req/s", max(&default_gzip)),
        reference: format!("identity {:.0} req/s", max(&default_identity)),
        ratio,
        target: ">= 0.9x",
        met: ratio >= 0.9,
    });
    rows
}

/// P3: a 40-page window (40,000 records in pages of 1000) at 100 ms per upstream page,
/// read as fast as possible: at default settings against the concurrency bound (1 +
/// ceil(40 / ceiling) round trips), against a site allowing 16 in flight (429 past 16)
/// against the sequential floor, and against a site warning past 4 and refusing past 8
/// (pacing must back off before any 429).
async fn p3_prefetch() -> Vec<Row> {
    let latency = Duration::from_millis(100);
    let floor = latency * 41;
    let ceiling = audit_gateway::UpstreamConfig::DEFAULT.concurrency;
    let bound = latency * (1 + 40u32.div_ceil(ceiling as u32));
    // The same window with no latency: what rendering, converting and reading its pages
    // costs on this machine's cores (simulator, gateway and client share them).
    let cpu = {
        let sim = support::simulator(SimulatorConfig {
            records: 40_000,
            ..Default::default()
        })
        .await;
        let addr = support::gateway(&sim.base_url(), |_| {}, std::future::pending()).await;
        let mut c = support::grpc(addr).await;
        let t = Instant::now();
        support::stream::stream(&mut c, Duration::ZERO).await;
        let took = t.elapsed();
        sim.shutdown();
        took
    };
    let mut rows = Vec::new();
    for site in [
        None,
        Some(Concurrency {
            allowed: 16,
            near: 16,
        }),
        Some(Concurrency {
            allowed: 8,
            near: 4,
        }),
    ] {
        let sim = support::simulator(SimulatorConfig {
            records: 40_000,
            latency,
            concurrency: site,
            ..Default::default()
        })
        .await;
        let addr = support::gateway(&sim.base_url(), |_| {}, std::future::pending()).await;
        let mut c = support::grpc(addr).await;
        let t = Instant::now();
        let (records, _) = support::stream::stream(&mut c, Duration::ZERO).await;
        let took = t.elapsed();
        sim.shutdown();
        trace_requests(&sim, t);
        let (refused, warned) = sim.over_limit();
        let seen = format!(
            "{records} records, {} upstream requests, at most {} at once",
            sim.request_count(),
            sim.max_in_flight()
        );
        rows.push(match site {
            None => Row {
                id: "P3",
                generator: "in-process tonic client",
                measure: format!(
                    "StreamSince 40-page window at {latency:?}/page, default settings ({seen}; {:.2}x the sequential floor of 41 x {latency:?}; the same window at 0 ms/page takes {cpu:.2?}, the CPU of simulator, gateway and client on this machine)",
                    floor.as_secs_f64() / took.as_secs_f64()
                ),
                value: format!("{took:.2?}"),
                reference: format!("bound 1 + 40/{ceiling} round trips = {bound:.2?}"),
                ratio: bound.as_secs_f64() / took.as_secs_f64(),
                target: ">= 0.95x the bound",
                met: bound.as_secs_f64() / took.as_secs_f64() >= 0.95,
            },
            Some(Concurrency { allowed: 16, .. }) => Row {
                id: "P3",
                generator: "in-process tonic client",
                measure: format!(
                    "the same against a site allowing 16 in flight (429 past 16) ({seen}; {refused} refused)"
                ),
                value: format!("{took:.2?}"),
                reference: format!("floor 41 x {latency:?} = {floor:.2?}"),
                ratio: floor.as_secs_f64() / took.as_secs_f64(),
                target: ">= 8x faster",
                met: floor.as_secs_f64() / took.as_secs_f64() >= 8.0 && refused == 0,
            },
            Some(_) => Row {
                id: "P3",
                generator: "in-process tonic client",
                measure: format!(
                    "the same against a site warning past 4 in flight and refusing past 8 ({seen}; {warned} warned)"
                ),
                value: format!("{refused} refused (429)"),
                reference: format!("{took:.2?} to stream"),
                ratio: refused as f64,
                target: "0 refused",
                met: refused == 0,
            },
        });
    }
    rows
}

/// P5: 100 concurrent `StreamSince` calls of one 20,500-record window (pages of 1000,
/// 20 ms upstream latency, 10 connections): upstream requests per distinct page, and
/// fetches past the window's end (start >= its record count) made after the short page
/// had been answered.
async fn p5_shared_window() -> Vec<Row> {
    const RECORDS: usize = 20_500;
    let latency = Duration::from_millis(20);
    // The simulator apart (when it received each request is this measure's clock) and
    // the gateway in its own process: neither waits behind the 100 clients' work on
    // this process's runtime to take a request in or to learn where the window ends.
    let sim = support::simulator_apart(SimulatorConfig {
        records: RECORDS,
        latency,
        ..Default::default()
    });
    let (mut child, addr) = support::spawn_gateway_binary(&sim.base_url(), &[]);
    let t = Instant::now();
    let mut connections = Vec::new();
    for _ in 0..10 {
        connections.push(support::grpc(&addr).await);
    }
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let mut c = connections[i % 10].clone();
            tokio::spawn(async move {
                support::stream::stream_pages(&mut c, 1000, Duration::ZERO)
                    .await
                    .0
            })
        })
        .collect();
    let mut complete = 0;
    for t in tasks {
        complete += usize::from(t.await.expect("stream") == RECORDS);
    }
    let _ = child.kill();
    let _ = child.wait();
    trace_requests(&sim, t);
    // (start, limit, received) of each request of the window's endpoint.
    let fetches: Vec<(usize, usize, Instant)> = sim
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Some(AuditEndpoint::Since))
        .map(|r| {
            let param = |name| r.param(name).and_then(|v| v.parse().ok()).unwrap_or(0);
            (param("start"), param("limit"), r.received)
        })
        .collect();
    sim.shutdown();
    let mut pages: Vec<(usize, usize)> = fetches.iter().map(|&(s, l, _)| (s, l)).collect();
    pages.sort_unstable();
    pages.dedup();
    // The short page: the first answer holding the window's end; seen once answered.
    let short_seen = fetches
        .iter()
        .filter(|&&(s, l, _)| s < RECORDS && s + l > RECORDS)
        .map(|&(_, _, at)| at + latency)
        .min();
    let past_end = fetches.iter().filter(|&&(s, _, _)| s >= RECORDS).count();
    let past_end_after = fetches
        .iter()
        .filter(|&&(s, _, at)| s >= RECORDS && short_seen.is_some_and(|seen| at > seen))
        .count();
    let per_page = fetches.len() as f64 / pages.len().max(1) as f64;
    vec![
        Row {
            id: "P5",
            generator: "in-process tonic clients, gateway in its own process",
            measure: format!(
                "100 concurrent StreamSince of one {RECORDS}-record window, pages of 1000 ({complete}/100 complete)"
            ),
            value: format!("{} upstream requests", fetches.len()),
            reference: format!("{} distinct pages", pages.len()),
            ratio: per_page,
            target: "1.0 per page",
            met: per_page <= 1.0,
        },
        Row {
            id: "P5",
            generator: "in-process tonic clients, gateway in its own process",
            measure: format!(
                "fetches past the window's end (start >= {RECORDS}) after the short page was answered ({past_end} before or after)"
            ),
            value: format!("{past_end_after} fetches"),
            reference: format!("{} upstream requests", fetches.len()),
            ratio: past_end_after as f64 / fetches.len().max(1) as f64,
            target: "0",
            met: past_end_after == 0,
        },
    ]
}

/// P9: a `Follow` backfill of 1,000,000 records (pages of 1000, 100 ms per upstream
/// request) read as fast as possible, against the concurrency bound: as many pages in
/// flight as the prefetch and the upstream ceiling allow, 1000 records each per round
/// trip. The gateway runs as its own process, for its peak RSS.
async fn p9_backfill() -> Row {
    const RECORDS: usize = 1_000_000;
    let latency = Duration::from_millis(100);
    let sim = support::simulator(SimulatorConfig {
        records: RECORDS,
        latency,
        ..Default::default()
    })
    .await;
    let (mut child, addr) = support::spawn_gateway_binary(&sim.base_url(), &[]);
    // The newest record is dated at the simulator's start: after lag and a poll
    // interval the first range holds the whole log, so reading is what is timed.
    tokio::time::sleep(support::follow::LAG + support::follow::POLL).await;
    let cpu = |pid| support::h2load::cpu_time(pid);
    let (gateway_cpu, own_cpu) = (cpu(child.id()), cpu(std::process::id()));
    let faults = support::h2load::minor_faults(child.id());
    let t = Instant::now();
    let (got, _) = support::follow::backfill(&addr, RECORDS).await;
    let took = t.elapsed();
    // Where the two cores went: the gateway's process, and this one's (simulator and
    // client).
    let gateway_cpu = cpu(child.id()).saturating_sub(gateway_cpu);
    let own_cpu = cpu(std::process::id()).saturating_sub(own_cpu);
    let faults = support::h2load::minor_faults(child.id()).saturating_sub(faults);
    trace_requests(&sim, t);
    let busy = average_in_flight(&sim, t, took, latency);
    let empty = sim.empty_page_count(AuditEndpoint::Range);
    let peak = support::vm_hwm_kib(child.id()) as f64 / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    sim.shutdown();
    let defaults = audit_gateway::GatewayConfig::DEFAULT;
    let in_flight = defaults.stream_prefetch.min(defaults.upstream.concurrency);
    let bound = in_flight as f64 * 1000.0 / latency.as_secs_f64();
    let rate = got as f64 / took.as_secs_f64();
    Row {
        id: "P9",
        generator: "in-process tonic client, gateway in its own process",
        measure: format!(
            "Follow backfill of 1,000,000 records from since=0, pages of 1000 at {latency:?}/request, default settings ({got} delivered in {took:.2?}, {} range requests ({empty} empty), at most {} at once and {busy:.1} on average; gateway peak RSS {peak:.1} MiB; CPU: gateway {:.2}s ({faults} page faults), simulator and client {:.2}s)",
            sim.request_count_of(AuditEndpoint::Range),
            sim.max_in_flight(),
            gateway_cpu.as_secs_f64(),
            own_cpu.as_secs_f64(),
        ),
        value: format!("{rate:.0} records/s"),
        reference: format!("bound {in_flight} x 1000 / {latency:?} = {bound:.0} records/s"),
        ratio: rate / bound,
        target: ">= 0.9x the bound",
        met: rate / bound >= 0.9,
    }
}

/// P8: upstream range requests per poll interval with 100 followers of one filter,
/// against 1 follower (5 ticks each, poll 1 s, a live log of 50 records/s).
async fn p8_followers() -> Row {
    let (one, _) = support::follow::upstream_per_tick(1).await;
    let (hundred, records) = support::follow::upstream_per_tick(100).await;
    let same = records.iter().min() == records.iter().max();
    let ratio = hundred / one;
    Row {
        id: "P8",
        generator: "in-process tonic followers",
        measure: format!(
            "Follow: upstream requests per poll interval, 100 followers of one filter ({})",
            if same {
                "all received the same records"
            } else {
                "records DIFFER between followers"
            }
        ),
        value: format!("{hundred:.1} per tick"),
        reference: format!("1 follower {one:.1} per tick"),
        ratio,
        target: "<= 1.1x",
        met: ratio <= 1.1,
    }
}

/// The gateway binary's peak RSS (VmHWM) streaming `records` records to a reader pausing
/// 10 ms per 1000-record message, started with `extra` flags; with the records delivered.
async fn peak_rss(records: usize, extra: &[&str]) -> (f64, usize) {
    let sim = support::simulator(SimulatorConfig {
        records,
        max_limit: Some(1000),
        ..Default::default()
    })
    .await;
    let (mut child, addr) = support::spawn_gateway_binary(&sim.base_url(), extra);
    let mut c = support::grpc(&addr).await;
    let (got, _) = support::stream::stream(&mut c, Duration::from_millis(10)).await;
    let peak = support::vm_hwm_kib(child.id()) as f64 / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    sim.shutdown();
    (peak, got)
}

/// P4: the gateway binary's peak RSS (default settings) streaming 1,000,000 records to a
/// slow reader, against the same at 10,000 records (and, for where growth stops,
/// 100,000). "Flat": at most 1.25× the small window's peak. Then, as a diagnosis (not
/// the target), 1,000,000 records with a smaller page cache and with a shallower
/// prefetch, to show what the peak is made of.
async fn p4_peak_rss() -> Vec<Row> {
    // "Flat from 100,000 on": the 1,000,000-record peak against the 100,000-record one
    // (by 100,000 records the page cache has filled; 10,000 records never fill it).
    let (small, got_small) = peak_rss(10_000, &[]).await;
    let (mid, got_mid) = peak_rss(100_000, &[]).await;
    let (large, got_large) = peak_rss(1_000_000, &[]).await;
    let ratio = large / mid;
    let mut rows = vec![Row {
        id: "P4",
        generator: "tonic client in the bench process",
        measure: format!(
            "gateway peak RSS streaming 1,000,000 records to a slow reader (10 ms/message), default settings; 10,000 records: {small:.1} MiB ({got_small} / {got_mid} / {got_large} records delivered)"
        ),
        value: format!("{large:.1} MiB"),
        reference: format!("100,000 records {mid:.1} MiB"),
        ratio,
        target: "<= 48 MiB, flat (<= 1.1x)",
        met: large <= 48.0 && ratio <= 1.1,
    }];
    for flags in [["--cache-max-bytes", "4MiB"], ["--stream-prefetch", "4"]] {
        let (peak, got) = peak_rss(1_000_000, &flags).await;
        let ratio = peak / mid;
        rows.push(Row {
            id: "P4",
            generator: "tonic client in the bench process",
            measure: format!(
                "diagnosis: the same 1,000,000 records with {} ({got} delivered)",
                flags.join(" ")
            ),
            value: format!("{peak:.1} MiB"),
            reference: format!("100,000 records {mid:.1} MiB (default settings)"),
            ratio,
            target: "<= 48 MiB",
            met: peak <= 48.0,
        });
    }
    rows
}

/// How many requests the simulator held on average over `took` from `t`, each for
/// `latency` from its arrival (what its answer takes at least).
fn average_in_flight(
    sim: &confluence_sim::SimulatorHandle,
    t: Instant,
    took: Duration,
    latency: Duration,
) -> f64 {
    let end = t + took;
    let held: Duration = sim
        .requests()
        .iter()
        .map(|r| {
            let (from, to) = (r.received.max(t), (r.received + latency).min(end));
            to.saturating_duration_since(from)
        })
        .sum();
    held.as_secs_f64() / took.as_secs_f64().max(f64::EPSILON)
}

/// With `BENCH_TRACE` set, prints every request the simulator saw, from `t` on.
fn trace_requests(sim: &confluence_sim::SimulatorHandle, t: Instant) {
    if std::env::var_os("BENCH_TRACE").is_none() {
        return;
    }
    for r in sim.requests() {
        let q: Vec<String> = r
            .query
            .iter()
            .filter(|(k, _)| k != "searchString")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        eprintln!(
            "{:>9.1} ms {}",
            r.received.saturating_duration_since(t).as_secs_f64() * 1e3,
            q.join("&")
        );
    }
}
