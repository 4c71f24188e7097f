//! The simulator's command line, shared by its own binary and the gateway's `simulate`
//! command.

use std::{future::Future, net::SocketAddr, time::Duration};

use clap::Args;

use crate::{Fault, Simulator, SimulatorConfig};

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
    /// 403, 500:json, reset, malformed, wrong-shape, delay=250ms. Repeatable.
    #[arg(long = "fault")]
    pub faults: Vec<Fault>,

    /// Require exactly this `Authorization` header (401 otherwise).
    #[arg(long, hide_env_values = true)]
    pub require_authorization: Option<String>,
}

impl SimulateArgs {
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
