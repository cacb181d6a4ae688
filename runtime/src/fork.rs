//! `fork`: the child gets exactly the parent's memory, evicted pages included.
//!
//! The runtime does not ask the kernel for fork events, so a child's copy of a
//! registered range is ordinary memory in which an evicted page would read as
//! zeros. So before any fork (a `pthread_atfork` handler), every runtime of the
//! process holds off eviction and brings every evicted page back; after the
//! fork, the parent lets eviction resume. The child keeps its copy of each
//! runtime only as inert memory: it has no fault handler, and every call on it
//! fails with [`RuntimeError::Forked`](crate::RuntimeError::Forked).
//! `vfork` and `posix_spawn` share or replace memory and need none of this.
//! This costs the fork the time to fault back what was evicted; the LD_PRELOAD
//! shim will serve the child instead, without bringing pages back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};

use crate::fault::{Completion, Request};
use crate::Shared;

static RUNTIMES: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

/// What a runtime needs to take part in the fork protocol.
#[derive(Default)]
pub(crate) struct ForkGate {
    /// Forks between their prepare handler and the parent's resume. A count,
    /// not a flag: when two threads fork at once, the first to resume must not
    /// let eviction go on while the second has yet to fork (its child read
    /// zeros where the first's resume let pages go out).
    forking: AtomicUsize,
    /// Eviction calls in progress.
    evicting: AtomicUsize,
}

/// Held by an eviction call; no fork can start while one is held.
pub(crate) struct EvictPass<'a>(&'a ForkGate);

impl ForkGate {
    /// Waits out a fork in progress, then counts an eviction in.
    pub fn enter(&self) -> EvictPass<'_> {
        loop {
            while self.forking.load(Ordering::Acquire) > 0 {
                std::thread::yield_now();
            }
            self.evicting.fetch_add(1, Ordering::AcqRel);
            if self.forking.load(Ordering::Acquire) == 0 {
                return EvictPass(self);
            }
            self.evicting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for EvictPass<'_> {
    fn drop(&mut self) {
        self.0.evicting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Adds a runtime to the set the fork handlers look after.
pub(crate) fn track(shared: &Arc<Shared>) {
    INSTALL.call_once(|| {
        // SAFETY: the three handlers are plain extern "C" functions that live as
        // long as the program.
        let r = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), None) };
        if r != 0 {
            tracing::error!("pthread_atfork failed ({r}): a forked child may see evicted pages as zeros");
        }
    });
    let mut all = RUNTIMES.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(shared));
}

fn live() -> Vec<Arc<Shared>> {
    let pid = std::process::id();
    RUNTIMES.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).filter(|s| s.owner_pid == pid).collect()
}

extern "C" fn prepare() {
    let _scope = crate::RuntimeScope::enter();
    for shared in live() {
        shared.fork_gate.forking.fetch_add(1, Ordering::AcqRel);
        while shared.fork_gate.evicting.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
        if shared.stopping.load(Ordering::Acquire) {
            continue;
        }
        let done = Arc::new(Completion::default());
        shared.requests.push(Request::RestoreAll { done: Arc::clone(&done) });
        if let Err(e) = done.wait() {
            tracing::error!("bringing pages back before fork failed: {e}");
        }
    }
}

extern "C" fn parent() {
    for shared in live() {
        // Saturating: a runtime made between this fork's prepare and now was
        // never counted in.
        let _ = shared.fork_gate.forking.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}
