//! T1: pages compressed in memory, packed in size classes, as zram does.
//!
//! - A page of zeros, or of one 8-byte word repeated, is kept as that word in
//!   its handle-table entry: no slab space (`zero_pages`, `same_filled_pages`;
//!   it counts 8 bytes in `bytes_compressed`).
//! - Any other page is compressed with its [`PageClass`]'s codec (lz4 by
//!   default; a config may give colder classes zstd). If the result is larger
//!   than `threshold_bytes` (default 3072, 75% of a page) and the config has a
//!   fallback codec (by default zstd level 1), the page is compressed again
//!   with that, as zram's recompression does: lz4 has no entropy coding, so
//!   text of a small alphabet with no repeats (random alphanumeric keys and
//!   values) stays near 98% under lz4 and comes to about 64% under zstd,
//!   while lz4 stays the fast codec for every page it does compress. If that
//!   too is above the threshold (or there is no fallback) the [`Incompressible`]
//!   rule decides: refuse the page (the default: the runtime keeps it in RAM,
//!   since storing it raw would save nothing), or store its 4096 bytes raw.
//!   Each object's entry records how it was encoded, so loads decode by that.
//! - Compressed objects live in 128 size classes of 32-byte steps, the last
//!   (4096) for raw pages; each class cuts its objects out of slabs of 4-16
//!   pages sized to leave little tail (module `slab`). Memory used
//!   is the slabs, the handle table and the slab metadata; with realistic heap
//!   pages it is within a few percent of the sum of compressed sizes (see the
//!   crate README for the measurement). A slab that becomes empty goes back to
//!   the kernel at once.
//! - A handle is an entry index and the entry's 16-bit generation, bumped on
//!   each remove: a removed handle loads as [`TierError::UnknownHandle`], not
//!   as the page that reused its entry.
//! - All of it is in mappings the tier makes itself ([`crate::mem::Mapping`],
//!   anonymous, private, `MAP_NORESERVE`), never on the Rust heap: under the
//!   LD_PRELOAD shim the heap may be registered with userfaultfd. The address
//!   space is reserved up front (slabs: 4x the limit, at most 60 GiB; table:
//!   16 bytes per page the limit could hold, at most 4 GiB) and used by touching.
//! - `limit_bytes` bounds slabs, table and metadata together; a store that
//!   would pass it fails with [`TierError::Full`] and changes nothing. The
//!   default limit is half of physical RAM (zram's usual size).
//!
//! Concurrency: `load` takes no lock. It counts itself into a reader gate
//! (one atomic add on a per-thread cache line), reads the handle's entry with
//! one atomic load and decodes straight from the slab; the runtime never
//! removes a handle while loading it, and compaction keeps a moved object's
//! old copy until every load that entered the gate before the move has left.
//! `store` and `remove` take the lock of one size class and the handle-table
//! lock, plus the stride-pool lock when a slab is made or freed. Counters are
//! atomics.
//!
//! Fragmentation and compaction: after scattered removes a class can keep many
//! partly used slabs (removing 3/4 of a full tier at random leaves its memory
//! nearly unchanged: 300% overhead). Allocation prefers the fullest slab of a
//! class, so refilling reuses the holes; and [`CompressedTier::compact`],
//! meant for a background thread to call when `overhead()` grows, moves objects out of the sparsest slabs into the holes of the fuller ones
//! and gives the emptied slabs back (handles name table entries, not
//! addresses, so objects can move). Nothing compacts on its own.
//!
//! What allocates after construction, all outside the mappings: lz4_flex's
//! 8 KiB hash table on each lz4 store (its API takes no caller table), and the
//! zstd contexts, once per thread (C `malloc`, ~1-2 MiB to compress at level 3,
//! ~100 KiB to decompress), on the thread's first zstd store or load. Loads
//! allocate nothing else, except the message of an error. Compaction
//! allocates nothing.

mod budget;
pub(crate) mod codec;
mod counters;
mod handles;
mod slab;

#[cfg(test)]
mod tests;

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::Instant;

pub use codec::{Codec, CodecParseError};

use budget::Budget;
use codec::{Encoding, SCRATCH_BYTES};
use counters::{Counters, ReaderGate};
use handles::{Entry, HandleTable};
use slab::{Relocation, SlabArena};

use crate::latency::{CompactionWork, OpLatency};
use crate::{Capacity, Handle, Page, PageClass, Tier, TierError, TierStats, PAGE_SIZE};

