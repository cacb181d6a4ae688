//! Hard rules 1 and 3: what the program does to its memory wins, and a page a
//! tier cannot return raises SIGBUS, never zeros.

mod common;

use std::sync::{Arc, Mutex};

use common::{checksum, fill_page, settled, Heap, PAGE};
use farmem_runtime::Runtime;
use farmem_tiers::{Capacity, Handle, Page, PageClass, Tier, TierError, TierStats};

fn filled(rt: &Runtime, pages: usize) -> Heap {
    let heap = Heap::new(pages * PAGE);
    rt.register(heap.ptr, heap.len).unwrap();
    for i in 0..pages {
        fill_page(heap.page(i), i as u64 * 4 + 1); // never the all-zero kind
    }
    heap
}

#[test]
fn madvise_dontneed_after_eviction_gives_zeros() {
    let rt = Runtime::builder().build().unwrap();
    let heap = filled(&rt, 128);
    let out = common::evict_until(&rt, heap.ptr, heap.len, 128);
    assert_eq!(out, 128, "pages not evicted");
    // Drop the middle 64 pages while they are evicted.
    // SAFETY: the range lies inside the test's mapping.
    assert_eq!(unsafe { libc::madvise(heap.ptr.add(32 * PAGE).cast(), 64 * PAGE, libc::MADV_DONTNEED) }, 0);
    for i in 32..96 {
        assert!(heap.page(i).iter().all(|&b| b == 0), "page {i} came back after MADV_DONTNEED");
    }
    let mut expect = vec![0u8; PAGE];
    for i in (0..32).chain(96..128) {
        fill_page(&mut expect, i as u64 * 4 + 1);
        assert_eq!(heap.page(i), &expect[..], "page {i}");
    }
    let s = settled(&rt, |s| s.evicted_pages == 0);
    assert!(s.pages_dropped_by_program >= 60, "{s:?}");
    assert_eq!(s.evicted_pages, 0);
}

#[test]
fn munmap_after_eviction_forgets_the_region() {
    let rt = Runtime::builder().build().unwrap();
    let heap = filled(&rt, 64);
    rt.evict(heap.ptr, heap.len).unwrap();
    // SAFETY: unmapping the test's own range; `heap` is forgotten so it is not unmapped twice.
    assert_eq!(unsafe { libc::munmap(heap.ptr.cast(), heap.len) }, 0);
    std::mem::forget(heap);
    let s = settled(&rt, |s| s.regions == 0 && s.evicted_pages == 0);
    assert_eq!((s.regions, s.evicted_pages), (0, 0));
    assert!(s.pages_dropped_by_program > 0, "{s:?}");
}

