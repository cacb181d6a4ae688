//! Signal mode: faults served in the faulting thread's SIGBUS handler.
//! Pages come back byte for byte, errno survives, a SIGBUS that is not
//! farmem's reaches the program's own handler, a tier failure still ends in
//! SIGBUS and never zeros, tiers that cannot load inside a signal handler
//! are refused, and the mode's catch (a system call on an evicted page
//! fails with EFAULT) is pinned down so that the documentation stays true.
//! The concurrency tests of both modes are in `handlers.rs`.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use common::{checksum, fill_page, Heap, PAGE};
use farmem_runtime::{FaultMode, Runtime};
use farmem_tiers::{Capacity, Handle, Page, PageClass, Tier, TierError, TierStats};

/// Where the program's own SIGBUS handler mends a fault: a page of a file
/// mapping past the end of its file (0 while none is set up).
static TRAP: AtomicUsize = AtomicUsize::new(0);
/// SIGBUS signals the program's own handler saw.
static PROGRAM_SIGBUS: AtomicU64 = AtomicU64::new(0);

extern "C" fn program_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize & !(PAGE - 1);
    PROGRAM_SIGBUS.fetch_add(1, Ordering::SeqCst);
    if addr != 0 && addr == TRAP.load(Ordering::SeqCst) {
        // SAFETY: replaces the trap page, which the test owns, with anonymous
        // memory, so that the access succeeds when it runs again.
        unsafe {
            libc::mmap(addr as *mut libc::c_void, PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED, -1, 0);
        }
    } else {
        // Not the trap: a real fault nobody mends.
        // SAFETY: ends the process at once, from a signal handler.
        unsafe { libc::_exit(99) };
    }
}

/// Installs the program's own SIGBUS handler before any runtime of this test
/// binary installs farmem's: farmem must hand it what is not its own.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is an SA_SIGINFO one.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = program_handler as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()), 0);
        }
    });
}

fn runtime(mode: FaultMode) -> Runtime {
    setup();
    Runtime::builder().fault_mode(mode).verify(true).build().unwrap()
}

fn filled(rt: &Runtime, pages: usize) -> (Heap, Vec<u64>) {
    let heap = Heap::new(pages * PAGE);
    rt.register(heap.ptr, heap.len).unwrap();
    let sums = (0..pages)
        .map(|i| {
            fill_page(heap.page(i), 0x5157 + i as u64);
            checksum(heap.page(i))
        })
        .collect();
    (heap, sums)
}

/// Whether the page at `p` is in the page tables (mincore; no fault).
fn present(p: *const u8) -> bool {
    let mut v = 0u8;
    // SAFETY: mincore only reads the page tables for one page.
    unsafe { libc::mincore(p as *mut libc::c_void, PAGE, &mut v) == 0 && v & 1 != 0 }
}

#[test]
fn pages_come_back_byte_exact_from_4_threads_and_errno_survives() {
    const PAGES: usize = 4096;
    let rt = runtime(FaultMode::Signal);
    assert_eq!(rt.config().fault_mode, FaultMode::Signal);
    let (heap, sums) = filled(&rt, PAGES);
    for round in 0..3 {
        let before = rt.stats();
        let out = common::evict_until(&rt, heap.ptr, heap.len, PAGES as u64 / 2);
        assert!(out >= PAGES as u64 / 2, "round {round}: only {out} pages evicted");
        // An evicted page, read with errno set: the fault must not change it.
        let i = (0..PAGES).find(|&i| !present(heap.page(i).as_ptr())).expect("an evicted page");
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = 4242 };
        let b = std::hint::black_box(heap.page(i)[17]);
        // SAFETY: as above.
        assert_eq!(unsafe { *libc::__errno_location() }, 4242, "the fault changed errno");
        let _ = b;
        std::thread::scope(|s| {
            for t in 0..4 {
                let (heap, sums) = (&heap, &sums);
                s.spawn(move || {
                    for i in (t..PAGES).step_by(4) {
                        assert_eq!(checksum(heap.page(i)), sums[i], "round {round}: page {i} came back wrong");
                    }
                });
            }
        });
        let after = rt.stats();
        // Four readers close together can look like one reader in order, and
        // then part of the heap comes back read ahead of a fault.
        let faults = after.faults_from_tier - before.faults_from_tier;
        let back = faults + after.pages_prefetched - before.pages_prefetched;
        assert!(faults > 0 && back >= out / 2, "round {round}: {faults} faults from the tier and {back} pages back in all for {out} pages out");
        assert_eq!(after.faults_in_thread - before.faults_in_thread, after.faults() - before.faults(), "every fault served in its thread");
    }
    let s = rt.stats();
    assert_eq!(s.fault_mode, FaultMode::Signal);
    eprintln!("{} faults in their threads, fault p50 {:.1} us", s.faults_in_thread, s.fault_latency_us(0.5));
}

