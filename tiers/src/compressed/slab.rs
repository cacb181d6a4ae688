//! The size-class allocator for compressed objects, in the manner of zsmalloc.
//!
//! An object of `len` bytes goes to class `ceil(len / 32) - 1`, whose objects
//! are `32 * (class + 1)` bytes: 128 classes, the last one (4096) holding raw
//! pages. Each class cuts its objects out of slabs of 4 to 16 pages, the size
//! chosen per class to leave the smallest tail (for objects up to the default
//! threshold of 3072 bytes: 0.3% of a slab on average, 1.6% at worst, against
//! 1.1% and 4.7% for a fixed 64 KiB).
//!
//! Slabs sit in 64 KiB strides of one reserved mapping; a slab uses the front
//! of its stride and the rest is never touched, so costs no memory. Slab
//! metadata lives in a second mapping, one 32-byte record per stride.
//!
//! A class keeps its slabs that are neither full nor empty in four lists by
//! fullness (up to 1/4, 1/2, 3/4, under full) and allocates from the fullest,
//! so that sparse slabs drain. A slab whose last object is freed goes back to
//! the kernel (`MADV_DONTNEED`) and its stride to a free list for any class.
//!
//! Compaction (driven by `CompressedTier::compact`) moves objects out of the
//! sparsest slabs of a class into the free slots of its fuller ones:
//! [`SlabArena::begin_evacuation`] takes as many of the sparsest slabs off the
//! allocation lists as the others have room for and marks them evacuating;
//! [`SlabArena::relocate`] moves one object (the caller rewrites its handle
//! entry); [`SlabArena::release_retired`] gives back the emptied slabs once no
//! load can still be reading them. A vacated slot is never written before
//! then, so a load that read the old address decodes the old bytes intact.
//! An evacuating slab that could not be emptied (no room appeared, the limit
//! was reached) stays evacuating, allocates nothing, and is finished by the
//! next compaction.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use super::budget::Budget;
use crate::mem::Mapping;
use crate::PAGE_SIZE;

/// Size-class granularity in bytes.
pub(super) const STEP: usize = 32;
/// Classes of `STEP` steps up to a page.
pub(super) const CLASSES: usize = PAGE_SIZE / STEP;
/// The address space given to each slab; slabs use at most this much of it.
pub(super) const STRIDE: usize = 64 << 10;
/// The fewest pages a slab has.
pub(super) const MIN_SLAB_PAGES: usize = 4;
const MAX_SLAB_PAGES: usize = STRIDE / PAGE_SIZE;
/// Fullness lists a class allocates from.
const GROUPS: usize = 4;
/// `SlabMeta::group` of an evacuating slab; also the index of its list.
const EVACUATING: u8 = GROUPS as u8;
const LISTS: usize = GROUPS + 1;
/// `SlabMeta::group` of a full slab, on no list.
const FULL: u8 = GROUPS as u8 + 1;
/// `SlabMeta::group` of a slab not in use by any class.
const UNUSED: u8 = GROUPS as u8 + 2;
/// `SlabMeta::group` of an emptied evacuating slab awaiting release, on the
/// class's retired list (linked through `next`).
const RETIRED: u8 = GROUPS as u8 + 3;
const NONE: u32 = u32::MAX;

/// The shape of one size class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Geometry {
    /// Object size in bytes.
    pub size: u32,
    /// Bytes of each slab of this class.
    pub slab_bytes: u32,
    /// Objects in each slab.
    pub per_slab: u32,
}

/// The class that holds objects of `len` bytes (1..=PAGE_SIZE).
pub(super) fn class_of(len: usize) -> usize {
    debug_assert!((1..=PAGE_SIZE).contains(&len), "object of {len} bytes");
    len.div_ceil(STEP) - 1
}

/// The slab size for `class`: the fewest pages leaving the smallest tail.
pub(super) const fn geometry(class: usize) -> Geometry {
    let size = (class + 1) * STEP;
    let mut best = MIN_SLAB_PAGES;
    let mut pages = MIN_SLAB_PAGES;
    while pages <= MAX_SLAB_PAGES {
        // Compare tails as fractions of their slabs: tail_p / p < tail_b / b.
        let tail = (pages * PAGE_SIZE) % size;
        let best_tail = (best * PAGE_SIZE) % size;
        if tail * best < best_tail * pages {
            best = pages;
        }
        pages += 1;
    }
    let slab_bytes = best * PAGE_SIZE;
    Geometry { size: size as u32, slab_bytes: slab_bytes as u32, per_slab: (slab_bytes / size) as u32 }
}

