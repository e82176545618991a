//! Percentiles over a sample of durations, in milliseconds.

#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
}

pub fn summarize(samples: &[f64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| {
        // Nearest rank.
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    };
    Summary {
        p50: at(0.50),
        p99: at(0.99),
    }
}

pub fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// `over / under`, rounded; 0 when there is nothing to divide by.
pub fn ratio(over: f64, under: f64) -> f64 {
    if under > 0.0 {
        round(over / under)
    } else {
        0.0
    }
}
