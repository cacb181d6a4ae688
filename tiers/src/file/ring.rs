//! The file tier's io_uring: one ring shared by every thread, a pool of
//! aligned read buffers, and completions handed to whichever thread waits.
//!
//! Each operation is named by a *slot*: `0..POOL` are the read buffers (a
//! thread owns a slot while it owns the buffer), [`WRITE_SLOT`] is the
//! segment writer's (used by the one thread writing the sealing segment) and [`COMPACT_SLOT`] the
//! compactor's (used under the compaction lock). So at most `SLOTS` operations
//! are in flight, fewer than the ring's entries: a push never finds it full.
//!
//! Threads: pushing to the submission queue takes the `sq` mutex. Completions
//! are reaped by one thread at a time under the `cq` mutex: it stores each
//! result in its slot's cell and, if its own is not there yet, sleeps in
//! `io_uring_enter` for the next completion *while holding the mutex*; the
//! others wait on the mutex, and find their result in their cell when they get
//! it. Nobody sleeps on a completion that another thread has already reaped.
//! Background operations (segment writes, compaction reads) wait instead
//! with [`Ring::wait_politely`], which takes the cq mutex only to reap, never
//! to sleep, so a fault's read never waits behind them.
//!
//! The buffers are an anonymous mapping of the tier's own (page-aligned, as
//! O_DIRECT needs), never the program's heap (design rule 2).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::*};
use std::sync::{Condvar, Mutex};

use io_uring::{opcode, types, IoUring};

use crate::mem::Mapping;

/// Read buffers in the pool (one bit each in a `u64`).
pub(super) const POOL: usize = 64;
/// Bytes of one read buffer: the 4 KiB blocks any record can span.
pub(super) const READ_BUF: usize = 3 * 4096;
/// The slot of segment writes (owned by whoever set the writer's `writing`).
pub(super) const WRITE_SLOT: usize = POOL;
/// The slot of compaction reads.
pub(super) const COMPACT_SLOT: usize = POOL + 1;
const SLOTS: usize = POOL + 2;
const ENTRIES: u32 = 128;
/// A cell's value while its operation is in flight.
const PENDING: i64 = i64::MIN;

/// What to do in one submitted operation.
#[derive(Clone, Copy, Debug)]
pub(super) struct Op {
    pub(super) slot: usize,
    pub(super) write: bool,
    pub(super) fd: RawFd,
    pub(super) buf: *mut u8,
    pub(super) len: usize,
    pub(super) offset: u64,
}

/// The ring, its completion cells and the read-buffer pool.
pub(super) struct Ring {
    ring: IoUring,
    sq: Mutex<()>,
    cq: Mutex<()>,
    results: [AtomicI64; SLOTS],
    /// Set when the kernel refused to run the ring: an operation may still be
    /// in flight into a buffer, so no buffer is reused and every call fails.
    broken: AtomicBool,
    buffers: Mapping,
    free: Mutex<u64>,
    freed: Condvar,
}

impl Ring {
    pub(super) fn new() -> io::Result<Self> {
        Ok(Ring {
            ring: IoUring::new(ENTRIES)?,
            sq: Mutex::new(()),
            cq: Mutex::new(()),
            results: std::array::from_fn(|_| AtomicI64::new(0)),
            broken: AtomicBool::new(false),
            buffers: Mapping::anonymous(POOL * READ_BUF)?,
            free: Mutex::new(u64::MAX),
            freed: Condvar::new(),
        })
    }

    /// Takes between 1 and `want` (at most [`POOL`]) read buffers, waiting
    /// while none is free; returns them as a bit mask.
    pub(super) fn take_buffers(&self, want: usize) -> u64 {
        let want = want.clamp(1, POOL);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        let mut mask = 0u64;
        for _ in 0..want {
            if *free == 0 {
                break;
            }
            let bit = *free & free.wrapping_neg();
            mask |= bit;
            *free &= !bit;
        }
        mask
    }