const GEOMETRY: [Geometry; CLASSES] = {
    let mut g = [Geometry { size: 0, slab_bytes: 0, per_slab: 0 }; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        g[c] = geometry(c);
        c += 1;
    }
    g
};

/// Which fullness list a slab with `used` of `per` objects belongs on.
fn group(used: u32, per: u32) -> u8 {
    if used == per {
        FULL
    } else {
        ((used as usize * GROUPS - 1) / per as usize) as u8
    }
}

/// Bookkeeping for one stride, in the metadata mapping.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct SlabMeta {
    /// Live objects.
    used: u32,
    /// First freed slot; each free slot holds the next one in its first 4 bytes.
    free_head: u32,
    /// Slots at and past this one were never handed out.
    bump: u32,
    next: u32,
    prev: u32,
    class: u16,
    group: u8,
}

const META_BYTES: usize = std::mem::size_of::<SlabMeta>();
const METAS_PER_PAGE: u32 = (PAGE_SIZE / META_BYTES) as u32;

#[derive(Clone, Copy)]
struct ClassLists {
    /// Heads of the fullness lists, then of the evacuating list.
    heads: [u32; LISTS],
    /// Emptied evacuating slabs, to release after a grace period.
    retired: u32,
}

struct StridePool {
    next_unused: u32,
    free_head: u32,
}

/// What [`SlabArena::free`] leaves to do after the class lock is dropped.
#[must_use]
pub(super) struct EmptySlab(Option<u32>);

/// Memory the arena holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(super) struct ArenaUse {
    pub slabs: u64,
    pub slab_bytes: u64,
    pub meta_bytes: u64,
}

/// What became of one object [`SlabArena::relocate`] was asked to move.
#[must_use]
pub(super) enum Relocation {
    /// Moved; its old slot is vacated.
    Moved,
    /// Not in an evacuating slab (any more): left where it is.
    Stayed,
    /// Its entry changed meanwhile (the page was removed): left where it is;
    /// the destination was freed again and this must go to `release`.
    Raced(EmptySlab),
    /// No room for it without passing the limit.
    NoRoom,
}

/// All slabs of one tier.
pub(super) struct SlabArena {
    slabs: Mapping,
    meta: Mapping,
    /// One bit per stride, set while its slab is evacuating, so that a scan
    /// of the handle table can skip other objects without taking locks.
    evacuating: Mapping,
    strides: u32,
    classes: [Mutex<ClassLists>; CLASSES],
    pool: Mutex<StridePool>,
    live_slabs: AtomicU64,
    slab_bytes: AtomicU64,
    meta_bytes: AtomicU64,
}

impl SlabArena {
    /// Reserves `strides` slabs' worth of address space (at most 64 GiB).
    pub(super) fn new(strides: u32) -> io::Result<Self> {
        let strides = strides.clamp(1, ((super::handles::MAX_OFFSET + 1) / STRIDE) as u32);
        Ok(SlabArena {
            slabs: Mapping::anonymous(strides as usize * STRIDE)?,
            meta: Mapping::anonymous((strides as usize * META_BYTES).next_multiple_of(PAGE_SIZE))?,
            evacuating: Mapping::anonymous((strides as usize).div_ceil(8).next_multiple_of(PAGE_SIZE))?,
            strides,
            classes: std::array::from_fn(|_| Mutex::new(ClassLists { heads: [NONE; LISTS], retired: NONE })),
            pool: Mutex::new(StridePool { next_unused: 0, free_head: NONE }),
            live_slabs: AtomicU64::new(0),
            slab_bytes: AtomicU64::new(0),
            meta_bytes: AtomicU64::new(0),
        })
    }

    /// Metadata of `slab`. Callers hold the lock of the class owning it, or the
    /// pool lock for a slab no class owns.
    #[allow(clippy::mut_from_ref)]
    fn meta(&self, slab: u32) -> &mut SlabMeta {
        assert!(slab < self.strides, "slab {slab} beyond the {} reserved", self.strides);
        // SAFETY: the mapping holds `strides` records, zeroed by the kernel (a
        // valid SlabMeta) and 32-aligned; exclusive access comes from the lock
        // the caller holds (see above), and no reference outlives that lock.
        unsafe { &mut *(self.meta.addr() as *mut SlabMeta).add(slab as usize) }
    }

