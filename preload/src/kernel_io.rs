//! System calls that hand the program's buffers to the kernel, in signal mode.
//!
//! In signal mode a kernel access to an evicted or never-touched page of
//! farmem memory fails with EFAULT instead of waiting (see the runtime's
//! `signal` module). So each libc call here that passes a buffer to the
//! kernel pins the buffer in RAM ([`farmem_runtime::Pinned`]: its pages are
//! touched from user space, and the evictor leaves them alone until the call
//! returns), then makes the call. A call that still fails with EFAULT (the
//! program dropped the memory itself meanwhile, or every pin slot was taken)
//! is tried again, a few times, after touching its buffers again: EFAULT
//! with nothing transferred leaves nothing consumed, so the retry is safe.
//! A bad pointer of the program's still gets its EFAULT, after the retries.
//!
//! stdio's buffers live outside farmem: glibc writes them from inside libc,
//! where no hook is seen, so the streams the program opens (and stdin and
//! stdout, before `main`) are given buffers of plain memory (`setvbuf`), of
//! the size and buffering glibc would have chosen. The `FILE` and `DIR`
//! objects themselves are plain memory too (opened with the shim's guard
//! held, so glibc's malloc of them is the shim's): each holds a lock of
//! glibc's own, whose futex wait no hook sees (see `locks`). `fread` and
//! `fwrite` are hooked too: glibc moves a large request straight between
//! the kernel and the program's buffer.
//!
//! In thread mode every hook is one load and the libc call.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use farmem_runtime::Pinned;
use libc::{c_char, c_int, c_void, iovec, msghdr, off_t, size_t, sockaddr, socklen_t, ssize_t, FILE};

use crate::guard;

/// Whether the runtime serves faults in signal mode (set once it runs so).
static ON: AtomicBool = AtomicBool::new(false);
/// Calls that failed with EFAULT on farmem memory and were made again.
static RETRIED: AtomicU64 = AtomicU64::new(0);

/// How often a call that fails with EFAULT is made again.
const RETRIES: usize = 8;

/// Turns the hooks on: the runtime now serves faults in signal mode.
pub fn start() {
    ON.store(true, Ordering::Release);
}

/// Whether the runtime serves faults in signal mode now.
#[inline]
pub(crate) fn signal_mode() -> bool {
    ON.load(Ordering::Acquire)
}

/// Calls made again after an EFAULT, since start.
pub fn efault_retries() -> u64 {
    RETRIED.load(Ordering::Relaxed)
}

/// Whether a call of the calling thread needs its buffers pinned.
#[inline]
fn active() -> bool {
    ON.load(Ordering::Acquire) && !guard::own()
}

fn errno() -> c_int {
    // SAFETY: errno is the calling thread's own.
    unsafe { *libc::__errno_location() }
}

/// Makes `call` with `ranges` pinned, again after an EFAULT (see the module doc).
fn pinned<R: Copy + PartialEq + From<i8>>(ranges: &[(usize, usize)], mut call: impl FnMut() -> R) -> R {
    if !active() {
        return call();
    }
    let mut attempt = 0;
    loop {
        let pin = Pinned::new(ranges);
        let r = call();
        drop(pin);
        if r != R::from(-1) || errno() != libc::EFAULT || attempt == RETRIES {
            return r;
        }
        attempt += 1;
        RETRIED.fetch_add(1, Ordering::Relaxed);
    }
}

/// libc's own function `name`, found once with dlsym(RTLD_NEXT).
macro_rules! real {
    ($name:ident, fn($($t:ty),*) -> $r:ty) => {{
        static F: AtomicUsize = AtomicUsize::new(0);
        let mut f = F.load(Ordering::Acquire);
        if f == 0 {
            // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
            f = unsafe { libc::dlsym(libc::RTLD_NEXT, concat!(stringify!($name), "\0").as_ptr().cast()) } as usize;
            if f == 0 {
                // Without libc's own function the call cannot be made at all.
                eprintln!(concat!("farmem: dlsym(RTLD_NEXT, ", stringify!($name), ") found nothing"));
                std::process::abort();
            }
            F.store(f, Ordering::Release);
        }
        // SAFETY: the address dlsym returned for the libc function of this
        // name, whose C signature this is.
        unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($t),*) -> $r>(f) }
    }};
}

