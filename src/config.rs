//! The gateway's configuration: plain data with defaults, checked in one place
//! ([`GatewayConfig::check`]) with errors that name the flag to change. The command line
//! (`src/cli/serve.rs`) only fills it in; tests and benches set its fields directly.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::{
    cache::{CacheConfig, RedisConfig},
    callers::CallerTokens,
    credential::{Credential, CredentialMode, FingerprintKey},
    server::ServerConfig,
    tls::{ReloadingTls, TlsFiles},
    upstream::UpstreamConfig,
};

/// The longest page TTL accepted: audit pages go stale, and the cache cannot hold
/// entries for centuries.
const MAX_CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most retries of one upstream call.
const MAX_RETRIES: u32 = 10;
/// Most pages a stream fetches ahead.
const MAX_PREFETCH: usize = 64;
/// Shortest credential salt: it keys fingerprints, resume tokens and shared cache keys.
const MIN_SALT_CHARS: usize = 16;

/// Everything a gateway needs to start.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// gRPC address (`--listen`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// Confluence base URL, everything before `/rest/api` (`--confluence-url`).
    pub confluence_url: String,
    /// Whose credential calls Confluence.
    pub auth: UpstreamAuth,
    /// Callers allowed in, `name:token` lines (`--caller-tokens-file`); `None`: anyone
    /// who reaches the port.
    pub caller_tokens_file: Option<PathBuf>,
    /// Serve a non-loopback address without caller authentication
    /// (`--allow-unauthenticated`: a mesh whose sidecars authenticate callers).
    pub allow_unauthenticated: bool,
    /// Serve a non-loopback address without `--credential-salt`, so resume tokens and
    /// follow checkpoints die with the process (`--allow-ephemeral-tokens`).
    pub allow_ephemeral_tokens: bool,
    /// Accept a plain-HTTP Confluence URL that is not loopback (`--allow-insecure-upstream`).
    pub allow_insecure_upstream: bool,
    /// With passthrough, how long Confluence's acceptance of a caller's credential lets
    /// cached pages be served to it (`--passthrough-revalidate`).
    pub passthrough_revalidate: Duration,
    /// With `--auth-passthrough`: how long a credential Confluence refused (401/403) is
    /// refused locally, without asking it again (`--passthrough-negative-ttl`).
    pub passthrough_negative_ttl: Duration,
    /// Caller tokens or passthrough credentials may arrive in clear on a non-loopback
    /// address (`--allow-plaintext-credentials`): a mesh sidecar terminates mTLS beside
    /// the gateway.
    pub allow_plaintext_credentials: bool,
    /// A request header naming the caller, set by a mesh that authenticates callers
    /// (`--caller-header`; `x-forwarded-client-cert` is read for its `URI`).
    pub caller_header: Option<String>,
    /// Most streams and followers one caller holds open (`--caller-max-streams`);
    /// `None`: a quarter of `max_streams`.
    pub caller_max_streams: Option<usize>,
    /// `GetSince` calls a second one caller may answer from Confluence rather than the
    /// cache, cache misses and `no-cache` refreshes (`--caller-miss-rate`; bursts of
    /// twice that); 0: no limit.
    pub caller_miss_rate: u32,
    /// TLS certificate chain of the gRPC port, PEM (`--tls-cert`); `None`: plaintext.
    pub tls_cert: Option<PathBuf>,
    /// Its private key, PEM (`--tls-key`).
    pub tls_key: Option<PathBuf>,
    /// CA whose client certificates are required (`--tls-client-ca`): mTLS.
    pub tls_client_ca: Option<PathBuf>,
    /// Key of credential fingerprints, resume tokens, follow checkpoints and shared
    /// cache values (`--credential-salt`), the same on every replica; `None`: random
    /// per process.
    pub credential_salt: Option<SecretString>,
    /// How Confluence is called.
    pub upstream: UpstreamConfig,
    /// The in-process page cache.
    pub cache: CacheConfig,
    /// The Redis tier shared by replicas.
    pub redis: RedisConfig,
    /// Pages a `StreamSince` call fetches ahead once its first page is full
    /// (`--stream-prefetch`, 1..=64).
    pub stream_prefetch: usize,
    /// Bytes all streams and followers together may hold in pages read ahead past the
    /// first two of each (`--stream-buffer-bytes`); deeper look-ahead waits for room.
    pub stream_buffer_bytes: u64,
    /// A stream whose caller takes nothing for this long ends (`--stream-idle-timeout`,
    /// larger than 0).
    pub stream_idle_timeout: Duration,
    /// Most `StreamSince` calls open at once, gateway-wide (`--max-streams`, at least 1);
    /// one more is refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Where to serve Prometheus metrics (`--metrics-listen`); `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve read access over HTTP/JSON (`--http-listen`, plain HTTP/1.1);
    /// `None`: nowhere.
    pub http_listen: Option<SocketAddr>,
    /// Connections, requests, compression and stopping.
    pub server: ServerConfig,
}

