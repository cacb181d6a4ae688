//! Buffers a system call is about to hand to the kernel, kept in RAM for it
//! (signal mode).
//!
//! In signal mode a kernel access to a page farmem holds fails with EFAULT
//! rather than waiting (see the `signal` module). So before a call that
//! gives the kernel a buffer in registered memory, the calling thread pins
//! the buffer's range here and touches each of its pages from user space:
//! an evicted page faults and comes back in this thread's SIGBUS handler, a
//! page never touched gets the zero page (the kernel's own write then copies
//! it, with no userfault). While the pin stands, the evictor leaves the
//! range's pages alone, so they are all still in the page tables when the
//! kernel reads or writes them.
//!
//! Why that holds: the thread publishes its pin, then reads each page's
//! state; the evictor claims a page (compare-and-swap on its state), then
//! reads the pins. Both steps are sequentially consistent, so either the
//! evictor sees the pin and gives the page back, or the thread sees the
//! page claimed, waits for the claim to end, and faults the page back in by
//! touching it. After its pin is published no claim on its pages survives.
//!
//! In thread mode, or with no runtime in signal mode, [`Pinned::new`] is one
//! load and does nothing.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::pagestate::State;
use crate::{signal, PAGE_SIZE};

/// How many ranges can be pinned at once, over every thread.
const SLOTS: usize = 256;

/// A pinned range `[start, end)`. `end` is 0 when the slot is free and 1
/// while it is being filled (no page lies below address 2).
struct Slot {
    start: AtomicU64,
    end: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot { start: AtomicU64::new(0), end: AtomicU64::new(0) };
static PINS: [Slot; SLOTS] = [FREE; SLOTS];
/// Ranges pinned now (the evictor reads no slot while it is 0).
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// One past the highest slot ever taken: the evictor reads no further.
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// Ranges pinned while every slot was taken: while any is, the evictor
/// takes no page at all. A call that blocks with its pin (a futex wait)
/// cannot be made again on EFAULT, so a pin never fails; with more ranges
/// pinned than slots, eviction waits instead.
static ALL: AtomicUsize = AtomicUsize::new(0);
/// Whether running out of slots was reported once.
static TOLD: AtomicBool = AtomicBool::new(false);

/// The most ranges one call pins; past them, ranges are only touched.
pub const MAX_RANGES: usize = 8;

/// Ranges of program memory pinned in RAM (and touched) for one system
/// call; released on drop.
#[must_use = "the pin holds only while this value lives"]
pub struct Pinned {
    slots: [u16; MAX_RANGES],
    n: usize,
    /// Ranges pinned through [`ALL`], for want of a slot.
    all: usize,
}

impl Pinned {
    /// Pins `ranges` (address, length in bytes) and brings every page of
    /// theirs that lies in a region of a runtime in signal mode into RAM.
    /// Ranges outside farmem memory cost a region lookup and nothing else.
    /// Does nothing unless a runtime in signal mode runs. Never fails: with
    /// every slot taken, eviction stops until this pin is dropped.
    pub fn new(ranges: &[(usize, usize)]) -> Pinned {
        let mut p = Pinned { slots: [0; MAX_RANGES], n: 0, all: 0 };
        if !signal::any_attached() {
            return p;
        }
        let page = |addr: usize, len: usize| ((addr as u64) & !(PAGE_SIZE as u64 - 1), (addr as u64).saturating_add(len as u64));
        let ours = || ranges.iter().filter(|&&(a, len)| len > 0 && in_farmem(a, len)).map(|&(a, len)| page(a, len));
        // Overlapping or touching ranges share a slot. Past MAX_RANGES
        // slots a range is touched but not pinned, and never merged into a
        // bounding range: the items of one memcached reply lie all over the
        // heap, and their bounding range kept the evictor off nearly every
        // page while such replies were being sent. An unpinned range can
        // still go between the touch and the kernel's access; the call then
        // fails with EFAULT, or stops short where the page went, and the
        // hooks make it again (see `kernel_io`).
        let mut merged = [(0u64, 0u64); MAX_RANGES];
        let mut m = 0;
        for (s, e) in ours() {
            if let Some(r) = merged[..m].iter_mut().find(|r| s <= r.1 && e >= r.0) {
                *r = (r.0.min(s), r.1.max(e));
            } else if m < MAX_RANGES {
                merged[m] = (s, e);
                m += 1;
            }
        }
        // No range in farmem memory: nothing to pin or touch.
        if m == 0 {
            return p;
        }
        for &(s, e) in &merged[..m] {
            p.take(s, e);
        }
        // Published before any page's state is read (see the module doc).
        fence(Ordering::SeqCst);
        for (s, e) in ours() {
            bring_in(s, e);
        }
        p
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for &k in &self.slots[..self.n] {
            PINS[k as usize].end.store(0, Ordering::SeqCst);
            LIVE.fetch_sub(1, Ordering::SeqCst);
        }
        if self.all > 0 {
            ALL.fetch_sub(self.all, Ordering::SeqCst);
            LIVE.fetch_sub(self.all, Ordering::SeqCst);
        }
    }
}

impl Pinned {
    /// The most ranges one pin holds; past them, ranges are only touched.
    pub const MAX_RANGES: usize = MAX_RANGES;