pub(crate) use real;

/// The ranges of an iovec array and of its buffers (at most what a pin holds
/// separately; the rest it only touches).
///
/// # Safety
/// `iov` points to `n` iovecs, as the system call requires.
unsafe fn iov_ranges(iov: *const iovec, n: c_int, out: &mut Vec<(usize, usize)>) {
    let n = n.max(0) as usize;
    out.push((iov as usize, n * std::mem::size_of::<iovec>()));
    for k in 0..n.min(1024) {
        // SAFETY: as the caller promised; reading it faults it in if it is ours.
        let v = unsafe { *iov.add(k) };
        out.push((v.iov_base as usize, v.iov_len));
    }
}

/// The ranges a `msghdr` gives the kernel.
///
/// # Safety
/// `msg` points to a msghdr, as the system call requires.
unsafe fn msg_ranges(msg: *const msghdr) -> Vec<(usize, usize)> {
    let _g = guard::enter_owned();
    let mut r = vec![(msg as usize, std::mem::size_of::<msghdr>())];
    if msg.is_null() {
        return r;
    }
    // SAFETY: as the caller promised.
    let m = unsafe { *msg };
    r.push((m.msg_name as usize, m.msg_namelen as usize));
    r.push((m.msg_control as usize, m.msg_controllen));
    // SAFETY: the msghdr names its iovec array.
    unsafe { iov_ranges(m.msg_iov, m.msg_iovlen as c_int, &mut r) };
    r
}

fn iovs(iov: *const iovec, n: c_int) -> Vec<(usize, usize)> {
    let _g = guard::enter_owned();
    let mut r = Vec::new();
    // SAFETY: the program passes `n` iovecs at `iov` to the kernel.
    unsafe { iov_ranges(iov, n, &mut r) };
    r
}

/// `read(2)`.
///
/// # Safety
/// As `read(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    let f = real!(read, fn(c_int, *mut c_void, size_t) -> ssize_t);
    // SAFETY: the program's call, passed on.
    pinned(&[(buf as usize, n)], || unsafe { f(fd, buf, n) })
}

/// `write(2)`.
///
/// # Safety
/// As `write(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    let f = real!(write, fn(c_int, *const c_void, size_t) -> ssize_t);
    // SAFETY: the program's call, passed on.
    pinned(&[(buf as usize, n)], || unsafe { f(fd, buf, n) })
}

/// `pread(2)`.
///
/// # Safety
/// As `pread(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
    let f = real!(pread, fn(c_int, *mut c_void, size_t, off_t) -> ssize_t);
    // SAFETY: the program's call, passed on.
    pinned(&[(buf as usize, n)], || unsafe { f(fd, buf, n, off) })
}

/// `pread64(2)`: the same call on 64-bit Linux.
///
/// # Safety
/// As `pread(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
    // SAFETY: as the caller promised.
    unsafe { pread(fd, buf, n, off) }
}

/// `pwrite(2)`.
///
/// # Safety
/// As `pwrite(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
    let f = real!(pwrite, fn(c_int, *const c_void, size_t, off_t) -> ssize_t);
    // SAFETY: the program's call, passed on.
    pinned(&[(buf as usize, n)], || unsafe { f(fd, buf, n, off) })
}

/// `pwrite64(2)`: the same call on 64-bit Linux.
///
/// # Safety
/// As `pwrite(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pwrite64(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
    // SAFETY: as the caller promised.
    unsafe { pwrite(fd, buf, n, off) }
}

/// `readv(2)`.
///
/// # Safety
/// As `readv(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    let f = real!(readv, fn(c_int, *const iovec, c_int) -> ssize_t);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(fd, iov, n) };
    }
    // SAFETY: the program's call, passed on.
    pinned(&iovs(iov, n), || unsafe { f(fd, iov, n) })
}

