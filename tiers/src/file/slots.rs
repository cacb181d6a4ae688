//! Handles of the file tier: a handle is a slot number (32 bits) and the
//! slot's 24-bit generation; the slot holds where the page's record is
//! (segment, offset, length). Compaction moves records by rewriting the
//! location, so handles stay valid; a remove bumps the generation, so a
//! removed handle never loads the page that reused its slot.
//!
//! T1's handle table (`compressed/handles.rs`) packs its own encodings and
//! 36-bit slab offsets into its entries, so this tier keeps a table of its
//! own, in the same way: 16-byte entries in a mapping the tier makes (never
//! the heap), freed entries linked through their second word.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Mutex, MutexGuard};

use crate::mem::Mapping;
use crate::{Handle, PAGE_SIZE};

const SLOT_BITS: u32 = 32;
const GEN_MASK: u64 = (1 << (Handle::BITS - SLOT_BITS)) - 1;
const NONE: u32 = u32::MAX;

/// Where a record lies: segment (24 bits), byte offset in it (24 bits) and
/// record length (16 bits), packed in one word so it moves atomically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Loc(u64);

impl Loc {
    pub(super) fn new(segment: u32, offset: usize, len: usize) -> Self {
        assert!(segment < 1 << 24 && offset < 1 << 24 && len < 1 << 16, "record location {segment}:{offset}+{len} out of range");
        Loc((segment as u64) << 40 | (offset as u64) << 16 | len as u64)
    }
    pub(super) fn segment(self) -> u32 {
        (self.0 >> 40) as u32
    }
    pub(super) fn offset(self) -> usize {
        ((self.0 >> 16) & 0xff_ffff) as usize
    }
    pub(super) fn len(self) -> usize {
        (self.0 & 0xffff) as usize
    }
}

/// The handle of `slot` at `generation`.
pub(super) fn handle(slot: u32, generation: u32) -> Handle {
    Handle::new((generation as u64) << SLOT_BITS | slot as u64)
}

/// The (slot, generation) of a handle.
pub(super) fn split(h: Handle) -> (u32, u32) {
    (h.raw() as u32, (h.raw() >> SLOT_BITS) as u32)
}

struct Free {
    /// Slots below this have been used at least once.
    next_unused: u32,
    /// The last freed slot, linked through its location word.
    head: u32,
}

/// Held while a location changes; see [`SlotTable::lock`].
pub(super) struct Locked<'a>(MutexGuard<'a, Free>);

/// The slot table.
pub(super) struct SlotTable {
    map: Mapping,
    capacity: u32,
    free: Mutex<Free>,
    high_water: AtomicU32,
}

impl SlotTable {
    /// Reserves room for `capacity` slots; memory is used as slots are.
    pub(super) fn new(capacity: u32) -> io::Result<Self> {
        let capacity = capacity.clamp(1, NONE - 1);
        Ok(SlotTable { map: Mapping::anonymous(capacity as usize * 16)?, capacity, free: Mutex::new(Free { next_unused: 0, head: NONE }), high_water: AtomicU32::new(0) })
    }

    /// Word 0 is `generation << 1 | live`, word 1 the location (or, free, the next free slot).
    fn entry(&self, slot: u32) -> &[AtomicU64; 2] {
        assert!(slot < self.capacity, "slot {slot} beyond the table of {}", self.capacity);
        // SAFETY: the mapping holds `capacity` zeroed 16-byte entries, 8-aligned
        // (page-aligned base), alive as long as `self`; only atomics touch them.
        unsafe { &*(self.map.addr() as *const [AtomicU64; 2]).add(slot as usize) }
    }

