//! `pthread_create` and `thrd_create`: threads started from inside the shim
//! or the runtime belong to farmem for their whole life.
//!
//! A new thread runs library code before the function it was started for:
//! Rust's thread start-up registers thread-local destructors, and glibc
//! allocates for them with `calloc`. For the fault handlers that first
//! allocation must already come from plain memory (hard rule 2): served from
//! a farmem arena, the fault handlers would fault on memory only they can serve.
//! So a thread created by a thread that is inside the shim, or inside the
//! runtime's scope, starts inside the shim's guard and never leaves it. Threads
//! the program creates are started exactly as they would be without the shim,
//! except that what libc allocates for them while creating them is plain
//! memory.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_int, c_void, pthread_attr_t, pthread_t};

use crate::guard;

type StartFn = extern "C" fn(*mut c_void) -> *mut c_void;
type CreateFn = unsafe extern "C" fn(*mut pthread_t, *const pthread_attr_t, StartFn, *mut c_void) -> c_int;

/// libc's `pthread_create`, found once at start-up.
static REAL: AtomicUsize = AtomicUsize::new(0);

/// Finds libc's `pthread_create` behind the shim's: from the constructor, or
/// at the first thread created before it ran.
pub fn resolve() -> std::io::Result<()> {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name; the result is
    // either NULL or the address of the next `pthread_create`.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"pthread_create".as_ptr()) };
    if f.is_null() {
        return Err(std::io::Error::other("dlsym(RTLD_NEXT, pthread_create) found nothing"));
    }
    REAL.store(f as usize, Ordering::Release);
    Ok(())
}

/// What the farmem thread runs, passed through its start argument.
struct Start {
    f: StartFn,
    arg: *mut c_void,
}

extern "C" fn farmem_thread(p: *mut c_void) -> *mut c_void {
    // Never released: everything this thread does is farmem's.
    std::mem::forget(guard::enter_owned());
    // SAFETY: `p` is the Box made in pthread_create, handed over to this thread.
    let s = unsafe { Box::from_raw(p.cast::<Start>()) };
    (s.f)(s.arg)
}

/// `pthread_create(3)`.
///
/// # Safety
/// As `pthread_create(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pthread_create(thread: *mut pthread_t, attr: *const pthread_attr_t, f: StartFn, arg: *mut c_void) -> c_int {
    let mut real = REAL.load(Ordering::Acquire);
    if real == 0 {
        // A library initialised before the shim starts a thread: find libc's now.
        if let Err(e) = resolve() {
            tracing::error!("{e}");
            return libc::EAGAIN;
        }
        real = REAL.load(Ordering::Acquire);
    }
    // SAFETY: `real` is the address dlsym returned for pthread_create.
    let real: CreateFn = unsafe { std::mem::transmute::<usize, CreateFn>(real) };
    if !guard::own() {
        // What libc allocates for the new thread here (its dynamic thread
        // vector, which every access to the shim's thread-locals reads,
        // SIGBUS handler included) comes from plain memory: in signal mode
        // a fault on it inside the handler, where SIGBUS is blocked, would
        // end the process.
        let _g = guard::enter_owned();
        // SAFETY: the program's own call, passed on unchanged.
        return unsafe { real(thread, attr, f, arg) };
    }
    let start = Box::into_raw(Box::new(Start { f, arg }));
    // SAFETY: the caller's arguments, with the start routine wrapped; `start`
    // is freed by the new thread, or here if it never starts.
    let r = unsafe { real(thread, attr, farmem_thread, start.cast()) };
    if r != 0 {
        // SAFETY: the thread did not start, so `start` is still ours.
        drop(unsafe { Box::from_raw(start) });
    }
    r
}

/// A C11 thread's start routine.
type ThrdStartFn = extern "C" fn(*mut c_void) -> c_int;

/// `thrd_create(3)`: glibc starts a C11 thread without its `pthread_create`
/// symbol, so what libc allocates for it is made plain here, as for a
/// program thread in [`pthread_create`].
///
/// # Safety
/// As `thrd_create(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn thrd_create(thread: *mut libc::pthread_t, f: ThrdStartFn, arg: *mut c_void) -> c_int {
    let real = crate::kernel_io::real!(thrd_create, fn(*mut libc::pthread_t, ThrdStartFn, *mut c_void) -> c_int);
    let _g = guard::enter_owned();
    // SAFETY: the program's own call, passed on unchanged.
    unsafe { real(thread, f, arg) }
}
