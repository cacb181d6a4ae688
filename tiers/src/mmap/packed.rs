//! Compressed pages in an mmap tier's region: a size-class allocator inside
//! the mapping, in the manner of T1's slabs but over a region of fixed size.
//!
//! - **Slabs.** The region is cut into 64 KiB slabs (the last one may be
//!   shorter). A slab serves one size class at a time: objects of
//!   `32 * (class + 1)` bytes, 128 classes, the last (4096) for pages stored
//!   raw. Whole 64 KiB slabs leave a tail under 1.6% for the sizes lz4
//!   gives heap pages, 6% at worst. A class allocates from its slabs that are
//!   neither full nor empty; a slab whose last object goes is given back to
//!   the region's free slabs (punched out of a memfd first), for any class.
//!   Freed objects are linked through their first 4 bytes, in the region.
//! - **Pages.** A page of one repeated 8-byte word (zeros included) is kept
//!   as that word in its entry, as T1 does. Any other page is compressed with
//!   the tier's codec (T1's, one zstd context per thread); if that does not
//!   bring it under 4064 bytes (the largest class below a page) it is stored
//!   raw. Nothing is refused for compressing poorly: this is a spill tier.
//! - **Entries.** A handle is an entry (32 bits) and its 24-bit generation,
//!   bumped on remove. An entry is two words in an anonymous mapping of the
//!   tier's own (RAM, never the region or the heap): word 0 is
//!   `generation << 3 | kind << 1 | live`, word 1 the object's region offset
//!   and length, or the fill word. The table reserves 16 bytes per 256
//!   bytes of region (at most 2^28 entries), so a region holds at most 16
//!   pages per 4 KiB of its size: beyond that, as at the end of the region,
//!   a store fails with `TierError::Full` and changes nothing.
//! - **Concurrency.** `load` takes no lock and allocates nothing: one atomic
//!   read of each entry word and a decode straight from the region (no I/O
//!   call: the region is memory). `store` compresses with no lock held, then
//!   takes the allocator mutex to pick an object and an entry, and copies
//!   after letting it go. `remove` takes it to give them back. Objects never
//!   move: there is no compaction, so after scattered removes a class may
//!   keep partly used slabs, which its next stores fill first.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::Mutex;

use crate::compressed::codec::{self, Encoding, SCRATCH_BYTES};
use crate::mem::Mapping;
use crate::{Codec, Handle, Page, TierError, PAGE_SIZE};

/// Bytes of a slab.
pub(super) const SLAB: usize = 64 << 10;
const STEP: usize = 32;
const CLASSES: usize = PAGE_SIZE / STEP;
const NONE: u32 = u32::MAX;
const SLOT_BITS: u32 = 32;
const GEN_MASK: u64 = (1 << (Handle::BITS - SLOT_BITS)) - 1;
/// The kind (word 0, bits 1-2) of a fill entry; objects use [`Encoding`]'s numbers.
const FILL: u64 = 3;
/// What a fill page counts in `bytes_compressed`: the word kept.
const FILL_BYTES: u64 = 8;
const MAX_ENTRIES: u64 = 1 << 28;

/// The class of an object of `len` bytes (1..=PAGE_SIZE).
fn class_of(len: usize) -> usize {
    len.div_ceil(STEP) - 1
}

fn class_size(class: usize) -> usize {
    (class + 1) * STEP
}

/// One slab's bookkeeping, in the metadata mapping; touched only under the
/// allocator mutex.
#[repr(C)]
struct SlabMeta {
    /// Its class, or NONE while free.
    class: u32,
    /// Live objects.
    used: u32,
    /// Objects it holds.
    cap: u32,
    /// Objects at and past this one were never handed out.
    bump: u32,
    /// The last freed object (its index), linked through its first 4 bytes.
    free_head: u32,
    /// Neighbours on its class's list of part-used slabs, or on the free list.
    next: u32,
    prev: u32,
    _pad: u32,
}

/// What the allocator mutex guards (besides the slab metadata).
struct Alloc {
    /// Each class's part-used slabs.
    heads: [u32; CLASSES],
    /// Slabs below this have been used at least once.
    next_slab: u32,
    /// Freed slabs, linked through `SlabMeta::next`.
    free_slabs: u32,
    /// Entries below this have been used at least once.
    next_entry: u32,
    /// Freed entries, linked through word 1.
    free_entries: u32,
}

/// Counters of a packed region.
#[derive(Default)]
pub(super) struct PackedCounts {
    pub(super) pages: AtomicU64,
    pub(super) zero_pages: AtomicU64,
    pub(super) same_filled_pages: AtomicU64,
    pub(super) bytes_compressed: AtomicU64,
    /// Region bytes of the slabs in use.
    pub(super) slab_bytes: AtomicU64,
}

