//! What the file tier counts: the atomics bumped along the way in and out,
//! and the figures made of them, [`FileStats`] for this tier and the
//! [`TierStats`] and [`Capacity`] every tier gives.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::segment::{NONE, SEALED};
use super::Shared;
use crate::{Capacity, TierStats, PAGE_SIZE};

/// Counters of a [`FileTier`](super::FileTier) beyond [`TierStats`].
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

/// The tier's own counters. Each is bumped on its own (`Relaxed`), so a
/// snapshot may see an op in one field and not yet in another: statistics
/// need no more, and a lock would cost every load. Compaction totals and
/// latencies are in `Shared::work` and `Shared::latency`, kept in the types
/// every tier uses (`crate::latency`).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) pages: AtomicU64,
    pub(super) record_bytes: AtomicU64,
    pub(super) stores: AtomicU64,
    pub(super) loads: AtomicU64,
    pub(super) load_errors: AtomicU64,
    pub(super) checksum_errors: AtomicU64,
    pub(super) reads: AtomicU64,
    pub(super) ram_loads: AtomicU64,
    pub(super) bytes_read: AtomicU64,
    pub(super) writes: AtomicU64,
    pub(super) bytes_written: AtomicU64,
    pub(super) background_compactions: AtomicU64,
    pub(super) records_moved: AtomicU64,
    pub(super) segments_freed: AtomicU64,
}

impl Shared {
    /// See [`FileTier::file_stats`](super::FileTier::file_stats).
    pub(super) fn file_stats(&self) -> FileStats {
        let c = &self.counters;
        let free = self.lock_writer().free_segments() as u64;
        let work = self.work.fill(TierStats::default());
        FileStats {
            pages: c.pages.load(Relaxed),
            record_bytes: c.record_bytes.load(Relaxed),
            segments: self.segments.count() as u64,
            segment_bytes: self.segment_bytes as u64,
            sealed_segments: self.segments.totals(SEALED).0,
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
            table_bytes: self.slots.bytes(),
            direct_io: self.direct,
            encrypted: self.sealer.is_some(),
        }
    }

    /// The tier's [`TierStats`]: what it holds counts the sealed segments in
    /// the file and the bytes of the segments still in RAM.
    pub(super) fn tier_stats(&self) -> TierStats {
        let c = &self.counters;
        let pages = c.pages.load(Relaxed);
        let (sealed, _, _) = self.segments.totals(SEALED);
        let in_ram = {
            let w = self.lock_writer();
            w.fill as u64 + if w.sealing != NONE { w.sealing_fill as u64 } else { 0 }
        };
        let stats = TierStats {
            pages,
            bytes_in: pages * PAGE_SIZE as u64,
            bytes_compressed: c.record_bytes.load(Relaxed),
            bytes_used: sealed * self.segment_bytes as u64 + in_ram,
            stores: c.stores.load(Relaxed),
            loads: c.loads.load(Relaxed),
            load_errors: c.load_errors.load(Relaxed),
            ..TierStats::default()
        };
        self.work.fill(stats.with_latency(&self.latency))
    }

    /// The tier's [`Capacity`], in whole segments: one that is not free
    /// counts whole, as the tail of a sealed one comes back only through
    /// compaction.
    pub(super) fn capacity(&self) -> Capacity {
        let free = self.lock_writer().free_segments() as u64;
        let count = self.segments.count() as u64;
        Capacity { limit_bytes: count * self.segment_bytes as u64, used_bytes: (count - free) * self.segment_bytes as u64 }
    }
}
