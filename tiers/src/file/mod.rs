//! T2: pages spilled to a file in a directory the user names, written and
//! read through io_uring.
//!
//! - **The file.** One file per tier, made with O_TMPFILE (or, where the file
//!   system refuses it, created under a fresh name and unlinked at once), mode
//!   0600: it has no name while in use and is gone with the process, even
//!   after SIGKILL (design rule 6). Reads and writes use O_DIRECT when a probe
//!   at open shows the file system takes it, buffered I/O otherwise (logged).
//! - **The log.** The file is cut into segments of `segment_bytes` (1 MiB by
//!   default). Pages are compressed (lz4 by default) into records of a
//!   24-byte header and the payload, packed 8-byte aligned into the *open*
//!   segment, a buffer in RAM; when it is full, or on [`FileTier::flush`],
//!   it is handed to a second buffer and written from there with one
//!   io_uring write (stores go on into the next segment meanwhile), then
//!   *sealed*. A load of a page still in RAM (the open segment, or the one
//!   being written) is copied from there. Any other load submits one read of
//!   the 4 KiB blocks its record spans and waits for it;
//!   [`FileTier::load_many`] submits the reads of many pages at once.
//! - **Never wrong bytes.** Each record carries a crc32c of its header and
//!   payload, and its header names the handle's slot and generation; both are
//!   checked on every load. A mismatch, a short read or an I/O error makes
//!   the load fail with [`TierError::SpillCorrupt`] or [`TierError::SpillIo`]
//!   (naming the file, offset and handle), logged and counted in
//!   `load_errors`; the page's bytes are never given out.
//! - **Encryption** ([`FileConfig::encrypt`], off by default): payloads are
//!   sealed with ChaCha20-Poly1305 under a key drawn at open and kept only in
//!   memory; the tag is checked besides the crc.
//! - **Handles** are a slot (32 bits) and its 24-bit generation: the slot
//!   holds the record's segment, offset and length, so compaction moves
//!   records without changing handles, and a removed handle never loads
//!   another page.
//! - **Space.** `limit_bytes` bounds the file. A store that finds no free
//!   segment (one is kept back for compaction) first compacts, then fails
//!   with [`TierError::Full`]; nothing is ever dropped. A removed page leaves
//!   a dead record; compaction rewrites the live records of sealed segments
//!   whose live share fell under `compact_below` into the open segment, and
//!   frees those segments (their file range is punched out).
//! - **Background compaction.** Each tier runs a thread of its own, named
//!   `farmem-compact`, started by [`FileTier::open`] and stopped and joined
//!   when the tier is dropped ([`FileConfig::compact_interval`]; `None` runs
//!   none). Every interval it looks whether a remove left a sealed segment
//!   with less than `compact_below` of its filled bytes live, and if so
//!   compacts those segments. [`FileTier::compact`] is the explicit path: it
//!   also packs segments that were sealed part-filled (by a flush), taking
//!   every sealed segment less than `compact_below` live by segment size. A
//!   store that finds the tier full runs it, and [`FileTier::flush`] runs it
//!   when the dead share of sealed segments passes `compact_below`. Work is
//!   counted in [`FileStats`] and in [`TierStats`]'s `compaction_*` fields.
//! - **Threads.** Every method takes `&self`. `load` takes no lock for a
//!   sealed segment: it counts itself into the segment's readers (a segment
//!   is freed only when its readers are gone), takes a read buffer from a
//!   pool of 64, and shares the ring: submissions under a mutex, completions
//!   reaped by one waiter at a time for all (see `ring`). A load of a page in
//!   RAM takes the writer mutex for the copy of its record. Stores and
//!   compaction append under the writer mutex, one record at a time, and
//!   never hold it across I/O: a segment is written after its buffer is
//!   handed over, the mutex released. Compaction runs one at a time, holds
//!   no lock across its reads, and takes the slot lock once per record it
//!   moves; so a load never waits on compaction for longer than one record
//!   move. Segment writes and compaction reads wait for their completions
//!   without holding the ring's completion mutex (`Ring::wait_politely`).
//! - **Memory.** Buffers, the slot table and segment counters are mappings
//!   of the tier's own (design rule 2). What allocates: lz4_flex's hash
//!   table per store, zstd's context per call when zstd is chosen, and the
//!   message of an error. The compaction thread first calls the hook of
//!   [`crate::set_thread_hook`], where the runtime marks it as its own.
//!
//! ```
//! use farmem_tiers::{FileConfig, FileTier, PageClass, Tier, PAGE_SIZE};
//!
//! let tier = FileTier::open(FileConfig::new(std::env::temp_dir(), 16 << 20)).unwrap();
//! let mut page = [0u8; PAGE_SIZE];
//! page[..11].copy_from_slice(b"hello, disk");
//! let handle = tier.store(&page, PageClass::DEFAULT).unwrap();
//! tier.flush().unwrap(); // now the page is read back from the file
//! let mut back = [0u8; PAGE_SIZE];
//! tier.load(handle, &mut back).unwrap();
//! assert_eq!(page, back);
//! tier.remove(handle);
//! ```

