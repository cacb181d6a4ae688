//! Signal mode: a fault is served by the thread that took it.
//!
//! In thread mode the kernel parks the faulting thread, wakes a fault handler
//! and, once the page is in, wakes the thread again: two context switches and,
//! on a VM, often the wake-up of an idle vCPU, which alone costs more than the
//! kernel's whole swap-in. In signal mode the userfaultfd is opened with
//! `UFFD_FEATURE_SIGBUS`: a fault on a page farmem holds raises SIGBUS in the
//! faulting thread, whose handler (here) claims the page by compare-and-swap
//! on its state, decodes it from its tier into a buffer on its own stack,
//! installs it with UFFDIO_COPY and returns; the access then runs again and
//! finds the page. The handler threads still run, for the kernel's events
//! (REMOVE, UNMAP, REMAP) and the runtime's requests, and a fault served here
//! takes the same shared turn a handler thread's fault does, so an event is
//! still applied only after every fault raised before it.
//!
//! What the handler may do: it runs on whatever the thread was doing, in the
//! middle of malloc or holding any lock of the program's. So it allocates
//! nothing, takes no lock a program thread can hold outside this handler
//! (only the runtime's own: the turns, the region table, a tier's slab lock,
//! none of whose holders waits on a program thread), keeps errno, and passes
//! every SIGBUS that is not a fault on farmem memory to the handler that was
//! installed before farmem's, or to the default action.
//!
//! The catch, and why the mode is opt-in: in this mode a kernel access to a
//! page farmem holds (a `read(2)` into it, a `write(2)` from it) does not
//! wait for the page; the system call fails with EFAULT. A program must not
//! hand registered memory to the kernel unless it touched it first (see the
//! README's "Signal mode" section); the preload touches and pins the buffers
//! of the system calls it interposes, and the README lists what that leaves
//! open.
//!
//! A program that sets its own SIGBUS action under the preload reaches
//! [`program_action`], not the kernel: farmem's handler stays in and chains
//! to it. The preload also keeps SIGBUS unblocked in the program's threads
//! (a fault's SIGBUS while it is blocked ends the process), and pins the
//! buffers of the system calls it interposes (see the `pins` module).
//!
//! A fault served from T1 reads ahead as the handler threads do (the
//! `readahead` module): a reader in order gets the pages after its fault
//! brought back in the same handler, one page at a time through the one
//! buffer on the handler's stack. When another thread holds the streams'
//! table at that moment, this fault reads nothing ahead.
//!
//! Not here yet: zero-fill batches (a first touch fills one page).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::time::Instant;

use farmem_tiers::Handle;

use crate::error::RuntimeError;
use crate::fault::{self, AlignedPage};
use crate::pagestate::State;
use crate::region::Region;
use crate::{Shared, PAGE_SIZE};

/// How faults on evicted pages are served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FaultMode {
    /// By the fault handler threads, reading the userfaultfd (the default).
    #[default]
    Thread,
    /// In the faulting thread, from a SIGBUS handler (see the `signal` module).
    Signal,
}

impl FaultMode {
    /// Its name on the command line and in statistics.
    pub fn name(self) -> &'static str {
        match self {
            FaultMode::Thread => "thread",
            FaultMode::Signal => "signal",
        }
    }
}

impl std::fmt::Display for FaultMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `thread` or `signal`, as the command line and the environment write it.
pub fn parse_fault_mode(s: &str) -> Result<FaultMode, String> {
    match s.trim() {
        "thread" => Ok(FaultMode::Thread),
        "signal" => Ok(FaultMode::Signal),
        other => Err(format!("unknown fault mode {other:?}: write thread (fault handler threads, the default) or signal (the faulting thread serves its own fault)")),
    }
}

/// The most runtimes in signal mode one process runs at once.
const SLOTS: usize = 16;

