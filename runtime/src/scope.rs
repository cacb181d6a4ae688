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
//! [`ThreadScope`]: one thread-local access answers all three.
//!
//! That one access is made with the initial-exec model (an offset from the
//! thread pointer, no call), not with what Rust's `thread_local!` gets in a
//! shared library (a `__tls_get_addr` call per access). The difference is
//! not the call's few instructions: under `libfarmem.so`, a program whose
//! heap is bigger than the CPU's caches ran 25–30% slower with the call in
//! each malloc than without it, because fewer of its own cache misses
//! overlapped (issue 24; DESIGN's section on the shim's malloc). Stable Rust
//! cannot ask for a TLS model, so on x86-64 Linux the variable is declared
//! in assembly ([`tls`]). The shim's jemalloc already uses initial-exec TLS
//! for its own state (the library is marked `STATIC_TLS`), so this adds no
//! new requirement on how the library is loaded.

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

/// The per-thread [`ThreadScope`], reached with the initial-exec TLS model.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod tls {
    use super::ThreadScope;

    /// Bytes reserved for the scope: all zero at a thread's start, which is
    /// the scope of a thread that is in nothing and bound to no arena.
    const SIZE: usize = 16;
    const _: () = assert!(std::mem::size_of::<ThreadScope>() <= SIZE && std::mem::align_of::<ThreadScope>() <= 8);

    // A zero-filled thread-local of SIZE bytes, hidden so that it is never
    // exported from a shared library (nothing can interpose it, and the
    // linker resolves it within the module).
    std::arch::global_asm!(
        ".pushsection .tbss,\"awT\",@nobits",
        ".p2align 3",
        ".globl farmem_runtime_thread_scope",
        ".hidden farmem_runtime_thread_scope",
        ".type farmem_runtime_thread_scope,@object",
        ".size farmem_runtime_thread_scope,{size}",
        "farmem_runtime_thread_scope:",
        ".zero {size}",
        ".popsection",
        size = const SIZE,
    );

    /// The calling thread's copy of the scope.
    #[inline(always)]
    pub(super) fn address() -> *const ThreadScope {
        let p: *const ThreadScope;
        // SAFETY: %fs:0 holds the thread pointer (the x86-64 TLS ABI), and
        // the GOT slot holds the variable's offset from it, fixed when the
        // module is loaded (R_X86_64_TPOFF64); the result is this thread's
        // copy, which lives as long as the thread. The asm reads no Rust
        // memory and its result depends only on the thread, hence `pure`.
        unsafe {
            std::arch::asm!(
                "mov {p}, qword ptr fs:[0]",
                "add {p}, qword ptr [rip + farmem_runtime_thread_scope@GOTTPOFF]",
                p = out(reg) p,
                options(pure, nomem, nostack),
            );
        }
        p
    }
}

/// The per-thread [`ThreadScope`], through Rust's own thread-locals.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod tls {
    use super::ThreadScope;
    use std::cell::Cell;

    thread_local! {
        static THREAD: ThreadScope = const { ThreadScope { runtime: Cell::new(0), hook: Cell::new(0), arena: Cell::new(0) } };
    }

    /// The calling thread's copy of the scope.
    #[inline(always)]
    pub(super) fn address() -> *const ThreadScope {
        THREAD.with(|t| t as *const ThreadScope)
    }
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
    // SAFETY: see above; the memory is zero-initialised, and all zeros is a
    // valid ThreadScope (three Cell<u32>s at 0); the fields are Cells, only
    // ever reached through shared references.
    unsafe { &*tls::address() }
}

/// Runs `f` with the calling thread's scope ([`this_thread`]).
#[inline(always)]
pub fn with_thread<R>(f: impl FnOnce(&ThreadScope) -> R) -> R {
    f(this_thread())
}

/// Whether the calling thread is running farmem runtime code now.
#[inline]
pub fn in_runtime() -> bool {
    this_thread().in_runtime()
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
    let t = this_thread();
    t.hook.set(t.hook.get() + 1);
    OwnedHookGuard(())
}

/// [`enter_hook_owned`]'s guard.
#[must_use = "the guard ends when dropped"]
pub struct OwnedHookGuard(());

impl Drop for OwnedHookGuard {
    fn drop(&mut self) {
        let t = this_thread();
        t.hook.set(t.hook.get() - 1);
    }
}

/// While alive, allocations on this thread are the runtime's own.
#[must_use = "the scope ends when the guard is dropped"]
pub struct RuntimeScope(());

impl RuntimeScope {
    /// Enters the runtime's scope on this thread (scopes nest).
    pub fn enter() -> Self {
        let t = this_thread();
        t.runtime.set(t.runtime.get() + 1);
        RuntimeScope(())
    }
}

impl Drop for RuntimeScope {
    fn drop(&mut self) {
        let t = this_thread();
        t.runtime.set(t.runtime.get() - 1);
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

    #[test]
    fn each_thread_has_its_own_scope_from_zero_for_its_whole_life() {
        use std::sync::{Arc, Barrier};
        // Eight threads change their scopes at once; none sees another's, and
        // each starts from a scope that is in nothing and bound to nothing.
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let threads: Vec<_> = (0..n as u32)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let t = this_thread();
                    assert!(!t.own() && t.bound_arena().is_none(), "thread {i} started with a used scope");
                    t.set_bound_arena(i);
                    let scopes: Vec<_> = (0..=i).map(|_| RuntimeScope::enter()).collect();
                    barrier.wait();
                    for _ in 0..10_000 {
                        let _h = this_thread().enter_hook();
                        assert_eq!(this_thread().bound_arena(), Some(i));
                        assert_eq!(this_thread().runtime.get(), i + 1);
                        assert_eq!(this_thread().hook.get(), 1);
                    }
                    barrier.wait();
                    drop(scopes);
                    assert!(!this_thread().own());
                    this_thread() as *const ThreadScope as usize
                })
            })
            .collect();
        let mut addresses: Vec<usize> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        addresses.sort_unstable();
        addresses.dedup();
        // All eight were alive together, so each had a copy of its own.
        assert_eq!(addresses.len(), n, "threads alive at once shared a scope");
        // The spawning thread's scope was never touched by theirs.
        assert!(!this_thread().in_hook() && this_thread().runtime.get() == 0);
    }
}
