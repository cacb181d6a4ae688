//! The tier's counters, and the gate every load passes through.
//!
//! The gate counts loads in and out on a cache line per thread (modulo 16
//! stripes), so fault handlers do not share a line; its out-count is also the
//! load counter. Compaction uses it to wait until no load that may have read
//! an object's old offset is still running.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    enters: AtomicU64,
    exits: AtomicU64,
}

/// Loads in flight, counted per stripe.
#[derive(Default)]
pub(super) struct ReaderGate {
    stripes: [Stripe; STRIPES],
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        s.get()
    })
}

/// A load inside the gate; leaves it on drop.
pub(super) struct Reading<'a>(&'a Stripe);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        // Release: the load's reads of the object happen before a waiter
        // that sees this count goes on to free the object.
        self.0.exits.fetch_add(1, Ordering::Release);
    }
}

impl ReaderGate {
    /// Enters the gate; the entry word must be read after this (SeqCst).
    pub(super) fn enter(&self) -> Reading<'_> {
        let s = &self.stripes[stripe()];
        s.enters.fetch_add(1, Ordering::SeqCst);
        Reading(s)
    }

    /// Returns once every load that entered before the call has left.
    pub(super) fn wait_for_readers(&self) {
        for s in &self.stripes {
            let mut spins = 0u32;
            // Exits first: if enters then equals it, the stripe was empty at
            // the moment exits was read (exits never pass enters).
            while s.exits.load(Ordering::SeqCst) != s.enters.load(Ordering::SeqCst) {
                spins += 1;
                if spins < 100 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Loads that have left the gate.
    pub(super) fn exits(&self) -> u64 {
        self.stripes.iter().map(|s| s.exits.load(Ordering::Relaxed)).sum()
    }
}

/// Everything [`crate::TierStats`] reports that is not memory or loads.
#[derive(Default)]
pub(super) struct Counters {
    pub pages: AtomicU64,
    pub zero_pages: AtomicU64,
    pub same_filled_pages: AtomicU64,
    pub rejected_incompressible: AtomicU64,
    pub bytes_compressed: AtomicU64,
    pub stores: AtomicU64,
    pub fallback_stores: AtomicU64,
    pub fallback_failures: AtomicU64,
    pub load_errors: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn loads_add_up_across_threads() {
        let g = ReaderGate::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| (0..10_000).for_each(|_| drop(g.enter())));
            }
        });
        assert_eq!(g.exits(), 80_000);
        g.wait_for_readers();
    }

    #[test]
    fn a_waiter_waits_for_a_reader_inside() {
        let g = ReaderGate::default();
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            let inside = g.enter();
            s.spawn(|| {
                g.wait_for_readers();
                assert!(released.load(Ordering::SeqCst), "returned while a reader was inside");
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            released.store(true, Ordering::SeqCst);
            drop(inside);
        });
    }
}
