//! `confluence-sim`: serve a synthetic Confluence audit API until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use confluence_sim::cli::SimulateArgs;

/// A synthetic Confluence audit-log REST API for demos, tests and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "confluence-sim", version, about)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.args.serve(stop_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C, or SIGTERM where there is one.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
