//! The state of every page of a registered region, one atomic word a page.
//!
//! Who may move a page between states is what keeps its bytes right:
//!
//! | from | to | by | when |
//! |---|---|---|---|
//! | `Resident` | `Claimed` | evictor | before moving the page out of the region |
//! | `Claimed` | `Staged` / `Resident` | evictor | after the move: the page is in staging / was a hole |
//! | `Claimed` | `ClaimedDropped` | fault handler | the program dropped or unmapped the page while the evictor held it |
//! | `ClaimedDropped` | `Resident` / `Dropping` | evictor | its copy is thrown away; `Dropping` if the page never left the page tables |
//! | `Staged` | `Evicted` | evictor | its copy is in a tier |
//! | `Staged` | `Restoring` → `Resident` | fault handler | a fault (or a put-back request) copies it back from staging |
//! | `Evicted` | `Faulting` → `Resident` | fault handler | a fault copies it back from its tier |
//! | `Faulting` | `Poisoned` | fault handler | the tier could not give it back |
//! | `Resident` | `Filling` → `Resident` | fault handler | zero-filling a page never evicted |
//! | any but the transient ones | `Resident` | fault handler | the program unmapped the page (UNMAP) |
//! | any but the transient ones | `Dropping` | fault handler | the program dropped the page (REMOVE): the kernel zaps it only after the event is read |
//! | `Dropping` | `Resident` | evictor, fault handler | the page is out of the page tables (zapped), or a thread faults on it |
//!
//! A fault handler never waits for the evictor (a fault on a `Claimed` or
//! `ClaimedDropped` page is retried later), while the evictor may wait for the
//! handlers; so neither can end up waiting for the other. A handler that finds
//! a page in a state another handler holds (`Faulting`, `Restoring`,
//! `Filling`) retries the fault later too.
//!
//! Only the evictor ends a claim. A drop during a claim does not end it: the
//! evictor's move out of the page tables may still be on its way, and if a
//! fault were served in between (zeros, then the program's new bytes), the
//! move would carry the new bytes off and the evictor would throw them away
//! with the dropped copy. So faults keep waiting until the evictor has moved
//! the page or given up, and only then does the page become `Resident`. For
//! that wait to end, the evictor's move must not wait for the page either:
//! it moves without UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, which on 6.18 spins in
//! the kernel over a range whose page table a drop freed, until something is
//! mapped there again; without it the kernel stops at the hole (see `evict`).
//!
//! Only the fault handlers install pages into a region (UFFDIO_COPY/ZEROPAGE/POISON),
//! and they also apply the kernel's REMOVE/UNMAP/REMAP events, in the order the
//! kernel reports them (see `fault::Turns`), and never begin an install into
//! a range whose event is read but not yet applied (see `gate`); so a page the
//! program dropped is never brought back.
//! The evictor only takes pages out, and only pages it has claimed, so a write
//! that lands during eviction either happens before the move (and is in the
//! copy) or faults and waits for the page to come back.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::mem::Mapping;

/// What a page's word says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// In the page tables, or never touched, or dropped: farmem holds no copy.
    Resident,
    /// The evictor is moving it out; a fault waits.
    Claimed,
    /// Claimed, and the program dropped or unmapped it meanwhile (drop event
    /// number `drop`): the evictor throws its copy away when it is done with
    /// the page; until then a fault waits.
    ClaimedDropped {
        /// Which drop event.
        drop: u64,
    },
    /// Moved out, its bytes in staging slot `slot`, not yet stored.
    Staged {
        /// The staging slot.
        slot: u64,
    },
    /// A fault handler is copying it back from staging slot `slot`.
    Restoring {
        /// The staging slot.
        slot: u64,
    },
    /// Out of RAM, its bytes in tier `tier` under `handle`.
    Evicted {
        /// Index of the tier.
        tier: u8,
        /// The tier's handle.
        handle: u64,
    },
    /// A fault handler is loading it back from its tier.
    Faulting {
        /// Index of the tier.
        tier: u8,
        /// The tier's handle.
        handle: u64,
    },
    /// A fault handler is zero-filling it.
    Filling,
    /// Its tier lost it: every access raises SIGBUS.
    Poisoned,
    /// The program dropped it (MADV_DONTNEED/FREE/REMOVE) and the kernel may
    /// not have zapped it yet: its bytes in RAM are stale, so it is never
    /// evicted until it is out of the page tables. `drop` numbers the drop
    /// event (modulo 2^56), so that a page dropped again is not mistaken for
    /// the same drop.
    Dropping {
        /// Which drop event.
        drop: u64,
    },
}

