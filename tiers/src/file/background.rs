//! The compaction thread: one per tier, named `farmem-compact`, started by
//! [`FileTier::open`](super::FileTier::open) when
//! [`FileConfig::compact_interval`](super::FileConfig::compact_interval) is
//! set, and stopped and joined when the tier drops.
//!
//! It wakes every interval, and looks over the segments for a sparse one
//! only when a remove or a segment write flagged one (`Wake::wanted`), or
//! every 16th tick in case a flag was missed. It compacts by filled bytes
//! (`Victims::ByFill`), so a segment a flush sealed part-filled is not
//! rewritten over and over.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::compact::Victims;
use super::Shared;
use crate::TierError;

/// The background compaction thread, stopped and joined by [`Compactor::stop`].
pub(super) struct Compactor {
    thread: JoinHandle<()>,
    /// The process that started it: a forked child has no such thread to join.
    pid: u32,
}

/// What the compaction thread sleeps on.
#[derive(Default)]
pub(super) struct Wake {
    stop: Mutex<bool>,
    cv: Condvar,
    /// Set when a remove or a segment write leaves a sealed segment under
    /// the threshold.
    pub(super) wanted: AtomicBool,
    /// The thread's id (gettid), once it runs.
    pub(super) tid: AtomicU64,
}

impl Compactor {
    /// Starts the compaction thread of `shared`, looking every `every`.
    pub(super) fn start(shared: &Arc<Shared>, every: Duration) -> Result<Self, TierError> {
        let s = Arc::clone(shared);
        let thread = crate::threads::spawn(c"farmem-compact", move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.compact_in_background(every))).is_err() {
                tracing::error!("file tier: the compaction thread panicked; compaction now runs only when a store finds the tier full");
            }
        })
        .map_err(|source| TierError::Os { op: "starting the file tier's compaction thread", source })?;
        Ok(Compactor { thread, pid: std::process::id() })
    }

    /// Tells the thread to stop and joins it.
    pub(super) fn stop(self, wake: &Wake) {
        if self.pid != std::process::id() {
            // A forked child: the thread is not here (and may have held the
            // stop mutex at the fork). Neither join nor detach it, touch nothing.
            std::mem::forget(self.thread);
            return;
        }
        *wake.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.cv.notify_all();
        // A compaction in progress finishes first: at most a batch of reads.
        if self.thread.join().is_err() {
            tracing::error!("file tier: the compaction thread panicked");
        }
    }
}

impl Shared {
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
