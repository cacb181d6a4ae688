//! The zram swap-in baseline: [`measure_zram_swapin`] and the workload its
//! child runs (fill a heap past the cgroup limit, then time random reads).

use std::time::Instant;

use serde::Serialize;

use super::cgroup::MemCgroup;
use super::child::{run_child, ChildArgs, Shared, CHILD_NO_HEAP, HDR_FILL_NS, HDR_FIRST_WRONG, HDR_WORDS, HDR_WRONG};
use super::kernel_available;
use super::signals::{interrupted, SignalCatcher};
use super::swap::ZramSwap;
use crate::heap;
use crate::stats::{histogram, LatencySummary};
use crate::BaselineError;

/// What to run.
#[derive(Debug, Clone)]
pub struct ZramRunConfig {
    /// Heap size, bytes (default 1 GiB).
    pub heap_bytes: u64,
    /// Memory cgroup limit, bytes (default 256 MiB).
    pub limit_bytes: u64,
    /// zram's compressor (default "lz4"; the kernel's default if zram lacks it).
    pub algorithm: String,
    /// Random reads to time (default 300 000).
    pub accesses: u64,
    /// Heap contents seed, for [`heap::fill`].
    pub seed: u64,
    /// `vm.swappiness` for the run (default None: leave it as it is).
    pub swappiness: Option<u32>,
}

impl Default for ZramRunConfig {
    fn default() -> Self {
        ZramRunConfig { heap_bytes: 1 << 30, limit_bytes: 256 << 20, algorithm: "lz4".into(), accesses: 300_000, seed: 1, swappiness: None }
    }
}

/// The kernel run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ZramRun {
    /// zram's compressor, as zram reports it.
    pub algorithm: String,
    /// Latency of each random read (hits and swap-ins alike).
    pub latency: LatencySummary,
    /// Reads per second of time spent in the timed reads.
    pub accesses_per_s: f64,
    /// Uncompressed bytes zram held at the end of the reads.
    pub zram_orig_bytes: u64,
    /// Compressed bytes zram held.
    pub zram_compr_bytes: u64,
    /// Memory zram used, allocator overhead included.
    pub zram_mem_used_bytes: u64,
    /// Same-filled (zero among them) pages zram held, using no memory.
    pub zram_same_pages: u64,
    /// Uncompressed bytes per byte of memory zram used (orig / mem_used_total).
    pub ratio: f64,
    /// Uncompressed bytes per byte of memory zram used, counting as stored
    /// the zero pages the swap layer kept out of zram (see `zero_pages_in_swap`).
    pub ratio_with_zero_pages: f64,
    /// Pages swapped out during the run (/proc/vmstat pswpout).
    pub swapped_out_pages: u64,
    /// Zero pages in swap at the end of the reads (swpout_zero - swpin_zero):
    /// since Linux 6.12 the swap layer records them in a bitmap and never
    /// writes them to zram, so zram's counters leave them out.
    pub zero_pages_in_swap: u64,
    /// Pages swapped in during the run (/proc/vmstat pswpin).
    pub swapped_in_pages: u64,
    /// Seconds the child took to fill the heap (the reclaim it caused included).
    pub fill_s: f64,
    /// Heap size, bytes.
    pub heap_bytes: u64,
    /// Memory cgroup limit, bytes.
    pub limit_bytes: u64,
    /// Whether the cgroup was a v2 one.
    pub cgroup_v2: bool,
}