    /// Returns buffers taken by [`Ring::take_buffers`] whose operations are
    /// complete (each was waited for).
    pub(super) fn give_buffers(&self, mask: u64) {
        if self.broken.load(Relaxed) {
            return; // see `broken`
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert_eq!(*free & mask, 0, "read buffer returned twice");
        *free |= mask;
        self.freed.notify_all();
    }

    /// The first byte of read buffer `i`.
    pub(super) fn buffer(&self, i: usize) -> *mut u8 {
        assert!(i < POOL);
        // SAFETY: i < POOL, so the buffer lies inside the mapping.
        unsafe { self.buffers.addr().add(i * READ_BUF) }
    }

    /// Queues `ops` and submits them with one `io_uring_enter`.
    ///
    /// # Safety
    /// Each op's slot must be owned by the caller, and its buffer must be
    /// valid for `len` bytes and touched by nothing else until [`Ring::wait`]
    /// for that slot has returned; the caller must wait for every op.
    pub(super) unsafe fn submit(&self, ops: &[Op]) -> io::Result<()> {
        // SAFETY: this function's contract is `queue`'s.
        unsafe { self.queue(ops)? };
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if retryable(&e) => continue,
                // The entries stay queued: the next `wait` submits them again.
                Err(e) => return Err(e),
            }
        }
    }

    /// Queues `ops` without entering the kernel: the next [`Ring::wait`]
    /// submits them and sleeps in one `io_uring_enter`, which saves a system
    /// call on a fault that reads one page and waits for it at once.
    ///
    /// # Safety
    /// As for [`Ring::submit`].
    pub(super) unsafe fn queue(&self, ops: &[Op]) -> io::Result<()> {
        self.check()?;
        {
            let _sq = self.sq.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: the sq mutex makes this the only submission queue handle.
            let mut sq = unsafe { self.ring.submission_shared() };
            for op in ops {
                self.results[op.slot].store(PENDING, Relaxed);
                let fd = types::Fd(op.fd);
                let entry = if op.write {
                    opcode::Write::new(fd, op.buf, op.len as u32).offset(op.offset).build()
                } else {
                    opcode::Read::new(fd, op.buf, op.len as u32).offset(op.offset).build()
                };
                // SAFETY: the buffer stays valid until the op is waited for
                // (this function's contract).
                unsafe { sq.push(&entry.user_data(op.slot as u64)) }.expect("ring has more entries than slots");
            }
            // `sq` publishes its tail here, when it is dropped.
        }
        Ok(())
    }

    /// Waits for the operation of `slot`; returns the bytes it moved.
    pub(super) fn wait(&self, slot: usize) -> io::Result<usize> {
        loop {
            let r = self.results[slot].load(Acquire);
            if r != PENDING {
                return if r < 0 { Err(io::Error::from_raw_os_error(-r as i32)) } else { Ok(r as usize) };
            }
            self.check()?;
            let _cq = self.cq.lock().unwrap_or_else(|e| e.into_inner());
            if self.reap(slot) {
                continue;
            }
            // A page read on fast storage completes within tens of
            // microseconds: watching the completion queue for that long saves
            // the wake-up of this thread, which on a VM costs as much as the
            // read (the thread that faulted sleeps meanwhile; its core is free).
            if self.spin_for(slot) {
                continue;
            }
            // Submits what a failed `submit` left queued, then sleeps until
            // any completion arrives; reaped at the top of the loop.
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if retryable(&e) => {}
                Err(e) => {
                    tracing::error!("file tier: io_uring_enter failed, the ring is unusable: {e}");
                    self.broken.store(true, Relaxed);
                    return Err(e);
                }
            }
            self.reap(slot);
        }
    }

    /// Waits for the operation of `slot` without ever holding the cq mutex
    /// while waiting: it takes the mutex only to reap (`try_lock`), and
    /// otherwise sleeps a little and looks at its cell again. For background
    /// I/O (compaction reads, segment writes): a load waiting for its own
    /// read, which may take the mutex and sleep in the kernel, is so never
    /// held up behind this wait, only at most one reap long.
    pub(super) fn wait_politely(&self, slot: usize) -> io::Result<usize> {
        let mut pause = std::time::Duration::from_micros(10);
        loop {
            let r = self.results[slot].load(Acquire);
            if r != PENDING {
                return if r < 0 { Err(io::Error::from_raw_os_error(-r as i32)) } else { Ok(r as usize) };
            }
            self.check()?;
            let reaped = match self.cq.try_lock() {
                Ok(_cq) => self.reap(slot),
                Err(std::sync::TryLockError::Poisoned(e)) => {
                    let _cq = e.into_inner();
                    self.reap(slot)
                }
                // The holder reaps for everyone, this cell included.
                Err(std::sync::TryLockError::WouldBlock) => false,
            };
            if !reaped {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_micros(200));
            }
        }
    }

    /// Submits what is queued and watches the completion queue for `slot`'s
    /// result for up to [`SPIN`]; whether it came. The caller holds the cq mutex.
    fn spin_for(&self, slot: usize) -> bool {
        loop {
            match self.ring.submit() {
                Ok(_) => break,
                Err(e) if retryable(&e) => continue,
                Err(_) => return false,
            }
        }
        let t0 = std::time::Instant::now();
        while t0.elapsed() < SPIN {
            if self.reap(slot) {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Moves every completion into its cell; whether `slot`'s is there. The
    /// caller holds the cq mutex.
    fn reap(&self, slot: usize) -> bool {
        // SAFETY: the caller holds the cq mutex, so this is the only completion queue handle.
        let cq = unsafe { self.ring.completion_shared() };
        for cqe in cq {
            self.results[cqe.user_data() as usize].store(cqe.result() as i64, Release);
        }
        self.results[slot].load(Acquire) != PENDING
    }

    fn check(&self) -> io::Result<()> {
        if self.broken.load(Relaxed) {
            return Err(io::Error::other("the io_uring failed earlier and is no longer used"));
        }
        Ok(())
    }
}

/// How long a waiter watches the completion queue before it sleeps.
const SPIN: std::time::Duration = std::time::Duration::from_micros(150);

fn retryable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY))
}