/// A reader in order over evicted pages gets the pages after its faults
/// brought back by the same SIGBUS handler (readahead), byte for byte; a
/// runtime with readahead off serves every page by a fault of its own.
#[test]
fn a_reader_in_order_has_pages_read_ahead_in_its_own_thread() {
    const PAGES: usize = 2048;
    for readahead in [32, 0] {
        setup();
        let rt = Runtime::builder().fault_mode(FaultMode::Signal).readahead(readahead).verify(true).build().unwrap();
        let (heap, sums) = filled(&rt, PAGES);
        let out = common::evict_until(&rt, heap.ptr, heap.len, PAGES as u64);
        assert!(out >= PAGES as u64 / 2, "readahead {readahead}: only {out} pages evicted");
        let before = rt.stats();
        for i in 0..PAGES {
            assert_eq!(checksum(heap.page(i)), sums[i], "readahead {readahead}: page {i} came back wrong");
        }
        let after = rt.stats();
        let (faults, ahead) = (after.faults_from_tier - before.faults_from_tier, after.pages_prefetched - before.pages_prefetched);
        assert_eq!(after.faults_in_thread - before.faults_in_thread, after.faults() - before.faults(), "every fault served in its thread");
        eprintln!("readahead {readahead}: {out} pages out, {faults} faults from the tier, {ahead} pages read ahead");
        if readahead == 0 {
            assert_eq!(ahead, 0);
            assert!(faults >= out * 9 / 10, "{faults} faults for {out} pages out, with readahead off");
        } else {
            assert!(ahead >= out / 2, "only {ahead} of {out} pages read ahead");
            assert!(faults <= out / 4, "{faults} faults for {out} pages read in order");
        }
        drop(heap);
        drop(rt);
    }
}

#[test]
fn a_sigbus_that_is_not_farmems_reaches_the_programs_own_handler() {
    let rt = runtime(FaultMode::Signal);
    let (heap, sums) = filled(&rt, 64);
    rt.evict(heap.ptr, heap.len).unwrap();
    // A page of a file mapping past the end of its (empty) file: BUS_ADRERR,
    // the same si_code as a farmem fault, at an address farmem does not own.
    let path = std::env::temp_dir().join(format!("farmem-sigbus-{}", std::process::id()));
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared mapping of a file the test owns.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    assert_ne!(p, libc::MAP_FAILED);
    TRAP.store(p as usize, Ordering::SeqCst);
    let seen = PROGRAM_SIGBUS.load(Ordering::SeqCst);
    // SAFETY: the page is mapped; the read raises SIGBUS, which the program's
    // handler mends by mapping anonymous memory there.
    let v = unsafe { std::ptr::read_volatile(p as *const u8) };
    assert_eq!(v, 0);
    assert_eq!(PROGRAM_SIGBUS.load(Ordering::SeqCst), seen + 1, "the program's handler did not see its SIGBUS");
    // farmem's own faults never reach it.
    for (i, &sum) in sums.iter().enumerate() {
        assert_eq!(checksum(heap.page(i)), sum, "page {i}");
    }
    assert_eq!(PROGRAM_SIGBUS.load(Ordering::SeqCst), seen + 1, "a farmem fault reached the program's handler");
    assert!(rt.stats().faults_in_thread > 0);
    // SAFETY: the trap page is the test's.
    unsafe { libc::munmap(p, PAGE) };
}

