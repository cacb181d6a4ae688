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
//!
//! The allocator hooks keep their own per-thread facts here too (a hook's
//! re-entry depth, the farmem arena the thread is bound to), in the same
//! [`ThreadScope`]: inside `libfarmem.so` every thread-local is reached through
//! `__tls_get_addr`, and a malloc that read three of them paid that call three
//! times. One [`with_thread`] now answers all three.

use std::cell::Cell;

/// What farmem knows about the calling thread: whether it runs runtime code,
/// whether it runs an allocator hook's own code, and which farmem arena it is
/// bound to. A `const`-initialised thread-local without a destructor, so it
/// can be read at any point of a thread's life (its first and last malloc
/// included), and reading it never allocates.
pub struct ThreadScope {
    /// Depth of [`RuntimeScope`]s on this thread.
    runtime: Cell<u32>,
    /// Depth of an allocator hook's re-entry guard ([`ThreadScope::enter_hook`]).
    hook: Cell<u32>,
    /// The farmem arena the thread is bound to, plus one; 0 while unbound.
    arena: Cell<u32>,
}

thread_local! {
    static THREAD: ThreadScope = const { ThreadScope { runtime: Cell::new(0), hook: Cell::new(0), arena: Cell::new(0) } };
}

/// The calling thread's scope: one thread-local access for everything an
/// allocation asks.
///
/// The reference cannot leave the thread (`ThreadScope` is neither `Send`
/// nor `Sync`), and the thread-local has no destructor, so it lives as long
/// as the thread, its exit included: `'static` is as long as anyone holding
/// it can use it.
#[inline(always)]
pub fn this_thread() -> &'static ThreadScope {
    // Only the address is taken inside `with`: `LocalKey::with` instantiated
    // with a malloc's whole body is shared by every exported allocation
    // function, and LLVM then leaves it out of line, a call per malloc.
    let t: *const ThreadScope = THREAD.with(|t| t as *const ThreadScope);
    // SAFETY: see above; the fields are Cells, only ever reached through
    // shared references.
    unsafe { &*t }
}

/// Runs `f` with the calling thread's scope ([`this_thread`]).
#[inline(always)]
pub fn with_thread<R>(f: impl FnOnce(&ThreadScope) -> R) -> R {
    f(this_thread())
}

/// Whether the calling thread is running farmem runtime code now.
#[inline]
pub fn in_runtime() -> bool {
    THREAD.with(ThreadScope::in_runtime)
}

impl ThreadScope {
    /// Whether the thread is running farmem runtime code now.
    #[inline]
    pub fn in_runtime(&self) -> bool {
        self.runtime.get() > 0
    }

    /// Whether the thread is inside an allocator hook's own code (the
    /// shim's wrappers, constructor or threads): what it maps is farmem's.
    #[inline]
    pub fn in_hook(&self) -> bool {
        self.hook.get() > 0
    }

    /// Whether what the thread does now is farmem's own, not the program's:
    /// runtime code or a hook's code.
    #[inline]
    pub fn own(&self) -> bool {
        self.runtime.get() | self.hook.get() != 0
    }

    /// Marks the thread as inside an allocator hook until the guard drops
    /// (guards nest).
    #[inline]
    pub fn enter_hook(&self) -> HookGuard<'_> {
        self.hook.set(self.hook.get() + 1);
        HookGuard(self)
    }

    /// The farmem arena the thread is bound to, if any.
    #[inline]
    pub fn bound_arena(&self) -> Option<u32> {
        self.arena.get().checked_sub(1)
    }

    /// Records that the thread is bound to farmem arena `arena`.
    #[inline]
    pub fn set_bound_arena(&self, arena: u32) {
        self.arena.set(arena.saturating_add(1));
    }
}

/// [`ThreadScope::enter_hook`]'s guard.
#[must_use = "the guard ends when dropped"]
pub struct HookGuard<'a>(&'a ThreadScope);

impl Drop for HookGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.hook.set(self.0.hook.get() - 1);
    }
}

/// Marks the calling thread as inside an allocator hook until the returned
/// guard drops, for code that holds no [`ThreadScope`] borrow (a hook's
/// constructor, its own threads).
pub fn enter_hook_owned() -> OwnedHookGuard {
    THREAD.with(|t| t.hook.set(t.hook.get() + 1));
    OwnedHookGuard(())
}

/// [`enter_hook_owned`]'s guard.
#[must_use = "the guard ends when dropped"]
pub struct OwnedHookGuard(());

impl Drop for OwnedHookGuard {
    fn drop(&mut self) {
        THREAD.with(|t| t.hook.set(t.hook.get() - 1));
    }
}

/// While alive, allocations on this thread are the runtime's own.
#[must_use = "the scope ends when the guard is dropped"]
pub struct RuntimeScope(());

impl RuntimeScope {
    /// Enters the runtime's scope on this thread (scopes nest).
    pub fn enter() -> Self {
        THREAD.with(|t| t.runtime.set(t.runtime.get() + 1));
        RuntimeScope(())
    }
}

impl Drop for RuntimeScope {
    fn drop(&mut self) {
        THREAD.with(|t| t.runtime.set(t.runtime.get() - 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_facts_are_kept_apart_and_nest() {
        std::thread::spawn(|| {
            with_thread(|t| {
                assert!(!t.own() && !t.in_runtime() && !t.in_hook() && t.bound_arena().is_none());
                {
                    let _h = t.enter_hook();
                    let _h2 = t.enter_hook();
                    assert!(t.in_hook() && t.own() && !t.in_runtime());
                }
                assert!(!t.own());
                {
                    let _h = enter_hook_owned();
                    assert!(t.in_hook());
                }
                assert!(!t.in_hook());
                {
                    let _s = RuntimeScope::enter();
                    assert!(t.in_runtime() && t.own() && !t.in_hook() && in_runtime());
                }
                assert!(!t.own() && !in_runtime());
                t.set_bound_arena(0);
                assert_eq!(t.bound_arena(), Some(0));
                t.set_bound_arena(7);
                assert_eq!(t.bound_arena(), Some(7));
            });
        })
        .join()
        .unwrap();
    }
}
