//! Futex words in farmem memory: the program's locks and waits, in signal mode.
//!
//! A mutex, condition variable, read-write lock, semaphore or barrier that
//! lives in the program's heap is a futex word there. A thread that has to
//! wait asks the kernel to sleep on the word, and the kernel reads it first.
//! In signal mode that read fails with EFAULT if the page was evicted (see
//! the runtime's `signal` module), and glibc aborts on it ("The futex
//! facility returned an unexpected error code."); unlike a read or a write,
//! the call cannot be made again by the shim, because glibc makes it from
//! inside the lock.
//!
//! So every call that can wait is hooked here. It first tries the form that
//! never waits (`trylock`), which costs an uncontended lock one load more;
//! only a call that must wait pins the object's bytes ([`Pinned`]: brought
//! in, and kept from the evictor) for the whole call. Waking a private futex
//! never reads its word (the kernel keys it by address alone), so unlock,
//! signal and post go straight through, except on process-shared objects
//! and priority-inheritance mutexes, whose wake does read it: those are
//! pinned too. Process-shared condition variables, read-write locks and
//! semaphores are known by their `init`; mutexes carry their kind in the
//! ABI-fixed `__kind` word that glibc's static initialisers write.
//!
//! `syscall(2)` is hooked for `SYS_futex` and `SYS_futex_waitv`, the way
//! Rust's std, libstdc++'s atomic waits and most lock libraries reach the
//! kernel. Its entry is a few instructions of assembly: any other call goes
//! straight to the kernel with the caller's registers and stack untouched
//! (a `clone` with a new stack included), and the entry takes no symbol
//! lookup, so it works from the first call jemalloc makes at start-up.
//!
//! glibc's own locks inside heap objects (a `FILE`'s, a `DIR`'s) are not
//! reachable here: those objects are plain memory in signal mode (see
//! `kernel_io`). In thread mode every hook is one load and the libc call.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use farmem_runtime::Pinned;
use libc::{c_int, c_long, c_uint, clockid_t, pthread_barrier_t, pthread_cond_t, pthread_condattr_t, pthread_mutex_t, pthread_rwlock_t, pthread_rwlockattr_t, sem_t, timespec};

use crate::guard;
use crate::kernel_io::{real, signal_mode};

thread_local! {
    /// Set while the thread pins for a hooked call: a lock the pin itself
    /// takes (the region table's) waits unhooked, instead of recursing.
    static PINNING: Cell<bool> = const { Cell::new(false) };
}

/// The most objects one call pins (a condition variable, its mutex, a timeout).
const OBJECTS: usize = 3;

/// Pins `objects` (the program's, so mapped and readable) for a call that
/// may wait on a futex in them, unless signal mode is off, the thread is
/// serving a fault, or it is already pinning. Locks the shim or the runtime
/// take (jemalloc's own included) are plain memory: those calls pin nothing,
/// and the runtime never touches registered memory through a pin.
fn pin(objects: &[(usize, usize)]) -> Option<[Pinned; OBJECTS]> {
    debug_assert!(objects.len() <= OBJECTS);
    if !signal_mode() || farmem_runtime::serving_fault() || guard::own() || PINNING.with(|p| p.replace(true)) {
        return None;
    }
    let pins = std::array::from_fn(|k| objects.get(k).map_or_else(|| Pinned::object(0, 0), |&(a, len)| Pinned::object(a, len)));
    PINNING.with(|p| p.set(false));
    Some(pins)
}

/// Pins the ranges a raw futex call hands the kernel, which may be bad
/// pointers of the program's (they get their EFAULT): only pages of farmem
/// regions are touched.
fn pin_ranges(ranges: &[(usize, usize)]) -> Option<Pinned> {
    if PINNING.with(|p| p.replace(true)) {
        return None;
    }
    let p = Pinned::new(ranges);
    PINNING.with(|p| p.set(false));
    Some(p)
}

/// Makes `call` with `objects` pinned (see [`pin`]).
fn waiting<R>(objects: &[(usize, usize)], call: impl FnOnce() -> R) -> R {
    let _pin = pin(objects);
    call()
}

