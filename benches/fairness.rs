//! Figures for callers sharing one gateway (fair share), printed (not asserted):
//!
//! 1. Greedy vs polite callers: the latency of a polite caller's `GetSince` calls (each a
//!    page nobody else asks, so each needs Confluence), p50 and p99, alone and beside a
//!    greedy caller (40 `StreamSince` streams over distinct windows read slowly, and 20
//!    loops of `GetSince` cache misses), with fair queueing (a tokens file names the two
//!    callers) and without it (no tokens file: both are the one anonymous caller, one
//!    queue). Confluence answers each request in 200 ms; `--upstream-concurrency` is the
//!    default 8, so the greedy caller alone asks far more than Confluence may be sent.
//! 2. Cool-down probes: one 429 with `Retry-After: 86400` (a day), capped by
//!    `--upstream-max-cooldown 5s`; 50 callers ask for pages nobody asked before for
//!    ~12 s; the upstream requests from the 429 to the end of the probe's round trip
//!    (one request, the probe, is the target), and the probes counted.
//!
//! Exits non-zero only when something breaks functionally: a polite call fails alone or
//! with fair queueing on, a call of the cool-down run fails, or no probe ever comes.
//! Without fair queueing the polite caller's failures are a figure, not a break, as long
//! as they are its own deadline (DEADLINE_EXCEEDED). Timings are printed, never asserted.
//!
//! Run: `cargo bench --bench fairness` (release build).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

mod support;

use audit_gateway::{
    metrics::METRICS,
    pb::{self, audit_service_client::AuditServiceClient},
};
use confluence_sim::{Fault, RecordedRequest, SimulatorConfig, SimulatorHandle};
use tokio::sync::oneshot;
use tonic::{Code, Request, metadata::MetadataValue, transport::Channel};

/// Confluence's answer time, every request.
const LATENCY: Duration = Duration::from_millis(200);
/// Records in the simulated log (5 s apart: every window below holds all of them).
const RECORDS: usize = 3_000;
/// The polite caller's rounds, and its calls per round (one at a time).
const ROUNDS: usize = 3;
const CALLS: usize = 10;
/// The polite caller's deadline per call.
const DEADLINE: Duration = Duration::from_secs(20);

type Client = AuditServiceClient<Channel>;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ok = rt.block_on(async {
        let shares = greedy_and_polite().await;
        let probes = cool_down_probes().await;
        shares && probes
    });
    if !ok {
        eprintln!("fairness: something failed functionally (see above)");
        std::process::exit(1);
    }
}

async fn client(addr: &str) -> Client {
    AuditServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
}

/// `message` as `caller` sends it: `authorization: Bearer tok-{caller}`, or nothing for
/// the anonymous caller.
fn as_caller<T>(caller: Option<&str>, message: T) -> Request<T> {
    let mut req = Request::new(message);
    if let Some(name) = caller {
        let value = MetadataValue::try_from(format!("Bearer tok-{name}")).expect("ascii");
        req.metadata_mut().insert("authorization", value);
    }
    req
}

/// A tokens file naming the greedy and the polite caller.
fn tokens_file() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bench-fairness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("callers");
    std::fs::write(&file, "greedy:tok-greedy\npolite:tok-polite\n").expect("write");
    file
}

/// A simulator and a gateway in front of it, the gateway stopped when the sender is
/// used or dropped.
async fn sim_and_gateway(
    tweak: impl FnOnce(&mut audit_gateway::GatewayConfig),
) -> (SimulatorHandle, String, oneshot::Sender<()>) {
    let sim = support::simulator(SimulatorConfig {
        records: RECORDS,
        latency: LATENCY,
        ..Default::default()
    })
    .await;
    let (stop, stopped) = oneshot::channel::<()>();
    let addr = support::gateway(&sim.base_url(), tweak, async move {
        let _ = stopped.await;
    })
    .await
    .to_string();
    (sim, addr, stop)
}

/// One polite call: when it was made, the search string only it asks for, and how it
/// ended.
struct PoliteCall {
    called: Instant,
    search: String,
    outcome: Result<Duration, Code>,
}

