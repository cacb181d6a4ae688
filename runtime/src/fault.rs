//! The fault handlers: the one place pages come back into the program's memory.
//!
//! There is one handler thread per CPU the process may run on, each pinned to
//! its CPU, all reading the one userfaultfd. When a thread faults, the kernel
//! wakes every handler; the one on the faulting thread's CPU runs as soon as
//! that thread blocks, with no idle CPU to wake (on a VM that wake-up costs
//! several times the kernel's own swap-in), and serves the fault.
//!
//! The messages come in the kernel's order, and [`Turns`] keeps that order
//! where it matters:
//! - a handler reads under `read`, and keeps it until the events among what it
//!   read (REMOVE, UNMAP, REMAP) are applied, so no handler reads a later
//!   message before an earlier event is applied;
//! - faults are served under `order` shared, so several handlers serve
//!   faults at once; events and the runtime's requests (put a staged page
//!   back, unregister a region, bring everything back before a fork) take it
//!   exclusive, after every fault read before them is served.
//!
//! The kernel zaps a dropped range once its event is read, not once it is
//! applied, so no install may begin between the two: the [`InstallGate`]
//! keeps that (see the `gate` module).
//!
//! So a page the program dropped is never brought back. Within faults the
//! page states order the handlers: a handler claims a page by compare-and-swap
//! (`Evicted` → `Faulting`, `Staged` → `Restoring`, `Resident` → `Filling`),
//! and a handler that finds a page another one holds retries the fault once
//! that one is done; so a page is never installed twice.
//!
//! Nothing here allocates from the program's heap on the fault path, and nothing
//! touches registered memory: the page buffer is on the handler's own heap
//! (made at start) and the zero buffer is static.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use farmem_tiers::{Handle, Page};

use crate::gate::InstallGate;
use crate::pagestate::State;
use crate::readahead::Readahead;
use crate::region::Region;
use crate::uffd::{Event, Partial};
use crate::{Shared, MAX_PREFETCH, PAGE_SIZE};

/// A page-aligned page on the stack, as UFFDIO_COPY wants its source.
#[repr(C, align(4096))]
pub(crate) struct AlignedPage(pub Page);

/// The most pages a zero-fill fault fills before it wakes the faulting
/// thread (the cap on `zero_fill_batch`).
pub(crate) const MAX_ZERO_BATCH: usize = 16;
/// The most pages one zero-fill fault fills for a program growing its heap
/// page after page (the `grow` streams of [`Turns`]).
const MAX_GROW_BATCH: usize = 64;

#[repr(C, align(4096))]
struct Zeros([u8; PAGE_SIZE * MAX_GROW_BATCH]);
static ZEROS: Zeros = Zeros([0; PAGE_SIZE * MAX_GROW_BATCH]);

/// What a caller asks of the fault handlers.
pub(crate) enum Request {
    /// Copy a staged page back into its region (a tier refused it).
    Restore { region: Arc<Region>, page: usize },
    /// Bring every page of the region back, unregister it, and report.
    Unregister { region: Arc<Region>, done: Arc<Completion> },
    /// Bring every evicted page of every region back (before a fork).
    RestoreAll { done: Arc<Completion> },
    /// Copy the listed pages back into RAM if they are still held by tier
    /// `tier` (the sampler returns pages nobody used while they were out).
    PutBack { region: Arc<Region>, pages: Vec<usize>, tier: u8 },
}

/// A one-shot result a caller waits on.
#[derive(Default)]
pub(crate) struct Completion {
    result: Mutex<Option<io::Result<()>>>,
    cv: Condvar,
}

impl Completion {
    pub fn finish(&self, r: io::Result<()>) {
        *self.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        self.cv.notify_all();
    }

    pub fn wait(&self) -> io::Result<()> {
        let mut g = self.result.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The queue of requests, with the eventfd that wakes the fault handlers.
pub(crate) struct Requests {
    queue: Mutex<VecDeque<Request>>,
    eventfd: std::os::fd::OwnedFd,
}

impl Requests {
    pub fn new() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd(2) takes an initial value and flags, returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let eventfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Requests { queue: Mutex::new(VecDeque::with_capacity(64)), eventfd })
    }

    pub fn push(&self, r: Request) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push_back(r);
        self.kick();
    }

    /// Wakes the fault handlers that sleep in poll.
    pub fn kick(&self) {
        use std::os::fd::AsRawFd;
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn pop(&self) -> Option<Request> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    fn drain_eventfd(&self) {
        use std::os::fd::AsRawFd;
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    fn raw_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.eventfd.as_raw_fd()
    }
}

/// How a fault came out.
enum Served {
    Done,
    /// Not now: the kernel said EAGAIN (an event is pending), the evictor
    /// holds the page, or another handler is installing it. Retried after
    /// the next messages are read.
    Again,
}

/// How the fault handlers take turns (see the module doc), and what they
/// share beyond the page states.
pub(crate) struct Turns {
    /// Held while reading the userfaultfd, and on until the events read are applied.
    read: Mutex<()>,
    /// Shared while serving faults; exclusive for events and requests.
    order: RwLock<()>,
    /// Drop events (REMOVE) applied so far: numbers each `Dropping` state.
    drops: AtomicU64,
    /// Keeps installs out of ranges whose events are read but not applied.
    pub(crate) gate: InstallGate,
    /// Who faults in order, and how far ahead to bring pages back for them.
    /// Shared: a reader's faults reach whichever handler runs on its CPU,
    /// and a thread moves between CPUs.
    readahead: Mutex<Readahead>,
    /// Who first-touches new memory in order (a heap growing page after
    /// page), and how far ahead to zero-fill for them.
    grow: Mutex<Readahead>,
    /// Handlers running, and of those, handlers stepped back (see
    /// [`STEP_BACK_AFTER`]): at least one handler always waits on the
    /// userfaultfd.
    handlers: AtomicUsize,
    stepped_back: AtomicUsize,
}

/// A handler woken for this many messages in a row that another handler
/// read first steps back: it stops waiting on the userfaultfd for
/// [`STEP_BACK_MS`], unless it is the last one waiting. Every handler wakes
/// for every fault, and one whose CPU the faulting threads do not run on only
/// takes CPU from them (sort, one thread beside the reclaim thread on 2 CPUs,
/// ran 18% longer with a second handler waking for each of its faults).
const STEP_BACK_AFTER: u32 = 16;
/// How long a handler that stepped back waits (for requests only) before it
/// waits on the userfaultfd again, in milliseconds.
const STEP_BACK_MS: i32 = 20;