/// One runtime the SIGBUS handler serves, and how many handlers look at it
/// now; a cache line each, as every fault writes `users`.
#[repr(align(64))]
struct Slot {
    shared: AtomicPtr<Shared>,
    users: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot { shared: AtomicPtr::new(std::ptr::null_mut()), users: AtomicU32::new(0) };
static SLOTS_IN_USE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// The program's own SIGBUS action, for every SIGBUS that is not farmem's:
/// the one in force before farmem's handler went in, or one the program set
/// since through the preload's `sigaction` (see [`program_action`]). Kept as
/// atomics under a sequence count, so the handler reads it without a lock.
struct Previous {
    seq: AtomicU32,
    handler: AtomicUsize,
    flags: AtomicI32,
    /// The action's whole `sigaction`, returned as the old action.
    whole: UnsafeCell<Option<libc::sigaction>>,
}
// SAFETY: `whole` is written and read only under INSTALL; the handler reads
// only the atomics.
unsafe impl Sync for Previous {}
static PREVIOUS: Previous = Previous { seq: AtomicU32::new(0), handler: AtomicUsize::new(0), flags: AtomicI32::new(0), whole: UnsafeCell::new(None) };

impl Previous {
    /// Sets the program's action; INSTALL held.
    fn set(&self, act: &libc::sigaction) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        self.handler.store(act.sa_sigaction, Ordering::SeqCst);
        self.flags.store(act.sa_flags, Ordering::SeqCst);
        self.seq.fetch_add(1, Ordering::SeqCst);
        // SAFETY: INSTALL is held (see `Previous`).
        unsafe { *self.whole.get() = Some(*act) };
    }

    /// The handler and its flags, consistent with each other.
    fn get(&self) -> (usize, i32) {
        loop {
            let s = self.seq.load(Ordering::SeqCst);
            let (h, f) = (self.handler.load(Ordering::SeqCst), self.flags.load(Ordering::SeqCst));
            if s.is_multiple_of(2) && self.seq.load(Ordering::SeqCst) == s {
                return (h, f);
            }
            std::hint::spin_loop();
        }
    }
}

/// Runtimes attached now, over every slot.
static ATTACHED: AtomicUsize = AtomicUsize::new(0);

/// Whether any runtime in signal mode runs in this process.
pub(crate) fn any_attached() -> bool {
    ATTACHED.load(Ordering::SeqCst) != 0
}

/// Calls `f` on each runtime in signal mode, each held for the call.
pub(crate) fn each_attached(mut f: impl FnMut(&Shared)) {
    for slot in &SLOTS_IN_USE {
        if slot.shared.load(Ordering::Acquire).is_null() {
            continue;
        }
        slot.users.fetch_add(1, Ordering::SeqCst);
        let p = slot.shared.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: as in `serve_any`: this use was counted before the load.
            f(unsafe { &*p });
        }
        slot.users.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The program's side of SIGBUS while farmem's handler is installed: what
/// the preload's `sigaction` does for SIGBUS. Sets the action farmem chains
/// to (if `new`), and returns the one it replaced; None when farmem's
/// handler is not installed, and the call is the kernel's.
pub fn program_action(new: Option<&libc::sigaction>) -> Option<libc::sigaction> {
    let _once = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !INSTALLED.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: INSTALL is held (see `Previous`).
    let old = unsafe { *PREVIOUS.whole.get() }.unwrap_or_else(|| {
        // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask.
        unsafe { std::mem::zeroed() }
    });
    if let Some(a) = new {
        PREVIOUS.set(a);
    }
    Some(old)
}

static INSTALLED: AtomicBool = AtomicBool::new(false);
static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A runtime's place in the SIGBUS handler's table; taken out on drop, after
/// which no handler looks at the runtime any more.
pub(crate) struct Attached(usize);

/// Installs the SIGBUS handler (once per process) and lets it serve `shared`'s faults.
pub(crate) fn attach(shared: &std::sync::Arc<Shared>) -> Result<Attached, RuntimeError> {
    if let Some(t) = shared.tiers.iter().find(|t| !t.loads_in_signal_handler()) {
        return Err(RuntimeError::Os {
            op: "starting a runtime in signal mode",
            source: std::io::Error::other(format!("tier {} cannot load a page inside a signal handler; signal mode takes in-memory tiers only (lz4, zstd, raw), so drop the spill tiers or use thread mode", t.name())),
        });
    }
    install()?;
    let ptr = std::sync::Arc::as_ptr(shared).cast_mut();
    for (k, slot) in SLOTS_IN_USE.iter().enumerate() {
        if slot.shared.compare_exchange(std::ptr::null_mut(), ptr, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            ATTACHED.fetch_add(1, Ordering::SeqCst);
            return Ok(Attached(k));
        }
    }
    Err(RuntimeError::Os { op: "starting a runtime in signal mode", source: std::io::Error::other(format!("at most {SLOTS} runtimes in signal mode run in one process")) })
}

impl Drop for Attached {
    fn drop(&mut self) {
        let slot = &SLOTS_IN_USE[self.0];
        slot.shared.store(std::ptr::null_mut(), Ordering::SeqCst);
        ATTACHED.fetch_sub(1, Ordering::SeqCst);
        // A handler that loaded the pointer before it was cleared holds a use.
        while slot.users.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
    }
}

type SigactionFn = unsafe extern "C" fn(libc::c_int, *const libc::sigaction, *mut libc::sigaction) -> libc::c_int;

/// libc's `sigaction`, behind any a preloaded library puts in front of it
/// (the preload's own, which would hand farmem's calls back to farmem).
/// Found at install, as dlsym may not be called in a signal handler.
static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);

