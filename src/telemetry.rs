//! Logging on stderr, filtered by `RUST_LOG` (default `info`): one JSON object per line
//! (for log collectors) or human-readable lines (for a terminal).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line: time, level, target, message and fields.
    Json,
    /// Human-readable lines, coloured on a terminal.
    Text,
}

impl LogFormat {
    /// Text for a terminal, JSON otherwise (a container's stderr goes to a collector).
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Text
        } else {
            Self::Json
        }
    }
}

/// Installs the global subscriber; a second call is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed log pipe must not stop the gateway: the subscriber would report the
        // failed write with eprintln!, which panics when stderr itself is gone.
        .log_internal_errors(false);
    // Err only when a subscriber is already set (e.g. by a test harness).
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        // Colour codes only for a terminal: piped logs stay parseable.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
