//! Several fault handlers at once: faults on one page from many threads, and
//! faults racing the program's drops, unmaps, moves and forks, the evictor,
//! and the runtime's own requests. Every page is checked byte for byte, the
//! runtime checks each page it brings back (verification mode), and a hang
//! fails the test instead of stalling the suite. Each test runs twice: with
//! faults served by the handler threads (`thread_mode::`) and by the faulting
//! threads themselves (`signal_mode::`), where the same page states and turns
//! must keep the same order.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{checksum, fill_page, Heap, PAGE};
use farmem_runtime::policy::PolicyConfig;
use farmem_runtime::{FaultMode, Runtime};

/// More handlers than this machine has CPUs, so that several serve at once
/// even on 2 CPUs.
const HANDLERS: usize = 4;

/// Runs `body` on a thread of its own; panics with `what` if it has not
/// finished in `limit` (a fault stuck forever), or with its own panic.
fn watchdog<T: Send + 'static>(what: &str, limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            t.join().unwrap();
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::panic::resume_unwind(t.join().unwrap_err()),
        Err(_) => panic!("{what} did not finish in {limit:?}: a fault is stuck"),
    }
}

fn runtime(batch: usize, mode: FaultMode) -> Arc<Runtime> {
    Arc::new(Runtime::builder().fault_handlers(HANDLERS).batch_pages(batch).verify(true).fault_mode(mode).build().unwrap())
}

/// Fails unless the faults were served the way `mode` says: in signal mode
/// by the faulting threads (every one of them), in thread mode by none.
fn served_in_mode(rt: &Runtime, mode: FaultMode) {
    let s = rt.stats();
    let faults = s.faults_from_tier + s.faults_from_staging + s.faults_zero_filled + s.sample_faults;
    match mode {
        FaultMode::Signal => assert!(s.faults_in_thread > 0 && s.faults_in_thread == faults, "signal mode: {} of {faults} faults served in the faulting thread", s.faults_in_thread),
        FaultMode::Thread => assert_eq!(s.faults_in_thread, 0, "thread mode served faults in the faulting thread"),
    }
}

/// Each test below, once per fault mode.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod thread_mode {
            $(#[test]
            fn $name() {
                super::$name(farmem_runtime::FaultMode::Thread)
            })*
        }
        mod signal_mode {
            $(#[test]
            fn $name() {
                super::$name(farmem_runtime::FaultMode::Signal)
            })*
        }
    };
}

in_both_modes!(
    handlers_racing_on_one_page_install_it_once_and_never_an_old_copy,
    faults_racing_drops_unmaps_moves_forks_and_eviction_from_8_threads_stay_byte_exact,
    requests_are_served_while_faults_are_in_flight,
    two_threads_forking_at_once_both_get_children_with_every_page,
    a_page_dropped_while_it_is_read_ahead_reads_as_zeros,
);

/// A thread that evicts `[first, first + pages)` of `heap` over and over
/// until stopped; returns the pages it evicted.
fn evictor(rt: &Arc<Runtime>, heap: &Arc<Heap>, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let (rt, heap, stop) = (Arc::clone(rt), Arc::clone(heap), Arc::clone(stop));
    std::thread::spawn(move || {
        let mut n = 0;
        let mut x = 0x9E37_79B9u64;
        let pages = heap.len / PAGE;
        while !stop.load(Ordering::Relaxed) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let first = (x as usize) % pages;
            let len = (1 + (x >> 32) as usize % 64).min(pages - first);
            // SAFETY: the range lies inside the heap.
            n += rt.evict(unsafe { heap.ptr.add(first * PAGE) }, len * PAGE).unwrap().evicted;
        }
        n
    })
}

