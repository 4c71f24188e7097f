//! Process-wide metrics, served in Prometheus' text format on `--metrics-listen`, kept
//! with the Prometheus project's client (`prometheus-client`). Labels are fixed sets
//! (methods, status codes, reasons, tiers) and caller names from `--caller-tokens-file`:
//! never a credential, a token, a URL or a search string.

use std::{
    convert::Infallible,
    future::Future,
    sync::{Arc, LazyLock, OnceLock, atomic::AtomicU64},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{
        EncodeLabelSet,
        text::{encode, encode_eof, encode_registry},
    },
    metrics::{
        counter::Counter as PromCounter,
        family::Family,
        gauge::Gauge as PromGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};
use tokio::net::TcpListener;

use crate::{
    error::{GatewayError, UpstreamFailure},
    upstream::clock::ClockOffset,
};

/// A monotonically increasing count.
pub type Counter = PromCounter;
/// A value that goes up and down.
pub type Gauge = PromGauge;

/// `reason` of a failed upstream attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// `caller`: a name from `--caller-tokens-file`, `anonymous`, or `other` (every
/// identity not named in the file: passthrough credentials, mesh headers, certificates).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallerLabel {
    caller: String,
}

/// A caller (as [`CallerLabel`]) and the cap that refused it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapLabels {
    caller: String,
    cap: &'static str,
}

/// A gRPC method and the status code it ended with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    grpc_method: &'static str,
    grpc_code: &'static str,
}

/// The gateway's version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// A gRPC method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    grpc_method: &'static str,
}

/// How an upstream attempt ended: its HTTP status, or `error` without one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// A cache tier and what a lookup found.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    tier: &'static str,
    result: &'static str,
}

/// A page cache tier.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tier {
    /// The in-process tier.
    Memory,
    /// The shared Redis tier.
    Redis,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The methods of `confluence.audit.v1.AuditService`, whose call series are kept at hand.
const METHODS: [&str; 4] = ["GetSince", "StreamSince", "Follow", "GetRetention"];
/// gRPC's status codes, 0 to 16.
const CODES: usize = 17;

/// One method's call series, each looked up in its family the first time it is counted
/// and held from then on: a family's look-up hashes its labels and takes a lock, on
/// every call otherwise. Created lazily, so `/metrics` lists only series that happened.
#[derive(Default)]
struct CallSeries {
    /// By status code.
    handled: [OnceLock<Counter>; CODES],
    seconds: OnceLock<Histogram>,
}

