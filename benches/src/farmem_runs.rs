//! farmem's side of the fault benchmark: evict a heap, walk it at random, time
//! every access from the program's side (fault, wake-up and all).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use farmem_runtime::mem::Mapping;
use farmem_runtime::{Runtime, PAGE_SIZE};
use farmem_tiers::Tier;
use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::heap;

/// One farmem run: a heap evicted into one tier, then faulted back at random.
#[derive(Debug, Clone, Serialize)]
pub struct FarmemRun {
    /// What was measured ("floor", "lz4", "zstd:3").
    pub label: String,
    /// Access latency seen by the program, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Faults served per second from one program thread.
    pub faults_per_s: f64,
    /// The fault handler's own service time (read to wake), p50 in microseconds.
    pub service_p50_us: f64,
    /// Fault handler threads that served the run.
    pub fault_handlers: usize,
    /// CPU time of all fault handlers over the timed walk, per fault, in
    /// microseconds (every handler's wake-ups included).
    pub handler_cpu_us_per_fault: f64,
    /// Uncompressed bytes per byte the tier really uses.
    pub ratio: f64,
    /// Tier memory beyond the sum of compressed sizes, as a fraction of it.
    pub tier_overhead: f64,
    /// Pages evicted.
    pub pages_evicted: u64,
    /// Eviction throughput, MB/s of pages.
    pub evict_mb_per_s: f64,
}

/// How the runtimes of a bench serve faults.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Service {
    /// How long a fault handler spins before sleeping.
    pub spin: Duration,
    /// Fault handler threads (0: the runtime's default, one per CPU, pinned).
    pub fault_handlers: usize,
    /// Who serves a fault: the handler threads, or the faulting thread.
    #[serde(serialize_with = "mode_name")]
    pub fault_mode: farmem_runtime::FaultMode,
}

fn mode_name<S: serde::Serializer>(mode: &farmem_runtime::FaultMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.name())
}

impl Service {
    /// A runtime builder over `tier` serving faults this way.
    pub fn builder(&self, tier: Arc<dyn Tier>) -> farmem_runtime::RuntimeBuilder {
        Runtime::builder().tier(tier).spin(self.spin).fault_handlers(self.fault_handlers).fault_mode(self.fault_mode)
    }
}

pub(crate) fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

pub(crate) fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn read_word(base: *const u8, page: usize) -> u64 {
    // SAFETY: callers pass a page inside the heap mapping; the word is aligned.
    unsafe { std::ptr::read_volatile(base.add(page * PAGE_SIZE + (page % 512) * 8) as *const u64) }
}

/// Evicts a `size`-byte heap of [`heap::fill`] pages into `tier` and reads one
/// word from `accesses` distinct random pages, each a fault.
pub fn random_faults(tier: Arc<dyn Tier>, label: &str, size: usize, accesses: usize, seed: u64, service: Service) -> Result<FarmemRun, String> {
    random_faults_with(tier, label, size, accesses, seed, service, &mut || Ok(()))
}

/// As [`random_faults`], calling `after_evict` between the eviction and the
/// walk (a spill tier flushes there; a baseline on its file runs there).
pub fn random_faults_with(
    tier: Arc<dyn Tier>,
    label: &str,
    size: usize,
    accesses: usize,
    seed: u64,
    service: Service,
    after_evict: &mut dyn FnMut() -> Result<(), String>,
) -> Result<FarmemRun, String> {
    let rt = service.builder(tier).build().map_err(|e| e.to_string())?;
    let map = Mapping::anonymous(size).map_err(|e| e.to_string())?;
    let base = map.addr();
    rt.register(base, size).map_err(|e| e.to_string())?;
    // SAFETY: the mapping is `size` bytes and only this thread touches it now.
    heap::fill(unsafe { std::slice::from_raw_parts_mut(base, size) }, seed);
    let pages = size / PAGE_SIZE;
    let mut order: Vec<usize> = (0..pages).collect();
    order.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(seed));
    order.truncate(accesses.min(pages));
    let expect: Vec<u64> = order.iter().map(|&p| read_word(base, p)).collect();
    let t = Instant::now();
    let report = rt.evict(base, size).map_err(|e| e.to_string())?;
    let evict_secs = t.elapsed().as_secs_f64();
    after_evict()?;
    let before = rt.stats();
    let tier_stats = before.tiers[0].1;
    let evicted_set = order.len();
    let mut h = hist();
    let t0 = Instant::now();
    let mut wrong = 0usize;
    for (k, &p) in order.iter().enumerate() {
        let s = Instant::now();
        let v = read_word(base, p);
        h.record(s.elapsed().as_nanos().max(1) as u64).expect("in bounds");
        if v != expect[k] {
            wrong += 1;
        }
    }
    let walk = t0.elapsed().as_secs_f64();
    if wrong > 0 {
        return Err(format!("{label}: {wrong} of {evicted_set} pages read back wrong"));
    }
    let stats = rt.stats();
    Ok(FarmemRun {
        label: label.to_string(),
        p50_us: us(&h, 0.5),
        p99_us: us(&h, 0.99),
        p999_us: us(&h, 0.999),
        faults_per_s: evicted_set as f64 / walk,
        service_p50_us: stats.fault_latency_us(0.5),
        fault_handlers: stats.fault_handlers,
        handler_cpu_us_per_fault: stats.fault_handler_cpu.saturating_sub(before.fault_handler_cpu).as_secs_f64() * 1e6 / evicted_set.max(1) as f64,
        ratio: tier_stats.ratio(),
        tier_overhead: tier_stats.overhead(),
        pages_evicted: report.evicted,
        evict_mb_per_s: (report.evicted as f64 * PAGE_SIZE as f64 / 1e6) / evict_secs,
    })
}

