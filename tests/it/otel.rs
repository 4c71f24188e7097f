//! Tracing end to end: the gateway binary exports its spans over OTLP/gRPC to a real
//! receiver (the collector's `TraceService`, from the published protos) started by the
//! test, and the caller's W3C `traceparent` continues through the gateway into the
//! request Confluence receives.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use audit_gateway::{
    pb::{self, audit_service_client::AuditServiceClient},
    testing::{harness, process},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    trace::v1::Span,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::common::{Canned, StubUpstream, atlassian_sample};

/// Collects every span exported to it.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().expect("lock").extend(spans);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_and_the_callers_trace_reaches_confluence() {
    let receiver = Receiver::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let otlp = listener.local_addr().expect("bound");
    let server = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    });
    let upstream = StubUpstream::start(Canned::json(atlassian_sample())).await;

    let (mut child, addr) = harness::binary(
        Path::new(env!("CARGO_BIN_EXE_audit-gateway")),
        &[
            "--listen",
            "127.0.0.1:0",
            "--confluence-url",
            &upstream.base_url(),
            "--otlp-endpoint",
            &format!("http://{otlp}"),
        ],
    );

    // The caller's trace: a trace id and its own span id.
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut client = AuditServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let mut request = Request::new(pb::GetSinceRequest {
        limit: Some(2),
        ..Default::default()
    });
    let traceparent = format!("00-{trace}-{parent}-01");
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str()).expect("ascii"),
    );
    client.get_since(request).await.expect("a page");

    let sent = upstream.traceparents();
    assert_eq!(sent.len(), 1, "one upstream request");
    let sent = sent[0].clone().expect("a traceparent header to Confluence");
    assert!(
        sent.starts_with(&format!("00-{trace}-")),
        "the caller's trace continues upstream: {sent}"
    );
    assert!(
        !sent.contains(parent),
        "under a span of the gateway's own: {sent}"
    );

    // A clean stop flushes the spans still queued.
    process::terminate(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined")
        .expect("reaped");
    assert!(status.success(), "{status}");

    let spans = receiver.0.lock().expect("lock").clone();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for want in ["GetSince", "page load", "confluence attempt"] {
        assert!(names.contains(&want), "no {want:?} span in {names:?}");
    }
    for s in &spans {
        assert_eq!(
            hex(&s.trace_id),
            trace,
            "span {:?} in another trace",
            s.name
        );
    }
    let call = spans
        .iter()
        .find(|s| s.name == "GetSince")
        .expect("call span");
    assert_eq!(
        hex(&call.parent_span_id),
        parent,
        "the call's parent is the caller's span"
    );
    let attempt = spans
        .iter()
        .find(|s| s.name == "confluence attempt")
        .expect("attempt span");
    assert!(
        sent.contains(&hex(&attempt.span_id)),
        "Confluence got the attempt's span as parent: {sent}"
    );
}
