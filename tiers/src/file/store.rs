//! The way in. A store takes a free slot (the handle), builds the page's
//! record (`record::encode`: compressed, its header naming the handle,
//! sealed when encrypted, crc32c in front) and appends it, 8-byte aligned,
//! to the open segment, a RAM buffer; only then is the slot published, so a
//! handle never names bytes that are not there yet. Compaction appends the
//! records it moves in the same way, as they are, and may take the segment
//! stores leave free (`RESERVE`), so it can always start.
//!
//! A full segment is *sealed*: handed to the second buffer, so stores go on
//! into a fresh open segment, and written from there with one io_uring
//! write, the writer mutex released (loads of its pages copy from that
//! buffer meanwhile). A failed write leaves the segment in RAM, still served
//! from there, and the next seal tries it again.
//!
//! A remove frees the slot and takes its record's bytes off its segment's
//! live count; the bytes themselves stay, dead, until compaction frees the
//! segment.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::*;
use std::sync::MutexGuard;

use super::compact::Victims;
use super::record::{self, MAX_RECORD, RECORD_BUF};
use super::ring::{Op, WRITE_SLOT};
use super::segment::{Writer, NONE, OPEN, SEALED, SEALING};
use super::slots::{self, Loc};
use super::{Shared, BLOCK, NAME};
use crate::{Handle, Page, TierError};

/// Segments a store leaves free, so compaction always has room to start.
const RESERVE: u32 = 1;

impl Shared {
    /// Stores a page. A tier found full is compacted once, when some sealed
    /// segment is sparse enough for that to free room, and the store tried
    /// again; nothing stored is ever dropped to make room.
    pub(super) fn store(&self, page: &Page) -> Result<Handle, TierError> {
        match self.store_once(page) {
            Err(TierError::Full { .. }) if self.compaction_would_help() => {
                let done = self.compact(Victims::BySize, false);
                tracing::debug!("file tier: full, compacted: {done:?}");
                self.store_once(page)
            }
            r => r,
        }
    }

    /// One try of a store. On failure the slot goes back unpublished, so a
    /// failed store leaves no trace.
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

    /// Frees `handle`'s slot and takes its record off its segment's live
    /// bytes. A sealed segment left sparse is flagged for the compaction
    /// thread's next look, not compacted here: removes come from the
    /// runtime's fault and drop handling, which must not wait for a compaction.
    pub(super) fn remove(&self, handle: Handle) {
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

    /// Appends a record to the open segment, opening one (and sealing the
    /// full one) if needed while leaving `keep` segments free; counts its
    /// bytes live.
    pub(super) fn append(&self, rec: &[u8], keep: u32) -> Result<Loc, TierError> {
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

    /// The error of a store that found no room.
    fn full(&self) -> TierError {
        TierError::Full { tier: NAME, limit_bytes: self.segments.count() as u64 * self.segment_bytes as u64 }
    }

    /// Seals the open segment, if it has anything, and waits until the file
    /// holds it and every segment sealed before.
    pub(super) fn seal_open(&self) -> Result<(), TierError> {
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
    pub(super) fn io(&self, op: Op) -> io::Result<usize> {
        // SAFETY: the callers own op.slot (the writing flag, or the compaction
        // mutex) and its buffer, which outlives this call; the op is waited for here.
        if let Err(e) = unsafe { self.ring.submit(&[op]) } {
            // Still queued: only a wait that enters the kernel submits it again.
            tracing::warn!("file tier: io_uring submit: {e}; waiting anyway");
            return self.ring.wait(op.slot);
        }
        self.ring.wait_politely(op.slot)
    }
}
