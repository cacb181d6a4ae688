//! The handle table: one 16-byte entry per stored page, in memory the tier maps.
//!
//! A [`Handle`] is an entry index (low 32 bits) and the entry's generation
//! (next 16 bits). The generation changes each time an entry is freed, so a
//! handle that was removed, even if its entry has been reused since, is
//! refused instead of loading another page's bytes (hard rule 1), up to the
//! 16-bit wrap.
//!
//! Entry word 0, published last with Release and read first with Acquire; it
//! changes while the page is stored only when compaction moves the object,
//! by compare-and-swap, which is also how an entry is freed, so a move and a
//! remove of the same entry cannot both win:
//!
//! | bits  | field                                              |
//! |-------|----------------------------------------------------|
//! | 0-1   | kind: free, fill, object                           |
//! | 2-3   | object encoding (lz4, zstd, raw)                   |
//! | 4-16  | object length in bytes (1-4096)                    |
//! | 17-47 | object offset in the slab area, in 32-byte units   |
//! | 48-63 | generation                                         |
//!
//! Word 1: the fill word of a fill page, or the next free entry of a free one.
//!
//! The table grows by touching pages of its reservation and never shrinks:
//! freed entries are reused first (last freed, first reused), so its size is
//! the high-water mark of pages held at once, 16 bytes each.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use super::budget::Budget;
use super::codec::Encoding;
use crate::mem::Mapping;
use crate::{Handle, PAGE_SIZE};

/// What an entry says about its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Entry {
    /// Every 8-byte word of the page is this one.
    Fill(u64),
    /// The page is an object in the slab area.
    Object {
        /// How to decode it.
        encoding: Encoding,
        /// Its length in bytes.
        len: usize,
        /// Its byte offset in the slab area.
        offset: usize,
    },
}

const ENTRY_BYTES: usize = 16;
const ENTRIES_PER_PAGE: u32 = (PAGE_SIZE / ENTRY_BYTES) as u32;
/// The most entries a table can have: 16 GiB of address space.
pub(super) const MAX_ENTRIES: u32 = 1 << 30;
/// Objects are 32-byte aligned and the slab area is at most 64 GiB: 31 bits.
pub(super) const MAX_OFFSET: usize = (1 << 36) - 1;
const NONE: u32 = u32::MAX;

const KIND_MASK: u64 = 0b11;
const KIND_FREE: u64 = 0;
const KIND_FILL: u64 = 1;
const KIND_OBJECT: u64 = 2;
const GEN_SHIFT: u32 = 48;
const OFFSET_SHIFT: u32 = 17;
const OFFSET_MASK: u64 = 0x7fff_ffff << OFFSET_SHIFT;

/// The length and offset of the object word 0 names, if it names one.
pub(super) fn object_of(w0: u64) -> Option<(usize, usize)> {
    match decode(w0, 0)? {
        Entry::Object { len, offset, .. } => Some((len, offset)),
        Entry::Fill(_) => None,
    }
}

fn generation(w0: u64) -> u16 {
    (w0 >> GEN_SHIFT) as u16
}

fn encode(entry: Entry, gen: u16) -> (u64, u64) {
    let g = (gen as u64) << GEN_SHIFT;
    match entry {
        Entry::Fill(word) => (KIND_FILL | g, word),
        Entry::Object { encoding, len, offset } => {
            assert!((1..=PAGE_SIZE).contains(&len), "object of {len} bytes");
            assert!(offset.is_multiple_of(32) && offset <= MAX_OFFSET, "object offset {offset:#x} not 32-aligned below 64 GiB");
            (KIND_OBJECT | (encoding as u64) << 2 | (len as u64) << 4 | ((offset / 32) as u64) << OFFSET_SHIFT | g, 0)
        }
    }
}

fn decode(w0: u64, w1: u64) -> Option<Entry> {
    match w0 & KIND_MASK {
        KIND_FILL => Some(Entry::Fill(w1)),
        KIND_OBJECT => Some(Entry::Object {
            encoding: Encoding::from_bits((w0 >> 2) & 0b11)?,
            len: ((w0 >> 4) & 0x1fff) as usize,
            offset: (((w0 & OFFSET_MASK) >> OFFSET_SHIFT) * 32) as usize,
        }),
        _ => None,
    }
}

fn split(handle: Handle) -> (u32, u16) {
    (handle.raw() as u32, (handle.raw() >> 32) as u16)
}

struct FreeList {
    /// Entries below this have been used at least once.
    next_unused: u32,
    /// The last freed entry, linking through word 1.
    head: u32,
}

/// The table of entries, indexed by handle.
pub(super) struct HandleTable {
    map: Mapping,
    capacity: u32,
    free: Mutex<FreeList>,
    /// A copy of `next_unused` for [`HandleTable::bytes`] without the lock.
    high_water: AtomicU32,
}