/// The polite caller's `round`: ten calls one at a time, each a page nobody else asks
/// (its own search string), each with a 20-s deadline.
async fn polite_round(
    client: &mut Client,
    caller: Option<&str>,
    tag: &str,
    round: usize,
) -> Vec<PoliteCall> {
    let mut out = Vec::new();
    for i in 0..CALLS {
        let search = format!("polite-{tag}-{round}-{i}");
        let mut req = as_caller(
            caller,
            pb::GetSinceRequest {
                search_string: Some(search.clone()),
                limit: Some(5),
                ..Default::default()
            },
        );
        req.set_timeout(DEADLINE);
        let called = Instant::now();
        let outcome = match client.get_since(req).await {
            Ok(_) => Ok(called.elapsed()),
            Err(status) => Err(status.code()),
        };
        out.push(PoliteCall {
            called,
            search,
            outcome,
        });
    }
    out
}

/// What the polite caller saw in one setting.
struct Polite {
    p50: Duration,
    p99: Duration,
    calls: usize,
    failures: BTreeMap<String, usize>,
    /// From each call to its request reaching Confluence (queueing and the gateway's own
    /// work), p50 and max.
    queued: (Duration, Duration),
    /// Other requests that reached Confluence between each call and its own request, p50
    /// and max.
    ahead: (usize, usize),
}

impl Polite {
    fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    fn only_deadlines(&self) -> bool {
        self.failures.keys().all(|k| k == "DeadlineExceeded")
    }
}

/// Reads the polite calls against what the simulator received.
fn polite_figures(calls: &[PoliteCall], sim: &SimulatorHandle) -> Polite {
    let requests = sim.requests();
    let own = |search: &str| -> Option<&RecordedRequest> {
        requests
            .iter()
            .find(|r| r.param("searchString") == Some(search))
    };
    let mut times: Vec<Duration> = calls.iter().filter_map(|c| c.outcome.ok()).collect();
    let mut failures = BTreeMap::new();
    for c in calls {
        if let Err(code) = c.outcome {
            *failures.entry(format!("{code:?}")).or_insert(0) += 1;
        }
    }
    let mut queued = Vec::new();
    let mut ahead = Vec::new();
    for c in calls {
        let Some(mine) = own(&c.search) else { continue };
        queued.push(mine.received.saturating_duration_since(c.called));
        ahead.push(
            requests
                .iter()
                .filter(|r| r.received > c.called && r.received < mine.received)
                .count(),
        );
    }
    let (p50, p99) = if times.is_empty() {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (support::pct(&mut times, 50), support::pct(&mut times, 99))
    };
    ahead.sort_unstable();
    let queued = if queued.is_empty() {
        (Duration::ZERO, Duration::ZERO)
    } else {
        let max = queued.iter().max().copied().unwrap_or_default();
        (support::pct(&mut queued, 50), max)
    };
    Polite {
        p50,
        p99,
        calls: calls.len(),
        failures,
        queued,
        ahead: (
            ahead.get(ahead.len() / 2).copied().unwrap_or(0),
            ahead.last().copied().unwrap_or(0),
        ),
    }
}

/// What the greedy caller did while the polite one was measured.
struct Greedy {
    streams_opened: AtomicUsize,
    messages: AtomicUsize,
    /// Messages read by each stream.
    per_stream: Vec<AtomicUsize>,
    gets_ok: AtomicUsize,
    errors: Mutex<BTreeMap<String, usize>>,
}

impl Greedy {
    fn new() -> Self {
        Self {
            streams_opened: AtomicUsize::new(0),
            messages: AtomicUsize::new(0),
            per_stream: (0..40).map(|_| AtomicUsize::new(0)).collect(),
            gets_ok: AtomicUsize::new(0),
            errors: Mutex::default(),
        }
    }

    fn error(&self, code: Code) {
        let mut errors = self.errors.lock().expect("errors");
        *errors.entry(format!("{code:?}")).or_insert(0) += 1;
    }
}