/// Fills pages `0..pages` of `heap` with `seed(i)`'s content; returns their checksums.
fn fill_and_sum(heap: &Heap, pages: usize, seed: impl Fn(usize) -> u64) -> Vec<u64> {
    (0..pages)
        .map(|i| {
            fill_page(heap.page(i), seed(i));
            checksum(heap.page(i))
        })
        .collect()
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn handlers_racing_on_one_page_install_it_once_and_never_an_old_copy(mode: FaultMode) {
    const SHARED: usize = 4;
    const THREADS: usize = 8;
    let rt = runtime(8, mode);
    // Pages 0..SHARED every thread reads; page SHARED + t only thread t writes.
    let heap = Arc::new(Heap::new((SHARED + THREADS) * PAGE));
    rt.register(heap.ptr, heap.len).unwrap();
    let sums = fill_and_sum(&heap, SHARED, |i| 1 + i as u64 * 4);
    let stop = Arc::new(AtomicBool::new(false));
    let ev = evictor(&rt, &heap, &stop);
    let (rt2, heap2) = (Arc::clone(&rt), Arc::clone(&heap));
    let wrong = watchdog("8 threads faulting on the same pages", Duration::from_secs(120), move || {
        let (rt, heap) = (rt2, heap2);
        let wrong = AtomicU64::new(0);
        // 20,000 rounds each, and on until 2,000 faults of which some met
        // another handler on their page (60 s at most): on a loaded machine
        // 20,000 rounds can pass with few evictions.
        let enough = AtomicBool::new(false);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (heap, sums, wrong, enough) = (&heap, &sums, &wrong, &enough);
                s.spawn(move || {
                    let own = SHARED + t;
                    let mut version = 0u64;
                    let mut round = 0usize;
                    while round < 20_000 || !enough.load(Ordering::Relaxed) {
                        let i = round % SHARED;
                        if checksum(heap.page(i)) != sums[i] {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        // The page this thread writes holds what it wrote last,
                        // in every word: an old copy installed again would not.
                        let page = heap.page(own);
                        if page.chunks(8).any(|w| u64::from_le_bytes(w.try_into().unwrap()) != version) {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        version += 1;
                        page.chunks_mut(8).for_each(|w| w.copy_from_slice(&version.to_le_bytes()));
                        round += 1;
                    }
                });
            }
            while !enough.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                let st = rt.stats();
                let faults = st.faults_from_tier + st.faults_from_staging;
                if (faults >= 2_000 && st.faults_raced > 0) || t0.elapsed() > Duration::from_secs(60) {
                    enough.store(true, Ordering::Relaxed);
                }
            }
        });
        wrong.into_inner()
    });
    stop.store(true, Ordering::Relaxed);
    let evicted = ev.join().unwrap();
    served_in_mode(&rt, mode);
    let s = rt.stats();
    eprintln!(
        "{} handlers: {evicted} pages evicted, {} faults from tiers, {} from staging, {} raced another handler, {} deferred",
        s.fault_handlers, s.faults_from_tier, s.faults_from_staging, s.faults_raced, s.faults_deferred
    );
    assert_eq!(wrong, 0, "pages read wrong");
    assert_eq!(s.fault_handlers, HANDLERS);
    assert!(s.faults_from_tier + s.faults_from_staging > 1_000, "too few faults to test anything: {} from tiers, {} from staging", s.faults_from_tier, s.faults_from_staging);
    assert!(s.faults_raced > 0, "no two handlers ever met on one page: the test did not test the race");
}

/// What a worker's page must hold: the version it wrote, or zeros once dropped.
fn fill_version(page: &mut [u8], page_no: usize, version: u64) {
    if version == 0 {
        page.fill(0);
    } else {
        fill_page(page, (page_no as u64) << 20 | version);
    }
}