/// `writev(2)`.
///
/// # Safety
/// As `writev(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, n: c_int) -> ssize_t {
    let f = real!(writev, fn(c_int, *const iovec, c_int) -> ssize_t);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(fd, iov, n) };
    }
    // SAFETY: the program's call, passed on.
    pinned(&iovs(iov, n), || unsafe { f(fd, iov, n) })
}

/// `preadv(2)`.
///
/// # Safety
/// As `preadv(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn preadv(fd: c_int, iov: *const iovec, n: c_int, off: off_t) -> ssize_t {
    let f = real!(preadv, fn(c_int, *const iovec, c_int, off_t) -> ssize_t);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(fd, iov, n, off) };
    }
    // SAFETY: the program's call, passed on.
    pinned(&iovs(iov, n), || unsafe { f(fd, iov, n, off) })
}

/// `pwritev(2)`.
///
/// # Safety
/// As `pwritev(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pwritev(fd: c_int, iov: *const iovec, n: c_int, off: off_t) -> ssize_t {
    let f = real!(pwritev, fn(c_int, *const iovec, c_int, off_t) -> ssize_t);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(fd, iov, n, off) };
    }
    // SAFETY: the program's call, passed on.
    pinned(&iovs(iov, n), || unsafe { f(fd, iov, n, off) })
}

/// `send(2)`.
///
/// # Safety
/// As `send(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    let f = real!(send, fn(c_int, *const c_void, size_t, c_int) -> ssize_t);
    // SAFETY: the program's call, passed on.
    pinned(&[(buf as usize, n)], || unsafe { f(fd, buf, n, flags) })
}

/// `recv(2)`.
///
/// # Safety
/// As `recv(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    let f = real!(recv, fn(c_int, *mut c_void, size_t, c_int) -> ssize_t);
    // SAFETY: the program's call, passed on.
    pinned(&[(buf as usize, n)], || unsafe { f(fd, buf, n, flags) })
}

/// `sendto(2)`.
///
/// # Safety
/// As `sendto(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, to: *const sockaddr, tolen: socklen_t) -> ssize_t {
    let f = real!(sendto, fn(c_int, *const c_void, size_t, c_int, *const sockaddr, socklen_t) -> ssize_t);
    // SAFETY: the program's call, passed on.
    pinned(&[(buf as usize, n), (to as usize, tolen as usize)], || unsafe { f(fd, buf, n, flags, to, tolen) })
}

/// `recvfrom(2)`.
///
/// # Safety
/// As `recvfrom(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, from: *mut sockaddr, fromlen: *mut socklen_t) -> ssize_t {
    let f = real!(recvfrom, fn(c_int, *mut c_void, size_t, c_int, *mut sockaddr, *mut socklen_t) -> ssize_t);
    // The address buffer's size is what *fromlen says; a page is enough for any.
    let name = if from.is_null() { 0 } else { std::mem::size_of::<libc::sockaddr_storage>() };
    let ranges = [(buf as usize, n), (from as usize, name), (fromlen as usize, std::mem::size_of::<socklen_t>())];
    // SAFETY: the program's call, passed on.
    pinned(&ranges, || unsafe { f(fd, buf, n, flags, from, fromlen) })
}

/// `sendmsg(2)`.
///
/// # Safety
/// As `sendmsg(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    let f = real!(sendmsg, fn(c_int, *const msghdr, c_int) -> ssize_t);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(fd, msg, flags) };
    }
    // SAFETY: the program passes this msghdr to the kernel.
    let ranges = unsafe { msg_ranges(msg) };
    // SAFETY: the program's call, passed on.
    pinned(&ranges, || unsafe { f(fd, msg, flags) })
}

/// `recvmsg(2)`.
///
/// # Safety
/// As `recvmsg(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let f = real!(recvmsg, fn(c_int, *mut msghdr, c_int) -> ssize_t);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(fd, msg, flags) };
    }
    // SAFETY: the program passes this msghdr to the kernel.
    let ranges = unsafe { msg_ranges(msg) };
    // SAFETY: the program's call, passed on.
    pinned(&ranges, || unsafe { f(fd, msg, flags) })
}