    /// Takes a free slot; returns it and its generation, or `None` when the table is full.
    pub(super) fn take(&self) -> Option<(u32, u32)> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let slot = if free.head != NONE {
            let slot = free.head;
            free.head = self.entry(slot)[1].load(Relaxed) as u32;
            slot
        } else if free.next_unused < self.capacity {
            free.next_unused += 1;
            self.high_water.store(free.next_unused, Release);
            free.next_unused - 1
        } else {
            return None;
        };
        Some((slot, (self.entry(slot)[0].load(Relaxed) >> 1) as u32))
    }

    /// Gives back a slot from [`SlotTable::take`] that was never published.
    pub(super) fn untake(&self, slot: u32) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        self.entry(slot)[1].store(free.head as u64, Relaxed);
        free.head = slot;
    }

    /// Makes a taken slot live at `loc`: its handle may be loaded from now on.
    pub(super) fn publish(&self, slot: u32, generation: u32, loc: Loc) {
        let e = self.entry(slot);
        e[1].store(loc.0, SeqCst);
        // Release: a load that sees the slot live sees its location.
        e[0].store((generation as u64) << 1 | 1, Release);
    }

    /// The location of `handle`'s record if the handle is live.
    pub(super) fn get(&self, handle: Handle) -> Option<Loc> {
        let (slot, generation) = split(handle);
        if slot >= self.high_water.load(Acquire) {
            return None;
        }
        let e = self.entry(slot);
        (e[0].load(Acquire) == (generation as u64) << 1 | 1).then(|| Loc(e[1].load(SeqCst)))
    }

    /// The location of a live slot, read again (see the tier's `pin`).
    pub(super) fn location(&self, slot: u32) -> Loc {
        Loc(self.entry(slot)[1].load(SeqCst))
    }

    /// Locks out removes and moves, for a caller that changes counters with them.
    pub(super) fn lock(&self) -> Locked<'_> {
        Locked(self.free.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Frees `handle`'s slot; returns where its record was, or `None` (nothing
    /// changed) if the handle is not live.
    pub(super) fn remove(&self, handle: Handle, locked: &mut Locked<'_>) -> Option<Loc> {
        let (slot, generation) = split(handle);
        if slot >= self.high_water.load(Acquire) {
            return None;
        }
        let e = self.entry(slot);
        if e[0].load(Acquire) != (generation as u64) << 1 | 1 {
            return None;
        }
        let loc = Loc(e[1].load(Relaxed));
        e[0].store((((generation as u64) + 1) & GEN_MASK) << 1, SeqCst);
        e[1].store(locked.0.head as u64, SeqCst);
        locked.0.head = slot;
        Some(loc)
    }

    /// Whether live `slot` at `generation` is still at `loc`.
    pub(super) fn is_at(&self, slot: u32, generation: u32, loc: Loc, _locked: &Locked<'_>) -> bool {
        let e = self.entry(slot);
        e[0].load(Acquire) == (generation as u64) << 1 | 1 && e[1].load(Relaxed) == loc.0
    }

    /// Moves live `slot` at `generation` from `from` to `to`; false if it was
    /// removed or moved meanwhile.
    pub(super) fn relocate(&self, slot: u32, generation: u32, from: Loc, to: Loc, locked: &Locked<'_>) -> bool {
        let e = self.entry(slot);
        if !self.is_at(slot, generation, from, locked) {
            return false;
        }
        // SeqCst: a load pinning the old segment sees either this store or its pin is seen by the compactor.
        e[1].store(to.0, SeqCst);
        true
    }

    /// Calls `f(slot, generation, location)` for every live slot, without locks
    /// (entries may change meanwhile: `f` must check under the lock what it acts on).
    pub(super) fn scan(&self, mut f: impl FnMut(u32, u32, Loc)) {
        for slot in 0..self.high_water.load(Acquire) {
            let e = self.entry(slot);
            let w0 = e[0].load(Acquire);
            if w0 & 1 == 1 {
                f(slot, (w0 >> 1) as u32, Loc(e[1].load(Acquire)));
            }
        }
    }

    /// Memory the table uses: the pages of slots ever used.
    pub(super) fn bytes(&self) -> u64 {
        (self.high_water.load(Relaxed) as u64 * 16).next_multiple_of(PAGE_SIZE as u64)
    }
}
