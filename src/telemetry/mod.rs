//! Logs: `tracing` to stderr, filtered by `RUST_LOG`, as text or JSON lines;
//! metrics: see [`metrics`]; traces: see [`traces`].
//!
//! rmcp's own events are off by default: they repeat, in its terms, failures
//! that mcpd already reports on the RPC's log line in words an operator can
//! act on (`RUST_LOG=info,rmcp=debug` brings them back).

pub mod metrics;
pub mod traces;

use std::io::IsTerminal;

use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{FilterExt, filter_fn},
    fmt,
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

pub use traces::{TraceError, Traces};

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
    install(format, None);
}

/// Logs, and traces exported to `otlp_endpoint` when there is one (see
/// [`traces`]); shut the returned exporter down last, so the final spans
/// go out. Needs a Tokio runtime.
pub fn init_with_traces(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<Option<Traces>, TraceError> {
    let Some(endpoint) = otlp_endpoint else {
        install(format, None);
        return Ok(None);
    };
    let (traces, layer) = Traces::start(endpoint)?;
    install(format, Some(layer));
    Ok(Some(traces))
}

fn install(format: LogFormat, traces: Option<Box<dyn Layer<Registry> + Send + Sync>>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Events only: spans are for traces, and a log line stays the line it
    // was, without the spans it happened in.
    let filter = filter.and(filter_fn(|meta| meta.is_event()));
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in files or pipes.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    let logs = match format {
        LogFormat::Text => layer.with_filter(filter).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    let mut layers = vec![logs];
    layers.extend(traces);
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layers).try_init();
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