fn faults_racing_drops_unmaps_moves_forks_and_eviction_from_8_threads_stay_byte_exact(mode: FaultMode) {
    const THREADS: usize = 8;
    const PAGES: usize = 4096;
    const STATIC: usize = 256;
    let rt = runtime(16, mode);
    // Pages below STATIC nobody writes (forked children check them); page p
    // above belongs to thread p % THREADS.
    let heap = Arc::new(Heap::new(PAGES * PAGE));
    rt.register(heap.ptr, heap.len).unwrap();
    let static_sums = fill_and_sum(&heap, STATIC, |i| 7 + i as u64);
    let stop = Arc::new(AtomicBool::new(false));
    let ev = evictor(&rt, &heap, &stop);
    let (rt2, heap2) = (Arc::clone(&rt), Arc::clone(&heap));
    let failures = watchdog("faults racing drops, unmaps, moves and forks", Duration::from_secs(180), move || {
        let (rt, heap) = (rt2, heap2);
        let failures = std::sync::Mutex::new(Vec::<String>::new());
        let workers_done = AtomicBool::new(false);
        // Two threads, each moving a region in an eighth of its 6,000 rounds.
        let arena = Arena::new(2 * 2 * 6_000 / 8 * 2);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (heap, failures, rt, arena) = (&heap, &failures, &rt, &arena);
                    s.spawn(move || {
                        let mine: Vec<usize> = (STATIC..PAGES).filter(|p| p % THREADS == t).collect();
                        let mut versions = vec![0u64; mine.len()];
                        let mut expect = vec![0u8; PAGE];
                        let mut x = 0x1234_5678 + t as u64;
                        for round in 0..6_000u64 {
                            let k = next(&mut x) as usize % mine.len();
                            let p = mine[k];
                            fill_version(&mut expect, p, versions[k]);
                            if heap.page(p) != &expect[..] {
                                failures.lock().unwrap().push(format!("thread {t} round {round}: page {p} is not version {}", versions[k]));
                                return;
                            }
                            match next(&mut x) % 8 {
                                0 => {
                                    // SAFETY: dropping one page this thread owns.
                                    unsafe { libc::madvise(heap.ptr.add(p * PAGE).cast(), PAGE, libc::MADV_DONTNEED) };
                                    versions[k] = 0;
                                }
                                1 if t < 2 => moved_and_unmapped(rt, arena, t, round, failures),
                                _ => {
                                    versions[k] = round + 1;
                                    fill_version(heap.page(p), p, versions[k]);
                                }
                            }
                        }
                    })
                })
                .collect();
            let (heap, failures, workers_done) = (&heap, &failures, &workers_done);
            let forker = s.spawn(move || {
                let mut forks = 0;
                while !workers_done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if let Err(e) = fork_and_check(heap, &static_sums) {
                        failures.lock().unwrap().push(e);
                    }
                    forks += 1;
                }
                forks
            });
            for w in workers {
                w.join().unwrap();
            }
            workers_done.store(true, Ordering::Relaxed);
            let forks = forker.join().unwrap();
            assert!(forks > 0, "no fork happened");
        });
        failures.into_inner().unwrap()
    });
    stop.store(true, Ordering::Relaxed);
    let evicted = ev.join().unwrap();
    served_in_mode(&rt, mode);
    let s = rt.stats();
    eprintln!(
        "{evicted} pages evicted, {} faults from tiers, {} from staging, {} zero-filled, {} raced, {} dropped by the program",
        s.faults_from_tier, s.faults_from_staging, s.faults_zero_filled, s.faults_raced, s.pages_dropped_by_program
    );
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(s.faults_from_tier > 1000 && s.pages_dropped_by_program > 0, "the race was not exercised: {} faults from tiers, {} pages dropped", s.faults_from_tier, s.pages_dropped_by_program);
}

/// Pages in each region [`moved_and_unmapped`] makes.
const SIDE: usize = 16;

/// Address space for the regions [`moved_and_unmapped`] makes, each at an
/// address of its own: a range unmapped is never mapped and registered again
/// in this test, since the runtime learns of the unmap only from the kernel's
/// event, after munmap has returned (see `Runtime::register_lazy` for the
/// promise a program makes about reusing a range).
struct Arena {
    base: usize,
    slots: usize,
    next: std::sync::atomic::AtomicUsize,
}

