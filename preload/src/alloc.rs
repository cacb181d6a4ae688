//! The malloc family the program calls.
//!
//! One jemalloc serves the program and the shim (whose Rust allocator is
//! `farmem_jemalloc::PlainJemalloc`). The routing is farmem-jemalloc's
//! ([`farmem_jemalloc::route`]), shared with programs that link farmem: the
//! program's allocations go to farmem arenas (extents in registered memory,
//! see [`crate::extent`]); each program thread is bound to one on its first
//! allocation after start-up, and from then on takes jemalloc's ordinary fast
//! path. Allocations made inside the shim or the runtime (the re-entry guard
//! is held, or `in_runtime()`) go to arena 0, which farmem never registers,
//! without a thread cache, so no object the fault handlers touch can be
//! handed out of farmem memory (hard rule 2).
//! Before start-up, after a failed start, and for threads that never reach a
//! farmem arena, every arena is plain jemalloc. Frees need no routing: jemalloc
//! finds an object's arena from its address.

use farmem_jemalloc::route::{ArenaSet, Route, PLAIN};
use libc::{c_int, c_void, size_t};
use tikv_jemalloc_sys as je;

use crate::guard::{self, ThreadState};

pub use farmem_jemalloc::route::MAX_ARENAS;

/// malloc's guaranteed alignment on x86-64.
const MIN_ALIGN: usize = 16;

/// The farmem arenas of the shim's jemalloc; active once the runtime runs.
static ARENAS: ArenaSet = ArenaSet::new();

/// Makes the program's allocations go to `arenas` from now on.
pub fn activate(arenas: &[u32]) {
    ARENAS.activate(arenas);
}

/// Stops binding threads to the farmem arenas (the runtime could not start);
/// threads bound already keep theirs, as ordinary memory.
pub fn deactivate() {
    ARENAS.deactivate();
}

/// Whether program allocations go to farmem arenas.
pub fn active() -> bool {
    ARENAS.active()
}

/// The farmem arenas.
pub fn arenas() -> Vec<u32> {
    ARENAS.arenas()
}

/// Decides the route for the calling thread, binding it to a farmem arena
/// the first time it allocates as the program after start-up.
#[inline]
fn route(st: &ThreadState) -> Route {
    // je::mallctl is the jemalloc the farmem arenas were made in.
    ARENAS.route(st, je::mallctl)
}

fn align_flag(align: usize) -> c_int {
    je::MALLOCX_ALIGN(align)
}

fn set_enomem() {
    // SAFETY: errno is the calling thread's own.
    unsafe { *libc::__errno_location() = libc::ENOMEM };
}

/// A plain allocation: `mallocx` never takes size 0, and does not set errno.
fn plain_alloc(size: usize, flags: c_int) -> *mut c_void {
    // SAFETY: size is non-zero; the flags name arena 0, which always exists.
    let p = unsafe { je::mallocx(size.max(1), PLAIN | flags) };
    if p.is_null() {
        set_enomem();
    }
    p
}

fn valid_align(align: usize) -> bool {
    align.is_power_of_two() && align.is_multiple_of(std::mem::size_of::<*mut c_void>())
}

/// Runs `f` for the program, with jemalloc's own mappings made inside it
/// kept out of farmem (the guard is held only once farmem is active). An
/// allocation of the program's that brought the heap to the start size
/// starts the runtime on its way out, where jemalloc holds no lock.
#[inline(always)]
fn serve(f: impl FnOnce(&ThreadState, Route) -> *mut c_void) -> *mut c_void {
    let st = guard::this_thread();
    let r = route(st);
    match r {
        // Active and Default: the program's own allocation, not the shim's.
        Route::Default if ARENAS.active() => {
            let p = {
                let _g = st.enter_hook();
                f(st, r)
            };
            crate::lazy::start_if_wanted();
            p
        }
        _ => f(st, r),
    }
}

/// `malloc(3)`.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn malloc(size: size_t) -> *mut c_void {
    allocate(size)
}

/// `malloc`'s body, for the exported functions that are malloc too (C++'s
/// `new`): a call to the exported symbol would go through the GOT, since
/// the program may interpose it.
#[inline(always)]
pub(crate) fn allocate(size: size_t) -> *mut c_void {
    serve(|_, r| match r {
        // SAFETY: jemalloc's malloc takes any size.
        Route::Default => unsafe { je::malloc(size) },
        Route::Plain => plain_alloc(size, 0),
    })
}

/// `calloc(3)`.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn calloc(n: size_t, size: size_t) -> *mut c_void {
    serve(|_, r| match r {
        // SAFETY: jemalloc's calloc checks the product for overflow.
        Route::Default => unsafe { je::calloc(n, size) },
        Route::Plain => match n.checked_mul(size) {
            Some(total) => plain_alloc(total, je::MALLOCX_ZERO),
            None => {
                set_enomem();
                std::ptr::null_mut()
            }
        },
    })
}

