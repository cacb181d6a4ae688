//! What the runtime counts, and the snapshot it hands out.
//!
//! The fault handlers record into atomics only: no lock and no allocation on the
//! fault path. Latencies go into a fixed log-linear bucket array (32 linear
//! sub-buckets per power of two, so each bucket is within ~3% of its values);
//! [`Stats`] turns it into an `hdrhistogram::Histogram` when a snapshot is taken.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use farmem_tiers::TierStats;

use crate::policy::ages::GENERATIONS;
pub use crate::policy::PolicyStats;
use hdrhistogram::Histogram;

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const MAJORS: usize = 40;
const BUCKETS: usize = MAJORS * SUB;

/// A latency histogram in nanoseconds that many threads record into at once.
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64; BUCKETS]>,
}

impl AtomicHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        AtomicHistogram { buckets: Box::new(std::array::from_fn(|_| AtomicU64::new(0))) }
    }

    fn index(ns: u64) -> usize {
        if ns < SUB as u64 {
            return ns as usize;
        }
        let major = 63 - ns.leading_zeros(); // >= SUB_BITS
        let shift = major - SUB_BITS;
        let sub = ((ns >> shift) as usize) & (SUB - 1);
        (((major - SUB_BITS + 1) as usize) * SUB + sub).min(BUCKETS - 1)
    }

    fn value_of(index: usize) -> u64 {
        if index < SUB {
            return index as u64;
        }
        let major = (index / SUB) as u32 + SUB_BITS - 1;
        let sub = (index % SUB) as u64;
        let shift = major - SUB_BITS;
        // The middle of the bucket.
        ((SUB as u64 | sub) << shift) + ((1u64 << shift) >> 1)
    }

    /// Records one latency.
    pub fn record(&self, ns: u64) {
        self.buckets[Self::index(ns)].fetch_add(1, Relaxed);
    }

    /// Copies the counts into an hdrhistogram (3 significant digits, up to an hour).
    pub fn to_hdr(&self) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds");
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            if n > 0 {
                h.record_n(Self::value_of(i).max(1), n).expect("value within bounds");
            }
        }
        h
    }
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The runtime's live counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub pages_evicted: AtomicU64,
    pub faults_from_tier: AtomicU64,
    pub faults_from_staging: AtomicU64,
    pub faults_zero_filled: AtomicU64,
    pub pages_zero_filled: AtomicU64,
    pub faults_deferred: AtomicU64,
    pub faults_raced: AtomicU64,
    pub faults_in_thread: AtomicU64,
    pub installs_retried: AtomicU64,
    pub pages_poisoned: AtomicU64,
    pub pages_dropped_by_program: AtomicU64,
    pub evict_skipped_busy: AtomicU64,
    pub evict_rejected: AtomicU64,
    pub evict_tier_full: AtomicU64,
    pub stall_ns: AtomicU64,
    pub reclaim_stall_ns: AtomicU64,
    pub fault_latency: AtomicHistogram,
    pub sample_faults: AtomicU64,
    pub pages_reclaimed: AtomicU64,
    pub throttled_faults: AtomicU64,
    pub refaults_by_generation: [AtomicU64; GENERATIONS.len()],
    pub pages_put_back: AtomicU64,
    pub pages_prefetched: AtomicU64,
}

/// One registered region's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionStats {
    /// Its first address.
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Pages in RAM now (mincore).
    pub resident_pages: u64,
    /// Pages whose only copy is in a tier.
    pub evicted_pages: u64,
}