/// `epoll_wait(2)`: the kernel writes the events array.
///
/// # Safety
/// As `epoll_wait(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn epoll_wait(epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int {
    let f = real!(epoll_wait, fn(c_int, *mut libc::epoll_event, c_int, c_int) -> c_int);
    let len = max.max(0) as usize * std::mem::size_of::<libc::epoll_event>();
    // SAFETY: the program's call, passed on.
    pinned(&[(events as usize, len)], || unsafe { f(epfd, events, max, timeout) })
}

/// `epoll_pwait(2)`.
///
/// # Safety
/// As `epoll_pwait(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn epoll_pwait(epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int {
    let f = real!(epoll_pwait, fn(c_int, *mut libc::epoll_event, c_int, c_int, *const libc::sigset_t) -> c_int);
    let len = max.max(0) as usize * std::mem::size_of::<libc::epoll_event>();
    // SAFETY: the program's call, passed on.
    pinned(&[(events as usize, len)], || unsafe { f(epfd, events, max, timeout, mask) })
}

/// `poll(2)`: the kernel reads and writes the pollfd array.
///
/// # Safety
/// As `poll(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    let f = real!(poll, fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int);
    let len = n as usize * std::mem::size_of::<libc::pollfd>();
    // SAFETY: the program's call, passed on.
    pinned(&[(fds as usize, len)], || unsafe { f(fds, n, timeout) })
}

/// `fread(3)`: glibc reads a large request straight into the buffer.
///
/// # Safety
/// As `fread(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fread(ptr: *mut c_void, size: size_t, n: size_t, stream: *mut FILE) -> size_t {
    let f = real!(fread, fn(*mut c_void, size_t, size_t, *mut FILE) -> size_t);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(ptr, size, n, stream) };
    }
    // fread reports a short count, not -1: no retry; the pin is what holds.
    let _pin = Pinned::new(&[(ptr as usize, size.saturating_mul(n))]);
    // SAFETY: the program's call, passed on.
    unsafe { f(ptr, size, n, stream) }
}

/// `fwrite(3)`: glibc writes a large request straight from the buffer.
///
/// # Safety
/// As `fwrite(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fwrite(ptr: *const c_void, size: size_t, n: size_t, stream: *mut FILE) -> size_t {
    let f = real!(fwrite, fn(*const c_void, size_t, size_t, *mut FILE) -> size_t);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(ptr, size, n, stream) };
    }
    let _pin = Pinned::new(&[(ptr as usize, size.saturating_mul(n))]);
    // SAFETY: the program's call, passed on.
    unsafe { f(ptr, size, n, stream) }
}

/// `fread_unlocked(3)`, which gnulib's unlocked-io makes of every `fread`.
///
/// # Safety
/// As `fread(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fread_unlocked(ptr: *mut c_void, size: size_t, n: size_t, stream: *mut FILE) -> size_t {
    let f = real!(fread_unlocked, fn(*mut c_void, size_t, size_t, *mut FILE) -> size_t);
    let _pin = if active() { Some(Pinned::new(&[(ptr as usize, size.saturating_mul(n))])) } else { None };
    // SAFETY: the program's call, passed on.
    unsafe { f(ptr, size, n, stream) }
}

/// `fwrite_unlocked(3)`.
///
/// # Safety
/// As `fwrite(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fwrite_unlocked(ptr: *const c_void, size: size_t, n: size_t, stream: *mut FILE) -> size_t {
    let f = real!(fwrite_unlocked, fn(*const c_void, size_t, size_t, *mut FILE) -> size_t);
    let _pin = if active() { Some(Pinned::new(&[(ptr as usize, size.saturating_mul(n))])) } else { None };
    // SAFETY: the program's call, passed on.
    unsafe { f(ptr, size, n, stream) }
}