/// The measured workload: map and fill the heap, then time random reads and
/// check every page read against what [`heap::fill_page`] makes.
///
/// # Safety
/// Runs in a forked child; `args.shared` maps HDR_WORDS + accesses words.
unsafe fn zram_workload(args: &ChildArgs) -> i32 {
    // SAFETY: memory this child maps itself and the shared buffer, within
    // their bounds; no allocation (heap::fill_page allocates nothing).
    unsafe {
        let (heap_bytes, n, seed, out) = (args.heap_bytes, args.accesses, args.seed, args.shared);
        let p = libc::mmap(std::ptr::null_mut(), heap_bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        if p == libc::MAP_FAILED {
            return CHILD_NO_HEAP;
        }
        // Page by page, as the first-touch baseline and farmem see it.
        libc::madvise(p, heap_bytes, libc::MADV_NOHUGEPAGE);
        let base = p as *mut u8;
        let t = Instant::now();
        heap::fill(std::slice::from_raw_parts_mut(base, heap_bytes), seed);
        *out.add(HDR_FILL_NS) = t.elapsed().as_nanos() as u64;
        let pages = heap_bytes / heap::PAGE;
        let samples = out.add(HDR_WORDS);
        let mut expect = [0u8; heap::PAGE];
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut wrong = 0u64;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let page = (x % pages as u64) as usize;
            let word = page % (heap::PAGE / 8);
            let at = base.add(page * heap::PAGE);
            let s = Instant::now();
            let v = std::ptr::read_volatile(at.add(word * 8) as *const u64);
            *samples.add(i) = s.elapsed().as_nanos() as u64;
            // Check the whole page, outside the timed part.
            let got = std::slice::from_raw_parts(at as *const u8, heap::PAGE);
            if !page_is_right(got, v, word, seed, page, &mut expect) {
                if wrong == 0 {
                    *out.add(HDR_FIRST_WRONG) = page as u64;
                }
                wrong += 1;
            }
        }
        *out.add(HDR_WRONG) = wrong;
        0
    }
}

/// Whether `got` (page `page` of the heap made with `seed`) and the word `v`
/// read from it at word index `word` are what [`heap::fill_page`] writes.
/// `scratch` receives the expected page. Allocates nothing.
fn page_is_right(got: &[u8], v: u64, word: usize, seed: u64, page: usize, scratch: &mut [u8; heap::PAGE]) -> bool {
    heap::fill_page(scratch, seed, page);
    let e = u64::from_ne_bytes(scratch[word * 8..word * 8 + 8].try_into().unwrap_or([0; 8]));
    v == e && got == &scratch[..]
}

