//! The simulator's command line, shared by its own binary and the gateway's `simulate`
//! command.

use std::{future::Future, net::SocketAddr, time::Duration};

use clap::Args;

use crate::{Fault, Flavor, LimitEcho, Live, RangeBounds, Retention, Simulator, SimulatorConfig};

/// Where to serve a simulated Confluence, and what it holds.
#[derive(Clone, Debug, Args)]
pub struct SimulateArgs {
    /// Address to serve HTTP on.
    #[arg(long, env = "SIMULATOR_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,

    /// Records in the log at start.
    #[arg(long, default_value_t = 5000)]
    pub records: usize,

    /// Seed of the synthetic content.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Server-side cap on `limit`, as Confluence applies one.
    #[arg(long)]
    pub max_limit: Option<u32>,

    /// What a page's `limit` says: the capped limit, the requested one, or nothing (no
    /// `limit`, no `size`).
    #[arg(long, value_enum, default_value_t = LimitEcho::Capped)]
    pub limit_echo: LimitEcho,

    /// With --max-limit, the cap rises by one every this many requests (a cap that differs
    /// between requests).
    #[arg(long, value_name = "N", requires = "max_limit")]
    pub max_limit_rises_every: Option<u32>,

    /// How the `/audit` range listing applies `startDate`/`endDate`: to the millisecond,
    /// widened to whole seconds, or not at all.
    #[arg(long, value_enum, default_value_t = RangeBounds::Exact)]
    pub range_bounds: RangeBounds,

    /// Serve `limit` over 1000 instead of answering 400 (Confluence documents 1000 as
    /// the largest).
    #[arg(long)]
    pub allow_limit_over_1000: bool,

    /// Records come in groups of up to this many sharing a millisecond, each group listed
    /// in a fresh (seeded) order by every request; 0 or 1 for none.
    #[arg(long, default_value_t = 0)]
    pub ties: u32,

    /// About one record in this many is a byte-identical copy of the one before it; 0 for none.
    #[arg(long, default_value_t = 0)]
    pub duplicate_every: u32,

    /// Oldest records deleted before each request, as retention does.
    #[arg(long, default_value_t = 0)]
    pub deletes_per_request: u32,

    /// Fraction of 200 answers whose body is cut short: full Content-Length, half the body,
    /// then the connection closed (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub cut_rate: f64,

    /// Milliseconds added before every answer.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,

    /// New records added at the head before each request.
    #[arg(long, default_value_t = 0)]
    pub inserts_per_request: u32,

    /// Fraction of requests answered with a random transient fault (0..1): 500, 502, 503,
    /// 429 with Retry-After 0, a reset, or a 200 cut short, equally likely.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,

    /// Scripted faults served in order to the first requests: 503, 429:retry-after=2,
    /// 403, 500:json, reset, malformed, wrong-shape, cut, delay=250ms, near-limit=1s. Repeatable.
    #[arg(long = "fault")]
    pub faults: Vec<Fault>,

    /// Create records in real time, this many a second on average, dated when created.
    #[arg(long, value_name = "PER_SECOND")]
    pub live_rate: Option<f64>,

    /// Live records come in bursts of up to this many sharing a millisecond.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub live_burst: u32,

    /// Fraction of the records added after start (live or inserted) listed only some time
    /// after their creation date, which they keep (0..1; needs --late-by).
    #[arg(long, default_value_t = 0.0)]
    pub late_share: f64,

    /// Longest delay before a late record becomes visible, e.g. 50ms or 2s.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub late_by: Option<Duration>,

    /// Require exactly this `Authorization` header (401 otherwise).
    #[arg(long, hide_env_values = true)]
    pub require_authorization: Option<String>,

    /// Which API to serve: Cloud's `/rest/api/audit` endpoints, or Data Center's
    /// `/rest/auditing/1.0/events` (the other answers 404).
    #[arg(long, value_enum, default_value_t = Flavor::Cloud)]
    pub flavor: Flavor,