/// Plain-memory stdio buffers given to streams, by stream, so `fclose` frees them.
static BUFFERS: Mutex<Vec<(usize, usize, usize)>> = Mutex::new(Vec::new());

/// Signal mode was asked for: stdio buffers are to be plain memory.
static STDIO: AtomicBool = AtomicBool::new(false);

/// Gives `stream` a buffer of plain memory, sized and buffered as glibc
/// would have (st_blksize, line-buffered on a terminal), unless it is
/// unbuffered. Called before the stream's first I/O.
fn plain_buffer(stream: *mut FILE) {
    if stream.is_null() || !STDIO.load(Ordering::Acquire) {
        return;
    }
    let _g = guard::enter_owned();
    // SAFETY: a stream the program holds; fileno only reads it.
    let fd = unsafe { libc::fileno(stream) };
    // SAFETY: fstat fills `st`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let size = if fd >= 0 && unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_blksize > 0 { st.st_blksize as usize } else { libc::BUFSIZ as usize };
    // SAFETY: isatty only asks.
    let mode = if fd >= 0 && unsafe { libc::isatty(fd) } == 1 { libc::_IOLBF } else { libc::_IOFBF };
    let layout = std::alloc::Layout::from_size_align(size, 64).expect("a small power-of-two layout");
    // SAFETY: a non-zero size; the shim's global allocator is plain memory.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return;
    }
    // SAFETY: the stream has done no I/O yet; the buffer outlives it (freed
    // after fclose).
    if unsafe { libc::setvbuf(stream, buf.cast::<c_char>(), mode, size) } != 0 {
        // SAFETY: allocated above with this layout, not given away.
        unsafe { std::alloc::dealloc(buf, layout) };
        return;
    }
    let mut t = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    t.push((stream as usize, buf as usize, size));
}

/// Frees the plain buffer of `stream`, after it is closed.
fn free_buffer(stream: *mut FILE) {
    let _g = guard::enter_owned();
    let mut t = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = t.iter().position(|&(s, _, _)| s == stream as usize) {
        let (_, buf, size) = t.swap_remove(k);
        drop(t);
        let layout = std::alloc::Layout::from_size_align(size, 64).expect("as allocated");
        // SAFETY: allocated in `plain_buffer` with this layout; its stream is closed.
        unsafe { std::alloc::dealloc(buf as *mut u8, layout) };
    }
}

/// Before `main`, in signal mode: stdin's and stdout's buffers are plain
/// memory (stderr is unbuffered).
pub fn plain_stdio() {
    STDIO.store(true, Ordering::Release);
    extern "C" {
        static stdin: *mut FILE;
        static stdout: *mut FILE;
    }
    // SAFETY: glibc's standard streams, valid for the whole process.
    unsafe {
        plain_buffer(stdin);
        plain_buffer(stdout);
    }
}

/// Opens a stream or directory with `strings` pinned, in plain memory in
/// signal mode (see the module doc).
fn opening<R>(strings: &[*const c_char], open: impl FnOnce() -> R) -> R {
    if !active() {
        return open();
    }
    let ranges: Vec<(usize, usize)> = strings.iter().map(|&p| c_str(p)).collect();
    let _pin = Pinned::new(&ranges);
    let _g = guard::enter_owned();
    open()
}

/// `fopen(3)`.
///
/// # Safety
/// As `fopen(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut FILE {
    let f = real!(fopen, fn(*const c_char, *const c_char) -> *mut FILE);
    // SAFETY: the program's call, passed on.
    let s = opening(&[path, mode], || unsafe { f(path, mode) });
    plain_buffer(s);
    s
}

/// `fopen64(3)`.
///
/// # Safety
/// As `fopen(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut FILE {
    // SAFETY: as the caller promised.
    unsafe { fopen(path, mode) }
}

/// `fdopen(3)`.
///
/// # Safety
/// As `fdopen(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    let f = real!(fdopen, fn(c_int, *const c_char) -> *mut FILE);
    // SAFETY: the program's call, passed on.
    let s = opening(&[mode], || unsafe { f(fd, mode) });
    plain_buffer(s);
    s
}