/// Starts the greedy caller on its own connections: 40 streams over distinct windows
/// (`30 + i` days, pages of 20), each read with a 50-ms pause per message, and 20 tasks
/// each looping `GetSince` calls on pages of their own (distinct `start`: every call a
/// cache miss). Runs until the handles are aborted.
async fn greedy(
    addr: &str,
    caller: Option<&'static str>,
    seen: &Arc<Greedy>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(client(addr).await);
    }
    let mut load = Vec::new();
    for w in 0..40i64 {
        let mut c = connections[w as usize % 4].clone();
        let seen = seen.clone();
        load.push(tokio::spawn(async move {
            let req = pb::StreamSinceRequest {
                number: Some(30 + w),
                units: pb::TimeUnit::Days.into(),
                page_size: Some(20),
                ..Default::default()
            };
            let mut stream = match c.stream_since(as_caller(caller, req)).await {
                Ok(s) => s.into_inner(),
                Err(s) => return seen.error(s.code()),
            };
            seen.streams_opened.fetch_add(1, Ordering::Relaxed);
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {
                        seen.messages.fetch_add(1, Ordering::Relaxed);
                        seen.per_stream[w as usize].fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(None) => return,
                    Err(s) => return seen.error(s.code()),
                }
            }
        }));
    }
    for t in 0..20i32 {
        let mut c = connections[t as usize % 4].clone();
        let seen = seen.clone();
        load.push(tokio::spawn(async move {
            for n in 0.. {
                let req = pb::GetSinceRequest {
                    start: Some(t * 100_000 + n),
                    limit: Some(5),
                    ..Default::default()
                };
                match c.get_since(as_caller(caller, req)).await {
                    Ok(_) => {
                        seen.gets_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => seen.error(s.code()),
                }
            }
        }));
    }
    load
}

/// One gateway, fair queueing on (a tokens file naming two callers) or off (no file:
/// both are the anonymous caller): the polite caller alone, then beside the greedy one.
async fn polite_beside_greedy(fair: bool, file: &Path) -> (Polite, Polite) {
    let (greedy_name, polite_name, tag) = if fair {
        (Some("greedy"), Some("polite"), "on")
    } else {
        (None, None, "off")
    };
    let file = file.to_owned();
    let (sim, addr, stop) = sim_and_gateway(move |c| {
        if fair {
            c.caller_tokens_file = Some(file);
            // No per-caller miss limit: the greedy caller is queued, never refused.
            c.caller_miss_rate = 0;
        }
    })
    .await;
    let mut polite_client = client(&addr).await;
    let mut alone_calls = Vec::new();
    for round in 0..ROUNDS {
        alone_calls.extend(polite_round(&mut polite_client, polite_name, tag, round).await);
    }
    let alone = polite_figures(&alone_calls, &sim);

    let seen = Arc::new(Greedy::new());
    let (greedy0, polite0, anon0) = (
        METRICS.caller_upstream_requests("greedy"),
        METRICS.caller_upstream_requests("polite"),
        METRICS.caller_upstream_requests("anonymous"),
    );
    let load = greedy(&addr, greedy_name, &seen).await;
    // The greedy caller's queue is full, and its streams past their first pages, before
    // the polite caller asks again.
    let before = sim.request_count();
    let warm = Instant::now();
    while sim.request_count() < before + 80 && warm.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests_before = sim.request_count();
    let messages_before = seen.messages.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut beside_calls = Vec::new();
    for round in ROUNDS..2 * ROUNDS {
        beside_calls.extend(polite_round(&mut polite_client, polite_name, tag, round).await);
    }
    let measured = t.elapsed();
    let upstream = sim.request_count() - requests_before;
    let messages = seen.messages.load(Ordering::Relaxed) - messages_before;
    for l in &load {
        l.abort();
    }
    // Whose requests reached Confluence while the polite caller was measured: the
    // streams' pages ask by DAYS, the GetSince loops by the default MONTHS, the polite
    // caller by its search string.
    let (mut stream_pages, mut loops) = (0, 0);
    let during: Vec<RecordedRequest> = sim
        .requests()
        .into_iter()
        .filter(|r| r.received >= t && r.received <= t + measured)
        .collect();
    for r in &during {
        if r.param("units") == Some("DAYS") {
            stream_pages += 1;
        } else if r.param("searchString").is_none() {
            loops += 1;
        }
    }
    let beside = polite_figures(&beside_calls, &sim);
    let slots = |name: &str, base: u64| METRICS.caller_upstream_requests(name) - base;
    let granted = if fair {
        format!(
            "upstream slots granted: greedy {}, polite {}",
            slots("greedy", greedy0),
            slots("polite", polite0)
        )
    } else {
        format!(
            "upstream slots granted: anonymous (both) {}",
            slots("anonymous", anon0)
        )
    };
    let errors = seen.errors.lock().expect("errors").clone();
    let per_stream: Vec<usize> = seen
        .per_stream
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    let (fewest, most) = (
        per_stream.iter().min().copied().unwrap_or(0),
        per_stream.iter().max().copied().unwrap_or(0),
    );
    println!(
        "    greedy caller over the run ({}): {}/40 streams open, {} stream messages read ({fewest} to {most} per stream; {messages} while the polite caller was measured), {} GetSince answered, errors {:?}; {granted}; while the polite caller was measured, {upstream} upstream requests in {measured:.1?} ({:.1}/s): {stream_pages} streams' pages, {loops} of the GetSince loops",
        if fair {
            "fair queueing on"
        } else {
            "fair queueing off"
        },
        seen.streams_opened.load(Ordering::Relaxed),
        seen.messages.load(Ordering::Relaxed),
        seen.gets_ok.load(Ordering::Relaxed),
        errors,
        upstream as f64 / measured.as_secs_f64(),
    );
    let _ = stop.send(());
    sim.shutdown();
    // Let the gateway's shutdown and the aborted tasks settle before the next setting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (alone, beside)
}

