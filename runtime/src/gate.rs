//! The install gate: no copy goes into a range the kernel may already have
//! zapped for a drop farmem has read but not yet applied.
//!
//! The kernel reports MADV_DONTNEED/FREE/REMOVE (REMOVE), munmap (UNMAP) and
//! mremap (REMAP), waits until a handler has *read* the event, and only then
//! zaps (or moves) the range. An install (UFFDIO_COPY, ZEROPAGE, POISON)
//! begun before that read either fails with EAGAIN or is zapped with the
//! rest. One begun after it lands after the zap, and puts back bytes the
//! program has dropped: with several handlers, and with faulting threads
//! serving themselves, an install decided on before the read (a read-ahead
//! run, a fault message read before the event, a fault whose thread has
//! since been woken by another install) can begin after it. The program then
//! reads its old bytes where it dropped them, and hard rule 1 is broken.
//!
//! So reading the userfaultfd and beginning an install exclude each other.
//! A reader waits until no install is in flight, reads, and publishes the
//! ranges its events cover before any install may begin again. An install
//! whose pages lie in a published range does not go in: its page goes back
//! to the state it came from and the fault is tried again once the events
//! are applied (the page is then `Dropping`, and reads as zeros). The ranges
//! are cleared once their events are applied.
//!
//! Everything here is atomics and spinning, as the install side runs in
//! SIGBUS handlers (signal mode), which must not take a lock the code they
//! interrupted may hold. A reader waits for at most the installs in flight,
//! each one ioctl that does not block; an install waits for at most one read
//! of a non-blocking userfaultfd.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Ranges one read can publish: a read takes at most 64 messages, and a
/// REMAP covers two ranges. Past this, every install waits for the clear.
const MAX_RANGES: usize = 128;

/// See the module doc.
pub(crate) struct InstallGate {
    /// A reader is between [`InstallGate::begin_read`] and [`InstallGate::end_read`].
    reading: AtomicBool,
    /// Installs between [`InstallGate::enter`] and the end of their pass.
    installs: AtomicUsize,
    /// Published ranges, `[start, end)`, valid below `len`.
    starts: [AtomicU64; MAX_RANGES],
    ends: [AtomicU64; MAX_RANGES],
    len: AtomicUsize,
    /// More ranges were published than fit: every address is covered.
    overflowed: AtomicBool,
}

/// An install in flight: readers wait until it is dropped.
pub(crate) struct InstallPass<'a>(&'a InstallGate);

/// Spins before each yield while waiting on the other side.
const SPINS: u32 = 64;

fn pause(spins: &mut u32) {
    *spins += 1;
    if (*spins).is_multiple_of(SPINS) {
        // SAFETY: sched_yield has no preconditions and is async-signal-safe.
        unsafe { libc::sched_yield() };
    } else {
        std::hint::spin_loop();
    }
}

impl InstallGate {
    /// A gate with no reader and nothing published.
    pub fn new() -> Self {
        InstallGate {
            reading: AtomicBool::new(false),
            installs: AtomicUsize::new(0),
            starts: std::array::from_fn(|_| AtomicU64::new(0)),
            ends: std::array::from_fn(|_| AtomicU64::new(0)),
            len: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
        }
    }

    /// Before reading the userfaultfd: waits out the installs in flight and
    /// holds new ones off until [`InstallGate::end_read`]. One reader at a
    /// time (the caller holds `Turns::read`).
    pub fn begin_read(&self) {

        // SeqCst on both sides (`reading` then `installs` here, `installs`
        // then `reading` in `enter`): either this reader sees the install
        // and waits for it, or the install sees the reader and waits.
        self.reading.store(true, Ordering::SeqCst);
        let mut spins = 0;
        while self.installs.load(Ordering::SeqCst) != 0 {
            pause(&mut spins);
        }
    }

    /// Publishes `[start, end)`, covered by an event just read.
    pub fn publish(&self, start: u64, end: u64) {
        debug_assert!(self.reading.load(Ordering::Relaxed), "ranges are published while reading");
        let k = self.len.load(Ordering::Relaxed);
        if k == MAX_RANGES {
            self.overflowed.store(true, Ordering::Relaxed);
            return;
        }
        self.starts[k].store(start, Ordering::Relaxed);
        self.ends[k].store(end, Ordering::Relaxed);
        self.len.store(k + 1, Ordering::Relaxed);
    }

