//! `serve` flags: each one a field of [`GatewayConfig`], with an environment variable and
//! the library's default. Only parsing happens here; `GatewayConfig::check` validates.

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;
use secrecy::SecretString;

use super::parse::{Dur, Size};
use audit_gateway::{
    CacheConfig, ConfigError, ConfluenceFlavor, Gateway, GatewayConfig, RedisConfig,
    ResponseCompression, ServerConfig, UpstreamAuth, UpstreamConfig,
};

const D: GatewayConfig = GatewayConfig::DEFAULT;

/// `--confluence-flavor` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Flavor {
    /// Confluence Cloud.
    Cloud,
    /// Confluence Data Center 7.5 and later.
    DataCenter,
    /// Ask the site at start.
    Auto,
}

/// `serve` settings.
#[derive(Clone, Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to serve gRPC on; port 0 picks a free port (the bound address is logged).
    #[arg(long, env = "AUDIT_GATEWAY_LISTEN", default_value_t = D.listen)]
    listen: SocketAddr,

    /// Once the listeners are bound, write the addresses they are bound to here as one
    /// JSON line (`{"grpc":"127.0.0.1:50051","metrics":null}`), replaced atomically:
    /// for scripts and tests that start the gateway on port 0.
    #[arg(long, env = "AUDIT_GATEWAY_READY_FILE")]
    pub(crate) ready_file: Option<PathBuf>,

    /// Confluence base URL, everything before `/rest/api`
    /// (e.g. https://your-domain.atlassian.net/wiki).
    #[arg(long, env = "CONFLUENCE_URL")]
    confluence_url: String,

    /// Which audit API the site answers: cloud (`/rest/api/audit`), data-center
    /// (`/rest/auditing/1.0/events`, Confluence Data Center 7.5 and later) or auto (one
    /// request at start asks the site, and the answer is logged).
    #[arg(long, env = "AUDIT_GATEWAY_CONFLUENCE_FLAVOR", value_enum, default_value_t = Flavor::Cloud)]
    confluence_flavor: Flavor,

    /// Account email for basic auth (Confluence Cloud), with --confluence-api-token.
    #[arg(long, env = "CONFLUENCE_EMAIL")]
    confluence_email: Option<String>,

    /// API token for basic auth, with --confluence-email.
    #[arg(
        long,
        env = "CONFLUENCE_API_TOKEN",
        hide_env_values = true,
        conflicts_with = "confluence_api_token_file"
    )]
    confluence_api_token: Option<SecretString>,

    /// A file holding the API token (as Kubernetes mounts secrets).
    #[arg(long, env = "CONFLUENCE_API_TOKEN_FILE")]
    confluence_api_token_file: Option<PathBuf>,

    /// Bearer token (Data Center personal access token, OAuth 2.0 or scoped token).
    #[arg(
        long,
        env = "CONFLUENCE_BEARER_TOKEN",
        hide_env_values = true,
        conflicts_with_all = ["confluence_email", "confluence_api_token", "confluence_api_token_file", "confluence_bearer_token_file"]
    )]
    confluence_bearer_token: Option<SecretString>,

    /// A file holding the bearer token.
    #[arg(
        long,
        env = "CONFLUENCE_BEARER_TOKEN_FILE",
        conflicts_with_all = ["confluence_email", "confluence_api_token", "confluence_api_token_file"]
    )]
    confluence_bearer_token_file: Option<PathBuf>,

    /// Forward each caller's `authorization` metadata to Confluence instead of a
    /// configured credential; calls without one get UNAUTHENTICATED.
    #[arg(
        long,
        env = "AUDIT_GATEWAY_AUTH_PASSTHROUGH",
        conflicts_with_all = ["confluence_email", "confluence_api_token", "confluence_api_token_file", "confluence_bearer_token", "confluence_bearer_token_file", "caller_tokens_file"]
    )]
    auth_passthrough: bool,

    /// With --auth-passthrough: serve cached pages to a caller's credential only if
    /// Confluence accepted it within this time (a revoked token stops reading by then).
    #[arg(long, env = "AUDIT_GATEWAY_PASSTHROUGH_REVALIDATE", default_value_t = Dur(D.passthrough_revalidate))]
    passthrough_revalidate: Dur,

    /// With --auth-passthrough: how long a credential Confluence refused (401/403) is
    /// refused here without asking Confluence again (0: always ask).
    #[arg(long, env = "AUDIT_GATEWAY_PASSTHROUGH_NEGATIVE_TTL", default_value_t = Dur(D.passthrough_negative_ttl))]
    passthrough_negative_ttl: Dur,

    /// TLS certificate chain of the gRPC port (PEM); re-read when it changes.
    #[arg(long, env = "AUDIT_GATEWAY_TLS_CERT")]
    tls_cert: Option<PathBuf>,

    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "AUDIT_GATEWAY_TLS_KEY")]
    tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mTLS.
    #[arg(long, env = "AUDIT_GATEWAY_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,

    /// Callers allowed in: `name:token` lines (`#` comments), optionally followed by
    /// `weight=N max-streams=N miss-rate=N`; callers send `authorization: Bearer TOKEN`.
    /// Read again when it changes.
    #[arg(long, env = "AUDIT_GATEWAY_CALLER_TOKENS_FILE")]
    caller_tokens_file: Option<PathBuf>,

    /// Serve a non-loopback address with no caller authentication (where a mesh's
    /// sidecars authenticate callers).
    #[arg(long, env = "AUDIT_GATEWAY_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,

    /// Accept caller tokens or passthrough credentials without TLS on a non-loopback
    /// address (a mesh sidecar beside the gateway encrypts the traffic).
    #[arg(long, env = "AUDIT_GATEWAY_ALLOW_PLAINTEXT_CREDENTIALS")]
    allow_plaintext_credentials: bool,

    /// A request header naming the caller, set by a mesh that authenticates callers
    /// (x-forwarded-client-cert is read for its URI); fair shares and caps go by it.
    #[arg(long, env = "AUDIT_GATEWAY_CALLER_HEADER")]
    caller_header: Option<String>,

    /// Most streams and followers one caller holds open [default: a quarter of
    /// --max-streams]; the caller's next is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "AUDIT_GATEWAY_CALLER_MAX_STREAMS")]
    caller_max_streams: Option<usize>,

    /// GetSince calls a second one caller may have answered by Confluence rather than the
    /// cache (bursts of twice that); more get RESOURCE_EXHAUSTED (0: no limit).
    #[arg(long, env = "AUDIT_GATEWAY_CALLER_MISS_RATE", default_value_t = D.caller_miss_rate)]
    caller_miss_rate: u32,

    /// Serve a non-loopback address without --credential-salt: resume tokens and follow
    /// checkpoints are then refused once this process restarts.
    #[arg(long, env = "AUDIT_GATEWAY_ALLOW_EPHEMERAL_TOKENS")]
    allow_ephemeral_tokens: bool,

    /// Accept a plain-HTTP Confluence URL that is not loopback.
    #[arg(long, env = "AUDIT_GATEWAY_ALLOW_INSECURE_UPSTREAM")]
    allow_insecure_upstream: bool,

    /// Time-out of one upstream attempt, body included.
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_TIMEOUT", default_value_t = Dur(D.upstream.timeout))]
    upstream_timeout: Dur,

    /// Time-out of connecting to Confluence.
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_CONNECT_TIMEOUT", default_value_t = Dur(D.upstream.connect_timeout))]
    upstream_connect_timeout: Dur,

    /// Retries of a transient upstream failure (connection trouble, 429, 502, 503, 504;
    /// a plain 500 once), at most 10.
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_RETRIES", default_value_t = D.upstream.retries)]
    upstream_retries: u32,

    /// First backoff ceiling; it doubles per retry (full jitter).
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_BACKOFF", default_value_t = Dur(D.upstream.backoff))]
    upstream_backoff: Dur,

    /// Largest backoff and largest `Retry-After` honoured.
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_MAX_BACKOFF", default_value_t = Dur(D.upstream.max_backoff))]
    upstream_max_backoff: Dur,

    /// Longest cool-down a `Retry-After` starts (a day-long one is cut to this); when it
    /// ends, one probe request decides for every caller and replica.
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_MAX_COOLDOWN", default_value_t = Dur(D.upstream.max_cooldown))]
    upstream_max_cooldown: Dur,

    /// Largest upstream page body accepted.
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_MAX_BODY", default_value_t = Size(D.upstream.max_body))]
    upstream_max_body: Size,

    /// Most requests in flight to Confluence at once, gateway-wide, and the ceiling of
    /// each credential's adaptive limit; more wait their turn, shared fairly between
    /// callers, within their deadline.
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_CONCURRENCY", default_value_t = D.upstream.concurrency)]
    upstream_concurrency: usize,

    /// The lowest a credential's adaptive limit on requests in flight is cut to when
    /// Confluence warns of its rate limit, refuses with 429, or slows down; set it to
    /// --upstream-concurrency for a fixed limit.
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_CONCURRENCY_FLOOR", default_value_t = D.upstream.concurrency_floor)]
    upstream_concurrency_floor: usize,

    /// How long a fetched page is served from cache (at most 7 days); 0 disables caching.
    #[arg(long, env = "AUDIT_GATEWAY_CACHE_TTL", default_value_t = Dur(D.cache.ttl))]
    cache_ttl: Dur,

    /// Bound on the in-process cache, in bytes of encoded pages.
    #[arg(long, env = "AUDIT_GATEWAY_CACHE_MAX_BYTES", default_value_t = Size(D.cache.max_bytes))]
    cache_max_bytes: Size,

    /// Secret (16 characters or more) keying credential fingerprints, cache keys, resume
    /// tokens and follow checkpoints; replicas must share it. Unset: a random key per
    /// process (required on a non-loopback --listen unless --allow-ephemeral-tokens).
    #[arg(
        long,
        env = "AUDIT_GATEWAY_CREDENTIAL_SALT",
        hide_env_values = true,
        conflicts_with = "credential_salt_file"
    )]
    credential_salt: Option<SecretString>,

    /// A file holding the credential salt.
    #[arg(long, env = "AUDIT_GATEWAY_CREDENTIAL_SALT_FILE")]
    credential_salt_file: Option<PathBuf>,

    /// Redis shared by all replicas, below the in-process cache (redis:// or rediss://,
    /// auth and database in the URL). Unset: in-process cache only. With --redis-cluster,
    /// one or more seed nodes of the cluster, comma-separated.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<SecretString>,

    /// --redis-url names seed nodes of a Redis Cluster (comma-separated); the gateway
    /// learns the other nodes from them and follows the cluster's redirects.
    #[arg(long, env = "AUDIT_GATEWAY_REDIS_CLUSTER")]
    redis_cluster: bool,

    /// Time-out of each Redis operation; a slower Redis is skipped.
    #[arg(long, env = "AUDIT_GATEWAY_REDIS_TIMEOUT", default_value_t = Dur(D.redis.timeout))]
    redis_timeout: Dur,

    /// How long Redis is skipped after an error before it is tried again.
    #[arg(long, env = "AUDIT_GATEWAY_REDIS_PAUSE", default_value_t = Dur(D.redis.pause))]
    redis_pause: Dur,

    /// Prefix of the gateway's Redis keys.
    #[arg(long, env = "AUDIT_GATEWAY_REDIS_KEY_PREFIX", default_value_t = D.redis.key_prefix.to_string())]
    redis_key_prefix: String,

    /// Pages a StreamSince call fetches ahead, concurrently, once its first page is
    /// full (1..=64).
    #[arg(long, env = "AUDIT_GATEWAY_STREAM_PREFETCH", default_value_t = D.stream_prefetch)]
    stream_prefetch: usize,

    /// Bytes all streams and followers together may hold in pages fetched ahead, past the
    /// first two of each; deeper look-ahead waits for room.
    #[arg(long, env = "AUDIT_GATEWAY_STREAM_BUFFER_BYTES", default_value_t = Size(D.stream_buffer_bytes))]
    stream_buffer_bytes: Size,

    /// A StreamSince call whose caller reads nothing for this long ends (DEADLINE_EXCEEDED,
    /// reason STREAM_IDLE), giving back its slot and prefetched pages.
    #[arg(long, env = "AUDIT_GATEWAY_STREAM_IDLE_TIMEOUT", default_value_t = Dur(D.stream_idle_timeout))]
    stream_idle_timeout: Dur,

    /// Most StreamSince calls open at once, gateway-wide; one more is refused at once
    /// with RESOURCE_EXHAUSTED (at least 1).
    #[arg(long, env = "AUDIT_GATEWAY_MAX_STREAMS", default_value_t = D.max_streams)]
    max_streams: usize,

    /// Most concurrent HTTP/2 streams (calls of any kind) one connection may open.
    #[arg(long, env = "AUDIT_GATEWAY_MAX_CONNECTION_STREAMS", default_value_t = D.server.max_connection_streams)]
    max_connection_streams: u32,

    /// Serve Prometheus metrics on this address (`GET /metrics`); unset: none.
    #[arg(long, env = "AUDIT_GATEWAY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

    /// Serve read access over HTTP/JSON on this address (`/v1/audit/since`, `/stream`,
    /// `/follow`; plain HTTP/1.1, the same callers and caps as gRPC); unset: none.
    #[arg(long, env = "AUDIT_GATEWAY_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,

    /// Wait this long after a shutdown signal, reporting NOT_SERVING, before refusing
    /// new connections (lets a mesh stop routing here first).
    #[arg(long, env = "AUDIT_GATEWAY_DRAIN_DELAY", default_value_t = Dur(D.server.drain_delay))]
    drain_delay: Dur,

    /// Longest wait for in-flight calls to finish after a shutdown signal.
    #[arg(long, env = "AUDIT_GATEWAY_SHUTDOWN_TIMEOUT", default_value_t = Dur(D.server.shutdown_timeout))]
    shutdown_timeout: Dur,

    /// Send GOAWAY on connections older than this, so clients reconnect and a mesh or
    /// load balancer spreads them over the replicas again; unset: never.
    #[arg(long, env = "AUDIT_GATEWAY_MAX_CONNECTION_AGE")]
    max_connection_age: Option<Dur>,

    /// Close an aged connection this long after its GOAWAY even if calls are still open;
    /// unset: let them end (streams and followers resume elsewhere when they do).
    #[arg(long, env = "AUDIT_GATEWAY_MAX_CONNECTION_AGE_GRACE")]
    max_connection_age_grace: Option<Dur>,

    /// HTTP/2 PING interval on connections.
    #[arg(long, env = "AUDIT_GATEWAY_HTTP2_KEEPALIVE_INTERVAL", default_value_t = Dur(D.server.http2_keepalive_interval))]
    http2_keepalive_interval: Dur,

    /// Close a connection whose PING goes unanswered this long.
    #[arg(long, env = "AUDIT_GATEWAY_HTTP2_KEEPALIVE_TIMEOUT", default_value_t = Dur(D.server.http2_keepalive_timeout))]
    http2_keepalive_timeout: Dur,

    /// Largest request message accepted.
    #[arg(long, env = "AUDIT_GATEWAY_MAX_REQUEST_BYTES", default_value_t = Size(D.server.max_request_bytes as u64))]
    max_request_bytes: Size,

    /// Compress responses for callers that accept it: none, gzip, zstd or both. Off by
    /// default: inside a mesh the CPU costs more than the bytes saved (docs/benchmarks.md).
    #[arg(long, env = "AUDIT_GATEWAY_COMPRESS_RESPONSES", default_value_t = D.server.compress_responses)]
    compress_responses: ResponseCompression,
}