/// The allocator and entry table of a compressed mmap tier. The region
/// itself belongs to the tier: each call gets its first byte.
pub(super) struct Packed {
    codec: Codec,
    region_len: usize,
    slabs: u32,
    meta: Mapping,
    entries: Mapping,
    entry_cap: u32,
    /// Entries below this may be live; loads of others are refused unread.
    high_water: AtomicU32,
    alloc: Mutex<Alloc>,
    pub(super) counts: PackedCounts,
}

/// The word every 8 bytes of `page` repeat, if there is one.
fn fill_word(page: &Page) -> Option<u64> {
    let word = |w: &[u8]| u64::from_ne_bytes(w.try_into().expect("chunks of 8"));
    let first = word(&page[..8]);
    page.chunks_exact(8).all(|w| word(w) == first).then_some(first)
}

fn split(h: Handle) -> (u32, u64) {
    (h.raw() as u32, h.raw() >> SLOT_BITS)
}

impl Packed {
    /// The allocator for a region of `region_len` bytes (a positive multiple of 4096).
    pub(super) fn new(region_len: usize, codec: Codec) -> io::Result<Self> {
        let slabs = region_len.div_ceil(SLAB) as u32;
        let entry_cap = ((region_len / 256) as u64).clamp(1024, MAX_ENTRIES) as u32;
        Ok(Packed {
            codec,
            region_len,
            slabs,
            meta: Mapping::anonymous((slabs as usize * size_of::<SlabMeta>()).next_multiple_of(PAGE_SIZE))?,
            entries: Mapping::anonymous(entry_cap as usize * 16)?,
            entry_cap,
            high_water: AtomicU32::new(0),
            alloc: Mutex::new(Alloc { heads: [NONE; CLASSES], next_slab: 0, free_slabs: NONE, next_entry: 0, free_entries: NONE }),
            counts: PackedCounts::default(),
        })
    }

    /// The codec pages are compressed with.
    pub(super) fn codec(&self) -> Codec {
        self.codec
    }

    fn entry(&self, slot: u32) -> &[AtomicU64; 2] {
        assert!(slot < self.entry_cap, "entry {slot} beyond the table of {}", self.entry_cap);
        // SAFETY: the mapping holds `entry_cap` zeroed 16-byte entries,
        // 8-aligned (page-aligned base), alive as long as `self`; only atomics touch them.
        unsafe { &*(self.entries.addr() as *const [AtomicU64; 2]).add(slot as usize) }
    }

    /// Metadata of `slab`; the caller holds the allocator mutex (`_a`).
    #[allow(clippy::mut_from_ref)]
    fn meta(&self, slab: u32, _a: &mut Alloc) -> &mut SlabMeta {
        assert!(slab < self.slabs, "slab {slab} beyond the {} of the region", self.slabs);
        // SAFETY: the mapping holds `slabs` zeroed records (valid SlabMetas),
        // 4-aligned; the allocator mutex, which the caller proves by `_a`, gives
        // exclusive access, and no reference outlives the caller's use of it.
        unsafe { &mut *(self.meta.addr() as *mut SlabMeta).add(slab as usize) }
    }

    fn slab_len(&self, slab: u32) -> usize {
        SLAB.min(self.region_len - slab as usize * SLAB)
    }

    fn full(&self) -> TierError {
        TierError::Full { tier: super::NAME, limit_bytes: self.region_len as u64 }
    }

    /// Stores `page` in the region that starts at `base`.
    pub(super) fn store(&self, base: *mut u8, page: &Page) -> Result<Handle, TierError> {
        let mut scratch = [0u8; SCRATCH_BYTES];
        let (kind, bytes): (u64, &[u8]) = match fill_word(page) {
            Some(word) => return self.store_fill(word),
            None => match codec::compress(self.codec, page, &mut scratch).map_err(|source| TierError::Os { op: "compressing a page", source })? {
                // Below a page's class, or it saves nothing.
                Some(n) if class_of(n) < CLASSES - 1 => (Encoding::of(self.codec) as u64, &scratch[..n]),
                _ => (Encoding::Raw as u64, &page[..]),
            },
        };
        let len = bytes.len();
        let (slot, generation, offset) = {
            let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
            let (slot, generation) = self.take_entry(&mut a).ok_or_else(|| self.full())?;
            match self.take_object(&mut a, base, class_of(len)) {
                Some(offset) => (slot, generation, offset),
                None => {
                    self.give_entry(&mut a, slot);
                    return Err(self.full());
                }
            }
        };
        // SAFETY: the object at `offset` (inside the region, `class_size >= len`
        // bytes) is this store's alone: handed out above and named by no handle yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(offset), len) };
        self.publish(slot, generation, kind, (offset as u64) << 16 | len as u64);
        self.counts.bytes_compressed.fetch_add(len as u64, Relaxed);
        self.counts.pages.fetch_add(1, Relaxed);
        Ok(Handle::new(generation << SLOT_BITS | slot as u64))
    }

