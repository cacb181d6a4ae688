//! When the runtime starts: once the program has a heap worth managing, not
//! when the process does.
//!
//! A shell, a launcher script or a small tool under the shim never pays for
//! a runtime (its threads, its userfaultfds, its statistics socket). The
//! constructor only reads the configuration and makes the farmem arenas;
//! the extents jemalloc maps for them are noted here, unregistered, until
//! their sizes add up to the start size (`FARMEM_START_AT`, 8 MiB by
//! default, half the limit if that is less). The program's allocation that
//! crosses it starts the runtime on its way out of malloc, outside
//! jemalloc's locks, and the noted extents are registered then (with a
//! limit, armed at once: the program's next touches reach the fault handlers).
//! A mapping the mmap hook would register (`FARMEM_MMAP_MIN`) starts the
//! runtime at once, before it is registered.
//!
//! Memory the program touched before the start is registered as it is: its
//! pages are resident, which a region allows (a page farmem holds no copy
//! of is `Resident`). So at most the start size of heap went unmanaged for
//! a while, never unregistered for good.
//!
//! A forked child never starts a runtime (it runs on ordinary memory, as a
//! child of a process whose runtime runs does); what it execs starts over.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, Once};

use farmem_runtime::Runtime;

use crate::extent;

/// No runtime will start: farmem is off, its start failed, or this is a forked child.
const OFF: u8 = 0;
/// Configured; extents are noted until the start size.
const WAITING: u8 = 1;
/// The start size is reached: the next program allocation starts the runtime.
const WANTED: u8 = 2;
/// The runtime runs; extents go to it.
const RUNNING: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(OFF);
/// The start size, in bytes of noted extents.
static START_AT: AtomicU64 = AtomicU64::new(0);
/// Whether the noted extents are registered armed (a limit is set).
static EAGER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static START: Once = Once::new();

/// Extents noted before the start: a handful (jemalloc's first extent of an
/// arena is 2 MiB and they grow). One that finds the table full stays
/// ordinary memory.
const CAPACITY: usize = 64;

struct Noted {
    extents: [(usize, usize); CAPACITY],
    len: usize,
    bytes: u64,
}

static NOTED: Mutex<Noted> = Mutex::new(Noted { extents: [(0, 0); CAPACITY], len: 0, bytes: 0 });

fn noted() -> std::sync::MutexGuard<'static, Noted> {
    NOTED.lock().unwrap_or_else(|e| e.into_inner())
}

/// From the constructor: note extents until they add up to `start_at`
/// bytes, then start the runtime (`eager`: register them armed).
pub fn arm(start_at: u64, eager: bool) {
    START_AT.store(start_at, Ordering::Relaxed);
    EAGER.store(eager, Ordering::Relaxed);
    STATE.store(WAITING, Ordering::Release);
}

/// No runtime will start in this process (a forked child, a failed start).
pub fn disable() {
    STATE.store(OFF, Ordering::Release);
}

/// Starts the runtime if the heap has reached the start size. Called by the
/// malloc family after serving the program (not the shim: never re-entered
/// from inside a start).
#[inline]
pub fn start_if_wanted() {
    if STATE.load(Ordering::Relaxed) == WANTED {
        start_now();
    }
}

/// Starts the runtime now, unless no runtime may start here; waits for a
/// start another thread is making. The caller must be the program (not
/// inside the shim or the runtime).
#[cold]
pub fn start_now() -> Option<&'static Runtime> {
    if STATE.load(Ordering::Acquire) == OFF {
        return None;
    }
    // The program's errno survives its malloc or mmap starting farmem.
    // SAFETY: errno is the calling thread's own.
    let errno = unsafe { *libc::__errno_location() };
    START.call_once(|| match crate::start_runtime() {
        Ok(rt) => publish(rt),
        Err(e) => {
            crate::start_failed(&e);
            disable();
        }
    });
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    if STATE.load(Ordering::Acquire) == RUNNING {
        crate::runtime()
    } else {
        None
    }
}

/// Hands the noted extents to the running runtime; from now on extents go
/// to it as jemalloc maps them.
fn publish(rt: &'static Runtime) {
    let (extents, len, bytes) = {
        let mut n = noted();
        STATE.store(RUNNING, Ordering::Release);
        let taken = (n.extents, n.len, n.bytes);
        n.len = 0;
        taken
    };
    for &(addr, size) in &extents[..len] {
        let r = if EAGER.load(Ordering::Relaxed) { rt.register(addr as *mut u8, size) } else { rt.register_lazy(addr as *mut u8, size) };
        if let Err(e) = r {
            tracing::debug!("extent {addr:#x}+{size:#x} stays outside farmem: {e}");
        }
    }
    tracing::debug!(extents = len, bytes, "extents noted before the start registered");
}

/// The farmem arenas' backing: notes extents until the runtime runs, then
/// registers them with it, lazily (an extent that never goes cold never costs
/// a farmem fault; jemalloc never unmaps it, as lazy registration requires).
pub struct LazyBacking;

impl extent::Backing for LazyBacking {
    fn register(&self, addr: *mut u8, len: usize) -> bool {
        match STATE.load(Ordering::Acquire) {
            RUNNING => return register(addr, len),
            OFF => return false,
            _ => {}
        }
        let mut n = noted();
        // The start moves to RUNNING under the lock, after taking the table.
        match STATE.load(Ordering::Acquire) {
            RUNNING => {
                drop(n);
                return register(addr, len);
            }
            OFF => return false,
            _ => {}
        }
        let full = n.len == CAPACITY;
        if !full {
            let i = n.len;
            n.extents[i] = (addr as usize, len);
            n.len += 1;
            n.bytes += len as u64;
        }
        if full || n.bytes >= START_AT.load(Ordering::Relaxed) {
            let _ = STATE.compare_exchange(WAITING, WANTED, Ordering::AcqRel, Ordering::Relaxed);
        }
        !full
    }
}

fn register(addr: *mut u8, len: usize) -> bool {
    let Some(rt) = crate::runtime() else { return false };
    match rt.register_lazy(addr, len) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("extent {addr:p}+{len:#x} stays outside farmem: {e}");
            false
        }
    }
}
