//! Verification mode: a checksum of every page farmem takes out of RAM,
//! compared when the page comes back.
//!
//! Off by default (`RuntimeBuilder::verify`, `FARMEM_VERIFY=on` in the shim).
//! When on, each region keeps one word per page: the crc32c of the bytes
//! farmem took out while it holds a copy (marked `HELD`), and whether the page
//! has had bytes since the program last dropped it (`FILLED`). The checksum
//! is set when a page reaches staging, checked whenever a copy is installed
//! back (from staging, a tier or a prefetch) or moved between tiers, and
//! cleared when the copy is given back or legitimately thrown away (the
//! program dropped the page). A zero-fill of a page farmem holds a copy of,
//! or of a faulted page that had bytes and is gone from the page tables
//! without a drop, means bytes are being lost.
//!
//! A failure is a broken hard rule 1: the mode prints one line naming the
//! page, what went wrong and the page's last steps (claimed, out, back,
//! dropped, ...), and aborts, because the program is about to compute with
//! wrong bytes. The cost is one crc32c of 4 KiB (well under a microsecond with
//! SSE4.2) per page out and per page back: meant for tests and for chasing a
//! bug in the field, not for production.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::mem::Mapping;
use crate::PAGE_SIZE;

/// Marks a word that holds a checksum (a page's crc32c may be zero).
const HELD: u64 = 1 << 32;
/// The page has had bytes since the program last dropped it: farmem
/// installed it, or took it out. Such a page is never zero-filled (that
/// would lose bytes farmem never recorded), whether or not farmem holds a
/// copy.
const FILLED: u64 = 1 << 33;

/// One checksum word per page of a region, in memory the runtime maps itself.
#[derive(Debug)]
pub(crate) struct PageSums {
    words: Mapping,
    /// Per page, the last eight things farmem did to it (a `Step` per 4 bits,
    /// newest lowest), printed with a failure.
    steps: Mapping,
    pages: usize,
}

/// What farmem did to a page, as a failure report tells it.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub(crate) enum Step {
    /// The evictor claimed it.
    Claim = 1,
    /// Taken out into staging (`hold`).
    Out,
    /// Its copy was installed back (`release`).
    Back,
    /// The program dropped it.
    Drop,
    /// Zero-filled.
    Zero,
    /// The evictor let it go unmoved.
    Unmoved,
    /// Moved out, but staging found no page.
    Hole,
    /// Moved between tiers.
    Demote,
}

const STEP_NAMES: [&str; 9] = ["-", "claim", "out", "back", "drop", "zero", "unmoved", "hole", "demote"];

/// The checksum farmem compares pages by.
pub(crate) fn checksum(page: &[u8]) -> u32 {
    debug_assert_eq!(page.len(), PAGE_SIZE);
    crc32c::crc32c(page)
}

impl PageSums {
    /// Words for `pages` pages, none held.
    pub fn new(pages: usize) -> std::io::Result<Self> {
        Ok(PageSums { words: Mapping::anonymous(pages.max(1) * 8)?, steps: Mapping::anonymous(pages.max(1) * 4)?, pages })
    }

    fn steps_word(&self, i: usize) -> &std::sync::atomic::AtomicU32 {
        assert!(i < self.pages, "page index {i} beyond {} pages", self.pages);
        // SAFETY: as for `word`, with 4-byte words.
        unsafe { &*(self.steps.addr() as *const std::sync::atomic::AtomicU32).add(i) }
    }

