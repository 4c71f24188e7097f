//! Logging: human-readable lines on stderr, filtered by `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call is a no-op.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Err only when a subscriber is already set (e.g. by a test harness).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: piped logs stay parseable.
        .with_ansi(std::io::stderr().is_terminal())
        // A closed log pipe must not stop the gateway: the subscriber would report the
        // failed write with eprintln!, which panics when stderr itself is gone.
        .log_internal_errors(false)
        .try_init();
}
