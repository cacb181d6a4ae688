//! Per-thread state of the allocation hooks: the re-entry guard. (The
//! thread's binding to a farmem arena is farmem-jemalloc's, in `route`.)
//!
//! The state is a `const`-initialised thread-local without a destructor, so it
//! can be read at any point of a thread's life, its first and last malloc
//! included, and reading it never allocates.

use std::cell::Cell;

/// What the hooks know about the calling thread.
pub struct ThreadState {
    /// Non-zero while the thread is inside the shim (a malloc hook, the
    /// constructor, a background thread): anything it maps is the shim's own.
    depth: Cell<u32>,
}

thread_local! {
    static STATE: ThreadState = const { ThreadState { depth: Cell::new(0) } };
}

/// Runs `f` with the calling thread's state.
#[inline]
pub fn with<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    STATE.with(f)
}

impl ThreadState {
    /// Whether the thread is inside the shim now.
    #[inline]
    pub fn busy(&self) -> bool {
        self.depth.get() > 0
    }

    /// Marks the thread as inside the shim until the guard is dropped.
    #[inline]
    pub fn enter(&self) -> ShimGuard<'_> {
        self.depth.set(self.depth.get() + 1);
        ShimGuard(self)
    }
}

/// Held while a thread runs shim code; hooks it reaches pass straight through.
#[must_use = "the guard ends when dropped"]
pub struct ShimGuard<'a>(&'a ThreadState);

impl Drop for ShimGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.depth.set(self.0.depth.get() - 1);
    }
}

/// Marks the calling thread as inside the shim until the returned guard drops,
/// for code that does not already hold its state (the constructor, the
/// shim's own threads).
pub fn enter_owned() -> OwnedGuard {
    STATE.with(|s| s.depth.set(s.depth.get() + 1));
    OwnedGuard(())
}

/// [`enter_owned`]'s guard.
#[must_use = "the guard ends when dropped"]
pub struct OwnedGuard(());

impl Drop for OwnedGuard {
    fn drop(&mut self) {
        STATE.with(|s| s.depth.set(s.depth.get() - 1));
    }
}