/// `freopen(3)`: the stream's old buffer goes with its old file.
///
/// # Safety
/// As `freopen(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn freopen(path: *const c_char, mode: *const c_char, stream: *mut FILE) -> *mut FILE {
    let f = real!(freopen, fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE);
    // SAFETY: the program's call, passed on.
    let s = opening(&[path, mode], || unsafe { f(path, mode, stream) });
    free_buffer(stream);
    plain_buffer(s);
    s
}

/// `tmpfile(3)`.
///
/// # Safety
/// As `tmpfile(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn tmpfile() -> *mut FILE {
    let f = real!(tmpfile, fn() -> *mut FILE);
    // SAFETY: the program's call, passed on.
    let s = opening(&[], || unsafe { f() });
    plain_buffer(s);
    s
}

/// `popen(3)`.
///
/// # Safety
/// As `popen(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn popen(cmd: *const c_char, mode: *const c_char) -> *mut FILE {
    let f = real!(popen, fn(*const c_char, *const c_char) -> *mut FILE);
    // SAFETY: the program's call, passed on (the child execs from the
    // parent's memory while the parent waits, so the pin holds for it).
    let s = opening(&[cmd, mode], || unsafe { f(cmd, mode) });
    plain_buffer(s);
    s
}

/// `fclose(3)`.
///
/// # Safety
/// As `fclose(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fclose(stream: *mut FILE) -> c_int {
    let f = real!(fclose, fn(*mut FILE) -> c_int);
    // SAFETY: the program's call, passed on (the plain FILE freed as the shim's).
    let r = opening(&[], || unsafe { f(stream) });
    free_buffer(stream);
    r
}

/// `pclose(3)`.
///
/// # Safety
/// As `pclose(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn pclose(stream: *mut FILE) -> c_int {
    let f = real!(pclose, fn(*mut FILE) -> c_int);
    // SAFETY: the program's call, passed on (the plain FILE freed as the shim's).
    let r = opening(&[], || unsafe { f(stream) });
    free_buffer(stream);
    r
}

/// `readdir(3)`: glibc fills the directory stream's buffer (inside the
/// `DIR`, allocated with malloc) with getdents64 from inside libc.
///
/// # Safety
/// As `readdir(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn readdir(dir: *mut libc::DIR) -> *mut libc::dirent {
    let f = real!(readdir, fn(*mut libc::DIR) -> *mut libc::dirent);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(dir) };
    }
    // SAFETY: a DIR is a malloc'd block of this allocator's.
    let len = unsafe { crate::alloc::malloc_usable_size(dir.cast()) };
    let _pin = Pinned::new(&[(dir as usize, len)]);
    // SAFETY: the program's call, passed on.
    unsafe { f(dir) }
}

/// `readdir64(3)`: the same call on 64-bit Linux.
///
/// # Safety
/// As `readdir(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn readdir64(dir: *mut libc::DIR) -> *mut libc::dirent {
    // SAFETY: as the caller promised.
    unsafe { readdir(dir) }
}

/// The range of a NUL-terminated string, NUL included (a null pointer: none).
fn c_str(p: *const c_char) -> (usize, usize) {
    if p.is_null() {
        return (0, 0);
    }
    // SAFETY: the program passes a C string here; reading it in user space
    // faults its pages in if they are farmem's.
    (p as usize, unsafe { libc::strlen(p) } + 1)
}

/// The ranges of a NULL-terminated array of C strings (argv, envp), and of the array.
fn c_strs(v: *const *const c_char, out: &mut Vec<(usize, usize)>) {
    if v.is_null() {
        return;
    }
    let mut k = 0;
    loop {
        // SAFETY: the program passes a NULL-terminated array here.
        let s = unsafe { *v.add(k) };
        if s.is_null() {
            break;
        }
        out.push(c_str(s));
        k += 1;
    }
    out.push((v as usize, (k + 1) * std::mem::size_of::<*const c_char>()));
}

