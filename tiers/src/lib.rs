//! Where an evicted page lives.
//!
//! A [`Tier`] stores 4 KiB pages and hands back an opaque [`Handle`]; the runtime
//! keeps the handle in its page table and later loads the page back with it, or
//! drops it when the program's own actions (munmap, MADV_DONTNEED) make the copy
//! meaningless. Only this crate knows how bytes are stored.
//!
//! [`CompressedTier`] is T1: pages compressed with lz4 or zstd (by default
//! lz4, and zstd level 1 for the pages lz4 leaves above the threshold),
//! zero-filled and same-filled pages kept as one word, compressed objects packed in size classes
//! of slabs the tier maps itself, compacted on request. [`RawTier`] keeps pages
//! as they are. [`MmapTier`] keeps them raw or compressed in a shared mapping
//! of CXL or DAX memory (or a file, or a memfd), optionally bound to a NUMA
//! node. [`FileTier`] is T2's spill file: pages compressed into a log of
//! segments in an unlinked file, read and written through io_uring, each
//! checked by a crc (optionally encrypted), compacted by a thread of its own.
//! [`RemoteTier`] keeps pages on a network store (Redis, Valkey, memcached),
//! compressed, checked and encrypted the same way, sent in pipelined batches.
//! [`TierSpec`] is the one-string tier configuration a user writes
//! (`lz4,mmap:/dev/dax0.0:64G:lz4,file:/var/tmp:100G`). Every tier times its
//! loads and stores ([`LatencyHistogram`]) and reports the percentiles, and
//! its compaction work, in [`TierStats`].
//!
//! ```
//! use farmem_tiers::{CompressedTier, CompressedConfig, Tier, PageClass, PAGE_SIZE};
//!
//! let tier = CompressedTier::new(CompressedConfig::default()).unwrap();
//! let mut page = [0u8; PAGE_SIZE];
//! page[..11].copy_from_slice(b"hello, tier");
//! let handle = tier.store(&page, PageClass::DEFAULT).unwrap();
//! let mut back = [0u8; PAGE_SIZE];
//! tier.load(handle, &mut back).unwrap();
//! assert_eq!(page, back);
//! tier.remove(handle);
//! ```

mod build;
pub mod compressed;
mod error;
pub mod file;
pub mod latency;
pub mod mem;
pub mod mmap;
pub mod raw;
pub mod remote;
pub mod spec;
mod threads;

pub use build::BuildError;
pub use compressed::{Codec, CodecParseError, CompactReport, CompressedConfig, CompressedMemory, CompressedTier, Incompressible};
pub use error::TierError;
pub use file::{FileCompaction, FileConfig, FileStats, FileTier};
pub use latency::{LatencyHistogram, OpLatency};
pub use mmap::{MmapConfig, MmapTier};
pub use raw::RawTier;
pub use remote::{RemoteConfig, RemoteStats, RemoteTier};
pub use spec::{FirstTier, MmapForm, RemoteProtocol, RemoteSpec, SpecError, SpecProblem, SpillTier, TierSpec};
pub use threads::set_thread_hook;

/// The size of a page as farmem stores it.
pub const PAGE_SIZE: usize = 4096;

/// A page's contents, as the tiers take and give them.
pub type Page = [u8; PAGE_SIZE];

/// Names one stored page inside one tier. Only the low [`Handle::BITS`] bits may
/// be used, so that the runtime can pack a handle and a state tag in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle(u64);

impl Handle {
    /// How many bits of a handle a tier may use.
    pub const BITS: u32 = 56;
    /// The largest raw value a handle may hold.
    pub const MAX: u64 = (1 << Self::BITS) - 1;

    /// Makes a handle from a tier-chosen value.
    ///
    /// # Panics
    /// If `raw` does not fit in [`Handle::BITS`] bits: that is a tier bug.
    pub fn new(raw: u64) -> Self {
        assert!(raw <= Self::MAX, "tier handle {raw:#x} exceeds {} bits", Self::BITS);
        Handle(raw)
    }

    /// The raw value, for packing into the runtime's page table.
    pub fn raw(self) -> u64 {
        self.0
    }
}

/// A hint from the policy about a page, used by a tier to pick how to store it
/// (for T1: which codec). Class 0 is the default; higher classes are colder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PageClass(pub u8);

impl PageClass {
    /// The class of a page the policy knows nothing special about.
    pub const DEFAULT: PageClass = PageClass(0);
    /// Pages the policy considers cold enough for a slower, denser codec.
    pub const COLD: PageClass = PageClass(1);
}

/// How much a tier may hold and how much it holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Capacity {
    /// The limit on the tier's own memory or storage, in bytes.
    pub limit_bytes: u64,
    /// What the tier uses now, in bytes, metadata included.
    pub used_bytes: u64,
}