/// The bytes of the object at `p`.
fn obj<T>(p: *const T) -> (usize, usize) {
    (p as usize, std::mem::size_of::<T>())
}

/// Objects the program made process-shared (their wake reads the word).
static SHARED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
/// How many there are: 0 spares every wake the lookup.
static SHARED_N: AtomicUsize = AtomicUsize::new(0);

fn note_shared(addr: usize, shared: bool) {
    let _g = guard::enter_owned();
    let mut v = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    v.retain(|&a| a != addr);
    if shared {
        v.push(addr);
    }
    SHARED_N.store(v.len(), Ordering::Release);
}

fn is_shared(addr: usize) -> bool {
    SHARED_N.load(Ordering::Acquire) > 0 && SHARED.lock().unwrap_or_else(|e| e.into_inner()).contains(&addr)
}

/// Makes a wake on the object at `p`, pinned when it is process-shared.
fn waking<T, R>(p: *const T, call: impl FnOnce() -> R) -> R {
    let _pin = if signal_mode() && is_shared(p as usize) { pin(&[obj(p)]) } else { None };
    call()
}

/// glibc's `__kind` bits whose unlock has the kernel read the word:
/// priority inheritance (32), priority protection (64), process-shared (128).
const KIND_KERNEL_UNLOCK: c_int = 32 | 64 | 128;

/// The `__kind` word of a glibc mutex (an int at byte 16 on x86-64, where
/// `PTHREAD_*_MUTEX_INITIALIZER_NP` writes it).
///
/// # Safety
/// `m` points to an initialised mutex.
unsafe fn mutex_kind(m: *const pthread_mutex_t) -> c_int {
    // SAFETY: as the caller promised; 16 is within the 40-byte mutex.
    unsafe { std::ptr::read_volatile(m.cast::<u8>().add(16).cast::<c_int>()) }
}

/// Hooks for lock calls with a non-waiting form: the non-waiting form
/// first, then the waiting one with the object pinned.
macro_rules! try_first {
    ($($name:ident / $try:ident ($o:ident: $t:ty $(, $a:ident: $at:ty)*);)*) => {$(
        #[doc = concat!("`", stringify!($name), "`: `", stringify!($try), "` first, then the wait with the object pinned in signal mode.")]
        ///
        /// # Safety
        /// As the libc function.
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name($o: $t $(, $a: $at)*) -> c_int {
            let f = real!($name, fn($t $(, $at)*) -> c_int);
            if !signal_mode() {
                // SAFETY: the program's call, passed on.
                return unsafe { f($o $(, $a)*) };
            }
            let t = real!($try, fn($t) -> c_int);
            // SAFETY: the program's object, as the call requires.
            let r = unsafe { t($o) };
            if r != libc::EBUSY && r != libc::EAGAIN {
                return r;
            }
            // SAFETY: the program's call, passed on.
            waiting(&[obj($o)], || unsafe { f($o $(, $a)*) })
        }
    )*};
}

try_first! {
    pthread_mutex_lock / pthread_mutex_trylock (m: *mut pthread_mutex_t);
    pthread_mutex_timedlock / pthread_mutex_trylock (m: *mut pthread_mutex_t, t: *const timespec);
    pthread_mutex_clocklock / pthread_mutex_trylock (m: *mut pthread_mutex_t, c: clockid_t, t: *const timespec);
    pthread_rwlock_rdlock / pthread_rwlock_tryrdlock (l: *mut pthread_rwlock_t);
    pthread_rwlock_timedrdlock / pthread_rwlock_tryrdlock (l: *mut pthread_rwlock_t, t: *const timespec);
    pthread_rwlock_clockrdlock / pthread_rwlock_tryrdlock (l: *mut pthread_rwlock_t, c: clockid_t, t: *const timespec);
    pthread_rwlock_wrlock / pthread_rwlock_trywrlock (l: *mut pthread_rwlock_t);
    pthread_rwlock_timedwrlock / pthread_rwlock_trywrlock (l: *mut pthread_rwlock_t, t: *const timespec);
    pthread_rwlock_clockwrlock / pthread_rwlock_trywrlock (l: *mut pthread_rwlock_t, c: clockid_t, t: *const timespec);
}

