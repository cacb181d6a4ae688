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

/// Bytes of the smallest and largest object of the allocator workload.
const ALLOC_SIZES: (usize, usize) = (16, 1024);
/// Operations of the allocator workload between two clock reads (a clock
/// read per operation would cost as much as the operation).
const ALLOC_BATCH: u64 = 256;
/// Operations of one thread between two exchanges with another thread.
const ALLOC_EXCHANGE_EVERY: u64 = 4096;
/// Blocks a thread gives the next at each exchange: one operation in eight
/// then frees a block another thread allocated.
const ALLOC_EXCHANGED: usize = 512;

/// One live object of the allocator workload: its block and the tag written
/// at both of its ends.
struct Block {
    ptr: *mut u8,
    len: usize,
    tag: u64,
}

// SAFETY: a Block owns its allocation alone; malloc's blocks may be freed on
// any thread, which is what the workload's exchanges are for.
unsafe impl Send for Block {}

impl Block {
    /// A fresh block of `len` bytes from the process's malloc, tagged.
    fn new(len: usize, tag: u64) -> Result<Block, CompareError> {
        // SAFETY: malloc with a non-zero size.
        let ptr = unsafe { libc::malloc(len) }.cast::<u8>();
        if ptr.is_null() {
            return Err(CompareError::Workload(format!("alloc: malloc({len}) returned NULL")));
        }
        // SAFETY: `len` >= 16 writable bytes were just allocated.
        unsafe {
            ptr.cast::<u64>().write_unaligned(tag);
            ptr.add(len - 8).cast::<u64>().write_unaligned(!tag);
        }
        Ok(Block { ptr, len, tag })
    }

    /// Checks both tags, then frees the block.
    fn free(self) -> Result<(), CompareError> {
        // SAFETY: the block is live and `len` >= 16 bytes.
        let (head, tail) = unsafe { (self.ptr.cast::<u64>().read_unaligned(), self.ptr.add(self.len - 8).cast::<u64>().read_unaligned()) };
        let (ptr, len, tag) = (self.ptr, self.len, self.tag);
        // SAFETY: the block came from malloc and is freed once, here.
        unsafe { libc::free(ptr.cast()) };
        if head == tag && tail == !tag {
            Ok(())
        } else {
            Err(CompareError::WrongBytes(format!("alloc: the {len}-byte block at {ptr:p} held tags {head:#x}/{tail:#x}, not {tag:#x}/{:#x}: wrong bytes", !tag)))
        }
    }
}

/// What one thread of the allocator workload did.
struct AllocThread {
    ops: u64,
    checked: u64,
    hist: hdrhistogram::Histogram<u64>,
}

/// The allocator workload, after larson (mimalloc-bench): one thread per
/// CPU, each with its share of `size` bytes of live objects of 16 to 1,024
/// bytes; an operation frees a random one of its objects and allocates
/// another of a random size in its place, and every 4,096 operations a
/// thread hands 512 of its objects to the next thread and takes those the
/// previous one handed it, so that one free in eight is of an object
/// another thread allocated. Every object
/// carries a tag at both ends, checked before it is freed. Latency is an
/// operation's, averaged over batches of 256.
pub fn alloc(size: u64, duration: Duration) -> Result<WorkloadResult, CompareError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    let mean = (ALLOC_SIZES.0 + ALLOC_SIZES.1) / 2;
    let per_thread = (size as usize / mean / threads).max(64);
    let exchange: Vec<std::sync::Mutex<Vec<Block>>> = (0..threads).map(|_| std::sync::Mutex::new(Vec::new())).collect();
    let t = Instant::now();
    let results: Vec<Result<AllocThread, CompareError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|id| {
                let exchange = &exchange;
                s.spawn(move || alloc_thread(id, per_thread, duration, exchange))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(CompareError::Workload("alloc: a thread panicked".into())))).collect()
    });
    let mut checked = 0;
    for slot in &exchange {
        for b in std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner())) {
            b.free()?;
            checked += 1;
        }
    }
    let seconds = t.elapsed().as_secs_f64();
    let (mut ops, mut hist) = (0, histogram());
    for r in results {
        let r = r?;
        ops += r.ops;
        checked += r.checked;
        let _ = hist.add(&r.hist);
    }
    Ok(WorkloadResult::new(ops, seconds, "op", &LatencySummary::from_ns(&hist, seconds), checked, 0.0))
}

fn alloc_thread(id: usize, n: usize, duration: Duration, exchange: &[std::sync::Mutex<Vec<Block>>]) -> Result<AllocThread, CompareError> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let span = (ALLOC_SIZES.1 - ALLOC_SIZES.0 + 1) as u64;
    let mut tag = (id as u64) << 48;
    let mut next_block = |rng: &mut Rng| {
        tag += 1;
        Block::new(ALLOC_SIZES.0 + (rng.next() % span) as usize, tag)
    };
    let mut live = Vec::with_capacity(n);
    for _ in 0..n {
        live.push(next_block(&mut rng)?);
    }
    let mut out = AllocThread { ops: 0, checked: 0, hist: histogram() };
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        let s = Instant::now();
        for _ in 0..ALLOC_BATCH {
            let k = (rng.next() % n as u64) as usize;
            let b = std::mem::replace(&mut live[k], next_block(&mut rng)?);
            b.free()?;
        }
        let _ = out.hist.record((s.elapsed().as_nanos() as u64 / ALLOC_BATCH).max(1));
        out.ops += ALLOC_BATCH;
        out.checked += ALLOC_BATCH;
        if out.ops.is_multiple_of(ALLOC_EXCHANGE_EVERY) {
            // Give some to the next thread; take what the previous gave.
            let next = (id + 1) % exchange.len();
            // From the end: the slots are in no order, and draining the
            // front would move the whole vector.
            let keep = live.len() - ALLOC_EXCHANGED.min(n / 8);
            exchange[next].lock().unwrap_or_else(|e| e.into_inner()).extend(live.drain(keep..));
            let mine = std::mem::take(&mut *exchange[id].lock().unwrap_or_else(|e| e.into_inner()));
            live.extend(mine);
            while live.len() < n {
                live.push(next_block(&mut rng)?);
            }
            while live.len() > n {
                live.pop().map_or(Ok(()), Block::free)?;
                out.checked += 1;
            }
        }
    }
    for b in live {
        b.free()?;
        out.checked += 1;
    }
    Ok(out)
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

    #[test]
    fn the_allocator_workload_frees_across_threads_and_checks_every_block() {
        let r = alloc(2 << 20, Duration::from_millis(300)).unwrap();
        assert!(r.ops >= ALLOC_EXCHANGE_EVERY && r.throughput > 0.0 && r.p50_us > 0.0, "{r:?}");
        // Every operation frees a checked block, and so does the end.
        assert!(r.checked > r.ops, "{r:?}");
    }

    #[test]
    fn a_block_whose_tags_changed_is_wrong_bytes() {
        let b = Block::new(100, 0x1234).unwrap();
        Block::new(16, 7).unwrap().free().unwrap();
        // SAFETY: the block's last byte is its own.
        unsafe { *b.ptr.add(99) ^= 1 };
        match b.free() {
            Err(CompareError::WrongBytes(m)) => assert!(m.contains("100-byte block"), "{m}"),
            other => panic!("a changed tag was not caught: {:?}", other.err()),
        }
    }
}