mod backing;
mod compact;
mod crypt;
mod record;
mod ring;
mod segment;
mod slots;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use compact::FileCompaction;

use compact::Victims;

use crypt::Sealer;
use record::{MAX_RECORD, RECORD_BUF};
use ring::{Op, Ring, POOL, READ_BUF, WRITE_SLOT};
use segment::{Meta, Segments, Writer, NONE, OPEN, SEALED, SEALING};
use slots::{Loc, SlotTable};

use crate::latency::{CompactionWork, OpLatency};
use crate::{Capacity, Codec, Handle, Page, PageClass, SpillTier, Tier, TierError, TierStats, PAGE_SIZE};

const NAME: &str = "file";
const BLOCK: u64 = 4096;
/// Segments a store leaves free, so compaction always has room to start.
const RESERVE: u32 = 1;
/// At most this many pages are read at once by one `load_many` round.
const BATCH: usize = POOL / 2;
/// Most slots: as many as T1 allows handles (1 TiB of pages).
const MAX_SLOTS: u64 = 1 << 28;

/// How a [`FileTier`] is set up.
#[derive(Clone, Debug, PartialEq)]
pub struct FileConfig {
    /// The directory the spill file is made in.
    pub dir: PathBuf,
    /// The most the file may hold, in bytes (a multiple of 4096, at least two segments).
    pub limit_bytes: u64,
    /// Bytes of one segment: a multiple of 4096, 8 KiB to 8 MiB; cut to half
    /// the limit if larger. Default 1 MiB.
    pub segment_bytes: usize,
    /// The codec of stored pages. Default lz4. Pages that do not compress are
    /// stored raw.
    pub codec: Codec,
    /// Encrypt stored pages with a per-process random key. Default off.
    pub encrypt: bool,
    /// Sealed segments with less than this share live are compacted. Default 0.5.
    pub compact_below: f64,
    /// Try O_DIRECT. Default on; off forces buffered I/O.
    pub direct_io: bool,
    /// Try O_TMPFILE. Default on; off goes straight to create-and-unlink.
    pub tmpfile: bool,
    /// How often the background compaction thread looks for segments to
    /// compact. Default 100 ms; `None` starts no thread (compaction then
    /// runs only when called, or when a store finds the tier full).
    pub compact_interval: Option<Duration>,
}

impl FileConfig {
    /// The defaults, with a file in `dir` of at most `limit_bytes`.
    pub fn new(dir: impl Into<PathBuf>, limit_bytes: u64) -> Self {
        FileConfig {
            dir: dir.into(),
            limit_bytes,
            segment_bytes: 1 << 20,
            codec: Codec::Lz4,
            encrypt: false,
            compact_below: 0.5,
            direct_io: true,
            tmpfile: true,
            compact_interval: Some(Duration::from_millis(100)),
        }
    }

    /// The config of a `file:DIR:SIZE` spec part; `None` for another kind.
    pub fn from_spill(spill: &SpillTier) -> Option<Self> {
        match spill {
            SpillTier::File { dir, size_bytes } => Some(Self::new(dir.clone(), *size_bytes)),
            SpillTier::Mmap { .. } => None,
        }
    }

    /// This config with encryption on.
    pub fn encrypted(self) -> Self {
        FileConfig { encrypt: true, ..self }
    }
}

