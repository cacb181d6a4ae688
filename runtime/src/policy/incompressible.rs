//! Pages the compressed tier refused, which reclaim passes over.
//!
//! Under a limit that counts the compressed tier, an incompressible page that
//! has nowhere else to go (no spill tier, or spill tiers full) stays in RAM.
//! Were reclaim to pick it again, each limit check would spend its quota on
//! pages it cannot take while the program grows past the limit: a heap of
//! pointers or random keys (sort's line index, a hash table) fills the
//! reclaim hand's path, every pick is put back, and the throttle holds the
//! program instead. So a refused page is marked, and reclaim skips it until
//! its bytes may have changed: the program wrote it (the write tracker saw
//! it), it was dropped and filled again, or [`CLEAR_EVERY`] ticks passed
//! (kernels without write tracking, and writes the tracker has not reached).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::mem::Mapping;

/// Ticks after which every mark is cleared and refused pages are tried again.
pub const CLEAR_EVERY: u32 = 32;

/// One bit per page: set when a tier refused the page as incompressible.
#[derive(Debug)]
pub struct IncompressiblePages {
    words: Mapping,
    pages: usize,
}

impl IncompressiblePages {
    /// No page marked, over `pages` pages.
    pub fn new(pages: usize) -> io::Result<Self> {
        Ok(IncompressiblePages { words: Mapping::anonymous(pages.div_ceil(64).max(1) * 8)?, pages })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.pages, "page index {i} beyond {} pages", self.pages);
        // SAFETY: the mapping holds `pages.div_ceil(64)` zero-initialised,
        // 8-aligned u64 words that live as long as `self`; AtomicU64 has the
        // layout of u64, and word `i / 64` is within them since `i < pages`.
        unsafe { &*(self.words.addr() as *const AtomicU64).add(i / 64) }
    }

    /// Page `i` was refused as incompressible.
    pub fn mark(&self, i: usize) {
        self.word(i).fetch_or(1 << (i % 64), Relaxed);
    }

    /// Page `i`'s bytes may have changed.
    pub fn clear(&self, i: usize) {
        let w = self.word(i);
        if w.load(Relaxed) & (1 << (i % 64)) != 0 {
            w.fetch_and(!(1 << (i % 64)), Relaxed);
        }
    }

    /// Whether page `i` is marked.
    pub fn is_marked(&self, i: usize) -> bool {
        self.word(i).load(Relaxed) & (1 << (i % 64)) != 0
    }

    /// Clears every mark; returns how many pages were marked.
    pub fn clear_all(&self) -> u64 {
        let mut n = 0;
        for k in 0..self.pages.div_ceil(64) {
            // SAFETY: as in `word`: `k` is below the number of words mapped.
            let w = unsafe { &*(self.words.addr() as *const AtomicU64).add(k) };
            if w.load(Relaxed) != 0 {
                n += w.swap(0, Relaxed).count_ones() as u64;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_per_page_and_clear_one_by_one_or_all_at_once() {
        let m = IncompressiblePages::new(130).unwrap();
        for i in [0, 63, 64, 129] {
            m.mark(i);
        }
        assert!(m.is_marked(63) && m.is_marked(64) && !m.is_marked(62) && !m.is_marked(65));
        m.clear(64);
        assert!(!m.is_marked(64) && m.is_marked(63));
        assert_eq!(m.clear_all(), 3);
        assert!((0..130).all(|i| !m.is_marked(i)));
    }

    #[test]
    #[should_panic(expected = "beyond")]
    fn a_page_beyond_the_region_is_a_bug() {
        IncompressiblePages::new(10).unwrap().mark(10);
    }
}
