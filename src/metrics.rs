//! Process-wide counters, served in Prometheus' text format on `--metrics-listen`.
//! Labels are fixed sets (reasons, tiers): never a credential, a URL or a query.

use std::{
    convert::Infallible,
    fmt::Write as _,
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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
    /// Failed upstream attempts, by `GatewayError::reason`.
    pub upstream_failures: [(&'static str, Counter); 8],
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
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics {
    page_requests: Counter::new(),
    page_loads: Counter::new(),
    upstream_attempts: Counter::new(),
    upstream_failures: [
        ("UPSTREAM_BAD_REQUEST", Counter::new()),
        ("UPSTREAM_UNAUTHENTICATED", Counter::new()),
        ("UPSTREAM_PERMISSION_DENIED", Counter::new()),
        ("UPSTREAM_NOT_FOUND", Counter::new()),
        ("UPSTREAM_RATE_LIMITED", Counter::new()),
        ("UPSTREAM_UNAVAILABLE", Counter::new()),
        ("UPSTREAM_TIMEOUT", Counter::new()),
        ("UPSTREAM_ERROR", Counter::new()),
    ],
    redis_hits: Counter::new(),
    redis_misses: Counter::new(),
    redis_errors: Counter::new(),
    redis_skipped: Counter::new(),
    redis_outages: Counter::new(),
    streams_started: Counter::new(),
    stream_records: Counter::new(),
};

impl Metrics {
    /// Counts a failed upstream attempt under its reason (others are not upstream's).
    pub fn upstream_failed(&self, reason: &str) {
        if let Some((_, c)) = self.upstream_failures.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let counters: [(&str, &str, &Counter); 10] = [
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
        for (reason, c) in &self.upstream_failures {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", c.get());
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
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
        METRICS.upstream_failed("UPSTREAM_RATE_LIMITED");
        METRICS.upstream_failed("not an upstream reason");
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
        let n: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a count");
        assert!(n >= 1, "{line}");
    }
}