/// Calls libc's own `sigaction`.
///
/// # Safety
/// As `sigaction(2)`.
unsafe fn real_sigaction(sig: libc::c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> libc::c_int {
    match REAL_SIGACTION.load(Ordering::Acquire) {
        // SAFETY: as the caller promised.
        0 => unsafe { libc::sigaction(sig, act, old) },
        // SAFETY: the address dlsym returned for `sigaction`; as the caller promised.
        f => unsafe { std::mem::transmute::<usize, SigactionFn>(f)(sig, act, old) },
    }
}

fn install() -> Result<(), RuntimeError> {
    let _once = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if INSTALLED.load(Ordering::Acquire) {
        return Ok(());
    }
    let os = |source| RuntimeError::Os { op: "installing the SIGBUS handler of signal mode", source };
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"sigaction".as_ptr()) };
    REAL_SIGACTION.store(f as usize, Ordering::Release);
    // SAFETY: a zeroed sigaction is a valid argument; the kernel fills it.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: reads the current action only.
    if unsafe { real_sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
        return Err(os(std::io::Error::last_os_error()));
    }
    PREVIOUS.set(&old);
    // SAFETY: as above.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigbus as *const () as usize;
    // SA_NODEFER is left out: a second SIGBUS inside the handler would be a
    // bug of farmem's, and the default action then ends it plainly. Nor
    // SA_ONSTACK: the handler decodes a page into a buffer on its stack, and
    // the alternate stacks threads have (Rust's std gives each thread one
    // for its overflow message) are a few KiB, less than the signal frame
    // with AVX-512 state and the page together. It runs on the thread's stack.
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `act.sa_mask` is a valid sigset to clear.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: `on_sigbus` is an `extern "C"` SA_SIGINFO handler that stays
    // loaded as long as the process (the library is never unloaded).
    if unsafe { real_sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) } != 0 {
        return Err(os(std::io::Error::last_os_error()));
    }
    INSTALLED.store(true, Ordering::Release);
    Ok(())
}

/// The kernel's si_code for a fault userfaultfd answered with SIGBUS (and
/// for a truncated file mapping): `BUS_ADRERR`.
const BUS_ADRERR: i32 = 2;

