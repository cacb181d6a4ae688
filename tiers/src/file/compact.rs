//! Compaction of the log: sealed segments whose live share fell under
//! `compact_below` have their live records rewritten into the open segment,
//! and are freed (their file range punched out) once no load reads them.
//!
//! The share is of the segment's size for an explicit compaction (so that
//! segments a flush sealed part-filled are packed together too), and of its
//! filled bytes for the background thread (which so compacts only what
//! removes emptied, never the same part-filled segment over and over).
//!
//! One batch at a time: victims are chosen, in segment order, while their
//! live bytes fit the room left (free segments and the open segment's tail),
//! so a batch never stops half way for want of room; each victim is read
//! whole with one io_uring read into a buffer mapped for the compaction; one
//! scan of the slot table then finds the live records in the batch. A record
//! is checked (crc, owner) before it is copied, and copied as it is
//! (encrypted records stay sealed under the same nonce). Each move changes
//! the slot's location under the slot lock, only if the page is still live
//! there: a page removed meanwhile leaves a dead copy, never a live one.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::*;
use std::time::Instant;

use super::ring::{Op, COMPACT_SLOT};
use super::segment::{Meta, FREE, NONE, SEALED};
use super::{record, Shared, BLOCK};
use crate::mem::Mapping;

/// Victims read per batch.
const VICTIMS: usize = 16;

/// What one [`FileTier::compact`](super::FileTier::compact) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileCompaction {
    /// Segments chosen (live share under `compact_below`).
    pub segments_examined: u64,
    /// Segments freed.
    pub segments_freed: u64,
    /// Live records rewritten into the open segment.
    pub records_moved: u64,
    /// Their bytes.
    pub bytes_moved: u64,
    /// Records left where they were: no room, or an I/O error (logged); their
    /// segments stay.
    pub records_left: u64,
    /// Records that failed their check and were left (their loads fail).
    pub records_corrupt: u64,
}

/// Which sealed segments a compaction takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Victims {
    /// Live bytes under `compact_below` of the segment's size.
    BySize,
    /// Live bytes under `compact_below` of the bytes it was sealed with.
    ByFill,
}

