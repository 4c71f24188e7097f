//! Logging and tracing. Logs go to stderr, filtered by `RUST_LOG` (default `info`): one
//! JSON object per line (for log collectors) or human-readable lines (for a terminal).
//! Log lines are events only, each carrying the fields it needs (a failed call names its
//! method and caller): formatting every call's spans into the log layer cost a cache hit
//! more than the rest of its work (docs/benchmarks.md, P1), so spans go only where they
//! are read whole, to the trace exporter.
//! With an OTLP endpoint, spans (a call, a page load, an upstream attempt) are exported
//! over OTLP/gRPC through the opentelemetry crates, on the tonic the gateway already
//! uses, and W3C `traceparent` context is read from callers and passed on to Confluence
//! (`src/grpc/service.rs`, `src/upstream/client.rs`).

use std::io::IsTerminal;

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    runtime,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};
use tracing_subscriber::{
    EnvFilter, Registry,
    filter::{FilterExt, filter_fn},
    fmt,
    layer::{Layer, SubscriberExt},
    util::SubscriberInitExt,
};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line: time, level, target, message and fields.
    Json,
    /// Human-readable lines, coloured on a terminal.
    Text,
}

impl LogFormat {
    /// Text for a terminal, JSON otherwise (a container's stderr goes to a collector).
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Text
        } else {
            Self::Json
        }
    }
}

/// What was installed; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[must_use = "call shutdown() at exit, or spans still queued are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued and stops the exporter. Call it outside the runtime's
    /// worker threads (the exporter runs on them).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: tracing export did not shut down cleanly: {e}");
        }
    }
}

/// The OTLP exporter for `--otlp-endpoint` could not be built.
#[derive(Debug, thiserror::Error)]
#[error("--otlp-endpoint {endpoint}: cannot export spans there")]
pub struct TelemetryError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// Installs the global subscriber (a second call installs nothing) and, with
/// `otlp_endpoint`, the OTLP span exporter; must run inside a tokio runtime.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Each layer takes what its own filter lets through: the log layer events only, the
    // exporter spans and events (per-layer filters, so no layer's choice is another's).
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    // A closed log pipe must not stop the gateway: the subscriber would report the
    // failed write with eprintln!, which panics when stderr itself is gone.
    // With no exporter, no layer takes a span, so a call's spans cost next to nothing.
    let events = || filter().and(filter_fn(|meta| meta.is_event()));
    layers.push(match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
            .with_filter(events())
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            // Colour codes only for a terminal: piped logs stay parseable.
            .with_ansi(std::io::stderr().is_terminal())
            .log_internal_errors(false)
            .with_filter(events())
            .boxed(),
    });
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|source| TelemetryError {
                    endpoint: endpoint.to_owned(),
                    source,
                })?;
            // Exports run as tokio tasks, where the tonic client they use can do I/O.
            let batches = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(batches)
                .with_resource(
                    Resource::builder()
                        .with_service_name("audit-gateway")
                        .build(),
                )
                .build();
            global::set_text_map_propagator(TraceContextPropagator::new());
            let tracer = provider.tracer("audit-gateway");
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(filter())
                    .boxed(),
            );
            Some(provider)
        }
        None => None,
    };
    // Err only when a subscriber is already set (e.g. by a test harness).
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(Telemetry { provider })
}

/// The trace context a caller sent (`traceparent`, `tracestate`), read by `carrier`.
pub(crate) fn remote_context(carrier: &dyn Extractor) -> opentelemetry::Context {
    global::get_text_map_propagator(|p| p.extract(carrier))
}

/// Writes the current span's trace context into `headers` (for Confluence).
pub(crate) fn inject_current(headers: &mut http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
