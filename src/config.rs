//! The command line: every flag has an environment variable; a wrong setting fails at
//! start with one line naming it.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::{
    credential::Credential,
    simulator::{Fault, SimulatorConfig},
    upstream::RetryPolicy,
};

/// audit-gateway: the Confluence audit log over gRPC.
#[derive(Debug, Parser)]
#[command(name = "audit-gateway", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once at start; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve `confluence.audit.v1.AuditService` in front of a Confluence site.
    Serve(ServeArgs),
    /// Serve a synthetic Confluence audit API (for demos, tests and benchmarks).
    Simulate(SimulateArgs),
    /// Run a simulator and a gateway in front of it, query it once, keep serving.
    Demo(DemoArgs),
    /// Call `GetSince` on a gateway and print the page as Confluence's JSON.
    Get(GetArgs),
    /// Call `StreamSince` on a gateway and print each record as one JSON line.
    Stream(StreamArgs),
}

/// `serve` settings.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on; port 0 picks a free port (the bound address is logged).
    #[arg(long, env = "AUDIT_GATEWAY_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Confluence base URL, everything before `/rest/api`
    /// (e.g. https://your-domain.atlassian.net/wiki).
    #[arg(long, env = "CONFLUENCE_URL", value_parser = parse_base_url)]
    pub confluence_url: Url,

    /// How to call Confluence.
    #[command(flatten)]
    pub upstream: UpstreamArgs,

    /// The page cache.
    #[command(flatten)]
    pub cache: CacheArgs,

    /// Pages a StreamSince call fetches ahead, concurrently, once its first page is
    /// full (16: a 40-page window at 100 ms per page streams 7x faster than paging).
    #[arg(long, env = "AUDIT_GATEWAY_STREAM_PREFETCH", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub stream_prefetch: u16,

    /// Serve Prometheus metrics on this address (`GET /metrics`); unset: none.
    #[arg(long, env = "AUDIT_GATEWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Wait this long after a shutdown signal, reporting NOT_SERVING, before refusing
    /// new connections (lets a mesh stop routing here first).
    #[arg(long, env = "AUDIT_GATEWAY_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// Longest wait for in-flight calls to finish after a shutdown signal.
    #[arg(long, env = "AUDIT_GATEWAY_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// How the gateway calls Confluence.
#[derive(Clone, Debug, Args)]
pub struct UpstreamArgs {
    /// Account email for basic auth (Confluence Cloud), with --confluence-api-token.
    #[arg(long, env = "CONFLUENCE_EMAIL", requires = "confluence_api_token")]
    pub confluence_email: Option<String>,

    /// API token for basic auth, with --confluence-email.
    #[arg(
        long,
        env = "CONFLUENCE_API_TOKEN",
        hide_env_values = true,
        requires = "confluence_email"
    )]
    pub confluence_api_token: Option<Secret>,

    /// Bearer token (Data Center personal access token, OAuth 2.0 or scoped token).
    #[arg(
        long,
        env = "CONFLUENCE_BEARER_TOKEN",
        hide_env_values = true,
        conflicts_with_all = ["confluence_email", "confluence_api_token"]
    )]
    pub confluence_bearer_token: Option<Secret>,

    /// Forward each caller's `authorization` metadata to Confluence instead of a
    /// configured credential; calls without one get UNAUTHENTICATED.
    #[arg(
        long,
        env = "AUDIT_GATEWAY_AUTH_PASSTHROUGH",
        conflicts_with_all = ["confluence_email", "confluence_api_token", "confluence_bearer_token"]
    )]
    pub auth_passthrough: bool,

    /// Time-out of one upstream attempt, body included.
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Time-out of connecting to Confluence.
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// Retries of a transient upstream failure (connection trouble, 429, 502, 503, 504;
    /// a plain 500 once).
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_RETRIES", default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub upstream_retries: u32,

    /// First backoff ceiling; it doubles per retry (full jitter).
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_BACKOFF", default_value = "200ms", value_parser = parse_duration)]
    pub upstream_backoff: Duration,

    /// Largest backoff and largest `Retry-After` honoured.
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_MAX_BACKOFF", default_value = "30s", value_parser = parse_duration)]
    pub upstream_max_backoff: Duration,

    /// Largest upstream page body accepted (e.g. 64MiB).
    #[arg(long, env = "AUDIT_GATEWAY_UPSTREAM_MAX_BODY", default_value = "64MiB", value_parser = parse_bytes)]
    pub upstream_max_body: u64,
}

