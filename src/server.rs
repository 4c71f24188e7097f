//! The gRPC server: the audit service with compression, health, reflection and a
//! graceful shutdown. `serve` takes its listener and shutdown signal from the caller
//! (`src/gateway.rs`), so tests bind port 0.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    codec::CompressionEncoding,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::{ServingStatus, pb::health_server::HealthServer, server::HealthReporter};

use crate::{
    grpc::AuditGrpc,
    health::DrainingHealth,
    pb::{self, audit_service_server::AuditServiceServer},
    shutdown::Stopper,
    tls::ReloadingTls,
};

/// How the server limits connections and stops.
#[derive(Clone, Debug)]
pub(crate) struct ServerSettings {
    /// NOT_SERVING is reported this long before new connections are refused.
    pub(crate) drain_delay: Duration,
    /// Longest wait for in-flight calls.
    pub(crate) timeout: Duration,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` of each connection.
    pub(crate) max_connection_streams: u32,
    /// GOAWAY to connections older than this.
    pub(crate) max_connection_age: Option<Duration>,
    /// Calls on an aged connection are cut this long after its GOAWAY.
    pub(crate) max_connection_age_grace: Option<Duration>,
    /// HTTP/2 PING interval.
    pub(crate) keepalive_interval: Duration,
    /// How long a PING may go unanswered.
    pub(crate) keepalive_timeout: Duration,
    /// Largest request message.
    pub(crate) max_request_bytes: usize,
    /// Encodings responses are compressed with for callers that accept them.
    /// Compress responses with gzip for callers that accept it.
    pub(crate) gzip: bool,
    /// Compress responses with zstd for callers that accept it.
    pub(crate) zstd: bool,
}

/// The gRPC server failed while serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not read the API's descriptors (a build defect).
    #[error("gRPC reflection cannot start")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("the gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Serves `service` on `listener` until `shutdown` resolves, then reports NOT_SERVING,
/// waits the drain delay, stops accepting and lets in-flight calls finish.
pub(crate) async fn serve(
    service: AuditGrpc,
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    (shutdown, stopper): (impl Future<Output = ()> + Send + 'static, Stopper),
    settings: ServerSettings,
) -> Result<(), ServeError> {
    let reporter = HealthReporter::new();
    set_health(&reporter, ServingStatus::Serving).await;
    let health = HealthServer::new(DrainingHealth::new(reporter.clone(), stopper.shutdown()));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(ServeError::Reflection)?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(ServeError::Reflection)?;

    let mut audit = AuditServiceServer::from_arc(Arc::new(service))
        .max_decoding_message_size(settings.max_request_bytes)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd);
    // tonic compresses each response anew, cached page or not: a caller that merely
    // advertises gzip (grpcio's default) would otherwise cost a compression per hit.
    if settings.gzip {
        audit = audit.send_compressed(CompressionEncoding::Gzip);
    }
    if settings.zstd {
        audit = audit.send_compressed(CompressionEncoding::Zstd);
    }

    let draining = reporter.clone();
    let drain_delay = settings.drain_delay;
    let mut stopping = stopper.shutdown();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: reporting NOT_SERVING");
        set_health(&draining, ServingStatus::NotServing).await;
        tokio::time::sleep(drain_delay).await;
        // Health watches last as long as their clients want, and followers never end
        // by themselves: end them (each after its last complete message), or every stop
        // would wait the whole shutdown timeout.
        stopper.stop();
        tracing::info!("refusing new connections; waiting for in-flight calls");
    };

    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "audit-gateway listening");
    }
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(settings.keepalive_interval))
        .http2_keepalive_timeout(Some(settings.keepalive_timeout));
    if let Some(age) = settings.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    if let Some(grace) = settings.max_connection_age_grace {
        builder = builder.max_connection_age_grace(grace);
    }
    let router = builder
        // gRPC-Web (HTTP/1.1 or HTTP/2) for browser dashboards, beside native gRPC.
        .accept_http1(true)
        .layer(tonic_web::GrpcWebLayer::new())
        // tonic leaves it unset (hyper's 200 replaced by no limit): one connection could
        // then open calls without end.
        .max_concurrent_streams(settings.max_connection_streams)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(audit);
    let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls
    {
        Some(tls) => Box::pin(
            router.serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), signal),
        ),
        // The builder's tcp_nodelay covers only listeners it binds itself; without
        // TCP_NODELAY small answers wait ~40 ms on delayed ACKs.
        None => Box::pin(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        )),
    };
    tokio::pin!(serve);
    tokio::select! {
        res = &mut serve => return res.map_err(ServeError::Transport),
        () = stopping.stopping() => {}
    }
    match tokio::time::timeout(settings.timeout, serve).await {
        Ok(res) => res.map_err(ServeError::Transport),
        Err(_) => {
            tracing::warn!(timeout = ?settings.timeout, "in-flight calls cut off at shutdown");
            Ok(())
        }
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(pb::SERVICE_NAME, status).await;
}
