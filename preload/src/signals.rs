//! The program's SIGBUS, in signal mode: `sigaction`, `signal`,
//! `sigprocmask` and `pthread_sigmask` as the program sees them.
//!
//! In signal mode farmem's SIGBUS handler serves faults on farmem memory,
//! so it must stay installed, and SIGBUS must never be blocked in a program
//! thread: a fault's SIGBUS raised while it is blocked ends the process.
//! As ART's libsigchain and HotSpot's libjsig do, a SIGBUS action the
//! program sets goes to the runtime's chain ([`farmem_runtime::program_action`])
//! instead of the kernel, and farmem's handler passes every SIGBUS that is
//! not a farmem fault to it. A mask that would block SIGBUS is applied
//! without it; the old mask the program reads back says SIGBUS is blocked
//! if the program blocked it, so a program that saves and restores its mask
//! sees its own. The program's `sa_mask` and `SA_RESETHAND`/`SA_NODEFER`
//! are not applied when its handler is chained to.
//!
//! Calls from farmem's own threads pass straight through: they block every
//! signal, and touch no farmem memory in user space.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use libc::{c_int, sigset_t};

use crate::guard;

/// Signal mode was asked for: SIGBUS is kept for farmem from the start, as
/// a thread may block it before the runtime starts.
static KEEP: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Whether the program believes SIGBUS is blocked in this thread.
    static BLOCKED: Cell<bool> = const { Cell::new(false) };
}

/// Keeps SIGBUS deliverable in program threads from now on, starting with
/// the calling (main) thread.
pub fn keep_sigbus() {
    KEEP.store(true, Ordering::Release);
    // SAFETY: an empty set with SIGBUS added, unblocked on this thread.
    unsafe {
        let mut set: sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGBUS);
        let mut old: sigset_t = std::mem::zeroed();
        real_pthread_sigmask(libc::SIG_UNBLOCK, &set, &mut old);
        if libc::sigismember(&old, libc::SIGBUS) == 1 {
            BLOCKED.with(|b| b.set(true));
        }
    }
}

fn program_thread() -> bool {
    KEEP.load(Ordering::Acquire) && !guard::own()
}

type MaskFn = unsafe extern "C" fn(c_int, *const sigset_t, *mut sigset_t) -> c_int;

fn real_fn(slot: &AtomicUsize, name: &std::ffi::CStr) -> usize {
    let mut f = slot.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
        if f == 0 {
            eprintln!("farmem: dlsym(RTLD_NEXT, {name:?}) found nothing");
            std::process::abort();
        }
        slot.store(f, Ordering::Release);
    }
    f
}

unsafe fn real_pthread_sigmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    static F: AtomicUsize = AtomicUsize::new(0);
    let f = real_fn(&F, c"pthread_sigmask");
    // SAFETY: libc's pthread_sigmask; as the caller promised.
    unsafe { std::mem::transmute::<usize, MaskFn>(f)(how, set, old) }
}

unsafe fn real_sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    static F: AtomicUsize = AtomicUsize::new(0);
    let f = real_fn(&F, c"sigprocmask");
    // SAFETY: libc's sigprocmask; as the caller promised.
    unsafe { std::mem::transmute::<usize, MaskFn>(f)(how, set, old) }
}

/// Applies a mask change with SIGBUS left out, and reports the old mask as
/// the program set it.
///
/// # Safety
/// As `pthread_sigmask(3)`.
unsafe fn mask(real: unsafe fn(c_int, *const sigset_t, *mut sigset_t) -> c_int, how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    if !program_thread() {
        // SAFETY: as the caller promised.
        return unsafe { real(how, set, old) };
    }
    let was = BLOCKED.with(Cell::get);
    let mut copy: sigset_t;
    let mut set = set;
    let mut now = was;
    if !set.is_null() {
        // SAFETY: the program's set, read and copied.
        copy = unsafe { *set };
        // SAFETY: as above.
        let has = unsafe { libc::sigismember(&copy, libc::SIGBUS) } == 1;
        match how {
            libc::SIG_BLOCK => now = was || has,
            libc::SIG_UNBLOCK => now = was && !has,
            libc::SIG_SETMASK => now = has,
            _ => {}
        }
        if how != libc::SIG_UNBLOCK {
            // SAFETY: a valid set of our own.
            unsafe { libc::sigdelset(&mut copy, libc::SIGBUS) };
        }
        set = &copy;
    }
    // SAFETY: as the caller promised, with SIGBUS left out of the set.
    let r = unsafe { real(how, set, old) };
    if r == 0 {
        BLOCKED.with(|b| b.set(now));
        if !old.is_null() && was {
            // SAFETY: the kernel has filled the program's old set.
            unsafe { libc::sigaddset(old, libc::SIGBUS) };
        }
    }
    r
}

/// `pthread_sigmask(3)`.
///
/// # Safety
/// As `pthread_sigmask(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    // SAFETY: as the caller promised.
    unsafe { mask(real_pthread_sigmask, how, set, old) }
}

/// `sigprocmask(2)`.
///
/// # Safety
/// As `sigprocmask(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int {
    // SAFETY: as the caller promised.
    unsafe { mask(real_sigprocmask, how, set, old) }
}

type ActionFn = unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;

/// `sigaction(2)`: a SIGBUS action goes to farmem's chain while farmem's
/// handler is installed.
///
/// # Safety
/// As `sigaction(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    if sig == libc::SIGBUS && program_thread() {
        // SAFETY: the program's action, if it gave one.
        if let Some(prev) = farmem_runtime::program_action(unsafe { act.as_ref() }) {
            if !old.is_null() {
                // SAFETY: the program's buffer for the old action.
                unsafe { *old = prev };
            }
            return 0;
        }
    }
    static F: AtomicUsize = AtomicUsize::new(0);
    let f = real_fn(&F, c"sigaction");
    // SAFETY: libc's sigaction; the program's call, passed on.
    unsafe { std::mem::transmute::<usize, ActionFn>(f)(sig, act, old) }
}

/// `signal(2)`: as glibc's, BSD semantics (SA_RESTART), through [`sigaction`].
///
/// # Safety
/// As `signal(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    if sig == libc::SIGBUS && program_thread() {
        // SAFETY: a zeroed sigaction with an empty mask is valid.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = handler;
        act.sa_flags = libc::SA_RESTART;
        if let Some(prev) = farmem_runtime::program_action(Some(&act)) {
            return prev.sa_sigaction;
        }
    }
    type SignalFn = unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
    static F: AtomicUsize = AtomicUsize::new(0);
    let f = real_fn(&F, c"signal");
    // SAFETY: libc's signal; the program's call, passed on.
    unsafe { std::mem::transmute::<usize, SignalFn>(f)(sig, handler) }
}
