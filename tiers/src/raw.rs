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
    free: Mutex<Vec<u32>>,
    next: AtomicU64,
    pages: AtomicU64,
    stores: AtomicU64,
    loads: AtomicU64,
    latency: OpLatency,
}

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
            free: Mutex::new(Vec::new()),
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
        let _ = self.map.discard(h as usize * PAGE_SIZE, PAGE_SIZE);
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(h as u32);
        self.pages.fetch_sub(1, Relaxed);
    }

    fn capacity(&self) -> Capacity {
        Capacity { limit_bytes: self.slots * PAGE_SIZE as u64, used_bytes: self.pages.load(Relaxed) * PAGE_SIZE as u64 }
    }

    fn stats(&self) -> TierStats {
        TierStats::uncompressed(self.pages.load(Relaxed), self.stores.load(Relaxed), self.loads.load(Relaxed), 0).with_latency(&self.latency)
    }
}

impl RawTier {
    fn store_page(&self, page: &Page) -> Result<Handle, TierError> {
        let slot = match self.free.lock().unwrap_or_else(|e| e.into_inner()).pop() {
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
}