impl Arena {
    fn new(slots: usize) -> Arena {
        // SAFETY: reserving address space only (PROT_NONE); unmapped never,
        // as the test's regions are carved out of it.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), slots * SIDE * PAGE, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0) };
        assert_ne!(base, libc::MAP_FAILED);
        Arena { base: base as usize, slots, next: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// A slot's address, never handed out before.
    fn take(&self) -> *mut u8 {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        assert!(k < self.slots, "the arena is used up");
        (self.base + k * SIDE * PAGE) as *mut u8
    }
}

/// A region of its own: registered, filled, evicted, moved (mremap), read
/// back at its new address, then unmapped with its pages still out.
fn moved_and_unmapped(rt: &Runtime, arena: &Arena, t: usize, round: u64, failures: &std::sync::Mutex<Vec<String>>) {
    const N: usize = SIDE;
    let (a, target) = (arena.take(), arena.take());
    // SAFETY: both slots are this call's alone, inside the arena's
    // reservation: the first is mapped, registered, moved onto the second
    // and unmapped there.
    unsafe {
        let m = libc::mmap(a.cast(), N * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED, -1, 0);
        assert_ne!(m, libc::MAP_FAILED);
        let seed = |i: usize| ((t as u64) << 40) | (round << 8) | i as u64;
        let mut sums = [0u64; N];
        for (i, sum) in sums.iter_mut().enumerate() {
            let page = std::slice::from_raw_parts_mut(a.add(i * PAGE), PAGE);
            fill_page(page, seed(i));
            *sum = checksum(page);
        }
        rt.register(a, N * PAGE).unwrap();
        rt.evict(a, N * PAGE).unwrap();
        let b = libc::mremap(a.cast(), N * PAGE, N * PAGE, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, target) as *mut u8;
        assert!(b as *mut libc::c_void != libc::MAP_FAILED, "mremap: {}", std::io::Error::last_os_error());
        // Half read back (faults at the new address), half left out for the unmap.
        for (i, &sum) in sums.iter().enumerate().take(N / 2) {
            if checksum(std::slice::from_raw_parts(b.add(i * PAGE), PAGE)) != sum {
                failures.lock().unwrap().push(format!("thread {t} round {round}: page {i} of a moved region came back wrong"));
            }
        }
        libc::munmap(b.cast(), N * PAGE);
    }
}

/// Forks; the child checks the pages nobody writes and exits 0 if all are right.
fn fork_and_check(heap: &Heap, sums: &[u64]) -> Result<(), String> {
    // SAFETY: the child only reads memory and calls _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ok = sums.iter().enumerate().all(|(i, &s)| checksum(heap.page(i)) == s);
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(format!("a forked child saw pages wrong (status {status:#x})"))
    }
}

fn requests_are_served_while_faults_are_in_flight(mode: FaultMode) {
    const PAGES: usize = 8192;
    const THREADS: usize = 4;
    let rt = runtime(64, mode);
    // Every fourth page is random bytes: the tier refuses it and the evictor
    // asks for it to be put back from staging (a restore request).
    let heap = Arc::new(Heap::new(PAGES * PAGE));
    rt.register(heap.ptr, heap.len).unwrap();
    let sums = Arc::new(fill_and_sum(&heap, PAGES, |i| i as u64));
    // The sampler takes pages out and puts back those nobody used (put-back requests).
    rt.start_policy(PolicyConfig { stall: Some(0.05), tick: Duration::from_millis(20), ..PolicyConfig::default() }).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ev = evictor(&rt, &heap, &stop);
    let (rt2, heap2, sums2) = (Arc::clone(&rt), Arc::clone(&heap), Arc::clone(&sums));
    let (failures, unregistered, forks) = watchdog("requests beside faults", Duration::from_secs(180), move || {
        let (rt, heap, sums) = (rt2, heap2, sums2);
        let failures = std::sync::Mutex::new(Vec::<String>::new());
        let done = AtomicBool::new(false);
        let (mut unregistered, mut forks) = (0, 0);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (heap, sums, failures, done) = (&heap, &sums, &failures, &done);
                s.spawn(move || {
                    let mut x = 0xabcdef + t as u64;
                    while !done.load(Ordering::Relaxed) {
                        // Half the pages hot, half read rarely.
                        let r = next(&mut x) as usize;
                        let i = if r.is_multiple_of(8) { r / 8 % PAGES } else { r / 8 % (PAGES / 2) };
                        if checksum(heap.page(i)) != sums[i] {
                            failures.lock().unwrap().push(format!("thread {t}: page {i} wrong"));
                            return;
                        }
                    }
                });
            }
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(6) {
                // Unregister with pages out: the request brings them back first.
                let side = Heap::new(64 * PAGE);
                let side_sums = fill_and_sum(&side, 64, |i| 1000 + i as u64);
                rt.register(side.ptr, side.len).unwrap();
                rt.evict(side.ptr, side.len).unwrap();
                let _ = checksum(side.page(3));
                rt.unregister(side.ptr).unwrap();
                unregistered += 1;
                if (0..64).any(|i| checksum(side.page(i)) != side_sums[i]) {
                    failures.lock().unwrap().push("an unregistered region lost its bytes".into());
                }
                // Before a fork every page comes back (a restore-all request).
                if unregistered % 4 == 0 {
                    if let Err(e) = fork_and_check(&heap, &sums[..PAGES / 8]) {
                        failures.lock().unwrap().push(e);
                    }
                    forks += 1;
                }
            }
            done.store(true, Ordering::Relaxed);
        });
        (failures.into_inner().unwrap(), unregistered, forks)
    });
    stop.store(true, Ordering::Relaxed);
    ev.join().unwrap();
    rt.stop_policy();
    served_in_mode(&rt, mode);
    let s = rt.stats();
    eprintln!(
        "{unregistered} regions unregistered, {forks} forks, {} pages refused and put back from staging, {} put back from the sampler, {} faults from tiers, {} raced",
        s.evict_rejected, s.pages_put_back, s.faults_from_tier, s.faults_raced
    );
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    for i in 0..PAGES {
        assert_eq!(checksum(heap.page(i)), sums[i], "page {i} wrong at the end");
    }
    assert!(unregistered > 0 && forks > 0 && s.evict_rejected > 0 && s.faults_from_tier > 0, "not every request was exercised: {unregistered} unregistered, {forks} forks, {} refused pages put back, {} faults from tiers", s.evict_rejected, s.faults_from_tier);
}