/// Counters of a [`FileTier`] beyond [`TierStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileStats {
    /// Pages stored now.
    pub pages: u64,
    /// Bytes of their records (headers included).
    pub record_bytes: u64,
    /// Segments in the file's limit.
    pub segments: u64,
    /// Bytes of one segment.
    pub segment_bytes: u64,
    /// Sealed segments (in the file).
    pub sealed_segments: u64,
    /// Free segments.
    pub free_segments: u64,
    /// Page reads submitted to the file (each one io_uring read).
    pub reads: u64,
    /// Loads served from the open segment in RAM.
    pub ram_loads: u64,
    /// Bytes read from the file (page reads and compaction).
    pub bytes_read: u64,
    /// Segment writes.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Loads that failed (unknown handle, I/O, checksum).
    pub load_errors: u64,
    /// Of those, records that failed their crc, header or tag check.
    pub checksum_errors: u64,
    /// Compactions run (explicit, on a full store, and in the background).
    pub compactions: u64,
    /// Of those, run by the background thread.
    pub background_compactions: u64,
    /// Records moved by them.
    pub records_moved: u64,
    /// Their bytes.
    pub bytes_moved: u64,
    /// Segments they freed.
    pub segments_freed: u64,
    /// Time they took, in nanoseconds.
    pub compaction_ns: u64,
    /// Memory of the slot table (the pages of slots ever used).
    pub table_bytes: u64,
    /// Whether the file is read and written with O_DIRECT.
    pub direct_io: bool,
    /// Whether pages are encrypted.
    pub encrypted: bool,
}

#[derive(Default)]
struct Counters {
    pages: AtomicU64,
    record_bytes: AtomicU64,
    stores: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    checksum_errors: AtomicU64,
    reads: AtomicU64,
    ram_loads: AtomicU64,
    bytes_read: AtomicU64,
    writes: AtomicU64,
    bytes_written: AtomicU64,
    background_compactions: AtomicU64,
    records_moved: AtomicU64,
    segments_freed: AtomicU64,
}

/// The file spill tier (T2).
pub struct FileTier {
    shared: Arc<Shared>,
    compactor: Option<Compactor>,
}

/// The background compaction thread, stopped and joined on drop.
struct Compactor {
    thread: Option<JoinHandle<()>>,
    /// The process that started it: a forked child has no such thread to join.
    pid: u32,
}

/// What the compaction thread sleeps on.
#[derive(Default)]
struct Wake {
    stop: Mutex<bool>,
    cv: Condvar,
    /// Set when a remove leaves a sealed segment under the threshold.
    wanted: AtomicBool,
    /// The thread's id (gettid), once it runs.
    tid: AtomicU64,
}

/// The tier's state, shared with its compaction thread.
struct Shared {
    config: FileConfig,
    file: File,
    path: PathBuf,
    direct: bool,
    segment_bytes: usize,
    segments: Segments,
    slots: SlotTable,
    writer: Mutex<Writer>,
    /// Signalled when the segment being written is sealed (or its write failed).
    sealed: Condvar,
    ring: Ring,
    sealer: Option<Sealer>,
    compaction: Mutex<()>,
    seq: AtomicU64,
    counters: Counters,
    latency: OpLatency,
    work: CompactionWork,
    wake: Wake,
    /// Test hook: this many next page reads fail with EIO.
    #[cfg(test)]
    fail_reads: std::sync::atomic::AtomicU32,
}

/// A load's hold on the segment it reads: the segment is not freed meanwhile.
struct Pin<'a> {
    meta: &'a Meta,
    loc: Loc,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.meta.readers.fetch_sub(1, SeqCst);
    }
}

/// A page read in flight in `load_many`.
struct Pending<'a> {
    index: usize,
    handle: Handle,
    pin: Pin<'a>,
    buffer: usize,
    /// Where the read starts in the file, and how far the record's end is from it.
    start: u64,
    end: usize,
}

