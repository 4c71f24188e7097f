//! `audit-gateway`: parse the command line, start logging, run the command. The commands
//! (`src/cli/`) belong to this binary; the library is the gateway alone.

use std::process::ExitCode;

use audit_gateway::{Chain, telemetry};
use clap::Parser;

use crate::cli::Cli;

mod cli;

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
    // The OTLP exporter's client is built on this runtime.
    let telemetry = {
        let _in_runtime = runtime.enter();
        match telemetry::init(cli.log_format(), cli.otlp_endpoint()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {}", Chain(&e));
                return ExitCode::FAILURE;
            }
        }
    };
    let outcome = runtime.block_on(cli.run());
    // Spans still queued are exported before the process ends.
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // A failed call exits with its gRPC status code (docs/usage.md).
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.code)
        }
    }
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