    fn store_fill(&self, word: u64) -> Result<Handle, TierError> {
        let (slot, generation) = {
            let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
            self.take_entry(&mut a).ok_or_else(|| self.full())?
        };
        self.publish(slot, generation, FILL, word);
        let c = &self.counts;
        if word == 0 { &c.zero_pages } else { &c.same_filled_pages }.fetch_add(1, Relaxed);
        c.bytes_compressed.fetch_add(FILL_BYTES, Relaxed);
        c.pages.fetch_add(1, Relaxed);
        Ok(Handle::new(generation << SLOT_BITS | slot as u64))
    }

    fn publish(&self, slot: u32, generation: u64, kind: u64, data: u64) {
        let e = self.entry(slot);
        e[1].store(data, Relaxed);
        // Release: a load that sees the entry live sees its data word and object.
        e[0].store(generation << 3 | kind << 1 | 1, Release);
    }

    /// Writes the page `handle` names into `out`, from the region at `base`;
    /// `path` names the backing in errors.
    pub(super) fn load(&self, base: *const u8, handle: Handle, out: &mut Page, path: &std::path::Path) -> Result<(), TierError> {
        let (slot, generation) = split(handle);
        if slot >= self.high_water.load(Acquire) {
            return Err(TierError::UnknownHandle(handle));
        }
        let e = self.entry(slot);
        let w0 = e[0].load(Acquire);
        if w0 & 1 == 0 || w0 >> 3 != generation {
            return Err(TierError::UnknownHandle(handle));
        }
        let data = e[1].load(Relaxed);
        let kind = (w0 >> 1) & 3;
        if kind == FILL {
            let word = data.to_ne_bytes();
            out.chunks_exact_mut(8).for_each(|w| w.copy_from_slice(&word));
            return Ok(());
        }
        let (offset, len) = ((data >> 16) as usize, (data & 0xffff) as usize);
        let encoding = Encoding::from_bits(kind).expect("kinds 0-2 are encodings");
        if offset + len > self.region_len || len == 0 || len > PAGE_SIZE {
            return Err(TierError::Corrupt {
                handle,
                reason: format!("entry names {len} bytes at offset {offset:#x}, outside the {} bytes of {}", self.region_len, path.display()),
            });
        }
        // SAFETY: the handle is live, so its object was written before the
        // entry was published (Release, read with Acquire above) and is neither
        // changed nor freed until the handle is removed, which its owner does
        // not do during a load (the Tier contract); it lies inside the region.
        let src = unsafe { std::slice::from_raw_parts(base.add(offset), len) };
        codec::decompress(encoding, src, out)
            .map_err(|reason| TierError::Corrupt { handle, reason: format!("object of {len} bytes at offset {offset:#x} of {}: {reason}", path.display()) })
    }

    /// Frees the page `handle` names; a handle naming no stored page is
    /// ignored. A slab left empty is handed to `punch(offset, len)` (to give
    /// its memory back) before any store can have it again.
    pub(super) fn remove(&self, base: *mut u8, handle: Handle, punch: impl FnOnce(usize, usize)) {
        let (slot, generation) = split(handle);
        if slot >= self.high_water.load(Acquire) {
            return;
        }
        let e = self.entry(slot);
        let w0 = e[0].load(Acquire);
        if w0 & 1 == 0 || w0 >> 3 != generation {
            return;
        }
        // A stale or repeated remove fails here and must not free anything twice.
        if e[0].compare_exchange(w0, ((generation + 1) & GEN_MASK) << 3, AcqRel, Relaxed).is_err() {
            return;
        }
        let data = e[1].load(Relaxed);
        let kind = (w0 >> 1) & 3;
        let c = &self.counts;
        let emptied = {
            let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
            let emptied = if kind == FILL { None } else { self.free_object(&mut a, base, (data >> 16) as usize, (data & 0xffff) as usize) };
            self.give_entry(&mut a, slot);
            emptied
        };
        if kind == FILL {
            if data == 0 { &c.zero_pages } else { &c.same_filled_pages }.fetch_sub(1, Relaxed);
            c.bytes_compressed.fetch_sub(FILL_BYTES, Relaxed);
        } else {
            c.bytes_compressed.fetch_sub(data & 0xffff, Relaxed);
        }
        c.pages.fetch_sub(1, Relaxed);
        if let Some(slab) = emptied {
            // Off every list meanwhile, so no store writes into it while it is punched.
            punch(slab as usize * SLAB, self.slab_len(slab));
            let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
            let head = a.free_slabs;
            self.meta(slab, &mut a).next = head;
            a.free_slabs = slab;
        }
    }

