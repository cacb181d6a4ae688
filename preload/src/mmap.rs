//! `mmap`, `munmap` and `mremap` as the program sees them: large private
//! anonymous mappings come under farmem, for programs that manage memory
//! themselves (language runtimes, arenas, pools) rather than through malloc.
//!
//! A mapping of at least the threshold (`FARMEM_MMAP_MIN`, 1 MiB by default),
//! private, anonymous, read-write, not a stack, is registered as it is made.
//! The kernel tells the fault handlers about `madvise` drops and about unmaps
//! and moves of whole regions (userfaultfd events). What it cannot express is
//! a region cut in two: a hole left registered would let the policy evict a
//! page of whatever is mapped there next, which farmem could never bring back.
//! So before a call that unmaps or moves only part of a region (`munmap`,
//! `mremap`, `mmap` with `MAP_FIXED`), the region is unregistered (its evicted
//! pages come back first), and what is left of it is registered again after.
//! A region that goes away whole is left to the UNMAP event, so its evicted
//! pages are dropped rather than read back.
//!
//! The first mapping that would be registered starts the runtime if it does
//! not run yet (see [`crate::lazy`]); until then nothing is registered, so
//! `munmap` and `mremap` pass straight through. Calls from inside the shim or
//! the runtime (jemalloc's own mappings, the runtime's tables) and calls in a
//! forked child pass straight through.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use farmem_runtime::{Runtime, RuntimeError, PAGE_SIZE};
use libc::{c_int, c_void, off_t, size_t};

use crate::{guard, syscall};

/// Whether new mappings are registered (false before start-up and in a forked child).
static TRACKING: AtomicBool = AtomicBool::new(false);
/// Whether a mapping that would be registered starts the runtime (before it runs).
static WATCHING: AtomicBool = AtomicBool::new(false);
/// The smallest mapping registered, in bytes.
static MIN_BYTES: AtomicUsize = AtomicUsize::new(1 << 20);
/// The runtime, once it runs.
static RUNTIME: std::sync::OnceLock<&'static Runtime> = std::sync::OnceLock::new();
/// Regions this module registered, as (start, len), unsorted.
static REGIONS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
/// `REGIONS.len()`, read without the lock.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Starts registering large anonymous mappings with `rt`.
pub fn start(rt: &'static Runtime, min_bytes: usize) {
    MIN_BYTES.store(min_bytes.max(PAGE_SIZE), Ordering::Relaxed);
    let _ = RUNTIME.set(rt);
    TRACKING.store(true, Ordering::Release);
}

/// Before the runtime runs: a mapping of at least `min_bytes` that would be
/// registered starts it.
pub fn watch(min_bytes: usize) {
    MIN_BYTES.store(min_bytes.max(PAGE_SIZE), Ordering::Relaxed);
    WATCHING.store(true, Ordering::Release);
}

/// Stops for good (in a forked child, whose copy of the runtime is inert, or
/// when the runtime could not start).
pub fn stop() {
    TRACKING.store(false, Ordering::Release);
    WATCHING.store(false, Ordering::Release);
}

/// Regions registered through the mmap hooks now.
pub fn regions() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// The runtime, if the calling thread's mappings are the program's to track.
fn tracker() -> Option<&'static Runtime> {
    if !TRACKING.load(Ordering::Acquire) || guard::own() {
        return None;
    }
    RUNTIME.get().copied()
}

/// Before the runtime runs: starts it for a mapping of the program's that it
/// would register, and returns it.
fn starter(len: usize, prot: c_int, flags: c_int) -> Option<&'static Runtime> {
    if !WATCHING.load(Ordering::Acquire) || !eligible(len, prot, flags) || guard::own() {
        return None;
    }
    crate::lazy::start_now()?;
    tracker()
}

fn table() -> std::sync::MutexGuard<'static, Vec<(usize, usize)>> {
    REGIONS.lock().unwrap_or_else(|e| e.into_inner())
}

fn eligible(len: usize, prot: c_int, flags: c_int) -> bool {
    const MAP_TYPE: c_int = 0x0f;
    let refused = libc::MAP_HUGETLB | libc::MAP_STACK | libc::MAP_GROWSDOWN;
    len >= MIN_BYTES.load(Ordering::Relaxed)
        && flags & MAP_TYPE == libc::MAP_PRIVATE
        && flags & libc::MAP_ANONYMOUS != 0
        && flags & refused == 0
        && prot == libc::PROT_READ | libc::PROT_WRITE
}