#[test]
fn a_new_mapping_over_evicted_pages_gives_zeros() {
    let rt = Runtime::builder().build().unwrap();
    let heap = filled(&rt, 64);
    rt.evict(heap.ptr, heap.len).unwrap();
    // Replacing the mapping in place unmaps the old one (the kernel reports it as
    // an unmap) with no window in which another thread could map the range.
    // SAFETY: remapping the test's own range at the same address.
    unsafe {
        let p = libc::mmap(
            heap.ptr.cast(),
            heap.len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
        assert_eq!(p.cast(), heap.ptr);
    }
    let s = settled(&rt, |s| s.regions == 0);
    assert_eq!(s.regions, 0, "an unmapped region is forgotten");
    // Registering the same addresses again must not resurrect the old pages.
    rt.register(heap.ptr, heap.len).unwrap();
    assert!(heap.bytes().iter().all(|&b| b == 0), "old contents came back after munmap");
}

#[test]
fn mremap_moves_evicted_pages_with_the_region() {
    let rt = Runtime::builder().build().unwrap();
    let heap = filled(&rt, 64);
    let sums: Vec<u64> = (0..64).map(|i| checksum(heap.page(i))).collect();
    rt.evict(heap.ptr, heap.len).unwrap();
    // Reserve a destination, then move the whole region there.
    let dst = Heap::new(64 * PAGE);
    // SAFETY: moving the test's mapping onto another mapping it owns.
    let p = unsafe {
        libc::mremap(heap.ptr.cast(), heap.len, heap.len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, dst.ptr)
    };
    assert_eq!(p.cast(), dst.ptr);
    for (i, sum) in sums.iter().enumerate() {
        assert_eq!(checksum(dst.page(i)), *sum, "page {i} after mremap");
    }
    std::mem::forget(heap); // its range now belongs to `dst`
}

#[test]
fn unregister_brings_evicted_pages_back_first() {
    let rt = Runtime::builder().build().unwrap();
    let heap = filled(&rt, 256);
    let before = checksum(heap.bytes());
    let r = rt.evict(heap.ptr, heap.len).unwrap();
    assert!(r.evicted > 200);
    rt.unregister(heap.ptr).unwrap();
    assert_eq!(rt.stats().regions, 0);
    // Unregistered: reading now goes straight to the kernel, so every page must
    // already be back.
    assert_eq!(checksum(heap.bytes()), before);
}

#[test]
fn dropping_the_runtime_brings_pages_back() {
    let heap;
    let before;
    {
        let rt = Runtime::builder().build().unwrap();
        heap = filled(&rt, 128);
        before = checksum(heap.bytes());
        rt.evict(heap.ptr, heap.len).unwrap();
    }
    assert_eq!(checksum(heap.bytes()), before);
}

/// A tier that stores pages but fails every load: a disk that died.
#[derive(Default)]
struct BrokenTier {
    pages: Mutex<Vec<Option<Box<Page>>>>,
}

impl Tier for BrokenTier {
    fn name(&self) -> &str {
        "broken"
    }
    fn store(&self, page: &Page, _: PageClass) -> Result<Handle, TierError> {
        let mut p = self.pages.lock().unwrap();
        p.push(Some(Box::new(*page)));
        Ok(Handle::new(p.len() as u64 - 1))
    }
    fn load(&self, _: Handle, _: &mut Page) -> Result<(), TierError> {
        Err(TierError::Injected)
    }
    fn remove(&self, h: Handle) {
        self.pages.lock().unwrap()[h.raw() as usize] = None;
    }
    fn capacity(&self) -> Capacity {
        Capacity::default()
    }
    fn stats(&self) -> TierStats {
        TierStats::default()
    }
}

const CHILD_ENV: &str = "FARMEM_TEST_SIGBUS_CHILD";

#[test]
fn a_tier_failure_raises_sigbus_not_zeros() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // The child: evict a page into the broken tier and read it.
        let rt = Runtime::builder().tier(Arc::new(BrokenTier::default())).build().unwrap();
        let heap = filled(&rt, 4);
        // All four out, so the read below must fault.
        let out = common::evict_until(&rt, heap.ptr, heap.len, 4);
        assert_eq!(out, 4, "pages not evicted");
        let b = std::hint::black_box(heap.bytes()[PAGE + 5]);
        // Reaching here means the access returned bytes the tier never gave.
        println!("READ {b}");
        std::process::exit(3);
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_tier_failure_raises_sigbus_not_zeros", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGBUS),
        "child should die of SIGBUS; status {:?}, stdout {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_forked_child_sees_evicted_pages_and_the_parent_goes_on() {
    let rt = Runtime::builder().build().unwrap();
    let heap = filled(&rt, 512);
    let before = checksum(heap.bytes());
    let r = rt.evict(heap.ptr, heap.len).unwrap();
    assert!(r.evicted > 400, "{r:?}");
    // SAFETY: the child only reads memory and exits; it allocates nothing.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ok = checksum(heap.bytes()) == before;
        // SAFETY: ending the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child saw other bytes than the parent had (status {status:#x})");
    assert_eq!(checksum(heap.bytes()), before);
    // Eviction resumes in the parent after the fork.
    let r = rt.evict(heap.ptr, heap.len).unwrap();
    assert!(r.evicted > 400, "{r:?}");
    assert_eq!(checksum(heap.bytes()), before);
}

#[test]
fn mremap_of_part_of_a_region_keeps_both_parts() {
    let rt = Runtime::builder().build().unwrap();
    let heap = filled(&rt, 64);
    let sums: Vec<u64> = (0..64).map(|i| checksum(heap.page(i))).collect();
    rt.evict(heap.ptr, heap.len).unwrap();
    let dst = Heap::new(16 * PAGE);
    // SAFETY: moving pages 24..40 of the test's mapping onto another mapping it owns.
    let p = unsafe {
        libc::mremap(heap.ptr.add(24 * PAGE).cast(), 16 * PAGE, 16 * PAGE, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, dst.ptr)
    };
    assert_eq!(p.cast(), dst.ptr);
    for k in 0..16 {
        assert_eq!(checksum(dst.page(k)), sums[24 + k], "moved page {k}");
    }
    for i in (0..24).chain(40..64) {
        assert_eq!(checksum(heap.page(i)), sums[i], "page {i} left in place");
    }
    let s = settled(&rt, |s| s.regions == 2);
    assert_eq!(s.regions, 2, "the moved part is a region of its own");
    // The moved part can be evicted and faulted again at its new address.
    // Pages shared for a moment with a child another test forks are busy for
    // the kernel's move: try again until they are not.
    let out = common::evict_until(&rt, dst.ptr, dst.len, 16);
    assert!(out > 8, "only {out} of 16 moved pages evicted");
    for k in 0..16 {
        assert_eq!(checksum(dst.page(k)), sums[24 + k], "moved page {k} after a second eviction");
    }
    // Unmap what is still ours: the hole at 24..40 may hold another test's mapping now.
    // SAFETY: the two remaining parts of the test's mapping.
    unsafe {
        libc::munmap(heap.ptr.cast(), 24 * PAGE);
        libc::munmap(heap.ptr.add(40 * PAGE).cast(), 24 * PAGE);
    }
    std::mem::forget(heap);
}