/// What to do with a page that compresses to more than the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Incompressible {
    /// Refuse it ([`TierError::Incompressible`], counted in
    /// `rejected_incompressible`); the runtime keeps it in RAM.
    #[default]
    Reject,
    /// Store its 4096 bytes as they are, in the raw size class.
    StoreRaw,
}

/// How a [`CompressedTier`] is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressedConfig {
    /// The codec for each page class (index = `PageClass.0`); classes beyond
    /// the list use its last entry. Default: `[Lz4]`.
    pub codecs: Vec<Codec>,
    /// A second codec for pages their class's codec leaves above
    /// `threshold_bytes`, for every class (skipped for a class whose codec it
    /// is); only a page it too leaves above the threshold meets the
    /// `incompressible` rule. Default: zstd level 1, which keeps lz4's speed
    /// on the pages lz4 compresses and stores the ones only entropy coding
    /// compresses (`lz4+zstd:1` in a tier spec). `None`: one codec only.
    pub fallback: Option<Codec>,
    /// The most memory the tier may use, slabs, handle table and metadata
    /// together, in bytes. Default: half of physical RAM
    /// ([`CompressedConfig::default_limit_bytes`]).
    pub limit_bytes: u64,
    /// The rule for pages that compress poorly.
    pub incompressible: Incompressible,
    /// The largest compressed size kept compressed, in bytes (values above a
    /// page count as a page). Default 3072 (75% of a page).
    pub threshold_bytes: usize,
}

impl Default for CompressedConfig {
    fn default() -> Self {
        CompressedConfig {
            codecs: vec![Codec::Lz4],
            fallback: Some(DEFAULT_FALLBACK),
            limit_bytes: Self::default_limit_bytes(),
            incompressible: Incompressible::Reject,
            threshold_bytes: 3 * PAGE_SIZE / 4,
        }
    }
}

impl CompressedConfig {
    /// lz4 alone for every class (no fallback), other settings default.
    pub fn lz4() -> Self {
        CompressedConfig { fallback: None, ..Self::default() }
    }

    /// zstd at `level` alone for every class (no fallback), other settings default.
    pub fn zstd(level: i32) -> Self {
        CompressedConfig { codecs: vec![Codec::Zstd { level }], fallback: None, ..Self::default() }
    }

    /// This config with `class` using `codec` (classes between the old list's
    /// end and `class` keep the old last codec).
    pub fn with_codec(mut self, class: PageClass, codec: Codec) -> Self {
        let i = class.0 as usize;
        let last = self.codecs.last().copied().unwrap_or_default();
        if self.codecs.len() <= i {
            self.codecs.resize(i + 1, last);
        }
        self.codecs[i] = codec;
        self
    }

    /// This config with `fallback` as its second codec (`None`: none).
    pub fn with_fallback(self, fallback: Option<Codec>) -> Self {
        CompressedConfig { fallback, ..self }
    }

    /// This config with a limit of `bytes`.
    pub fn with_limit(self, bytes: u64) -> Self {
        CompressedConfig { limit_bytes: bytes, ..self }
    }

    /// This config with the incompressible rule `rule`.
    pub fn with_incompressible(self, rule: Incompressible) -> Self {
        CompressedConfig { incompressible: rule, ..self }
    }

    /// The codec used for pages of `class`.
    pub fn codec(&self, class: PageClass) -> Codec {
        let i = (class.0 as usize).min(self.codecs.len().saturating_sub(1));
        self.codecs.get(i).copied().unwrap_or_default()
    }

    /// Half of physical RAM (4 GiB if the kernel will not say).
    pub fn default_limit_bytes() -> u64 {
        // SAFETY: sysconf only reads system constants.
        let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        if pages > 0 && size > 0 {
            pages as u64 * size as u64 / 2
        } else {
            4 << 30
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.codecs.is_empty() {
            return Err("no codec given (codecs is empty)".into());
        }
        let range = zstd::compression_level_range();
        for c in self.codecs.iter().chain(&self.fallback) {
            if let Codec::Zstd { level } = c {
                if !range.contains(level) {
                    return Err(format!("zstd level {level} outside {}..={}", range.start(), range.end()));
                }
            }
        }
        Ok(())
    }
}

/// Where a [`CompressedTier`]'s memory goes, in bytes (their sum is
/// `TierStats::bytes_used`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CompressedMemory {
    /// Slabs in use.
    pub slabs: u64,
    /// Their bytes.
    pub slab_bytes: u64,
    /// The handle table (its high-water mark, in whole pages).
    pub table_bytes: u64,
    /// Slab metadata (its high-water mark, in whole pages).
    pub metadata_bytes: u64,
}