/// Registers `[start, start+len)` and records it. An UNMAP event for an
/// earlier region at the same place may still be on its way to the fault
/// thread, so an overlap is retried briefly; failing that, the mapping stays
/// ordinary memory.
fn register(rt: &Runtime, start: usize, len: usize) {
    let len = len.next_multiple_of(PAGE_SIZE);
    // A region just unmapped stays in the runtime's table until the fault
    // thread has read the kernel's UNMAP event: a new mapping at its address
    // waits for that, up to 50 ms, then stays outside farmem.
    for attempt in 0..500 {
        match rt.register(start as *mut u8, len) {
            Ok(()) => {
                let mut t = table();
                t.retain(|&(s, l)| s + l <= start || start + len <= s);
                t.push((start, len));
                COUNT.store(t.len(), Ordering::Relaxed);
                return;
            }
            Err(RuntimeError::Overlap { .. }) if attempt < 499 => std::thread::sleep(Duration::from_micros(100)),
            Err(e) => {
                tracing::debug!("mapping {start:#x}+{len:#x} stays outside farmem: {e}");
                return;
            }
        }
    }
}

/// A region taken out of the table before a call that changes its range.
struct Detached {
    start: usize,
    len: usize,
    /// Unregistered because the call touches only part of it.
    unregistered: bool,
}

/// Takes the regions overlapping `[start, end)` out of the table, and
/// unregisters those the range covers only in part (or every one, `all`).
fn detach(rt: &Runtime, start: usize, end: usize, all: bool) -> Vec<Detached> {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return Vec::new();
    }
    let hit: Vec<(usize, usize)> = {
        let mut t = table();
        let hit = t.iter().copied().filter(|&(s, l)| s < end && start < s + l).collect();
        t.retain(|&(s, l)| !(s < end && start < s + l));
        COUNT.store(t.len(), Ordering::Relaxed);
        hit
    };
    hit.into_iter()
        .map(|(s, l)| {
            let whole = start <= s && s + l <= end;
            let unregistered = (all || !whole)
                && match rt.unregister(s as *mut u8) {
                    Ok(()) => true,
                    Err(e) => {
                        // Already gone (an event removed it): nothing left to restore.
                        tracing::debug!("unregistering {s:#x}+{l:#x}: {e}");
                        false
                    }
                };
            if !unregistered {
                // Left to the UNMAP event, but no eviction may be under way
                // when the range goes (see `Runtime::retire`).
                rt.retire(s as *mut u8);
            }
            Detached { start: s, len: l, unregistered }
        })
        .collect()
}

/// After the call: registers again what is left of each detached region
/// outside `[start, end)` (`keep` true: the range itself stays mapped too).
fn reattach(rt: &Runtime, detached: &[Detached], start: usize, end: usize, keep: bool) {
    for d in detached.iter().filter(|d| d.unregistered) {
        let (s, e) = (d.start, d.start + d.len);
        if keep {
            register(rt, s, d.len);
            continue;
        }
        if s < start {
            register(rt, s, start - s);
        }
        if end < e {
            register(rt, end, e - end);
        }
    }
}

/// Puts detached regions back unchanged after a call that failed.
fn restore(rt: &Runtime, detached: &[Detached]) {
    for d in detached {
        if d.unregistered {
            register(rt, d.start, d.len);
        } else {
            rt.reopen(d.start as *mut u8);
            let mut t = table();
            t.push((d.start, d.len));
            COUNT.store(t.len(), Ordering::Relaxed);
        }
    }
}

/// The end of `[addr, addr+len)` rounded up to a page, saturating (a call with
/// an absurd length fails in the kernel; it must not overflow here).
fn page_end(addr: *mut c_void, len: usize) -> usize {
    (addr as usize).saturating_add(len.checked_next_multiple_of(PAGE_SIZE).unwrap_or(usize::MAX))
}

fn to_ptr(r: std::io::Result<*mut c_void>) -> *mut c_void {
    r.unwrap_or_else(|e| {
        // SAFETY: errno is the calling thread's own.
        unsafe { *libc::__errno_location() = e.raw_os_error().unwrap_or(libc::EINVAL) };
        libc::MAP_FAILED
    })
}