impl UpstreamArgs {
    /// The configured credential, if any; a token that cannot travel in a header is
    /// refused here, at start, rather than on every call.
    pub fn credential(&self) -> Result<Option<Credential>, String> {
        match (
            &self.confluence_email,
            &self.confluence_api_token,
            &self.confluence_bearer_token,
        ) {
            (Some(email), Some(token), _) => Credential::basic(email.trim(), token.expose().trim())
                .map(Some)
                .map_err(|why| format!("--confluence-api-token / --confluence-email: {why}")),
            (_, _, Some(token)) => Credential::bearer(token.expose().trim())
                .map(Some)
                .map_err(|why| format!("--confluence-bearer-token: {why}")),
            _ => Ok(None),
        }
    }

    /// The retry policy these flags describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.upstream_retries,
            base_delay: self.upstream_backoff,
            max_delay: self.upstream_max_backoff,
            max_retry_after: self.upstream_max_backoff,
            ..RetryPolicy::default()
        }
    }
}

/// The page cache.
#[derive(Clone, Debug, Args)]
pub struct CacheArgs {
    /// How long a fetched page is served from cache; 0 disables caching.
    #[arg(long, env = "AUDIT_GATEWAY_CACHE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub cache_ttl: Duration,

    /// Bound on the in-process cache, in bytes of encoded pages (e.g. 256MiB).
    #[arg(long, env = "AUDIT_GATEWAY_CACHE_MAX_BYTES", default_value = "16MiB", value_parser = parse_bytes)]
    pub cache_max_bytes: u64,

    /// Secret keying credential fingerprints in cache keys; replicas sharing a cache
    /// tier must share it. Unset: a random key per process.
    #[arg(long, env = "AUDIT_GATEWAY_CREDENTIAL_SALT", hide_env_values = true)]
    pub credential_salt: Option<Secret>,

    /// Redis shared by all replicas, below the in-process cache (redis:// or rediss://,
    /// auth and database in the URL). Unset: in-process cache only.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// Time-out of each Redis operation; a slower Redis is skipped.
    #[arg(long, env = "AUDIT_GATEWAY_REDIS_TIMEOUT", default_value = "50ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// How long Redis is skipped after an error before it is tried again.
    #[arg(long, env = "AUDIT_GATEWAY_REDIS_PAUSE", default_value = "5s", value_parser = parse_duration)]
    pub redis_pause: Duration,

    /// Prefix of the gateway's Redis keys.
    #[arg(
        long,
        env = "AUDIT_GATEWAY_REDIS_KEY_PREFIX",
        default_value = "audit-gateway"
    )]
    pub redis_key_prefix: String,
}

/// A secret setting: `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Self(s.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// `simulate` settings.
#[derive(Clone, Debug, Args)]
pub struct SimulateArgs {
    /// Address to serve HTTP on.
    #[arg(long, env = "SIMULATOR_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,

    /// The simulated Confluence.
    #[command(flatten)]
    pub sim: SimulatorArgs,
}

/// The simulated Confluence.
#[derive(Clone, Debug, Args)]
pub struct SimulatorArgs {
    /// Records in the log at start.
    #[arg(long, default_value_t = 5000)]
    pub records: usize,

    /// Seed of the synthetic content.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Server-side cap on `limit`, as Confluence applies one.
    #[arg(long)]
    pub max_limit: Option<u32>,

    /// Latency added to every answer.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub latency: Duration,

    /// New records added at the head before each request.
    #[arg(long, default_value_t = 0)]
    pub inserts_per_request: u32,

    /// Fraction of requests answered with a random transient fault (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,

    /// Scripted faults served in order to the first requests: 503, 429:retry-after=2,
    /// 403, 500:json, reset, malformed, wrong-shape, delay=250ms. Repeatable.
    #[arg(long = "fault")]
    pub faults: Vec<Fault>,

    /// Require exactly this `Authorization` header (401 otherwise).
    #[arg(long, hide_env_values = true)]
    pub require_authorization: Option<String>,
}

impl SimulatorArgs {
    /// The simulator configuration these flags describe.
    pub fn to_config(&self) -> Result<SimulatorConfig, String> {
        if !(0.0..=1.0).contains(&self.fault_rate) {
            return Err(format!(
                "--fault-rate: must be between 0 and 1, got {}",
                self.fault_rate
            ));
        }
        Ok(SimulatorConfig {
            records: self.records,
            seed: self.seed,
            max_limit: self.max_limit,
            latency: self.latency,
            inserts_per_request: self.inserts_per_request,
            fault_rate: self.fault_rate,
            required_authorization: self.require_authorization.clone(),
            faults: self.faults.clone(),
            ..SimulatorConfig::default()
        })
    }
}

/// `demo` settings.
#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    /// Address the demo gateway serves gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Records in the simulated log.
    #[arg(long, default_value_t = 5000)]
    pub records: usize,

    /// Stop after the first query instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

/// How the `get` and `stream` commands reach a gateway, and the window they ask for.
#[derive(Clone, Debug, Args)]
pub struct CallArgs {
    /// The gateway's address (http://host:port).
    #[arg(
        long,
        env = "AUDIT_GATEWAY_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub gateway: String,