/// `realloc(3)`; `realloc(p, 0)` frees `p` and returns NULL, as glibc does.
///
/// # Safety
/// `ptr` is NULL or a live allocation of this malloc.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: size_t) -> *mut c_void {
    if ptr.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: as the caller promised.
        unsafe { free(ptr) };
        return std::ptr::null_mut();
    }
    serve(|_, r| match r {
        // SAFETY: ptr is live, as the caller promised.
        Route::Default => unsafe { je::realloc(ptr, size) },
        Route::Plain => {
            // SAFETY: as above; size is non-zero.
            let p = unsafe { je::rallocx(ptr, size, PLAIN) };
            if p.is_null() {
                set_enomem();
            }
            p
        }
    })
}

/// `reallocarray(3)`.
///
/// # Safety
/// As [`realloc`].
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, n: size_t, size: size_t) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: as the caller promised.
        Some(total) => unsafe { realloc(ptr, total) },
        None => {
            set_enomem();
            std::ptr::null_mut()
        }
    }
}

/// `free(3)`: jemalloc routes by address, whichever arena the object is from.
///
/// # Safety
/// `ptr` is NULL or a live allocation of this malloc.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    // SAFETY: as the caller promised.
    unsafe { release(ptr) }
}

/// `free`'s body, for the exported functions that are free too (C++'s
/// `delete`), as [`allocate`] is malloc's.
///
/// # Safety
/// As [`free`].
#[inline(always)]
pub(crate) unsafe fn release(ptr: *mut c_void) {
    // No check of whose object this is, or of the thread: a free is
    // jemalloc's alone, as under a stock libjemalloc. An object the shim or
    // the runtime frees may go into this thread's cache and be handed to a
    // program allocation later, which is harmless (the program then holds a
    // block of arena 0, memory farmem never registers); the hazard of hard
    // rule 2 runs the other way, a farmem object handed to the runtime, and
    // the runtime's allocations never take from a thread cache ([`PLAIN`]).
    // The check cost more than its instructions on a heap bigger than the
    // CPU's caches: fewer of the program's cache misses overlapped (issue 24).
    // SAFETY: as the caller promised; jemalloc's free takes NULL.
    unsafe { je::free(ptr) }
}

/// C23 `free_sized`.
///
/// # Safety
/// As [`free`].
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn free_sized(ptr: *mut c_void, _size: size_t) {
    // SAFETY: as the caller promised.
    unsafe { free(ptr) }
}

/// C23 `free_aligned_sized`.
///
/// # Safety
/// As [`free`].
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn free_aligned_sized(ptr: *mut c_void, _align: size_t, _size: size_t) {
    // SAFETY: as the caller promised.
    unsafe { free(ptr) }
}

/// An aligned allocation for the program or the shim; `align` already checked.
#[inline]
pub(crate) fn aligned(align: usize, size: usize) -> *mut c_void {
    serve(|_, r| {
        let flags = if align > MIN_ALIGN { align_flag(align) } else { 0 };
        match r {
            Route::Default => {
                // SAFETY: non-zero size, a power-of-two alignment.
                let p = unsafe { je::mallocx(size.max(1), flags) };
                if p.is_null() {
                    set_enomem();
                }
                p
            }
            Route::Plain => plain_alloc(size, flags),
        }
    })
}

/// `posix_memalign(3)`.
///
/// # Safety
/// `out` is writable.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: size_t, size: size_t) -> c_int {
    if !valid_align(align) {
        return libc::EINVAL;
    }
    let p = aligned(align, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: as the caller promised.
    unsafe { *out = p };
    0
}

/// `aligned_alloc(3)` (C11; any power of two is accepted, as glibc does).
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn aligned_alloc(align: size_t, size: size_t) -> *mut c_void {
    if !align.is_power_of_two() {
        // SAFETY: errno is the calling thread's own.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return std::ptr::null_mut();
    }
    aligned(align, size)
}

/// `memalign(3)`.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn memalign(align: size_t, size: size_t) -> *mut c_void {
    aligned_alloc(align, size)
}

/// `valloc(3)`: page-aligned.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn valloc(size: size_t) -> *mut c_void {
    aligned(4096, size)
}

/// `pvalloc(3)`: page-aligned, size rounded up to whole pages.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn pvalloc(size: size_t) -> *mut c_void {
    match size.max(1).checked_next_multiple_of(4096) {
        Some(s) => aligned(4096, s),
        None => {
            set_enomem();
            std::ptr::null_mut()
        }
    }
}

/// `malloc_usable_size(3)`.
///
/// # Safety
/// `ptr` is NULL or a live allocation of this malloc.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> size_t {
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: as the caller promised.
    unsafe { je::malloc_usable_size(ptr) }
}

// jemalloc's own API, exported unprefixed like a system libjemalloc does:
// a program linked against one (Debian's redis-server) then hands its
// pointers back to the jemalloc that made them.