/// A secret given inline or in a file (its trailing newline trimmed), by `flag`.
fn secret(
    inline: Option<SecretString>,
    file: Option<PathBuf>,
    flag: &'static str,
) -> Result<Option<SecretString>, ConfigError> {
    match (inline, file) {
        (Some(s), _) => Ok(Some(s)),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned().into()))
            .map_err(|e| {
                ConfigError::caused_by(flag, format!("cannot read {}", path.display()), e)
            }),
        (None, None) => Ok(None),
    }
}

/// Whose credential calls Confluence, from the flags that may give one.
fn upstream_auth(
    passthrough: bool,
    email: Option<String>,
    api_token: Option<SecretString>,
    bearer: Option<SecretString>,
) -> Result<UpstreamAuth, ConfigError> {
    match (email, api_token, bearer) {
        _ if passthrough => Ok(UpstreamAuth::Passthrough),
        (Some(email), Some(api_token), _) => Ok(UpstreamAuth::Basic { email, api_token }),
        (None, Some(_), _) | (Some(_), None, None) => Err(ConfigError::new(
            "--confluence-email",
            "basic auth needs --confluence-email and --confluence-api-token (or \
             --confluence-api-token-file) together",
        )),
        (_, _, Some(token)) => Ok(UpstreamAuth::Bearer(token)),
        _ => Ok(UpstreamAuth::Anonymous),
    }
}

