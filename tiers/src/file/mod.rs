//! T2: pages spilled to a file in a directory the user names, written and
//! read through io_uring.
//!
//! The file is a log cut into segments of `segment_bytes` (1 MiB by
//! default). A stored page becomes a *record* (a 24-byte header and the page
//! compressed, lz4 by default) packed into the *open* segment, a buffer in
//! RAM; a full segment is written to the file with one io_uring write and
//! is then *sealed*, read-only. A handle names a slot, and the slot names
//! where its record is now, so compaction can move records of sparse
//! segments and free those segments without changing any handle.
//!
//! # The parts
//!
//! [`FileTier`] is the public face; every part adds its methods to `Shared`,
//! the state the tier shares with its compaction thread.
//!
//! | module | its job |
//! | --- | --- |
//! | `tier` | [`FileTier`]: open (check the config, make the file, set up the parts), flush, compact, statistics, and the [`Tier`](crate::Tier) impl |
//! | `config` | [`FileConfig`], and which settings are refused |
//! | `backing` | making the spill file: O_TMPFILE, or created and unlinked at once where the file system refuses it; mode 0600; O_DIRECT if a probe shows the file system takes it (logged either way) |
//! | `slots` | handles: a slot (32 bits) and its 24-bit generation; the slot holds the record's segment, offset and length |
//! | `record` | a record's bytes: the header (crc32c, the handle's slot and generation, encoding, length, sequence number) and payload |
//! | `crypt` | ChaCha20-Poly1305 of payloads, under a key drawn at open and kept only in memory |
//! | `segment` | the segments' states (free, open, sealing, sealed) and counters; the open and sealing buffers; the free list |
//! | `store` | the way in: record, append to the open segment, publish the slot; sealing and writing segments; removes |
//! | `load` | the way out: pin the segment, copy the record from RAM or read it from the file, check and decode it |
//! | `ring` | the one io_uring every thread shares, and its pool of 64 read buffers |
//! | `compact` | rewriting the live records of sparse sealed segments; freeing those segments |
//! | `background` | the compaction thread |
//! | `stats` | counters, [`FileStats`], and the [`crate::TierStats`] of the tier |
//!
//! # How a page flows through them
//!
//! 1. **Store** (`store`). `slots` hands out a free slot and its generation:
//!    the handle. `record::encode` compresses the page (a page that does not
//!    compress is kept raw), seals the payload with `crypt` when encryption
//!    is on, and writes a header naming the handle, crc32c in front. The
//!    record is appended, 8-byte aligned, to the open segment (`segment`),
//!    and only then is the slot published.
//! 2. **Seal** (`store`, `ring`). When the open segment is full, or on
//!    [`FileTier::flush`], it is handed to a second buffer and written from
//!    there with one io_uring write while stores go on into the next segment;
//!    then it is sealed.
//! 3. **Load** (`load`, `ring`). The slot gives the record's location; the
//!    load pins that segment, so it is not freed meanwhile. A record still in
//!    RAM (open segment, or the one being written) is copied from there; any
//!    other is read with one io_uring read of the 4 KiB blocks it spans
//!    ([`FileTier::load_many`] submits the reads of many pages at once).
//!    `record::decode` checks it and decompresses it into the caller's page.
//! 4. **Remove** (`store`). The slot's generation is bumped, so the removed
//!    handle loads nothing again, not the page that reuses its slot either;
//!    the record stays, dead, and its bytes leave its segment's live count.
//! 5. **Compact** (`compact`, `background`). Sealed segments whose live share
//!    fell under `compact_below` are read whole, their live records appended
//!    again as in step 1 (unchanged: an encrypted record keeps its nonce),
//!    each slot pointed at its record's new place, and the segments freed,
//!    their file range punched out, once no load pins them. The `farmem-compact`
//!    thread of each tier runs this every [`FileConfig::compact_interval`]
//!    (`None` runs none) when a remove left a sealed segment with less than
//!    `compact_below` of its *filled* bytes live. [`FileTier::compact`] is the
//!    explicit path: it also packs segments a flush sealed part-filled,
//!    taking every sealed segment less than `compact_below` live by segment
//!    *size*. A store that finds the tier full runs it, and
//!    [`FileTier::flush`] when the dead share of sealed segments passes
//!    `compact_below`. Its work is counted in [`FileStats`] and in
//!    [`crate::TierStats`]'s `compaction_*` fields.
//!
//! # What holds across the parts
//!
//! - **Never wrong bytes.** Each record's crc32c and the handle its header
//!   names are checked on every load, and the tag too when encrypted
//!   ([`FileConfig::encrypt`], off by default). A mismatch, a short read or
//!   an I/O error makes the load fail with [`TierError::SpillCorrupt`](crate::TierError::SpillCorrupt) or
//!   [`TierError::SpillIo`](crate::TierError::SpillIo) (naming the file, offset and handle), logged and
//!   counted in `load_errors`; the page's bytes are never given out.
//! - **No name, no trace.** The file has no name while in use and is gone
//!   with the process, even after SIGKILL (design rule 6).
//! - **Space.** `limit_bytes` bounds the file. A store that finds no free
//!   segment (one is kept back for compaction) first compacts, then fails
//!   with [`TierError::Full`](crate::TierError::Full); nothing is ever dropped.
//! - **Threads.** Every method takes `&self`. `load` takes no lock for a
//!   sealed segment: it counts itself into the segment's readers (a segment
//!   is freed only when its readers are gone), takes a read buffer from the
//!   pool, and shares the ring: submissions under a mutex, completions
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
//! # Example
//!
//! A page is served from RAM until its segment is written, and from the
//! file after:
//!
//! ```
//! use farmem_tiers::{FileConfig, FileTier, PageClass, Tier, PAGE_SIZE};
//!
//! let tier = FileTier::open(FileConfig::new(std::env::temp_dir(), 16 << 20)).unwrap();
//! let mut page = [0u8; PAGE_SIZE];
//! page[..11].copy_from_slice(b"hello, disk");
//! let handle = tier.store(&page, PageClass::DEFAULT).unwrap();
//! let mut back = [0u8; PAGE_SIZE];
//! tier.load(handle, &mut back).unwrap(); // copied from the open segment
//! assert_eq!((back, tier.file_stats().ram_loads), (page, 1));
//! tier.flush().unwrap(); // now the page is read back from the file
//! let mut back = [0u8; PAGE_SIZE];
//! tier.load(handle, &mut back).unwrap();
//! assert_eq!((back, tier.file_stats().reads), (page, 1));
//! tier.remove(handle);
//! ```

