//! Counts checked-out connections, daemon-wide and per request, so the
//! one-connection-per-request rule is observed rather than assumed.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

#[derive(Debug, Default)]
pub(super) struct Gauge {
    held: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn acquire(&self) {
        let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn release(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn reset_peak(&self) {
        self.peak.store(self.held(), Ordering::SeqCst);
    }
}

/// Daemon-wide pool figures.
#[derive(Debug, Default)]
pub(super) struct PoolMetrics {
    pub(super) connections: Gauge,
    pub(super) checkouts: AtomicU64,
    pub(super) timeouts: AtomicU64,
}

/// A snapshot of the pool, for operators, tests and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub max_size: u32,
    /// Connections open (idle or checked out).
    pub open: u32,
    pub idle: u32,
    pub checked_out: usize,
    /// Most connections checked out at once since start (or the last reset).
    pub peak_checked_out: usize,
    pub checkouts: u64,
    pub timeouts: u64,
}

impl PoolMetrics {
    pub(super) fn snapshot(&self, max_size: u32, state: bb8::State) -> PoolStats {
        PoolStats {
            max_size,
            open: state.connections,
            idle: state.idle_connections,
            checked_out: self.connections.held(),
            peak_checked_out: self.connections.peak(),
            checkouts: self.checkouts.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
        }
    }

    pub(super) fn reset_peak(&self) {
        self.connections.reset_peak();
    }
}

tokio::task_local! {
    static REQUEST: Arc<Gauge>;
}

/// Runs `fut`, returning its output and the most connections it held at once.
pub async fn track_connections<F: Future>(fut: F) -> (F::Output, usize) {
    let gauge = Arc::new(Gauge::default());
    let out = REQUEST.scope(gauge.clone(), fut).await;
    (out, gauge.peak())
}

/// Held by every checked-out connection; counts it while it lives.
pub(super) struct LeaseCount {
    metrics: Arc<PoolMetrics>,
    request: Option<Arc<Gauge>>,
}

impl LeaseCount {
    pub(super) fn new(metrics: Arc<PoolMetrics>) -> Self {
        metrics.connections.acquire();
        metrics.checkouts.fetch_add(1, Ordering::Relaxed);
        let request = REQUEST.try_with(Arc::clone).ok();
        if let Some(gauge) = &request {
            gauge.acquire();
        }
        LeaseCount { metrics, request }
    }
}

impl Drop for LeaseCount {
    fn drop(&mut self) {
        self.metrics.connections.release();
        if let Some(gauge) = &self.request {
            gauge.release();
        }
    }
}