    fn take_entry(&self, a: &mut Alloc) -> Option<(u32, u64)> {
        let slot = if a.free_entries != NONE {
            let slot = a.free_entries;
            a.free_entries = self.entry(slot)[1].load(Relaxed) as u32;
            slot
        } else if a.next_entry < self.entry_cap {
            a.next_entry += 1;
            self.high_water.store(a.next_entry, Release);
            a.next_entry - 1
        } else {
            return None;
        };
        Some((slot, self.entry(slot)[0].load(Relaxed) >> 3))
    }

    fn give_entry(&self, a: &mut Alloc, slot: u32) {
        self.entry(slot)[1].store(a.free_entries as u64, Relaxed);
        a.free_entries = slot;
    }

    /// Hands out an object of `class`: its region offset, or `None` when no
    /// slab of the class has room and no slab is free.
    fn take_object(&self, a: &mut Alloc, base: *mut u8, class: usize) -> Option<usize> {
        let size = class_size(class);
        let mut slab = a.heads[class];
        if slab == NONE {
            slab = if a.free_slabs != NONE {
                let s = a.free_slabs;
                a.free_slabs = self.meta(s, a).next;
                s
            } else if a.next_slab < self.slabs {
                a.next_slab += 1;
                a.next_slab - 1
            } else {
                return None;
            };
            // Every slab is a multiple of 4096 bytes long, so holds one object at least.
            let cap = (self.slab_len(slab) / size) as u32;
            *self.meta(slab, a) = SlabMeta { class: class as u32, used: 0, cap, bump: 0, free_head: NONE, next: NONE, prev: NONE, _pad: 0 };
            self.counts.slab_bytes.fetch_add(self.slab_len(slab) as u64, Relaxed);
            self.push(a, class, slab);
        }
        let m = self.meta(slab, a);
        let index = if m.free_head != NONE {
            let index = m.free_head;
            // SAFETY: a freed object of this slab, inside the region; its first
            // 4 bytes were written by `free_object` and nothing reads them now.
            m.free_head = unsafe { base.add(slab as usize * SLAB + index as usize * size).cast::<u32>().read_unaligned() };
            index
        } else {
            m.bump += 1;
            m.bump - 1
        };
        m.used += 1;
        if m.used == m.cap {
            self.unlink(a, class, slab);
        }
        Some(slab as usize * SLAB + index as usize * size)
    }

    /// Frees the object at `offset` of `len` bytes; the slab, if that left it empty.
    fn free_object(&self, a: &mut Alloc, base: *mut u8, offset: usize, len: usize) -> Option<u32> {
        let (slab, class) = ((offset / SLAB) as u32, class_of(len));
        let index = ((offset % SLAB) / class_size(class)) as u32;
        let m = self.meta(slab, a);
        assert_eq!(m.class, class as u32, "object at {offset:#x} of {len} bytes in a slab of class {}", m.class);
        let was_full = m.used == m.cap;
        m.used -= 1;
        let used = m.used;
        if used == 0 {
            if !was_full {
                self.unlink(a, class, slab);
            }
            self.meta(slab, a).class = NONE;
            self.counts.slab_bytes.fetch_sub(self.slab_len(slab) as u64, Relaxed);
            return Some(slab);
        }
        // SAFETY: the object is inside the region and was just freed; nothing
        // reads it until `take_object` hands it out again, under this mutex.
        unsafe { base.add(offset).cast::<u32>().write_unaligned(m.free_head) };
        let m = self.meta(slab, a);
        m.free_head = index;
        if was_full {
            self.push(a, class, slab);
        }
        None
    }

    fn push(&self, a: &mut Alloc, class: usize, slab: u32) {
        let head = a.heads[class];
        let m = self.meta(slab, a);
        m.next = head;
        m.prev = NONE;
        if head != NONE {
            self.meta(head, a).prev = slab;
        }
        a.heads[class] = slab;
    }