mod background;
mod backing;
mod compact;
mod config;
pub(crate) mod crypt;
mod load;
pub(crate) mod record;
mod ring;
mod segment;
mod slots;
mod stats;
mod store;
mod tier;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex, MutexGuard};

pub use compact::FileCompaction;
pub use config::FileConfig;
pub use stats::FileStats;
pub use tier::FileTier;

use background::Wake;
use crypt::Sealer;
use ring::Ring;
use segment::{Segments, Writer};
use slots::{Loc, SlotTable};
use stats::Counters;

use crate::latency::{CompactionWork, OpLatency};

/// The tier's name, in its errors and statistics.
const NAME: &str = "file";
/// The unit of O_DIRECT: reads and writes cover whole, aligned blocks.
const BLOCK: u64 = 4096;

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
    /// Held by a compaction from start to end: one runs at a time, and it
    /// owns the ring's compaction slot.
    compaction: Mutex<()>,
    /// Numbers the records stored; an encrypted record's nonce, so it is
    /// never used twice under the tier's key.
    seq: AtomicU64,
    counters: Counters,
    latency: OpLatency,
    work: CompactionWork,
    wake: Wake,
    /// Test hook: this many next page reads fail with EIO.
    #[cfg(test)]
    fail_reads: std::sync::atomic::AtomicU32,
}

impl Shared {
    /// Where a record lies in the file: segments follow one another from
    /// offset 0, with no header before them.
    fn file_offset(&self, loc: Loc) -> u64 {
        loc.segment() as u64 * self.segment_bytes as u64 + loc.offset() as u64
    }

    /// Locks the writer; like every lock of the tier, a poisoned one is
    /// taken anyway.
    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}
