//! The way out. A load first *pins* its handle's segment: it counts itself
//! into the segment's readers, so compaction, which may move the record
//! meanwhile, frees the segment only once the load is done with it. Then the
//! record is copied from RAM if its segment is open or being written, or
//! read from the file: one io_uring read of the 4 KiB blocks it spans, into
//! a buffer of the ring's pool. Either way `record::decode` checks it (crc,
//! the handle it names, the tag when encrypted) before a byte reaches the
//! caller; a failure is a [`TierError`] naming file, offset and handle.
//!
//! `load_many` puts up to `BATCH` reads in flight at once and checks each
//! page as its read completes; a single load is a batch of one.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::*;
use std::time::Instant;

use super::record::{self, RECORD_BUF};
use super::ring::{Op, POOL, READ_BUF};
use super::segment::{Meta, OPEN, SEALING};
use super::slots::{self, Loc};
use super::{Shared, BLOCK};
use crate::{Handle, Page, TierError};

/// At most this many pages are read at once by one `load_many` round.
const BATCH: usize = POOL / 2;

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

impl Shared {
    /// See [`FileTier::load_many`](super::FileTier::load_many).
    pub(super) fn load_many(&self, handles: &[Handle], out: &mut [Page], mut done: impl FnMut(usize, Result<(), TierError>)) {
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
}
