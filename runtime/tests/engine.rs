//! The fault engine against real memory: every check compares bytes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{checksum, fill_page, settled, Heap, PAGE};
use farmem_runtime::Runtime;

#[test]
fn evicted_pages_come_back_byte_exact() {
    let rt = Runtime::builder().build().unwrap();
    let pages = 4096;
    let heap = Heap::new(pages * PAGE);
    rt.register(heap.ptr, heap.len).unwrap();
    for i in 0..pages {
        fill_page(heap.page(i), i as u64 + 1);
    }
    let before = checksum(heap.bytes());
    // One page in four (fill_page's random kind) is refused as incompressible
    // and stays in RAM; pages zero-filled an instant ago may be busy for that
    // instant, so evict until the rest is out.
    let incompressible = (0..pages).filter(|i| (i + 1) % 4 == 3).count() as u64;
    let mut evicted = 0;
    for _ in 0..100 {
        evicted += rt.evict(heap.ptr, heap.len).unwrap().evicted;
        if evicted == pages as u64 - incompressible {
            break;
        }
    }
    assert_eq!(evicted, pages as u64 - incompressible);
    let s = rt.stats();
    assert_eq!(s.evicted_pages, evicted);
    assert_eq!(s.per_region.len(), 1);
    assert_eq!(s.per_region[0].evicted_pages, evicted);
    assert_eq!(s.per_region[0].resident_pages, incompressible, "only refused pages stay in RAM");
    assert_eq!(checksum(heap.bytes()), before);
    let s = settled(&rt, |s| s.faults_from_tier == evicted);
    assert_eq!(s.per_region[0].resident_pages, pages as u64);
    assert_eq!(s.faults_from_tier, evicted, "every evicted page faulted back once");
    assert_eq!(s.evicted_pages, 0);
}

#[test]
fn alphanumeric_pages_go_to_the_default_tier_not_stay_in_ram() {
    // Random text of 36 letters: lz4 finds nothing to repeat and refuses
    // it; the default T1 (lz4, then zstd:1 for what lz4 leaves) keeps it.
    let rt = Runtime::builder().build().unwrap();
    let pages = 512;
    let heap = Heap::new(pages * PAGE);
    rt.register(heap.ptr, heap.len).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in heap.bytes().iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize];
    }
    let before = checksum(heap.bytes());
    let mut evicted = 0;
    for _ in 0..100 {
        evicted += rt.evict(heap.ptr, heap.len).unwrap().evicted;
        if evicted == pages as u64 {
            break;
        }
    }
    assert_eq!(evicted, pages as u64, "pages stayed in RAM");
    let (name, t1) = rt.stats().tiers[0].clone();
    assert_eq!(name, "lz4+zstd");
    assert_eq!((t1.pages, t1.fallback_stores, t1.rejected_incompressible), (pages as u64, pages as u64, 0));
    assert!(t1.bytes_compressed < (pages * PAGE) as u64 * 7 / 10, "{t1:?}");
    assert_eq!(checksum(heap.bytes()), before);
    let s = settled(&rt, |s| s.faults_from_tier == evicted);
    assert_eq!(s.faults_from_tier, evicted, "every page came back from the tier");
}

#[test]
fn untouched_pages_read_as_zeros_and_are_not_counted_as_evicted() {
    let rt = Runtime::builder().build().unwrap();
    let heap = Heap::new(256 * PAGE);
    rt.register(heap.ptr, heap.len).unwrap();
    let r = rt.evict(heap.ptr, heap.len).unwrap();
    assert_eq!(r.evicted, 0);
    assert_eq!(r.absent, 256);
    assert!(heap.bytes().iter().all(|&b| b == 0));
    assert!(rt.stats().faults_zero_filled > 0);
    heap.bytes()[5 * PAGE + 3] = 9;
    assert_eq!(heap.bytes()[5 * PAGE + 3], 9);
}

#[test]
fn many_threads_fault_the_same_pages() {
    let rt = Runtime::builder().build().unwrap();
    let pages = 64;
    let heap = Arc::new(Heap::new(pages * PAGE));
    rt.register(heap.ptr, heap.len).unwrap();
    for round in 0..20u64 {
        for i in 0..pages {
            fill_page(heap.page(i), round * 1000 + i as u64 + 1);
        }
        let sums: Vec<u64> = (0..pages).map(|i| checksum(heap.page(i))).collect();
        rt.evict(heap.ptr, heap.len).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let heap = Arc::clone(&heap);
                let sums = sums.clone();
                std::thread::spawn(move || {
                    for k in 0..pages {
                        let i = (k + t) % pages;
                        assert_eq!(checksum(heap.page(i)), sums[i], "page {i} round {round}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

#[test]
fn writes_racing_eviction_are_never_lost() {
    let rt = Arc::new(Runtime::builder().batch_pages(64).build().unwrap());
    let pages = 512;
    let heap = Arc::new(Heap::new(pages * PAGE));
    rt.register(heap.ptr, heap.len).unwrap();
    for i in 0..pages {
        fill_page(heap.page(i), i as u64 + 7);
        heap.page(i)[PAGE - 8..].fill(0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    // The writers run until the evictor has taken pages from under them a
    // good many times: on a loaded machine 40,000 steps can finish before it
    // gets the CPU at all.
    let evicted = Arc::new(AtomicU64::new(0));
    let evictor = {
        let (rt, heap, stop, evicted) = (Arc::clone(&rt), Arc::clone(&heap), Arc::clone(&stop), Arc::clone(&evicted));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                evicted.fetch_add(rt.evict(heap.ptr, heap.len).unwrap().evicted, Ordering::Relaxed);
            }
        })
    };
    // Each writer owns a slice of pages and bumps a counter word in each page;
    // every read must see its own last write.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (heap, evicted) = (Arc::clone(&heap), Arc::clone(&evicted));
            std::thread::spawn(move || {
                let mut expect = vec![0u64; pages];
                let mut step = 0u64;
                while step < 40_000 || (evicted.load(Ordering::Relaxed) < 2_000 && step < 50_000_000) {
                    step += 1;
                    let i = w + 2 * ((step as usize * 7919) % (pages / 2));
                    // SAFETY: the last word of page i lies inside the heap; only this writer uses it.
                    let counter = unsafe { &*(heap.ptr.add(i * PAGE + 4088) as *const std::sync::atomic::AtomicU64) };
                    assert_eq!(counter.load(Ordering::Relaxed), expect[i], "page {i} lost a write");
                    expect[i] += 1;
                    counter.store(expect[i], Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    evictor.join().unwrap();
    assert!(evicted.load(Ordering::Relaxed) >= 2_000, "the evictor took only {} pages", evicted.load(Ordering::Relaxed));
    let s = rt.stats();
    assert!(s.faults_from_tier + s.faults_from_staging > 0, "{s:?}");
}
