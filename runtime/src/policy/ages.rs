//! When each page was last seen in use, and when it last left RAM.
//!
//! The controller counts time in ticks (one per `PolicyConfig::tick`). Each page
//! keeps two 16-bit tick stamps in one word: `seen`, the last tick the runtime
//! knew it was used (it faulted back, from a sample or from a tier), and `out`,
//! the tick it was last taken out of RAM. Stamps wrap after 65,536 ticks, so the
//! aging pass clamps anything older than [`MAX_AGE`] to exactly that.
//!
//! The stamps are advice, read and written with relaxed atomics by the fault
//! thread and the policy thread: a lost update only makes one page look a little
//! older or younger than it is.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::mem::Mapping;

/// Ages are clamped here so that the 16-bit stamps never wrap into looking young.
pub const MAX_AGE: u32 = 1 << 15;

/// The age buckets (in ticks) pages are counted in, MGLRU-style: generation `g`
/// holds ages in `[GENERATIONS[g], GENERATIONS[g+1])`, the last one everything older.
pub const GENERATIONS: [u32; 5] = [0, 2, 8, 32, 128];

/// The generation an age in ticks falls in.
pub fn generation(age: u32) -> usize {
    GENERATIONS.iter().rposition(|&g| age >= g).unwrap_or(0)
}

/// Two tick stamps per page, in memory the runtime maps for itself.
#[derive(Debug)]
pub struct PageAges {
    words: Mapping,
    pages: usize,
}

impl PageAges {
    /// Stamps for `pages` pages, all at tick `now`.
    pub fn new(pages: usize, now: u32) -> io::Result<Self> {
        let a = PageAges { words: Mapping::anonymous(pages.max(1) * 4)?, pages };
        if now != 0 {
            for i in 0..pages {
                a.word(i).store(pack(now as u16, now as u16), Relaxed);
            }
        }
        Ok(a)
    }

    fn word(&self, i: usize) -> &AtomicU32 {
        assert!(i < self.pages, "page index {i} beyond {} pages", self.pages);
        // SAFETY: the mapping holds `pages` zero-initialised, 4-aligned u32 words
        // that live as long as `self`; AtomicU32 has the layout of u32.
        unsafe { &*(self.words.addr() as *const AtomicU32).add(i) }
    }

    /// Page `i` was used at tick `now`.
    pub fn set_seen(&self, i: usize, now: u32) {
        let w = self.word(i);
        let old = w.load(Relaxed);
        w.store(pack(now as u16, unpack(old).1), Relaxed);
    }

    /// Page `i` left RAM at tick `now`.
    pub fn set_out(&self, i: usize, now: u32) {
        let w = self.word(i);
        let old = w.load(Relaxed);
        w.store(pack(unpack(old).0, now as u16), Relaxed);
    }

    /// Ticks since page `i` was last seen in use, and since it last left RAM,
    /// each at most [`MAX_AGE`]; stamps older than that are clamped in place.
    pub fn ages(&self, i: usize, now: u32) -> (u32, u32) {
        let w = self.word(i);
        let old = w.load(Relaxed);
        let (seen, out) = unpack(old);
        let a = age(now, seen);
        let b = age(now, out);
        if a >= MAX_AGE || b >= MAX_AGE {
            let clamp = |t: u16, x: u32| if x >= MAX_AGE { now.wrapping_sub(MAX_AGE) as u16 } else { t };
            w.store(pack(clamp(seen, a), clamp(out, b)), Relaxed);
        }
        (a.min(MAX_AGE), b.min(MAX_AGE))
    }
}

fn pack(seen: u16, out: u16) -> u32 {
    seen as u32 | (out as u32) << 16
}

fn unpack(w: u32) -> (u16, u16) {
    (w as u16, (w >> 16) as u16)
}

/// Ticks from a 16-bit stamp to `now`.
fn age(now: u32, then: u16) -> u32 {
    (now as u16).wrapping_sub(then) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_age_and_clamp_before_they_wrap() {
        let a = PageAges::new(3, 10).unwrap();
        assert_eq!(a.ages(0, 10), (0, 0));
        a.set_seen(1, 12);
        a.set_out(1, 15);
        assert_eq!(a.ages(1, 20), (8, 5));
        // 40,000 ticks later: clamped, and stays clamped rather than wrapping.
        let later = 20 + 40_000;
        assert_eq!(a.ages(1, later), (MAX_AGE, MAX_AGE));
        assert_eq!(a.ages(1, later + 30_000), (MAX_AGE, MAX_AGE));
    }

    #[test]
    fn generations_bucket_ages() {
        assert_eq!(generation(0), 0);
        assert_eq!(generation(1), 0);
        assert_eq!(generation(2), 1);
        assert_eq!(generation(31), 2);
        assert_eq!(generation(32), 3);
        assert_eq!(generation(MAX_AGE), 4);
    }
}