impl TryFrom<ServeArgs> for GatewayConfig {
    type Error = ConfigError;

    fn try_from(a: ServeArgs) -> Result<Self, ConfigError> {
        let auth = upstream_auth(
            a.auth_passthrough,
            a.confluence_email,
            secret(
                a.confluence_api_token,
                a.confluence_api_token_file,
                "--confluence-api-token-file",
            )?,
            secret(
                a.confluence_bearer_token,
                a.confluence_bearer_token_file,
                "--confluence-bearer-token-file",
            )?,
        )?;
        Ok(GatewayConfig {
            listen: a.listen,
            confluence_url: a.confluence_url,
            auth,
            caller_tokens_file: a.caller_tokens_file,
            allow_unauthenticated: a.allow_unauthenticated,
            allow_ephemeral_tokens: a.allow_ephemeral_tokens,
            allow_insecure_upstream: a.allow_insecure_upstream,
            passthrough_revalidate: a.passthrough_revalidate.0,
            passthrough_negative_ttl: a.passthrough_negative_ttl.0,
            allow_plaintext_credentials: a.allow_plaintext_credentials,
            caller_header: a.caller_header,
            caller_max_streams: a.caller_max_streams,
            caller_miss_rate: a.caller_miss_rate,
            tls_cert: a.tls_cert,
            tls_key: a.tls_key,
            tls_client_ca: a.tls_client_ca,
            upstream: UpstreamConfig {
                timeout: a.upstream_timeout.0,
                connect_timeout: a.upstream_connect_timeout.0,
                retries: a.upstream_retries,
                backoff: a.upstream_backoff.0,
                max_backoff: a.upstream_max_backoff.0,
                max_cooldown: a.upstream_max_cooldown.0,
                max_body: a.upstream_max_body.0,
                concurrency: a.upstream_concurrency,
                concurrency_floor: a.upstream_concurrency_floor,
                flavor: match a.confluence_flavor {
                    Flavor::Cloud => ConfluenceFlavor::Cloud,
                    Flavor::DataCenter => ConfluenceFlavor::DataCenter,
                    Flavor::Auto => ConfluenceFlavor::Auto,
                },
            },
            credential_salt: secret(
                a.credential_salt,
                a.credential_salt_file,
                "--credential-salt-file",
            )?,
            cache: CacheConfig {
                ttl: a.cache_ttl.0,
                max_bytes: a.cache_max_bytes.0,
            },
            redis: RedisConfig {
                url: a.redis_url,
                cluster: a.redis_cluster,
                timeout: a.redis_timeout.0,
                pause: a.redis_pause.0,
                key_prefix: a.redis_key_prefix.into(),
            },
            stream_prefetch: a.stream_prefetch,
            stream_buffer_bytes: a.stream_buffer_bytes.0,
            stream_idle_timeout: a.stream_idle_timeout.0,
            max_streams: a.max_streams,
            metrics_listen: a.metrics_listen,
            http_listen: a.http_listen,
            server: ServerConfig {
                drain_delay: a.drain_delay.0,
                shutdown_timeout: a.shutdown_timeout.0,
                max_connection_streams: a.max_connection_streams,
                max_connection_age: a.max_connection_age.map(|d| d.0),
                max_connection_age_grace: a.max_connection_age_grace.map(|d| d.0),
                http2_keepalive_interval: a.http2_keepalive_interval.0,
                http2_keepalive_timeout: a.http2_keepalive_timeout.0,
                max_request_bytes: usize::try_from(a.max_request_bytes.0).unwrap_or(usize::MAX),
                compress_responses: a.compress_responses,
            },
        })
    }
}

