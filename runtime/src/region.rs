//! Registered regions and the table the fault handlers look addresses up in.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::pagestate::PageStates;
use crate::policy::ages::PageAges;
use crate::policy::incompressible::IncompressiblePages;
use crate::verify::PageSums;
use crate::PAGE_SIZE;

/// A range of the program's memory registered with the fault engine.
#[derive(Debug)]
pub struct Region {
    /// Its first address; changes only when the program mremaps the whole region.
    start: AtomicU64,
    /// Its length in bytes.
    len: u64,
    /// One state per page.
    pub states: PageStates,
    /// When each page was last seen in use and last left RAM (policy ticks).
    pub ages: PageAges,
    /// Pages a tier refused as incompressible, which reclaim passes over.
    pub incompressible: IncompressiblePages,
    /// Held by the evictor for a batch, and by the fault handlers to move or
    /// unregister the region, so that neither sees the other half-done.
    pub evict_lock: Mutex<()>,
    /// Pages whose only copy is in a tier.
    pub evicted: AtomicU64,
    /// Set once the region is unregistered or unmapped.
    pub closed: AtomicBool,
    /// Registered with the userfaultfd. A region registered lazily is armed
    /// only before its first page is taken out: until then the program's
    /// first touches are the kernel's own page faults, with no cost from farmem.
    pub armed: AtomicBool,
    /// In verification mode, the checksum of each page farmem holds a copy of.
    pub(crate) sums: Option<PageSums>,
}

impl Region {
    /// A region over `[start, start+len)`, every page resident and stamped as
    /// seen at policy tick `now`; `verify` keeps a checksum of each page out.
    pub fn new(start: u64, len: u64, now: u32, verify: bool) -> std::io::Result<Self> {
        let pages = (len / PAGE_SIZE as u64) as usize;
        Ok(Region {
            start: AtomicU64::new(start),
            len,
            states: PageStates::new(pages)?,
            ages: PageAges::new(pages, now)?,
            incompressible: IncompressiblePages::new(pages)?,
            evict_lock: Mutex::new(()),
            evicted: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            armed: AtomicBool::new(false),
            sums: if verify { Some(PageSums::new(pages)?) } else { None },
        })
    }

    /// Its first address now.
    pub fn start(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Its number of pages.
    pub fn pages(&self) -> usize {
        self.states.len()
    }

    /// The address of page `i`.
    pub fn page_addr(&self, i: usize) -> u64 {
        self.start() + (i * PAGE_SIZE) as u64
    }

    /// Whether `addr` falls inside.
    pub fn contains(&self, addr: u64) -> bool {
        let s = self.start();
        addr >= s && addr < s + self.len
    }

    pub(crate) fn set_start(&self, start: u64) {
        self.start.store(start, Ordering::Release);
    }
}

/// The registered regions, sorted by start address.
#[derive(Debug, Default)]
pub struct RegionTable {
    regions: RwLock<Vec<Arc<Region>>>,
}

impl RegionTable {
    /// The region holding `addr`, if any.
    pub fn find(&self, addr: u64) -> Option<Arc<Region>> {
        let regions = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let i = regions.partition_point(|r| r.start() <= addr);
        let r = regions.get(i.checked_sub(1)?)?;
        r.contains(addr).then(|| Arc::clone(r))
    }

    /// The region holding `addr`, or else the first one above it.
    pub fn find_from(&self, addr: u64) -> Option<Arc<Region>> {
        let regions = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let i = regions.partition_point(|r| r.start() + r.len() <= addr);
        regions.get(i).cloned()
    }

    /// Whether a region overlaps `[s, e)`, without waiting for the table:
    /// None while it is being written (or a writer waits for it).
    pub fn try_overlaps(&self, s: u64, e: u64) -> Option<bool> {
        let regions = match self.regions.try_read() {
            Ok(r) => r,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let i = regions.partition_point(|r| r.start() + r.len() <= s);
        Some(regions.get(i).is_some_and(|r| r.start() < e))
    }

    /// Calls `f` on the region holding `addr`, if any, with the table held
    /// for reading: nothing is cloned or freed, so the SIGBUS handler of
    /// signal mode may call it.
    pub fn with<T>(&self, addr: u64, f: impl FnOnce(&Region) -> T) -> Option<T> {
        let regions = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let i = regions.partition_point(|r| r.start() <= addr);
        let r = regions.get(i.checked_sub(1)?)?;
        r.contains(addr).then(|| f(r))
    }

    /// As [`RegionTable::with`], without waiting for the table: Err while
    /// it is being written (or a writer waits for it).
    pub fn try_with<T>(&self, addr: u64, f: impl FnOnce(&Region) -> T) -> Result<Option<T>, ()> {
        let regions = match self.regions.try_read() {
            Ok(r) => r,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(()),
        };
        let i = regions.partition_point(|r| r.start() <= addr);
        let Some(r) = i.checked_sub(1).and_then(|i| regions.get(i)) else { return Ok(None) };
        Ok(r.contains(addr).then(|| f(r)))
    }

    /// Every region overlapping `[start, end)`.
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<Arc<Region>> {
        let regions = self.regions.read().unwrap_or_else(|e| e.into_inner());
        regions.iter().filter(|r| r.start() < end && start < r.start() + r.len()).cloned().collect()
    }

    /// Adds a region; false if it overlaps one already there.
    pub fn insert(&self, region: Arc<Region>) -> bool {
        let mut regions = self.regions.write().unwrap_or_else(|e| e.into_inner());
        let (s, e) = (region.start(), region.start() + region.len());
        if regions.iter().any(|r| r.start() < e && s < r.start() + r.len()) {
            return false;
        }
        let i = regions.partition_point(|r| r.start() < s);
        regions.insert(i, region);
        true
    }

    /// Removes the region `region` (by identity).
    pub fn remove(&self, region: &Arc<Region>) {
        let mut regions = self.regions.write().unwrap_or_else(|e| e.into_inner());
        regions.retain(|r| !Arc::ptr_eq(r, region));
    }

    /// Restores the sort after a region's start changed.
    pub fn resort(&self) {
        let mut regions = self.regions.write().unwrap_or_else(|e| e.into_inner());
        regions.sort_by_key(|r| r.start());
    }

    /// All regions.
    pub fn all(&self) -> Vec<Arc<Region>> {
        self.regions.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
