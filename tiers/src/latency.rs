//! Latency histograms every tier keeps of its loads and stores, and the
//! counters of compaction work that go with them in [`crate::TierStats`].
//!
//! A [`LatencyHistogram`] is a fixed array of atomic counters, so recording
//! allocates nothing and takes no lock: it is cheap enough for the fault path
//! (one `Instant::now()` on each side of the operation and one relaxed atomic
//! add). Buckets are logarithmic with four steps per power of two, so a
//! quantile read back is within 12.5% of the true value; that is plenty to
//! tell a 3 µs decode from a 100 µs read, which is what these are for.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Sub-buckets per power of two (a power of two itself).
const STEPS: usize = 4;
const STEP_BITS: u32 = STEPS.trailing_zeros();
/// Enough buckets for 2^64 ns; values below `STEPS` ns get a bucket each.
const BUCKETS: usize = (64 - STEP_BITS as usize + 1) * STEPS;

/// Counts of durations in logarithmic buckets, recorded from many threads at once.
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: [const { AtomicU64::new(0) }; BUCKETS] }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram").field("count", &self.count()).field("p50_ns", &self.quantile(0.5)).field("p99_ns", &self.quantile(0.99)).finish()
    }
}

/// The bucket of `ns`: below `STEPS` one per value, then `STEPS` per power of two.
fn bucket(ns: u64) -> usize {
    if ns < STEPS as u64 {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros(); // >= STEP_BITS
    let sub = (ns >> (exp - STEP_BITS)) as usize & (STEPS - 1);
    (exp - STEP_BITS + 1) as usize * STEPS + sub
}

/// The smallest value of bucket `b`, and its width.
fn bounds(b: usize) -> (u64, u64) {
    if b < STEPS {
        return (b as u64, 1);
    }
    let exp = (b / STEPS) as u32 + STEP_BITS - 1;
    let width = 1u64 << (exp - STEP_BITS);
    ((1u64 << exp) + (b % STEPS) as u64 * width, width)
}

impl LatencyHistogram {
    /// Counts one operation that took `ns` nanoseconds.
    #[inline]
    pub fn record(&self, ns: u64) {
        self.buckets[bucket(ns)].fetch_add(1, Relaxed);
    }

    /// Counts one operation that started at `start` and ends now.
    #[inline]
    pub fn record_since(&self, start: Instant) {
        self.record(start.elapsed().as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Runs `op` and counts the time it took.
    #[inline]
    pub fn time<T>(&self, op: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let r = op();
        self.record_since(start);
        r
    }

    /// Operations counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The duration (ns) that a share `q` (0 to 1) of the operations did not
    /// pass: the middle of the bucket holding it; 0 when nothing was counted.
    pub fn quantile(&self, q: f64) -> u64 {
        let mut counts = [0u64; BUCKETS];
        for (c, b) in counts.iter_mut().zip(&self.buckets) {
            *c = b.load(Relaxed);
        }
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        // The rank of the operation asked for, from 1.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bounds(b);
                return low + width / 2;
            }
        }
        unreachable!("rank {rank} within the {total} counted")
    }
}

/// The load and store histograms of one tier.
#[derive(Debug, Default)]
pub struct OpLatency {
    /// Time of each load, successful or not.
    pub load: LatencyHistogram,
    /// Time of each store, refused ones included.
    pub store: LatencyHistogram,
}

/// Compaction work of one tier, summed over its runs.
#[derive(Debug, Default)]
pub(crate) struct CompactionWork {
    runs: AtomicU64,
    bytes_moved: AtomicU64,
    bytes_freed: AtomicU64,
    ns: AtomicU64,
}

impl CompactionWork {
    /// Counts one run that started at `start` and ends now.
    pub(crate) fn add(&self, start: Instant, bytes_moved: u64, bytes_freed: u64) {
        self.runs.fetch_add(1, Relaxed);
        self.bytes_moved.fetch_add(bytes_moved, Relaxed);
        self.bytes_freed.fetch_add(bytes_freed, Relaxed);
        self.ns.fetch_add(start.elapsed().as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// `stats` with these counters filled in.
    pub(crate) fn fill(&self, stats: crate::TierStats) -> crate::TierStats {
        crate::TierStats {
            compactions: self.runs.load(Relaxed),
            compaction_bytes_moved: self.bytes_moved.load(Relaxed),
            compaction_bytes_freed: self.bytes_freed.load(Relaxed),
            compaction_ns: self.ns.load(Relaxed),
            ..stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_and_stay_within_an_eighth() {
        for ns in (0..5000u64).chain((12..64).map(|s| 1u64 << s)).chain((12..64).map(|s| (1u64 << s) - 1)).chain([u64::MAX]) {
            let b = bucket(ns);
            assert!(b < BUCKETS, "{ns}");
            let (low, width) = bounds(b);
            assert!(low <= ns && ns - low < width, "{ns} outside bucket {b} [{low}, +{width})");
            let mid = low + width / 2;
            assert!(mid.abs_diff(ns) as f64 <= ns as f64 / 8.0 + 1.0, "{ns} -> {mid}");
        }
        for ns in 1..5000u64 {
            let (a, b) = (bucket(ns - 1), bucket(ns));
            assert!(b == a || b == a + 1, "buckets skip at {ns}");
        }
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for ns in 1..=1000u64 {
            h.record(ns * 1000); // 1 µs .. 1 ms, evenly
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 500_000.0).abs() <= 500_000.0 / 8.0, "{p50}");
        assert!((p99 - 990_000.0).abs() <= 990_000.0 / 8.0, "{p99}");
        assert!(h.quantile(1.0) >= h.quantile(0.99));
        assert!(h.quantile(0.0) <= 1100, "{}", h.quantile(0.0));
    }
}
