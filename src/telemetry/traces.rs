//! Traces: mcpd's own `tracing` spans (one per RPC, with the MCP I/O and the
//! database work under it) exported over OTLP/gRPC when `--otlp-endpoint`
//! names a collector. Off, the spans are never built: no layer wants them.
//!
//! This module is the only one that knows OpenTelemetry; the others create
//! plain `tracing` spans. Span fields are attributes: the code that creates
//! a span chooses them, and never puts a URL, header, environment value,
//! tool argument or result there.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    propagation::{Extractor, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    resource::{EnvResourceDetector, Resource, TelemetryResourceDetector},
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use tracing::{Level, Metadata};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, Registry, filter::filter_fn};

/// How long a shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoint is not repeated in the message: it could hold credentials.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("--otlp-endpoint: {0}")]
    Endpoint(String),
}

/// `--otlp-endpoint`: a plaintext gRPC URL (`http://host:port`). TLS to the
/// collector is not built in: a collector or agent next to the daemon is
/// the usual set-up.
pub fn parse_endpoint(endpoint: &str) -> Result<String, TraceError> {
    let wrong = |reason: &str| TraceError::Endpoint(reason.to_owned());
    let url = url::Url::parse(endpoint).map_err(|e| wrong(&e.to_string()))?;
    if url.scheme() != "http" {
        return Err(wrong(
            "expected http://HOST:PORT (OTLP over plaintext gRPC; TLS to the collector is not supported)",
        ));
    }
    if url.host().is_none() {
        return Err(wrong("expected http://HOST:PORT"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(wrong("credentials do not belong in the URL"));
    }
    Ok(endpoint.to_owned())
}

/// The exporter behind the trace layer; [`Traces::shutdown`] sends what is
/// still queued.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the exporter (lazily connected: a collector that is down at
    /// start-up costs the spans of that time, not the daemon) and the layer
    /// that feeds it. Needs a Tokio runtime: tonic's channel lives on it.
    pub(super) fn start(
        endpoint: &str,
    ) -> Result<(Traces, Box<dyn Layer<Registry> + Send + Sync>), TraceError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TraceError::Endpoint(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Reporting::new(exporter))
            .with_resource(resource())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("mcpd"))
            .with_threads(false)
            // Spans only, and regardless of `RUST_LOG`: an operator who
            // logs only warnings still wants the traces.
            .with_filter(filter_fn(traced))
            .boxed();
        Ok((Traces { provider }, layer))
    }

    /// Exports the spans still queued; called once the server has stopped.
    pub async fn shutdown(self) {
        let provider = self.provider;
        // Blocks until the batch went out: off the runtime's threads, which
        // the export itself needs.
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "could not export the last spans"),
            Err(err) => tracing::warn!(error = %err, "could not export the last spans"),
        }
    }
}

/// The exporter, telling the log when the collector stops taking spans and
/// when it takes them again (the SDK's own diagnostics are compiled out):
/// once per change, not once per batch.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    failing: AtomicBool,
}

impl<E> Reporting<E> {
    fn new(inner: E) -> Reporting<E> {
        Reporting {
            inner,
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(err) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                error = %err,
                spans,
                "the OTLP collector did not take spans; they are dropped until it does"
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("the OTLP collector takes spans again")
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// mcpd's spans at info or above; nothing of other crates, no events.
fn traced(meta: &Metadata<'_>) -> bool {
    meta.is_span()
        && *meta.level() <= Level::INFO
        && (meta.target() == "mcpd" || meta.target().starts_with("mcpd::"))
}

/// `service.name` mcpd and its version, unless `OTEL_RESOURCE_ATTRIBUTES`
/// or `OTEL_SERVICE_NAME` (which wins) say otherwise, as the spec has it.
fn resource() -> Resource {
    let builder = Resource::builder_empty()
        .with_service_name("mcpd")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    match std::env::var("OTEL_SERVICE_NAME") {
        Ok(name) if !name.is_empty() => builder.with_service_name(name),
        _ => builder,
    }
    .build()
}

/// Makes `span` a child of the caller's span when the request carries a
/// W3C `traceparent` (and `tracestate`). Without a trace layer, or without
/// the headers, the span stays where it is.
pub fn set_remote_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let context = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(context);
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_endpoint;

    #[test]
    fn only_plaintext_grpc_urls_without_credentials() {
        assert!(parse_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(parse_endpoint("http://collector:4317").is_ok());
        for wrong in [
            "https://collector:4317",
            "127.0.0.1:4317",
            "http://user:secret@collector:4317",
            "grpc://collector:4317",
        ] {
            assert!(parse_endpoint(wrong).is_err(), "{wrong}");
        }
    }
}
