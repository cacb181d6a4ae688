//! Which jemalloc arena serves an allocation: the routing the LD_PRELOAD
//! shim's malloc, the [`Jemalloc`](crate::Jemalloc) global allocator and the C
//! library share.
//!
//! Program threads are bound (`thread.arena`) to one of a few farmem arenas,
//! round robin, on their first allocation once the set is active; from then
//! on they take jemalloc's ordinary fast path, thread cache included.
//! Allocations of the runtime (`in_runtime()`), or of a shim that says it is
//! busy, go to arena 0 without a thread cache ([`PLAIN`]): arena 0 never gets
//! farmem's hooks (jemalloc makes every thread's cache there), and skipping
//! the cache keeps a farmem object freed on this thread from being handed to
//! the runtime (hard rule 2). Frees need no routing: jemalloc finds an
//! object's arena from its address.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::{Acquire, Relaxed, Release}};

use libc::c_int;
use farmem_runtime::ThreadScope;
use tikv_jemalloc_sys as je;

use crate::extent::{self, MallctlFn};

/// Arena 0 without the thread cache: where the runtime's own objects live.
pub const PLAIN: c_int = je::MALLOCX_ARENA(0) | je::MALLOCX_TCACHE_NONE;
/// At most this many farmem arenas (one per CPU up to it).
pub const MAX_ARENAS: usize = 8;

/// The farmem arena the calling thread is bound to, if any.
#[inline]
pub fn bound_arena() -> Option<u32> {
    farmem_runtime::with_thread(ThreadScope::bound_arena)
}

/// Where one allocation is served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// jemalloc's own choice: before activation, or a program thread (bound
    /// to a farmem arena by now).
    Default,
    /// Arena 0, no thread cache ([`PLAIN`]): the runtime's and the shim's memory.
    Plain,
}

/// The farmem arenas of one jemalloc, and whether program threads go to them.
pub struct ArenaSet {
    active: AtomicBool,
    arenas: [AtomicU32; MAX_ARENAS],
    count: AtomicUsize,
    next: AtomicUsize,
}

impl Default for ArenaSet {
    fn default() -> Self {
        Self::new()
    }
}

impl ArenaSet {
    /// An empty, inactive set (for a `static`).
    pub const fn new() -> Self {
        ArenaSet { active: AtomicBool::new(false), arenas: [const { AtomicU32::new(0) }; MAX_ARENAS], count: AtomicUsize::new(0), next: AtomicUsize::new(0) }
    }

    /// Sends program threads to `arenas` (the first [`MAX_ARENAS`]) from now on.
    pub fn activate(&self, arenas: &[u32]) {
        let n = arenas.len().min(MAX_ARENAS);
        for (slot, &a) in self.arenas.iter().zip(&arenas[..n]) {
            slot.store(a, Relaxed);
        }
        self.count.store(n, Relaxed);
        self.active.store(n > 0, Release);
    }

    /// Stops binding threads. Threads already bound stay on their arena (a
    /// thread's binding can only be changed by the thread itself).
    pub fn deactivate(&self) {
        self.active.store(false, Release);
    }

