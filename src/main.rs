//! `audit-gateway`: parse the command line, start logging, run the subcommand.

use std::process::ExitCode;

use audit_gateway::{
    client,
    config::{Cli, Command},
    demo, metrics, server,
    simulator::Simulator,
    telemetry,
};
use clap::Parser;

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(start(cli))
}

/// Keeps page-sized buffers (hundreds of KiB) out of glibc's heap arenas, where a long
/// stream would fragment them: RSS then stays flat however large the window.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn start(cli: Cli) -> ExitCode {
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
            // Handlers first: a SIGTERM during start-up is then a graceful stop too.
            let signal = server::shutdown_signal();
            let service = server::build_service(&args)?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| format!("--listen {}: {e}", args.listen))?;
            if let Some(addr) = args.metrics_listen {
                let metrics = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
                tracing::info!(addr = %addr, "metrics on /metrics");
                // Ends with the process, after the gRPC server has drained.
                tokio::spawn(metrics::serve(metrics, std::future::pending()));
            }
            let shutdown = server::ShutdownSettings {
                drain_delay: args.drain_delay,
                timeout: args.shutdown_timeout,
            };
            server::run(service, listener, signal, shutdown).await
        }
        Command::Simulate(args) => {
            let config = args.sim.to_config()?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| format!("--listen {}: {e}", args.listen))?;
            let signal = server::shutdown_signal();
            let sim = Simulator::start(config, listener)
                .await
                .map_err(|e| format!("simulator: {e}"))?;
            tracing::info!(base_url = %sim.base_url(), "Confluence simulator serving");
            signal.await;
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