/// Counters a tier keeps about itself. All sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TierStats {
    /// Pages stored now.
    pub pages: u64,
    /// Pages stored now that were all zeros (kept as one word).
    pub zero_pages: u64,
    /// Pages stored now that were one repeated 8-byte word, zeros excluded.
    pub same_filled_pages: u64,
    /// Pages refused because they compressed worse than the tier's threshold.
    pub rejected_incompressible: u64,
    /// Uncompressed size of the pages stored now (`pages * PAGE_SIZE`).
    pub bytes_in: u64,
    /// Sum of the compressed sizes of the pages stored now.
    pub bytes_compressed: u64,
    /// Memory the tier really uses: slabs, handle table and other metadata.
    pub bytes_used: u64,
    /// Pages stored since the tier was made.
    pub stores: u64,
    /// Of `stores`, the pages T1's fallback codec kept (its first codec left
    /// them above the threshold): with `lz4+zstd:1`, the zstd ones.
    pub fallback_stores: u64,
    /// Pages since the tier was made that T1's fallback codec also left
    /// above the threshold (then refused, or stored raw, by the tier's rule).
    pub fallback_failures: u64,
    /// Pages loaded since the tier was made.
    pub loads: u64,
    /// Loads that failed (corruption, I/O).
    pub load_errors: u64,
    /// Median time of a load, in nanoseconds (within 12.5%, see
    /// [`LatencyHistogram`]); 0 before the first load.
    pub load_p50_ns: u64,
    /// 99th percentile of the time of a load, in nanoseconds.
    pub load_p99_ns: u64,
    /// Median time of a store, in nanoseconds (refused stores included).
    pub store_p50_ns: u64,
    /// 99th percentile of the time of a store, in nanoseconds.
    pub store_p99_ns: u64,
    /// Compaction runs since the tier was made, explicit and background.
    pub compactions: u64,
    /// Bytes of stored pages compaction copied to pack them together.
    pub compaction_bytes_moved: u64,
    /// Bytes of storage compaction gave back (file segments, slabs).
    pub compaction_bytes_freed: u64,
    /// Time spent compacting, in nanoseconds.
    pub compaction_ns: u64,
}

impl TierStats {
    /// The statistics of a tier that keeps `pages` whole pages as they are
    /// (raw and mmap tiers): every byte in is a byte used.
    pub fn uncompressed(pages: u64, stores: u64, loads: u64, load_errors: u64) -> Self {
        let bytes = pages * PAGE_SIZE as u64;
        TierStats { pages, bytes_in: bytes, bytes_compressed: bytes, bytes_used: bytes, stores, loads, load_errors, ..TierStats::default() }
    }

    /// These statistics with the load and store percentiles of `latency`.
    pub fn with_latency(self, latency: &OpLatency) -> Self {
        TierStats {
            load_p50_ns: latency.load.quantile(0.5),
            load_p99_ns: latency.load.quantile(0.99),
            store_p50_ns: latency.store.quantile(0.5),
            store_p99_ns: latency.store.quantile(0.99),
            ..self
        }
    }

    /// Uncompressed bytes per byte of real memory used (higher is better).
    pub fn ratio(&self) -> f64 {
        if self.bytes_used == 0 {
            return 0.0;
        }
        self.bytes_in as f64 / self.bytes_used as f64
    }

    /// Memory used beyond the sum of compressed sizes, as a fraction of that sum.
    pub fn overhead(&self) -> f64 {
        if self.bytes_compressed == 0 {
            return 0.0;
        }
        self.bytes_used.saturating_sub(self.bytes_compressed) as f64 / self.bytes_compressed as f64
    }
}

/// A place an evicted page can live. Implementations must be usable from many
/// threads at once, and must never allocate from memory the runtime registers
/// (their buffers come from `mmap` of their own, or the runtime's allocator).
///
/// Ownership of a handle is exclusive: the runtime never loads, or removes, a
/// handle it has already removed, and never uses one handle from two threads at
/// once except for `load` racing nothing but other handles' operations.
pub trait Tier: Send + Sync {
    /// A short name for logs and statistics ("lz4", "file").
    fn name(&self) -> &str;

    /// Stores a copy of `page`. Fails with [`TierError::Full`] when the tier has
    /// no room, or [`TierError::Incompressible`] when its rule refuses the page;
    /// the caller then keeps the page in RAM.
    fn store(&self, page: &Page, class: PageClass) -> Result<Handle, TierError>;

    /// Writes the page named by `handle` into `out`. The handle stays valid.
    /// An error means the bytes cannot be given back; the runtime then poisons
    /// the page rather than return anything else.
    fn load(&self, handle: Handle, out: &mut Page) -> Result<(), TierError>;

    /// Loads `handles[i]` into `out[i]` for every `i` and calls
    /// `done(i, result)` for each page, in no fixed order; a failed page's
    /// `out[i]` holds nothing meaningful. A tier that can read several pages
    /// at once (the file tier: one io_uring submission) overrides it; the
    /// default loads them one at a time.
    ///
    /// # Panics
    /// If the slices differ in length.
    fn load_many(&self, handles: &[Handle], out: &mut [Page], done: &mut dyn FnMut(usize, Result<(), TierError>)) {
        assert_eq!(handles.len(), out.len(), "load_many: {} handles for {} pages", handles.len(), out.len());
        for (i, (handle, page)) in handles.iter().zip(out.iter_mut()).enumerate() {
            done(i, self.load(*handle, page));
        }
    }

    /// Forgets the page named by `handle` and frees its space.
    fn remove(&self, handle: Handle);

    /// Whether `load` may run in a signal handler: it neither allocates nor
    /// takes a lock that a thread it interrupted could hold, nor waits on
    /// another thread. The runtime's signal mode needs this of every tier.
    fn loads_in_signal_handler(&self) -> bool {
        false
    }

    /// The tier's limit and current use.
    fn capacity(&self) -> Capacity;

    /// A snapshot of the tier's counters.
    fn stats(&self) -> TierStats;
}