fn two_threads_forking_at_once_both_get_children_with_every_page(mode: FaultMode) {
    const PAGES: usize = 2048;
    let rt = runtime(64, mode);
    let heap = Arc::new(Heap::new(PAGES * PAGE));
    rt.register(heap.ptr, heap.len).unwrap();
    let sums = Arc::new(fill_and_sum(&heap, PAGES, |i| 12 + i as u64));
    let stop = Arc::new(AtomicBool::new(false));
    let ev = evictor(&rt, &heap, &stop);
    let (heap2, sums2) = (Arc::clone(&heap), Arc::clone(&sums));
    let (forks, failures) = watchdog("two threads forking at once", Duration::from_secs(120), move || {
        let failures = std::sync::Mutex::new(Vec::new());
        let forks = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                let (heap, sums, failures, forks) = (&heap2, &sums2, &failures, &forks);
                s.spawn(move || {
                    for k in 0..60u64 {
                        // Forks a little apart, so that eviction runs between
                        // them and each fork has pages to bring back.
                        std::thread::sleep(Duration::from_micros(500 + (k * 7919) % 2000));
                        if let Err(e) = fork_and_check(heap, sums) {
                            failures.lock().unwrap().push(e);
                        }
                        forks.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        (forks.into_inner(), failures.into_inner().unwrap())
    });
    stop.store(true, Ordering::Relaxed);
    let evicted = ev.join().unwrap();
    eprintln!("{forks} forks from two threads, {evicted} pages evicted meanwhile");
    assert!(failures.is_empty(), "{} of {forks} children saw pages wrong", failures.len());
    assert!(evicted > 0, "nothing was evicted: the forks raced nothing");
}

/// Stamps every word of page `p` with `round` and `p`, so that a copy from
/// another round or of another page shows.
fn stamp(page: &mut [u8], p: usize, round: u64) {
    let w = round << 32 | p as u64 | 1 << 63;
    page.chunks_mut(8).for_each(|c| c.copy_from_slice(&w.to_le_bytes()));
}

fn stamped(page: &[u8], p: usize, round: u64) -> bool {
    let w = (round << 32 | p as u64 | 1 << 63).to_le_bytes();
    page.chunks(8).all(|c| c == w)
}

/// One thread reads an evicted block in order, so the handlers read the
/// pages ahead of it back; another drops a page of that window meanwhile and
/// must then read zeros. The kernel zaps a dropped range as soon as a
/// handler has read the drop's event, so a read-ahead copy already decided
/// on (or a fault message read before the drop and served after it) must
/// not land after the zap: the page would hold its bytes from before the drop.
fn a_page_dropped_while_it_is_read_ahead_reads_as_zeros(mode: FaultMode) {
    const BLOCK: usize = 64;
    const BLOCKS: usize = 16;
    // The reader reads pages 0..READ of a block; the dropper drops one of
    // READ..BLOCK, all of which the reader's fault at page 32 reads ahead.
    const READ: usize = 40;
    const ROUNDS: u64 = 4_000;
    let rt = runtime(BLOCK, mode);
    let heap = Arc::new(Heap::new(BLOCK * BLOCKS * PAGE));
    rt.register(heap.ptr, heap.len).unwrap();
    let (rt2, heap2) = (Arc::clone(&rt), Arc::clone(&heap));
    let (wrong_read, wrong_dropped) = watchdog("drops beside readahead", Duration::from_secs(120), move || {
        let (rt, heap) = (rt2, heap2);
        let (wrong_read, wrong_dropped) = (AtomicU64::new(0), AtomicU64::new(0));
        let progress = std::sync::atomic::AtomicUsize::new(0);
        let turn = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                for round in 0..ROUNDS {
                    let base = (round as usize % BLOCKS) * BLOCK;
                    (base..base + BLOCK).for_each(|p| stamp(heap.page(p), p, round));
                    // SAFETY: the block lies inside the heap.
                    rt.evict(unsafe { heap.ptr.add(base * PAGE) }, BLOCK * PAGE).unwrap();
                    progress.store(0, Ordering::Release);
                    turn.wait();
                    for p in base..base + READ {
                        if !stamped(heap.page(p), p, round) {
                            wrong_read.fetch_add(1, Ordering::Relaxed);
                        }
                        progress.store(p - base, Ordering::Release);
                    }
                    turn.wait();
                }
            });
            s.spawn(|| {
                let mut x = 0x5eed_u64;
                for round in 0..ROUNDS {
                    let base = (round as usize % BLOCKS) * BLOCK;
                    turn.wait();
                    let target = base + READ + next(&mut x) as usize % (BLOCK - READ);
                    // Around the reader's fault at page 32, whose readahead
                    // covers the target; a deadline, as the reader may be done.
                    let after = 24 + next(&mut x) as usize % 12;
                    let t0 = Instant::now();
                    while progress.load(Ordering::Acquire) < after && t0.elapsed() < Duration::from_millis(5) {
                        std::hint::spin_loop();
                    }
                    // SAFETY: dropping one page of the heap that only this thread touches this round.
                    unsafe { libc::madvise(heap.ptr.add(target * PAGE).cast(), PAGE, libc::MADV_DONTNEED) };
                    if heap.page(target).iter().any(|&b| b != 0) {
                        wrong_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    turn.wait();
                }
            });
        });
        (wrong_read.into_inner(), wrong_dropped.into_inner())
    });
    served_in_mode(&rt, mode);
    let s = rt.stats();
    eprintln!(
        "{ROUNDS} rounds: {} pages read ahead, {} faults from tiers, {} evicted pages dropped, {} raced",
        s.pages_prefetched, s.faults_from_tier, s.pages_dropped_by_program, s.faults_raced
    );
    assert_eq!((wrong_read, wrong_dropped), (0, 0), "(pages read wrong, dropped pages that did not read as zeros)");
    assert!(s.pages_prefetched > ROUNDS && s.pages_dropped_by_program > 0, "the race was not set up: {} pages read ahead, {} evicted pages dropped", s.pages_prefetched, s.pages_dropped_by_program);
}
