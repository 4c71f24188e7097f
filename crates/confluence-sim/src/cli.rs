//! The simulator's command line, shared by its own binary and the gateway's `simulate`
//! command.

use std::{future::Future, net::SocketAddr, time::Duration};

use clap::Args;

use crate::{Fault, LimitEcho, Simulator, SimulatorConfig};

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

    /// Fraction of requests answered with a random transient fault (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,

    /// Scripted faults served in order to the first requests: 503, 429:retry-after=2,
    /// 403, 500:json, reset, malformed, wrong-shape, cut, delay=250ms, near-limit=1s. Repeatable.
    #[arg(long = "fault")]
    pub faults: Vec<Fault>,

    /// Require exactly this `Authorization` header (401 otherwise).
    #[arg(long, hide_env_values = true)]
    pub require_authorization: Option<String>,
}

impl SimulateArgs {
    /// The simulator configuration these flags describe.
    pub fn to_config(&self) -> Result<SimulatorConfig, String> {
        for (flag, rate) in [
            ("--fault-rate", self.fault_rate),
            ("--cut-rate", self.cut_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{flag}: must be between 0 and 1, got {rate}"));
            }
        }
        Ok(SimulatorConfig {
            records: self.records,
            seed: self.seed,
            max_limit: self.max_limit,
            limit_echo: self.limit_echo,
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