/// What one [`CompressedTier::compact`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CompactReport {
    /// Objects moved to fuller slabs.
    pub objects_moved: u64,
    /// Slabs emptied and given back to the kernel.
    pub slabs_freed: u64,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Objects left in place for want of room (the limit was reached by
    /// stores meanwhile); the next compaction moves them.
    pub objects_left: u64,
}

/// The fallback of [`CompressedConfig::default`]: zstd's fastest usual level,
/// which gets most of zstd's gain on the pages lz4 leaves (its entropy coding).
pub const DEFAULT_FALLBACK: Codec = Codec::Zstd { level: 1 };

/// The most address space reserved for slabs.
const MAX_SLAB_RESERVATION: u64 = 60 << 30;
/// The most handle-table entries (4 GiB of table, 1 TiB of pages).
const MAX_HANDLES: u64 = 1 << 28;
/// What a fill page counts in `bytes_compressed`: the word kept.
const FILL_BYTES: u64 = 8;

/// The compressed in-memory tier (T1).
pub struct CompressedTier {
    config: CompressedConfig,
    name: &'static str,
    threshold: usize,
    budget: Budget,
    handles: HandleTable,
    slabs: SlabArena,
    counters: Counters,
    readers: ReaderGate,
    compaction: Mutex<()>,
    latency: OpLatency,
    work: CompactionWork,
}

/// The tier's name: its default class's codec and the fallback, without
/// levels ("lz4", "zstd", "lz4+zstd"); static, for [`TierError::Full`].
fn name_of(config: &CompressedConfig) -> &'static str {
    let first = config.codec(PageClass::DEFAULT);
    // A fallback equal to the codec is never tried on the default class.
    match (first, config.fallback.filter(|f| *f != first)) {
        (Codec::Lz4, None | Some(Codec::Lz4)) => "lz4",
        (Codec::Lz4, Some(Codec::Zstd { .. })) => "lz4+zstd",
        (Codec::Zstd { .. }, None) => "zstd",
        (Codec::Zstd { .. }, Some(Codec::Lz4)) => "zstd+lz4",
        (Codec::Zstd { .. }, Some(Codec::Zstd { .. })) => "zstd+zstd",
    }
}

/// The word every 8 bytes of `page` repeat, if there is one.
fn fill_word(page: &Page) -> Option<u64> {
    let word = |w: &[u8]| u64::from_ne_bytes(w.try_into().expect("chunks of 8"));
    let first = word(&page[..8]);
    page.chunks_exact(8).all(|w| word(w) == first).then_some(first)
}

impl CompressedTier {
    /// A tier with `config`. Reserves address space for its limit (no memory
    /// is used until pages are stored); fails if the config is invalid or
    /// the kernel refuses the reservation.
    pub fn new(config: CompressedConfig) -> Result<Self, TierError> {
        config
            .validate()
            .map_err(|reason| TierError::Os { op: "configuring the compressed tier", source: io::Error::new(io::ErrorKind::InvalidInput, reason) })?;
        let limit = config.limit_bytes;
        let strides = (limit.saturating_mul(4).min(MAX_SLAB_RESERVATION) / slab::STRIDE as u64).max(1);
        let entries = (limit / 16).clamp(1, MAX_HANDLES);
        let os = |what: &'static str| move |source| TierError::Os { op: what, source };
        let slabs = SlabArena::new(strides as u32).map_err(os("reserving the compressed tier's slabs"))?;
        let handles = HandleTable::new(entries as u32).map_err(os("reserving the compressed tier's handle table"))?;
        let name = name_of(&config);
        if config.codecs.iter().chain(config.fallback.iter()).any(|c| matches!(c, Codec::Zstd { .. })) {
            codec::prepare_zstd_decoders().map_err(os("making zstd decoding contexts"))?;
        }
        Ok(CompressedTier {
            threshold: config.threshold_bytes.min(PAGE_SIZE),
            budget: Budget::new(limit),
            config,
            name,
            handles,
            slabs,
            counters: Counters::default(),
            readers: ReaderGate::default(),
            compaction: Mutex::new(()),
            latency: OpLatency::default(),
            work: CompactionWork::default(),
        })
    }

    /// The configuration the tier was made with.
    pub fn config(&self) -> &CompressedConfig {
        &self.config
    }

    /// Where the tier's memory goes now.
    pub fn memory(&self) -> CompressedMemory {
        let a = self.slabs.usage();
        CompressedMemory { slabs: a.slabs, slab_bytes: a.slab_bytes, table_bytes: self.handles.bytes(), metadata_bytes: a.meta_bytes }
    }

