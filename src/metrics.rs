//! Process-wide counters, served in Prometheus' text format on `--metrics-listen`.
//! Labels are fixed sets (reasons, tiers): never a credential, a URL or a query.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::Write as _,
    future::Future,
    sync::Mutex,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::error::{GatewayError, UpstreamFailure};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every metric the gateway keeps.
#[derive(Debug)]
pub struct Metrics {
    /// Pages asked of the page service (GetSince calls and stream pages).
    pub page_requests: Counter,
    /// Pages fetched from Confluence (missed by every cache tier).
    pub page_loads: Counter,
    /// HTTP attempts sent to Confluence, retries included.
    pub upstream_attempts: Counter,
    /// Failed upstream attempts, by class (indexed by `UpstreamFailure::index`).
    upstream_failures: [Counter; UpstreamFailure::ALL.len()],
    /// Upstream attempts answered 200 with a body that was cut or could not be used.
    pub upstream_malformed_bodies: Counter,
    /// Cool-downs started or lengthened: a credential's requests held back until the
    /// time Confluence named (`src/upstream/cooldown.rs`).
    pub upstream_cooldowns: Counter,
    /// Upstream requests refused without being sent: the credential's cool-down would
    /// outlast the caller's deadline or `--upstream-max-backoff`.
    pub upstream_cooldown_refusals: Counter,
    /// Failures returned without the retry they could have had: the retry budget
    /// (`src/upstream/budget.rs`) was spent.
    pub upstream_retry_budget_exhausted: Counter,
    /// Redis lookups answered with a page.
    pub redis_hits: Counter,
    /// Redis lookups that found nothing usable.
    pub redis_misses: Counter,
    /// Redis operations that failed or timed out.
    pub redis_errors: Counter,
    /// Redis operations skipped while the tier was paused after an error.
    pub redis_skipped: Counter,
    /// Times the Redis tier was found down (one per outage).
    pub redis_outages: Counter,
    /// StreamSince calls started.
    pub streams_started: Counter,
    /// Records delivered by StreamSince.
    pub stream_records: Counter,
    /// Authenticated calls, by caller name (names are `[A-Za-z0-9._-]`, from
    /// `--caller-tokens-file`; never a token).
    caller_calls: Mutex<BTreeMap<String, u64>>,
    /// Stream pages whose last millisecond held more records than a page (exactly-once
    /// then depends on Confluence listing them in a stable order).
    pub stream_tie_overflows: Counter,
    /// Follow calls started.
    pub follows_started: Counter,
    /// Records delivered by Follow.
    pub follow_records: Counter,
    /// Follow heartbeats (messages without records).
    pub follow_heartbeats: Counter,
    /// Records found visible upstream more than `lag` after their creation, too late to
    /// be delivered in order: followers should raise `lag`.
    pub follow_late_records: Counter,
    /// Milliseconds holding more records than a page, paged by offset by a follower.
    pub follow_tie_overflows: Counter,
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics {
    page_requests: Counter::new(),
    page_loads: Counter::new(),
    upstream_attempts: Counter::new(),
    upstream_failures: [const { Counter::new() }; UpstreamFailure::ALL.len()],
    upstream_malformed_bodies: Counter::new(),
    upstream_cooldowns: Counter::new(),
    upstream_cooldown_refusals: Counter::new(),
    upstream_retry_budget_exhausted: Counter::new(),
    redis_hits: Counter::new(),
    redis_misses: Counter::new(),
    redis_errors: Counter::new(),
    redis_skipped: Counter::new(),
    redis_outages: Counter::new(),
    streams_started: Counter::new(),
    stream_records: Counter::new(),
    stream_tie_overflows: Counter::new(),
    follows_started: Counter::new(),
    follow_records: Counter::new(),
    follow_heartbeats: Counter::new(),
    follow_late_records: Counter::new(),
    follow_tie_overflows: Counter::new(),
    caller_calls: Mutex::new(BTreeMap::new()),
};

impl Metrics {
    /// Counts a failed upstream attempt under its class, a broken 200 body included (it
    /// is retried like the others); other errors (a deadline, an oversized body, a
    /// defect) are not counted here.
    pub(crate) fn upstream_failed(&self, err: &GatewayError) {
        match err {
            GatewayError::Upstream { failure, .. } => self.upstream_failures[failure.index()].inc(),
            GatewayError::MalformedBody(_) => self.upstream_malformed_bodies.inc(),
            _ => {}
        }
    }

    /// Counts a call by an authenticated caller.
    pub(crate) fn caller_call(&self, name: &str) {
        let mut calls = self.caller_calls.lock().unwrap_or_else(|p| p.into_inner());
        *calls.entry(name.to_owned()).or_default() += 1;
    }

