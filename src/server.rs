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

/// How the gRPC server limits connections and requests, compresses answers and stops:
/// the `server` section of `GatewayConfig`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// How long NOT_SERVING is reported before new connections are refused
    /// (`--drain-delay`).
    pub drain_delay: Duration,
    /// Longest wait for in-flight calls at shutdown (`--shutdown-timeout`).
    pub shutdown_timeout: Duration,
    /// Most concurrent HTTP/2 streams (calls of any kind) one connection may open
    /// (`--max-connection-streams`, at least 1).
    pub max_connection_streams: u32,
    /// A connection older than this is sent GOAWAY, so clients reconnect and a mesh or
    /// load balancer spreads long-lived HTTP/2 connections again (`--max-connection-age`);
    /// `None`: never.
    pub max_connection_age: Option<Duration>,
    /// How long calls on an aged connection may go on before it is closed
    /// (`--max-connection-age-grace`); `None`: until they end.
    pub max_connection_age_grace: Option<Duration>,
    /// HTTP/2 PING interval on idle connections (`--http2-keepalive-interval`).
    pub http2_keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed
    /// (`--http2-keepalive-timeout`).
    pub http2_keepalive_timeout: Duration,
    /// Largest request message accepted, in bytes (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Which encodings responses may be compressed with when the caller accepts them
    /// (`--compress-responses`).
    pub compress_responses: ResponseCompression,
}

impl ServerConfig {
    /// The defaults, which `GatewayConfig::DEFAULT` holds.
    pub const DEFAULT: Self = Self {
        drain_delay: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(30),
        // hyper's own default, which tonic otherwise replaces with no limit at all.
        max_connection_streams: 200,
        max_connection_age: None,
        max_connection_age_grace: None,
        http2_keepalive_interval: Duration::from_secs(30),
        http2_keepalive_timeout: Duration::from_secs(10),
        // Requests are small: a 1000-character search string, a checkpoint of at most
        // ~11 KiB. A megabyte leaves room and refuses anything abusive before decoding.
        max_request_bytes: 1 << 20,
        compress_responses: ResponseCompression::None,
    };
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which encodings the server compresses responses with, for a caller whose
/// `grpc-accept-encoding` lists them (`--compress-responses`). Requests are accepted
/// compressed whatever this says. Off by default: on loopback or a LAN, compressing a
/// cached page on every hit costs far more CPU than the bytes it saves (docs/benchmarks.md, P7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResponseCompression {
    /// Identity responses, even to callers that accept gzip or zstd (gRPC allows it).
    #[default]
    None,
    /// gzip to callers that accept it.
    Gzip,
    /// zstd to callers that accept it.
    Zstd,
    /// gzip or zstd, whichever the caller accepts.
    Both,
}

impl ResponseCompression {
    /// The flag's spellings, in the order help lists them.
    const NAMES: [(&'static str, Self); 4] = [
        ("none", Self::None),
        ("gzip", Self::Gzip),
        ("zstd", Self::Zstd),
        ("both", Self::Both),
    ];

    /// Whether gzip responses are sent to callers that accept them.
    pub fn gzip(self) -> bool {
        matches!(self, Self::Gzip | Self::Both)
    }

    /// Whether zstd responses are sent to callers that accept them.
    pub fn zstd(self) -> bool {
        matches!(self, Self::Zstd | Self::Both)
    }
}

impl std::fmt::Display for ResponseCompression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = Self::NAMES
            .iter()
            .find(|(_, v)| v == self)
            .map_or("none", |(n, _)| n);
        f.write_str(name)
    }
}

impl std::str::FromStr for ResponseCompression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> Result<Self, UnknownCompression> {
        Self::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, v)| *v)
            .ok_or_else(|| UnknownCompression(s.to_owned()))
    }
}

/// A `--compress-responses` value that names no encoding.
#[derive(Debug, thiserror::Error)]
#[error("`{0}`: expected none, gzip, zstd or both")]
pub struct UnknownCompression(String);

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
    settings: ServerConfig,
) -> Result<(), ServeError> {
    let reporter = HealthReporter::new();
    set_health(&reporter, ServingStatus::Serving).await;
    let health = HealthServer::new(DrainingHealth::new(reporter.clone(), stopper.shutdown()));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(ServeError::Reflection)?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(ServeError::Reflection)?;
    let audit = audit_server(service, &settings);

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
    let router = builder(&settings)
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
    match tokio::time::timeout(settings.shutdown_timeout, serve).await {
        Ok(res) => res.map_err(ServeError::Transport),
        Err(_) => {
            tracing::warn!(timeout = ?settings.shutdown_timeout, "in-flight calls cut off at shutdown");
            Ok(())
        }
    }
}

/// The audit service with the request size and compression `settings` allow.
fn audit_server(service: AuditGrpc, settings: &ServerConfig) -> AuditServiceServer<AuditGrpc> {
    let mut audit = AuditServiceServer::from_arc(Arc::new(service))
        .max_decoding_message_size(settings.max_request_bytes)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd);
    // tonic compresses each response anew, cached page or not: a caller that merely
    // advertises gzip (grpcio's default) would otherwise cost a compression per hit.
    if settings.compress_responses.gzip() {
        audit = audit.send_compressed(CompressionEncoding::Gzip);
    }
    if settings.compress_responses.zstd() {
        audit = audit.send_compressed(CompressionEncoding::Zstd);
    }
    audit
}

/// A server with the connection limits `settings` set.
fn builder(settings: &ServerConfig) -> Server {
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(settings.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(settings.http2_keepalive_timeout));
    if let Some(age) = settings.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    if let Some(grace) = settings.max_connection_age_grace {
        builder = builder.max_connection_age_grace(grace);
    }
    builder
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(pb::SERVICE_NAME, status).await;
}
