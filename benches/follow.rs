//! Figures for `Follow`, printed (not asserted):
//!
//! 1. upstream range requests per poll interval with 1 follower and with 100 followers of
//!    the same filter on one gateway, over a live simulated log, and whether every
//!    follower received the same records;
//! 2. the delay from a record's visibility upstream to its delivery (receipt time −
//!    `creationDate`, the two being equal with no late records), p50/p99/max, against the
//!    floor the design implies (lag + up to one poll interval, + the replica's tick
//!    offset);
//! 3. the gateway's peak RSS (its own process) during a 500,000-record backfill read as
//!    fast as possible, with its duration, rate and upstream requests, and 10,000- and
//!    200,000-record backfills as references (memory should not grow with the log).
//!
//! Run: `cargo bench --bench follow` (release build).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod support;

use confluence_sim::{AuditEndpoint, SimulatorConfig};
use support::follow::{
    LAG, LIVE, POLL, TICKS, backfill, client, live_setup, request, upstream_per_tick,
};

/// Runs the three measurements in turn, on one runtime.
fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        shared_ticks().await;
        delivery_delay().await;
        backfill_rss().await;
    });
}

/// Now, epoch ms, on the clock the simulator dates its live records by.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Part 1: upstream requests per tick with 1 and with 100 followers, and their ratio.
async fn shared_ticks() {
    println!(
        "[cargo bench --bench follow] 1. Follow: upstream range requests per poll interval, followers of one filter on one gateway (poll {POLL:?}, lag {LAG:?}, live log {} records/s in bursts of up to {}, {TICKS} ticks)",
        LIVE.per_second, LIVE.burst
    );
    let mut per_tick = Vec::new();
    for followers in [1, 100] {
        let (cost, records) = upstream_per_tick(followers).await;
        let (min, max) = (
            records.iter().min().copied().unwrap_or(0),
            records.iter().max().copied().unwrap_or(0),
        );
        println!(
            "  {followers:>3} follower(s): {cost:.1} upstream requests per tick; records per follower over the ticks: min {min} max {max} ({})",
            if min == max {
                "all equal"
            } else {
                "NOT all equal"
            }
        );
        per_tick.push(cost);
    }
    println!(
        "  ratio 100 / 1 followers: {:.2}x (target <= 1.1x)",
        per_tick[1] / per_tick[0]
    );
}

/// Part 2: receipt time − `creationDate` of each record one follower of a live log gets.
async fn delivery_delay() {
    let run = Duration::from_secs(12);
    println!(
        "[cargo bench --bench follow] 2. Follow: delay from a record's visibility upstream to its delivery (receipt - creationDate, no late records), 1 follower, poll {POLL:?}, lag {LAG:?}, live log {} records/s, {run:?}",
        LIVE.per_second
    );
    let (sim, addr, stop) = live_setup().await;
    let mut c = client(&addr).await;
    let mut s = c.follow(request(None)).await.expect("follow").into_inner();
    let (mut delays, mut offsets) = (Vec::new(), Vec::new());
    let (lag_ms, poll_ms) = (LAG.as_millis() as i64, POLL.as_millis() as i64);
    let end = Instant::now() + run;
    while Instant::now() < end {
        let Ok(Ok(Some(m))) = tokio::time::timeout(POLL * 3, s.message()).await else {
            break;
        };
        let at = now_ms();
        if m.records.is_empty() {
            continue;
        }
        // Where in the poll grid the ticks land, past `lag`: this replica's offset into
        // each tick (drawn at start, under half the poll interval), plus the work.
        offsets.push(Duration::from_millis(
            (at - lag_ms).rem_euclid(poll_ms) as u64
        ));
        delays.extend(
            m.records
                .iter()
                .map(|r| Duration::from_millis((at - r.creation_date).max(0) as u64)),
        );
    }
    drop(s);
    let _ = stop.send(());
    sim.shutdown();
    if delays.is_empty() {
        println!("  no record was delivered");
        return;
    }
    let offset = support::pct(&mut offsets, 50);
    println!(
        "  {} records: p50 {} ms, p99 {} ms, max {} ms (min {} ms)",
        delays.len(),
        support::pct(&mut delays, 50).as_millis(),
        support::pct(&mut delays, 99).as_millis(),
        support::pct(&mut delays, 100).as_millis(),
        support::pct(&mut delays, 0).as_millis(),
    );
    println!(
        "  design: lag {} ms + up to one poll {} ms = {}..{} ms, plus this replica's tick offset (< poll / 2), measured at {} ms (median tick arrival past grid + lag) => {}..{} ms",
        LAG.as_millis(),
        POLL.as_millis(),
        LAG.as_millis(),
        (LAG + POLL).as_millis(),
        offset.as_millis(),
        (LAG + offset).as_millis(),
        (LAG + POLL + offset).as_millis()
    );
}

/// Part 3: the gateway binary's peak RSS, duration, rate and upstream requests of
/// backfills of growing logs.
async fn backfill_rss() {
    println!(
        "[cargo bench --bench follow] 3. Follow: backfill from since=0 with max_records = the log's size, read as fast as possible; gateway as its own process (default settings), simulator in the bench process"
    );
    for records in [10_000usize, 200_000, 500_000] {
        let sim = support::simulator(SimulatorConfig {
            records,
            ..Default::default()
        })
        .await;
        let (mut child, addr) = support::spawn_gateway_binary(&sim.base_url(), &[]);
        // The newest record is dated at the simulator's start: once lag and a poll
        // interval have passed, the follower's first range holds the whole log, so the
        // time measured is reading, not waiting for a tick.
        tokio::time::sleep(LAG + POLL).await;
        let idle = support::vm_hwm_kib(child.id());
        let t = Instant::now();
        let (got, messages) = backfill(&addr, records).await;
        let took = t.elapsed();
        let hwm = support::vm_hwm_kib(child.id());
        let requests = sim.request_count_of(AuditEndpoint::Range);
        println!(
            "  {records:>7} records: {got} delivered in {messages} messages, {took:.2?} ({:.0} records/s), {requests} upstream range requests ({:.2} per 1000 records); gateway peak RSS {:.1} MiB (at start {:.1} MiB)",
            got as f64 / took.as_secs_f64(),
            requests as f64 * 1000.0 / got.max(1) as f64,
            hwm as f64 / 1024.0,
            idle as f64 / 1024.0
        );
        let _ = child.kill();
        let _ = child.wait();
        sim.shutdown();
    }
}