    fn unlink(&self, a: &mut Alloc, class: usize, slab: u32) {
        let m = self.meta(slab, a);
        let (next, prev) = (m.next, m.prev);
        m.next = NONE;
        m.prev = NONE;
        if prev != NONE {
            self.meta(prev, a).next = next;
        } else {
            a.heads[class] = next;
        }
        if next != NONE {
            self.meta(next, a).prev = prev;
        }
    }

    /// RAM the tier keeps beside the region: the entry table and slab
    /// metadata, as far as they were ever touched.
    pub(super) fn metadata_bytes(&self) -> u64 {
        let table = (self.high_water.load(Relaxed) as u64 * 16).next_multiple_of(PAGE_SIZE as u64);
        let slabs = self.alloc.lock().unwrap_or_else(|e| e.into_inner()).next_slab as u64;
        table + (slabs * size_of::<SlabMeta>() as u64).next_multiple_of(PAGE_SIZE as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_fill_slabs_and_empty_slabs_are_punched_and_reused() {
        // Three slabs, the last 4 KiB long.
        let len = 2 * SLAB + 4096;
        let region = Mapping::anonymous(len).unwrap();
        let p = Packed::new(len, Codec::Lz4).unwrap();
        let mut raw = [0u8; PAGE_SIZE];
        let mut x = 1u64;
        let mut random = |out: &mut Page| {
            for c in out.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
        };
        // Raw pages: 16 per 64 KiB slab and 1 in the last: 33 in all, then full.
        let mut held = Vec::new();
        let mut pages = Vec::new();
        loop {
            random(&mut raw);
            match p.store(region.addr(), &raw) {
                Ok(h) => {
                    held.push(h);
                    pages.push(raw);
                }
                Err(TierError::Full { limit_bytes, .. }) => {
                    assert_eq!(limit_bytes, len as u64);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(held.len(), 33);
        assert_eq!(p.counts.slab_bytes.load(Relaxed), len as u64);
        // A fill page needs no region space, so it still fits.
        let zero = p.store(region.addr(), &[0; PAGE_SIZE]).unwrap();
        let mut out = [1u8; PAGE_SIZE];
        p.load(region.addr(), zero, &mut out, "test".as_ref()).unwrap();
        assert_eq!(out, [0; PAGE_SIZE]);
        // Emptying the middle slab punches it, once, and its room comes back.
        let mut punched = Vec::new();
        for h in &held[16..32] {
            p.remove(region.addr(), *h, |o, l| punched.push((o, l)));
        }
        assert_eq!(punched, vec![(SLAB, SLAB)]);
        p.remove(region.addr(), held[16], |_, _| panic!("a second remove frees nothing"));
        for (i, h) in held.iter().enumerate().filter(|(i, _)| !(16..32).contains(i)) {
            p.load(region.addr(), *h, &mut out, "test".as_ref()).unwrap();
            assert!(out == pages[i], "page {i}");
        }
        assert!(matches!(p.load(region.addr(), held[20], &mut out, "test".as_ref()), Err(TierError::UnknownHandle(_))));
        let again: Vec<_> = (0..16).map(|_| p.store(region.addr(), &pages[0]).unwrap()).collect();
        assert!(p.store(region.addr(), &pages[0]).is_err(), "full again");
        for h in again {
            p.load(region.addr(), h, &mut out, "test".as_ref()).unwrap();
            assert!(out == pages[0]);
        }
    }

    #[test]
    fn a_class_reuses_freed_objects_before_taking_a_slab() {
        let region = Mapping::anonymous(4 * SLAB).unwrap();
        let p = Packed::new(4 * SLAB, Codec::Lz4).unwrap();
        let mut page = [0u8; PAGE_SIZE];
        for (i, b) in page.iter_mut().enumerate() {
            *b = (i % 97) as u8;
        }
        let hs: Vec<_> = (0..10).map(|_| p.store(region.addr(), &page).unwrap()).collect();
        let one = p.counts.slab_bytes.load(Relaxed);
        assert_eq!(one, SLAB as u64);
        for h in &hs[2..8] {
            p.remove(region.addr(), *h, |_, _| panic!("the slab is not empty"));
        }
        let more: Vec<_> = (0..6).map(|_| p.store(region.addr(), &page).unwrap()).collect();
        assert_eq!(p.counts.slab_bytes.load(Relaxed), one, "the holes were reused");
        let mut out = [0u8; PAGE_SIZE];
        for h in hs[..2].iter().chain(&hs[8..]).chain(&more) {
            p.load(region.addr(), *h, &mut out, "test".as_ref()).unwrap();
            assert!(out == page);
        }
    }
}