/// A C11 `mtx_t` or `cnd_t`: glibc's pthread object of the same size.
type C11Mutex = pthread_mutex_t;
/// See [`C11Mutex`].
type C11Cond = pthread_cond_t;

/// C11's `thrd_busy`, which `mtx_trylock` returns for a held mutex.
const THRD_BUSY: c_int = 1;

/// `mtx_lock(3)`: glibc's goes to its mutex without the hooked symbol.
///
/// # Safety
/// As `mtx_lock(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn mtx_lock(m: *mut C11Mutex) -> c_int {
    let f = real!(mtx_lock, fn(*mut C11Mutex) -> c_int);
    if signal_mode() {
        let t = real!(mtx_trylock, fn(*mut C11Mutex) -> c_int);
        // SAFETY: the program's mutex.
        let r = unsafe { t(m) };
        if r != THRD_BUSY {
            return r;
        }
    }
    // SAFETY: the program's call, passed on.
    waiting(&[obj(m)], || unsafe { f(m) })
}

/// `mtx_timedlock(3)`.
///
/// # Safety
/// As `mtx_timedlock(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn mtx_timedlock(m: *mut C11Mutex, t: *const timespec) -> c_int {
    let f = real!(mtx_timedlock, fn(*mut C11Mutex, *const timespec) -> c_int);
    // SAFETY: the program's call, passed on.
    waiting(&[obj(m), obj(t)], || unsafe { f(m, t) })
}

/// `pthread_mutex_unlock(3)`: pinned for the kinds whose unlock has the
/// kernel read the word.
///
/// # Safety
/// As `pthread_mutex_unlock(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pthread_mutex_unlock(m: *mut pthread_mutex_t) -> c_int {
    let f = real!(pthread_mutex_unlock, fn(*mut pthread_mutex_t) -> c_int);
    // SAFETY: the program's mutex, held by this thread.
    let _pin = if signal_mode() && unsafe { mutex_kind(m) } & KIND_KERNEL_UNLOCK != 0 { pin(&[obj(m)]) } else { None };
    // SAFETY: the program's call, passed on.
    unsafe { f(m) }
}

/// Hooks for waits that have no non-waiting form: pinned for the call.
macro_rules! pinned_waits {
    ($($name:ident ($($a:ident: $t:ty),*) pins $($p:ident),*;)*) => {$(
        #[doc = concat!("`", stringify!($name), "`: its objects pinned for the wait in signal mode.")]
        ///
        /// # Safety
        /// As the libc function.
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name($($a: $t),*) -> c_int {
            let f = real!($name, fn($($t),*) -> c_int);
            if !signal_mode() {
                // SAFETY: the program's call, passed on.
                return unsafe { f($($a),*) };
            }
            // SAFETY: the program's call, passed on.
            waiting(&[$(obj($p)),*], || unsafe { f($($a),*) })
        }
    )*};
}

pinned_waits! {
    pthread_cond_wait(c: *mut pthread_cond_t, m: *mut pthread_mutex_t) pins c, m;
    pthread_cond_timedwait(c: *mut pthread_cond_t, m: *mut pthread_mutex_t, t: *const timespec) pins c, m, t;
    pthread_cond_clockwait(c: *mut pthread_cond_t, m: *mut pthread_mutex_t, k: clockid_t, t: *const timespec) pins c, m, t;
    cnd_wait(c: *mut C11Cond, m: *mut C11Mutex) pins c, m;
    cnd_timedwait(c: *mut C11Cond, m: *mut C11Mutex, t: *const timespec) pins c, m, t;
    pthread_barrier_wait(b: *mut pthread_barrier_t) pins b;
    sem_timedwait(s: *mut sem_t, t: *const timespec) pins s, t;
    sem_clockwait(s: *mut sem_t, k: clockid_t, t: *const timespec) pins s, t;
}