    /// Pins one object the caller knows is mapped and readable (a lock the
    /// program passed), as [`Pinned::new`] does, but never waits for the
    /// region table: the thread may be inside jemalloc, holding a lock a
    /// writer of that table needs (regions are registered from jemalloc's
    /// extent hooks). Each page's claim is waited out as in [`Pinned::new`]
    /// while the table can be read without waiting; a table busy for more
    /// than a thousand looks goes on without (jemalloc's own locks, the
    /// case that needs it, are plain memory).
    pub fn object(addr: usize, len: usize) -> Pinned {
        let mut p = Pinned { slots: [0; MAX_RANGES], n: 0, all: 0 };
        if len == 0 || !signal::any_attached() || !in_farmem(addr, len) {
            return p;
        }
        let (s, e) = ((addr as u64) & !(PAGE_SIZE as u64 - 1), (addr as u64).saturating_add(len as u64));
        p.take(s, e);
        // Published before any page is touched (see the module doc).
        fence(Ordering::SeqCst);
        let mut a = s;
        while a < e {
            wait_out_claim(a);
            // SAFETY: the caller's object is mapped and readable; a read
            // installs nothing the program could see.
            unsafe { std::ptr::read_volatile(a as *const u8) };
            a += PAGE_SIZE as u64;
        }
        p
    }

    /// Takes a slot for `[s, e)`, or counts the range in [`ALL`].
    fn take(&mut self, s: u64, e: u64) {
        if let Some(k) = publish(s, e) {
            self.slots[self.n] = k as u16;
            self.n += 1;
        } else {
            // Counted in LIVE and ALL before any page's state is read.
            LIVE.fetch_add(1, Ordering::SeqCst);
            ALL.fetch_add(1, Ordering::SeqCst);
            self.all += 1;
            if !TOLD.swap(true, Ordering::Relaxed) {
                tracing::warn!("all {SLOTS} pin slots are taken; eviction waits while more ranges are pinned");
            }
        }
    }

