//! [`FileTier`], the tier's public face: [`FileTier::open`] checks the
//! config, makes the spill file and sets up every part on it; the methods
//! beyond [`Tier`] (flush, compact, statistics, batched loads) and the
//! [`Tier`] impl are short calls into the part that does the work.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::background::{Compactor, Wake};
use super::compact::{FileCompaction, Victims};
use super::config::FileConfig;
use super::crypt::Sealer;
use super::ring::Ring;
use super::segment::{Segments, Writer, SEALED};
use super::slots::SlotTable;
use super::stats::{Counters, FileStats};
use super::{backing, Shared, NAME};
use crate::latency::{CompactionWork, OpLatency};
use crate::{Capacity, Handle, Page, PageClass, SpillTier, Tier, TierError, TierStats};

/// Most slots: as many as T1 allows handles (1 TiB of pages).
const MAX_SLOTS: u64 = 1 << 28;

/// The file spill tier (T2).
pub struct FileTier {
    pub(super) shared: Arc<Shared>,
    compactor: Option<Compactor>,
}

impl FileTier {
    /// Makes the spill file in `config.dir` and the tier on it.
    pub fn open(config: FileConfig) -> Result<Self, TierError> {
        let limit = config.limit_bytes;
        let (segment_bytes, count) = config.geometry()?;
        match std::fs::metadata(&config.dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(config.bad("it is not a directory; give the directory to make the spill file in".into())),
            Err(e) => return Err(config.bad(format!("cannot look at it: {e}; give an existing directory"))),
        }
        let made = backing::create(&config.dir, config.tmpfile, config.direct_io).map_err(|e| config.bad(format!("cannot make a spill file in it: {e}")))?;
        let os = |op: &'static str| move |source| TierError::Os { op, source };
        let sealer = if config.encrypt { Some(Sealer::random().map_err(os("drawing the file tier's key"))?) } else { None };
        // A zero page packs into 48 bytes; the table is only reserved, not used.
        let slots = (limit / 32).clamp(1, MAX_SLOTS) as u32;
        let tier = Shared {
            segment_bytes: segment_bytes as usize,
            segments: Segments::new(count).map_err(os("mapping the file tier's segment table"))?,
            slots: SlotTable::new(slots).map_err(os("mapping the file tier's slot table"))?,
            writer: Mutex::new(Writer::new(count, segment_bytes as usize).map_err(os("mapping the file tier's segment buffers"))?),
            sealed: Condvar::new(),
            ring: Ring::new().map_err(os("setting up the file tier's io_uring"))?,
            sealer,
            compaction: Mutex::new(()),
            seq: AtomicU64::new(0),
            counters: Counters::default(),
            latency: OpLatency::default(),
            work: CompactionWork::default(),
            wake: Wake::default(),
            #[cfg(test)]
            fail_reads: Default::default(),
            file: made.file,
            path: made.path,
            direct: made.direct,
            config,
        };
        tracing::info!(
            "file tier: spill file {} ({} segments of {} KiB, {}, {})",
            tier.path.display(),
            count,
            segment_bytes >> 10,
            if tier.direct { "O_DIRECT" } else { "buffered" },
            if tier.sealer.is_some() { "encrypted" } else { "not encrypted" }
        );
        let shared = Arc::new(tier);
        let compactor = match shared.config.compact_interval {
            Some(every) => Some(Compactor::start(&shared, every)?),
            None => None,
        };
        Ok(FileTier { shared, compactor })
    }

    /// The tier of a `file:DIR:SIZE` spec part; other kinds are refused.
    pub fn from_spill(spill: &SpillTier) -> Result<Self, TierError> {
        match FileConfig::from_spill(spill) {
            Some(config) => Self::open(config),
            None => Err(TierError::BadBacking { tier: NAME, path: PathBuf::from(spill.to_string()), reason: "not a file:DIR:SIZE tier".into() }),
        }
    }

    /// The configuration the tier was made with.
    pub fn config(&self) -> &FileConfig {
        &self.shared.config
    }

    /// The spill file as messages name it: its directory, and how it was made.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Whether the file is read and written with O_DIRECT.
    pub fn direct_io(&self) -> bool {
        self.shared.direct
    }