/// `sem_wait(3)`: `sem_trywait` first, then the wait with the semaphore pinned.
///
/// # Safety
/// As `sem_wait(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sem_wait(s: *mut sem_t) -> c_int {
    let f = real!(sem_wait, fn(*mut sem_t) -> c_int);
    if signal_mode() {
        let t = real!(sem_trywait, fn(*mut sem_t) -> c_int);
        // SAFETY: the program's semaphore; errno is the thread's own.
        if unsafe { t(s) } == 0 {
            return 0;
        }
    }
    // SAFETY: the program's call, passed on.
    waiting(&[obj(s)], || unsafe { f(s) })
}

/// Hooks for wakes: pinned only on process-shared objects.
macro_rules! wakes {
    ($($name:ident ($o:ident: $t:ty);)*) => {$(
        #[doc = concat!("`", stringify!($name), "`: pinned in signal mode if its object is process-shared.")]
        ///
        /// # Safety
        /// As the libc function.
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name($o: $t) -> c_int {
            let f = real!($name, fn($t) -> c_int);
            // SAFETY: the program's call, passed on.
            waking($o, || unsafe { f($o) })
        }
    )*};
}

wakes! {
    pthread_cond_signal(c: *mut pthread_cond_t);
    pthread_cond_broadcast(c: *mut pthread_cond_t);
    pthread_rwlock_unlock(l: *mut pthread_rwlock_t);
    sem_post(s: *mut sem_t);
}

/// Runs an `init` of the object at `addr` whose attribute says, through
/// `pshared` (0 or an error when there is none), whether it is
/// process-shared, and notes it if so.
fn init_noting(addr: usize, pshared: impl FnOnce(&mut c_int) -> c_int, init: impl FnOnce() -> c_int) -> c_int {
    let mut shared = libc::PTHREAD_PROCESS_PRIVATE;
    if pshared(&mut shared) != 0 {
        shared = libc::PTHREAD_PROCESS_PRIVATE;
    }
    let r = init();
    let shared = shared == libc::PTHREAD_PROCESS_SHARED;
    if r == 0 && (shared || SHARED_N.load(Ordering::Acquire) > 0) {
        note_shared(addr, shared);
    }
    r
}

/// `pthread_cond_init(3)`: a process-shared one is noted.
///
/// # Safety
/// As `pthread_cond_init(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pthread_cond_init(c: *mut pthread_cond_t, attr: *const pthread_condattr_t) -> c_int {
    let f = real!(pthread_cond_init, fn(*mut pthread_cond_t, *const pthread_condattr_t) -> c_int);
    init_noting(
        c as usize,
        // SAFETY: a non-null attribute the program initialised.
        |sh| if attr.is_null() { 0 } else { unsafe { libc::pthread_condattr_getpshared(attr, sh) } },
        // SAFETY: the program's call, passed on.
        || unsafe { f(c, attr) },
    )
}

/// `pthread_rwlock_init(3)`: a process-shared one is noted.
///
/// # Safety
/// As `pthread_rwlock_init(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pthread_rwlock_init(l: *mut pthread_rwlock_t, attr: *const pthread_rwlockattr_t) -> c_int {
    let f = real!(pthread_rwlock_init, fn(*mut pthread_rwlock_t, *const pthread_rwlockattr_t) -> c_int);
    init_noting(
        l as usize,
        // SAFETY: a non-null attribute the program initialised.
        |sh| if attr.is_null() { 0 } else { unsafe { libc::pthread_rwlockattr_getpshared(attr, sh) } },
        // SAFETY: the program's call, passed on.
        || unsafe { f(l, attr) },
    )
}

/// `sem_init(3)`: a process-shared one is noted.
///
/// # Safety
/// As `sem_init(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sem_init(s: *mut sem_t, pshared: c_int, value: c_uint) -> c_int {
    let f = real!(sem_init, fn(*mut sem_t, c_int, c_uint) -> c_int);
    init_noting(
        s as usize,
        |sh| {
            *sh = if pshared != 0 { libc::PTHREAD_PROCESS_SHARED } else { libc::PTHREAD_PROCESS_PRIVATE };
            0
        },
        // SAFETY: the program's call, passed on.
        || unsafe { f(s, pshared, value) },
    )
}

