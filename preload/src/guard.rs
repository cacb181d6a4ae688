//! The shim's re-entry guard: while a thread runs the shim's own code (a
//! malloc wrapper, the constructor, a background thread), what it allocates
//! or maps is the shim's, and the hooks it reaches pass straight through.
//!
//! The depth lives in the runtime's per-thread [`ThreadScope`], beside the
//! runtime's own depth and the thread's farmem arena, so that one
//! thread-local access answers everything a malloc asks (in a shared library
//! each access is a `__tls_get_addr` call).

pub use farmem_runtime::ThreadScope as ThreadState;

pub use farmem_runtime::this_thread;

/// Runs `f` with the calling thread's state.
#[inline(always)]
pub fn with<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    f(this_thread())
}

/// Whether what the calling thread does now is farmem's own (the shim's or
/// the runtime's), not the program's.
#[inline]
pub fn own() -> bool {
    with(ThreadState::own)
}

/// Marks the calling thread as inside the shim until the returned guard drops,
/// for code that does not already hold its state (the constructor, the
/// shim's own threads).
pub fn enter_owned() -> OwnedGuard {
    farmem_runtime::enter_hook_owned()
}

/// [`enter_owned`]'s guard.
pub use farmem_runtime::OwnedHookGuard as OwnedGuard;