impl Turns {
    /// Turns for handlers that read ahead at most `readahead` pages.
    pub fn new(readahead: usize) -> Self {
        Turns {
            read: Mutex::new(()),
            order: RwLock::new(()),
            drops: AtomicU64::new(0),
            gate: InstallGate::new(),
            readahead: Mutex::new(Readahead::new(readahead)),
            grow: Mutex::new(Readahead::new(MAX_GROW_BATCH)),
            handlers: AtomicUsize::new(1),
            stepped_back: AtomicUsize::new(0),
        }
    }

    /// Records how many handlers run.
    pub fn set_handlers(&self, n: usize) {
        self.handlers.store(n.max(1), Ordering::Relaxed);
    }

    /// Steps a handler back, unless every other one has already.
    fn step_back(&self) -> bool {
        let n = self.handlers.load(Ordering::Relaxed);
        self.stepped_back.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| (b + 1 < n).then_some(b + 1)).is_ok()
    }

    fn step_in(&self) {
        self.stepped_back.fetch_sub(1, Ordering::AcqRel);
    }

    fn readahead(&self) -> std::sync::MutexGuard<'_, Readahead> {
        self.readahead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The readahead streams if no one holds them now: a SIGBUS handler
    /// (signal mode) must not wait on a lock the code it interrupted may hold.
    pub(crate) fn try_readahead(&self) -> Option<std::sync::MutexGuard<'_, Readahead>> {
        match self.readahead.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn grow(&self) -> std::sync::MutexGuard<'_, Readahead> {
        self.grow.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::MutexGuard<'_, ()> {
        self.read.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The turn of a fault that reached no handler thread (signal mode):
    /// taken after every event a handler has read is applied, as a handler
    /// thread takes it for a fault it read. The kernel lets the thread behind
    /// an event (madvise, mremap, munmap) go on once the event is read, not
    /// once it is applied; without this its next fault could be served
    /// before its own drop or move, and zero-fill a page the drop is still
    /// to be applied to, or miss a region that has moved.
    pub(crate) fn after_events(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        let read = self.read();
        let turn = self.shared();
        drop(read);
        turn
    }

    fn shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.order.read().unwrap_or_else(|e| e.into_inner())
    }

    fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.order.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads what the kernel has pending, through the install gate: the ranges
/// the events read cover are published before any install may begin again.
/// The caller holds `Turns::read`, and clears the gate once it has applied
/// the events. `readable`: poll(2) has just said a message is pending, and
/// the kernel is not asked again (a poll costs as much as the read).
fn read_gated(shared: &Shared, out: &mut [Event], readable: bool) -> io::Result<usize> {
    // A handler looping over deferred faults, or back from serving, reads
    // only when the kernel has something: a read holds installs off.
    if !readable && !shared.uffd.pending() {
        return Ok(0);
    }
    let gate = &shared.turns.gate;
    gate.begin_read();
    let r = shared.uffd.read_events(out);
    if let Ok(n) = r {
        for ev in &out[..n] {
            match *ev {
                Event::Remove { start, end } | Event::Unmap { start, end } => gate.publish(start, end),
                Event::Remap { from, to, len } => {
                    gate.publish(from, from + len);
                    gate.publish(to, to + len);
                }
                _ => {}
            }
        }
    }
    gate.end_read();
    r
}

/// Runs `install` (one ioctl into `[dst, dst + len)`, which must not wake
/// anyone) through the install gate; if an event read but not yet applied
/// covers the range, it does not run and the result is EAGAIN, as for an
/// event the kernel has pending. `wake`: then wakes the threads waiting on
/// what went in, as the ioctl would have.
pub(crate) fn gated(shared: &Shared, dst: u64, len: u64, wake: bool, install: impl FnOnce() -> Result<(), Partial>) -> Result<(), Partial> {
    let r = {
        let pass = shared.turns.gate.enter();
        if pass.covered(dst, len) {
            return Err(Partial { done: 0, error: io::Error::from_raw_os_error(libc::EAGAIN) });
        }
        install()
    };
    // After the pass: the thread woken often preempts this one on its CPU
    // at once, and a pass held meanwhile keeps every reader, and so every
    // fault, waiting until this thread runs again.
    let done = match &r {
        Ok(()) => len,
        Err(p) => p.done,
    };
    if wake && done > 0 {
        let _ = shared.uffd.wake(dst, done);
    }
    r
}

/// One fault handler's loop and its own state.
pub(crate) struct FaultHandler {
    shared: Arc<Shared>,
    deferred: Vec<(u64, bool)>,
    /// Tier copies of pages already back in RAM, freed when no message is
    /// pending: freeing can cost a TLB shootdown, which must not delay the
    /// next fault.
    to_remove: Vec<(u8, u64)>,
    buf: Box<AlignedPage>,
    /// The fault just served brought a page back from a tier or staging: its
    /// wait is stall caused by reclaim (not a first touch).
    reclaim_fault: bool,
    /// Buffers for prefetched pages, made on the first prefetch.
    prefetch_bufs: Vec<AlignedPage>,
}

/// The longest one fault waits for reclaim to catch up ([`FaultHandler::throttle`]):
/// a stuck reclaim slows the program, it never stops it.
const MAX_THROTTLE: Duration = Duration::from_millis(2);