/// Hooks for `destroy`: a process-shared object's note goes with it.
macro_rules! destroys {
    ($($name:ident ($o:ident: $t:ty);)*) => {$(
        #[doc = concat!("`", stringify!($name), "`: forgets the object's process-shared note.")]
        ///
        /// # Safety
        /// As the libc function.
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name($o: $t) -> c_int {
            let f = real!($name, fn($t) -> c_int);
            if SHARED_N.load(Ordering::Acquire) > 0 {
                note_shared($o as usize, false);
            }
            // SAFETY: the program's call, passed on.
            unsafe { f($o) }
        }
    )*};
}

destroys! {
    pthread_cond_destroy(c: *mut pthread_cond_t);
    pthread_rwlock_destroy(l: *mut pthread_rwlock_t);
    sem_destroy(s: *mut sem_t);
}

/// The futex operations whose word the kernel never reads when private.
const FUTEX_WAKE: c_int = 1;
const FUTEX_WAKE_BITSET: c_int = 10;
/// The operations with a second word (`uaddr2`).
const FUTEX_REQUEUE: c_int = 3;
const FUTEX_CMP_REQUEUE: c_int = 4;
const FUTEX_WAKE_OP: c_int = 5;
const FUTEX_WAIT_REQUEUE_PI: c_int = 11;
const FUTEX_CMP_REQUEUE_PI: c_int = 12;
/// The operations whose fourth argument is a timeout (not a count).
const FUTEX_WAIT: c_int = 0;
const FUTEX_LOCK_PI: c_int = 6;
const FUTEX_WAIT_BITSET: c_int = 9;
const FUTEX_LOCK_PI2: c_int = 13;
/// Bits of the operation that are flags, not the command.
const FUTEX_PRIVATE_FLAG: c_int = 128;
const FUTEX_CLOCK_REALTIME: c_int = 256;

/// What a `SYS_futex` call hands the kernel: its words, and its timeout.
/// Empty for a private wake, which reads no word.
fn futex_ranges(uaddr: usize, op: c_int, timeout: usize, uaddr2: usize) -> ([(usize, usize); 3], usize) {
    let cmd = op & !(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME);
    let mut r = [(0, 0); 3];
    let mut n = 0;
    if (cmd == FUTEX_WAKE || cmd == FUTEX_WAKE_BITSET) && op & FUTEX_PRIVATE_FLAG != 0 {
        return (r, 0);
    }
    r[n] = (uaddr, 4);
    n += 1;
    if matches!(cmd, FUTEX_REQUEUE | FUTEX_CMP_REQUEUE | FUTEX_WAKE_OP | FUTEX_WAIT_REQUEUE_PI | FUTEX_CMP_REQUEUE_PI) {
        r[n] = (uaddr2, 4);
        n += 1;
    }
    if timeout != 0 && matches!(cmd, FUTEX_WAIT | FUTEX_WAIT_BITSET | FUTEX_LOCK_PI | FUTEX_LOCK_PI2 | FUTEX_WAIT_REQUEUE_PI) {
        r[n] = (timeout, std::mem::size_of::<timespec>());
        n += 1;
    }
    (r, n)
}

/// One waiter of `futex_waitv(2)`.
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// Ranges of a `futex_waitv` call: the array, each word, the timeout (a
/// pin merges those past its limit into one).
///
/// # Safety
/// `waiters` points to `n` waiters, as the system call requires.
unsafe fn waitv_ranges(waiters: *const FutexWaitv, n: usize, timeout: usize) -> Vec<(usize, usize)> {
    let _g = guard::enter_owned();
    let n = n.min(128);
    let mut r = vec![(waiters as usize, n * std::mem::size_of::<FutexWaitv>())];
    for k in 0..n {
        // SAFETY: as the caller promised; the read faults the array in.
        r.push((unsafe { (*waiters.add(k)).uaddr } as usize, 4));
    }
    if timeout != 0 {
        r.push((timeout, std::mem::size_of::<timespec>()));
    }
    r
}

/// How often a futex call that failed with EFAULT is made again: EFAULT
/// comes before the kernel does anything, so the call is safe to repeat.
const RETRIES: usize = 8;