const TAG_RESIDENT: u64 = 0;
const TAG_CLAIMED: u64 = 1;
const TAG_STAGED: u64 = 2;
const TAG_RESTORING: u64 = 3;
const TAG_EVICTED: u64 = 4;
const TAG_FAULTING: u64 = 5;
const TAG_FILLING: u64 = 6;
const TAG_POISONED: u64 = 7;
const TAG_DROPPING: u64 = 8;
const TAG_CLAIMED_DROPPED: u64 = 9;
/// The payload above the tag and tier bits.
const PAYLOAD_MASK: u64 = (1 << 56) - 1;

impl State {
    /// Packs the state into a word: tag in bits 0-3, tier in 4-7, payload above.
    pub fn encode(self) -> u64 {
        match self {
            State::Resident => TAG_RESIDENT,
            State::Claimed => TAG_CLAIMED,
            State::Staged { slot } => TAG_STAGED | (slot << 8),
            State::Restoring { slot } => TAG_RESTORING | (slot << 8),
            State::Evicted { tier, handle } => TAG_EVICTED | ((tier as u64 & 0xf) << 4) | (handle << 8),
            State::Faulting { tier, handle } => TAG_FAULTING | ((tier as u64 & 0xf) << 4) | (handle << 8),
            State::Filling => TAG_FILLING,
            State::Poisoned => TAG_POISONED,
            State::Dropping { drop } => TAG_DROPPING | ((drop & PAYLOAD_MASK) << 8),
            State::ClaimedDropped { drop } => TAG_CLAIMED_DROPPED | ((drop & PAYLOAD_MASK) << 8),
        }
    }

    /// Unpacks a word made by [`State::encode`].
    pub fn decode(w: u64) -> State {
        let tier = ((w >> 4) & 0xf) as u8;
        let payload = w >> 8;
        match w & 0xf {
            TAG_RESIDENT => State::Resident,
            TAG_CLAIMED => State::Claimed,
            TAG_STAGED => State::Staged { slot: payload },
            TAG_RESTORING => State::Restoring { slot: payload },
            TAG_EVICTED => State::Evicted { tier, handle: payload },
            TAG_FAULTING => State::Faulting { tier, handle: payload },
            TAG_FILLING => State::Filling,
            TAG_POISONED => State::Poisoned,
            TAG_DROPPING => State::Dropping { drop: payload },
            TAG_CLAIMED_DROPPED => State::ClaimedDropped { drop: payload },
            t => unreachable!("page state word {w:#x} has unknown tag {t}"),
        }
    }
}

/// One atomic state word per page, in memory the runtime maps for itself.
#[derive(Debug)]
pub struct PageStates {
    words: Mapping,
    pages: usize,
}

impl PageStates {
    /// States for `pages` pages, all `Resident`.
    pub fn new(pages: usize) -> std::io::Result<Self> {
        let words = Mapping::anonymous(pages.max(1) * 8)?;
        Ok(PageStates { words, pages })
    }

    /// The number of pages.
    pub fn len(&self) -> usize {
        self.pages
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.pages, "page index {i} beyond {} pages", self.pages);
        // SAFETY: the mapping holds `pages` zero-initialised, 8-aligned u64 words
        // (mmap is page-aligned) that live as long as `self`; AtomicU64 has the
        // layout of u64.
        unsafe { &*(self.words.addr() as *const AtomicU64).add(i) }
    }

    /// The state of page `i`.
    pub fn get(&self, i: usize) -> State {
        State::decode(self.word(i).load(Ordering::Acquire))
    }

    /// Moves page `i` from `from` to `to`; false (and nothing done) if it was not in `from`.
    pub fn transition(&self, i: usize, from: State, to: State) -> bool {
        self.word(i)
            .compare_exchange(from.encode(), to.encode(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Sets page `i` to `to` whatever it was, and returns what it was.
    pub fn replace(&self, i: usize, to: State) -> State {
        State::decode(self.word(i).swap(to.encode(), Ordering::AcqRel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_word() {
        let h = (1u64 << 56) - 1;
        for s in [
            State::Resident,
            State::Claimed,
            State::Staged { slot: 511 },
            State::Restoring { slot: 3 },
            State::Evicted { tier: 15, handle: h },
            State::Faulting { tier: 2, handle: 12345 },
            State::Filling,
            State::Poisoned,
            State::Dropping { drop: (1 << 56) - 1 },
            State::ClaimedDropped { drop: 42 },
        ] {
            assert_eq!(State::decode(s.encode()), s);
        }
    }

    #[test]
    fn transition_only_from_the_expected_state() {
        let p = PageStates::new(4).unwrap();
        assert_eq!(p.get(3), State::Resident);
        assert!(p.transition(3, State::Resident, State::Claimed));
        assert!(!p.transition(3, State::Resident, State::Filling));
        assert_eq!(p.replace(3, State::Resident), State::Claimed);
    }
}