/// Copies a `Restoring` page back from staging slot `slot` (`wake`: its
/// faulting thread waits in the kernel). On an error but EEXIST the page goes
/// back to `Staged`. `fault` says a thread touched the page: a page the
/// evictor had just taken is in use, and its stamp says so, or the next
/// reclaim would pick it again at once (it kept the age that got it picked).
pub(crate) fn restore_staged(shared: &Shared, region: &Region, i: usize, slot: u64, fault: bool, wake: bool) -> Result<(), Partial> {
    let dst = region.page_addr(i);
    let src = shared.staging.slot_addr(slot);
    if let Some(sums) = &region.sums {
        // SAFETY: as for the copy below: the slot holds the page, unchanged.
        sums.check(i, unsafe { std::slice::from_raw_parts(src, PAGE_SIZE) }, dst, "staging");
    }
    // SAFETY: staging slot `slot` holds the page and stays mapped and
    // unchanged while the page is `Restoring` (the evictor waits).
    match gated(shared, dst, PAGE_SIZE as u64, wake, || unsafe { shared.uffd.copy(dst, src, PAGE_SIZE as u64, false) }) {
        Ok(()) => {}
        Err(p) if p.error.raw_os_error() == Some(libc::EEXIST) => unexpected(shared, "copy from staging", dst, &p),
        Err(p) => {
            // EAGAIN: an event is pending. Anything else leaves the page
            // where it is too: see `FaultHandler::not_installed`.
            region.states.transition(i, State::Restoring { slot }, State::Staged { slot });
            return Err(p);
        }
    }
    if let Some(sums) = &region.sums {
        sums.release(i);
    }
    region.states.transition(i, State::Restoring { slot }, State::Resident);
    shared.staging.release(slot);
    if fault {
        region.ages.set_seen(i, shared.tick.load(Ordering::Relaxed));
        shared.counters.faults_from_staging.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Copies the page a tier gave back (`buf`) into a `Faulting` page and marks
/// it resident (`wake`: its faulting thread waits in the kernel). On an error
/// but EEXIST the page goes back to `Evicted`, its copy kept. The caller
/// frees the tier's copy.
pub(crate) fn install_loaded(shared: &Shared, region: &Region, i: usize, tier: u8, handle: u64, buf: &AlignedPage, wake: bool) -> Result<(), Partial> {
    let dst = region.page_addr(i);
    let faulting = State::Faulting { tier, handle };
    if let Some(sums) = &region.sums {
        sums.check(i, &buf.0, dst, shared.tiers[tier as usize].name());
    }
    // SAFETY: `buf` is a page-aligned page, not written during the call.
    match gated(shared, dst, PAGE_SIZE as u64, wake, || unsafe { shared.uffd.copy(dst, buf.0.as_ptr(), PAGE_SIZE as u64, false) }) {
        Ok(()) => {}
        Err(p) if p.error.raw_os_error() == Some(libc::EEXIST) => unexpected(shared, "copy from tier", dst, &p),
        Err(p) => {
            region.states.transition(i, faulting, State::Evicted { tier, handle });
            return Err(p);
        }
    }
    if let Some(sums) = &region.sums {
        sums.release(i);
    }
    region.states.transition(i, faulting, State::Resident);
    region.evicted.fetch_sub(1, Ordering::Relaxed);
    // A page back from the sampler's tier was counted resident already.
    if tier != shared.sample_tier {
        shared.resident_est.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Poisons a `Faulting` page its tier could not return (every access then
/// raises SIGBUS); false if an event is pending (EAGAIN), and the page is
/// `Evicted` again. When true, the caller frees the tier's entry: a SIGBUS
/// handler must not (a tier's remove may allocate or take a lock), and
/// queues it instead.
#[must_use]
pub(crate) fn poison(shared: &Shared, region: &Region, i: usize, tier: u8, handle: u64) -> bool {
    let dst = region.page_addr(i);
    let faulting = State::Faulting { tier, handle };
    match gated(shared, dst, PAGE_SIZE as u64, false, || shared.uffd.poison(dst, PAGE_SIZE as u64)) {
        Ok(()) => {}
        Err(p) if p.error.raw_os_error() == Some(libc::EAGAIN) => {
            region.states.transition(i, faulting, State::Evicted { tier, handle });
            return false;
        }
        Err(p) => unexpected(shared, "poison", dst, &p),
    }
    if let Some(sums) = &region.sums {
        sums.release(i);
    }
    region.states.transition(i, faulting, State::Poisoned);
    region.evicted.fetch_sub(1, Ordering::Relaxed);
    shared.counters.pages_poisoned.fetch_add(1, Ordering::Relaxed);
    true
}

/// Counts a thread's fault served from tier `tier` and stamps the page seen.
pub(crate) fn note_tier_fault(shared: &Shared, region: &Region, i: usize, tier: u8) {
    let now = shared.tick.load(Ordering::Relaxed);
    let (_, out_age) = region.ages.ages(i, now);
    region.ages.set_seen(i, now);
    let c = &shared.counters;
    if tier == shared.sample_tier {
        c.sample_faults.fetch_add(1, Ordering::Relaxed);
    } else {
        c.faults_from_tier.fetch_add(1, Ordering::Relaxed);
        c.refaults_by_generation[crate::policy::ages::generation(out_age)].fetch_add(1, Ordering::Relaxed);
    }
}

/// A copy into a page farmem holds found it present (EEXIST), or another
/// ioctl failed unexpectedly: a bug, or the range is gone. The waiter is
/// woken so it retries against the kernel's view.
fn unexpected(shared: &Shared, what: &str, addr: u64, p: &Partial) {
    tracing::warn!("{what} at {addr:#x} failed after {} bytes: {}", p.done, p.error);
    let _ = shared.uffd.wake(addr, PAGE_SIZE as u64);
}

/// The static zero pages' address, for a zero-fill copy.
pub(crate) fn zeros() -> *const u8 {
    ZEROS.0.as_ptr()
}

/// The throttle of [`FaultHandler::throttle`], for any thread serving a fault.
pub(crate) fn throttle(shared: &Shared) {
    let limit = shared.limit_pages.load(Ordering::Relaxed) as i64;
    if limit == 0 {
        return;
    }
    let est = shared.resident_est.load(Ordering::Relaxed);
    // Reclaim found nothing more it can take: waiting would not help it
    // catch up, and the policy retries on its own (see `policy::guard`).
    if est <= limit || shared.reclaim_short.load(Ordering::Relaxed) {
        return;
    }
    shared.policy_bell.ask_reclaim();
    let high = throttle_from(limit);
    if est <= high {
        return;
    }
    let t0 = Instant::now();
    let mut est = est;
    loop {
        let us = if est > limit + limit / 2 {
            1000
        } else if est > limit + limit / 5 {
            200
        } else {
            50
        };
        std::thread::sleep(Duration::from_micros(us));
        est = shared.resident_est.load(Ordering::Relaxed);
        if est <= high || shared.reclaim_short.load(Ordering::Relaxed) || t0.elapsed() >= MAX_THROTTLE {
            break;
        }
    }
    shared.counters.throttled_faults.fetch_add(1, Ordering::Relaxed);
}

/// Where the throttle's waits begin, in pages, for a limit of `limit` pages:
/// 3% over, so that a heap growing at full speed settles within 5% of it.
fn throttle_from(limit: i64) -> i64 {
    limit + limit / 32
}

/// Tier copies freed at once when a handler is busy for a long time.
const REMOVE_BATCH: usize = 512;


impl FaultHandler {
    pub fn new(shared: Arc<Shared>) -> Self {
        FaultHandler {
            deferred: Vec::with_capacity(1024),
            to_remove: Vec::with_capacity(REMOVE_BATCH),
            buf: Box::new(AlignedPage([0; PAGE_SIZE])),
            reclaim_fault: false,
            prefetch_bufs: Vec::new(),
            shared,
        }
    }

    fn remove_later(&mut self, tier: u8, handle: u64) {
        if self.to_remove.len() == REMOVE_BATCH {
            self.flush_removes();
        }
        self.to_remove.push((tier, handle));
    }

    fn flush_removes(&mut self) {
        self.shared.removals.drain(&self.shared);
        for (tier, handle) in self.to_remove.drain(..) {
            self.shared.tiers[tier as usize].remove(Handle::new(handle));
        }
    }

    /// Runs until the runtime stops.
    pub fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let turns = &shared.turns;
        let spin = shared.config.spin;
        let mut events = [Event::Unknown(0); 64];
        let mut idle_since = Instant::now();
        // Woken for a message, and how many such wake-ups in a row found it
        // read by another handler.
        let (mut woken_for_message, mut missed) = (false, 0u32);
        while !shared.stopping.load(Ordering::Acquire) {
            let read = turns.read();
            if let Some(r) = shared.requests.pop() {
                let _exclusive = turns.exclusive();
                self.flush_removes();
                self.serve_request(r);
                while let Some(r) = shared.requests.pop() {
                    self.serve_request(r);
                }
                continue;
            }
            let woken = std::mem::take(&mut woken_for_message);
            let n = match read_gated(&shared, &mut events, woken) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!("reading userfaultfd failed: {e}; the fault handler stops");
                    break;
                }
            };
            if woken {
                missed = if n > 0 { 0 } else { missed + 1 };
            }
            if n > 0 {
                let t0 = Instant::now();
                let batch = &events[..n];
                if batch.iter().all(|ev| matches!(ev, Event::Fault { .. })) {
                    // Faults only: served beside the other handlers. `order`
                    // is taken before `read` is let go, so an event read next
                    // is applied after these faults, which came before it;
                    // the kernel acts on it once it is read, and the gate keeps
                    // these installs out of what it covers meanwhile.
                    let _shared = turns.shared();
                    drop(read);
                    for ev in batch {
                        self.serve_event(*ev, t0);
                    }
                    self.retry_deferred();
                } else {
                    let exclusive = turns.exclusive();
                    for ev in batch {
                        self.serve_event(*ev, t0);
                    }
                    // Applied: the faults among them, and the deferred ones,
                    // go in now (the dropped pages as zeros).
                    turns.gate.clear();
                    self.retry_deferred();
                    drop(exclusive);
                    drop(read);
                }
                idle_since = Instant::now();
                continue;
            }
            drop(read);
            // What signal mode's faulting threads left to free.
            self.shared.removals.drain(&self.shared);
            if !self.to_remove.is_empty() {
                self.flush_removes();
                continue;
            }
            if !self.deferred.is_empty() {
                // A claimed page is released within microseconds, and a pending
                // event is read at the top of the loop: keep going, politely.
                {
                    let _shared = turns.shared();
                    self.retry_deferred();
                }
                if !self.deferred.is_empty() {
                    std::thread::yield_now();
                }
                continue;
            }
            if idle_since.elapsed() < spin && self.evictions_quiet() {
                std::hint::spin_loop();
                continue;
            }
            if missed >= STEP_BACK_AFTER && turns.step_back() {
                missed = 0;
                let woken = wait_readable(shared.requests.raw_fd(), STEP_BACK_MS);
                turns.step_in();
                if woken && !shared.stopping.load(Ordering::Acquire) {
                    shared.requests.drain_eventfd();
                }
                continue;
            }
            // No timeout: arming a timer costs a VM exit on every sleep.
            match shared.uffd.poll(shared.requests.raw_fd(), -1) {
                Ok((ready, woken)) => {
                    woken_for_message = ready;
                    // Drained before the queue is looked at (top of the loop),
                    // so a request pushed after that look kicks again.
                    if woken && !shared.stopping.load(Ordering::Acquire) {
                        shared.requests.drain_eventfd();
                    }
                }
                Err(e) => {
                    tracing::error!("poll on userfaultfd failed: {e}; the fault handler stops");
                    break;
                }
            }
        }
        self.flush_removes();
    }

    /// Whether no eviction has run for a millisecond: only then is spinning free.
    fn evictions_quiet(&self) -> bool {
        let since = self.shared.evict_quiet_since_us.load(Ordering::Relaxed);
        since != 0 && self.shared.now_us().saturating_sub(since) > 1000
    }

    /// Reads and serves whatever the kernel has pending, once. Used while a
    /// request waits on EAGAIN: the event that causes it must be read first.
    fn pump(&mut self) {
        let mut events = [Event::Unknown(0); 16];
        // Called because an install met EAGAIN: an event is pending.
        if let Ok(n) = read_gated(&self.shared, &mut events, true) {
            let t0 = Instant::now();
            for ev in &events[..n] {
                self.serve_event(*ev, t0);
            }
        }
        self.shared.turns.gate.clear();
        self.retry_deferred();
    }

    fn serve_event(&mut self, ev: Event, t0: Instant) {
        match ev {
            Event::Fault { addr, write, .. } => {
                let addr = addr & !(PAGE_SIZE as u64 - 1);
                self.reclaim_fault = false;
                if let Served::Again = self.serve_fault(addr, write) {
                    self.shared.counters.faults_deferred.fetch_add(1, Ordering::Relaxed);
                    self.deferred.push((addr, write));
                    return;
                }
                let ns = t0.elapsed().as_nanos() as u64;
                self.shared.counters.fault_latency.record(ns);
                self.shared.counters.stall_ns.fetch_add(ns, Ordering::Relaxed);
                if std::mem::take(&mut self.reclaim_fault) {
                    self.shared.counters.reclaim_stall_ns.fetch_add(ns, Ordering::Relaxed);
                }
            }
            Event::Remove { start, end } | Event::Unmap { start, end } => {
                let unmap = matches!(ev, Event::Unmap { .. });
                self.forget_range(start, end, unmap);
            }
            Event::Remap { from, to, len } => self.remap(from, to, len),
            Event::Fork { uffd } => {
                // Not asked for; close what the kernel gave so it does not leak.
                // SAFETY: the kernel installed this fd for us; nothing else owns it.
                unsafe { libc::close(uffd) };
            }
            Event::Unknown(t) => tracing::warn!("unknown userfaultfd message type {t:#x}"),
        }
    }

    fn retry_deferred(&mut self) {
        let mut pending = std::mem::take(&mut self.deferred);
        pending.retain(|&(addr, write)| matches!(self.serve_fault(addr, write), Served::Again));
        pending.append(&mut self.deferred);
        self.deferred = pending;
    }

    /// Serves one fault on the page at `addr`.
    fn serve_fault(&mut self, addr: u64, write: bool) -> Served {
        let shared = Arc::clone(&self.shared);
        let Some(region) = shared.regions.find(addr) else {
            // Not ours (a stale message for an unregistered range): whoever waits
            // retries the access and finds the page as the kernel has it now.
            let _ = shared.uffd.wake(addr, PAGE_SIZE as u64);
            return Served::Done;
        };
        let i = ((addr - region.start()) / PAGE_SIZE as u64) as usize;
        loop {
            let state = region.states.get(i);
            match state {
                State::Resident => {
                    self.throttle();
                    return self.zero_fill(&region, i, write);
                }
                // Dropped and now faulted for: it is out of the page tables.
                State::Dropping { .. } => {
                    region.states.transition(i, state, State::Resident);
                }
                State::Staged { slot } => {
                    if !region.states.transition(i, state, State::Restoring { slot }) {
                        continue;
                    }
                    return self.restore_staged(&region, i, slot, true);
                }
                State::Evicted { tier, handle } => {
                    if !region.states.transition(i, state, State::Faulting { tier, handle }) {
                        continue;
                    }
                    self.throttle();
                    return self.load_from_tier(&region, i, tier, handle, true);
                }
                State::Poisoned => {
                    // Dropped meanwhile (its event read, not yet applied): once
                    // applied, the page reads as zeros, not as poison.
                    if gated(&shared, addr, PAGE_SIZE as u64, false, || shared.uffd.poison(addr, PAGE_SIZE as u64)).is_err_and(|p| p.error.raw_os_error() == Some(libc::EAGAIN)) {
                        return Served::Again;
                    }
                    let _ = shared.uffd.wake(addr, PAGE_SIZE as u64);
                    return Served::Done;
                }
                // The evictor is moving this page out. It is brief, but the fault
                // thread never waits on the evictor (the evictor may itself need a
                // fault served): retry once more messages are read.
                State::Claimed | State::ClaimedDropped { .. } => return Served::Again,
                // Another handler is installing it: retried once the next
                // messages are read, when it is in and the retry only wakes
                // this fault's thread.
                State::Faulting { .. } | State::Filling | State::Restoring { .. } => {
                    shared.counters.faults_raced.fetch_add(1, Ordering::Relaxed);
                    return Served::Again;
                }
            }
        }
    }

    /// Before a fault that grows the resident set: past the limit, the policy
    /// thread is asked to reclaim at once; past 3% over, the fault waits,
    /// like cgroup memory.high, in steps (50 µs; past 20%: 200 µs; past 50%:
    /// 1 ms) until reclaim has brought the heap back under 3% over, for at
    /// most [`MAX_THROTTLE`]. One step was not enough: a program reading a
    /// file into its heap grew faster than 32 KiB each 50 µs (the zero-fill
    /// batch), and sqlite3's heap went 20% over its limit in its first
    /// seconds. The handler judges by the resident estimate the handlers keep
    /// themselves, so this holds even when the policy thread is starved. It
    /// sleeps on its own handler: the other handlers go on serving faults.
    fn throttle(&self) {
        throttle(&self.shared)
    }

    /// Copies a staged page back; on EAGAIN the page goes back to `Staged`.
    /// `fault` says a thread touched the page: a page the evictor had just
    /// taken is in use, and its stamp says so, or the next reclaim would pick
    /// it again at once (it kept the age that got it picked).
    fn restore_staged(&mut self, region: &Region, i: usize, slot: u64, fault: bool) -> Served {
        match restore_staged(&self.shared, region, i, slot, fault, true) {
            Ok(()) => {
                self.reclaim_fault |= fault;
                Served::Done
            }
            Err(p) => self.not_installed("copy from staging", region.page_addr(i), &p),
        }
    }

    /// Loads an evicted page from its tier and copies it in; poisons it if the
    /// tier cannot give it back.
    /// `fault` says whether a thread touched the page (rather than the runtime
    /// bringing it back on its own): only then is it a use, and a stall.
    fn load_from_tier(&mut self, region: &Region, i: usize, tier: u8, handle: u64, fault: bool) -> Served {
        let shared = Arc::clone(&self.shared);
        let dst = region.page_addr(i);
        let t = &shared.tiers[tier as usize];
        if let Err(e) = t.load(Handle::new(handle), &mut self.buf.0) {
            tracing::error!("tier {} could not return page {dst:#x}: {e}; the page is poisoned (SIGBUS on access)", t.name());
            if !poison(&shared, region, i, tier, handle) {
                return Served::Again;
            }
            t.remove(Handle::new(handle));
            return Served::Done;
        }
        if let Err(p) = install_loaded(&shared, region, i, tier, handle, &self.buf, true) {
            return self.not_installed("copy from tier", dst, &p);
        }
        self.remove_later(tier, handle);
        if fault {
            note_tier_fault(&shared, region, i, tier);
            self.reclaim_fault = true;
            if tier != shared.sample_tier {
                // A spill tier's pages demoted together lie together in its
                // file, so its prefetch does not wait for a reader in order.
                let (stream, window) = shared.turns.readahead().on_fault(region.start() as usize, i);
                let n = if tier != 0 { window.max(shared.config.prefetch) } else { window };
                if n > 0 {
                    let end = self.prefetch_after(region, i, tier, n);
                    shared.turns.readahead().ran_to(stream, end);
                }
            }
        } else {
            shared.counters.pages_put_back.fetch_add(1, Ordering::Relaxed);
        }
        Served::Done
    }

    /// After a fault on page `i` served from tier `tier`: brings back the
    /// pages of the next `n` that sit in that tier too, with all their reads
    /// in flight at once (a spill tier's prefetch, or readahead for a reader
    /// in order). Pages in RAM are passed over; any other state ends the run.
    /// Returns the page the run ended before. A page that cannot be read or
    /// installed stays where it is, in the tier: a later fault on it gets its
    /// own read (and its own SIGBUS if the tier really lost it).
    fn prefetch_after(&mut self, region: &Region, i: usize, tier: u8, n: usize) -> usize {
        let shared = Arc::clone(&self.shared);
        let n = n.min(MAX_PREFETCH);
        let mut end = (i + 1 + n).min(region.pages());
        let mut idx = Vec::with_capacity(end - i);
        let mut handles = Vec::with_capacity(end - i);
        for j in i + 1..end {
            match region.states.get(j) {
                State::Resident => {}
                s @ State::Evicted { tier: t, handle } if t == tier && region.states.transition(j, s, State::Faulting { tier, handle }) => {
                    idx.push(j);
                    handles.push(Handle::new(handle));
                }
                _ => {
                    end = j;
                    break;
                }
            }
        }
        if idx.is_empty() {
            return end;
        }
        if self.prefetch_bufs.len() < idx.len() {
            self.prefetch_bufs.resize_with(MAX_PREFETCH, || AlignedPage([0; PAGE_SIZE]));
        }
        let mut ok = vec![false; idx.len()];
        // SAFETY: `AlignedPage` is one `Page` with a larger alignment, so
        // `idx.len()` of them in a row (fewer than the vector holds) are that
        // many `Page`s; the vector is not touched while the slice lives.
        let pages = unsafe { std::slice::from_raw_parts_mut(self.prefetch_bufs.as_mut_ptr().cast::<Page>(), idx.len()) };
        shared.tiers[tier as usize].load_many(&handles, pages, &mut |k, r| ok[k] = r.is_ok());
        // Runs of pages next to each other, in the region and in the
        // buffers, go in with one copy each: a reader in order overtakes a
        // prefetch installed page by page, and each of its faults on a page
        // not yet in is one more message to read.
        let mut k = 0;
        while k < idx.len() {
            if !ok[k] {
                region.states.transition(idx[k], State::Faulting { tier, handle: handles[k].raw() }, State::Evicted { tier, handle: handles[k].raw() });
                k += 1;
                continue;
            }
            let mut run = 1;
            while k + run < idx.len() && ok[k + run] && idx[k + run] == idx[k] + run {
                run += 1;
            }
            if let Some(sums) = &region.sums {
                for r in k..k + run {
                    sums.check(idx[r], &self.prefetch_bufs[r].0, region.page_addr(idx[r]), shared.tiers[tier as usize].name());
                }
            }
            let (dst, src, len) = (region.page_addr(idx[k]), self.prefetch_bufs[k].0.as_ptr(), (run * PAGE_SIZE) as u64);
            // SAFETY: buffers k..k+run are page-aligned pages in a row owned by
            // this thread (a Vec of `AlignedPage`), not written during the call.
            let done = match gated(&shared, dst, len, true, || unsafe { shared.uffd.copy(dst, src, len, false) }) {
                Ok(()) => run,
                Err(p) => (p.done / PAGE_SIZE as u64) as usize,
            };
            for r in k..k + run {
                let (j, handle) = (idx[r], handles[r].raw());
                let faulting = State::Faulting { tier, handle };
                if r >= k + done {
                    region.states.transition(j, faulting, State::Evicted { tier, handle });
                    continue;
                }
                if let Some(sums) = &region.sums {
                    sums.release(j);
                }
                region.states.transition(j, faulting, State::Resident);
                region.evicted.fetch_sub(1, Ordering::Relaxed);
                self.remove_later(tier, handle);
                shared.resident_est.fetch_add(1, Ordering::Relaxed);
                shared.counters.pages_prefetched.fetch_add(1, Ordering::Relaxed);
            }
            k += run;
        }
        end
    }

    /// Serves a fault on a page farmem holds no copy of: zeros, for the page and
    /// for up to `zero_fill_batch - 1` following pages that are resident-state
    /// too, or, for a program whose first touches come page after page, for
    /// a window that doubles up to [`MAX_GROW_BATCH`] pages: each first touch
    /// costs the program a round trip to this thread, where the kernel fills
    /// a page in the faulting thread in well under a microsecond. The
    /// faulting thread is woken once the first `zero_fill_batch` pages are in.
    fn zero_fill(&mut self, region: &Region, i: usize, write: bool) -> Served {
        let shared = Arc::clone(&self.shared);
        if !region.states.transition(i, State::Resident, State::Filling) {
            return self.serve_fault(region.page_addr(i), write);
        }
        let head = shared.config.zero_fill_batch.clamp(1, MAX_ZERO_BATCH);
        let (stream, window) = shared.turns.grow().on_fault(region.start() as usize, i);
        // Where the throttle makes faults wait, growing ahead would only hand
        // reclaim more to do; short of it, reclaim is keeping up.
        let limit = shared.limit_pages.load(Ordering::Relaxed) as i64;
        let over = limit > 0 && shared.resident_est.load(Ordering::Relaxed) > throttle_from(limit);
        let want = if over { head } else { head.max(window + 1).min(MAX_GROW_BATCH) };
        let mut end = i + 1;
        while end < region.pages() && end - i < want && region.states.transition(end, State::Resident, State::Filling) {
            end += 1;
        }
        let mut suspect = false;
        if let Some(sums) = &region.sums {
            for k in i + 1..end {
                sums.check_no_copy(k, region.page_addr(k));
            }
        }
        let mut cur = i;
        let mut outcome = Served::Done;
        let mut filled = 0u64;
        while cur < end {
            let dst = region.page_addr(cur);
            // The faulting page and its first neighbours first, so that its
            // thread runs on while the rest of a growth window is filled.
            let stop = if cur < i + head { (i + head).min(end) } else { end };
            let len = ((stop - cur) * PAGE_SIZE) as u64;
            // Zeros are what a dropped page holds, but a fill the gate lets
            // through is also the one whose check below is sound: no drop
            // of the page can be read and not yet applied.
            let r = gated(&shared, dst, len, write, || {
                if let Some(sums) = region.sums.as_ref().filter(|_| (cur..stop).contains(&i)) {
                    suspect = sums.zero_fill_suspect(i, region.page_addr(i));
                }
                if write {
                    // SAFETY: ZEROS is static, page-aligned and never written.
                    unsafe { shared.uffd.copy(dst, ZEROS.0.as_ptr(), len, false) }
                } else {
                    // Wakes within the pass; rarer than copies, and short.
                    shared.uffd.zeropage(dst, len)
                }
            });
            let mark = |from: usize, to: usize| {
                if let Some(sums) = &region.sums {
                    if (from..to).contains(&i) {
                        sums.confirm_zero_fill(i, region.page_addr(i), suspect);
                    }
                    (from..to).for_each(|k| sums.filled(k));
                }
            };
            match r {
                Ok(()) => {
                    filled += (stop - cur) as u64;
                    mark(cur, stop);
                    cur = stop;
                }
                Err(p) => {
                    let done = (p.done / PAGE_SIZE as u64) as usize;
                    filled += done as u64;
                    mark(cur, cur + done);
                    match p.error.raw_os_error() {
                        // Page present already (a spurious or repeated fault): skip it.
                        Some(libc::EEXIST) => {
                            if cur + done == i {
                                let _ = shared.uffd.wake(region.page_addr(i), PAGE_SIZE as u64);
                            }
                            cur += done + 1;
                        }
                        Some(libc::EAGAIN) => {
                            if cur + done <= i {
                                outcome = Served::Again;
                            }
                            break;
                        }
                        _ => {
                            self.unexpected("zero-fill", dst, &p);
                            break;
                        }
                    }
                }
            }
        }
        // Pages filled now are in use (or about to be, the neighbours of a
        // first touch): stamped seen, so that reclaim does not take the
        // program's newest memory for its oldest (a region's stamps date
        // from when it was registered).
        shared.turns.grow().ran_to(stream, end);
        let now = shared.tick.load(Ordering::Relaxed);
        for k in i..end {
            region.ages.set_seen(k, now);
            region.incompressible.clear(k);
            region.states.transition(k, State::Filling, State::Resident);
        }
        if let Served::Done = outcome {
            shared.counters.faults_zero_filled.fetch_add(1, Ordering::Relaxed);
            shared.counters.pages_zero_filled.fetch_add(filled, Ordering::Relaxed);
            shared.resident_est.fetch_add(filled as i64, Ordering::Relaxed);
        }
        outcome
    }

    /// A copy into the region failed and the page stays where it was (in its
    /// tier or in staging), to be tried again once the next messages are read.
    /// EAGAIN means an event is pending. ENOENT means no mapping is at the
    /// address any more: the program moved the range (mremap) or unmapped it,
    /// and the kernel's event for that is on its way, unread or read by a
    /// handler that waits to apply it. Until then the region's address is
    /// the old one. Marking the page installed there would throw away its
    /// only copy, and the program would read zeros at the new address: a
    /// put-back racing realloc's mremap did that.
    fn not_installed(&self, what: &str, addr: u64, p: &Partial) -> Served {
        match p.error.raw_os_error() {
            Some(libc::EAGAIN) => {}
            Some(libc::ENOENT) => {
                self.shared.counters.installs_retried.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                tracing::warn!("{what} at {addr:#x} failed: {}; the page stays out and is tried again", p.error);
                self.shared.counters.installs_retried.fetch_add(1, Ordering::Relaxed);
                // Not a stale address: do not spin on it.
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        Served::Again
    }

    fn unexpected(&self, what: &str, addr: u64, p: &Partial) {
        unexpected(&self.shared, what, addr, p)
    }

    /// The program dropped (`unmap`: unmapped) `[start, end)`: forget farmem's
    /// copies of its pages.
    ///
    /// The kernel reports MADV_DONTNEED/FREE/REMOVE before it zaps the pages,
    /// and the zap can come well after the event is read. Until then the old
    /// bytes are still in the page tables, and an eviction that took them would
    /// carry them past the zap and bring them back later. So dropped pages
    /// become `Dropping`, which the evictor never claims; they become
    /// `Resident` again once they are out of the page tables (the evictor
    /// checks with mincore) or a thread faults on them. (Moving them out here
    /// instead, with UFFDIO_MOVE, raced the kernel's zap and could spin in the
    /// kernel on 6.18 with page-table reclaim.)
    fn forget_range(&mut self, start: u64, end: u64, unmap: bool) {
        for region in self.shared.regions.overlapping(start, end) {
            let rs = region.start();
            let first = ((start.max(rs) - rs) / PAGE_SIZE as u64) as usize;
            let last = (((end.min(rs + region.len())) - rs) as usize).div_ceil(PAGE_SIZE);
            let drop = self.shared.turns.drops.fetch_add(1, Ordering::Relaxed) + 1;
            let to = if unmap { State::Resident } else { State::Dropping { drop } };
            for i in first..last {
                self.forget_page(&region, i, to, drop);
            }
            if unmap && start <= rs && end >= rs + region.len() {
                region.closed.store(true, Ordering::Release);
                self.shared.regions.remove(&region);
            }
        }
    }

    /// Forgets farmem's copy of page `i`, which the program dropped (drop
    /// event number `drop`): the page becomes `to`, or, while the evictor
    /// holds it, `ClaimedDropped`, which the evictor ends (see `pagestate`).
    fn forget_page(&self, region: &Region, i: usize, to: State, drop: u64) {
        if let Some(sums) = &region.sums {
            sums.dropped(i);
        }
        loop {
            let s = region.states.get(i);
            match s {
                State::Resident | State::Dropping { .. } => {
                    if s == to || region.states.transition(i, s, to) {
                        return;
                    }
                }
                State::Claimed | State::ClaimedDropped { .. } => {
                    if region.states.transition(i, s, State::ClaimedDropped { drop }) {
                        return;
                    }
                }
                State::Poisoned => {
                    if region.states.transition(i, s, to) {
                        return;
                    }
                }
                State::Staged { slot } => {
                    if region.states.transition(i, s, to) {
                        self.shared.staging.release(slot);
                        return;
                    }
                }
                State::Evicted { tier, handle } => {
                    if region.states.transition(i, s, to) {
                        region.evicted.fetch_sub(1, Ordering::Relaxed);
                        self.shared.tiers[tier as usize].remove(Handle::new(handle));
                        self.shared.counters.pages_dropped_by_program.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                // Events are applied with `Turns::order` exclusive: no handler
                // is between the steps of an install.
                State::Restoring { .. } | State::Faulting { .. } | State::Filling => {
                    unreachable!("page {i} is {s:?} while an event is applied")
                }
            }
        }
    }

    /// The program moved `[from, from+len)` to `to` with mremap; the kernel moved
    /// the page tables, so farmem's states follow.
    fn remap(&mut self, from: u64, to: u64, len: u64) {
        let Some(region) = self.shared.regions.find(from) else {
            return;
        };
        let _batch = region.evict_lock.lock().unwrap_or_else(|e| e.into_inner());
        if from == region.start() && len == region.len() {
            region.set_start(to);
            self.shared.regions.resort();
            return;
        }
        // Part of a region moved: the moved part becomes a region of its own.
        let moved = match Region::new(to, len, self.shared.tick.load(Ordering::Relaxed), self.shared.config.verify) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::error!("cannot track mremap of {from:#x}+{len:#x} to {to:#x}: {e}");
                return;
            }
        };
        let first = ((from - region.start()) / PAGE_SIZE as u64) as usize;
        for k in 0..moved.pages() {
            let i = first + k;
            if i >= region.pages() {
                break;
            }
            if let (Some(from), Some(to)) = (&region.sums, &moved.sums) {
                from.move_to(i, to, k);
            }
            match region.states.replace(i, State::Resident) {
                s @ State::Staged { .. } => {
                    // A refused page waiting to be put back: it is put back at its
                    // new address, through the request queue, where EAGAIN can wait.
                    moved.states.replace(k, s);
                    self.shared.requests.push(Request::Restore { region: Arc::clone(&moved), page: k });
                }
                s @ (State::Evicted { .. } | State::Poisoned | State::Dropping { .. }) => {
                    if matches!(s, State::Evicted { .. }) {
                        region.evicted.fetch_sub(1, Ordering::Relaxed);
                        moved.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                    moved.states.replace(k, s);
                }
                _ => {}
            }
        }
        if !self.shared.regions.insert(Arc::clone(&moved)) {
            tracing::error!("mremap target {to:#x}+{len:#x} overlaps a registered region");
        }
    }

    fn serve_request(&mut self, r: Request) {
        match r {
            Request::Restore { region, page } => {
                while let State::Staged { slot } = region.states.get(page) {
                    if !region.states.transition(page, State::Staged { slot }, State::Restoring { slot }) {
                        continue;
                    }
                    if let Served::Done = self.restore_staged(&region, page, slot, false) {
                        break;
                    }
                    self.pump();
                }
            }
            Request::PutBack { region, pages, tier: from } => {
                for i in pages {
                    loop {
                        let s = region.states.get(i);
                        let State::Evicted { tier, handle } = s else {
                            break;
                        };
                        if tier != from || !region.states.transition(i, s, State::Faulting { tier, handle }) {
                            break;
                        }
                        match self.load_from_tier(&region, i, tier, handle, false) {
                            Served::Done => break,
                            Served::Again => self.pump(),
                        }
                    }
                }
            }
            Request::Unregister { region, done } => {
                let r = self.unregister(&region);
                done.finish(r);
            }
            Request::RestoreAll { done } => {
                for region in self.shared.regions.all() {
                    self.restore_region(&region);
                }
                done.finish(Ok(()));
            }
        }
    }

    /// Brings every staged or evicted page of `region` back into RAM.
    fn restore_region(&mut self, region: &Arc<Region>) {
        for i in 0..region.pages() {
            loop {
                let s = region.states.get(i);
                let served = match s {
                    State::Staged { slot } => {
                        if !region.states.transition(i, s, State::Restoring { slot }) {
                            continue;
                        }
                        self.restore_staged(region, i, slot, false)
                    }
                    State::Evicted { tier, handle } => {
                        if !region.states.transition(i, s, State::Faulting { tier, handle }) {
                            continue;
                        }
                        self.load_from_tier(region, i, tier, handle, false)
                    }
                    _ => Served::Done,
                };
                match served {
                    Served::Done => break,
                    Served::Again => self.pump(),
                }
            }
        }
    }

    /// Brings every page of `region` back, then unregisters it.
    fn unregister(&mut self, region: &Arc<Region>) -> io::Result<()> {
        {
            // No new eviction batch starts once `closed` is set; taking the lock
            // waits for the one in flight. Not held below: pumping events may
            // need it (an mremap of this region).
            let _batch = region.evict_lock.lock().unwrap_or_else(|e| e.into_inner());
            region.closed.store(true, Ordering::Release);
        }
        self.restore_region(region);
        let r = if !region.armed.load(Ordering::Acquire) {
            // Registered lazily and never armed: the kernel knows nothing of it.
            Ok(())
        } else {
            match self.shared.uffd.unregister(region.start(), region.len()) {
                // The program unmapped the range: the kernel dropped the registration with it.
                Err(_) if !crate::is_mapped(region.start()) => Ok(()),
                r => r,
            }
        };
        self.shared.regions.remove(region);
        r
    }
}

/// Waits up to `timeout_ms` for `fd` to become readable; true if it did.
fn wait_readable(fd: i32, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: `p` is one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout_ms) > 0 && p.revents != 0 }
}

/// How long a fault handler spins before sleeping in poll, by default: not
/// at all (see `Config::spin`).
pub(crate) const DEFAULT_SPIN: Duration = Duration::ZERO;
