//! Helpers shared by the runtime's integration tests.
#![allow(dead_code)]

pub const PAGE: usize = 4096;

/// A private anonymous mapping owned by a test, unmapped on drop.
pub struct Heap {
    pub ptr: *mut u8,
    pub len: usize,
    _map: farmem_runtime::mem::Mapping,
}

// SAFETY: a Heap is plain mapped memory; the tests decide which thread writes which page.
unsafe impl Send for Heap {}
// SAFETY: as above.
unsafe impl Sync for Heap {}

impl Heap {
    pub fn new(len: usize) -> Heap {
        let map = farmem_runtime::mem::Mapping::anonymous(len).unwrap();
        Heap { ptr: map.addr(), len, _map: map }
    }

    // Tests share one heap between threads that write disjoint pages, as a
    // program would; the heap is plain memory, not a Rust-owned buffer.
    #[allow(clippy::mut_from_ref)]
    pub fn bytes(&self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as self; tests
        // coordinate their own writes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    #[allow(clippy::mut_from_ref)]
    pub fn page(&self, i: usize) -> &mut [u8] {
        &mut self.bytes()[i * PAGE..(i + 1) * PAGE]
    }
}

/// Deterministic, page-varied content: text-like, structured, zero runs, random.
pub fn fill_page(page: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    match seed % 4 {
        0 => page.fill(0),
        1 => {
            for (i, b) in page.iter_mut().enumerate() {
                *b = b"farmem keeps cold pages compressed "[i % 35];
            }
            let k = (next() % 4000) as usize;
            page[k..k + 8].copy_from_slice(&seed.to_le_bytes());
        }
        2 => {
            for w in page.chunks_mut(16) {
                w[..8].copy_from_slice(&(0x7f00_0000_0000 + (next() % 4096) * 16).to_le_bytes());
                w[8..].copy_from_slice(&(next() % 100).to_le_bytes());
            }
        }
        _ => {
            for w in page.chunks_mut(8) {
                w.copy_from_slice(&next().to_le_bytes());
            }
        }
    }
}

pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for w in bytes.chunks(8) {
        let mut a = [0u8; 8];
        a[..w.len()].copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a)).wrapping_mul(0x100000001b3);
    }
    h
}

/// A heap of `pages` pages, page `i` filled from `seed(i)`, and each page's checksum.
pub fn filled(pages: usize, seed: impl Fn(usize) -> u64) -> (Heap, Vec<u64>) {
    let heap = Heap::new(pages * PAGE);
    let sums = fill(&heap, seed);
    (heap, sums)
}

/// Fills every page `i` of `heap` from `seed(i)`; returns each page's checksum.
pub fn fill(heap: &Heap, seed: impl Fn(usize) -> u64) -> Vec<u64> {
    (0..heap.len / PAGE)
        .map(|i| {
            fill_page(heap.page(i), seed(i));
            checksum(heap.page(i))
        })
        .collect()
}

/// Fails naming the pages whose bytes differ from their checksums.
pub fn verify(heap: &Heap, sums: &[u64]) {
    let bad: Vec<usize> = (0..sums.len()).filter(|&i| checksum(heap.page(i)) != sums[i]).collect();
    assert!(bad.is_empty(), "{} pages came back wrong, first {:?}", bad.len(), &bad[..bad.len().min(8)]);
}

/// Waits (up to 5 s) for the runtime's statistics to satisfy `ok`: the fault
/// thread updates its counters just after it wakes the faulting thread.
pub fn settled(rt: &farmem_runtime::Runtime, ok: impl Fn(&farmem_runtime::Stats) -> bool) -> farmem_runtime::Stats {
    let t0 = std::time::Instant::now();
    loop {
        let s = rt.stats();
        if ok(&s) || t0.elapsed() > std::time::Duration::from_secs(5) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Evicts `[ptr, ptr+len)` until `want` pages have gone out in all, or 2 s
/// have passed; returns how many went out. Pages filled an instant ago can
/// be busy for the kernel's move for a while (seen: over a thousand
/// back-to-back attempts), so attempts that take nothing are spaced 1 ms apart.
pub fn evict_until(rt: &farmem_runtime::Runtime, ptr: *mut u8, len: usize, want: u64) -> u64 {
    let t0 = std::time::Instant::now();
    let mut out = 0;
    while out < want && t0.elapsed() < std::time::Duration::from_secs(2) {
        let r = rt.evict(ptr, len).unwrap();
        out += r.evicted;
        if r.evicted == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    out
}
