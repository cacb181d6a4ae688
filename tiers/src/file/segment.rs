//! The log: the spill file cut into segments of `segment_bytes`, each Free,
//! Open (being filled in the RAM buffer, at most one at a time), Sealing
//! (handed to the second buffer and being written from there, at most one at
//! a time) or Sealed (written to the file, read-only until compaction frees
//! it).
//!
//! Per segment the tier keeps, in a mapping of its own: the bytes of live
//! records (compaction picks segments where it is low), the loads reading it
//! now (a segment is freed only when none is), its state, and how many bytes
//! were filled before it was sealed.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering::*};

use crate::mem::Mapping;

/// No segment.
pub(super) const NONE: u32 = u32::MAX;

/// A segment's state.
pub(super) const FREE: u32 = 0;
/// Being filled in the writer's buffer; loads copy from RAM.
pub(super) const OPEN: u32 = 1;
/// In the file.
pub(super) const SEALED: u32 = 2;
/// Full, being written from the writer's sealing buffer; loads copy from RAM.
pub(super) const SEALING: u32 = 3;

/// The counters of every segment.
pub(super) struct Segments {
    meta: Mapping,
    count: u32,
}

/// One segment's counters.
#[repr(C)]
pub(super) struct Meta {
    /// Bytes of live records.
    pub(super) live: AtomicU32,
    /// Loads reading the segment now.
    pub(super) readers: AtomicU32,
    /// FREE, OPEN, SEALING or SEALED.
    pub(super) state: AtomicU32,
    /// Bytes filled when sealed.
    pub(super) fill: AtomicU32,
}

impl Segments {
    pub(super) fn new(count: u32) -> io::Result<Self> {
        Ok(Segments { meta: Mapping::anonymous(count as usize * size_of::<Meta>())?, count })
    }

    pub(super) fn count(&self) -> u32 {
        self.count
    }

    pub(super) fn get(&self, segment: u32) -> &Meta {
        assert!(segment < self.count, "segment {segment} beyond {}", self.count);
        // SAFETY: the mapping holds `count` zeroed Metas (all-zero is a valid
        // Meta: atomics), 4-aligned, alive as long as `self`.
        unsafe { &*self.meta.addr().cast::<Meta>().add(segment as usize) }
    }

    /// Sums over the segments in `state`: (segments, live bytes, filled bytes).
    pub(super) fn totals(&self, state: u32) -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for s in 0..self.count {
            let m = self.get(s);
            if m.state.load(Relaxed) == state {
                t.0 += 1;
                t.1 += m.live.load(Relaxed) as u64;
                t.2 += m.fill.load(Relaxed) as u64;
            }
        }
        t
    }
}

/// The open segment, the one being written, and the free ones; guarded by
/// the tier's writer mutex.
pub(super) struct Writer {
    /// The segment being filled, or [`NONE`].
    pub(super) open: u32,
    /// Bytes of it filled.
    pub(super) fill: usize,
    /// Its bytes (page-aligned, for O_DIRECT).
    pub(super) buffer: Mapping,
    /// The segment being written to the file (SEALING), or [`NONE`].
    pub(super) sealing: u32,
    /// Bytes of it filled.
    pub(super) sealing_fill: usize,
    /// Its bytes. Swapped with `buffer` only when `sealing` is NONE, so never
    /// while a write reads it.
    pub(super) sealing_buffer: Mapping,
    /// Whether a thread is writing `sealing` now; false with `sealing` set
    /// means its write failed and the next seal retries it.
    pub(super) writing: bool,
    /// Segments below this have been used at least once.
    next_unused: u32,
    /// Freed segment numbers, a stack of `free_len`.
    free_stack: Mapping,
    free_len: u32,
    count: u32,
}

impl Writer {
    pub(super) fn new(count: u32, segment_bytes: usize) -> io::Result<Self> {
        Ok(Writer {
            open: NONE,
            fill: 0,
            buffer: Mapping::anonymous(segment_bytes)?,
            sealing: NONE,
            sealing_fill: 0,
            sealing_buffer: Mapping::anonymous(segment_bytes)?,
            writing: false,
            next_unused: 0,
            free_stack: Mapping::anonymous(count as usize * 4)?,
            free_len: 0,
            count,
        })
    }

    /// Free segments, never-used ones included.
    pub(super) fn free_segments(&self) -> u32 {
        self.count - self.next_unused + self.free_len
    }

    /// Takes a free segment, leaving at least `keep` free.
    pub(super) fn take(&mut self, keep: u32) -> Option<u32> {
        if self.free_segments() <= keep {
            return None;
        }
        if self.free_len > 0 {
            self.free_len -= 1;
            // SAFETY: free_len < count u32s lie in free_stack; the writer mutex is held (&mut self).
            return Some(unsafe { *self.free_stack.addr().cast::<u32>().add(self.free_len as usize) });
        }
        self.next_unused += 1;
        Some(self.next_unused - 1)
    }

    /// Returns a segment to the free ones.
    pub(super) fn give(&mut self, segment: u32) {
        assert!(self.free_len < self.next_unused, "segment free stack overflow");
        // SAFETY: free_len < count, inside free_stack; &mut self.
        unsafe { *self.free_stack.addr().cast::<u32>().add(self.free_len as usize) = segment };
        self.free_len += 1;
    }

    /// Makes the open segment the sealing one, its buffer the sealing
    /// buffer, and leaves no segment open.
    pub(super) fn hand_over(&mut self) {
        assert!(self.sealing == NONE && self.open != NONE, "a seal while segment {} is being written", self.sealing);
        std::mem::swap(&mut self.buffer, &mut self.sealing_buffer);
        self.sealing = self.open;
        self.sealing_fill = self.fill;
        self.open = NONE;
        self.fill = 0;
    }

    /// The bytes `[offset, offset+len)` of the sealing buffer, to read.
    pub(super) fn sealing_bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.sealing_fill);
        // SAFETY: inside the buffer; it is written by nobody while `sealing`
        // is set (appends go to `buffer`), and the kernel only reads it.
        unsafe { std::slice::from_raw_parts(self.sealing_buffer.addr().add(offset), len) }
    }

    /// The bytes `[offset, offset+len)` of the buffer.
    pub(super) fn bytes(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.buffer.len());
        // SAFETY: inside the buffer, which only the writer mutex's holder (&mut self) touches.
        unsafe { std::slice::from_raw_parts_mut(self.buffer.addr().add(offset), len) }
    }
}