/// `syscall(2)` for `SYS_futex` and `SYS_futex_waitv`, reached from the
/// assembly entry: the words pinned for the call.
extern "C" fn futex_syscall(n: c_long, a1: c_long, a2: c_long, a3: c_long, a4: c_long, a5: c_long, a6: c_long) -> c_long {
    // SAFETY: the program's call, passed on unchanged.
    let call = || unsafe { farmem_raw_syscall(n, a1, a2, a3, a4, a5, a6) };
    // The shim's and the runtime's own locks (Rust's std waits through
    // here) are plain memory; inside the SIGBUS handler a pin could even
    // wait for the region table the handler holds.
    if !signal_mode() || PINNING.with(|p| p.get()) || farmem_runtime::serving_fault() || guard::own() {
        return call();
    }
    for attempt in 0.. {
        let _pin = if n == libc::SYS_futex {
            let (r, k) = futex_ranges(a1 as usize, a2 as c_int, a4 as usize, a5 as usize);
            if k == 0 {
                return call();
            }
            pin_ranges(&r[..k])
        } else {
            // SAFETY: the waiters the program passes, as futex_waitv requires.
            let r = unsafe { waitv_ranges(a1 as *const FutexWaitv, a2 as usize, a4 as usize) };
            pin_ranges(&r)
        };
        let r = call();
        // SAFETY: errno is the calling thread's own.
        if r != -1 || unsafe { *libc::__errno_location() } != libc::EFAULT || attempt == RETRIES {
            return r;
        }
    }
    unreachable!("the loop returns")
}

/// `syscall(2)`: futex calls go to the futex hook (a tail jump, so its
/// seven arguments are where the caller put them); everything else is the
/// kernel's call as libc's `syscall` makes it. 202 is `SYS_futex` and 449
/// `SYS_futex_waitv`.
///
/// # Safety
/// As `syscall(2)`.
#[cfg_attr(not(test), no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn syscall(n: c_long, a1: c_long, a2: c_long, a3: c_long, a4: c_long, a5: c_long, a6: c_long) -> c_long {
    std::arch::naked_asm!(
        "cmp rdi, 202",
        "je {futex}",
        "cmp rdi, 449",
        "je {futex}",
        "jmp {raw}",
        futex = sym futex_syscall,
        raw = sym farmem_raw_syscall,
    )
}

/// The kernel's system call with libc's `syscall(2)` convention and no
/// hook: the number in rax, the arguments moved one register up (r10 for
/// the fourth, the sixth from the stack), -errno turned into -1 and errno.
///
/// # Safety
/// As `syscall(2)`.
#[unsafe(naked)]
unsafe extern "C" fn farmem_raw_syscall(n: c_long, a1: c_long, a2: c_long, a3: c_long, a4: c_long, a5: c_long, a6: c_long) -> c_long {
    std::arch::naked_asm!(
        "mov rax, rdi",
        "mov rdi, rsi",
        "mov rsi, rdx",
        "mov rdx, rcx",
        "mov r10, r8",
        "mov r8, r9",
        "mov r9, qword ptr [rsp + 8]",
        "syscall",
        "cmp rax, -4095",
        "jae 2f",
        "ret",
        "2:",
        "neg rax",
        "push rax",
        "call {errno}",
        "pop rcx",
        "mov dword ptr [rax], ecx",
        "mov rax, -1",
        "ret",
        errno = sym libc::__errno_location,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_wake_pins_nothing_and_a_requeue_pins_both_words() {
        let (_, n) = futex_ranges(0x1000, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, 0, 0);
        assert_eq!(n, 0);
        let (r, n) = futex_ranges(0x1000, FUTEX_WAKE, 0, 0);
        assert_eq!(&r[..n], &[(0x1000, 4)]);
        let (r, n) = futex_ranges(0x1000, FUTEX_CMP_REQUEUE | FUTEX_PRIVATE_FLAG, 7, 0x2000);
        assert_eq!(&r[..n], &[(0x1000, 4), (0x2000, 4)]);
        let (r, n) = futex_ranges(0x1000, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME, 0x3000, 0);
        assert_eq!(&r[..n], &[(0x1000, 4), (0x3000, 16)]);
    }
}