/// Hooks for calls whose first argument is a path (the kernel copies it in).
macro_rules! path_calls {
    ($($name:ident ($($a:ident: $t:ty),*) -> $r:ty;)*) => {$(
        #[doc = concat!("`", stringify!($name), "`: its path pinned in signal mode.")]
        ///
        /// # Safety
        /// As the libc function.
        #[cfg_attr(not(test), no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char $(, $a: $t)*) -> $r {
            let f = real!($name, fn(*const c_char $(, $t)*) -> $r);
            if !active() {
                // SAFETY: the program's call, passed on.
                return unsafe { f(path $(, $a)*) };
            }
            // SAFETY: the program's call, passed on.
            pinned(&[c_str(path)], || unsafe { f(path $(, $a)*) })
        }
    )*};
}

// open and openat are variadic in C; on x86-64 a variadic caller passes the
// mode in the same register as a fixed argument, and it is read only when
// the flags say it was passed, as the kernel does.
path_calls! {
    open(flags: c_int, mode: libc::mode_t) -> c_int;
    open64(flags: c_int, mode: libc::mode_t) -> c_int;
    creat(mode: libc::mode_t) -> c_int;
    stat(st: *mut libc::stat) -> c_int;
    stat64(st: *mut libc::stat) -> c_int;
    lstat(st: *mut libc::stat) -> c_int;
    lstat64(st: *mut libc::stat) -> c_int;
    access(mode: c_int) -> c_int;
    unlink() -> c_int;
    rmdir() -> c_int;
    mkdir(mode: libc::mode_t) -> c_int;
    chdir() -> c_int;
    truncate(len: off_t) -> c_int;
    system() -> c_int;
}

/// `rename(2)`: both paths pinned.
///
/// # Safety
/// As `rename(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn rename(from: *const c_char, to: *const c_char) -> c_int {
    let f = real!(rename, fn(*const c_char, *const c_char) -> c_int);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(from, to) };
    }
    // SAFETY: the program's call, passed on.
    pinned(&[c_str(from), c_str(to)], || unsafe { f(from, to) })
}

/// `openat(2)`.
///
/// # Safety
/// As `openat(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: libc::mode_t) -> c_int {
    let f = real!(openat, fn(c_int, *const c_char, c_int, libc::mode_t) -> c_int);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(dirfd, path, flags, mode) };
    }
    // SAFETY: the program's call, passed on.
    pinned(&[c_str(path)], || unsafe { f(dirfd, path, flags, mode) })
}

/// `fstat(2)`: the kernel writes the stat buffer.
///
/// # Safety
/// As `fstat(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fstat(fd: c_int, st: *mut libc::stat) -> c_int {
    let f = real!(fstat, fn(c_int, *mut libc::stat) -> c_int);
    // SAFETY: the program's call, passed on.
    pinned(&[(st as usize, std::mem::size_of::<libc::stat>())], || unsafe { f(fd, st) })
}

/// `fstat64(2)`: the same call on 64-bit Linux.
///
/// # Safety
/// As `fstat(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fstat64(fd: c_int, st: *mut libc::stat) -> c_int {
    // SAFETY: as the caller promised.
    unsafe { fstat(fd, st) }
}

/// `mkstemp(3)`: glibc writes the name, then opens it from inside libc.
///
/// # Safety
/// As `mkstemp(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn mkstemp(template: *mut c_char) -> c_int {
    let f = real!(mkstemp, fn(*mut c_char) -> c_int);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(template) };
    }
    // SAFETY: the program's call, passed on.
    pinned(&[c_str(template)], || unsafe { f(template) })
}

/// `execve(2)`: the kernel copies the path, argv and envp.
///
/// # Safety
/// As `execve(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    let f = real!(execve, fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(path, argv, envp) };
    }
    let mut r = vec![c_str(path)];
    c_strs(argv, &mut r);
    c_strs(envp, &mut r);
    // SAFETY: the program's call, passed on.
    pinned(&r, || unsafe { f(path, argv, envp) })
}

