//! The command line, part of the binary (`src/main.rs`), not of the library: `serve`,
//! the `get`, `stream`, `follow`, `export` and `retention` client commands and, with the `simulator` feature,
//! `simulate` and `demo`. Clap structs are named `*Args` and live here; they fill the
//! library's `GatewayConfig`. The client commands use only the library's public proto
//! types (`audit_gateway::pb`).

mod call;
#[cfg(feature = "simulator")]
mod demo;
mod ecs;
mod export;
mod follow;
mod otlp;
mod output;
mod parse;
mod serve;

use clap::{Parser, Subcommand};

pub(crate) use self::output::CommandError;
use audit_gateway::{Chain, Gateway, GatewayConfig, shutdown_signal, telemetry::LogFormat};

/// audit-gateway: the Confluence audit log over gRPC.
#[derive(Debug, Parser)]
#[command(name = "audit-gateway", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log lines as JSON objects or as text (default: text on a terminal, else JSON).
    #[arg(long, global = true, env = "AUDIT_GATEWAY_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,

    /// Export spans over OTLP/gRPC to this collector (e.g. http://otel-collector:4317);
    /// unset: no tracing export.
    #[arg(long, global = true, env = "AUDIT_GATEWAY_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve `confluence.audit.v1.AuditService` in front of a Confluence site.
    Serve(Box<serve::ServeArgs>),
    /// Call `GetSince` on a gateway and print the page as Confluence's JSON.
    Get(call::GetArgs),
    /// Call `GetRetention` on a gateway: how long Confluence keeps its audit log.
    Retention(call::RetentionArgs),
    /// Call `StreamSince` on a gateway and print each record as one JSON line.
    Stream(call::StreamArgs),
    /// Follow a gateway's `Follow` call: append records to a file as they arrive and keep a
    /// checkpoint beside them, continuing from it when restarted (an exactly-once shipper).
    Follow(Box<follow::FollowArgs>),
    /// Export every record of a fixed range once, oldest first, to a file; resumed from
    /// its checkpoint file when run again (`follow` with an end).
    Export(Box<export::ExportArgs>),
    /// Serve a synthetic Confluence audit API (for demos, tests and benchmarks).
    #[cfg(feature = "simulator")]
    Simulate(confluence_sim::cli::SimulateArgs),
    /// Run a simulator and a gateway in front of it, query it once, keep serving.
    #[cfg(feature = "simulator")]
    Demo(demo::DemoArgs),
}

impl Cli {
    /// How to write log lines.
    pub(crate) fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or_else(LogFormat::for_stderr)
    }

    /// Where to export spans, if anywhere.
    pub(crate) fn otlp_endpoint(&self) -> Option<&str> {
        self.otlp_endpoint.as_deref()
    }

    /// Runs the command; the error is one line for the terminal, and an exit code.
    pub(crate) async fn run(self) -> Result<(), CommandError> {
        match self.command {
            Command::Serve(args) => {
                // Handlers first: a SIGTERM during start-up is then a graceful stop too.
                let signal = shutdown_signal();
                let ready_file = args.ready_file.clone();
                let config = GatewayConfig::try_from(*args).map_err(|e| Chain(&e).to_string())?;
                let gateway = Gateway::bind(config)
                    .await
                    .map_err(|e| Chain(&e).to_string())?;
                if let Some(path) = ready_file {
                    serve::write_ready_file(&path, &gateway).map_err(|e| {
                        CommandError::other(format!("--ready-file {}: {e}", path.display()))
                    })?;
                }
                gateway
                    .run_until_stopped(signal)
                    .await
                    .map_err(|e| CommandError::other(Chain(&e).to_string()))
            }
            Command::Get(args) => call::get(&args).await,
            Command::Retention(args) => call::retention(&args).await,
            Command::Stream(args) => {
                let (count, token) = call::stream(&args).await?;
                eprintln!("{count} records; resume token: {token}");
                Ok(())
            }
            Command::Follow(args) => follow::run(*args).await,
            Command::Export(args) => follow::run(args.into_follow()?).await,
            #[cfg(feature = "simulator")]
            Command::Simulate(args) => Ok(args.serve(shutdown_signal()).await?),
            #[cfg(feature = "simulator")]
            Command::Demo(args) => Ok(demo::run(args).await?),
        }
    }
}