impl FileTier {
    /// Makes the spill file in `config.dir` and the tier on it.
    pub fn open(config: FileConfig) -> Result<Self, TierError> {
        let dir = config.dir.clone();
        let bad = |reason: String| TierError::BadBacking { tier: NAME, path: dir.clone(), reason };
        let limit = config.limit_bytes;
        let segment_bytes = (config.segment_bytes.clamp(8 << 10, 8 << 20) as u64).min(limit / 2 / BLOCK * BLOCK);
        if !(config.segment_bytes as u64).is_multiple_of(BLOCK) {
            return Err(bad(format!("segment_bytes {} is not a multiple of 4096", config.segment_bytes)));
        }
        // Two segments of 8 KiB at least: one to fill, one kept for compaction.
        if limit == 0 || !limit.is_multiple_of(BLOCK) || segment_bytes < 8 << 10 {
            return Err(TierError::BadLimit { tier: NAME, limit_bytes: limit });
        }
        let count = (limit / segment_bytes).min(1 << 24) as u32;
        if !(0.0..=1.0).contains(&config.compact_below) {
            return Err(bad(format!("compact_below {} is not a share between 0 and 1", config.compact_below)));
        }
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(bad("it is not a directory; give the directory to make the spill file in".into())),
            Err(e) => return Err(bad(format!("cannot look at it: {e}; give an existing directory"))),
        }
        let made = backing::create(&dir, config.tmpfile, config.direct_io).map_err(|e| bad(format!("cannot make a spill file in it: {e}")))?;
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
            Some(every) => {
                let s = Arc::clone(&shared);
                let thread = crate::threads::spawn(c"farmem-compact", move || {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.compact_in_background(every))).is_err() {
                        tracing::error!("file tier: the compaction thread panicked; compaction now runs only when a store finds the tier full");
                    }
                })
                .map_err(|source| TierError::Os { op: "starting the file tier's compaction thread", source })?;
                Some(Compactor { thread: Some(thread), pid: std::process::id() })
            }
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
        let s = &self.shared;
        let c = &s.counters;
        let free = s.lock_writer().free_segments() as u64;
        let work = s.work.fill(TierStats::default());
        FileStats {
            pages: c.pages.load(Relaxed),
            record_bytes: c.record_bytes.load(Relaxed),
            segments: s.segments.count() as u64,
            segment_bytes: s.segment_bytes as u64,
            sealed_segments: s.segments.totals(SEALED).0,
            free_segments: free,
            reads: c.reads.load(Relaxed),
            ram_loads: c.ram_loads.load(Relaxed),
            bytes_read: c.bytes_read.load(Relaxed),
            writes: c.writes.load(Relaxed),
            bytes_written: c.bytes_written.load(Relaxed),
            load_errors: c.load_errors.load(Relaxed),
            checksum_errors: c.checksum_errors.load(Relaxed),
            compactions: work.compactions,
            background_compactions: c.background_compactions.load(Relaxed),
            records_moved: c.records_moved.load(Relaxed),
            bytes_moved: work.compaction_bytes_moved,
            segments_freed: c.segments_freed.load(Relaxed),
            compaction_ns: work.compaction_ns,
            table_bytes: s.slots.bytes(),
            direct_io: s.direct,
            encrypted: s.sealer.is_some(),
        }
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
        let Some(mut c) = self.compactor.take() else { return };
        let thread = c.thread.take().expect("the compaction thread is joined once");
        if c.pid != std::process::id() {
            // A forked child: the thread is not here (and may have held the
            // stop mutex at the fork). Neither join nor detach it, touch nothing.
            std::mem::forget(thread);
            return;
        }
        let wake = &self.shared.wake;
        *wake.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.cv.notify_all();
        // A compaction in progress finishes first: at most a batch of reads.
        if thread.join().is_err() {
            tracing::error!("file tier: the compaction thread panicked");
        }
    }
}