    /// The first byte of the object at `offset`.
    pub(super) fn object(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(offset + len <= self.slabs.len(), "object {offset:#x}+{len} beyond the slab area");
        // SAFETY: checked just above to lie inside the mapping.
        unsafe { self.slabs.addr().add(offset) }
    }

    fn unlink(&self, slab: u32, lists: &mut ClassLists) {
        let m = self.meta(slab);
        let (next, prev, list) = (m.next, m.prev, m.group as usize);
        if list < LISTS {
            if prev != NONE {
                self.meta(prev).next = next;
            } else {
                lists.heads[list] = next;
            }
            if next != NONE {
                self.meta(next).prev = prev;
            }
        }
        let m = self.meta(slab);
        m.next = NONE;
        m.prev = NONE;
    }

    /// Moves `slab` to the list (or state) `group`.
    fn set_group(&self, slab: u32, group: u8, lists: &mut ClassLists) {
        self.unlink(slab, lists);
        self.meta(slab).group = group;
        if (group as usize) < LISTS {
            let head = lists.heads[group as usize];
            let m = self.meta(slab);
            m.next = head;
            m.prev = NONE;
            if head != NONE {
                self.meta(head).prev = slab;
            }
            lists.heads[group as usize] = slab;
        }
    }

    fn regroup(&self, slab: u32, lists: &mut ClassLists, per: u32) {
        let m = self.meta(slab);
        let new = group(m.used, per);
        if new != m.group {
            self.set_group(slab, new, lists);
        }
    }

    /// Finds room for an object of `len` bytes; its offset in the slab area,
    /// or `None` when the budget or the reservation has no room for a slab.
    pub(super) fn alloc(&self, len: usize, budget: &Budget) -> Option<usize> {
        let class = class_of(len);
        let mut lists = self.classes[class].lock().unwrap_or_else(|e| e.into_inner());
        self.alloc_locked(class, &mut lists, budget)
    }

    fn alloc_locked(&self, class: usize, lists: &mut ClassLists, budget: &Budget) -> Option<usize> {
        let g = GEOMETRY[class];
        let slab = match lists.heads[..GROUPS].iter().rev().find(|&&h| h != NONE) {
            Some(&slab) => slab,
            None => {
                let slab = self.take_stride(g.slab_bytes, budget)?;
                *self.meta(slab) = SlabMeta { used: 0, free_head: NONE, bump: 0, next: NONE, prev: NONE, class: class as u16, group: FULL };
                slab
            }
        };
        let base = slab as usize * STRIDE;
        let m = self.meta(slab);
        debug_assert_eq!(m.class as usize, class);
        let slot = if m.free_head != NONE {
            let slot = m.free_head;
            let at = self.object(base + slot as usize * g.size as usize, 4);
            // SAFETY: a free slot holds the next free slot's index in its first
            // 4 bytes, written by `free` under this class lock.
            m.free_head = unsafe { (at as *const u32).read_unaligned() };
            slot
        } else {
            m.bump += 1;
            m.bump - 1
        };
        debug_assert!(slot < g.per_slab, "slot {slot} of {} in class {class}", g.per_slab);
        m.used += 1;
        self.regroup(slab, lists, g.per_slab);
        Some(base + slot as usize * g.size as usize)
    }

    /// Frees the object of `len` bytes at `offset`. If its slab became empty,
    /// the result must be passed to [`SlabArena::release`] (done outside the
    /// class lock, since giving memory back is a system call).
    pub(super) fn free(&self, offset: usize, len: usize) -> EmptySlab {
        let class = class_of(len);
        let mut lists = self.classes[class].lock().unwrap_or_else(|e| e.into_inner());
        self.free_locked(offset, class, &mut lists)
    }