/// `mmap(2)`.
///
/// # Safety
/// As `mmap(2)`: with `MAP_FIXED` the caller gives up what was mapped there.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn mmap(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
    let Some(rt) = tracker().or_else(|| starter(len, prot, flags)) else {
        // SAFETY: the caller's own call, passed on.
        return to_ptr(unsafe { syscall::mmap(addr, len, prot, flags, fd, off) });
    };
    let _g = guard::enter_owned();
    let fixed = flags & libc::MAP_FIXED != 0;
    let (start, end) = (addr as usize, page_end(addr, len));
    let detached = if fixed { detach(rt, start, end, false) } else { Vec::new() };
    // SAFETY: the caller's own call, passed on.
    let r = unsafe { syscall::mmap(addr, len, prot, flags, fd, off) };
    match r {
        Ok(p) => {
            reattach(rt, &detached, start, end, false);
            if eligible(len, prot, flags) {
                register(rt, p as usize, len);
            }
        }
        Err(_) => restore(rt, &detached),
    }
    to_ptr(r)
}

/// `mmap64(3)`: the same call on 64-bit Linux.
///
/// # Safety
/// As [`mmap`].
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn mmap64(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
    // SAFETY: as the caller promised.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

/// `munmap(2)`.
///
/// # Safety
/// As `munmap(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    let Some(rt) = tracker() else {
        // SAFETY: as the caller promised.
        return unsafe { syscall::munmap(addr, len) }.map_or(-1, |()| 0);
    };
    let _g = guard::enter_owned();
    let (start, end) = (addr as usize, page_end(addr, len));
    let detached = detach(rt, start, end, false);
    // SAFETY: as the caller promised.
    match unsafe { syscall::munmap(addr, len) } {
        Ok(()) => {
            reattach(rt, &detached, start, end, false);
            0
        }
        Err(e) => {
            restore(rt, &detached);
            // SAFETY: errno is the calling thread's own.
            unsafe { *libc::__errno_location() = e.raw_os_error().unwrap_or(libc::EINVAL) };
            -1
        }
    }
}

/// `mremap(2)` (x86-64 only). A registered region that moves or changes size is
/// unregistered first and registered again at its new place (see the module
/// doc); the runtime's REMAP handling covers moves made behind the shim's back.
///
/// # Safety
/// As `mremap(2)`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn mremap(old: *mut c_void, old_len: size_t, new_len: size_t, flags: c_int, fifth: *mut c_void) -> *mut c_void {
    // mremap is variadic in C; on x86-64 a variadic caller passes the fifth
    // argument in the same register as a fixed one, so it is read only when
    // MREMAP_FIXED says the caller passed it (stable Rust cannot define a
    // variadic function).
    let new_addr = if flags & libc::MREMAP_FIXED != 0 { fifth } else { std::ptr::null_mut() };
    let Some(rt) = tracker() else {
        // SAFETY: as the caller promised.
        return to_ptr(unsafe { syscall::mremap(old, old_len, new_len, flags, new_addr) });
    };
    let _g = guard::enter_owned();
    let (start, end) = (old as usize, page_end(old, old_len));
    let mut detached = detach(rt, start, end, true);
    if flags & libc::MREMAP_FIXED != 0 {
        let (ns, ne) = (new_addr as usize, page_end(new_addr, new_len));
        detached.extend(detach(rt, ns, ne, false));
    }
    // SAFETY: as the caller promised.
    let r = unsafe { syscall::mremap(old, old_len, new_len, flags, new_addr) };
    match r {
        Ok(p) => {
            let dontunmap = flags & libc::MREMAP_DONTUNMAP != 0;
            reattach(rt, &detached, start, end, false);
            if dontunmap {
                // The old range stays mapped (now empty): still the program's memory.
                for d in detached.iter().filter(|d| d.unregistered) {
                    let (s, e) = (start.max(d.start), end.min(d.start + d.len));
                    if s < e {
                        register(rt, s, e - s);
                    }
                }
            }
            if !detached.is_empty() && new_len >= MIN_BYTES.load(Ordering::Relaxed) {
                register(rt, p as usize, new_len);
            }
        }
        Err(_) => restore(rt, &detached),
    }
    to_ptr(r)
}