/// `execvp(3)`: libc tries each directory of PATH with execve from inside libc.
///
/// # Safety
/// As `execvp(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    let f = real!(execvp, fn(*const c_char, *const *const c_char) -> c_int);
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(file, argv) };
    }
    let mut r = vec![c_str(file)];
    c_strs(argv, &mut r);
    extern "C" {
        static environ: *const *const c_char;
    }
    // SAFETY: the process's environment, read as execvp will.
    c_strs(unsafe { environ }, &mut r);
    // SAFETY: the program's call, passed on.
    pinned(&r, || unsafe { f(file, argv) })
}

/// `execv(3)`.
///
/// # Safety
/// As `execv(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    extern "C" {
        static environ: *const *const c_char;
    }
    // SAFETY: as the caller promised; execv is execve with this environment.
    unsafe { execve(path, argv, environ) }
}

type SpawnFn = unsafe extern "C" fn(*mut libc::pid_t, *const c_char, *const libc::posix_spawn_file_actions_t, *const libc::posix_spawnattr_t, *const *mut c_char, *const *mut c_char) -> c_int;

/// posix_spawn and posix_spawnp: the child execs from the parent's memory
/// while the parent waits, so the parent's pin holds for it.
fn spawn(f: SpawnFn, pid: *mut libc::pid_t, path: *const c_char, fa: *const libc::posix_spawn_file_actions_t, at: *const libc::posix_spawnattr_t, argv: *const *mut c_char, envp: *const *mut c_char) -> c_int {
    if !active() {
        // SAFETY: the program's call, passed on.
        return unsafe { f(pid, path, fa, at, argv, envp) };
    }
    let mut r = vec![c_str(path)];
    c_strs(argv.cast(), &mut r);
    c_strs(envp.cast(), &mut r);
    let _pin = Pinned::new(&r);
    // SAFETY: the program's call, passed on (it returns an error number, not -1).
    unsafe { f(pid, path, fa, at, argv, envp) }
}

/// `posix_spawn(3)`.
///
/// # Safety
/// As `posix_spawn(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn posix_spawn(pid: *mut libc::pid_t, path: *const c_char, fa: *const libc::posix_spawn_file_actions_t, at: *const libc::posix_spawnattr_t, argv: *const *mut c_char, envp: *const *mut c_char) -> c_int {
    spawn(real!(posix_spawn, fn(*mut libc::pid_t, *const c_char, *const libc::posix_spawn_file_actions_t, *const libc::posix_spawnattr_t, *const *mut c_char, *const *mut c_char) -> c_int), pid, path, fa, at, argv, envp)
}

/// `posix_spawnp(3)`.
///
/// # Safety
/// As `posix_spawnp(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn posix_spawnp(pid: *mut libc::pid_t, file: *const c_char, fa: *const libc::posix_spawn_file_actions_t, at: *const libc::posix_spawnattr_t, argv: *const *mut c_char, envp: *const *mut c_char) -> c_int {
    spawn(real!(posix_spawnp, fn(*mut libc::pid_t, *const c_char, *const libc::posix_spawn_file_actions_t, *const libc::posix_spawnattr_t, *const *mut c_char, *const *mut c_char) -> c_int), pid, file, fa, at, argv, envp)
}

/// `opendir(3)`: its path pinned, and the `DIR` in plain memory, in signal mode.
///
/// # Safety
/// As `opendir(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn opendir(path: *const c_char) -> *mut libc::DIR {
    let f = real!(opendir, fn(*const c_char) -> *mut libc::DIR);
    // SAFETY: the program's call, passed on.
    opening(&[path], || unsafe { f(path) })
}

/// `fdopendir(3)`: the `DIR` in plain memory in signal mode.
///
/// # Safety
/// As `fdopendir(3)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fdopendir(fd: c_int) -> *mut libc::DIR {
    let f = real!(fdopendir, fn(c_int) -> *mut libc::DIR);
    // SAFETY: the program's call, passed on.
    opening(&[], || unsafe { f(fd) })
}