    /// How many ranges this pin holds in RAM (none outside farmem memory).
    pub fn ranges(&self) -> usize {
        self.n + self.all
    }
}

/// Whether `[addr, addr + len)` may overlap memory of a runtime in signal
/// mode. Never waits: while a region table is being written the answer is
/// yes, since the caller may hold a lock the writer needs (a hook inside
/// jemalloc, which registers regions from its extent hooks).
pub fn in_farmem(addr: usize, len: usize) -> bool {
    let (s, e) = (addr as u64, (addr as u64).saturating_add(len.max(1) as u64));
    let mut hit = false;
    signal::each_attached(|shared| {
        hit = hit || shared.regions.try_overlaps(s, e).unwrap_or(true);
    });
    hit
}

/// How often [`Pinned::object`] looks for a page's claim in a region table
/// that is being written before it goes on without.
const BUSY_TRIES: usize = 1000;

/// Waits until the evictor holds no claim on the page at `a`, reading the
/// region tables only when that needs no wait (see [`Pinned::object`]).
fn wait_out_claim(a: u64) {
    for _ in 0..BUSY_TRIES {
        let mut settled = true;
        signal::each_attached(|shared| {
            let claimed = shared.regions.try_with(a, |region| {
                let i = ((a - region.start()) / PAGE_SIZE as u64) as usize;
                matches!(region.states.get(i), State::Claimed | State::ClaimedDropped { .. })
            });
            settled &= matches!(claimed, Ok(None) | Ok(Some(false)));
        });
        if settled {
            return;
        }
        std::thread::yield_now();
    }
}

/// Takes a slot for `[s, e)`, if one is free.
fn publish(s: u64, e: u64) -> Option<usize> {
    LIVE.fetch_add(1, Ordering::SeqCst);
    for (k, slot) in PINS.iter().enumerate() {
        if slot.end.compare_exchange(0, 1, Ordering::SeqCst, Ordering::Relaxed).is_ok() {
            slot.start.store(s, Ordering::SeqCst);
            slot.end.store(e.max(2), Ordering::SeqCst);
            HIGH.fetch_max(k + 1, Ordering::SeqCst);
            return Some(k);
        }
    }
    LIVE.fetch_sub(1, Ordering::SeqCst);
    None
}

/// Touches every page of `[s, e)` that lies in a signal-mode region, after
/// waiting out any claim the evictor holds on it.
fn bring_in(s: u64, e: u64) {
    signal::each_attached(|shared| {
        let mut a = s;
        while a < e {
            let Some(region) = shared.regions.find_from(a) else { break };
            let (rs, re) = (region.start(), region.start() + region.len());
            if rs >= e {
                break;
            }
            a = a.max(rs);
            let stop = e.min(re);
            while a < stop {
                let i = ((a - rs) / PAGE_SIZE as u64) as usize;
                while matches!(region.states.get(i), State::Claimed | State::ClaimedDropped { .. }) {
                    std::thread::yield_now();
                }
                // SAFETY: `a` is a page of a registered region, mapped
                // readable (the shim registers read-write mappings only). A
                // read installs nothing the program could see: an evicted
                // page comes back with its bytes, an untouched one as zeros.
                unsafe { std::ptr::read_volatile(a as *const u8) };
                a += PAGE_SIZE as u64;
            }
        }
    });
}

/// Whether a system call in flight has the page at `addr` pinned; the
/// evictor asks after it has claimed the page.
pub(crate) fn pinned(addr: u64) -> bool {
    fence(Ordering::SeqCst);
    if LIVE.load(Ordering::SeqCst) == 0 {
        return false;
    }
    if ALL.load(Ordering::SeqCst) > 0 {
        return true;
    }
    let high = HIGH.load(Ordering::SeqCst);
    PINS[..high].iter().any(|slot| {
        let end = slot.end.load(Ordering::SeqCst);
        // A slot being filled (1) pins everything: its range is not known yet.
        end == 1 || (end > 1 && slot.start.load(Ordering::SeqCst) <= addr && addr < end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_covers_its_range_and_ends_with_its_value() {
        // No runtime in signal mode: nothing is pinned, nothing is touched.
        let p = Pinned::new(&[(0x10000, 4096)]);
        assert_eq!(p.n, 0);
        drop(p);
        let k = publish(0x20000, 0x23000).unwrap();
        assert!(pinned(0x20000) && pinned(0x22fff) && !pinned(0x23000) && !pinned(0x1f000));
        PINS[k].end.store(0, Ordering::SeqCst);
        LIVE.fetch_sub(1, Ordering::SeqCst);
        assert!(!pinned(0x20000));
    }
}
