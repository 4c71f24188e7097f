//! `audit-gateway`: parse the command line, start logging, run the subcommand.

use std::process::ExitCode;

use audit_gateway::{
    client,
    config::{Cli, Command},
    demo, server,
    simulator::Simulator,
    telemetry,
};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    // rustls needs one process-wide crypto provider; ring is the one we build.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match command {
        Command::Serve(args) => {
            let service = server::build_service(&args)?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| format!("--listen {}: {e}", args.listen))?;
            let shutdown = server::ShutdownSettings {
                drain_delay: args.drain_delay,
                timeout: args.shutdown_timeout,
            };
            server::run(service, listener, server::shutdown_signal(), shutdown).await
        }
        Command::Simulate(args) => {
            let config = args.sim.to_config()?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| format!("--listen {}: {e}", args.listen))?;
            let sim = Simulator::start(config, listener)
                .await
                .map_err(|e| format!("simulator: {e}"))?;
            tracing::info!(base_url = %sim.base_url(), "Confluence simulator serving");
            server::shutdown_signal().await;
            sim.shutdown();
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Get(args) => {
            let json = client::get(&args).await?;
            println!("{json}");
            Ok(())
        }
        Command::Stream(args) => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let result = client::stream(&args, &mut out).await;
            std::io::Write::flush(&mut out).map_err(|e| format!("output: {e}"))?;
            let (count, token) = result?;
            eprintln!("{count} records; resume token: {token}");
            Ok(())
        }
    }
}