impl Shared {
    /// See [`FileTier::load_many`].
    fn load_many(&self, handles: &[Handle], out: &mut [Page], mut done: impl FnMut(usize, Result<(), TierError>)) {
        assert_eq!(handles.len(), out.len(), "load_many: {} handles for {} pages", handles.len(), out.len());
        let mut next = 0;
        let mut done = |i, r: Result<(), TierError>, start: Instant| {
            self.latency.load.record_since(start);
            done(i, r)
        };
        while next < handles.len() {
            let start = Instant::now();
            let mut buffers = self.ring.take_buffers((handles.len() - next).min(BATCH));
            let mut pending: [Option<Pending<'_>>; BATCH] = [const { None }; BATCH];
            let mut ops = [const { None::<Op> }; BATCH];
            let mut n = 0;
            while next < handles.len() && buffers != 0 {
                let (index, handle) = (next, handles[next]);
                next += 1;
                let Some(pin) = self.pin(handle) else {
                    done(index, Err(self.unknown(handle)), start);
                    continue;
                };
                let mut rec = [0u8; RECORD_BUF];
                if self.copy_open(pin.loc, &mut rec) {
                    self.counters.ram_loads.fetch_add(1, Relaxed);
                    let r = self.decode(handle, pin.loc, &mut rec[..pin.loc.len()], &mut out[index]);
                    done(index, self.count_load(r), start);
                    continue;
                }
                let buffer = buffers.trailing_zeros() as usize;
                buffers &= buffers - 1;
                let at = self.file_offset(pin.loc);
                let start = at & !(BLOCK - 1);
                let end = (at - start) as usize + pin.loc.len();
                let len = (end as u64).next_multiple_of(BLOCK) as usize;
                debug_assert!(len <= READ_BUF);
                ops[n] = Some(Op { slot: buffer, write: false, fd: self.file.as_raw_fd(), buf: self.ring.buffer(buffer), len, offset: start });
                pending[n] = Some(Pending { index, handle, pin, buffer, start, end });
                n += 1;
            }
            let ops: [Op; BATCH] = ops.map(|o| o.unwrap_or(Op { slot: 0, write: false, fd: -1, buf: std::ptr::null_mut(), len: 0, offset: 0 }));
            // One read (a fault) is queued and submitted by the wait below in
            // the same system call; several are submitted at once, so that
            // they run while the first is waited for.
            // SAFETY: each op's slot is a read buffer this call took from the
            // pool (so its own until given back below), READ_BUF bytes long,
            // and every op is waited for before the buffers go back.
            let sent = if n == 1 { unsafe { self.ring.queue(&ops[..n]) } } else { unsafe { self.ring.submit(&ops[..n]) } };
            if let Err(e) = sent {
                tracing::warn!("file tier: io_uring submit: {e}; waiting for the reads anyway");
            }
            self.counters.reads.fetch_add(n as u64, Relaxed);
            let mut used = 0u64;
            for p in pending.iter_mut().take(n) {
                let p = p.take().expect("pending read");
                used |= 1 << p.buffer;
                let r = self.finish_read(&p, &mut out[p.index]);
                done(p.index, self.count_load(r), start);
            }
            self.ring.give_buffers(used | buffers);
        }
    }

    /// Waits for a page read and checks and decodes what it brought.
    fn finish_read(&self, p: &Pending<'_>, out: &mut Page) -> Result<(), TierError> {
        let loc = p.pin.loc;
        let at = self.file_offset(loc);
        #[allow(unused_mut)]
        let mut got = self.ring.wait(p.buffer);
        #[cfg(test)]
        if self.fail_reads.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_ok() {
            got = Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let got = got.and_then(|n| {
            self.counters.bytes_read.fetch_add(n as u64, Relaxed);
            if n < p.end {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("short read: {n} bytes of {} from offset {}", p.end, p.start)))
            } else {
                Ok(())
            }
        });
        if let Err(source) = got {
            let e = TierError::SpillIo { op: "reading a page", path: self.path.clone(), offset: at, len: loc.len(), handle: Some(p.handle), source };
            tracing::error!("file tier: {e}");
            return Err(e);
        }
        // SAFETY: the read into this buffer is complete and the buffer is
        // ours until given back; the record lies inside it (end <= READ_BUF).
        let rec = unsafe { std::slice::from_raw_parts_mut(self.ring.buffer(p.buffer).add(p.end - loc.len()), loc.len()) };
        self.decode(p.handle, loc, rec, out)
    }