    /// With --flavor data-center, also accept `Authorization: Bearer <TOKEN>` (a personal
    /// access token); any other bearer token runs as anonymous and gets 403.
    #[arg(long, value_name = "TOKEN", hide_env_values = true)]
    pub personal_access_token: Option<String>,

    /// An `Authorization` header that authenticates but may not read the audit log (403).
    #[arg(long, value_name = "HEADER", hide_env_values = true)]
    pub forbidden_authorization: Option<String>,

    /// What `/rest/api/audit/retention` answers, as N:UNITS (e.g. 3:MONTHS, 1:FOREVER).
    /// Only reported: older records are not deleted for it.
    #[arg(long, default_value = "3:MONTHS", value_name = "N:UNITS")]
    pub retention: Retention,

    /// Give every record an unknown key `nested` holding a value N JSON levels deep (and
    /// every other record's `author.operations` the same).
    #[arg(long, value_name = "N")]
    pub nested_depth: Option<usize>,
    /// The simulator's clock is this many milliseconds ahead of the host's (negative:
    /// behind): its `Date` headers and the dates of its records follow it.
    #[arg(
        long,
        default_value_t = 0,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub clock_offset_ms: i64,
}

impl SimulateArgs {
    /// The simulator configuration these flags describe.
    pub fn to_config(&self) -> Result<SimulatorConfig, String> {
        for (flag, rate) in [
            ("--fault-rate", self.fault_rate),
            ("--cut-rate", self.cut_rate),
            ("--late-share", self.late_share),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{flag}: must be between 0 and 1, got {rate}"));
            }
        }
        if let Some(rate) = self.live_rate
            && !(rate.is_finite() && rate >= 0.0)
        {
            return Err(format!("--live-rate: must be a number >= 0, got {rate}"));
        }
        if self.late_share > 0.0 && self.late_by.is_none_or(|by| by.is_zero()) {
            return Err("--late-share: needs --late-by above 0".to_owned());
        }
        Ok(SimulatorConfig {
            records: self.records,
            seed: self.seed,
            max_limit: self.max_limit,
            limit_echo: self.limit_echo,
            range_bounds: self.range_bounds,
            max_limit_rises_every: self.max_limit_rises_every,
            strict_limit: !self.allow_limit_over_1000,
            ties: self.ties,
            duplicate_every: self.duplicate_every,
            deletes_per_request: self.deletes_per_request,
            cut_rate: self.cut_rate,
            latency: Duration::from_millis(self.latency_ms),
            inserts_per_request: self.inserts_per_request,
            fault_rate: self.fault_rate,
            required_authorization: self.require_authorization.clone(),
            faults: self.faults.clone(),
            live: self.live_rate.map(|per_second| Live {
                per_second,
                burst: self.live_burst,
            }),
            late_share: self.late_share,
            late_by: self.late_by.unwrap_or_default(),
            nested_depth: self.nested_depth,
            clock_offset: self.clock_offset_ms,
            flavor: self.flavor,
            retention: self.retention,
            personal_access_token: self.personal_access_token.clone(),
            forbidden_authorization: self.forbidden_authorization.clone(),
            ..SimulatorConfig::default()
        })
    }

    /// Serves the simulator until `shutdown` resolves.
    pub async fn serve(&self, shutdown: impl Future<Output = ()>) -> Result<(), String> {
        let config = self.to_config()?;
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|e| format!("--listen {}: {e}", self.listen))?;
        let sim = Simulator::start(config, listener)
            .await
            .map_err(|e| format!("simulator: {e}"))?;
        tracing::info!(base_url = %sim.base_url(), "Confluence simulator serving");
        shutdown.await;
        sim.shutdown();
        Ok(())
    }
}

/// Parses `--late-by`: `"250ms"` or `"2s"`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::fault::parse_delay(text.trim())
        .ok_or_else(|| format!("invalid duration {text:?}: expected e.g. \"50ms\" or \"2s\""))
}
