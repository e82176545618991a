//! Logs: `tracing` to stderr, filtered by `RUST_LOG`, as text or JSON lines;
//! metrics: see [`metrics`].
//!
//! rmcp's own events are off by default: they repeat, in its terms, failures
//! that mcpd already reports on the RPC's log line in words an operator can
//! act on (`RUST_LOG=info,rmcp=debug` brings them back).

pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

pub const DEFAULT_FILTER: &str = "info,rmcp=off";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `key=value` lines; values from outside are quoted and escaped.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Text logs (what tests and tools embedding the daemon use).
pub fn init() {
    init_with(LogFormat::Text);
}

pub fn init_with(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in files or pipes.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// A value from outside (a server's stderr, an HTTP body, a header) made safe
/// to embed in one line of text: control characters, newlines included, are
/// escaped so nobody can forge a log line or a line of a status message.
pub fn escape_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_control;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escape_control("a\nb\r\tc\u{1b}[31m é"),
            "a\\nb\\r\\tc\\u{1b}[31m é"
        );
    }
}