    /// Checks and decodes a record read for `handle`.
    fn decode(&self, handle: Handle, loc: Loc, rec: &mut [u8], out: &mut Page) -> Result<(), TierError> {
        let (slot, generation) = slots::split(handle);
        record::decode(rec, slot, generation, self.sealer.as_ref(), out).map_err(|reason| {
            self.counters.checksum_errors.fetch_add(1, Relaxed);
            let e = TierError::SpillCorrupt { path: self.path.clone(), offset: self.file_offset(loc), handle, reason };
            tracing::error!("file tier: {e}");
            e
        })
    }

    fn count_load(&self, r: Result<(), TierError>) -> Result<(), TierError> {
        match r {
            Ok(()) => self.counters.loads.fetch_add(1, Relaxed),
            Err(_) => self.counters.load_errors.fetch_add(1, Relaxed),
        };
        r
    }

    fn unknown(&self, handle: Handle) -> TierError {
        self.counters.load_errors.fetch_add(1, Relaxed);
        TierError::UnknownHandle(handle)
    }

    /// Counts a load into the readers of the segment `handle`'s record is in,
    /// at a location that cannot change under it any more without the
    /// segment staying; `None` if the handle is not live.
    fn pin(&self, handle: Handle) -> Option<Pin<'_>> {
        let mut loc = self.slots.get(handle)?;
        let (slot, _) = slots::split(handle);
        loop {
            let meta = self.segments.get(loc.segment());
            meta.readers.fetch_add(1, SeqCst);
            // SeqCst with the compactor's relocate-then-wait: either we see the
            // new location here, or it sees our count and keeps the segment.
            let again = self.slots.location(slot);
            if again == loc {
                return Some(Pin { meta, loc });
            }
            meta.readers.fetch_sub(1, SeqCst);
            loc = again;
        }
    }

    /// Copies the record at `loc` into `rec` if its segment is still in RAM:
    /// open, or being written.
    fn copy_open(&self, loc: Loc, rec: &mut [u8; RECORD_BUF]) -> bool {
        let state = self.segments.get(loc.segment()).state.load(Acquire);
        if state != OPEN && state != SEALING {
            return false;
        }
        let mut w = self.lock_writer();
        let bytes: &[u8] = if w.open == loc.segment() {
            w.bytes(loc.offset(), loc.len())
        } else if w.sealing == loc.segment() {
            // Read while the kernel reads the same bytes for the write: both only read.
            w.sealing_bytes(loc.offset(), loc.len())
        } else {
            return false; // sealed since: the file has it
        };
        rec[..loc.len()].copy_from_slice(bytes);
        true
    }

    fn file_offset(&self, loc: Loc) -> u64 {
        loc.segment() as u64 * self.segment_bytes as u64 + loc.offset() as u64
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn full(&self) -> TierError {
        TierError::Full { tier: NAME, limit_bytes: self.segments.count() as u64 * self.segment_bytes as u64 }
    }

    /// Appends a record to the open segment, opening one (and sealing the
    /// full one) if needed while leaving `keep` segments free; counts its
    /// bytes live.
    fn append(&self, rec: &[u8], keep: u32) -> Result<Loc, TierError> {
        debug_assert!(rec.len() <= MAX_RECORD);
        let mut w = self.lock_writer();
        while w.open == NONE || w.fill + rec.len() > self.segment_bytes {
            if w.open != NONE {
                let full = w.open;
                w = self.seal(w, full)?;
                continue; // the lock was let go: look again
            }
            if w.free_segments() <= keep {
                return Err(self.full());
            }
            let segment = w.take(keep).ok_or_else(|| self.full())?;
            let meta = self.segments.get(segment);
            debug_assert_eq!(meta.live.load(Relaxed), 0);
            meta.fill.store(0, Relaxed);
            meta.state.store(OPEN, Release);
            w.open = segment;
            w.fill = 0;
        }
        let offset = w.fill;
        w.bytes(offset, rec.len()).copy_from_slice(rec);
        w.fill = (offset + rec.len()).next_multiple_of(8).min(self.segment_bytes);
        self.segments.get(w.open).live.fetch_add(rec.len() as u32, Relaxed);
        Ok(Loc::new(w.open, offset, rec.len()))
    }

    /// Seals the open segment, if it has anything, and waits until the file
    /// holds it and every segment sealed before.
    fn seal_open(&self) -> Result<(), TierError> {
        let mut w = self.lock_writer();
        if w.open != NONE && w.fill > 0 {
            let open = w.open;
            w = self.seal(w, open)?;
        }
        while w.sealing != NONE {
            w = if w.writing { self.sealed.wait(w).unwrap_or_else(|e| e.into_inner()) } else { self.write_sealing(w)? };
        }
        Ok(())
    }

    /// Hands the open segment, if it is still `segment`, to the sealing
    /// buffer and writes it to the file with the writer mutex released;
    /// returns the mutex taken again. One segment is written at a time: a
    /// second seal first waits for the write before (or, if that write
    /// failed, retries it). On failure the segment stays in RAM, loads are
    /// still served from there, and the error is returned.
    fn seal<'a>(&'a self, mut w: MutexGuard<'a, Writer>, segment: u32) -> Result<MutexGuard<'a, Writer>, TierError> {
        while w.sealing != NONE {
            w = if w.writing { self.sealed.wait(w).unwrap_or_else(|e| e.into_inner()) } else { self.write_sealing(w)? };
        }
        if w.open != segment || w.fill == 0 {
            return Ok(w); // sealed by another thread while this one waited
        }
        let fill = w.fill;
        w.hand_over();
        let meta = self.segments.get(segment);
        meta.fill.store(fill as u32, Relaxed);
        // Loads that see SEALING copy the record from the sealing buffer.
        meta.state.store(SEALING, Release);
        self.write_sealing(w)
    }

    /// Writes the sealing segment's filled blocks with one io_uring write,
    /// the writer mutex released meanwhile, and marks it sealed.
    fn write_sealing<'a>(&'a self, mut w: MutexGuard<'a, Writer>) -> Result<MutexGuard<'a, Writer>, TierError> {
        debug_assert!(w.sealing != NONE && !w.writing);
        let segment = w.sealing;
        let len = (w.sealing_fill as u64).next_multiple_of(BLOCK) as usize;
        let buf = w.sealing_buffer.addr();
        // `writing` makes this thread the owner of the sealing buffer (nobody
        // swaps it) and of the write slot until it is cleared below.
        w.writing = true;
        drop(w);
        let offset = segment as u64 * self.segment_bytes as u64;
        let written = self.io(Op { slot: WRITE_SLOT, write: true, fd: self.file.as_raw_fd(), buf, len, offset });
        let mut w = self.lock_writer();
        w.writing = false;
        match written {
            Ok(n) if n == len => {}
            other => {
                // Wakes a waiter, which retries the write itself.
                self.sealed.notify_all();
                let source = other.map_or_else(|e| e, |n| io::Error::new(io::ErrorKind::WriteZero, format!("short write: {n} bytes of {len}")));
                let e = TierError::SpillIo { op: "writing a segment", path: self.path.clone(), offset, len, handle: None, source };
                tracing::error!("file tier: {e}");
                return Err(e);
            }
        }
        self.counters.writes.fetch_add(1, Relaxed);
        self.counters.bytes_written.fetch_add(len as u64, Relaxed);
        let meta = self.segments.get(segment);
        // Release: a load that sees SEALED finds the bytes in the file.
        meta.state.store(SEALED, Release);
        w.sealing = NONE;
        self.sealed.notify_all();
        if self.under_threshold(meta) {
            // Removes while it was in RAM already left it sparse.
            self.wake.wanted.store(true, Relaxed);
        }
        Ok(w)
    }

    /// Runs one operation on a slot the caller owns (the segment writer's or
    /// the compactor's) and waits for it, politely (see `Ring::wait_politely`).
    fn io(&self, op: Op) -> io::Result<usize> {
        // SAFETY: the callers own op.slot (the writing flag, or the compaction
        // mutex) and its buffer, which outlives this call; the op is waited for here.
        if let Err(e) = unsafe { self.ring.submit(&[op]) } {
            // Still queued: only a wait that enters the kernel submits it again.
            tracing::warn!("file tier: io_uring submit: {e}; waiting anyway");
            return self.ring.wait(op.slot);
        }
        self.ring.wait_politely(op.slot)
    }

    fn store_once(&self, page: &Page) -> Result<Handle, TierError> {
        let (slot, generation) = self.slots.take().ok_or_else(|| self.full())?;
        let mut rec = [0u8; RECORD_BUF];
        let seq = self.seq.fetch_add(1, Relaxed);
        let len = record::encode(page, self.config.codec, slot, generation, seq, self.sealer.as_ref(), &mut rec);
        let loc = match self.append(&rec[..len], RESERVE) {
            Ok(loc) => loc,
            Err(e) => {
                self.slots.untake(slot);
                return Err(e);
            }
        };
        self.slots.publish(slot, generation, loc);
        let c = &self.counters;
        c.pages.fetch_add(1, Relaxed);
        c.record_bytes.fetch_add(len as u64, Relaxed);
        c.stores.fetch_add(1, Relaxed);
        Ok(slots::handle(slot, generation))
    }

    fn store(&self, page: &Page) -> Result<Handle, TierError> {
        match self.store_once(page) {
            Err(TierError::Full { .. }) if self.compaction_would_help() => {
                let done = self.compact(Victims::BySize, false);
                tracing::debug!("file tier: full, compacted: {done:?}");
                self.store_once(page)
            }
            r => r,
        }
    }

    fn remove(&self, handle: Handle) {
        let mut locked = self.slots.lock();
        let Some(loc) = self.slots.remove(handle, &mut locked) else { return };
        // Under the slot lock, as compaction moves counts with it.
        let meta = self.segments.get(loc.segment());
        meta.live.fetch_sub(loc.len() as u32, Relaxed);
        drop(locked);
        if meta.state.load(Relaxed) == SEALED && self.under_threshold(meta) && !self.wake.wanted.load(Relaxed) {
            self.wake.wanted.store(true, Relaxed);
        }
        self.counters.pages.fetch_sub(1, Relaxed);
        self.counters.record_bytes.fetch_sub(loc.len() as u64, Relaxed);
    }

    /// The background compaction thread's loop: every `every`, compacts the
    /// segments that removes left under the threshold, until the tier drops.
    fn compact_in_background(&self, every: Duration) {
        // SAFETY: gettid has no arguments and cannot fail.
        self.wake.tid.store(unsafe { libc::gettid() } as u64, Relaxed);
        // A periodic look over every segment, in case a signal was missed.
        const LOOK_EVERY: u32 = 16;
        let mut ticks = 0u32;
        let mut stop = self.wake.stop.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *stop {
                return;
            }
            stop = self.wake.cv.wait_timeout(stop, every).unwrap_or_else(|e| e.into_inner()).0;
            if *stop {
                return;
            }
            ticks += 1;
            let wanted = self.wake.wanted.swap(false, Relaxed);
            if !wanted && !ticks.is_multiple_of(LOOK_EVERY) {
                continue;
            }
            drop(stop);
            if self.sparse_segments() {
                let done = self.compact(Victims::ByFill, true);
                tracing::debug!("file tier: background compaction: {done:?}");
            }
            stop = self.wake.stop.lock().unwrap_or_else(|e| e.into_inner());
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
        let s = &self.shared;
        let free = s.lock_writer().free_segments() as u64;
        let count = s.segments.count() as u64;
        Capacity { limit_bytes: count * s.segment_bytes as u64, used_bytes: (count - free) * s.segment_bytes as u64 }
    }

    fn stats(&self) -> TierStats {
        let s = &self.shared;
        let c = &s.counters;
        let pages = c.pages.load(Relaxed);
        let (sealed, _, _) = s.segments.totals(SEALED);
        let in_ram = {
            let w = s.lock_writer();
            w.fill as u64 + if w.sealing != NONE { w.sealing_fill as u64 } else { 0 }
        };
        let stats = TierStats {
            pages,
            bytes_in: pages * PAGE_SIZE as u64,
            bytes_compressed: c.record_bytes.load(Relaxed),
            bytes_used: sealed * s.segment_bytes as u64 + in_ram,
            stores: c.stores.load(Relaxed),
            loads: c.loads.load(Relaxed),
            load_errors: c.load_errors.load(Relaxed),
            ..TierStats::default()
        };
        s.work.fill(stats.with_latency(&s.latency))
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
