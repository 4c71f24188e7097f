//! The one way to start a gateway: [`Gateway::bind`] checks a [`GatewayConfig`], builds
//! every component and binds the listeners; [`Gateway::run_until_stopped`] serves until
//! the caller's shutdown future resolves. `main`, the demo, the tests and the benches all
//! start gateways through it.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;

use crate::{
    app::{PageService, caps::CallerCaps},
    audit::resume::TokenKey,
    cache::{PageCache, SharedTier, redis::RedisTier},
    config::{ConfigError, GatewayConfig},
    credential::CredentialMode,
    grpc::AuditGrpc,
    http, metrics,
    server::{self, ServeError, ServerConfig},
    shutdown::Stopper,
    tls::ReloadingTls,
    upstream::{ConfluenceClient, ConfluenceFlavor, clock::ClockOffset},
};

/// A gateway with its listeners bound, ready to serve.
pub struct Gateway {
    service: AuditGrpc,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    /// Where HTTP/JSON is served (`--http-listen`).
    http: Option<TcpListener>,
    /// Confluence's clock as the upstream client sees it, for `/metrics`.
    clock: Arc<ClockOffset>,
    server: ServerConfig,
    /// The stop every part of this gateway hears (`src/shutdown.rs`).
    stopper: Stopper,
    /// Re-read `--caller-tokens-file` and the TLS files when they change.
    watching: Vec<tokio::task::JoinHandle<()>>,
    tls: Option<Arc<ReloadingTls>>,
}

impl Gateway {
    /// Checks `config`, builds the gateway and binds its listeners (port 0 picks one).
    /// No call reaches Confluence or Redis yet, but for `--confluence-flavor auto`'s
    /// one request.
    pub async fn bind(config: GatewayConfig) -> Result<Self, ConfigError> {
        // rustls needs one process-wide crypto provider; ring is the one we build. Err
        // means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let checked = config.check()?;
        let (client, shared) = upstream(&config, checked.base_url, checked.redis_value_key)?;
        let client = match config.upstream.flavor {
            // The one request before serving: which API the site answers.
            ConfluenceFlavor::Auto => {
                let credential = match &checked.credentials {
                    CredentialMode::Configured(c) => c.clone(),
                    CredentialMode::Passthrough => None,
                };
                let dialect = client
                    .probe_dialect(credential.as_ref())
                    .await
                    .map_err(|e| ConfigError::from_error("--confluence-flavor", e))?;
                tracing::info!(?dialect, "--confluence-flavor auto: the site's audit API");
                client.with_dialect(dialect)
            }
            _ => client,
        };
        if config.credential_salt.is_none() {
            // Allowed on loopback or with --allow-ephemeral-tokens (`GatewayConfig::check`),
            // but a shipper following this gateway must know it cannot outlive it.
            tracing::warn!(
                "no --credential-salt: resume tokens and follow checkpoints are signed with a \
                 random key and die with this process (a restarted gateway refuses them)"
            );
        }
        // Tokens are signed with a key derived from the salt, so replicas sharing the salt
        // resume each other's streams and nobody else can forge a position.
        let tokens = TokenKey::new(&checked.fingerprints.derive(b"audit-gateway resume token"));
        let clock = client.clock();
        let mut pages = PageService::new(
            client,
            PageCache::new(config.cache.clone(), shared),
            checked.fingerprints,
        );
        if let CredentialMode::Configured(Some(credential)) = &checked.credentials {
            pages = pages.configured(credential);
        }
        if matches!(checked.credentials, CredentialMode::Passthrough) {
            pages = pages
                .revalidating(config.passthrough_revalidate)
                .remembering_refusals(config.passthrough_negative_ttl);
        }
        // One set of per-caller caps, read by the edge (streams) and the pages (misses).
        let caps = Arc::new(CallerCaps::new(
            config
                .caller_max_streams
                .unwrap_or(config.max_streams / 4)
                .clamp(1, config.max_streams),
            config.caller_miss_rate,
        ));
        let pages = pages.with_caps(caps.clone());
        let stopper = Stopper::new();
        let mut watching: Vec<_> = checked.callers.iter().map(|c| c.watch()).collect();
        watching.extend(checked.tls.iter().map(|t| t.watch()));
        let tls = checked.tls;
        let service = AuditGrpc::new(
            pages,
            checked.credentials,
            config.stream_prefetch,
            tokens,
            checked.callers,
            config.max_streams,
            config.stream_idle_timeout,
        )
        .reading_ahead(config.stream_buffer_bytes)
        .following_confluence_clock(clock.clone())
        .sharing(caps, config.caller_header.clone())
        .stopping_with(stopper.shutdown());

        let listener = bind("--listen", config.listen).await?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(bind("--metrics-listen", addr).await?),
            None => None,
        };
        let http = match config.http_listen {
            Some(addr) => Some(bind("--http-listen", addr).await?),
            None => None,
        };
        Ok(Self {
            service,
            listener,
            metrics,
            http,
            clock,
            watching,
            tls,
            stopper,
            server: config.server,
        })
    }

    /// The address gRPC is served on.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has one; the fallback is never taken.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The address metrics are served on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address HTTP/JSON is served on, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then reports NOT_SERVING, waits the drain delay,
    /// stops accepting and lets in-flight calls finish (at most the shutdown timeout).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        if let Some(listener) = self.metrics {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "metrics on /metrics");
            }
            let mut stopped = self.stopper.shutdown();
            let followers = self.service.follow_positions();
            tokio::spawn(metrics::serve(
                listener,
                (self.clock, followers),
                async move {
                    stopped.stopped().await;
                },
            ));
        }
        if let Some(listener) = self.http {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "HTTP/JSON on /v1/audit/since, /stream, /follow");
            }
            tokio::spawn(http::serve(
                listener,
                self.service.clone(),
                self.stopper.shutdown(),
            ));
        }
        let result = server::serve(
            self.service,
            self.listener,
            self.tls,
            (shutdown, self.stopper.clone()),
            self.server,
        )
        .await;
        self.stopper.stopped();
        self.watching.iter().for_each(|w| w.abort());
        result
    }
}

/// The Confluence client, and the Redis tier when `redis_value_key` says there is one
/// (the client then shares its cool-downs and pacing cuts through it).
fn upstream(
    config: &GatewayConfig,
    base_url: url::Url,
    redis_value_key: Option<ring::hmac::Key>,
) -> Result<(ConfluenceClient, Option<Arc<dyn SharedTier>>), ConfigError> {
    let client = ConfluenceClient::new(base_url, &config.upstream)
        .map_err(|e| ConfigError::from_error("--confluence-url", e))?;
    let Some(value_key) = redis_value_key else {
        return Ok((client, None));
    };
    let tier = Arc::new(
        RedisTier::new(&config.redis, value_key)
            .map_err(|e| ConfigError::from_error("--redis-url", e))?,
    );
    // Confluence limits a credential across replicas: they share its cool-downs and the
    // cuts of its paced limit through the same Redis (`src/upstream/cooldown.rs`,
    // `src/upstream/pacing.rs`).
    let client = client
        .with_shared_cooldowns(tier.clone())
        .with_shared_paces(tier.clone());
    Ok((client, Some(tier)))
}

/// A listener on `addr`, set by `flag`.
async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, ConfigError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ConfigError::caused_by(flag, format!("cannot bind {addr}"), e))
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
