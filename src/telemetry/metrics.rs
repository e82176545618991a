//! Prometheus metrics. Each daemon has a registry of its own (tests run
//! several daemons in one process); each layer registers the instruments it
//! owns, and the HTTP edge serves the registry as text at `GET /metrics`.
//!
//! Figures a layer already keeps for itself (pool state, open sessions) are
//! read when scraped rather than copied into a second set of counters on
//! the hot path.

use std::collections::HashMap;

use prometheus::{
    PullingGauge, TextEncoder,
    core::{Collector, Desc},
    proto::{Counter, Metric, MetricFamily, MetricType},
};

pub use prometheus::{
    HistogramOpts, HistogramTimer, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Seconds, from a millisecond (a cached read) to a minute (an MCP server
/// answering at its timeout).
pub fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

/// Adds `collector` to `registry`. A name taken twice is a bug of ours that
/// the tests catch; in a running daemon it costs a metric, not the daemon.
pub fn register(registry: &Registry, collector: impl Collector + 'static) {
    if let Err(err) = registry.register(Box::new(collector)) {
        tracing::warn!(error = %err, "a metric could not be registered");
    }
}

/// A gauge whose value its owner reports when scraped.
pub fn pulled_gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    read: impl Fn() -> f64 + Send + Sync + 'static,
) {
    match PullingGauge::new(name, help, Box::new(read)) {
        Ok(gauge) => register(registry, gauge),
        Err(err) => tracing::warn!(error = %err, name, "a metric could not be made"),
    }
}

/// A counter its owner keeps (an atomic it had anyway), read when scraped.
pub fn pulled_counter(
    registry: &Registry,
    name: &str,
    help: &str,
    read: impl Fn() -> u64 + Send + Sync + 'static,
) {
    match Desc::new(name.to_owned(), help.to_owned(), Vec::new(), HashMap::new()) {
        Ok(desc) => register(
            registry,
            PullingCounter {
                desc,
                read: Box::new(read),
            },
        ),
        Err(err) => tracing::warn!(error = %err, name, "a metric could not be made"),
    }
}

/// One figure of an owner's snapshot: name, help, and how to read it.
pub type Figure<S, T> = (&'static str, &'static str, fn(&S) -> T);

/// Gauges read from a fresh `snapshot` of their owner when scraped.
pub fn pulled_gauges<S: 'static>(
    registry: &Registry,
    figures: impl IntoIterator<Item = Figure<S, f64>>,
    snapshot: impl Fn() -> S + Clone + Send + Sync + 'static,
) {
    for (name, help, read) in figures {
        let snapshot = snapshot.clone();
        pulled_gauge(registry, name, help, move || read(&snapshot()));
    }
}

/// Counters read from a fresh `snapshot` of their owner when scraped.
pub fn pulled_counters<S: 'static>(
    registry: &Registry,
    figures: impl IntoIterator<Item = Figure<S, u64>>,
    snapshot: impl Fn() -> S + Clone + Send + Sync + 'static,
) {
    for (name, help, read) in figures {
        let snapshot = snapshot.clone();
        pulled_counter(registry, name, help, move || read(&snapshot()));
    }
}

struct PullingCounter {
    desc: Desc,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Collector for PullingCounter {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut counter = Counter::default();
        counter.set_value((self.read)() as f64);
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::COUNTER);
        let mut metric = Metric::default();
        metric.set_counter(counter);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

/// The registry in the text exposition format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(err) = TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
        tracing::warn!(error = %err, "encoding the metrics failed");
    }
    text
}