    /// After the read and its ranges: installs may begin again (the SeqCst
    /// store also publishes the ranges to every install that sees it).
    pub fn end_read(&self) {
        self.reading.store(false, Ordering::SeqCst);
    }

    /// The published events are applied: their ranges are cleared.
    pub fn clear(&self) {
        if self.len.load(Ordering::Relaxed) == 0 && !self.overflowed.load(Ordering::Relaxed) {
            return;
        }
        self.begin_read();
        self.len.store(0, Ordering::Relaxed);
        self.overflowed.store(false, Ordering::Relaxed);
        self.end_read();
    }

    /// Before an install: waits out a read in progress. The pass says which
    /// pages a read has published since the install was decided on.
    pub fn enter(&self) -> InstallPass<'_> {
        let mut spins = 0;
        loop {
            self.installs.fetch_add(1, Ordering::SeqCst);
            if !self.reading.load(Ordering::SeqCst) {
                return InstallPass(self);
            }
            self.installs.fetch_sub(1, Ordering::SeqCst);
            while self.reading.load(Ordering::SeqCst) {
                pause(&mut spins);
            }
        }
    }
}

impl InstallPass<'_> {
    /// Whether `[start, start + len)` meets a range an event read but not
    /// yet applied covers: an install there may land after the kernel's zap.
    pub fn covered(&self, start: u64, len: u64) -> bool {
        let g = self.0;
        if g.overflowed.load(Ordering::Relaxed) {
            return true;
        }
        let end = start + len;
        (0..g.len.load(Ordering::Relaxed)).any(|k| g.starts[k].load(Ordering::Relaxed) < end && start < g.ends[k].load(Ordering::Relaxed))
    }
}

impl Drop for InstallPass<'_> {
    fn drop(&mut self) {
        self.0.installs.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_range_published_by_a_read_covers_installs_until_it_is_cleared() {
        let g = InstallGate::new();
        assert!(!g.enter().covered(0x1000, 0x1000));
        g.begin_read();
        g.publish(0x3000, 0x5000);
        g.end_read();
        let pass = g.enter();
        assert!(pass.covered(0x4000, 0x1000));
        assert!(pass.covered(0x2000, 0x2000), "a run reaching into the range");
        assert!(!pass.covered(0x5000, 0x1000) && !pass.covered(0x2000, 0x1000));
        drop(pass);
        g.clear();
        assert!(!g.enter().covered(0x4000, 0x1000));
    }

    #[test]
    fn more_ranges_than_fit_cover_everything() {
        let g = InstallGate::new();
        g.begin_read();
        for k in 0..=MAX_RANGES as u64 {
            g.publish(k * 0x1000, k * 0x1000 + 1);
        }
        g.end_read();
        assert!(g.enter().covered(0xdead_0000, 0x1000));
        g.clear();
        assert!(!g.enter().covered(0xdead_0000, 0x1000));
    }

    /// The property the runtime relies on: an install that did not see a
    /// range was in flight before the read began, and so ended before it.
    #[test]
    fn an_install_either_sees_the_range_or_ends_before_the_read() {
        let g = Arc::new(InstallGate::new());
        let read_at = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let installers: Vec<_> = (0..3)
            .map(|_| {
                let (g, read_at, stop) = (Arc::clone(&g), Arc::clone(&read_at), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut late = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let pass = g.enter();
                        let covered = pass.covered(0x1000, 0x1000);
                        // Not covered, yet the read already happened: the install
                        // would land after the zap.
                        if !covered && read_at.load(Ordering::SeqCst) != u64::MAX {
                            late += 1;
                        }
                        drop(pass);
                    }
                    late
                })
            })
            .collect();
        for _ in 0..2_000 {
            g.begin_read();
            read_at.store(1, Ordering::SeqCst);
            g.publish(0, 0x10_000);
            g.end_read();
            std::thread::yield_now();
            g.begin_read();
            read_at.store(u64::MAX, Ordering::SeqCst);
            g.len.store(0, Ordering::Relaxed);
            g.end_read();
        }
        stop.store(true, Ordering::Relaxed);
        let late: u64 = installers.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(late, 0, "installs began after a read without seeing its range");
    }
}