/// Whose credential the gateway sends to Confluence.
#[derive(Clone, Debug, Default)]
pub enum UpstreamAuth {
    /// None: Confluence sees anonymous calls (it answers 401 or 403).
    #[default]
    Anonymous,
    /// Basic auth with an account email and API token (Confluence Cloud).
    Basic {
        /// `--confluence-email`.
        email: String,
        /// `--confluence-api-token`.
        api_token: SecretString,
    },
    /// A bearer token (`--confluence-bearer-token`): Data Center PAT, OAuth 2.0, scoped.
    Bearer(SecretString),
    /// Each caller's `authorization` metadata, forwarded (`--auth-passthrough`).
    Passthrough,
}

impl GatewayConfig {
    /// The defaults, the only place they are written: the command line shows these.
    pub const DEFAULT: Self = Self {
        listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 50051)),
        confluence_url: String::new(),
        auth: UpstreamAuth::Anonymous,
        caller_tokens_file: None,
        allow_unauthenticated: false,
        allow_ephemeral_tokens: false,
        allow_insecure_upstream: false,
        passthrough_revalidate: Duration::from_secs(60),
        passthrough_negative_ttl: Duration::from_secs(60),
        allow_plaintext_credentials: false,
        caller_header: None,
        caller_max_streams: None,
        // Fifty pages a second is far more than a person or a dashboard asks; a loop
        // that asks more is refused before it spends the credential's rate limit.
        caller_miss_rate: 50,
        tls_cert: None,
        tls_key: None,
        tls_client_ca: None,
        credential_salt: None,
        upstream: UpstreamConfig::DEFAULT,
        cache: CacheConfig::DEFAULT,
        redis: RedisConfig::DEFAULT,
        // Twice the pacing ceiling: the pipeline keeps every slot busy while pages that
        // landed wait to be delivered (docs/benchmarks.md, P3).
        stream_prefetch: 32,
        // 64 MiB: ~180 pages of 1000 records (~350 KiB each) read ahead at once,
        // gateway-wide, besides the two each stream always keeps.
        stream_buffer_bytes: 64 << 20,
        // A reader that has not taken a page for a minute has most likely stalled; its
        // prefetched pages and its slot are worth more to other streams.
        stream_idle_timeout: Duration::from_secs(60),
        // Each stream holds at most three pages outside --stream-buffer-bytes (the one it
        // delivers and two ahead): 256 of them stay within a few hundred MiB.
        max_streams: 256,
        metrics_listen: None,
        http_listen: None,
        server: ServerConfig::DEFAULT,
    };

    /// A configuration in front of `confluence_url`, everything else default.
    pub fn new(confluence_url: impl Into<String>) -> Self {
        Self {
            confluence_url: confluence_url.into(),
            ..Self::default()
        }
    }

    /// Checks every setting, reads the files they name (caller tokens, TLS) and derives
    /// the keys: what the components are built from. The checks run in the order a
    /// person fixes a command line: where to reach Confluence, who may call, then limits.
    pub(crate) fn check(&self) -> Result<Checked, ConfigError> {
        let base_url = self.upstream_url()?;
        let callers = self.load_callers()?;
        let tls = self.load_tls()?;
        self.check_exposure(callers.is_some(), tls.is_some())?;
        self.check_upstream()?;
        self.check_serving()?;
        self.check_cache()?;
        self.check_redis()?;
        let fingerprints = self.fingerprint_key()?;
        Ok(Checked {
            base_url,
            credentials: self.auth.credentials()?,
            callers,
            tls,
            redis_value_key: self.redis.url.as_ref().map(|_| {
                ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA256,
                    &fingerprints.derive(b"audit-gateway redis value"),
                )
            }),
            fingerprints,
        })
    }

    /// `--confluence-url`, https unless it is loopback or plain HTTP is allowed.
    fn upstream_url(&self) -> Result<Url, ConfigError> {
        let base_url = parse_base_url(&self.confluence_url)?;
        if base_url.scheme() == "http"
            && !is_loopback_host(&base_url)
            && !self.allow_insecure_upstream
        {
            return Err(ConfigError::new(
                "--confluence-url",
                "must be https: the credential and the audit log would cross the network in \
                 clear (--allow-insecure-upstream allows plain HTTP, e.g. for a test server)",
            ));
        }
        Ok(base_url)
    }

    /// The callers `--caller-tokens-file` names, read now.
    fn load_callers(&self) -> Result<Option<Arc<CallerTokens>>, ConfigError> {
        let passthrough = matches!(self.auth, UpstreamAuth::Passthrough);
        let callers = match &self.caller_tokens_file {
            Some(_) if passthrough => {
                return Err(ConfigError::new(
                    "--caller-tokens-file",
                    "not combinable with --auth-passthrough: the authorization metadata \
                     cannot be both the caller's gateway token and its Confluence credential",
                ));
            }
            Some(path) => {
                Some(Arc::new(CallerTokens::load(path).map_err(|e| {
                    ConfigError::from_error("--caller-tokens-file", e)
                })?))
            }
            None => None,
        };
        Ok(callers)
    }

    /// The TLS acceptor `--tls-cert`, `--tls-key` and `--tls-client-ca` describe, read now.
    fn load_tls(&self) -> Result<Option<Arc<ReloadingTls>>, ConfigError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                ReloadingTls::load(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                })
                .map_err(|(flag, why)| ConfigError::new(flag, why))?,
            )),
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(ConfigError::new(
                    "--tls-client-ca",
                    "needs --tls-cert and --tls-key",
                ));
            }
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::new("--tls-key", "needed with --tls-cert")),
            (None, Some(_)) => return Err(ConfigError::new("--tls-cert", "needed with --tls-key")),
        };
        Ok(tls)
    }

    /// Who may reach the gateway, and how their credentials travel: an address other
    /// hosts reach needs callers authenticated, and their credentials in TLS.
    fn check_exposure(&self, has_callers: bool, has_tls: bool) -> Result<(), ConfigError> {
        let passthrough = matches!(self.auth, UpstreamAuth::Passthrough);
        let mtls = has_tls && self.tls_client_ca.is_some();
        if !self.listen.ip().is_loopback()
            && !has_callers
            && !passthrough
            && !mtls
            && !self.allow_unauthenticated
        {
            return Err(ConfigError::new(
                "--listen",
                format!(
                    "{} is reachable from other hosts, and anyone who reaches it would read \
                     the whole audit log: set --caller-tokens-file, --tls-client-ca (mTLS), \
                     or --auth-passthrough, or --allow-unauthenticated where a mesh \
                     authenticates callers",
                    self.listen
                ),
            ));
        }
        // A bearer token read off the wire is a credential: off the machine it travels in
        // TLS, or inside a mesh whose sidecar encrypts it (the flag says so).
        if !self.listen.ip().is_loopback()
            && !has_tls
            && (has_callers || passthrough)
            && !self.allow_plaintext_credentials
        {
            return Err(ConfigError::new(
                "--listen",
                format!(
                    "{} is reachable from other hosts without TLS, so callers' {} would cross \
                     the network in clear: set --tls-cert and --tls-key, or \
                     --allow-plaintext-credentials where a mesh sidecar beside the gateway \
                     encrypts the traffic",
                    self.listen,
                    if passthrough {
                        "Confluence credentials"
                    } else {
                        "gateway tokens"
                    }
                ),
            ));
        }
        if let Some(name) = &self.caller_header
            && (name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                || name.ends_with("-bin"))
        {
            return Err(ConfigError::new(
                "--caller-header",
                "a header name: letters, digits, '-' and '_', not a binary (-bin) header",
            ));
        }
        if self.caller_max_streams == Some(0) {
            return Err(ConfigError::new(
                "--caller-max-streams",
                "must be at least 1",
            ));
        }
        // HTTP/JSON is always plain: the same rule as a plain gRPC port.
        if let Some(http) = self.http_listen
            && !http.ip().is_loopback()
            && (has_callers || passthrough)
            && !self.allow_plaintext_credentials
        {
            return Err(ConfigError::new(
                "--http-listen",
                format!(
                    "{http} is reachable from other hosts and HTTP/JSON is served without TLS, \
                     so callers' credentials would cross the network in clear: listen on \
                     loopback, or set --allow-plaintext-credentials where a mesh sidecar \
                     beside the gateway encrypts the traffic"
                ),
            ));
        }
        Ok(())
    }

    /// How the gateway calls Confluence.
    fn check_upstream(&self) -> Result<(), ConfigError> {
        let u = &self.upstream;
        if u.retries > MAX_RETRIES {
            return Err(ConfigError::new(
                "--upstream-retries",
                format!("at most {MAX_RETRIES}, got {}", u.retries),
            ));
        }
        for (flag, d) in [
            ("--upstream-timeout", u.timeout),
            ("--upstream-connect-timeout", u.connect_timeout),
            ("--upstream-max-cooldown", u.max_cooldown),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(flag, "must be larger than 0"));
            }
        }
        if u.max_body == 0 || usize::try_from(u.max_body).is_err() {
            return Err(ConfigError::new(
                "--upstream-max-body",
                "must be between 1 byte and usize::MAX",
            ));
        }
        if u.concurrency == 0 {
            return Err(ConfigError::new(
                "--upstream-concurrency",
                "must be at least 1",
            ));
        }
        if u.concurrency_floor == 0 {
            return Err(ConfigError::new(
                "--upstream-concurrency-floor",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The limits of serving callers: streams, connections, requests.
    fn check_serving(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        if !(1..=MAX_PREFETCH).contains(&self.stream_prefetch) {
            return Err(ConfigError::new(
                "--stream-prefetch",
                format!(
                    "must be between 1 and {MAX_PREFETCH}, got {}",
                    self.stream_prefetch
                ),
            ));
        }
        if self.stream_idle_timeout.is_zero() {
            return Err(ConfigError::new(
                "--stream-idle-timeout",
                "must be larger than 0",
            ));
        }
        if self.max_streams == 0 {
            return Err(ConfigError::new("--max-streams", "must be at least 1"));
        }
        if server.max_connection_age.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "--max-connection-age",
                "must be larger than 0 (leave it unset for no limit)",
            ));
        }
        if server.http2_keepalive_interval.is_zero() || server.http2_keepalive_timeout.is_zero() {
            return Err(ConfigError::new(
                "--http2-keepalive-interval",
                "the keepalive interval and timeout must be larger than 0",
            ));
        }
        if server.max_request_bytes < 16 << 10 {
            return Err(ConfigError::new(
                "--max-request-bytes",
                "must be at least 16KiB (a follow checkpoint takes up to ~11 KiB)",
            ));
        }
        if server.max_connection_streams == 0 {
            return Err(ConfigError::new(
                "--max-connection-streams",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The cache's bounds and the salt a reachable gateway needs.
    fn check_cache(&self) -> Result<(), ConfigError> {
        let c = &self.cache;
        if c.ttl > MAX_CACHE_TTL {
            return Err(ConfigError::new(
                "--cache-ttl",
                format!("at most {} hours", MAX_CACHE_TTL.as_secs() / 3600),
            ));
        }
        if c.max_bytes == 0 {
            return Err(ConfigError::new(
                "--cache-max-bytes",
                "must be larger than 0",
            ));
        }
        if let Some(salt) = &self.credential_salt
            && salt.expose_secret().chars().count() < MIN_SALT_CHARS
        {
            return Err(ConfigError::new(
                "--credential-salt",
                format!(
                    "at least {MIN_SALT_CHARS} characters (it keys fingerprints and resume tokens)"
                ),
            ));
        }
        // Like caller authentication above: a gateway others reach serves shippers that
        // outlive it, and a random key per process voids their checkpoints at a restart.
        if self.credential_salt.is_none()
            && !self.listen.ip().is_loopback()
            && !self.allow_ephemeral_tokens
        {
            return Err(ConfigError::new(
                "--credential-salt",
                format!(
                    "required on {}, an address other hosts reach: without it the gateway \
                     signs resume tokens and follow checkpoints with a random key, and every \
                     one of them is refused after a restart; set --credential-salt (or \
                     --credential-salt-file), or --allow-ephemeral-tokens to accept that",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// The key of fingerprints, tokens and checkpoints: from the salt, else drawn now.
    fn fingerprint_key(&self) -> Result<FingerprintKey, ConfigError> {
        let fingerprints = match &self.credential_salt {
            Some(salt) => FingerprintKey::from_secret(salt.expose_secret().as_bytes()),
            None => FingerprintKey::random().map_err(|e| {
                ConfigError::caused_by("--credential-salt", "cannot draw a random key", e)
            })?,
        };
        Ok(fingerprints)
    }

    /// The shared tier: its URL, and the salt replicas must share to use it.
    fn check_redis(&self) -> Result<(), ConfigError> {
        let r = &self.redis;
        match &r.url {
            None if r.cluster => Err(ConfigError::new(
                "--redis-cluster",
                "needs --redis-url with the cluster's seed nodes",
            )),
            Some(_) if self.credential_salt.is_none() => Err(ConfigError::new(
                "--credential-salt",
                "required with --redis-url, the same on every replica, so replicas file \
                 pages under the same keys",
            )),
            Some(_) if r.timeout.is_zero() => {
                Err(ConfigError::new("--redis-timeout", "must be larger than 0"))
            }
            _ => Ok(()),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl UpstreamAuth {
    /// The credential mode; a token that cannot travel in a header is refused here, at
    /// start, rather than on every call.
    fn credentials(&self) -> Result<CredentialMode, ConfigError> {
        let configured = |c| Ok(CredentialMode::Configured(Some(c)));
        match self {
            Self::Anonymous => Ok(CredentialMode::Configured(None)),
            Self::Basic { email, api_token } => {
                Credential::basic(email.trim(), api_token.expose_secret().trim())
                    .map_err(|why| ConfigError::new("--confluence-api-token", why))
                    .and_then(configured)
            }
            Self::Bearer(token) => Credential::bearer(token.expose_secret().trim())
                .map_err(|why| ConfigError::new("--confluence-bearer-token", why))
                .and_then(configured),
            Self::Passthrough => Ok(CredentialMode::Passthrough),
        }
    }
}

/// What checking a configuration read and derived: the parts components need beside
/// their own sections of [`GatewayConfig`], which they take as they are.
#[derive(Debug)]
pub(crate) struct Checked {
    /// `--confluence-url`, parsed.
    pub(crate) base_url: Url,
    pub(crate) credentials: CredentialMode,
    pub(crate) callers: Option<Arc<CallerTokens>>,
    pub(crate) tls: Option<Arc<ReloadingTls>>,
    /// The key of the Redis tier's value MACs, with `--redis-url`.
    pub(crate) redis_value_key: Option<ring::hmac::Key>,
    pub(crate) fingerprints: FingerprintKey,
}

/// A setting that cannot work, named by its flag.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct ConfigError {
    /// The command-line flag of the setting, e.g. `--cache-ttl`.
    pub flag: &'static str,
    problem: String,
    #[source]
    source: Option<Cause>,
}

/// What caused a [`ConfigError`]: an error of its own, or, for an error that is the
/// problem itself ([`ConfigError::from_error`]), that error's cause (its own message is
/// the problem already, and is not repeated).
#[derive(Debug)]
struct Cause {
    error: Box<dyn std::error::Error + Send + Sync>,
    skip_message: bool,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.skip_message, self.error.source()) {
            (true, Some(inner)) => std::fmt::Display::fmt(inner, f),
            _ => std::fmt::Display::fmt(&self.error, f),
        }
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self.skip_message {
            true => self.error.source().and_then(std::error::Error::source),
            false => self.error.source(),
        }
    }
}

impl ConfigError {
    /// `flag` cannot work because of `problem`.
    pub fn new(flag: &'static str, problem: impl Into<String>) -> Self {
        Self {
            flag,
            problem: problem.into(),
            source: None,
        }
    }

    /// `flag` cannot work because of `problem`, caused by `source`.
    pub fn caused_by(
        flag: &'static str,
        problem: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            flag,
            problem: problem.into(),
            source: Some(Cause {
                error: Box::new(source),
                skip_message: false,
            }),
        }
    }

    /// `flag` cannot work because of `error`, whose message is the problem and whose
    /// causes follow it.
    pub(crate) fn from_error(
        flag: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let problem = error.to_string();
        let source = error.source().is_some().then(|| Cause {
            error: Box::new(error),
            skip_message: true,
        });
        Self {
            flag,
            problem,
            source,
        }
    }
}

/// Whether a URL's host is this machine (`localhost`, 127.0.0.0/8, ::1).
fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// An http(s) URL without credentials, query or fragment, given before `/rest/api`.
fn parse_base_url(s: &str) -> Result<Url, ConfigError> {
    let flag = "--confluence-url";
    if s.trim().is_empty() {
        return Err(ConfigError::new(
            flag,
            "required (e.g. https://your-domain.atlassian.net/wiki)",
        ));
    }
    let url = Url::parse(s.trim()).map_err(|e| ConfigError::caused_by(flag, "not a URL", e))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(flag, "must be an http:// or https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(
            flag,
            "must not hold credentials; use --confluence-email/--confluence-api-token or \
             --confluence-bearer-token",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(flag, "must not have a query or fragment"));
    }
    if url.path().contains("/rest/api") {
        return Err(ConfigError::new(
            flag,
            "give the base before /rest/api (e.g. https://your-domain.atlassian.net/wiki)",
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag_of(config: &GatewayConfig) -> &'static str {
        match config.check() {
            Err(e) => e.flag,
            Ok(_) => panic!("expected {config:?} to be refused"),
        }
    }

    #[test]
    fn defaults_need_only_a_url_and_a_word_on_callers() {
        assert_eq!(flag_of(&GatewayConfig::default()), "--confluence-url");
        // 0.0.0.0 by default: serving the whole audit log to anyone needs saying so.
        let url = "https://x.atlassian.net/wiki";
        assert_eq!(flag_of(&GatewayConfig::new(url)), "--listen");
        let salted = || {
            let mut c = GatewayConfig::new(url);
            c.credential_salt = Some("sixteen chars ok".into());
            c
        };
        let open = GatewayConfig {
            allow_unauthenticated: true,
            ..salted()
        };
        assert!(open.check().is_ok());
        let loopback = GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..GatewayConfig::new(url)
        };
        assert!(loopback.check().is_ok());
        // Credentials read off the wire need TLS off the machine, or a word that a
        // mesh sidecar encrypts them.
        let passthrough = GatewayConfig {
            auth: UpstreamAuth::Passthrough,
            ..salted()
        };
        let e = passthrough.check().expect_err("cleartext credentials");
        assert_eq!(e.flag, "--listen", "{e}");
        assert!(
            e.to_string().contains("--allow-plaintext-credentials"),
            "{e}"
        );
        let meshed = GatewayConfig {
            allow_plaintext_credentials: true,
            ..passthrough.clone()
        };
        assert!(meshed.check().is_ok());
        let local = GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..passthrough
        };
        assert!(local.check().is_ok(), "loopback never leaves the machine");
        // HTTP/JSON has no TLS: off loopback it takes the same word, whatever --listen.
        let http = GatewayConfig {
            http_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            ..local.clone()
        };
        assert_eq!(http.check().expect_err("cleartext").flag, "--http-listen");
        let http_local = GatewayConfig {
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            ..local
        };
        assert!(http_local.check().is_ok());
    }

    #[test]
    fn a_reachable_gateway_needs_a_salt_or_a_word_on_ephemeral_tokens() {
        let url = "https://x.atlassian.net/wiki";
        // Callers are authenticated, but every checkpoint would die with the process.
        let unsalted = GatewayConfig {
            auth: UpstreamAuth::Passthrough,
            allow_plaintext_credentials: true,
            ..GatewayConfig::new(url)
        };
        let e = unsalted.check().expect_err("refused");
        assert_eq!(e.flag, "--credential-salt", "{e}");
        assert!(e.to_string().contains("--allow-ephemeral-tokens"), "{e}");
        let ephemeral = GatewayConfig {
            allow_ephemeral_tokens: true,
            ..unsalted.clone()
        };
        assert!(ephemeral.check().is_ok());
        let mut salted = unsalted.clone();
        salted.credential_salt = Some("sixteen chars ok".into());
        assert!(salted.check().is_ok());
        for loopback in [[127, 0, 0, 1], [127, 9, 9, 9]] {
            let local = GatewayConfig {
                listen: SocketAddr::from((loopback, 0)),
                ..unsalted.clone()
            };
            assert!(local.check().is_ok(), "{loopback:?}");
        }
        let v6 = GatewayConfig {
            listen: "[::]:0".parse().expect("address"),
            ..unsalted.clone()
        };
        assert_eq!(flag_of(&v6), "--credential-salt");
        let v6_loopback = GatewayConfig {
            listen: "[::1]:0".parse().expect("address"),
            ..unsalted
        };
        assert!(v6_loopback.check().is_ok());
    }

    #[test]
    fn plain_http_upstreams_must_be_loopback_or_allowed() {
        let local = |url: &str| GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..GatewayConfig::new(url)
        };
        for ok in [
            "http://127.0.0.1:8090/wiki",
            "http://localhost/wiki",
            "http://[::1]:1/",
        ] {
            assert!(local(ok).check().is_ok(), "{ok}");
        }
        assert_eq!(
            flag_of(&local("http://confluence.example.com")),
            "--confluence-url"
        );
        let allowed = GatewayConfig {
            allow_insecure_upstream: true,
            ..local("http://confluence.example.com")
        };
        assert!(allowed.check().is_ok());
    }

    #[test]
    fn caller_tokens_are_read_at_start_and_exclude_passthrough() {
        let dir = std::env::temp_dir().join(format!("audit-gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("callers");
        std::fs::write(&good, "siem:zq-token\n").expect("write");
        let bad = dir.join("bad");
        std::fs::write(&bad, "no colon\n").expect("write");
        let with = |path: &std::path::Path, auth: UpstreamAuth| {
            let mut c = GatewayConfig {
                caller_tokens_file: Some(path.to_owned()),
                auth,
                allow_plaintext_credentials: true,
                ..GatewayConfig::new("https://x.atlassian.net/wiki")
            };
            c.credential_salt = Some("sixteen chars ok".into());
            c
        };
        // Tokens on 0.0.0.0 are enough; a bad file, a missing one or passthrough is not.
        assert!(with(&good, UpstreamAuth::Anonymous).check().is_ok());
        let cleartext = GatewayConfig {
            allow_plaintext_credentials: false,
            ..with(&good, UpstreamAuth::Anonymous)
        };
        assert_eq!(
            flag_of(&cleartext),
            "--listen",
            "tokens in clear off the machine"
        );
        assert_eq!(
            flag_of(&with(&bad, UpstreamAuth::Anonymous)),
            "--caller-tokens-file"
        );
        assert_eq!(
            flag_of(&with(&dir.join("missing"), UpstreamAuth::Anonymous)),
            "--caller-tokens-file"
        );
        assert_eq!(
            flag_of(&with(&good, UpstreamAuth::Passthrough)),
            "--caller-tokens-file"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn base_urls() {
        for bad in [
            "ftp://x",
            "https://u:p@x/wiki",
            "https://x/wiki/rest/api/audit/since",
            "https://x/wiki?q=1",
            "not a url",
        ] {
            assert_eq!(
                flag_of(&GatewayConfig::new(bad)),
                "--confluence-url",
                "{bad}"
            );
        }
    }

    #[test]
    fn each_bad_setting_names_its_flag() {
        let base = || GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..GatewayConfig::new("http://127.0.0.1:1/wiki")
        };
        let mut c = base();
        c.upstream.retries = 11;
        assert_eq!(flag_of(&c), "--upstream-retries");
        let mut c = base();
        c.stream_prefetch = 0;
        assert_eq!(flag_of(&c), "--stream-prefetch");
        let mut c = base();
        c.cache.ttl = Duration::from_secs(8 * 24 * 3600);
        assert_eq!(flag_of(&c), "--cache-ttl");
        let mut c = base();
        c.redis.url = Some("redis://127.0.0.1:1/0".into());
        assert_eq!(flag_of(&c), "--credential-salt");
        c.credential_salt = Some("short".into());
        assert_eq!(flag_of(&c), "--credential-salt");
        c.credential_salt = Some("sixteen chars ok".into());
        c.redis.timeout = Duration::ZERO;
        assert_eq!(flag_of(&c), "--redis-timeout");
        let mut c = base();
        c.redis.cluster = true;
        assert_eq!(flag_of(&c), "--redis-cluster");
        let mut c = base();
        c.upstream.max_body = 0;
        assert_eq!(flag_of(&c), "--upstream-max-body");
        let mut c = base();
        c.upstream.concurrency = 0;
        assert_eq!(flag_of(&c), "--upstream-concurrency");
        let mut c = base();
        c.stream_idle_timeout = Duration::ZERO;
        assert_eq!(flag_of(&c), "--stream-idle-timeout");
        let mut c = base();
        c.max_streams = 0;
        assert_eq!(flag_of(&c), "--max-streams");
        let mut c = base();
        c.server.max_connection_streams = 0;
        assert_eq!(flag_of(&c), "--max-connection-streams");
    }

    #[test]
    fn tokens_are_checked_at_start_and_never_printed() {
        let mut c = GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..GatewayConfig::new("https://x")
        };
        // A trailing newline (a token read from a file) is trimmed; an inner one refused.
        c.auth = UpstreamAuth::Bearer("tok-123\n".into());
        let checked = c.check().expect("valid");
        match &checked.credentials {
            CredentialMode::Configured(Some(cred)) => assert_eq!(cred.expose(), "Bearer tok-123"),
            other => panic!("expected a configured credential, got {other:?}"),
        }
        assert!(!format!("{c:?}").contains("tok-123"), "{c:?}");
        c.auth = UpstreamAuth::Bearer("tok\n123".into());
        assert_eq!(flag_of(&c), "--confluence-bearer-token");
        c.auth = UpstreamAuth::Basic {
            email: "a@b".into(),
            api_token: "".into(),
        };
        assert_eq!(flag_of(&c), "--confluence-api-token");
    }

    #[test]
    fn errors_keep_their_source() {
        let e = GatewayConfig::new("http://[::1")
            .check()
            .expect_err("refused");
        assert!(std::error::Error::source(&e).is_some(), "{e:?}");
    }
}