impl HandleTable {
    /// Reserves room for `capacity` entries (at most [`MAX_ENTRIES`]); no
    /// memory is used until entries are.
    pub(super) fn new(capacity: u32) -> io::Result<Self> {
        let capacity = capacity.clamp(ENTRIES_PER_PAGE, MAX_ENTRIES).next_multiple_of(ENTRIES_PER_PAGE);
        Ok(HandleTable {
            map: Mapping::anonymous(capacity as usize * ENTRY_BYTES)?,
            capacity,
            free: Mutex::new(FreeList { next_unused: 0, head: NONE }),
            high_water: AtomicU32::new(0),
        })
    }

    fn slot(&self, index: u32) -> &[AtomicU64; 2] {
        assert!(index < self.capacity, "handle entry {index} beyond the table of {}", self.capacity);
        // SAFETY: the mapping holds `capacity` 16-byte entries, zeroed by the
        // kernel, 8-aligned (page-aligned base), alive as long as `self`;
        // AtomicU64 has the layout of u64 and every access goes through atomics.
        unsafe { &*(self.map.addr() as *const [AtomicU64; 2]).add(index as usize) }
    }

    /// Stores `entry` in a free slot; `None` when the budget or the table has
    /// no room for it.
    pub(super) fn insert(&self, entry: Entry, budget: &Budget) -> Option<Handle> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let index = if free.head != NONE {
            let index = free.head;
            free.head = self.slot(index)[1].load(Ordering::Relaxed) as u32;
            index
        } else {
            let index = free.next_unused;
            if index >= self.capacity {
                return None;
            }
            if index.is_multiple_of(ENTRIES_PER_PAGE) && !budget.charge(PAGE_SIZE as u64) {
                return None;
            }
            free.next_unused += 1;
            self.high_water.store(free.next_unused, Ordering::Relaxed);
            index
        };
        let slot = self.slot(index);
        let gen = generation(slot[0].load(Ordering::Relaxed));
        let (w0, w1) = encode(entry, gen);
        slot[1].store(w1, Ordering::Relaxed);
        // Release: whoever reads word 0 with Acquire sees word 1 and the
        // object bytes written before this store.
        slot[0].store(w0, Ordering::Release);
        Some(Handle::new(index as u64 | (gen as u64) << 32))
    }

    /// The entry `handle` names, if it names a live one. Takes no lock: the
    /// runtime does not remove a handle while loading it, and compaction
    /// keeps a moved object's old copy until loads that may have read the old
    /// offset are over. SeqCst, because a compaction must see either this
    /// read's new offset or the load's entry into the reader gate.
    pub(super) fn get(&self, handle: Handle) -> Option<Entry> {
        let (index, gen) = split(handle);
        if index >= self.capacity || handle.raw() >> 48 != 0 {
            return None;
        }
        let slot = self.slot(index);
        let w0 = slot[0].load(Ordering::SeqCst);
        if generation(w0) != gen {
            return None;
        }
        decode(w0, slot[1].load(Ordering::Relaxed))
    }

    /// Frees the entry `handle` names and returns what it held; `None` (and
    /// nothing changed) when the handle names no live entry.
    pub(super) fn take(&self, handle: Handle) -> Option<Entry> {
        let (index, gen) = split(handle);
        if index >= self.capacity || handle.raw() >> 48 != 0 {
            return None;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let slot = self.slot(index);
        // A compaction may move the object meanwhile: retry with its new word.
        let entry = loop {
            let w0 = slot[0].load(Ordering::Acquire);
            if generation(w0) != gen {
                return None;
            }
            let entry = decode(w0, slot[1].load(Ordering::Relaxed))?;
            let freed = KIND_FREE | (gen.wrapping_add(1) as u64) << GEN_SHIFT;
            if slot[0].compare_exchange(w0, freed, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                break entry;
            }
        };
        slot[1].store(free.head as u64, Ordering::Relaxed);
        free.head = index;
        Some(entry)
    }

    /// Calls `f(index, word 0)` for every entry ever used, in order, without
    /// locks: entries may change meanwhile, so `f` must check what it acts on.
    pub(super) fn scan(&self, mut f: impl FnMut(u32, u64)) {
        for index in 0..self.high_water.load(Ordering::Acquire) {
            f(index, self.slot(index)[0].load(Ordering::Acquire));
        }
    }

    /// Points entry `index` at `offset` if its word 0 is still `expected` (an
    /// object); false if the entry changed (its page was removed).
    pub(super) fn relocate(&self, index: u32, expected: u64, offset: usize) -> bool {
        debug_assert_eq!(expected & KIND_MASK, KIND_OBJECT);
        assert!(offset.is_multiple_of(32) && offset <= MAX_OFFSET, "object offset {offset:#x} not 32-aligned below 64 GiB");
        let moved = (expected & !OFFSET_MASK) | ((offset / 32) as u64) << OFFSET_SHIFT;
        // SeqCst: see `get`; a load that reads `expected` is seen by the
        // compaction's wait for the reader gate.
        self.slot(index)[0].compare_exchange(expected, moved, Ordering::SeqCst, Ordering::Relaxed).is_ok()
    }

    /// Memory the table uses: the pages of entries ever used.
    pub(super) fn bytes(&self) -> u64 {
        (self.high_water.load(Ordering::Relaxed) as u64 * ENTRY_BYTES as u64).next_multiple_of(PAGE_SIZE as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_encode_and_decode_exactly() {
        for entry in [
            Entry::Fill(0),
            Entry::Fill(u64::MAX),
            Entry::Object { encoding: Encoding::Lz4, len: 1, offset: 0 },
            Entry::Object { encoding: Encoding::Zstd, len: 3071, offset: 32 * 12345 },
            Entry::Object { encoding: Encoding::Raw, len: PAGE_SIZE, offset: MAX_OFFSET + 1 - 32 },
        ] {
            for gen in [0, 1, u16::MAX] {
                let (w0, w1) = encode(entry, gen);
                assert_eq!(decode(w0, w1), Some(entry));
                assert_eq!(generation(w0), gen);
            }
        }
    }

    #[test]
    fn a_removed_handle_stays_refused_after_its_entry_is_reused() {
        let budget = Budget::new(1 << 20);
        let t = HandleTable::new(1000).unwrap();
        let a = t.insert(Entry::Fill(7), &budget).unwrap();
        assert_eq!(budget.used(), PAGE_SIZE as u64);
        assert_eq!(t.get(a), Some(Entry::Fill(7)));
        assert_eq!(t.take(a), Some(Entry::Fill(7)));
        assert_eq!(t.get(a), None);
        assert_eq!(t.take(a), None);
        let b = t.insert(Entry::Fill(8), &budget).unwrap();
        assert_eq!(a.raw() as u32, b.raw() as u32, "the freed entry is reused");
        assert_ne!(a, b);
        assert_eq!(t.get(a), None);
        assert_eq!(t.take(a), None);
        assert_eq!(t.get(b), Some(Entry::Fill(8)));
        assert_eq!(t.get(Handle::new(Handle::MAX)), None);
        assert_eq!(t.bytes(), PAGE_SIZE as u64);
    }

    #[test]
    fn relocation_and_removal_cannot_both_win() {
        let budget = Budget::new(1 << 20);
        let t = HandleTable::new(1000).unwrap();
        let obj = Entry::Object { encoding: Encoding::Lz4, len: 100, offset: 64 };
        let h = t.insert(obj, &budget).unwrap();
        let mut seen = Vec::new();
        t.scan(|i, w0| seen.push((i, object_of(w0))));
        assert_eq!(seen, vec![(h.raw() as u32, Some((100, 64)))]);
        let w0 = t.slot(h.raw() as u32)[0].load(Ordering::Relaxed);
        assert!(t.relocate(h.raw() as u32, w0, 4096));
        assert_eq!(t.get(h), Some(Entry::Object { encoding: Encoding::Lz4, len: 100, offset: 4096 }));
        assert!(!t.relocate(h.raw() as u32, w0, 8192), "stale word");
        assert_eq!(t.take(h), Some(Entry::Object { encoding: Encoding::Lz4, len: 100, offset: 4096 }));
        let w0 = encode(Entry::Object { encoding: Encoding::Lz4, len: 100, offset: 4096 }, 0).0;
        assert!(!t.relocate(h.raw() as u32, w0, 8192), "a removed entry is not moved");
        assert_eq!(t.get(h), None);
    }

    #[test]
    fn the_table_grows_a_page_at_a_time_within_the_budget() {
        let budget = Budget::new(2 * PAGE_SIZE as u64);
        let t = HandleTable::new(10_000).unwrap();
        let held: Vec<_> = (0..2 * ENTRIES_PER_PAGE).map(|i| t.insert(Entry::Fill(i as u64), &budget).unwrap()).collect();
        assert_eq!(t.insert(Entry::Fill(0), &budget), None, "a third page is over budget");
        assert_eq!(t.bytes(), 2 * PAGE_SIZE as u64);
        t.take(held[5]).unwrap();
        let again = t.insert(Entry::Fill(99), &budget).unwrap();
        assert_eq!(again.raw() as u32, 5);
        for (i, h) in held.iter().enumerate().filter(|(i, _)| *i != 5) {
            assert_eq!(t.get(*h), Some(Entry::Fill(i as u64)));
        }
    }
}