    fn free_locked(&self, offset: usize, class: usize, lists: &mut ClassLists) -> EmptySlab {
        let g = GEOMETRY[class];
        let slab = (offset / STRIDE) as u32;
        let slot = ((offset % STRIDE) / g.size as usize) as u32;
        let m = self.meta(slab);
        assert!(
            m.class as usize == class && m.used > 0 && m.group != UNUSED && m.group != RETIRED,
            "freeing {offset:#x} not allocated in class {class}"
        );
        if m.group == EVACUATING {
            self.vacate(slab, lists);
            return EmptySlab(None);
        }
        // SAFETY: the object is dead; its first 4 bytes now link the free list.
        unsafe { (self.object(offset, 4) as *mut u32).write_unaligned(m.free_head) };
        m.free_head = slot;
        m.used -= 1;
        if m.used == 0 {
            self.set_group(slab, UNUSED, lists);
            EmptySlab(Some(slab))
        } else {
            self.regroup(slab, lists, g.per_slab);
            EmptySlab(None)
        }
    }

    /// One object of an evacuating slab is gone. Its slot is not touched (a
    /// load may still be reading it) and never reused; an emptied slab waits
    /// on the retired list for [`SlabArena::release_retired`].
    fn vacate(&self, slab: u32, lists: &mut ClassLists) {
        let m = self.meta(slab);
        m.used -= 1;
        if m.used == 0 {
            self.set_group(slab, RETIRED, lists);
            self.meta(slab).next = lists.retired;
            lists.retired = slab;
        }
    }

    fn mark_evacuating(&self, slab: u32, on: bool) {
        assert!(slab < self.strides, "slab {slab} beyond the {} reserved", self.strides);
        let words = self.evacuating.addr() as *const std::sync::atomic::AtomicU64;
        // SAFETY: the bitmap has a bit for each of `strides` slabs (checked
        // just above); AtomicU64 has u64's layout and the mapping is
        // page-aligned and alive as long as `self`.
        let word = unsafe { &*words.add(slab as usize / 64) };
        let bit = 1u64 << (slab % 64);
        if on {
            word.fetch_or(bit, Relaxed);
        } else {
            word.fetch_and(!bit, Relaxed);
        }
    }

    /// Whether the object at `offset` is in an evacuating slab. A hint only:
    /// [`SlabArena::relocate`] checks again under the class lock.
    pub(super) fn is_evacuating(&self, offset: usize) -> bool {
        let slab = offset / STRIDE;
        if slab >= self.strides as usize {
            return false;
        }
        // SAFETY: as in `mark_evacuating`; the index is checked just above.
        let word = unsafe { &*(self.evacuating.addr() as *const std::sync::atomic::AtomicU64).add(slab / 64) };
        word.load(Relaxed) & (1 << (slab % 64)) != 0
    }