thread_local! {
    /// Non-zero while this thread serves a fault in farmem's SIGBUS handler.
    static SERVING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether the calling thread is inside farmem's SIGBUS handler, serving a
/// fault: the locks it may wait on are the runtime's, never in farmem memory,
/// and the region table may be held for reading, so a hook must not pin then.
#[inline]
pub fn serving_fault() -> bool {
    SERVING.with(|d| d.get() > 0)
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is this thread's; read before anything here can change it.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as u64) };
    let served = code == BUS_ADRERR && {
        SERVING.with(|d| d.set(d.get() + 1));
        let served = serve_any(addr, was_write(ctx));
        SERVING.with(|d| d.set(d.get() - 1));
        served
    };
    // SAFETY: as above; restored so the interrupted code sees its own errno.
    unsafe { *libc::__errno_location() = errno };
    if !served {
        chain(sig, info, ctx);
    }
}

/// Whether the faulting access was a write (x86-64 page-fault error code, bit 1).
fn was_write(ctx: *mut libc::c_void) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
        let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
        uc.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Unknown: a zero-filled page is installed writable.
        let _ = ctx;
        true
    }
}

/// Hands a SIGBUS that is not farmem's to the action installed before farmem's.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let (handler, flags) = PREVIOUS.get();
    match handler {
        h if h != libc::SIG_DFL && h != libc::SIG_IGN => {
            if flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the program installed this as an SA_SIGINFO handler.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: the program installed this as a plain handler.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
        }
        _ => {
            // The default action: put it back and return, so the access runs
            // again, faults again and ends the process with SIGBUS, as it
            // would have without farmem (a fault's SIGBUS cannot be ignored).
            // SAFETY: a zeroed sigaction with SIG_DFL is valid.
            let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            dfl.sa_sigaction = libc::SIG_DFL;
            // SAFETY: sigaction is async-signal-safe.
            unsafe { real_sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut()) };
        }
    }
}

/// Serves a fault at `addr` if it falls in a region of a runtime in signal mode.
fn serve_any(addr: u64, write: bool) -> bool {
    for slot in &SLOTS_IN_USE {
        // Empty slots cost one load, not a write to a shared line.
        if slot.shared.load(Ordering::Acquire).is_null() {
            continue;
        }
        slot.users.fetch_add(1, Ordering::SeqCst);
        let p = slot.shared.load(Ordering::SeqCst);
        // SAFETY: a runtime clears its slot and then waits until no handler
        // uses it before its `Shared` can go; this use was counted first.
        let served = !p.is_null() && serve(unsafe { &*p }, addr, write);
        slot.users.fetch_sub(1, Ordering::SeqCst);
        if served {
            return true;
        }
    }
    false
}

/// Serves the fault if `addr` is in one of `shared`'s regions. True when the
/// access may run again: the page is in, or is being brought in by another
/// thread, or the evictor holds it for a moment (the access then faults again).
fn serve(shared: &Shared, addr: u64, write: bool) -> bool {
    // SAFETY: getpid is async-signal-safe. A forked child's runtime is inert.
    if unsafe { libc::getpid() } as u32 != shared.owner_pid {
        return false;
    }
    let t0 = Instant::now();
    let addr = addr & !(PAGE_SIZE as u64 - 1);
    // As a handler thread's fault: after the events read before it, and
    // before any event read after it.
    let _turn = shared.turns.after_events();
    let outcome = shared.regions.with(addr, |region| serve_page(shared, region, addr, write));
    match outcome {
        None => false,
        Some(Outcome::Poisoned) => false,
        Some(Outcome::Retry) => true,
        Some(Outcome::Done { reclaim }) => {
            let ns = t0.elapsed().as_nanos() as u64;
            let c = &shared.counters;
            c.fault_latency.record(ns);
            c.stall_ns.fetch_add(ns, Ordering::Relaxed);
            c.faults_in_thread.fetch_add(1, Ordering::Relaxed);
            if reclaim {
                c.reclaim_stall_ns.fetch_add(ns, Ordering::Relaxed);
            }
            true
        }
    }
}

enum Outcome {
    /// The page is in; `reclaim`: it came back from a tier or staging.
    Done { reclaim: bool },
    /// Not now (another thread holds the page, or an event is pending): run
    /// the access again.
    Retry,
    /// The page's tier lost it: the SIGBUS is the program's.
    Poisoned,
}

