//! Marking the runtime's own allocations, so they never land in registered memory.
//!
//! The runtime allocates with the ordinary Rust allocator. Where that allocator's
//! memory may itself be registered with farmem (the LD_PRELOAD shim, the jemalloc
//! hook, or a program that registers its own arena), the runtime's objects must be
//! served from somewhere else, or the fault handlers would fault on themselves (hard
//! rule 2). So every runtime thread, and every runtime call on a program thread,
//! runs inside a [`RuntimeScope`]; an allocator that feeds farmem memory asks
//! [`in_runtime`] and serves those allocations from memory farmem never registers.
//! Frees must be routed by address, not by this flag: objects cross threads.

use std::cell::Cell;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether the calling thread is running farmem runtime code now.
#[inline]
pub fn in_runtime() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// While alive, allocations on this thread are the runtime's own.
#[must_use = "the scope ends when the guard is dropped"]
pub struct RuntimeScope(());

impl RuntimeScope {
    /// Enters the runtime's scope on this thread (scopes nest).
    pub fn enter() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        RuntimeScope(())
    }
}

impl Drop for RuntimeScope {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}