    /// Moves objects out of the sparsest slabs of each size class into the
    /// free slots of its fuller slabs, and gives the emptied slabs back to the
    /// kernel. Runs beside stores, loads and removes (one compaction at a time);
    /// costs a scan of the handle table plus a copy per object moved, and
    /// waits for loads in flight before giving slabs back.
    pub fn compact(&self) -> CompactReport {
        let _one_at_a_time = self.compaction.lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        let mut report = CompactReport::default();
        let mut bytes_moved = 0u64;
        let to_move: u64 = (0..slab::CLASSES).map(|class| self.slabs.begin_evacuation(class)).sum();
        if to_move > 0 {
            self.handles.scan(|index, w0| {
                let Some((len, offset)) = handles::object_of(w0) else { return };
                if !self.slabs.is_evacuating(offset) {
                    return;
                }
                match self.slabs.relocate(offset, len, &self.budget, |to| self.handles.relocate(index, w0, to)) {
                    Relocation::Moved => {
                        report.objects_moved += 1;
                        bytes_moved += len as u64;
                    }
                    Relocation::Stayed => {}
                    Relocation::Raced(empty) => self.slabs.release(empty, &self.budget),
                    Relocation::NoRoom => report.objects_left += 1,
                }
            });
        }
        // Loads that read an old offset must be done before its slab goes.
        self.readers.wait_for_readers();
        for class in 0..slab::CLASSES {
            let (slabs, bytes) = self.slabs.release_retired(class, &self.budget);
            report.slabs_freed += slabs;
            report.bytes_freed += bytes;
        }
        self.work.add(start, bytes_moved, report.bytes_freed);
        report
    }

    fn full(&self) -> TierError {
        TierError::Full { tier: self.name, limit_bytes: self.budget.limit() }
    }

    fn store_fill(&self, word: u64) -> Result<Handle, TierError> {
        let handle = self.handles.insert(Entry::Fill(word), &self.budget).ok_or_else(|| self.full())?;
        let c = &self.counters;
        if word == 0 { &c.zero_pages } else { &c.same_filled_pages }.fetch_add(1, Relaxed);
        c.bytes_compressed.fetch_add(FILL_BYTES, Relaxed);
        c.pages.fetch_add(1, Relaxed);
        c.stores.fetch_add(1, Relaxed);
        Ok(handle)
    }
}

impl Tier for CompressedTier {
    fn name(&self) -> &str {
        self.name
    }

    fn store(&self, page: &Page, class: PageClass) -> Result<Handle, TierError> {
        self.latency.store.time(|| self.store_page(page, class))
    }

    fn load(&self, handle: Handle, out: &mut Page) -> Result<(), TierError> {
        self.latency.load.time(|| self.load_page(handle, out))
    }

    /// Frees the page's space. A handle naming no stored page (already
    /// removed, or never given out) is ignored.
    fn remove(&self, handle: Handle) {
        self.remove_page(handle)
    }

    /// Loads read the handle table and slabs without locks and decode with a
    /// pooled context (see `codec`).
    fn loads_in_signal_handler(&self) -> bool {
        true
    }

    fn capacity(&self) -> Capacity {
        Capacity { limit_bytes: self.budget.limit(), used_bytes: self.budget.used() }
    }

    fn stats(&self) -> TierStats {
        let c = &self.counters;
        let pages = c.pages.load(Relaxed);
        let stats = TierStats {
            pages,
            zero_pages: c.zero_pages.load(Relaxed),
            same_filled_pages: c.same_filled_pages.load(Relaxed),
            rejected_incompressible: c.rejected_incompressible.load(Relaxed),
            bytes_in: pages * PAGE_SIZE as u64,
            bytes_compressed: c.bytes_compressed.load(Relaxed),
            bytes_used: self.budget.used(),
            stores: c.stores.load(Relaxed),
            fallback_stores: c.fallback_stores.load(Relaxed),
            fallback_failures: c.fallback_failures.load(Relaxed),
            load_errors: c.load_errors.load(Relaxed),
            loads: self.readers.exits().saturating_sub(c.load_errors.load(Relaxed)),
            ..TierStats::default()
        };
        self.work.fill(stats.with_latency(&self.latency))
    }
}