fn polite_row(what: &str, p: &Polite, alone: &Polite) {
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "  {what:<34} p50 {:>9.1?} ({:.2}x alone)  p99 {:>9.1?} ({:.2}x alone)  failures {}/{}{}  | before its request reached Confluence: p50 {:.1?}, max {:.1?}; other requests reaching Confluence in that time: p50 {}, max {}",
        p.p50,
        ratio(p.p50, alone.p50),
        p.p99,
        ratio(p.p99, alone.p99),
        p.failed(),
        p.calls,
        if p.failures.is_empty() {
            String::new()
        } else {
            format!(" {:?}", p.failures)
        },
        p.queued.0,
        p.queued.1,
        p.ahead.0,
        p.ahead.1,
    );
}

/// Part 1; false when a polite call failed where it must not.
async fn greedy_and_polite() -> bool {
    println!(
        "[cargo bench --bench fairness] 1. A polite caller's GetSince latency, alone and beside a greedy caller (40 StreamSince of distinct windows, pages of 20, read with 50 ms per message, + 20 loops of GetSince misses); {ROUNDS} rounds of {CALLS} sequential calls, each a page nobody else asks, {DEADLINE:?} deadline; Confluence latency {LATENCY:?}, {RECORDS} records, --upstream-concurrency 8 (default). p99 of {} calls is the slowest. Ratios are to 'alone' on the same gateway.",
        ROUNDS * CALLS
    );
    let file = tokens_file();
    let (on_alone, on_beside) = polite_beside_greedy(true, &file).await;
    let (off_alone, off_beside) = polite_beside_greedy(false, &file).await;
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
    polite_row("alone (tokens file: 2 callers)", &on_alone, &on_alone);
    polite_row("beside greedy, fair queueing ON", &on_beside, &on_alone);
    polite_row("alone (no tokens file)", &off_alone, &off_alone);
    polite_row("beside greedy, fair queueing OFF", &off_beside, &off_alone);
    let target = on_beside.p50.as_secs_f64() <= 1.5 * on_alone.p50.as_secs_f64();
    println!(
        "  target (fair queueing on): p50 <= 1.5x alone and no failure: {}",
        if target && on_beside.failed() == 0 {
            "met"
        } else {
            "MISSED"
        }
    );
    let mut ok = true;
    for (what, p) in [
        ("alone (tokens file)", &on_alone),
        ("beside greedy, fair queueing on", &on_beside),
        ("alone (no tokens file)", &off_alone),
    ] {
        if p.failed() > 0 {
            eprintln!("FAILED: polite calls failed {what}: {:?}", p.failures);
            ok = false;
        }
    }
    if !off_beside.only_deadlines() {
        eprintln!(
            "FAILED: polite calls beside greedy without fair queueing failed other than by their deadline: {:?}",
            off_beside.failures
        );
        ok = false;
    }
    ok
}