fn serve_page(shared: &Shared, region: &Region, addr: u64, write: bool) -> Outcome {
    let i = ((addr - region.start()) / PAGE_SIZE as u64) as usize;
    loop {
        let state = region.states.get(i);
        match state {
            State::Resident => {
                fault::throttle(shared);
                return zero_fill(shared, region, i, write);
            }
            State::Dropping { .. } => {
                region.states.transition(i, state, State::Resident);
            }
            State::Staged { slot } => {
                if !region.states.transition(i, state, State::Restoring { slot }) {
                    continue;
                }
                return match fault::restore_staged(shared, region, i, slot, true, false) {
                    Ok(()) => Outcome::Done { reclaim: true },
                    Err(_) => Outcome::Retry,
                };
            }
            State::Evicted { tier, handle } => {
                if !region.states.transition(i, state, State::Faulting { tier, handle }) {
                    continue;
                }
                fault::throttle(shared);
                return load(shared, region, i, tier, handle);
            }
            State::Poisoned => return Outcome::Poisoned,
            // The evictor is moving it out: let it run.
            State::Claimed | State::ClaimedDropped { .. } => {
                // SAFETY: sched_yield is async-signal-safe.
                unsafe { libc::sched_yield() };
                return Outcome::Retry;
            }
            State::Faulting { .. } | State::Filling | State::Restoring { .. } => {
                shared.counters.faults_raced.fetch_add(1, Ordering::Relaxed);
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                return Outcome::Retry;
            }
        }
    }
}

/// Tier copies of pages a SIGBUS handler brought back, freed later by a
/// handler thread: freeing can take a tier's lock, grow a free list or cost
/// a TLB shootdown, none of which belongs in the faulting thread.
pub(crate) struct Removals {
    queue: std::sync::Mutex<RemovalQueue>,
}

struct RemovalQueue {
    len: usize,
    entries: [(u8, u64); REMOVALS],
}

/// Copies queued at most; past half of it the handler threads are kicked.
const REMOVALS: usize = 4096;