impl CompressedTier {
    fn store_page(&self, page: &Page, class: PageClass) -> Result<Handle, TierError> {
        if let Some(word) = fill_word(page) {
            return self.store_fill(word);
        }
        let codec = self.config.codec(class);
        let mut scratch = [0u8; SCRATCH_BYTES];
        let mut fitted = self.compress(codec, page, &mut scratch)?.map(|n| (codec, n));
        let mut by_fallback = false;
        if let (Err(first_len), Some(fallback)) = (fitted, self.config.fallback.filter(|f| *f != codec)) {
            // The error reports the smaller size: the best any codec did.
            fitted = self.compress(fallback, page, &mut scratch)?.map(|n| (fallback, n)).map_err(|len| len.min(first_len));
            by_fallback = fitted.is_ok();
            if !by_fallback {
                self.counters.fallback_failures.fetch_add(1, Relaxed);
            }
        }
        let (encoding, bytes): (Encoding, &[u8]) = match fitted {
            Ok((used, n)) => (Encoding::of(used), &scratch[..n]),
            Err(compressed) => match self.config.incompressible {
                Incompressible::Reject => {
                    self.counters.rejected_incompressible.fetch_add(1, Relaxed);
                    return Err(TierError::Incompressible { compressed, threshold: self.threshold });
                }
                Incompressible::StoreRaw => (Encoding::Raw, &page[..]),
            },
        };
        let len = bytes.len();
        let offset = self.slabs.alloc(len, &self.budget).ok_or_else(|| self.full())?;
        // SAFETY: the slot at `offset` holds at least `len` bytes and is ours
        // alone until a handle naming it is removed; no handle names it yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.slabs.object(offset, len), len) };
        let Some(handle) = self.handles.insert(Entry::Object { encoding, len, offset }, &self.budget) else {
            let empty = self.slabs.free(offset, len);
            self.slabs.release(empty, &self.budget);
            return Err(self.full());
        };
        let c = &self.counters;
        c.bytes_compressed.fetch_add(len as u64, Relaxed);
        c.pages.fetch_add(1, Relaxed);
        c.stores.fetch_add(1, Relaxed);
        if by_fallback {
            c.fallback_stores.fetch_add(1, Relaxed);
        }
        Ok(handle)
    }

    /// Compresses `page` with `codec` into `scratch`: `Ok(length)` if that
    /// is within the threshold, else `Err` of what it came to (at least
    /// `SCRATCH_BYTES` when it did not fit the scratch).
    fn compress(&self, codec: Codec, page: &Page, scratch: &mut [u8; SCRATCH_BYTES]) -> Result<Result<usize, usize>, TierError> {
        let n = codec::compress(codec, page, scratch).map_err(|source| TierError::Os { op: "compressing a page", source })?;
        Ok(match n {
            Some(n) if n <= self.threshold => Ok(n),
            other => Err(other.unwrap_or(SCRATCH_BYTES)),
        })
    }

    fn load_page(&self, handle: Handle, out: &mut Page) -> Result<(), TierError> {
        let _reading = self.readers.enter();
        match self.handles.get(handle) {
            Some(Entry::Fill(word)) => {
                let word = word.to_ne_bytes();
                out.chunks_exact_mut(8).for_each(|w| w.copy_from_slice(&word));
            }
            Some(Entry::Object { encoding, len, offset }) => {
                // SAFETY: the object was written before its entry was published
                // (Release, then SeqCst read), and is neither changed nor freed
                // while the handle lives (the runtime does not remove a handle
                // while loading it); if compaction moves it meanwhile, the old
                // copy stays intact until this load leaves the reader gate.
                let src = unsafe { std::slice::from_raw_parts(self.slabs.object(offset, len), len) };
                if let Err(reason) = codec::decompress(encoding, src, out) {
                    self.counters.load_errors.fetch_add(1, Relaxed);
                    return Err(TierError::Corrupt { handle, reason: format!("object at slab offset {offset:#x}, {len} bytes: {reason}") });
                }
            }
            None => {
                self.counters.load_errors.fetch_add(1, Relaxed);
                return Err(TierError::UnknownHandle(handle));
            }
        }
        Ok(())
    }

    fn remove_page(&self, handle: Handle) {
        let c = &self.counters;
        match self.handles.take(handle) {
            None => return,
            Some(Entry::Fill(word)) => {
                if word == 0 { &c.zero_pages } else { &c.same_filled_pages }.fetch_sub(1, Relaxed);
                c.bytes_compressed.fetch_sub(FILL_BYTES, Relaxed);
            }
            Some(Entry::Object { len, offset, .. }) => {
                let empty = self.slabs.free(offset, len);
                self.slabs.release(empty, &self.budget);
                c.bytes_compressed.fetch_sub(len as u64, Relaxed);
            }
        }
        c.pages.fetch_sub(1, Relaxed);
    }
}