    /// Records that farmem did `step` to page `i`.
    pub fn note(&self, i: usize, step: Step) {
        // The evictor and the fault handlers both note steps: no step is lost.
        let _ = self.steps_word(i).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| Some(old << 4 | step as u32));
    }

    /// Page `i`'s recent steps, oldest first.
    fn history(&self, i: usize) -> String {
        let w = self.steps_word(i).load(Ordering::Relaxed);
        (0..8).rev().map(|k| (w >> (4 * k)) & 0xf).filter(|&c| c != 0).map(|c| STEP_NAMES.get(c as usize).copied().unwrap_or("?")).collect::<Vec<_>>().join(" > ")
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.pages, "page index {i} beyond {} pages", self.pages);
        // SAFETY: the mapping holds `pages` zero-initialised, 8-aligned u64
        // words that live as long as `self`; AtomicU64 has u64's layout.
        unsafe { &*(self.words.addr() as *const AtomicU64).add(i) }
    }

    /// Farmem now holds a copy of page `i` with these bytes.
    pub fn hold(&self, i: usize, page: &[u8]) {
        self.note(i, Step::Out);
        self.word(i).store(FILLED | HELD | checksum(page) as u64, Ordering::Release);
    }

    /// Farmem gave its copy of page `i` back: the page is in the page tables again.
    pub fn release(&self, i: usize) {
        self.note(i, Step::Back);
        self.word(i).store(FILLED, Ordering::Release);
    }

    /// The program dropped page `i`: it reads as zeros from now on, and
    /// farmem's copy, if any, is thrown away.
    pub fn dropped(&self, i: usize) {
        self.note(i, Step::Drop);
        self.word(i).store(0, Ordering::Release);
    }

    /// Page `i` was zero-filled: it has bytes from now on.
    pub fn filled(&self, i: usize) {
        self.note(i, Step::Zero);
        self.word(i).fetch_or(FILLED, Ordering::AcqRel);
    }

    /// The checksum held for page `i`, if farmem holds a copy.
    pub fn held(&self, i: usize) -> Option<u32> {
        let w = self.word(i).load(Ordering::Acquire);
        (w & HELD != 0).then_some(w as u32)
    }

    /// Moves page `from`'s word to page `to` of `other` (an mremap split a region).
    pub fn move_to(&self, from: usize, other: &PageSums, to: usize) {
        let w = self.word(from).swap(0, Ordering::AcqRel);
        other.word(to).store(w, Ordering::Release);
    }

    /// Checks bytes about to be installed for page `i` (or moved between
    /// tiers) against what was taken out. `addr` and `from` name the page and
    /// its source in the report.
    pub fn check(&self, i: usize, page: &[u8], addr: u64, from: &str) {
        let got = checksum(page);
        match self.held(i) {
            Some(want) if want == got => {}
            Some(want) => fail(format_args!("page {addr:#x} came back from {from} with crc32c {got:#010x}, but it left RAM with {want:#010x} (history: {})", self.history(i))),
            None => fail(format_args!("page {addr:#x} came back from {from}, but farmem holds no record of taking it out (history: {})", self.history(i))),
        }
    }

    /// Checks that farmem holds no copy of page `i` before it is zero-filled.
    pub fn check_no_copy(&self, i: usize, addr: u64) {
        if let Some(want) = self.held(i) {
            fail(format_args!("page {addr:#x} is about to be zero-filled, but farmem holds a copy of it (crc32c {want:#010x}; history: {})", self.history(i)));
        }
    }

    /// Before page `i`, which a thread faulted on, is zero-filled: checks
    /// that farmem holds no copy of it, and says whether the fill would be
    /// wrong, i.e. farmem saw bytes in the page since the program last
    /// dropped it and they are gone from the page tables without farmem
    /// taking them. A page already back in the page tables is a repeated
    /// fault, which the zero-fill skips. The answer goes to
    /// [`PageSums::confirm_zero_fill`] once the fill is in: a fill that does
    /// not go in changes nothing (a fault read after another path installed
    /// the page, served once the program had unmapped it and something else
    /// was mapped there, its UNMAP event still behind it in the queue).
    /// Called under the install gate, with the fill: a drop of the page the
    /// kernel has already acted on is then either applied (the page is no
    /// longer marked filled) or covers the fill, which does not go in.
    /// Checked outside the gate, a drop read by one handler and not yet
    /// applied could make another handler's zero-fill of that page look
    /// like a loss.
    pub fn zero_fill_suspect(&self, i: usize, addr: u64) -> bool {
        self.check_no_copy(i, addr);
        self.word(i).load(Ordering::Acquire) & FILLED != 0 && !crate::is_present(addr)
    }

    /// After page `i` was zero-filled: aborts if [`PageSums::zero_fill_suspect`] said it was wrong.
    pub fn confirm_zero_fill(&self, i: usize, addr: u64, suspect: bool) {
        if suspect {
            fail(format_args!("page {addr:#x} was zero-filled, but it had bytes and the program never dropped it (history: {})", self.history(i)));
        }
    }
}

/// Reports a broken invariant and aborts: the program must not go on with wrong bytes.
pub(crate) fn fail(what: std::fmt::Arguments<'_>) -> ! {
    crate::fatal::abort_with(format_args!("farmem verify: {what}; aborting (hard rule 1: never stale or zeroed bytes)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_page_checks_back_once_and_is_then_released() {
        let s = PageSums::new(4).unwrap();
        let page = [7u8; PAGE_SIZE];
        assert_eq!(s.held(2), None);
        s.hold(2, &page);
        assert_eq!(s.held(2), Some(checksum(&page)));
        s.check(2, &page, 0x2000, "test");
        s.release(2);
        assert_eq!(s.held(2), None);
        s.dropped(2);
        s.check_no_copy(2, 0x2000);
    }

    #[test]
    fn a_zero_checksum_still_counts_as_held() {
        let s = PageSums::new(1).unwrap();
        s.word(0).store(HELD, Ordering::Release);
        assert_eq!(s.held(0), Some(0));
    }

    #[test]
    fn a_word_follows_its_page_to_another_region() {
        let (a, b) = (PageSums::new(4).unwrap(), PageSums::new(2).unwrap());
        let page = [1u8; PAGE_SIZE];
        a.hold(3, &page);
        a.move_to(3, &b, 1);
        assert_eq!(a.held(3), None);
        assert_eq!(b.held(1), Some(checksum(&page)));
    }
}
