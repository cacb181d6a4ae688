//! Latency summaries as the benchmarks report them.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of a latency histogram, in microseconds, and a rate.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Samples.
    pub count: u64,
    /// Samples per second of wall time.
    pub per_s: f64,
}

impl LatencySummary {
    /// Summarises a histogram of nanoseconds gathered over `seconds`.
    pub fn from_ns(h: &Histogram<u64>, seconds: f64) -> Self {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        LatencySummary {
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
            count: h.len(),
            per_s: if seconds > 0.0 { h.len() as f64 / seconds } else { 0.0 },
        }
    }
}

/// An empty histogram of nanoseconds, 1 ns to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_microseconds() {
        let mut h = histogram();
        for ns in 1..=1000u64 {
            h.record(ns * 1000).unwrap();
        }
        let s = LatencySummary::from_ns(&h, 2.0);
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.p999_us - 999.0).abs() < 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(s.per_s, 500.0);
        assert_eq!(LatencySummary::from_ns(&histogram(), 0.0).per_s, 0.0);
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["p999_us"].is_f64());
    }
}