/// Seconds from 1 ms to about 2 minutes: a cache hit to a slow upstream page.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// Declares the plain counters: a field each, with its help text, registered under its
/// name. One list, so a counter cannot be declared and forgotten at registration.
macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident: $help:literal,)*) => {
        /// The metrics that are one counter each (`Metrics` derefs to them).
        pub struct Counters {
            $($(#[$doc])* pub $field: Counter,)*
        }

        impl Counters {
            fn register(registry: &mut Registry) -> Self {
                Self {
                    $($field: {
                        let c = Counter::default();
                        registry.register(stringify!($field), $help, c.clone());
                        c
                    },)*
                }
            }
        }
    };
}

counters! {
    /// Pages asked of the page service (GetSince calls and stream pages).
    page_requests: "Pages asked of the page cache.",
    /// Pages fetched from Confluence (missed by every cache tier).
    page_loads: "Pages fetched from Confluence, missed by every cache tier.",
    /// HTTP attempts sent to Confluence, retries included.
    upstream_attempts: "HTTP attempts sent to Confluence.",
    /// Retries of failed upstream attempts.
    upstream_retries: "Failed Confluence attempts retried.",
    /// Half-open cool-downs probed: one request let through after a cool-down ended.
    upstream_cooldown_probes: "Requests let through to probe Confluence when a cool-down ended.",
    /// Reloads of `--caller-tokens-file` that failed (deleted, unreadable, invalid): the
    /// last good set stays in force.
    caller_tokens_reload_errors: "Failed reloads of the caller tokens file (the last good set stays).",
    /// Reloads of the TLS certificate files that failed (unreadable, invalid, mid-rotation):
    /// the ones in use stay.
    tls_reload_errors: "Failed reloads of the TLS certificate files (the ones in use stay).",
    /// Calls refused without a request because Confluence refused their passthrough
    /// credential within `--passthrough-negative-ttl`.
    passthrough_refused_locally: "Calls refused without a request: Confluence refused their credential lately.",
    /// Cool-downs started or lengthened: a credential's requests held back until the
    /// time Confluence named (`src/upstream/cooldown.rs`).
    upstream_cooldowns: "Cool-downs started or lengthened for a credential after a Retry-After.",
    /// Upstream requests refused without being sent: the credential's cool-down would
    /// outlast the caller's deadline or `--upstream-max-backoff`.
    upstream_cooldown_refusals: "Upstream requests refused during a cool-down too long to wait.",
    /// Failures returned without the retry they could have had: the retry budget
    /// (`src/upstream/budget.rs`) was spent.
    upstream_retry_budget_exhausted: "Failures not retried because the retry budget was spent.",
    /// Pages the in-process tier dropped to stay within `--cache-max-bytes`.
    cache_evictions: "Pages the in-process cache dropped to stay within its size.",
    /// Redis operations that failed or timed out.
    redis_errors: "Redis operations that failed or timed out.",
    /// Redis operations skipped while the tier was paused after an error.
    redis_skipped: "Redis operations skipped while paused after an error.",
    /// Times the Redis tier was found down (one per outage).
    redis_outages: "Times the Redis tier was found down.",
    /// StreamSince calls started.
    streams_started: "StreamSince calls started.",
    /// Records delivered by StreamSince.
    stream_records: "Records delivered by StreamSince.",
    /// Stream pages whose last millisecond held more records than a page (exactly-once
    /// then depends on Confluence listing them in a stable order).
    stream_tie_overflows: "Stream pages whose last millisecond held more records than a page.",
    /// Follow calls started.
    follows_started: "Follow calls started.",
    /// Records delivered by Follow.
    follow_records: "Records delivered by Follow.",
    /// Follow heartbeats (messages without records).
    follow_heartbeats: "Follow messages without records.",
    /// Records found visible upstream more than `lag` after their creation, too late to
    /// be delivered in order: followers should raise `lag`.
    follow_late_records: "Records visible upstream later than the follower's lag: raise lag.",
    /// Milliseconds holding more records than a page, paged by offset by a follower.
    follow_tie_overflows: "Milliseconds holding more records than a page, read by offset.",
    /// Records a range listing returned outside the range asked (bounds rounded upstream),
    /// left to the range that holds them.
    follow_out_of_range_records: "Records Confluence listed outside the date range asked (coarse bounds), not delivered from it.",
    /// Reads at a page's end to learn whether the page held its whole range.
    follow_confirm_reads: "Reads at a page's end confirming that a page held its whole date range.",
}

/// Every metric the gateway keeps.
pub struct Metrics {
    registry: Registry,
    /// The plain counters.
    counters: Counters,
    /// Failed upstream attempts, by reason.
    upstream_failures: Family<ReasonLabel, Counter>,
    /// Upstream attempts by how they ended.
    upstream_requests: Family<StatusLabel, Counter>,
    /// Duration of upstream attempts, body included.
    upstream_seconds: Histogram,
    /// Upstream requests in flight.
    pub upstream_in_flight: Gauge,
    /// The paced limit on requests in flight, of the credential whose limit last moved.
    pub upstream_concurrency_limit: Gauge,
    /// Moves of paced limits, by why they moved.
    upstream_limit_moves: Family<ReasonLabel, Counter>,
    /// Cache lookups by tier and result.
    cache_lookups: Family<LookupLabels, Counter>,
    /// Bytes of encoded pages held by the in-process tier.
    pub cache_bytes: Gauge,
    /// Bytes of the look-ahead budget reserved by streams and followers.
    pub lookahead_bytes: Gauge,
    /// 1 while the Redis tier is found down (its operations skipped), else 0.
    pub redis_down: Gauge,
    /// gRPC calls by method and the status code they ended with.
    grpc_handled: Family<GrpcLabels, Counter>,
    /// Duration of gRPC calls, from the call to its status.
    grpc_seconds: Histograms<MethodLabel>,
    /// `grpc_handled` and `grpc_seconds` of each of `METHODS`, as looked up.
    call_series: [CallSeries; METHODS.len()],
    /// `cache_lookups` by tier (memory, redis) and result (hit, miss), as looked up.
    lookup_series: [[OnceLock<Counter>; 2]; 2],
    /// gRPC streaming calls open (StreamSince streams, Follow followers).
    grpc_open_streams: Family<MethodLabel, Gauge>,
    /// Authenticated calls, by caller name.
    caller_calls: Family<CallerLabel, Counter>,
    /// Upstream request slots granted, by caller (`src/upstream/fair.rs`).
    caller_upstream_requests: Family<CallerLabel, Counter>,
    /// Time waited for an upstream request slot, by caller.
    caller_upstream_wait: Histograms<CallerLabel>,
    /// Calls refused by a per-caller cap, by caller and cap.
    caller_refusals: Family<CapLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl std::ops::Deref for Metrics {
    type Target = Counters;

    fn deref(&self) -> &Counters {
        &self.counters
    }
}

/// `metric`, registered in `registry` under `name` with `help`.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    /// Registers every metric. One entry per metric, in one place, so the list of
    /// what `/metrics` exports reads top to bottom: longer than a function should be.
    fn new() -> Self {
        let mut r = Registry::with_prefix("audit_gateway");
        let counters = Counters::register(&mut r);
        // 1, labelled with the version: dashboards join on it to tell replicas apart
        // during a rollout. The registry keeps it; nothing sets it again.
        registered(
            &mut r,
            "build_info",
            "The gateway's version, as a label of a gauge that is always 1.",
            Family::<VersionLabel, Gauge>::default(),
        )
        .get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        Self {
            counters,
            upstream_failures: registered(
                &mut r,
                "upstream_failures",
                "Failed Confluence attempts, by reason.",
                Family::<ReasonLabel, Counter>::default(),
            ),
            upstream_requests: registered(
                &mut r,
                "upstream_requests",
                "Confluence attempts by HTTP status (error: none came).",
                Family::<StatusLabel, Counter>::default(),
            ),
            upstream_seconds: registered(
                &mut r,
                "upstream_request_duration_seconds",
                "Duration of Confluence attempts, body included.",
                latency_histogram(),
            ),
            upstream_concurrency_limit: registered(
                &mut r,
                "upstream_concurrency_limit",
                "Requests to Confluence allowed in flight now (adaptive pacing), for the credential whose limit last moved.",
                Gauge::default(),
            ),
            upstream_limit_moves: registered(
                &mut r,
                "upstream_concurrency_limit_moves",
                "Moves of the paced limit on requests in flight, by reason (grew, near_limit, rate_limited, latency).",
                Family::<ReasonLabel, Counter>::default(),
            ),
            upstream_in_flight: registered(
                &mut r,
                "upstream_in_flight",
                "Requests in flight to Confluence.",
                Gauge::default(),
            ),
            cache_lookups: registered(
                &mut r,
                "cache_lookups",
                "Page cache lookups by tier (memory, redis) and result (hit, miss).",
                Family::<LookupLabels, Counter>::default(),
            ),
            cache_bytes: registered(
                &mut r,
                "cache_bytes",
                "Bytes of encoded pages held by the in-process cache.",
                Gauge::default(),
            ),
            lookahead_bytes: registered(
                &mut r,
                "stream_lookahead_bytes",
                "Bytes of --stream-buffer-bytes reserved by pages streams and followers fetched ahead.",
                Gauge::default(),
            ),
            redis_down: registered(
                &mut r,
                "redis_down",
                "1 while the Redis tier is found down and its operations are skipped, else 0.",
                Gauge::default(),
            ),
            grpc_handled: registered(
                &mut r,
                "grpc_server_handled",
                "gRPC calls by method and status code.",
                Family::<GrpcLabels, Counter>::default(),
            ),
            grpc_seconds: registered(
                &mut r,
                "grpc_server_handling_seconds",
                "Duration of gRPC calls, from the call to its status.",
                Family::new_with_constructor(latency_histogram),
            ),
            call_series: Default::default(),
            lookup_series: Default::default(),
            grpc_open_streams: registered(
                &mut r,
                "grpc_server_open_streams",
                "Streaming calls open: StreamSince streams and Follow followers.",
                Family::<MethodLabel, Gauge>::default(),
            ),
            caller_calls: registered(
                &mut r,
                "caller_calls",
                "Calls by authenticated callers, by caller name.",
                Family::<CallerLabel, Counter>::default(),
            ),
            caller_upstream_requests: registered(
                &mut r,
                "caller_upstream_requests",
                "Confluence request slots granted by the fair scheduler, by caller.",
                Family::<CallerLabel, Counter>::default(),
            ),
            caller_upstream_wait: registered(
                &mut r,
                "caller_upstream_wait_seconds",
                "Time a caller's request waited for a Confluence request slot.",
                Family::new_with_constructor(latency_histogram),
            ),
            caller_refusals: registered(
                &mut r,
                "caller_refusals",
                "Calls refused by a per-caller cap (caller-max-streams, caller-miss-rate).",
                Family::<CapLabels, Counter>::default(),
            ),
            registry: r,
        }
    }

    /// Counts a failed upstream attempt under its reason, a cut or broken 200 body
    /// included (it is retried like the others); other errors (a deadline, an oversized body, a
    /// defect) are not counted here.
    pub(crate) fn upstream_failed(&self, err: &GatewayError) {
        if matches!(
            err,
            GatewayError::Upstream { .. } | GatewayError::MalformedBody(_)
        ) {
            self.upstream_failures
                .get_or_create(&ReasonLabel {
                    reason: err.reason(),
                })
                .inc();
        }
    }

    /// A credential's paced limit moved to `limit`, for `reason`.
    pub(crate) fn limit_moved(&self, limit: usize, reason: &'static str) {
        self.upstream_concurrency_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
        self.upstream_limit_moves
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Moves of paced limits for `reason` so far.
    pub fn limit_moves(&self, reason: &'static str) -> u64 {
        self.upstream_limit_moves
            .get(&ReasonLabel { reason })
            .map_or(0, |c| c.get())
    }

    /// Failed upstream attempts of one class so far.
    pub fn upstream_failures(&self, failure: UpstreamFailure) -> u64 {
        self.upstream_failures
            .get(&ReasonLabel {
                reason: failure.reason(),
            })
            .map_or(0, |c| c.get())
    }

    /// Upstream attempts that ended with a complete 200 body that could not be used (a
    /// body cut short counts under `UPSTREAM_BODY_CUT`, [`Metrics::upstream_failures`]).
    pub fn upstream_malformed_bodies(&self) -> u64 {
        let reason = GatewayError::MalformedBody(String::new()).reason();
        self.upstream_failures
            .get(&ReasonLabel { reason })
            .map_or(0, |c| c.get())
    }

    /// Counts an upstream attempt that ended with `status` (`None`: no HTTP answer) after
    /// `took`.
    pub(crate) fn upstream_request(&self, status: Option<u16>, took: Duration) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.upstream_requests
            .get_or_create(&StatusLabel { status })
            .inc();
        self.upstream_seconds.observe(took.as_secs_f64());
    }

    /// Counts a page cache lookup in `tier`.
    pub(crate) fn cache_lookup(&self, tier: Tier, hit: bool) {
        let (at, tier) = match tier {
            Tier::Memory => (0, "memory"),
            Tier::Redis => (1, "redis"),
        };
        let result = if hit { "hit" } else { "miss" };
        self.lookup_series[at][usize::from(hit)]
            .get_or_init(|| {
                self.cache_lookups
                    .get_or_create_owned(&LookupLabels { tier, result })
            })
            .inc();
    }

    /// Page cache lookups in `tier` that found (`hit`) or missed a page, so far.
    pub fn cache_lookups(&self, tier: &'static str, result: &'static str) -> u64 {
        self.cache_lookups
            .get(&LookupLabels { tier, result })
            .map_or(0, |c| c.get())
    }

    /// Counts a call by an authenticated caller.
    pub(crate) fn caller_call(&self, name: &str) {
        self.caller_calls
            .get_or_create(&CallerLabel {
                caller: name.to_owned(),
            })
            .inc();
    }

    /// Counts an upstream slot granted to `caller` after `waited`.
    pub(crate) fn caller_granted(&self, caller: &str, waited: Duration) {
        let label = CallerLabel {
            caller: caller.to_owned(),
        };
        self.caller_upstream_requests.get_or_create(&label).inc();
        self.caller_upstream_wait
            .get_or_create(&label)
            .observe(waited.as_secs_f64());
    }

    /// Counts a call of `caller` refused by `cap`.
    pub(crate) fn caller_refused(&self, caller: &str, cap: &'static str) {
        self.caller_refusals
            .get_or_create(&CapLabels {
                caller: caller.to_owned(),
                cap,
            })
            .inc();
    }

    /// Upstream slots granted to `caller` so far (for tests and benches).
    pub fn caller_upstream_requests(&self, caller: &str) -> u64 {
        self.caller_upstream_requests
            .get(&CallerLabel {
                caller: caller.to_owned(),
            })
            .map_or(0, |c| c.get())
    }

    /// Calls of `caller` refused by `cap` so far (for tests).
    pub fn caller_refusals_of(&self, caller: &str, cap: &'static str) -> u64 {
        self.caller_refusals
            .get(&CapLabels {
                caller: caller.to_owned(),
                cap,
            })
            .map_or(0, |c| c.get())
    }

    /// Counts a gRPC call of `method` that ended with status code number `code`, named
    /// `code_name`, after `took`.
    pub(crate) fn grpc_call(
        &self,
        method: &'static str,
        (code, code_name): (usize, &'static str),
        took: Duration,
    ) {
        let labels = GrpcLabels {
            grpc_method: method,
            grpc_code: code_name,
        };
        let by_method = MethodLabel {
            grpc_method: method,
        };
        let series = METHODS
            .iter()
            .position(|m| *m == method)
            .and_then(|at| self.call_series.get(at));
        let Some(series) = series.filter(|_| code < CODES) else {
            self.grpc_handled.get_or_create(&labels).inc();
            self.grpc_seconds
                .get_or_create(&by_method)
                .observe(took.as_secs_f64());
            return;
        };
        series.handled[code]
            .get_or_init(|| self.grpc_handled.get_or_create_owned(&labels))
            .inc();
        series
            .seconds
            .get_or_init(|| self.grpc_seconds.get_or_create_owned(&by_method))
            .observe(took.as_secs_f64());
    }

    /// gRPC calls of `method` that ended with `code`, so far.
    pub fn grpc_calls(&self, method: &'static str, code: &'static str) -> u64 {
        self.grpc_handled
            .get(&GrpcLabels {
                grpc_method: method,
                grpc_code: code,
            })
            .map_or(0, |c| c.get())
    }

    /// The gauge of open streaming calls of `method`.
    pub(crate) fn open_streams(&self, method: &'static str) -> Gauge {
        self.grpc_open_streams.get_or_create_owned(&MethodLabel {
            grpc_method: method,
        })
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The process's metrics and one gateway's own: the offset of Confluence's clock
    /// from the gateway's as `clock` estimates it, and how far its furthest-behind
    /// follower is from the log's settled head. Those are read per gateway at each
    /// scrape, not kept in the process-wide registry: one process may run several
    /// gateways (the integration tests do), each with its own Confluence and followers.
    pub(crate) fn render_with_clock(
        &self,
        clock: &ClockOffset,
        followers: &FollowPositions,
    ) -> String {
        let mut own = Registry::with_prefix("audit_gateway");
        let offset = PromGauge::<f64, AtomicU64>::default();
        offset.set(clock.offset_ms() as f64 / 1000.0);
        own.register(
            "confluence_clock_offset_seconds",
            "Confluence's clock minus the gateway's, from the Date headers of its answers \
             (0 until one was seen).",
            offset,
        );
        let behind = PromGauge::<f64, AtomicU64>::default();
        behind.set(followers.furthest_behind_ms() as f64 / 1000.0);
        own.register(
            "follow_behind_seconds",
            "How far the furthest-behind open follower's position is from the newest range \
             it may read (0: every follower is up to date, or none is open).",
            behind,
        );
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &own);
        let _ = encode_eof(&mut out);
        out
    }
}

/// Where a gateway's open followers stand: how far each is behind the newest range it
/// may read (ms), by follower.
#[derive(Debug, Default)]
pub(crate) struct FollowPositions {
    next: std::sync::atomic::AtomicU64,
    behind: std::sync::Mutex<std::collections::HashMap<u64, i64>>,
}

impl FollowPositions {
    /// A place for one more follower, given up when dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> FollowPosition {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, 0);
        FollowPosition {
            id,
            positions: self.clone(),
        }
    }

    /// The largest of the followers' distances, ms (0 with none open).
    pub(crate) fn furthest_behind_ms(&self) -> i64 {
        self.lock().values().copied().max().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, i64>> {
        self.behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One follower's place in [`FollowPositions`].
#[derive(Debug)]
pub(crate) struct FollowPosition {
    id: u64,
    positions: Arc<FollowPositions>,
}

impl FollowPosition {
    /// The follower stands `ms` behind the newest range it may read.
    pub(crate) fn set(&self, ms: i64) {
        self.positions.lock().insert(self.id, ms.max(0));
    }
}

impl Drop for FollowPosition {
    fn drop(&mut self) {
        self.positions.lock().remove(&self.id);
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves; `clock` is the
/// gateway's estimate of Confluence's clock (`src/upstream/clock.rs`), `followers` where
/// its followers stand.
pub(crate) async fn serve(
    listener: TcpListener,
    (clock, followers): (Arc<ClockOffset>, Arc<FollowPositions>),
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let (clock, followers) = (clock.clone(), followers.clone());
        let svc = service_fn(move |req: Request<Incoming>| {
            let (clock, followers) = (clock.clone(), followers.clone());
            async move {
                let response = if req.uri().path() == "/metrics" {
                    Response::builder()
                        .header(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .body(Full::new(Bytes::from(
                            METRICS.render_with_clock(&clock, &followers),
                        )))
                } else {
                    Response::builder()
                        .status(404)
                        .body(Full::new(Bytes::from_static(b"not found\n")))
                };
                Ok::<_, Infallible>(response.unwrap_or_default())
            }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> u64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn renders_counters_histograms_and_fixed_labels() {
        let limited = GatewayError::Upstream {
            failure: UpstreamFailure::RateLimited,
            http_status: Some(429),
            message: String::new(),
            retry_after: None,
            source: None,
        };
        let before = METRICS.upstream_failures(UpstreamFailure::RateLimited);
        METRICS.upstream_failed(&limited);
        METRICS.upstream_failed(&GatewayError::Internal("not upstream".into()));
        assert_eq!(
            METRICS.upstream_failures(UpstreamFailure::RateLimited),
            before + 1
        );
        let bodies = METRICS.upstream_malformed_bodies();
        METRICS.upstream_failed(&GatewayError::MalformedBody("cut".into()));
        assert_eq!(METRICS.upstream_malformed_bodies(), bodies + 1);
        METRICS.grpc_call("GetSince", (0, "OK"), Duration::from_millis(3));
        METRICS.upstream_request(Some(429), Duration::from_millis(40));
        METRICS.cache_lookup(Tier::Memory, true);
        let text = METRICS.render();
        assert!(
            text.contains("# TYPE audit_gateway_redis_errors counter"),
            "{text}"
        );
        assert!(
            value(
                &text,
                "audit_gateway_upstream_failures_total{reason=\"UPSTREAM_RATE_LIMITED\"}"
            ) >= 1
        );
        assert!(
            value(
                &text,
                "audit_gateway_grpc_server_handled_total{grpc_method=\"GetSince\",grpc_code=\"OK\"}"
            ) >= 1
        );
        assert!(
            value(
                &text,
                "audit_gateway_upstream_requests_total{status=\"429\"}"
            ) >= 1
        );
        assert!(
            value(
                &text,
                "audit_gateway_cache_lookups_total{tier=\"memory\",result=\"hit\"}"
            ) >= 1
        );
        // A 3 ms call lands in the 4 ms bucket of its method's histogram.
        assert!(
            value(
                &text,
                "audit_gateway_grpc_server_handling_seconds_bucket{le=\"0.004\",grpc_method=\"GetSince\"}"
            ) >= 1,
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with EOF");
    }

    #[test]
    fn each_gateway_reports_its_own_clock_offset_once() {
        let behind = ClockOffset::default();
        let now = std::time::SystemTime::now();
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64;
        // Dated 5 s behind, sent and answered at once.
        behind.observe(secs - 5, now, now);
        let series = "audit_gateway_confluence_clock_offset_seconds ";
        let gauge = |text: &str| -> f64 {
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(series)).collect();
            assert_eq!(lines.len(), 1, "{text}");
            lines[0][series.len()..].parse().expect("a number")
        };
        let text = METRICS.render_with_clock(&behind, &FollowPositions::default());
        let offset = gauge(&text);
        assert!((-5.5..=-4.0).contains(&offset), "{offset}");
        assert!(text.contains("# TYPE audit_gateway_confluence_clock_offset_seconds gauge"));
        assert!(text.contains("# TYPE audit_gateway_upstream_retries counter"));
        assert!(text.contains(&format!(
            "audit_gateway_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
        // Another gateway in the process, nothing seen yet: its own 0.
        assert_eq!(
            gauge(&METRICS.render_with_clock(&ClockOffset::default(), &FollowPositions::default())),
            0.0
        );
    }

    #[test]
    fn the_furthest_behind_open_follower_is_reported() {
        let positions = Arc::new(FollowPositions::default());
        let series = "audit_gateway_follow_behind_seconds ";
        let gauge = |p: &FollowPositions| -> f64 {
            let text = METRICS.render_with_clock(&ClockOffset::default(), p);
            let line = text
                .lines()
                .find(|l| l.starts_with(series))
                .expect("the gauge");
            line[series.len()..].parse().expect("a number")
        };
        assert_eq!(gauge(&positions), 0.0, "none open");
        let (a, b) = (positions.enter(), positions.enter());
        a.set(1_500);
        b.set(90_000);
        assert_eq!(gauge(&positions), 90.0);
        drop(b);
        assert_eq!(gauge(&positions), 1.5, "a closed follower no longer counts");
        a.set(-20);
        assert_eq!(gauge(&positions), 0.0, "ahead is up to date");
    }
}
