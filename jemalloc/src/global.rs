//! Rust global allocators over the `_rjem_` jemalloc of tikv-jemalloc-sys.
//!
//! - [`Jemalloc`]: a drop-in for `tikv_jemallocator::Jemalloc` that, once
//!   [`install`](crate::install) has run, sends the program's threads to
//!   farmem arenas and the runtime's own allocations to plain arena 0.
//! - [`PlainJemalloc`]: everything from arena 0 without a thread cache, for
//!   code that is all farmem's (the LD_PRELOAD shim, the C library's private
//!   jemalloc).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use libc::c_int;
use tikv_jemalloc_sys as je;

use crate::route::{ArenaSet, Route, PLAIN};

/// malloc's guaranteed alignment on x86-64.
const MIN_ALIGN: usize = 16;

/// The farmem arenas of the jemalloc the [`Jemalloc`] allocator serves from.
pub(crate) static LINKED: ArenaSet = ArenaSet::new();

/// Set by the first allocation through [`Jemalloc`]: `install` refuses to run
/// unless it is the program's global allocator (with another allocator the
/// runtime's objects could not be kept out of farmem memory).
static IN_USE: AtomicBool = AtomicBool::new(false);

/// Whether [`Jemalloc`] has served an allocation in this process.
pub(crate) fn in_use() -> bool {
    IN_USE.load(Relaxed)
}

/// jemalloc's flags for a Rust layout, as tikv-jemallocator computes them:
/// an alignment flag only where the size class does not already give it.
#[inline]
pub fn layout_flags(layout: &Layout) -> c_int {
    if layout.align() <= MIN_ALIGN && layout.align() <= layout.size() {
        0
    } else {
        je::MALLOCX_ALIGN(layout.align())
    }
}

/// The global allocator of a Rust program that links farmem: put it in
/// `#[global_allocator]` in place of `tikv_jemallocator::Jemalloc`.
///
/// Until [`install`](crate::install) it is plain jemalloc. After it, each
/// program thread is bound to a farmem arena on its first allocation (its
/// heap extents are registered with farmem), and allocations made inside the
/// runtime's scope go to arena 0 without a thread cache, so the fault handlers
/// never touches farmem memory (hard rule 2).
pub struct Jemalloc;

impl Jemalloc {
    #[inline]
    fn flags(layout: &Layout) -> c_int {
        if !IN_USE.load(Relaxed) {
            IN_USE.store(true, Relaxed);
        }
        match farmem_runtime::with_thread(|t| LINKED.route(t, je::mallctl)) {
            Route::Default => layout_flags(layout),
            Route::Plain => PLAIN | layout_flags(layout),
        }
    }
}

// SAFETY: every block comes from jemalloc's mallocx with the layout's size and
// alignment (GlobalAlloc never asks for size 0), and goes back to the same
// jemalloc, which finds its arena from the address.
unsafe impl GlobalAlloc for Jemalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: a non-zero size and a power-of-two alignment (Layout's invariants).
        unsafe { je::mallocx(layout.size(), Self::flags(&layout)) }.cast()
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in alloc.
        unsafe { je::mallocx(layout.size(), Self::flags(&layout) | je::MALLOCX_ZERO) }.cast()
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let mut flags = layout_flags(&layout);
        if LINKED.active() && farmem_runtime::in_runtime() {
            // A runtime object freed into this thread's cache could be handed
            // back to the program, or a program object to the runtime later.
            flags |= je::MALLOCX_TCACHE_NONE;
        }
        // SAFETY: ptr came from alloc with this layout.
        unsafe { je::sdallocx(ptr.cast(), layout.size(), flags) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The new block's layout keeps the old alignment.
        // SAFETY: the alignment is the old layout's, the size non-zero (GlobalAlloc's contract).
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: ptr came from alloc with `layout`; a moved block lands where `flags` says.
        unsafe { je::rallocx(ptr.cast(), new_size, Self::flags(&new)) }.cast()
    }
}

/// Everything from arena 0 without a thread cache: the global allocator of
/// code that is all farmem's own (the LD_PRELOAD shim, the C library).
pub struct PlainJemalloc;

// SAFETY: as for Jemalloc; every block is in arena 0 of the same jemalloc.
unsafe impl GlobalAlloc for PlainJemalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: GlobalAlloc callers never pass size 0.
        unsafe { je::mallocx(layout.size(), PLAIN | layout_flags(&layout)) }.cast()
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe { je::mallocx(layout.size(), PLAIN | je::MALLOCX_ZERO | layout_flags(&layout)) }.cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from alloc with this layout.
        unsafe { je::sdallocx(ptr.cast(), layout.size(), je::MALLOCX_TCACHE_NONE | layout_flags(&layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: ptr came from alloc with this layout; new_size is non-zero.
        unsafe { je::rallocx(ptr.cast(), new_size, PLAIN | layout_flags(&layout)) }.cast()
    }
}