/// Writes `len` bytes at `p` to a pipe; returns what write(2) returned and
/// the bytes that came out.
fn write_to_pipe(p: *const u8, len: usize) -> (isize, i32, Vec<u8>) {
    let mut fds = [0; 2];
    // SAFETY: a fresh pipe, both ends closed below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
    // SAFETY: `p` is `len` mapped bytes (possibly evicted).
    let n = unsafe { libc::write(fds[1], p.cast(), len) };
    let err = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut got = vec![0u8; len];
    // SAFETY: reads into our own buffer.
    let r = if n > 0 { unsafe { libc::read(fds[0], got.as_mut_ptr().cast(), len) } } else { 0 };
    got.truncate(r.max(0) as usize);
    // SAFETY: our own fds.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    (n, err, got)
}

/// The catch of signal mode, which its README section states: the kernel
/// does not wait for an evicted page, so a system call on one fails with
/// EFAULT; in thread mode the same call waits and succeeds. Should a kernel
/// ever wait in signal mode, this fails and the documentation must change.
#[test]
fn a_system_call_on_an_evicted_page_fails_with_efault_in_signal_mode_only() {
    for mode in [FaultMode::Thread, FaultMode::Signal] {
        let rt = runtime(mode);
        let heap = Heap::new(4 * PAGE);
        rt.register(heap.ptr, heap.len).unwrap();
        for i in 0..4 {
            heap.page(i).iter_mut().enumerate().for_each(|(k, b)| *b = (k * 7 + i) as u8);
        }
        let want = heap.page(1).to_vec();
        assert_eq!(common::evict_until(&rt, heap.ptr, heap.len, 4), 4);
        let (n, err, got) = write_to_pipe(heap.page(1).as_ptr(), PAGE);
        match mode {
            FaultMode::Thread => assert!(n == PAGE as isize && got == want, "thread mode: write returned {n} (errno {err})"),
            FaultMode::Signal => assert!(n == -1 && err == libc::EFAULT, "signal mode: write returned {n} (errno {err}), not EFAULT"),
        }
        // Touched from user space first, the page is back and the call works.
        let _ = std::hint::black_box(heap.page(1)[0]);
        let (n, _, got) = write_to_pipe(heap.page(1).as_ptr(), PAGE);
        assert!(n == PAGE as isize && got == want, "{mode}: after a touch, write returned {n}");
    }
}

/// The exit status of a process whose SIGBUS handler freed a tier's entry itself.
const REMOVED_IN_HANDLER: i32 = 7;

/// A tier that loads nothing, claiming it may load in a signal handler
/// (it takes no lock): the tier failure of signal mode.
#[derive(Default)]
struct DeadTier {
    stored: AtomicU64,
    signal_safe: bool,
}

impl Tier for DeadTier {
    fn name(&self) -> &str {
        "dead"
    }
    fn store(&self, _: &Page, _: PageClass) -> Result<Handle, TierError> {
        Ok(Handle::new(self.stored.fetch_add(1, Ordering::Relaxed)))
    }
    fn load(&self, _: Handle, _: &mut Page) -> Result<(), TierError> {
        Err(TierError::Injected)
    }
    fn remove(&self, _: Handle) {
        // A SIGBUS handler leaves freeing to a handler thread: a tier's
        // remove may allocate or take a lock the interrupted code holds.
        if farmem_runtime::serving_fault() {
            // SAFETY: _exit is async-signal-safe; the exit status says why.
            unsafe { libc::_exit(REMOVED_IN_HANDLER) };
        }
    }
    fn loads_in_signal_handler(&self) -> bool {
        self.signal_safe
    }
    fn capacity(&self) -> Capacity {
        Capacity::default()
    }
    fn stats(&self) -> TierStats {
        TierStats::default()
    }
}

#[test]
fn a_tier_that_cannot_load_in_a_signal_handler_is_refused_by_name() {
    setup();
    let err = Runtime::builder().tier(Arc::new(DeadTier::default())).fault_mode(FaultMode::Signal).build().err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("tier dead") && msg.contains("signal"), "{msg}");
    // Thread mode takes it.
    Runtime::builder().tier(Arc::new(DeadTier::default())).build().unwrap();
}

