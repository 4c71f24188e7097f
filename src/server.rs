//! The gRPC server: the audit service with compression, health, reflection and a
//! graceful shutdown. `run` takes its listener and shutdown signal from the caller, so
//! tests bind port 0.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    codec::CompressionEncoding,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::{ServingStatus, pb::health_server::HealthServer, server::HealthReporter};

use crate::{
    cache::{
        CacheSettings, PageCache, SharedTier,
        redis::{RedisSettings, RedisTier},
    },
    config::{CacheArgs, ServeArgs},
    credential::FingerprintKey,
    grpc::{AuditGrpc, CredentialMode},
    health::DrainingHealth,
    pages::PageService,
    pb::{self, audit_service_server::AuditServiceServer},
    upstream::{ConfluenceClient, UpstreamSettings},
};

/// The longest page TTL accepted: audit pages go stale, and the cache cannot hold
/// entries for centuries.
const MAX_CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How the server stops.
#[derive(Clone, Debug)]
pub struct ShutdownSettings {
    /// NOT_SERVING is reported this long before new connections are refused.
    pub drain_delay: Duration,
    /// Longest wait for in-flight calls.
    pub timeout: Duration,
}

/// Builds the audit service from `serve` settings (no I/O happens yet).
pub fn build_service(args: &ServeArgs) -> Result<AuditGrpc, String> {
    let client = ConfluenceClient::new(UpstreamSettings {
        base_url: args.confluence_url.clone(),
        attempt_timeout: args.upstream.upstream_timeout,
        connect_timeout: args.upstream.upstream_connect_timeout,
        max_body_bytes: usize::try_from(args.upstream.upstream_max_body)
            .map_err(|_| "--upstream-max-body: too large for this machine".to_owned())?,
        retry: args.upstream.retry_policy(),
    })
    .map_err(|e| format!("--confluence-url: {e}"))?;
    if args.cache.cache_ttl > MAX_CACHE_TTL {
        return Err(format!(
            "--cache-ttl: at most {} hours",
            MAX_CACHE_TTL.as_secs() / 3600
        ));
    }
    let cache = PageCache::new(
        CacheSettings {
            ttl: args.cache.cache_ttl,
            max_bytes: args.cache.cache_max_bytes,
        },
        shared_tier(&args.cache)?,
    );
    let key = match &args.cache.credential_salt {
        Some(salt) => FingerprintKey::from_secret(salt.expose().as_bytes()),
        None => FingerprintKey::random()?,
    };
    let credentials = if args.upstream.auth_passthrough {
        CredentialMode::Passthrough
    } else {
        CredentialMode::Configured(args.upstream.credential()?)
    };
    Ok(AuditGrpc::new(
        PageService::new(client, cache, key),
        credentials,
        usize::from(args.stream_prefetch),
    ))
}

/// The Redis tier, when `--redis-url` is set.
fn shared_tier(args: &CacheArgs) -> Result<Option<Arc<dyn SharedTier>>, String> {
    let Some(url) = &args.redis_url else {
        return Ok(None);
    };
    if args.credential_salt.is_none() {
        return Err(
            "--redis-url: set --credential-salt too, the same on every replica, so \
                    replicas file pages under the same keys"
                .into(),
        );
    }
    if args.redis_timeout.is_zero() {
        return Err("--redis-timeout: must be larger than 0".into());
    }
    let tier = RedisTier::new(RedisSettings {
        url: url.expose().to_owned(),
        key_prefix: args.redis_key_prefix.clone(),
        timeout: args.redis_timeout,
        pause: args.redis_pause,
    })?;
    Ok(Some(Arc::new(tier)))
}

/// Serves `service` on `listener` until `shutdown` resolves, then reports NOT_SERVING,
/// waits the drain delay, stops accepting and lets in-flight calls finish.
pub async fn run(
    service: AuditGrpc,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    settings: ShutdownSettings,
) -> Result<(), String> {
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let reporter = HealthReporter::new();
    set_health(&reporter, ServingStatus::Serving).await;
    let (end_watches, stopping) = tokio::sync::watch::channel(false);
    let health = HealthServer::new(DrainingHealth::new(reporter.clone(), stopping));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| format!("reflection: {e}"))?;

    let audit = AuditServiceServer::from_arc(Arc::new(service))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd);

    let draining = reporter.clone();
    let drain_delay = settings.drain_delay;
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: reporting NOT_SERVING");
        set_health(&draining, ServingStatus::NotServing).await;
        tokio::time::sleep(drain_delay).await;
        // Health watches last as long as their clients want: end them, or every stop
        // would wait the whole shutdown timeout.
        let _ = end_watches.send(true);
        tracing::info!("refusing new connections; waiting for in-flight calls");
        let _ = stopped_tx.send(());
    };

    tracing::info!(%addr, "audit-gateway listening");
    let serve = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(audit)
        // The builder's tcp_nodelay covers only listeners it binds itself; without
        // TCP_NODELAY small answers wait ~40 ms on delayed ACKs.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal);
    tokio::pin!(serve);
    tokio::select! {
        res = &mut serve => return res.map_err(|e| format!("gRPC server failed: {e}")),
        _ = stopped_rx => {}
    }
    match tokio::time::timeout(settings.timeout, serve).await {
        Ok(res) => res.map_err(|e| format!("gRPC server failed: {e}")),
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

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives while the server
/// is still starting must still mean a graceful stop, not the default kill. Call it
/// inside the runtime.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                // No handler: never resolve, rather than stop at once.
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(term) => {},
            _ = wait(int) => {},
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