    /// Marks the sparsest slabs of `class` evacuating, as many as the class's
    /// other slabs have free slots for; returns the objects to move out of all
    /// its evacuating slabs (those left over from an earlier compaction too).
    pub(super) fn begin_evacuation(&self, class: usize) -> u64 {
        let per = GEOMETRY[class].per_slab as u64;
        let mut lists = self.classes[class].lock().unwrap_or_else(|e| e.into_inner());
        let mut room = 0u64;
        for &head in &lists.heads[..GROUPS] {
            let mut s = head;
            while s != NONE {
                room += per - self.meta(s).used as u64;
                s = self.meta(s).next;
            }
        }
        let mut need = 0u64;
        let mut s = lists.heads[EVACUATING as usize];
        while s != NONE {
            need += self.meta(s).used as u64;
            s = self.meta(s).next;
        }
        'groups: for group in 0..GROUPS {
            let mut s = lists.heads[group];
            while s != NONE {
                let next = self.meta(s).next;
                let used = self.meta(s).used as u64;
                let room_without = room - (per - used);
                if need + used > room_without {
                    break 'groups;
                }
                need += used;
                room = room_without;
                self.set_group(s, EVACUATING, &mut lists);
                self.mark_evacuating(s, true);
                s = next;
            }
        }
        need
    }

    /// Moves the object of `len` bytes at `offset` out of its evacuating slab,
    /// if it is in one: copies it to a free slot of a fuller slab and calls
    /// `commit` with the new offset, which must repoint the handle entry and
    /// return false if the entry no longer names the object.
    pub(super) fn relocate(&self, offset: usize, len: usize, budget: &Budget, commit: impl FnOnce(usize) -> bool) -> Relocation {
        let class = class_of(len);
        let slab = (offset / STRIDE) as u32;
        let mut lists = self.classes[class].lock().unwrap_or_else(|e| e.into_inner());
        let m = self.meta(slab);
        if m.group != EVACUATING || m.class as usize != class {
            return Relocation::Stayed;
        }
        let Some(to) = self.alloc_locked(class, &mut lists, budget) else {
            return Relocation::NoRoom;
        };
        // SAFETY: both slots hold `len` bytes in different slabs; the source
        // is only read (loads may read it too), the destination is ours until
        // `commit` publishes it.
        unsafe { std::ptr::copy_nonoverlapping(self.object(offset, len), self.object(to, len), len) };
        if commit(to) {
            self.vacate(slab, &mut lists);
            Relocation::Moved
        } else {
            Relocation::Raced(self.free_locked(to, class, &mut lists))
        }
    }

    /// Gives back the slabs of `class` that evacuation emptied. Call only when
    /// no load that started before their last object moved can still run.
    /// Returns the slabs and bytes given back.
    pub(super) fn release_retired(&self, class: usize, budget: &Budget) -> (u64, u64) {
        let mut slabs = 0;
        loop {
            let mut lists = self.classes[class].lock().unwrap_or_else(|e| e.into_inner());
            let slab = lists.retired;
            if slab == NONE {
                break;
            }
            lists.retired = self.meta(slab).next;
            self.meta(slab).group = UNUSED;
            self.mark_evacuating(slab, false);
            drop(lists);
            self.release(EmptySlab(Some(slab)), budget);
            slabs += 1;
        }
        (slabs, slabs * GEOMETRY[class].slab_bytes as u64)
    }

    /// Gives an empty slab's memory back to the kernel and its stride to the pool.
    pub(super) fn release(&self, empty: EmptySlab, budget: &Budget) {
        let Some(slab) = empty.0 else { return };
        // No class owns the slab now (it is UNUSED and on no list), so its
        // metadata is read here without a class lock.
        let bytes = GEOMETRY[self.meta(slab).class as usize].slab_bytes;
        // An error would leave the bytes resident but the slab still reusable:
        // nothing is lost, so it is only counted as released all the same.
        let _ = self.slabs.discard(slab as usize * STRIDE, bytes as usize);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        self.meta(slab).next = pool.free_head;
        pool.free_head = slab;
        drop(pool);
        self.live_slabs.fetch_sub(1, Relaxed);
        self.slab_bytes.fetch_sub(bytes as u64, Relaxed);
        budget.release(bytes as u64);
    }

    fn take_stride(&self, bytes: u32, budget: &Budget) -> Option<u32> {
        if !budget.charge(bytes as u64) {
            return None;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let slab = if pool.free_head != NONE {
            let slab = pool.free_head;
            pool.free_head = self.meta(slab).next;
            slab
        } else if pool.next_unused < self.strides && (!pool.next_unused.is_multiple_of(METAS_PER_PAGE) || budget.charge(PAGE_SIZE as u64)) {
            if pool.next_unused.is_multiple_of(METAS_PER_PAGE) {
                self.meta_bytes.fetch_add(PAGE_SIZE as u64, Relaxed);
            }
            pool.next_unused += 1;
            pool.next_unused - 1
        } else {
            budget.release(bytes as u64);
            return None;
        };
        drop(pool);
        self.live_slabs.fetch_add(1, Relaxed);
        self.slab_bytes.fetch_add(bytes as u64, Relaxed);
        Some(slab)
    }

    /// What the arena holds now.
    pub(super) fn usage(&self) -> ArenaUse {
        ArenaUse { slabs: self.live_slabs.load(Relaxed), slab_bytes: self.slab_bytes.load(Relaxed), meta_bytes: self.meta_bytes.load(Relaxed) }
    }

    /// Which pages of the slab area are resident (for tests: freed slabs must not be).
    #[cfg(test)]
    pub(super) fn resident_pages(&self) -> usize {
        let pages = self.slabs.len() / PAGE_SIZE;
        let mut resident = 0;
        let mut buf = vec![0u8; 4096];
        for start in (0..pages).step_by(buf.len()) {
            let n = buf.len().min(pages - start);
            self.slabs.residency(start * PAGE_SIZE, &mut buf[..n]).expect("mincore on the slab area");
            resident += buf[..n].iter().filter(|b| **b & 1 != 0).count();
        }
        resident
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_fits_its_stride_with_a_small_tail() {
        let mut waste = 0.0;
        for (c, g) in GEOMETRY.iter().enumerate() {
            assert_eq!(g.size as usize, (c + 1) * STEP);
            assert!(g.slab_bytes as usize <= STRIDE && g.slab_bytes as usize >= MIN_SLAB_PAGES * PAGE_SIZE);
            assert!(g.per_slab >= 4, "class {c}: {g:?}");
            let tail = (g.slab_bytes - g.per_slab * g.size) as f64 / g.slab_bytes as f64;
            // Up to the default threshold (and for raw pages) tails are small;
            // the classes between are used only if the threshold is raised.
            let bound = if g.size <= 3072 || g.size == 4096 { 0.017 } else { 0.06 };
            assert!(tail < bound, "class {c}: tail {tail:.4} {g:?}");
            if g.size <= 3072 {
                waste += tail;
            }
        }
        let mean = waste / (3072 / STEP) as f64;
        assert!(mean < 0.004, "mean tail {mean}");
        assert_eq!(class_of(1), 0);
        assert_eq!(class_of(32), 0);
        assert_eq!(class_of(33), 1);
        assert_eq!(class_of(PAGE_SIZE), CLASSES - 1);
        assert_eq!(GEOMETRY[CLASSES - 1], Geometry { size: 4096, slab_bytes: 16384, per_slab: 4 });
    }

    #[test]
    fn fullness_groups_split_at_quarters() {
        assert_eq!([1, 4, 5, 8, 9, 12, 13, 15, 16].map(|u| group(u, 16)), [0, 0, 1, 1, 2, 2, 3, 3, FULL]);
        assert_eq!(group(1, 4), 0);
        assert_eq!(group(3, 4), 2);
    }

    #[test]
    fn the_fullest_slab_gets_the_next_object_and_empty_slabs_go_back() {
        let budget = Budget::new(1 << 30);
        let arena = SlabArena::new(64).unwrap();
        let len = 1000; // class 31: 1024-byte objects, 16 to a 16 KiB slab
        let g = GEOMETRY[class_of(len)];
        assert_eq!((g.slab_bytes, g.per_slab), (16384, 16));
        let objs: Vec<usize> = (0..48).map(|_| arena.alloc(len, &budget).unwrap()).collect();
        assert_eq!(arena.usage().slabs, 3);
        assert_eq!(budget.used(), 3 * 16384 + PAGE_SIZE as u64);
        // Slab 0 keeps 14 objects, slab 1 keeps 2, slab 2 none.
        let mut empties = Vec::new();
        for &o in objs[14..16].iter().chain(&objs[18..48]) {
            empties.push(arena.free(o, len));
        }
        for e in empties {
            arena.release(e, &budget);
        }
        assert_eq!(arena.usage().slabs, 2);
        assert_eq!(budget.used(), 2 * 16384 + PAGE_SIZE as u64);
        // The next two objects go to slab 0 (fullest), not to the sparse slab 1.
        let a = arena.alloc(len, &budget).unwrap();
        let b = arena.alloc(len, &budget).unwrap();
        assert_eq!((a / STRIDE, b / STRIDE), (0, 0));
        assert_eq!(arena.usage().slabs, 2);
        // Slab 0 is full again: the next goes to slab 1.
        assert_eq!(arena.alloc(len, &budget).unwrap() / STRIDE, 1);
    }

    #[test]
    fn alloc_fails_at_the_budget_and_at_the_reservation() {
        let budget = Budget::new(PAGE_SIZE as u64 + 16384);
        let arena = SlabArena::new(2).unwrap();
        for _ in 0..4 {
            arena.alloc(PAGE_SIZE, &budget).unwrap();
        }
        assert_eq!(arena.alloc(PAGE_SIZE, &budget), None);
        assert_eq!(budget.used(), PAGE_SIZE as u64 + 16384);
        let big = Budget::new(1 << 30);
        let arena2 = SlabArena::new(1).unwrap();
        for _ in 0..4 {
            arena2.alloc(PAGE_SIZE, &big).unwrap();
        }
        assert_eq!(arena2.alloc(PAGE_SIZE, &big), None, "one stride only");
        assert_eq!(big.used(), PAGE_SIZE as u64 + 16384, "a failed stride charges nothing");
    }
}