impl Removals {
    /// An empty queue (its room is allocated here, never on the fault path).
    pub(crate) fn new() -> Self {
        Removals { queue: std::sync::Mutex::new(RemovalQueue { len: 0, entries: [(0, 0); REMOVALS] }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RemovalQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a copy; waits for room if the handler threads fell behind.
    /// The lock is held only here and in `drain`, by no thread that can be
    /// interrupted by farmem's SIGBUS while holding it.
    fn push(&self, shared: &Shared, tier: u8, handle: u64) {
        loop {
            let mut q = self.lock();
            if q.len < REMOVALS {
                let n = q.len;
                q.entries[n] = (tier, handle);
                q.len += 1;
                if q.len == REMOVALS / 2 {
                    drop(q);
                    // An eventfd write: async-signal-safe.
                    shared.requests.kick();
                }
                return;
            }
            drop(q);
            shared.requests.kick();
            // SAFETY: sched_yield is async-signal-safe.
            unsafe { libc::sched_yield() };
        }
    }

    /// Frees every queued copy (a handler thread calls it).
    pub(crate) fn drain(&self, shared: &Shared) {
        let mut batch = [(0u8, 0u64); 256];
        loop {
            let n = {
                let mut q = self.lock();
                let n = q.len.min(batch.len());
                let from = q.len - n;
                batch[..n].copy_from_slice(&q.entries[from..q.len]);
                q.len = from;
                n
            };
            if n == 0 {
                return;
            }
            for &(tier, handle) in &batch[..n] {
                shared.tiers[tier as usize].remove(Handle::new(handle));
            }
        }
    }
}

fn load(shared: &Shared, region: &Region, i: usize, tier: u8, handle: u64) -> Outcome {
    let mut buf = AlignedPage([0; PAGE_SIZE]);
    let t = &shared.tiers[tier as usize];
    if t.load(Handle::new(handle), &mut buf.0).is_err() {
        // Poisoned, the next access finds the poison marker and its SIGBUS
        // (BUS_MCEERR_AR) goes to the program, as in thread mode; not
        // poisoned yet (an event is pending), it faults here again.
        if fault::poison(shared, region, i, tier, handle) {
            shared.removals.push(shared, tier, handle);
        }
        return Outcome::Retry;
    }
    match fault::install_loaded(shared, region, i, tier, handle, &buf, false) {
        Err(_) => Outcome::Retry,
        Ok(()) => {
            shared.removals.push(shared, tier, handle);
            fault::note_tier_fault(shared, region, i, tier);
            if tier != shared.sample_tier {
                read_ahead(shared, region, i, tier, &mut buf);
            }
            Outcome::Done { reclaim: true }
        }
    }
}

/// After a fault on page `i` served from `tier`: brings back the pages the
/// readahead window gives, those after `i` still in that tier, passing over
/// pages in RAM and stopping at any other state (as the handler threads'
/// prefetch does). A page that cannot be read or installed stays in its
/// tier, for a fault of its own.
fn read_ahead(shared: &Shared, region: &Region, i: usize, tier: u8, buf: &mut AlignedPage) {
    let Some((stream, window)) = shared.turns.try_readahead().map(|mut r| r.on_fault(region.start() as usize, i)) else { return };
    if window == 0 {
        return;
    }
    let mut end = (i + 1 + window.min(crate::MAX_PREFETCH)).min(region.pages());
    for j in i + 1..end {
        let state = region.states.get(j);
        let handle = match state {
            State::Resident => continue,
            State::Evicted { tier: t, handle } if t == tier && region.states.transition(j, state, State::Faulting { tier, handle }) => handle,
            _ => {
                end = j;
                break;
            }
        };
        let t = &shared.tiers[tier as usize];
        if t.load(Handle::new(handle), &mut buf.0).is_err() {
            region.states.transition(j, State::Faulting { tier, handle }, State::Evicted { tier, handle });
            end = j;
            break;
        }
        if fault::install_loaded(shared, region, j, tier, handle, buf, false).is_err() {
            end = j;
            break;
        }
        shared.removals.push(shared, tier, handle);
        shared.counters.pages_prefetched.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(mut r) = shared.turns.try_readahead() {
        r.ran_to(stream, end);
    }
}

fn zero_fill(shared: &Shared, region: &Region, i: usize, write: bool) -> Outcome {
    if !region.states.transition(i, State::Resident, State::Filling) {
        return Outcome::Retry;
    }
    let dst = region.page_addr(i);
    let mut suspect = false;
    // Checked under the install gate, as in the handler threads' zero-fill.
    let r = fault::gated(shared, dst, PAGE_SIZE as u64, false, || {
        suspect = region.sums.as_ref().is_some_and(|s| s.zero_fill_suspect(i, dst));
        if write {
            // SAFETY: the zero page is static, page-aligned and never written.
            unsafe { shared.uffd.copy(dst, fault::zeros(), PAGE_SIZE as u64, false) }
        } else {
            shared.uffd.zeropage(dst, PAGE_SIZE as u64)
        }
    });
    let filled = match r {
        Ok(()) => true,
        // Present already: a thread got there first.
        Err(p) if p.error.raw_os_error() == Some(libc::EEXIST) => false,
        // EAGAIN (an event is pending) or ENOENT (the range just moved or
        // went): the access runs again against what the kernel has then.
        Err(_) => {
            region.states.transition(i, State::Filling, State::Resident);
            return Outcome::Retry;
        }
    };
    if let Some(sums) = &region.sums {
        if filled {
            sums.confirm_zero_fill(i, dst, suspect);
            sums.filled(i);
        }
    }
    region.ages.set_seen(i, shared.tick.load(Ordering::Relaxed));
    region.incompressible.clear(i);
    region.states.transition(i, State::Filling, State::Resident);
    if !filled {
        return Outcome::Retry;
    }
    shared.counters.faults_zero_filled.fetch_add(1, Ordering::Relaxed);
    shared.counters.pages_zero_filled.fetch_add(1, Ordering::Relaxed);
    shared.resident_est.fetch_add(1, Ordering::Relaxed);
    Outcome::Done { reclaim: false }
}