/// Runs the zram swap-in baseline (see the module doc): returns the latency
/// of `cfg.accesses` random reads of a `cfg.heap_bytes` heap of
/// [`heap::fill`] pages held under a `cfg.limit_bytes` memory cgroup limit
/// with zram swap, and zram's counters at the end. Call it before starting
/// threads of your own if you can: it forks. A read that returns other bytes
/// than were written is an error ([`BaselineError::WrongBytes`]).
pub fn measure_zram_swapin(cfg: &ZramRunConfig) -> Result<ZramRun, BaselineError> {
    let heap_bytes = (cfg.heap_bytes as usize).next_multiple_of(heap::PAGE);
    if heap_bytes < 16 * heap::PAGE {
        return Err(BaselineError::Invalid { what: "heap_bytes", value: format!("{} is below 16 pages", cfg.heap_bytes) });
    }
    if cfg.limit_bytes < 4 << 20 {
        return Err(BaselineError::Invalid { what: "limit_bytes", value: format!("{} is below 4 MiB, too little for the process itself", cfg.limit_bytes) });
    }
    if cfg.accesses == 0 || cfg.accesses > 1 << 32 {
        return Err(BaselineError::Invalid { what: "accesses", value: format!("{} is not in 1..=2^32", cfg.accesses) });
    }
    kernel_available()?;
    let n = cfg.accesses as usize;
    let _signals = SignalCatcher::new();
    let mut zram = ZramSwap::new(&cfg.algorithm, 2 * heap_bytes as u64)?;
    if let Some(s) = cfg.swappiness {
        zram.set_swappiness(s)?;
    }
    interrupted()?;
    let cgroup = MemCgroup::new(cfg.limit_bytes)?;
    if let Some(s) = cfg.swappiness {
        cgroup.set_swappiness(s)?;
    }
    let shared = Shared::new(HDR_WORDS + n)?;
    interrupted()?;
    let args = ChildArgs { heap_bytes, accesses: n, seed: cfg.seed, shared: shared.ptr };
    let outcome = run_child(&cgroup, &shared, &args, zram_workload)?;
    let wrong = shared.get(HDR_WRONG);
    if wrong > 0 {
        return Err(BaselineError::WrongBytes { wrong, accesses: cfg.accesses, first_page: shared.get(HDR_FIRST_WRONG) });
    }
    let mut hist = histogram();
    let mut total_ns = 0u64;
    for i in 0..n {
        let v = shared.get(HDR_WORDS + i).max(1);
        total_ns += v;
        hist.record(v).map_err(|_| BaselineError::Parse { path: "the child's latency samples".into(), value: format!("{v} ns is out of the histogram's range") })?;
    }
    let latency = LatencySummary::from_ns(&hist, total_ns as f64 / 1e9);
    let c = outcome.counters;
    Ok(ZramRun {
        algorithm: zram.algorithm().to_string(),
        accesses_per_s: latency.per_s,
        latency,
        zram_orig_bytes: c.orig_bytes,
        zram_compr_bytes: c.compr_bytes,
        zram_mem_used_bytes: c.mem_used_bytes,
        zram_same_pages: c.same_pages,
        ratio: c.ratio(),
        ratio_with_zero_pages: if c.mem_used_bytes > 0 {
            (c.orig_bytes + outcome.zero_in_swap * heap::PAGE as u64) as f64 / c.mem_used_bytes as f64
        } else {
            0.0
        },
        swapped_out_pages: outcome.pswpout,
        zero_pages_in_swap: outcome.zero_in_swap,
        swapped_in_pages: outcome.pswpin,
        fill_s: shared.get(HDR_FILL_NS) as f64 / 1e9,
        heap_bytes: heap_bytes as u64,
        limit_bytes: cfg.limit_bytes,
        cgroup_v2: cgroup.is_v2(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::zram_ratio;

    #[test]
    fn a_wrong_byte_anywhere_in_a_page_is_caught() {
        let mut page = [0u8; heap::PAGE];
        let mut scratch = [0u8; heap::PAGE];
        for index in 0..64 {
            heap::fill_page(&mut page, 3, index);
            let word = index % 512;
            let v = u64::from_ne_bytes(page[word * 8..word * 8 + 8].try_into().unwrap());
            assert!(page_is_right(&page, v, word, 3, index, &mut scratch));
            assert!(!page_is_right(&page, v ^ 1, word, 3, index, &mut scratch), "a wrong word read");
            assert!(
                !page_is_right(&page, v, word, 3, index + 1, &mut scratch) || (heap::page_kind(3, index) == heap::PageKind::Zero && heap::page_kind(3, index + 1) == heap::PageKind::Zero),
                "another page's bytes"
            );
            page[(index * 61) % heap::PAGE] ^= 0x10;
            assert!(!page_is_right(&page, v, word, 3, index, &mut scratch), "a flipped bit elsewhere in the page");
        }
    }

    #[test]
    fn bad_configurations_are_refused_before_touching_anything() {
        let bad = [
            ZramRunConfig { heap_bytes: 4096, ..ZramRunConfig::default() },
            ZramRunConfig { limit_bytes: 1 << 20, ..ZramRunConfig::default() },
            ZramRunConfig { accesses: 0, ..ZramRunConfig::default() },
        ];
        for cfg in bad {
            match measure_zram_swapin(&cfg) {
                Err(BaselineError::Invalid { .. }) => {}
                other => panic!("{cfg:?} gave {other:?}"),
            }
        }
        assert!(matches!(zram_ratio(&[], "lz4"), Err(BaselineError::Invalid { .. })));
    }
}
