//! Call metrics at the edge: every call's status code and duration by method, and the
//! streaming calls open (`src/metrics.rs`).

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::propagation::Extractor;
use tokio_stream::Stream;
use tonic::{Code, Status, metadata::MetadataMap};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    metrics::{Gauge, METRICS},
    telemetry,
};

/// The span of a call of `method`, a child of the trace the caller's `traceparent`
/// metadata names (when tracing is exported).
pub(crate) fn call_span(method: &'static str, md: &MetadataMap) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc call",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "confluence.audit.v1.AuditService",
        rpc.method = method,
        caller = tracing::field::Empty,
    );
    // No layer takes it when nothing exports spans (`src/telemetry.rs`): then there is
    // no trace to continue, and the caller's context is not even read.
    if !span.is_disabled() {
        // Only fails when the span is not exported.
        let _ = span.set_parent(telemetry::remote_context(&Metadata(md)));
    }
    span
}

/// Reads trace context from request metadata.
struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The canonical name of a status code, as gRPC's own metrics label it.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Counts a call of `method` that ended with `result` after starting at `started`.
pub(crate) fn record<T>(
    method: &'static str,
    started: Instant,
    result: Result<T, Status>,
) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    METRICS.grpc_call(method, (code as usize, code_name(code)), started.elapsed());
    result
}

/// A streaming call's messages, counted as open until the stream ends or is dropped, and
/// counted with the code it ended with (CANCELLED when its caller went away first).
pub(crate) struct Observed<S> {
    inner: S,
    method: &'static str,
    started: Instant,
    open: Gauge,
    ended: bool,
}

impl<S> Observed<S> {
    /// Observes `inner`, a call of `method` that started at `started`.
    pub(crate) fn new(inner: S, method: &'static str, started: Instant) -> Self {
        let open = METRICS.open_streams(method);
        open.inc();
        Self {
            inner,
            method,
            started,
            open,
            ended: false,
        }
    }

    fn end(&mut self, code: Code) {
        if !self.ended {
            self.ended = true;
            METRICS.grpc_call(
                self.method,
                (code as usize, code_name(code)),
                self.started.elapsed(),
            );
        }
    }
}

impl<S, T> Stream for Observed<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        match &polled {
            Poll::Ready(None) => self.end(Code::Ok),
            Poll::Ready(Some(Err(s))) => self.end(s.code()),
            _ => {}
        }
        polled
    }
}

impl<S> Drop for Observed<S> {
    fn drop(&mut self) {
        self.end(Code::Cancelled);
        self.open.dec();
    }
}