    /// Failed upstream attempts of one class so far.
    pub fn upstream_failures(&self, failure: UpstreamFailure) -> u64 {
        self.upstream_failures[failure.index()].get()
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let counters: [(&str, &str, &Counter); 19] = [
            (
                "page_requests",
                "Pages asked of the page cache.",
                &self.page_requests,
            ),
            (
                "page_loads",
                "Pages fetched from Confluence, missed by every cache tier.",
                &self.page_loads,
            ),
            (
                "upstream_attempts",
                "HTTP attempts sent to Confluence.",
                &self.upstream_attempts,
            ),
            (
                "upstream_cooldowns",
                "Cool-downs started or lengthened for a credential after a Retry-After.",
                &self.upstream_cooldowns,
            ),
            (
                "upstream_cooldown_refusals",
                "Upstream requests refused during a cool-down too long to wait.",
                &self.upstream_cooldown_refusals,
            ),
            (
                "upstream_retry_budget_exhausted",
                "Failures not retried because the retry budget was spent.",
                &self.upstream_retry_budget_exhausted,
            ),
            (
                "redis_hits",
                "Redis lookups answered with a page.",
                &self.redis_hits,
            ),
            (
                "redis_misses",
                "Redis lookups without a usable page.",
                &self.redis_misses,
            ),
            (
                "redis_errors",
                "Redis operations that failed or timed out.",
                &self.redis_errors,
            ),
            (
                "redis_skipped",
                "Redis operations skipped while paused after an error.",
                &self.redis_skipped,
            ),
            (
                "redis_outages",
                "Times the Redis tier was found down.",
                &self.redis_outages,
            ),
            (
                "streams_started",
                "StreamSince calls started.",
                &self.streams_started,
            ),
            (
                "stream_records",
                "Records delivered by StreamSince.",
                &self.stream_records,
            ),
            (
                "stream_tie_overflows",
                "Stream pages whose last millisecond held more records than a page.",
                &self.stream_tie_overflows,
            ),
            (
                "follows_started",
                "Follow calls started.",
                &self.follows_started,
            ),
            (
                "follow_records",
                "Records delivered by Follow.",
                &self.follow_records,
            ),
            (
                "follow_heartbeats",
                "Follow messages without records.",
                &self.follow_heartbeats,
            ),
            (
                "follow_late_records",
                "Records visible upstream later than the follower's lag: raise lag.",
                &self.follow_late_records,
            ),
            (
                "follow_tie_overflows",
                "Milliseconds holding more records than a page, read by offset.",
                &self.follow_tie_overflows,
            ),
        ];
        let mut out = String::new();
        for (name, help, c) in counters {
            let name = format!("audit_gateway_{name}_total");
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        let name = "audit_gateway_upstream_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed Confluence attempts, by reason.\n# TYPE {name} counter"
        );
        for failure in UpstreamFailure::ALL {
            let (reason, n) = (failure.reason(), self.upstream_failures(failure));
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
        }
        let reason = GatewayError::MalformedBody(String::new()).reason();
        let n = self.upstream_malformed_bodies.get();
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
        let name = "audit_gateway_caller_calls_total";
        let _ = writeln!(
            out,
            "# HELP {name} Calls by authenticated callers, by caller name.\n# TYPE {name} counter"
        );
        let calls = self.caller_calls.lock().unwrap_or_else(|p| p.into_inner());
        for (caller, n) in calls.iter() {
            let _ = writeln!(out, "{name}{{caller=\"{caller}\"}} {n}");
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub(crate) async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
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
        let svc = service_fn(|req: Request<Incoming>| async move {
            let response = if req.uri().path() == "/metrics" {
                Response::builder()
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(Full::new(Bytes::from(METRICS.render())))
            } else {
                Response::builder()
                    .status(404)
                    .body(Full::new(Bytes::from_static(b"not found\n")))
            };
            Ok::<_, Infallible>(response.unwrap_or_default())
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

    #[test]
    fn renders_counters_and_fixed_reason_labels() {
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
        let bodies = METRICS.upstream_malformed_bodies.get();
        METRICS.upstream_failed(&GatewayError::MalformedBody("cut".into()));
        assert_eq!(METRICS.upstream_malformed_bodies.get(), bodies + 1);
        let text = METRICS.render();
        assert!(
            text.contains("# TYPE audit_gateway_redis_errors_total counter"),
            "{text}"
        );
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(
                    "audit_gateway_upstream_failures_total{reason=\"UPSTREAM_RATE_LIMITED\"}",
                )
            })
            .expect("rate-limit line");
        assert!(
            text.contains(
                "audit_gateway_upstream_failures_total{reason=\"UPSTREAM_MALFORMED_BODY\"}"
            ),
            "{text}"
        );
        let n: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a count");
        assert!(n >= 1, "{line}");
    }
}