/// Writes where `gateway` listens to `path` as one JSON line, through a file beside it
/// renamed into place: a reader never sees half of it.
pub(crate) fn write_ready_file(path: &std::path::Path, gateway: &Gateway) -> std::io::Result<()> {
    let line = serde_json::json!({
        "grpc": gateway.local_addr().to_string(),
        "metrics": gateway.metrics_addr().map(|a| a.to_string()),
        "http": gateway.http_addr().map(|a| a.to_string()),
    });
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let partial = path.with_file_name(name);
    std::fs::write(&partial, format!("{line}\n"))?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use secrecy::ExposeSecret;

    use super::*;
    use crate::cli::{Cli, Command};

    /// What the command line or the configuration said when it refused arguments.
    #[derive(Debug)]
    struct Refused(String);

    /// The configuration `serve` builds from `args`, or the message it fails with.
    fn parse(args: &[&str]) -> Result<GatewayConfig, Refused> {
        let mut argv = vec!["audit-gateway", "serve", "--confluence-url", "http://x"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| Refused(e.to_string()))?
            .command
        {
            Command::Serve(s) => GatewayConfig::try_from(*s).map_err(|e| Refused(e.to_string())),
            _ => unreachable!("serve"),
        }
    }

    #[test]
    fn secrets_come_from_files_as_kubernetes_mounts_them() {
        let dir = std::env::temp_dir().join(format!("audit-gateway-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let token = dir.join("token");
        std::fs::write(&token, "zq-from-file\n").expect("write");
        let salt = dir.join("salt");
        std::fs::write(&salt, "a salt of at least sixteen\r\n").expect("write");
        let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
        let c = parse(&[
            "--confluence-bearer-token-file",
            &path(&token),
            "--credential-salt-file",
            &path(&salt),
        ])
        .expect("parses");
        assert!(matches!(&c.auth, UpstreamAuth::Bearer(t) if t.expose_secret() == "zq-from-file"));
        assert_eq!(
            c.credential_salt
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            Some("a salt of at least sixteen".to_owned())
        );
        let missing = parse(&[
            "--confluence-api-token-file",
            &path(&dir.join("nope")),
            "--confluence-email",
            "a@b",
        ]);
        let Refused(err) = missing.expect_err("refused");
        assert!(err.starts_with("--confluence-api-token-file"), "{err}");
        assert!(
            parse(&[
                "--confluence-bearer-token",
                "t",
                "--confluence-bearer-token-file",
                &path(&token)
            ])
            .is_err()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_flags_give_the_library_defaults() {
        let c = parse(&[]).expect("parses");
        let d = GatewayConfig::default();
        assert_eq!(
            format!("{c:?}"),
            format!(
                "{:?}",
                GatewayConfig {
                    confluence_url: "http://x".into(),
                    ..d
                }
            )
        );
    }

    #[test]
    fn flags_fill_their_fields() {
        let c = parse(&[
            "--upstream-retries",
            "2",
            "--cache-ttl",
            "250ms",
            "--cache-max-bytes",
            "4MiB",
            "--max-streams",
            "3",
            "--upstream-concurrency",
            "5",
            "--stream-idle-timeout",
            "300ms",
            "--max-connection-streams",
            "7",
            "--confluence-bearer-token",
            "tok",
        ])
        .expect("parses");
        assert_eq!(c.upstream.retries, 2);
        assert_eq!(c.cache.ttl, std::time::Duration::from_millis(250));
        assert_eq!(c.cache.max_bytes, 4 << 20);
        assert_eq!((c.max_streams, c.server.max_connection_streams), (3, 7));
        assert_eq!(c.upstream.concurrency, 5);
        assert_eq!(c.stream_idle_timeout, std::time::Duration::from_millis(300));
        assert!(matches!(&c.auth, UpstreamAuth::Bearer(t) if t.expose_secret() == "tok"));
    }

    #[test]
    fn ephemeral_tokens_are_a_flag() {
        assert!(!parse(&[]).expect("parses").allow_ephemeral_tokens);
        let c = parse(&["--allow-ephemeral-tokens"]).expect("parses");
        assert!(c.allow_ephemeral_tokens);
    }

    #[test]
    fn credentials_conflict_and_pair() {
        assert!(parse(&["--confluence-email", "a@b"]).is_err());
        assert!(parse(&["--confluence-bearer-token", "t", "--auth-passthrough"]).is_err());
        assert!(matches!(
            parse(&["--confluence-email", "a@b", "--confluence-api-token", "t"]).map(|c| c.auth),
            Ok(UpstreamAuth::Basic { .. })
        ));
        assert!(matches!(
            parse(&["--auth-passthrough"]).map(|c| c.auth),
            Ok(UpstreamAuth::Passthrough)
        ));
        assert!(parse(&["--listen", "nowhere"]).is_err());
    }
}