impl Shared {
    /// See [`super::FileTier::compact`]; `which` says which segments to
    /// take, `background` whether the compaction thread asks.
    pub(super) fn compact(&self, which: Victims, background: bool) -> FileCompaction {
        let _one_at_a_time = self.compaction.lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        let mut report = FileCompaction::default();
        let seg = self.segment_bytes;
        let buffer = match Mapping::anonymous(VICTIMS * seg) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("file tier: no memory to compact ({e})");
                return report;
            }
        };
        let mut cursor = 0;
        loop {
            // Room for moved records: whole free segments and the open tail, less
            // the padding and segment tails that packing may waste.
            let room = {
                let w = self.lock_writer();
                let tail = if w.open == NONE { 0 } else { seg - w.fill };
                (w.free_segments() as u64 * seg as u64 + tail as u64) * 7 / 8
            };
            let mut victims = [NONE; VICTIMS];
            let (mut n, mut need) = (0, 0u64);
            while cursor < self.segments.count() && n < VICTIMS {
                let meta = self.segments.get(cursor);
                let live = meta.live.load(Relaxed);
                if meta.state.load(Acquire) == SEALED && self.is_victim(meta, which) {
                    if need + live as u64 > room {
                        break;
                    }
                    need += live as u64;
                    victims[n] = cursor;
                    n += 1;
                }
                cursor += 1;
            }
            if n == 0 {
                break;
            }
            report.segments_examined += n as u64;
            let before = (report.records_moved, report.segments_freed);
            for (i, v) in victims.iter_mut().take(n).enumerate() {
                if self.segments.get(*v).live.load(Relaxed) > 0 && !self.read_victim(*v, &buffer, i) {
                    *v = NONE;
                }
            }
            self.move_records(&victims[..n], &buffer, &mut report);
            for &v in victims.iter().take(n).filter(|&&v| v != NONE) {
                if self.segments.get(v).live.load(Relaxed) == 0 {
                    self.free_segment(v);
                    report.segments_freed += 1;
                }
            }
            if (report.records_moved, report.segments_freed) == before {
                break; // nothing could move: the next batch would fare no better
            }
        }
        let c = &self.counters;
        if background {
            c.background_compactions.fetch_add(1, Relaxed);
        }
        c.records_moved.fetch_add(report.records_moved, Relaxed);
        c.segments_freed.fetch_add(report.segments_freed, Relaxed);
        self.work.add(start, report.bytes_moved, report.segments_freed * seg as u64);
        report
    }

    fn is_victim(&self, meta: &Meta, victims: Victims) -> bool {
        match victims {
            Victims::BySize => (meta.live.load(Relaxed) as f64) < self.config.compact_below * self.segment_bytes as f64,
            Victims::ByFill => self.under_threshold(meta),
        }
    }

    /// Whether a sealed segment has less than `compact_below` of its filled bytes live.
    pub(super) fn under_threshold(&self, meta: &Meta) -> bool {
        let fill = meta.fill.load(Relaxed);
        fill > 0 && (meta.live.load(Relaxed) as f64) < self.config.compact_below * fill as f64
    }

    /// Whether some sealed segment is under the compaction threshold by size.
    pub(super) fn compaction_would_help(&self) -> bool {
        (0..self.segments.count()).any(|s| {
            let m = self.segments.get(s);
            m.state.load(Acquire) == SEALED && self.is_victim(m, Victims::BySize)
        })
    }

    /// Whether some sealed segment is under the threshold by filled bytes.
    pub(super) fn sparse_segments(&self) -> bool {
        (0..self.segments.count()).any(|s| {
            let m = self.segments.get(s);
            m.state.load(Acquire) == SEALED && self.under_threshold(m)
        })
    }

    /// Reads victim `segment` into part `i` of `buffer`; false (logged) on failure.
    fn read_victim(&self, segment: u32, buffer: &Mapping, i: usize) -> bool {
        let seg = self.segment_bytes;
        let fill = self.segments.get(segment).fill.load(Relaxed) as u64;
        let len = fill.next_multiple_of(BLOCK) as usize;
        let offset = segment as u64 * seg as u64;
        // SAFETY: part i of the buffer (VICTIMS parts of seg bytes) holds len <= seg bytes.
        let buf = unsafe { buffer.addr().add(i * seg) };
        let op = Op { slot: COMPACT_SLOT, write: false, fd: self.file.as_raw_fd(), buf, len, offset };
        match self.io(op) {
            Ok(n) if n == len => {
                self.counters.bytes_read.fetch_add(n as u64, Relaxed);
                true
            }
            other => {
                tracing::error!(
                    "file tier: compaction cannot read segment {segment} ({len} bytes at offset {offset} of {}): {other:?}; leaving it",
                    self.path.display()
                );
                false
            }
        }
    }

    /// Moves the live records of `victims` (read into `buffer`) to the open segment.
    fn move_records(&self, victims: &[u32], buffer: &Mapping, report: &mut FileCompaction) {
        let seg = self.segment_bytes;
        self.slots.scan(|slot, generation, loc| {
            let Some(i) = victims.iter().position(|&v| v == loc.segment()) else { return };
            if loc.offset() + loc.len() > seg {
                return; // a torn read of a location being changed; it is checked below
            }
            // SAFETY: part i of the buffer holds the victim's filled bytes, read
            // above; nothing writes the buffer meanwhile.
            let rec = unsafe { std::slice::from_raw_parts(buffer.addr().add(i * seg + loc.offset()), loc.len()) };
            if record::check(rec).is_err() || record::owner(rec) != (slot, generation) {
                // Only a record still live there is corrupt; else the entry changed under the scan.
                if self.slots.is_at(slot, generation, loc, &self.slots.lock()) {
                    tracing::error!("file tier: compaction finds the record of slot {slot} at offset {} corrupt; leaving it", self.file_offset(loc));
                    report.records_corrupt += 1;
                }
                return;
            }
            let to = match self.append(rec, 0) {
                Ok(to) => to,
                Err(e) => {
                    tracing::warn!("file tier: compaction cannot move a record: {e}");
                    report.records_left += 1;
                    return;
                }
            };
            let locked = self.slots.lock();
            if self.slots.relocate(slot, generation, loc, to, &locked) {
                self.segments.get(loc.segment()).live.fetch_sub(loc.len() as u32, Relaxed);
                report.records_moved += 1;
                report.bytes_moved += loc.len() as u64;
            } else {
                // Removed meanwhile: the copy is dead.
                self.segments.get(to.segment()).live.fetch_sub(loc.len() as u32, Relaxed);
            }
        });
    }

    /// Frees an empty sealed segment once no load reads it.
    fn free_segment(&self, segment: u32) {
        let meta = self.segments.get(segment);
        // Loads pinned before the moves finish their reads; later ones see the
        // new locations (see `Shared::pin` in `load`). A load is a few hundred µs at most.
        while meta.readers.load(SeqCst) != 0 {
            std::thread::yield_now();
        }
        meta.state.store(FREE, Release);
        meta.fill.store(0, Relaxed);
        let seg = self.segment_bytes as i64;
        // SAFETY: a valid descriptor and a range inside the tier's file limit.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, segment as i64 * seg, seg) };
        if r < 0 {
            // The range is reused anyway; only the blocks stay allocated meanwhile.
            tracing::debug!("file tier: cannot punch segment {segment} out: {}", std::io::Error::last_os_error());
        }
        self.lock_writer().give(segment);
    }
}