/// jemalloc's `mallocx`.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn mallocx(size: size_t, flags: c_int) -> *mut c_void {
    serve(|_, r| match r {
        // SAFETY: jemalloc checks the flags; size 0 is the caller's contract.
        Route::Default => unsafe { je::mallocx(size, flags) },
        Route::Plain => plain_alloc(size, flags & (je::MALLOCX_ZERO | 0x3f)),
    })
}

/// jemalloc's `rallocx`.
///
/// # Safety
/// `ptr` is a live allocation of this malloc.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn rallocx(ptr: *mut c_void, size: size_t, flags: c_int) -> *mut c_void {
    serve(|_, r| match r {
        // SAFETY: as the caller promised.
        Route::Default => unsafe { je::rallocx(ptr, size, flags) },
        // SAFETY: as above, moved (if it moves) to the plain arena.
        Route::Plain => unsafe { je::rallocx(ptr, size.max(1), PLAIN | (flags & (je::MALLOCX_ZERO | 0x3f))) },
    })
}

/// jemalloc's `xallocx` (resizes in place, never moves).
///
/// # Safety
/// `ptr` is a live allocation of this malloc.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn xallocx(ptr: *mut c_void, size: size_t, extra: size_t, flags: c_int) -> size_t {
    let _g = guard::enter_owned();
    // SAFETY: as the caller promised.
    unsafe { je::xallocx(ptr, size, extra, flags) }
}

/// jemalloc's `sallocx`.
///
/// # Safety
/// `ptr` is a live allocation of this malloc.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sallocx(ptr: *const c_void, flags: c_int) -> size_t {
    // SAFETY: as the caller promised.
    unsafe { je::sallocx(ptr, flags) }
}

/// jemalloc's `dallocx`.
///
/// # Safety
/// `ptr` is a live allocation of this malloc.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn dallocx(ptr: *mut c_void, _flags: c_int) {
    // SAFETY: as the caller promised.
    unsafe { free(ptr) }
}

/// jemalloc's `sdallocx`.
///
/// # Safety
/// `ptr` is a live allocation of this malloc.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sdallocx(ptr: *mut c_void, _size: size_t, _flags: c_int) {
    // SAFETY: as the caller promised.
    unsafe { free(ptr) }
}

/// jemalloc's `nallocx`.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn nallocx(size: size_t, flags: c_int) -> size_t {
    // SAFETY: nallocx only computes a size.
    unsafe { je::nallocx(size, flags) }
}

/// jemalloc's `mallctl`.
///
/// # Safety
/// As jemalloc's `mallctl`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn mallctl(name: *const libc::c_char, old: *mut c_void, oldlen: *mut size_t, new: *mut c_void, newlen: size_t) -> c_int {
    let _g = guard::enter_owned();
    // SAFETY: as the caller promised.
    unsafe { je::mallctl(name, old, oldlen, new, newlen) }
}

/// jemalloc's `malloc_stats_print`.
///
/// # Safety
/// As jemalloc's `malloc_stats_print`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn malloc_stats_print(write: Option<unsafe extern "C" fn(*mut c_void, *const libc::c_char)>, arg: *mut c_void, opts: *const libc::c_char) {
    let _g = guard::enter_owned();
    // SAFETY: as the caller promised.
    unsafe { je::malloc_stats_print(write, arg, opts) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_allocations_round_trip() {
        let p = malloc(100) as *mut u8;
        assert!(!p.is_null());
        // SAFETY: 100 bytes were just allocated.
        unsafe {
            std::ptr::write_bytes(p, 7, 100);
            let q = realloc(p.cast(), 10_000) as *mut u8;
            assert_eq!(*q.add(99), 7);
            assert!(malloc_usable_size(q.cast()) >= 10_000);
            free(q.cast());
        }
        let z = calloc(1000, 8) as *mut u8;
        // SAFETY: 8000 zeroed bytes.
        assert!(unsafe { std::slice::from_raw_parts(z, 8000) }.iter().all(|&b| b == 0));
        // SAFETY: z is live.
        unsafe { free(z.cast()) };
        assert!(calloc(usize::MAX, 2).is_null());
        let a = aligned_alloc(4096, 10);
        assert_eq!(a as usize % 4096, 0);
        // SAFETY: a is live.
        unsafe { free(a) };
        let mut out = std::ptr::null_mut();
        // SAFETY: out is writable.
        assert_eq!(unsafe { posix_memalign(&mut out, 3, 8) }, libc::EINVAL);
        // SAFETY: as above.
        assert_eq!(unsafe { posix_memalign(&mut out, 64, 8) }, 0);
        assert_eq!(out as usize % 64, 0);
        // SAFETY: out is live.
        unsafe { free(out) };
        // SAFETY: freeing NULL is allowed; realloc to 0 frees.
        unsafe {
            free(std::ptr::null_mut());
            assert!(realloc(malloc(5), 0).is_null());
        }
    }
}
