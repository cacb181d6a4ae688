//! A tier that keeps pages as they are, in memory it maps for itself.
//!
//! It saves no memory; it is the engine's floor in benchmarks (a fault served
//! with no decompression), and a building block for tiers whose medium is
//! byte-addressable and where compression is turned off.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::latency::OpLatency;
use crate::mem::Mapping;
use crate::{Capacity, Handle, Page, PageClass, Tier, TierError, TierStats, PAGE_SIZE};

/// Pages stored uncompressed in an anonymous mapping of fixed capacity.
pub struct RawTier {
    name: &'static str,
    map: Mapping,
    slots: u64,
    free: Mutex<FreeSlots>,
    next: AtomicU64,
    pages: AtomicU64,
    stores: AtomicU64,
    loads: AtomicU64,
    latency: OpLatency,
}

/// Freed slots kept mapped (a reuse costs no page fault, and a remove no
/// `madvise`: each discard is a TLB shootdown across every CPU the program
/// runs on, which on a VM cost more than the whole fault it ended), up to
/// [`KEEP_MAPPED`] or as many as the tier holds live, whichever is more, and
/// one batch of [`DISCARD_BATCH`] beyond that: the tier's memory stays within
/// twice what it holds plus 4 MiB, or what it holds plus 20 MiB. Past that
/// the oldest go back to the kernel in one batch, one `madvise` per run of
/// neighbouring slots (freed in random order, most runs are one slot).
#[derive(Default)]
struct FreeSlots {
    /// Freed slots whose memory is still mapped, newest last.
    mapped: Vec<u32>,
    /// Freed slots given back to the kernel.
    discarded: Vec<u32>,
}

/// Freed slots always kept mapped (16 MiB) before a batch goes back to the kernel.
pub const KEEP_MAPPED: usize = 4096;
/// How many of the oldest freed slots a batch gives back (4 MiB), so that
/// a tier at its bound pays for a batch once per this many removes.
const DISCARD_BATCH: usize = 1024;

// SAFETY: slots are handed out to one owner at a time under the free-list lock
// or the `next` counter; a slot's bytes are written before its handle exists and
// read only through that handle.
unsafe impl Send for RawTier {}
// SAFETY: as above.
unsafe impl Sync for RawTier {}

impl RawTier {
    /// A tier that can hold `limit_bytes` of pages (address space is reserved,
    /// memory is used only as pages are stored).
    pub fn new(limit_bytes: u64) -> Result<Self, TierError> {
        Self::named("raw", limit_bytes)
    }

    /// As [`RawTier::new`], under another name in logs and statistics.
    pub fn named(name: &'static str, limit_bytes: u64) -> Result<Self, TierError> {
        let slots = (limit_bytes / PAGE_SIZE as u64).clamp(1, u32::MAX as u64);
        let map = Mapping::anonymous(slots as usize * PAGE_SIZE).map_err(|source| TierError::Os { op: "mapping the raw tier", source })?;
        Ok(RawTier {
            name,
            map,
            slots,
            free: Mutex::new(FreeSlots::default()),
            next: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            latency: OpLatency::default(),
        })
    }

    fn slot(&self, i: u64) -> *mut u8 {
        // SAFETY: callers pass i < slots, so the slot lies inside the mapping.
        unsafe { self.map.addr().add(i as usize * PAGE_SIZE) }
    }
}

impl Tier for RawTier {
    fn name(&self) -> &str {
        self.name
    }

    fn store(&self, page: &Page, _class: PageClass) -> Result<Handle, TierError> {
        self.latency.store.time(|| self.store_page(page))
    }

    fn load(&self, handle: Handle, out: &mut Page) -> Result<(), TierError> {
        self.latency.load.time(|| self.load_page(handle, out))
    }

    /// A load is one copy out of the tier's own mapping.
    fn loads_in_signal_handler(&self) -> bool {
        true
    }

    fn remove(&self, handle: Handle) {
        let h = handle.raw();
        if h >= self.slots {
            return;
        }
        let live = self.pages.fetch_sub(1, Relaxed).saturating_sub(1) as usize;
        let batch = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            free.mapped.push(h as u32);
            if free.mapped.len() <= KEEP_MAPPED.max(live) + DISCARD_BATCH {
                return;
            }
            // The oldest are first: the least likely to be in a cache.
            let rest = free.mapped.split_off(DISCARD_BATCH);
            std::mem::replace(&mut free.mapped, rest)
        };
        // Outside the lock: a load or store in a signal handler may wait on it.
        self.discard(batch);
    }

    fn capacity(&self) -> Capacity {
        Capacity { limit_bytes: self.slots * PAGE_SIZE as u64, used_bytes: self.pages.load(Relaxed) * PAGE_SIZE as u64 }
    }

    fn stats(&self) -> TierStats {
        TierStats::uncompressed(self.pages.load(Relaxed), self.stores.load(Relaxed), self.loads.load(Relaxed), 0).with_latency(&self.latency)
    }
}

