//! The workloads that run in a process of their own (`farmem bench workload
//! KIND`), so that every variant runs exactly the same program: plain, under
//! `farmem run`, or inside a memory cgroup. Each prints one JSON line
//! ([`WorkloadResult`]) on stdout and exits non-zero on a wrong byte.

use std::time::{Duration, Instant};

use farmem_tiers::mem::Mapping;
use serde::{Deserialize, Serialize};

use super::CompareError;
use crate::heap;
use crate::policy::{Rng, Store, Zipf};
use crate::stats::{histogram, LatencySummary};

/// Bytes scanned between two latency samples of the scan workload.
const SCAN_CHUNK: usize = 1 << 20;

/// What a workload process reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkloadResult {
    /// Operations done in the timed part.
    pub ops: u64,
    /// Seconds of the timed part.
    pub seconds: f64,
    /// Operations per second.
    pub throughput: f64,
    /// What one operation is ("op": a get or set; "MiB": a MiB scanned).
    pub unit: String,
    /// Median latency of one operation, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds.
    pub p999_us: f64,
    /// Values (or chunks) whose bytes were checked, the final full pass included.
    pub checked: u64,
    /// Seconds the fill took (before the timed part).
    pub fill_seconds: f64,
}

impl WorkloadResult {
    fn new(ops: u64, seconds: f64, unit: &str, lat: &LatencySummary, checked: u64, fill_seconds: f64) -> Self {
        WorkloadResult {
            ops,
            seconds,
            throughput: ops as f64 / seconds.max(1e-9),
            unit: unit.into(),
            p50_us: lat.p50_us,
            p99_us: lat.p99_us,
            p999_us: lat.p999_us,
            checked,
            fill_seconds,
        }
    }
}

/// The key-value workload: the store of `farmem bench policy` (1 KiB values
/// of mixed compressibility, key, version and checksum checked on every read),
/// filled, then 90% reads and 10% writes for `duration`, keys Zipf(`theta`)
/// or uniform (`theta` None), then every value read once more.
pub fn kv(size: u64, duration: Duration, theta: Option<f64>) -> Result<WorkloadResult, CompareError> {
    let mut store = Store::new(size).map_err(CompareError::Workload)?;
    let t = Instant::now();
    for k in 0..store.n {
        store.write(k);
    }
    let fill_seconds = t.elapsed().as_secs_f64();
    let zipf = theta.map(|th| Zipf::new(store.n, th));
    let mut rng = Rng(0x2545F4914F6CDD1D);
    let mut hist = histogram();
    let (mut ops, mut checked) = (0u64, 0u64);
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        for _ in 0..256 {
            let k = match &zipf {
                Some(z) => z.next(rng.unit()),
                None => rng.next() & (store.n - 1),
            };
            let write = rng.next().is_multiple_of(10);
            let s = Instant::now();
            if write {
                store.write(k);
            } else {
                store.read(k).map_err(CompareError::WrongBytes)?;
                checked += 1;
            }
            let _ = hist.record((s.elapsed().as_nanos() as u64).max(1));
        }
        ops += 256;
    }
    let seconds = t0.elapsed().as_secs_f64();
    for k in 0..store.n {
        store.read(k).map_err(CompareError::WrongBytes)?;
    }
    Ok(WorkloadResult::new(ops, seconds, "op", &LatencySummary::from_ns(&hist, seconds), checked + store.n, fill_seconds))
}

/// The scan workload: a `size`-byte array of [`heap::fill`] pages, its 1 MiB
/// chunks' checksums taken at fill time, then sequential passes for
/// `duration`, each chunk's checksum compared.
pub fn scan(size: u64, duration: Duration) -> Result<WorkloadResult, CompareError> {
    let len = (size as usize).max(SCAN_CHUNK).next_multiple_of(SCAN_CHUNK);
    let map = Mapping::anonymous(len).map_err(|e| CompareError::Workload(format!("mapping {} MiB for the scan: {e}", len >> 20)))?;
    // SAFETY: the mapping is `len` writable bytes, owned here and alive until
    // the end of this function; no other view of it exists.
    let buf = unsafe { std::slice::from_raw_parts_mut(map.addr(), len) };
    let t = Instant::now();
    heap::fill(buf, 7);
    let sums: Vec<u64> = buf.chunks(SCAN_CHUNK).map(heap::checksum).collect();
    let fill_seconds = t.elapsed().as_secs_f64();
    let mut hist = histogram();
    let mut chunks = 0u64;
    let t0 = Instant::now();
    'passes: loop {
        for (i, c) in buf.chunks(SCAN_CHUNK).enumerate() {
            if t0.elapsed() >= duration {
                break 'passes;
            }
            let s = Instant::now();
            let sum = heap::checksum(c);
            let _ = hist.record((s.elapsed().as_nanos() as u64).max(1));
            if sum != sums[i] {
                return Err(CompareError::WrongBytes(format!("scan: chunk {i} (bytes {}..{}) has checksum {sum:#x}, {:#x} when filled", i * SCAN_CHUNK, (i + 1) * SCAN_CHUNK, sums[i])));
            }
            chunks += 1;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(WorkloadResult::new(chunks * (SCAN_CHUNK as u64 >> 20), seconds, "MiB", &LatencySummary::from_ns(&hist, seconds), chunks, fill_seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_process_workloads_check_and_report() {
        let r = kv(4 << 20, Duration::from_millis(200), Some(0.99)).unwrap();
        assert!(r.ops > 0 && r.throughput > 0.0 && r.p50_us > 0.0 && r.p999_us >= r.p99_us && r.p99_us >= r.p50_us, "{r:?}");
        assert!(r.checked >= 4096, "every value is read at the end: {r:?}");
        let u = kv(4 << 20, Duration::from_millis(100), None).unwrap();
        assert!(u.ops > 0);
        let s = scan(8 << 20, Duration::from_millis(200)).unwrap();
        assert_eq!(s.unit, "MiB");
        assert!(s.ops >= 8 && s.checked == s.ops, "at least one pass: {s:?}");
        let line = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<WorkloadResult>(&line).unwrap(), s);
    }
}