    /// Whether program threads go to farmem arenas.
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Acquire)
    }

    /// The arenas of the set.
    pub fn arenas(&self) -> Vec<u32> {
        self.arenas[..self.count.load(Relaxed)].iter().map(|a| a.load(Relaxed)).collect()
    }

    /// Decides the route of one allocation by the calling thread (`t`, its
    /// [`ThreadScope`], read once by the caller), binding it to a farmem
    /// arena the first time it allocates as the program. Allocations the
    /// thread makes as the runtime, or inside an allocator hook's own code,
    /// are [`Route::Plain`]. `mallctl` is the jemalloc the arenas belong to.
    #[inline]
    pub fn route(&self, t: &ThreadScope, mallctl: MallctlFn) -> Route {
        if !self.active.load(Relaxed) {
            return Route::Default;
        }
        if t.own() {
            return Route::Plain;
        }
        if t.bound_arena().is_none() {
            // A failure leaves the thread on an automatic arena: correct,
            // just not farmem; it is not retried on every allocation.
            let _ = self.bind(t, mallctl);
        }
        Route::Default
    }

    /// Binds the calling thread to the next farmem arena of the set and
    /// returns it. The thread is marked bound even when jemalloc refuses, so a
    /// failing bind is not retried on every allocation.
    pub fn bind_current_thread(&self, mallctl: MallctlFn) -> io::Result<u32> {
        farmem_runtime::with_thread(|t| self.bind(t, mallctl))
    }

    #[cold]
    #[inline(never)]
    fn bind(&self, t: &ThreadScope, mallctl: MallctlFn) -> io::Result<u32> {
        let n = self.count.load(Relaxed);
        if n == 0 {
            return Err(io::Error::other("farmem has no arenas (not installed)"));
        }
        let arena = self.arenas[self.next.fetch_add(1, Relaxed) % n].load(Relaxed);
        t.set_bound_arena(arena);
        // Binding may make jemalloc map memory or allocate its own metadata:
        // that is farmem's, not the program's.
        let _hook = t.enter_hook();
        // SAFETY: the set's arenas were made with this mallctl (the caller's
        // contract in `route`); thread.arena takes an unsigned.
        unsafe { extent::bind_thread(mallctl, arena) }?;
        Ok(arena)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inactive_set_leaves_everything_to_jemalloc() {
        let set = ArenaSet::new();
        farmem_runtime::with_thread(|t| {
            assert_eq!(set.route(t, je::mallctl), Route::Default);
            let _hook = t.enter_hook();
            assert_eq!(set.route(t, je::mallctl), Route::Default);
        });
        assert!(set.bind_current_thread(je::mallctl).is_err());
        assert_eq!(bound_arena(), None);
    }

    #[test]
    fn an_active_set_binds_program_threads_and_keeps_the_runtime_plain() {
        let set = ArenaSet::new();
        let mut arenas = [0u32; 2];
        for a in &mut arenas {
            // A plain manual arena is enough to bind to.
            // SAFETY: the mallctl of the jemalloc this test links; arenas.create returns an unsigned.
            *a = unsafe { crate::extent::read::<u32>(je::mallctl, c"arenas.create") }.unwrap();
        }
        set.activate(&arenas);
        std::thread::scope(|s| {
            s.spawn(|| {
                farmem_runtime::with_thread(|t| {
                    {
                        let _hook = t.enter_hook();
                        assert_eq!(set.route(t, je::mallctl), Route::Plain);
                    }
                    assert_eq!(bound_arena(), None);
                    {
                        let _scope = farmem_runtime::RuntimeScope::enter();
                        assert_eq!(set.route(t, je::mallctl), Route::Plain);
                    }
                    assert_eq!(set.route(t, je::mallctl), Route::Default);
                });
                let bound = bound_arena().unwrap();
                assert!(arenas.contains(&bound));
                // SAFETY: thread.arena is an unsigned.
                assert_eq!(unsafe { crate::extent::read::<u32>(je::mallctl, c"thread.arena") }.unwrap(), bound);
            });
        });
        set.deactivate();
        assert_eq!(farmem_runtime::with_thread(|t| set.route(t, je::mallctl)), Route::Default);
    }

    /// Remembers the extents a farmem-like arena took.
    struct Recorder(std::sync::Mutex<Vec<(usize, usize)>>);

    impl crate::extent::Backing for Recorder {
        fn register(&self, addr: *mut u8, len: usize) -> bool {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push((addr as usize, len));
            true
        }
    }

    static RECORDER: Recorder = Recorder(std::sync::Mutex::new(Vec::new()));

    /// Hard rule 2 with frees that go into the thread cache (the shim's
    /// `free` is plain jemalloc `free`): blocks of a farmem arena freed on a
    /// thread sit in its cache, and the runtime's allocations on that thread
    /// must still never be handed one.
    #[test]
    fn farmem_blocks_in_a_threads_cache_never_reach_the_runtimes_allocations() {
        // SAFETY: the mallctl of the jemalloc this test links.
        let arena = unsafe { crate::extent::create_arena(je::mallctl, &RECORDER) }.unwrap();
        let set = ArenaSet::new();
        set.activate(&[arena]);
        let in_farmem = |p: usize| RECORDER.0.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|&(a, l)| a <= p && p < a + l);
        std::thread::scope(|s| {
            s.spawn(|| {
                let t = farmem_runtime::this_thread();
                assert_eq!(set.route(t, je::mallctl), Route::Default);
                assert_eq!(bound_arena(), Some(arena));
                // SAFETY: plain mallocs and frees of 48-byte blocks.
                let blocks: Vec<usize> = (0..64).map(|_| unsafe { je::malloc(48) } as usize).collect();
                assert!(blocks.iter().all(|&p| p != 0 && in_farmem(p)), "the program's blocks are farmem's");
                for &p in &blocks {
                    // SAFETY: each block is live and freed once, into the thread cache.
                    unsafe { je::free(p as *mut libc::c_void) };
                }
                let _scope = farmem_runtime::RuntimeScope::enter();
                assert_eq!(set.route(t, je::mallctl), Route::Plain);
                // SAFETY: PLAIN names arena 0, which always exists.
                let runtime: Vec<usize> = (0..64).map(|_| unsafe { je::mallocx(48, PLAIN) } as usize).collect();
                assert!(runtime.iter().all(|&p| p != 0 && !in_farmem(p)), "a runtime allocation got a farmem block: {runtime:x?}");
                for &p in &runtime {
                    // SAFETY: live, freed once.
                    unsafe { je::dallocx(p as *mut libc::c_void, je::MALLOCX_TCACHE_NONE) };
                }
                drop(_scope);
                // Not vacuous: the cache did hold farmem blocks for the program.
                // SAFETY: as above.
                let again = unsafe { je::malloc(48) } as usize;
                assert!(blocks.contains(&again), "the thread cache did not hand back a freed block ({again:#x})");
                // SAFETY: live, freed once.
                unsafe { je::free(again as *mut libc::c_void) };
            });
        });
        set.deactivate();
    }
}