/// Victims the capped run's reclaimer evicts per call.
const RECLAIM_BATCH: usize = 64;

/// A run with resident memory held under a cap while the program reads at random.
#[derive(Debug, Clone, Serialize)]
pub struct CappedRun {
    /// Heap size, bytes.
    pub heap_bytes: u64,
    /// Resident cap, bytes.
    pub cap_bytes: u64,
    /// Reads per second of time spent in the timed reads (hits and faults),
    /// as the kernel run counts it: the walk's own bookkeeping is left out.
    pub accesses_per_s: f64,
    /// Access latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Share of accesses that faulted.
    pub fault_share: f64,
    /// Resident pages of the heap at the end (RAM), bytes.
    pub resident_end_bytes: u64,
    /// Memory the tier used at the end, bytes.
    pub tier_bytes: u64,
}

/// Random reads over a `heap_bytes` heap whose resident part is held near
/// `cap_bytes` by a background reclaimer evicting the oldest faulted-in pages
/// (FIFO): the same shape as the kernel's zram run under a memory cgroup limit.
pub fn capped_random_reads(tier: Arc<dyn Tier>, heap_bytes: usize, cap_bytes: usize, accesses: usize, seed: u64, service: Service) -> Result<CappedRun, String> {
    let rt = Arc::new(service.builder(tier).build().map_err(|e| e.to_string())?);
    let map = Mapping::anonymous(heap_bytes).map_err(|e| e.to_string())?;
    let base = map.addr();
    rt.register(base, heap_bytes).map_err(|e| e.to_string())?;
    // SAFETY: the mapping is ours and only this thread touches it now.
    heap::fill(unsafe { std::slice::from_raw_parts_mut(base, heap_bytes) }, seed);
    let pages = heap_bytes / PAGE_SIZE;
    let cap = cap_bytes / PAGE_SIZE;
    let sums: Vec<u64> = (0..pages).map(|p| read_word(base, p)).collect();
    // Start as the kernel run does after filling: the last-written cap resident.
    // SAFETY: the range lies inside the mapping.
    rt.evict(base, (pages - cap) * PAGE_SIZE).map_err(|e| e.to_string())?;
    let mut resident = vec![false; pages];
    let mut fifo: VecDeque<usize> = (pages - cap..pages).collect();
    for &p in &fifo {
        resident[p] = true;
    }
    let (tx, rx) = mpsc::channel::<usize>();
    let stop = Arc::new(AtomicBool::new(false));
    let base_addr = base as usize;
    let reclaimer = {
        let (rt, stop) = (Arc::clone(&rt), Arc::clone(&stop));
        std::thread::spawn(move || {
            // Victims are evicted in batches: one staging flush per batch.
            let mut batch: Vec<*mut u8> = Vec::with_capacity(RECLAIM_BATCH);
            while !stop.load(Ordering::Relaxed) {
                match rx.recv_timeout(Duration::from_millis(1)) {
                    Ok(p) => batch.push((base_addr + p * PAGE_SIZE) as *mut u8),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                while batch.len() < RECLAIM_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push((base_addr + p * PAGE_SIZE) as *mut u8),
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    batch.sort_unstable();
                    let _ = rt.evict_pages(&batch);
                    batch.clear();
                }
            }
        })
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut h = hist();
    let mut misses = 0usize;
    let mut wrong = 0usize;
    let mut in_reads = 0u64;
    for _ in 0..accesses {
        let p = rng.gen_range(0..pages);
        let s = Instant::now();
        let v = read_word(base, p);
        let ns = s.elapsed().as_nanos().max(1) as u64;
        in_reads += ns;
        h.record(ns).expect("in bounds");
        if v != sums[p] {
            wrong += 1;
        }
        if !resident[p] {
            misses += 1;
            resident[p] = true;
            fifo.push_back(p);
            if fifo.len() > cap {
                let victim = fifo.pop_front().expect("non-empty");
                resident[victim] = false;
                let _ = tx.send(victim);
            }
        }
    }
    let secs = in_reads as f64 / 1e9;
    stop.store(true, Ordering::Relaxed);
    drop(tx);
    let _ = reclaimer.join();
    if wrong > 0 {
        return Err(format!("capped run: {wrong} reads returned wrong bytes"));
    }
    let stats = rt.stats();
    Ok(CappedRun {
        heap_bytes: heap_bytes as u64,
        cap_bytes: cap_bytes as u64,
        accesses_per_s: accesses as f64 / secs,
        p50_us: us(&h, 0.5),
        p99_us: us(&h, 0.99),
        p999_us: us(&h, 0.999),
        fault_share: misses as f64 / accesses as f64,
        resident_end_bytes: (pages as u64 - stats.evicted_pages) * PAGE_SIZE as u64,
        tier_bytes: stats.tiers[0].1.bytes_used,
    })
}
