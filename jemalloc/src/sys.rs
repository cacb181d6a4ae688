//! The kernel calls the extent hooks (and the LD_PRELOAD shim) make
//! themselves, as raw syscalls.
//!
//! The shim exports `mmap`, `munmap` and `mremap`, so calling libc's versions
//! from inside it, or from the extent hooks it runs, would come straight back
//! into its own hooks. Raw syscalls reach the kernel directly; libc's
//! `syscall` keeps errno right for the program when a hook returns the
//! kernel's answer unchanged.

use std::io;

use libc::{c_int, c_void, off_t};

/// The result of a raw syscall as `io::Result`, the error from errno.
fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `mmap(2)`, bypassing every interposer.
///
/// # Safety
/// With `MAP_FIXED`, whatever was mapped at `addr` is replaced: the caller must own it.
pub unsafe fn mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> io::Result<*mut c_void> {
    // SAFETY: the caller owns what MAP_FIXED may replace; otherwise mmap only
    // creates a mapping.
    check(unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) }).map(|r| r as *mut c_void)
}

/// `munmap(2)`, bypassing every interposer.
///
/// # Safety
/// `[addr, addr+len)` must hold nothing anyone will use again.
pub unsafe fn munmap(addr: *mut c_void, len: usize) -> io::Result<()> {
    // SAFETY: the caller promises the range is unused.
    check(unsafe { libc::syscall(libc::SYS_munmap, addr, len) }).map(drop)
}

/// `mremap(2)`, bypassing every interposer.
///
/// # Safety
/// The caller owns `[old, old+old_len)` and, with MREMAP_FIXED, `new_addr`'s range.
pub unsafe fn mremap(old: *mut c_void, old_len: usize, new_len: usize, flags: c_int, new_addr: *mut c_void) -> io::Result<*mut c_void> {
    // SAFETY: as promised by the caller.
    check(unsafe { libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags, new_addr) }).map(|r| r as *mut c_void)
}

/// `madvise(2)`.
///
/// # Safety
/// Dropping advice (MADV_DONTNEED and friends) zeroes memory: the caller must own it.
pub unsafe fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> io::Result<()> {
    // SAFETY: as promised by the caller.
    check(unsafe { libc::syscall(libc::SYS_madvise, addr, len, advice) }).map(drop)
}

/// Checks that this process may open a userfaultfd that also serves the
/// kernel's own accesses (not `UFFD_USER_MODE_ONLY`): a system call reading or
/// writing an evicted buffer must wait for its page, not fail with EFAULT.
pub fn full_userfaultfd() -> io::Result<()> {
    // SAFETY: userfaultfd(2) takes only flags and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if r >= 0 {
        // SAFETY: a fresh fd that nothing else owns.
        unsafe { libc::close(r as c_int) };
        return Ok(());
    }
    let syscall = io::Error::last_os_error();
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/userfaultfd") {
        Ok(_) => Ok(()),
        Err(dev) => Err(io::Error::new(syscall.kind(), format!("userfaultfd(2): {syscall}; /dev/userfaultfd: {dev}"))),
    }
}