/// Part 2; false when a call failed or no probe came.
async fn cool_down_probes() -> bool {
    const CALLERS: i32 = 50;
    const RUN: Duration = Duration::from_secs(12);
    let max_cooldown = Duration::from_secs(5);
    println!(
        "[cargo bench --bench fairness] 2. Cool-down probes: one 429 with Retry-After: 86400, --upstream-max-cooldown {max_cooldown:?}, --upstream-max-backoff 30s; {CALLERS} callers each asking pages nobody asked (distinct start, 20-s deadline) for ~{RUN:?} after the 429; Confluence latency {LATENCY:?}"
    );
    let (sim, addr, stop) = sim_and_gateway(|c| {
        c.upstream.max_cooldown = max_cooldown;
        c.upstream.max_backoff = Duration::from_secs(30);
    })
    .await;
    let probes0 = METRICS.upstream_cooldown_probes.get();
    let cooldowns0 = METRICS.upstream_cooldowns.get();
    let before = sim.requests().len();
    sim.push_faults([Fault::Status {
        code: 429,
        retry_after: Some("86400".into()),
        body: None,
    }]);
    let page = |start: i32| {
        let mut req = Request::new(pb::GetSinceRequest {
            start: Some(start),
            limit: Some(10),
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(20));
        req
    };
    let mut first = client(&addr).await;
    let t0 = Instant::now();
    let trigger = tokio::spawn(async move { first.get_since(page(0)).await.map(|_| ()) });
    // The 429 is answered and its cool-down started before the callers come.
    while METRICS.upstream_cooldowns.get() == cooldowns0 {
        if t0.elapsed() > Duration::from_secs(10) {
            eprintln!("FAILED: the 429 started no cool-down within 10 s");
            let _ = stop.send(());
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let Some(at_429) = sim
        .requests()
        .get(before)
        .filter(|r| r.endpoint.is_some())
        .map(|r| r.received)
    else {
        eprintln!("FAILED: the 429's request is not the simulator's next audit request");
        let _ = stop.send(());
        return false;
    };
    let end = at_429 + RUN;
    let failures = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let mut cl = client(&addr).await;
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut n = 0;
            while Instant::now() < end {
                let t = Instant::now();
                match cl.get_since(page(1 + c * 100_000 + n)).await {
                    Ok(_) => times.push(t.elapsed()),
                    Err(s) => {
                        *failures
                            .lock()
                            .expect("failures")
                            .entry(format!("{:?}", s.code()))
                            .or_insert(0) += 1;
                    }
                }
                n += 1;
            }
            times
        }));
    }
    let mut firsts = Vec::new();
    let mut calls_ok = 0;
    for task in tasks {
        let times = task.await.unwrap_or_default();
        calls_ok += times.len();
        firsts.extend(times.first().copied());
    }
    let trigger_ok = matches!(trigger.await, Ok(Ok(())));
    let failures = failures.lock().expect("failures").clone();
    let requests: Vec<RecordedRequest> = sim.requests()[before..]
        .iter()
        .filter(|r| r.endpoint.is_some())
        .cloned()
        .collect();
    let probes = METRICS.upstream_cooldown_probes.get() - probes0;
    let _ = stop.send(());
    sim.shutdown();

    let after = &requests[1..];
    let Some(probe) = after.first() else {
        eprintln!("FAILED: no upstream request after the 429 in {RUN:?}");
        return false;
    };
    let answer_back = probe.received + LATENCY;
    let in_round_trip = after.iter().filter(|r| r.received < answer_back).count();
    let next = after.iter().find(|r| r.received >= answer_back);
    println!(
        "  first request after the 429 (the probe) reached Confluence {:.2?} after the 429 did (a {LATENCY:?} answer + the {max_cooldown:?} cool-down: {:.2?})",
        probe.received - at_429,
        LATENCY + max_cooldown
    );
    println!(
        "  upstream requests from the 429 to the end of the probe's round trip (received before probe + {LATENCY:?}), the probe included: {in_round_trip} (target 1); the next reached Confluence {} after the probe",
        next.map_or("never".to_owned(), |r| format!(
            "{:.1?}",
            r.received - probe.received
        ))
    );
    println!(
        "  upstream_cooldown_probes: {probes} in this run (METRICS.upstream_cooldown_probes.get() = {}; target: 1 per cool-down end, 1 cool-down); {} upstream requests after the 429 in all",
        METRICS.upstream_cooldown_probes.get(),
        after.len()
    );
    let waited = if firsts.is_empty() {
        "none".to_owned()
    } else {
        format!(
            "p50 {:.2?}, max {:.2?}",
            support::pct(&mut firsts, 50),
            firsts.iter().max().copied().unwrap_or_default()
        )
    };
    println!(
        "  calls: {calls_ok} answered, failures {failures:?}, the 429's own call {} (its retry waits out the cool-down); each caller's first call (made during the cool-down, {:.2?} after it began) took {waited}",
        if trigger_ok { "answered" } else { "FAILED" },
        started.saturating_duration_since(at_429)
    );
    let mut ok = true;
    if !failures.is_empty() || !trigger_ok {
        eprintln!(
            "FAILED: calls failed in the cool-down run: {failures:?}, the 429's own call answered: {trigger_ok}"
        );
        ok = false;
    }
    if probes == 0 {
        eprintln!("FAILED: no probe was counted");
        ok = false;
    }
    ok
}