const CHILD_ENV: &str = "FARMEM_TEST_SIGNAL_CHILD";

#[test]
fn a_tier_failure_raises_sigbus_not_zeros_in_signal_mode() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // The child: no handler of its own, so a SIGBUS farmem passes on ends it.
        let rt = Runtime::builder().tier(Arc::new(DeadTier { signal_safe: true, ..DeadTier::default() })).fault_mode(FaultMode::Signal).build().unwrap();
        let heap = Heap::new(4 * PAGE);
        rt.register(heap.ptr, heap.len).unwrap();
        heap.bytes().fill(0x5a);
        assert_eq!(common::evict_until(&rt, heap.ptr, heap.len, 4), 4, "pages not evicted");
        let b = std::hint::black_box(heap.bytes()[PAGE + 5]);
        // Reaching here means the access returned bytes the tier never gave.
        println!("READ {b}");
        std::process::exit(3);
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_tier_failure_raises_sigbus_not_zeros_in_signal_mode", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(REMOVED_IN_HANDLER), "the SIGBUS handler freed the lost page's tier entry itself");
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "child status {:?}, stdout {stdout}, stderr {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("READ"), "the access returned bytes: {stdout}");
}

/// A pin never fails: with more ranges pinned than the table has slots
/// (threads blocked in futex waits hold theirs), eviction waits rather
/// than take a page the kernel is about to read. A pin over memory farmem
/// does not hold takes no slot at all.
#[test]
fn more_pins_than_slots_stop_eviction_until_they_are_dropped() {
    use farmem_runtime::Pinned;
    let rt = runtime(FaultMode::Signal);
    let pages = 320;
    let (heap, sums) = filled(&rt, pages);
    let plain = vec![0u8; PAGE];
    assert_eq!(Pinned::new(&[(plain.as_ptr() as usize, PAGE)]).ranges(), 0, "a pin over plain memory took a slot");
    let pins: Vec<Pinned> = (0..300).map(|i| Pinned::new(&[(heap.page(i).as_ptr() as usize, 8)])).collect();
    assert!(pins.iter().all(|p| p.ranges() == 1));
    // Pages 300.. are not pinned themselves, but no slot was left for the
    // last pins, so nothing may go.
    let report = rt.evict(heap.ptr, heap.len).unwrap();
    assert_eq!(report.evicted, 0, "pages evicted with ranges pinned past the slots: {report:?}");
    assert!((0..pages).all(|i| present(heap.page(i).as_ptr())));
    drop(pins);
    // Every page is taken or, incompressible (fill_page makes some so), refused.
    let r = rt.evict(heap.ptr, heap.len).unwrap();
    assert!(r.evicted > 0 && r.evicted + r.rejected == pages as u64, "after the pins: {r:?}");
    common::verify(&heap, &sums);
}

/// A call with more ranges than a pin holds (the items of one reply, all
/// over the heap) pins its first ranges only and touches the rest: the
/// pages between them stay free to go. Merged into one bounding range, they
/// kept the evictor off most of memcached's heap while such replies went out.
#[test]
fn ranges_past_a_pins_slots_are_touched_not_merged_into_one_range() {
    use farmem_runtime::Pinned;
    let rt = runtime(FaultMode::Signal);
    let pages = 320;
    let (heap, sums) = filled(&rt, pages);
    // Twenty ranges of 8 bytes, ten pages apart.
    let ranges: Vec<(usize, usize)> = (0..20).map(|k| (heap.page(10 * k).as_ptr() as usize + 100, 8)).collect();
    let pin = Pinned::new(&ranges);
    assert_eq!(pin.ranges(), Pinned::MAX_RANGES);
    let r = rt.evict(heap.ptr, heap.len).unwrap();
    // At most the 20 touched pages stay (the pinned ones, and pages the
    // kernel will not move an instant after they were touched).
    assert!(r.evicted + r.rejected >= (pages - 20) as u64, "pages between the ranges stayed: {r:?}");
    assert!((0..Pinned::MAX_RANGES).all(|k| present(heap.page(10 * k).as_ptr())), "a pinned range went: {r:?}");
    drop(pin);
    common::verify(&heap, &sums);
}