    /// The spill file's descriptor, for benchmarks that read the same file
    /// without the tier (open `/proc/self/fd/N`). Writing through it corrupts pages.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.shared.file.as_fd()
    }

    /// Writes the segments in RAM to the file and seals them, so every page
    /// stored so far is read back from the file; then compacts if the dead
    /// share of sealed segments passes `compact_below` (and writes what
    /// compaction moved too).
    pub fn flush(&self) -> Result<(), TierError> {
        let s = &self.shared;
        s.seal_open()?;
        let (n, live, _) = s.segments.totals(SEALED);
        let bytes = n * s.segment_bytes as u64;
        if bytes > 0 && (bytes - live) as f64 > s.config.compact_below * bytes as f64 {
            let done = s.compact(Victims::BySize, false);
            tracing::debug!("file tier: compaction on flush: {done:?}");
            s.seal_open()?;
        }
        Ok(())
    }

    /// Rewrites the live records of sealed segments under `compact_below`
    /// live (by segment size, so segments sealed part-filled are packed too)
    /// into the open segment and frees those segments. Runs beside stores,
    /// loads, removes and the background thread, one compaction at a time;
    /// a load waits for it at most for one record move. Moved records are in
    /// RAM until the open segment is written (when full, or on
    /// [`FileTier::flush`]).
    pub fn compact(&self) -> FileCompaction {
        self.shared.compact(Victims::BySize, false)
    }

    /// Counters beyond [`TierStats`].
    pub fn file_stats(&self) -> FileStats {
        self.shared.file_stats()
    }

    /// Loads `handles[i]` into `out[i]` for every `i`, with the reads of up
    /// to 32 pages in flight at once (for prefetch), and calls
    /// `done(i, result)` for each page as it is checked, in no fixed order. A
    /// failed page's `out[i]` holds nothing meaningful. Each page's time, from
    /// the start of its batch, goes to the load latency histogram.
    ///
    /// # Panics
    /// If the slices differ in length.
    pub fn load_many(&self, handles: &[Handle], out: &mut [Page], done: impl FnMut(usize, Result<(), TierError>)) {
        self.shared.load_many(handles, out, done)
    }
}

impl Drop for FileTier {
    fn drop(&mut self) {
        if let Some(compactor) = self.compactor.take() {
            compactor.stop(&self.shared.wake);
        }
    }
}

impl Tier for FileTier {
    fn name(&self) -> &str {
        NAME
    }

    /// Stores the page in the open segment (PageClass is not used: one codec).
    fn store(&self, page: &Page, _class: PageClass) -> Result<Handle, TierError> {
        let start = Instant::now();
        let r = self.shared.store(page);
        self.shared.latency.store.record_since(start);
        r
    }

    fn load(&self, handle: Handle, out: &mut Page) -> Result<(), TierError> {
        let mut result = Err(TierError::UnknownHandle(handle));
        self.shared.load_many(&[handle], std::slice::from_mut(out), |_, r| result = r);
        result
    }

    /// The reads of up to 32 pages in flight at once (see [`FileTier::load_many`]).
    fn load_many(&self, handles: &[Handle], out: &mut [Page], done: &mut dyn FnMut(usize, Result<(), TierError>)) {
        self.shared.load_many(handles, out, done)
    }

    /// Frees the page's record (its space comes back when its segment is
    /// compacted). A handle naming no stored page is ignored.
    fn remove(&self, handle: Handle) {
        self.shared.remove(handle)
    }

    fn capacity(&self) -> Capacity {
        self.shared.capacity()
    }

    fn stats(&self) -> TierStats {
        self.shared.tier_stats()
    }
}

impl std::fmt::Debug for FileTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.shared;
        f.debug_struct("FileTier")
            .field("path", &s.path)
            .field("direct", &s.direct)
            .field("segment_bytes", &s.segment_bytes)
            .field("segments", &s.segments.count())
            .field("encrypted", &s.sealer.is_some())
            .field("background_compaction", &self.compactor.is_some())
            .finish()
    }
}