impl RawTier {
    /// Gives the memory of freed `slots` back to the kernel, one `madvise` per
    /// run of neighbours, and files them as discarded.
    fn discard(&self, mut slots: Vec<u32>) {
        slots.sort_unstable();
        let mut i = 0;
        while i < slots.len() {
            let mut j = i + 1;
            while j < slots.len() && slots[j] == slots[j - 1] + 1 {
                j += 1;
            }
            // A failed discard only leaves memory mapped; the slots stay usable.
            let _ = self.map.discard(slots[i] as usize * PAGE_SIZE, (j - i) * PAGE_SIZE);
            i = j;
        }
        self.free.lock().unwrap_or_else(|e| e.into_inner()).discarded.extend(slots);
    }

    fn store_page(&self, page: &Page) -> Result<Handle, TierError> {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            free.mapped.pop().or_else(|| free.discarded.pop())
        };
        let slot = match reused {
            Some(s) => s as u64,
            None => {
                let s = self.next.fetch_add(1, Relaxed);
                if s >= self.slots {
                    self.next.fetch_sub(1, Relaxed);
                    return Err(TierError::Full { tier: self.name, limit_bytes: self.slots * PAGE_SIZE as u64 });
                }
                s
            }
        };
        // SAFETY: the slot is ours until its handle is removed; `page` is a full page.
        unsafe { std::ptr::copy_nonoverlapping(page.as_ptr(), self.slot(slot), PAGE_SIZE) };
        self.pages.fetch_add(1, Relaxed);
        self.stores.fetch_add(1, Relaxed);
        Ok(Handle::new(slot))
    }

    fn load_page(&self, handle: Handle, out: &mut Page) -> Result<(), TierError> {
        if handle.raw() >= self.slots {
            return Err(TierError::UnknownHandle(handle));
        }
        // SAFETY: the handle names a stored slot, not written while the handle lives.
        unsafe { std::ptr::copy_nonoverlapping(self.slot(handle.raw()), out.as_mut_ptr(), PAGE_SIZE) };
        self.loads.fetch_add(1, Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_full() {
        let t = RawTier::new(2 * PAGE_SIZE as u64).unwrap();
        let mut a = [0u8; PAGE_SIZE];
        a[100] = 7;
        let h1 = t.store(&a, PageClass::DEFAULT).unwrap();
        let h2 = t.store(&[9; PAGE_SIZE], PageClass::DEFAULT).unwrap();
        assert!(matches!(t.store(&a, PageClass::DEFAULT), Err(TierError::Full { .. })));
        let mut out = [0u8; PAGE_SIZE];
        t.load(h1, &mut out).unwrap();
        assert_eq!(out, a);
        t.remove(h1);
        let h3 = t.store(&[5; PAGE_SIZE], PageClass::DEFAULT).unwrap();
        t.load(h2, &mut out).unwrap();
        assert_eq!(out, [9; PAGE_SIZE]);
        t.load(h3, &mut out).unwrap();
        assert_eq!(out, [5; PAGE_SIZE]);
        let s = t.stats();
        assert_eq!(s.pages, 2);
        // Every load and store is timed, the refused store too.
        assert!(s.load_p50_ns > 0 && s.load_p99_ns >= s.load_p50_ns, "{s:?}");
        assert!(s.store_p50_ns > 0 && s.store_p99_ns >= s.store_p50_ns, "{s:?}");
    }

    /// Resident pages of the tier's mapping, by mincore.
    fn resident(t: &RawTier) -> usize {
        let mut v = vec![0u8; t.slots as usize];
        t.map.residency(0, &mut v).unwrap();
        v.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn freed_slots_stay_mapped_up_to_a_bound_then_go_back_and_every_page_reads_back() {
        let n = 3 * KEEP_MAPPED;
        let t = RawTier::new((n * PAGE_SIZE) as u64).unwrap();
        let page = |i: usize| {
            let mut p = [0u8; PAGE_SIZE];
            p[..8].copy_from_slice(&(i as u64).to_le_bytes());
            p[PAGE_SIZE - 1] = i as u8;
            p
        };
        let handles: Vec<Handle> = (0..n).map(|i| t.store(&page(i), PageClass::DEFAULT).unwrap()).collect();
        assert_eq!(resident(&t), n);
        // Remove every other page, then the rest: freed memory stays within
        // what is live (at half way, all of it is still mapped), then goes.
        for (k, h) in handles.iter().step_by(2).chain(handles.iter().skip(1).step_by(2)).enumerate() {
            t.remove(*h);
            if k + 1 == n / 2 {
                assert_eq!(resident(&t), n, "as many freed as live: nothing went back yet");
            }
        }
        let left = resident(&t);
        assert!((KEEP_MAPPED..=KEEP_MAPPED + DISCARD_BATCH).contains(&left), "{left} pages resident after every page was removed");
        // Every slot, mapped or discarded, is used again before the tier grows.
        let again: Vec<Handle> = (0..n).map(|i| t.store(&page(i + 7), PageClass::DEFAULT).unwrap()).collect();
        assert!(matches!(t.store(&page(0), PageClass::DEFAULT), Err(TierError::Full { .. })));
        let mut out = [0u8; PAGE_SIZE];
        for (i, h) in again.iter().enumerate() {
            t.load(*h, &mut out).unwrap();
            assert_eq!(out, page(i + 7), "slot {}", h.raw());
        }
    }
}
