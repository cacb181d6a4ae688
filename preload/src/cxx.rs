//! C++'s `operator new` and `operator delete`, exported as a system
//! libjemalloc exports them.
//!
//! Without these, a C++ program's `new` goes to libstdc++'s operator new,
//! which calls `malloc` through the PLT, which is the shim's: two calls and
//! a PLT jump more per allocation than under a preloaded libjemalloc, which
//! a benchmark that allocates tens of millions of objects a second pays for
//! (issue 24). Here `new` is the shim's malloc, inlined.
//!
//! Failure keeps C++'s semantics without throwing from Rust: when the
//! allocation fails, the call is handed to the next definition of the same
//! operator (libstdc++'s, found with `dlsym(RTLD_NEXT)`), which calls
//! `malloc` again (the shim's), runs the program's new-handler and throws
//! `std::bad_alloc` (or returns NULL for the `nothrow` forms). The exception
//! passes through these frames, which are `extern "C-unwind"` for it.
//!
//! Every `delete` is `free`: the sized forms do not pass their size on,
//! since a program that frees with the wrong size (undefined in C++, but
//! seen) would corrupt jemalloc's bins.

#![allow(non_snake_case)]

use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_void, size_t};

use crate::alloc::{aligned, allocate, release};

/// C++'s `std::nothrow_t`, passed by reference and never read.
type Nothrow = *const c_void;

/// The next definition of the C++ operator `name` (libstdc++'s), looked up
/// once; the process ends with a line if there is none, which cannot happen
/// in a program that calls a C++ operator.
#[cold]
fn next(slot: &AtomicUsize, name: &CStr) -> usize {
    let mut f = slot.load(Ordering::Acquire);
    if f == 0 {
        let _g = crate::guard::enter_owned();
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
        if f == 0 {
            eprintln!("farmem: an allocation by C++'s {name:?} failed and there is no other definition of it to report the failure (dlsym(RTLD_NEXT) found nothing)");
            std::process::abort();
        }
        slot.store(f, Ordering::Release);
    }
    f
}

/// Defines operators that allocate `size` bytes with `$alloc`, and on
/// failure hand the same arguments to the next definition.
macro_rules! new_operators {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $t:ty),*) = $alloc:expr; )*) => {$(
        $(#[$doc])*
        #[cfg_attr(not(test), no_mangle)]
        pub extern "C-unwind" fn $name($($arg: $t),*) -> *mut c_void {
            let p = $alloc;
            if !p.is_null() {
                return p;
            }
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let f = next(&NEXT, {
                // SAFETY: the literal ends with a NUL and has no other.
                unsafe { CStr::from_bytes_with_nul_unchecked(concat!(stringify!($name), "\0").as_bytes()) }
            });
            // SAFETY: the address dlsym gave for this operator, whose
            // signature is this one's; it may unwind (std::bad_alloc).
            let f: extern "C-unwind" fn($($t),*) -> *mut c_void = unsafe { std::mem::transmute(f) };
            f($($arg),*)
        }
    )*};
}

new_operators! {
    /// `operator new(size_t)`.
    fn _Znwm(size: size_t) = allocate(size);
    /// `operator new[](size_t)`.
    fn _Znam(size: size_t) = allocate(size);
    /// `operator new(size_t, const std::nothrow_t&)`.
    fn _ZnwmRKSt9nothrow_t(size: size_t, nt: Nothrow) = { let _ = nt; allocate(size) };
    /// `operator new[](size_t, const std::nothrow_t&)`.
    fn _ZnamRKSt9nothrow_t(size: size_t, nt: Nothrow) = { let _ = nt; allocate(size) };
    /// `operator new(size_t, std::align_val_t)`.
    fn _ZnwmSt11align_val_t(size: size_t, align: size_t) = aligned_new(size, align);
    /// `operator new[](size_t, std::align_val_t)`.
    fn _ZnamSt11align_val_t(size: size_t, align: size_t) = aligned_new(size, align);
    /// `operator new(size_t, std::align_val_t, const std::nothrow_t&)`.
    fn _ZnwmSt11align_val_tRKSt9nothrow_t(size: size_t, align: size_t, nt: Nothrow) = { let _ = nt; aligned_new(size, align) };
    /// `operator new[](size_t, std::align_val_t, const std::nothrow_t&)`.
    fn _ZnamSt11align_val_tRKSt9nothrow_t(size: size_t, align: size_t, nt: Nothrow) = { let _ = nt; aligned_new(size, align) };
}

/// An aligned `new`; an alignment C++ could not have passed (not a power of
/// two) fails, and the next definition reports it as C++ would.
#[inline]
fn aligned_new(size: size_t, align: size_t) -> *mut c_void {
    if !align.is_power_of_two() {
        return std::ptr::null_mut();
    }
    aligned(align, size)
}

/// Defines `delete` operators: each frees its pointer, whatever else it is given.
macro_rules! delete_operators {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $t:ty),*); )*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// `ptr` is NULL or a live allocation of this malloc.
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name(ptr: *mut c_void $(, $arg: $t)*) {
            $(let _ = $arg;)*
            // SAFETY: as the caller promised.
            unsafe { release(ptr) }
        }
    )*};
}

delete_operators! {
    /// `operator delete(void*)`.
    fn _ZdlPv();
    /// `operator delete[](void*)`.
    fn _ZdaPv();
    /// `operator delete(void*, size_t)`.
    fn _ZdlPvm(size: size_t);
    /// `operator delete[](void*, size_t)`.
    fn _ZdaPvm(size: size_t);
    /// `operator delete(void*, const std::nothrow_t&)`.
    fn _ZdlPvRKSt9nothrow_t(nt: Nothrow);
    /// `operator delete[](void*, const std::nothrow_t&)`.
    fn _ZdaPvRKSt9nothrow_t(nt: Nothrow);
    /// `operator delete(void*, std::align_val_t)`.
    fn _ZdlPvSt11align_val_t(align: size_t);
    /// `operator delete[](void*, std::align_val_t)`.
    fn _ZdaPvSt11align_val_t(align: size_t);
    /// `operator delete(void*, size_t, std::align_val_t)`.
    fn _ZdlPvmSt11align_val_t(size: size_t, align: size_t);
    /// `operator delete[](void*, size_t, std::align_val_t)`.
    fn _ZdaPvmSt11align_val_t(size: size_t, align: size_t);
    /// `operator delete(void*, std::align_val_t, const std::nothrow_t&)`.
    fn _ZdlPvSt11align_val_tRKSt9nothrow_t(align: size_t, nt: Nothrow);
    /// `operator delete[](void*, std::align_val_t, const std::nothrow_t&)`.
    fn _ZdaPvSt11align_val_tRKSt9nothrow_t(align: size_t, nt: Nothrow);
}