    /// `authorization` metadata to send (for gateways run with --auth-passthrough).
    #[arg(long, env = "AUDIT_GATEWAY_AUTHORIZATION", hide_env_values = true)]
    pub authorization: Option<Secret>,

    /// How many `units` back.
    #[arg(long)]
    pub number: Option<i64>,

    /// NANOS … CENTURIES (default MONTHS).
    #[arg(long, value_parser = parse_units)]
    pub units: Option<crate::audit::TimeUnit>,

    /// Confluence's searchString.
    #[arg(long = "search")]
    pub search: Option<String>,
}

/// `get` settings.
#[derive(Clone, Debug, Args)]
pub struct GetArgs {
    /// The gateway and the window.
    #[command(flatten)]
    pub call: CallArgs,

    /// Offset of the first record.
    #[arg(long)]
    pub start: Option<i32>,

    /// Page size.
    #[arg(long)]
    pub limit: Option<i32>,

    /// Ask the gateway to refetch instead of serving its cache.
    #[arg(long)]
    pub no_cache: bool,

    /// Deadline of the call.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `stream` settings.
#[derive(Clone, Debug, Args)]
pub struct StreamArgs {
    /// The gateway and the window.
    #[command(flatten)]
    pub call: CallArgs,

    /// Records per upstream page (1..=1000).
    #[arg(long)]
    pub page_size: Option<i32>,

    /// Stop after this many records.
    #[arg(long)]
    pub max_records: Option<i64>,

    /// Continue after the message that carried this token (printed to stderr at the end).
    #[arg(long, default_value = "")]
    pub resume_token: String,
}

fn parse_units(s: &str) -> Result<crate::audit::TimeUnit, String> {
    crate::audit::TimeUnit::parse(s).ok_or_else(|| {
        "expected one of NANOS MICROS MILLIS SECONDS MINUTES HOURS HALF_DAYS DAYS WEEKS \
         MONTHS YEARS DECADES CENTURIES"
            .to_owned()
    })
}

/// An http(s) URL without credentials, query or fragment.
pub fn parse_base_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials; use --confluence-email/--confluence-api-token or --confluence-bearer-token".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if url.path().contains("/rest/api") {
        return Err(
            "give the base before /rest/api (e.g. https://your-domain.atlassian.net/wiki)".into(),
        );
    }
    Ok(url)
}

/// A duration like `60s`, `250ms`, `2m`, `1h` or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 60s, 250ms, 2m)"))?;
    let secs = match unit {
        "" if n == 0.0 => 0.0,
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}' is not a duration (units: ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is out of range"))
}

/// A size like `64MiB`, `512KiB`, `1GiB`, `1000000` (bytes).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 64MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return Err(format!("'{s}' is not a size (units: KiB, MiB, GiB)")),
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is out of range"))?;
    if bytes == 0 {
        return Err("must be larger than 0".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1TiB").is_err());
    }

    #[test]
    fn base_urls() {
        assert!(parse_base_url("https://x.atlassian.net/wiki").is_ok());
        assert!(parse_base_url("ftp://x").is_err());
        assert!(parse_base_url("https://u:p@x/wiki").is_err());
        assert!(parse_base_url("https://x/wiki/rest/api/audit/since").is_err());
    }

    #[test]
    fn tokens_are_checked_at_start_and_never_printed() {
        let serve = |args: &[&str]| {
            let mut argv = vec!["audit-gateway", "serve", "--confluence-url", "http://x"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).expect("parses").command {
                Command::Serve(s) => s,
                _ => unreachable!(),
            }
        };
        // A trailing newline (a token read from a file) is trimmed; an inner one refused.
        let ok = serve(&["--confluence-bearer-token", "tok-123\n"]);
        assert_eq!(
            ok.upstream
                .credential()
                .expect("valid")
                .map(|c| c.expose().to_owned()),
            Some("Bearer tok-123".to_owned())
        );
        let bad = serve(&["--confluence-bearer-token", "tok\n123"]);
        let err = bad.upstream.credential().expect_err("refused");
        assert!(err.starts_with("--confluence-bearer-token"), "{err}");
        assert!(!format!("{ok:?}").contains("tok-123"));
    }

    #[test]
    fn credentials_conflict_and_pair() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["audit-gateway", "serve", "--confluence-url", "http://x"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv)
        };
        assert!(parse(&["--confluence-email", "a@b"]).is_err());
        assert!(parse(&["--confluence-bearer-token", "t", "--auth-passthrough"]).is_err());
        assert!(parse(&["--confluence-email", "a@b", "--confluence-api-token", "t"]).is_ok());
        assert!(parse(&["--listen", "nowhere"]).is_err());
    }
}