/// A snapshot of the runtime's statistics.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Registered regions.
    pub regions: usize,
    /// Each region's resident and evicted pages, by address.
    pub per_region: Vec<RegionStats>,
    /// Bytes registered, over all regions.
    pub registered_bytes: u64,
    /// Pages whose only copy is in a tier now.
    pub evicted_pages: u64,
    /// Pages moved out of RAM since start.
    pub pages_evicted_total: u64,
    /// Faults served by loading a page from a tier (the sampler's excluded):
    /// refaults of reclaimed pages.
    pub faults_from_tier: u64,
    /// Pages the policy reclaimed into the tiers (the rest of
    /// `pages_evicted_total` came from explicit `evict` calls or the sampler).
    pub pages_reclaimed: u64,
    /// Faults delayed because the program was well over its limit.
    pub throttled_faults: u64,
    /// Faults on pages the sampler had taken out (served with a copy).
    pub sample_faults: u64,
    /// Refaults by how long the page had been out, in the generations of
    /// [`crate::policy::GENERATIONS`] (ticks).
    pub refaults_by_generation: [u64; GENERATIONS.len()],
    /// Pages the sampler put back into RAM unused, without a fault.
    pub pages_put_back: u64,
    /// Pages brought back from a spill tier beside a faulting page (prefetch).
    pub pages_prefetched: u64,
    /// Faults served from staging, on pages caught mid-eviction.
    pub faults_from_staging: u64,
    /// Faults on never-evicted pages, served with zeros.
    pub faults_zero_filled: u64,
    /// Pages zero-filled (fault pages and their neighbours).
    pub pages_zero_filled: u64,
    /// Faults that had to wait for a kernel event (EAGAIN), for the evictor
    /// or for another handler, and were retried.
    pub faults_deferred: u64,
    /// Tries of a fault on a page another fault handler was installing (two
    /// threads faulted on one page at once, or a thread on a page being
    /// brought back ahead of it); the fault was retried.
    pub faults_raced: u64,
    /// Faults the faulting thread served itself, in its SIGBUS handler
    /// (signal mode); the other kinds above count them too.
    pub faults_in_thread: u64,
    /// How faults are served.
    pub fault_mode: crate::FaultMode,
    /// Copies into a region that found no mapping at the page's address (the
    /// program had just moved or unmapped it) or failed otherwise; the page
    /// stayed out and was tried again after the kernel's event.
    pub installs_retried: u64,
    /// Pages poisoned because their tier could not return them.
    pub pages_poisoned: u64,
    /// Evicted pages dropped because the program dropped them (munmap, madvise).
    pub pages_dropped_by_program: u64,
    /// Pages eviction skipped because the kernel would not move them (shared after fork, pinned).
    pub evict_skipped_busy: u64,
    /// Pages a tier refused as incompressible (they stay in RAM).
    pub evict_rejected: u64,
    /// Pages not evicted because every tier was full.
    pub evict_tier_full: u64,
    /// Time the fault handlers spent serving faults, from reading a fault to
    /// waking its thread: the program's stall time less the kernel's wake-ups.
    pub stall: Duration,
    /// Fault handler threads running.
    pub fault_handlers: usize,
    /// CPU time the fault handlers have used, all of them together.
    pub fault_handler_cpu: Duration,
    /// The part of `stall` spent bringing pages back from tiers or staging
    /// (first touches excluded): what the stall controller steers by.
    pub reclaim_stall: Duration,
    /// Service time of every fault, nanoseconds.
    pub fault_latency_ns: Histogram<u64>,
    /// Each tier's own counters, in tier order, with its name. The sampler's
    /// raw tier comes last, named "sampled".
    pub tiers: Vec<(String, TierStats)>,
    /// The policy's state, when one runs.
    pub policy: Option<PolicyStats>,
}

impl Stats {
    /// All faults served, of every kind.
    pub fn faults(&self) -> u64 {
        self.faults_from_tier + self.sample_faults + self.faults_from_staging + self.faults_zero_filled
    }

    /// Bytes every tier uses now, metadata included (the sampler's raw copies too).
    pub fn tier_bytes(&self) -> u64 {
        self.tiers.iter().map(|(_, t)| t.bytes_used).sum()
    }

    /// Pages in RAM over all regions (mincore at the snapshot).
    pub fn resident_pages(&self) -> u64 {
        self.per_region.iter().map(|r| r.resident_pages).sum()
    }

    /// A fault-latency percentile in microseconds.
    pub fn fault_latency_us(&self, quantile: f64) -> f64 {
        self.fault_latency_ns.value_at_quantile(quantile) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_stay_within_three_percent() {
        for v in [0u64, 1, 31, 32, 33, 100, 999, 1_000, 4_567, 15_000, 123_456_789, 3_000_000_000_000] {
            let back = AtomicHistogram::value_of(AtomicHistogram::index(v));
            let err = (back as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= 0.032, "{v} -> {back}");
        }
    }

    #[test]
    fn percentiles_come_through_to_hdr() {
        let h = AtomicHistogram::new();
        for i in 1..=1000u64 {
            h.record(i * 1000);
        }
        let hdr = h.to_hdr();
        assert_eq!(hdr.len(), 1000);
        let p50 = hdr.value_at_quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.04, "p50 {p50}");
    }
}