/// Runs `rounds` on a thread of its own over a 16-page region that an
/// evictor empties over and over meanwhile; returns what `rounds` returned.
/// A page a thread is faulting on must not be claimed by the evictor again
/// and again (that kept the fault waiting forever), so a hang fails the test
/// (`what` says what hung) instead of stalling the suite.
fn against_a_running_evictor<T: Send + 'static>(what: &str, rounds: impl FnOnce(&Heap, usize) -> T + Send + 'static) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    let rt = Arc::new(Runtime::builder().batch_pages(16).build().unwrap());
    let pages = 16;
    let heap = Arc::new(Heap::new(pages * PAGE));
    rt.register(heap.ptr, heap.len).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let evictor = {
        let (rt, heap, stop) = (Arc::clone(&rt), Arc::clone(&heap), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                rt.evict(heap.ptr, heap.len).unwrap();
            }
        })
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    {
        let heap = Arc::clone(&heap);
        std::thread::spawn(move || {
            let _ = done_tx.send(rounds(&heap, pages));
        });
    }
    let out = done_rx.recv_timeout(std::time::Duration::from_secs(120)).unwrap_or_else(|_| panic!("{what} against a running evictor did not finish in 120 s: a fault is stuck"));
    stop.store(true, Ordering::Relaxed);
    evictor.join().unwrap();
    std::mem::forget(heap);
    out
}

#[test]
fn a_page_dropped_during_eviction_never_comes_back() {
    // The kernel reports MADV_DONTNEED before it zaps the pages; an eviction in
    // that window must not carry the old bytes past the zap.
    let resurrected = against_a_running_evictor("20,000 rounds of write, madvise, read", |heap, pages| {
        let mut resurrected = 0;
        for round in 0..20_000u64 {
            let i = (round as usize * 7) % pages;
            heap.page(i)[100..108].copy_from_slice(&(round + 1).to_le_bytes());
            // SAFETY: dropping one page of the test's mapping.
            unsafe { libc::madvise(heap.ptr.add(i * PAGE).cast(), PAGE, libc::MADV_DONTNEED) };
            if heap.page(i)[100..108] != [0u8; 8] {
                resurrected += 1;
            }
        }
        resurrected
    });
    assert_eq!(resurrected, 0, "pages dropped with MADV_DONTNEED came back with their old bytes");
}

#[test]
fn a_write_right_after_a_drop_is_never_lost() {
    // An allocator drops a page (MADV_DONTNEED) and hands it out again at
    // once, and the new owner writes it. If the drop lands while the evictor
    // holds the page claimed, the fault the write takes must wait for the
    // claim to end: served at once (a zero-fill), the write would go into a
    // page the evictor then moves out and throws away as dropped.
    let lost = against_a_running_evictor("30,000 rounds of read, drop, write", |heap, pages| {
        let mut last = vec![0u64; pages];
        let mut lost = Vec::new();
        for round in 0..30_000u64 {
            let i = (round as usize * 7) % pages;
            let seen = u64::from_le_bytes(heap.page(i)[200..208].try_into().unwrap());
            if seen != last[i] {
                lost.push((round, i, last[i], seen));
            }
            // SAFETY: dropping one page of the test's mapping.
            unsafe { libc::madvise(heap.ptr.add(i * PAGE).cast(), PAGE, libc::MADV_DONTNEED) };
            last[i] = round + 1;
            heap.page(i)[200..208].copy_from_slice(&last[i].to_le_bytes());
        }
        lost
    });
    assert!(lost.is_empty(), "{} writes made right after a drop were lost (round, page, wrote, read): {:?}", lost.len(), &lost[..lost.len().min(5)]);
}
