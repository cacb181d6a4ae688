//! jemalloc extent hooks that take an arena's memory from farmem.
//!
//! An arena made by [`create_arena`] gets every extent from a fresh private
//! anonymous mapping that is handed to a [`Backing`] (farmem registers it)
//! before jemalloc sees it. jemalloc keeps its extents for good (`dalloc` is
//! refused, so nothing is ever unmapped behind farmem's back) and gives pages
//! back with `MADV_DONTNEED` (`purge_forced`), which farmem follows through
//! its userfaultfd REMOVE events. Lazy purging (`MADV_FREE`) and decommit are
//! refused so that every purge is one farmem sees as a drop. The arena's own
//! metadata is asked to stay in ordinary memory (`metadata_use_hooks` false),
//! so jemalloc's bookkeeping is never evicted.
//!
//! Nothing here holds global state: the caller passes the `mallctl` of
//! whichever jemalloc it runs (the LD_PRELOAD shim's private copy, a Rust
//! program's `_rjem_mallctl`, or a C program's system libjemalloc), so the
//! one implementation serves all three.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use farmem_runtime::Runtime;

use tikv_jemalloc_sys::extent_hooks_t;

use crate::sys as syscall;

const PAGE: usize = 4096;

/// jemalloc's `mallctl`, whichever build of jemalloc provides it.
pub type MallctlFn = unsafe extern "C" fn(*const c_char, *mut c_void, *mut usize, *mut c_void, usize) -> c_int;

/// Where an arena's fresh memory is announced. `register` is called from
/// inside jemalloc with arena locks held: it must not allocate from that arena.
pub trait Backing: Sync + 'static {
    /// Takes `[addr, addr+len)` (fresh, page-aligned, private anonymous,
    /// read-write, never touched) under management. The memory is used either
    /// way; false only means it stays ordinary memory.
    fn register(&self, addr: *mut u8, len: usize) -> bool;
}

/// The [`Backing`] of a runtime held in a `static`: registers each extent
/// with it once it is there, until [`RuntimeBacking::disable`].
pub struct RuntimeBacking {
    runtime: &'static OnceLock<Runtime>,
    enabled: AtomicBool,
}

impl RuntimeBacking {
    /// Registers extents with the runtime `runtime` will hold.
    pub const fn new(runtime: &'static OnceLock<Runtime>) -> Self {
        RuntimeBacking { runtime, enabled: AtomicBool::new(true) }
    }

    /// Stops registering fresh extents; true if it was registering until now.
    pub fn disable(&self) -> bool {
        self.enabled.swap(false, Ordering::AcqRel)
    }
}

impl Backing for RuntimeBacking {
    fn register(&self, addr: *mut u8, len: usize) -> bool {
        if !self.enabled.load(Ordering::Acquire) {
            return false;
        }
        let Some(rt) = self.runtime.get() else { return false };
        // Lazily: an extent that never goes cold never costs a farmem fault.
        // jemalloc never unmaps it (its `dalloc` is refused), as lazy
        // registration requires.
        match rt.register_lazy(addr, len) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("extent {addr:p}+{len:#x} stays outside farmem: {e}");
                false
            }
        }
    }
}

/// Why an arena could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ExtentError {
    /// jemalloc refused `arenas.create` (and its extended form).
    #[error("jemalloc refused to create an arena with farmem's extent hooks (mallctl {name}: error {code})")]
    Create {
        /// The mallctl name tried last.
        name: &'static str,
        /// Its error number.
        code: c_int,
    },
}

/// The hook table jemalloc reads, followed by what the hooks need. jemalloc
/// passes the table's address to every hook, so the hooks find the backing
/// without any global.
#[repr(C)]
struct Hooks {
    table: extent_hooks_t,
    backing: &'static dyn Backing,
}

/// jemalloc's `arena_config_t` (5.3), for `experimental.arenas_create_ext`.
#[repr(C)]
struct ArenaConfig {
    extent_hooks: *mut extent_hooks_t,
    metadata_use_hooks: bool,
}

/// Creates a jemalloc arena whose extents come from fresh mappings given to
/// `backing`; returns the arena's index, for `MALLOCX_ARENA` or `thread.arena`.
///
/// # Safety
/// `mallctl` must be the `mallctl` of a live jemalloc 5.x.
pub unsafe fn create_arena(mallctl: MallctlFn, backing: &'static dyn Backing) -> Result<u32, ExtentError> {
    let hooks: &'static mut Hooks = Box::leak(Box::new(Hooks {
        table: extent_hooks_t {
            alloc: Some(alloc),
            dalloc: Some(dalloc),
            destroy: Some(destroy),
            commit: Some(commit),
            decommit: Some(decommit),
            purge_lazy: None,
            purge_forced: Some(purge_forced),
            split: Some(split),
            merge: Some(merge),
        },
        backing,
    }));
    let table: *mut extent_hooks_t = &mut hooks.table;
    let mut arena: c_uint = 0;
    let mut len = std::mem::size_of::<c_uint>();
    let mut config = ArenaConfig { extent_hooks: table, metadata_use_hooks: false };
    // SAFETY: the name is NUL-terminated; old is a c_uint with its size; new is
    // an arena_config_t laid out as jemalloc 5.3 declares it.
    let r = unsafe {
        mallctl(
            c"experimental.arenas_create_ext".as_ptr(),
            (&mut arena as *mut c_uint).cast(),
            &mut len,
            (&mut config as *mut ArenaConfig).cast(),
            std::mem::size_of::<ArenaConfig>(),
        )
    };
    if r == 0 {
        return Ok(arena);
    }
    // An older jemalloc: the arena's metadata will come through the hooks too.
    let mut table_ptr = table;
    // SAFETY: as above; new is an extent_hooks_t pointer.
    let r = unsafe {
        mallctl(
            c"arenas.create".as_ptr(),
            (&mut arena as *mut c_uint).cast(),
            &mut len,
            (&mut table_ptr as *mut *mut extent_hooks_t).cast(),
            std::mem::size_of::<*mut extent_hooks_t>(),
        )
    };
    if r == 0 {
        Ok(arena)
    } else {
        Err(ExtentError::Create { name: "arenas.create", code: r })
    }
}

/// Binds the calling thread to `arena` (`thread.arena`): its plain `malloc`
/// calls and its thread cache fill from that arena from now on.
///
/// # Safety
/// As [`create_arena`].
pub unsafe fn bind_thread(mallctl: MallctlFn, arena: u32) -> io::Result<()> {
    let mut a: c_uint = arena;
    // SAFETY: new is a c_uint with its size; the name is NUL-terminated.
    let r = unsafe { mallctl(c"thread.arena".as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), (&mut a as *mut c_uint).cast(), std::mem::size_of::<c_uint>()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Reads a `size_t` or `unsigned` statistic or option by name (for tests and logs).
///
/// # Safety
/// As [`create_arena`]; `T` must be the type jemalloc documents for `name`.
pub unsafe fn read<T: Copy + Default>(mallctl: MallctlFn, name: &CStr) -> io::Result<T> {
    let mut v = T::default();
    let mut len = std::mem::size_of::<T>();
    // SAFETY: old is a T with its size.
    let r = unsafe { mallctl(name.as_ptr(), (&mut v as *mut T).cast(), &mut len, std::ptr::null_mut(), 0) };
    if r == 0 {
        Ok(v)
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// The backing of the arena whose hook table is `h`.
///
/// # Safety
/// `h` must be the table of a [`Hooks`] made by [`create_arena`].
unsafe fn backing(h: *mut extent_hooks_t) -> &'static dyn Backing {
    // SAFETY: `table` is the first field of the repr(C) `Hooks`, which lives
    // for the rest of the process (leaked in create_arena).
    unsafe { (*(h as *const Hooks)).backing }
}

unsafe extern "C" fn alloc(
    h: *mut extent_hooks_t,
    new_addr: *mut c_void,
    size: usize,
    alignment: usize,
    zero: *mut bool,
    commit: *mut bool,
    _arena: c_uint,
) -> *mut c_void {
    // jemalloc asks for a given address only to grow an extent in place; a
    // fresh mapping cannot promise that, and refusing is always allowed.
    if !new_addr.is_null() || size == 0 || !size.is_multiple_of(PAGE) {
        return std::ptr::null_mut();
    }
    let align = alignment.max(PAGE);
    let Some(map_len) = size.checked_add(align - PAGE) else { return std::ptr::null_mut() };
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: no MAP_FIXED: a new mapping that replaces nothing.
    let Ok(p) = (unsafe { syscall::mmap(std::ptr::null_mut(), map_len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) }) else {
        return std::ptr::null_mut();
    };
    let base = p as usize;
    let start = base.next_multiple_of(align);
    let (head, tail) = (start - base, base + map_len - (start + size));
    // SAFETY: the head and tail are parts of the mapping just made that no one
    // has seen; unmapping them cannot fail for a valid range, and a failure
    // would only leave address space mapped.
    unsafe {
        if head > 0 {
            let _ = syscall::munmap(p, head);
        }
        if tail > 0 {
            let _ = syscall::munmap((start + size) as *mut c_void, tail);
        }
    }
    // SAFETY: h is the table this hook was installed with.
    let b = unsafe { backing(h) };
    b.register(start as *mut u8, size);
    // SAFETY: jemalloc passes valid out-pointers.
    unsafe {
        *zero = true;
        *commit = true;
    }
    start as *mut c_void
}

/// Refused: the extent stays with jemalloc, which reuses it (retained). Never
/// unmapping keeps farmem's region table and the mappings in step.
unsafe extern "C" fn dalloc(_h: *mut extent_hooks_t, _addr: *mut c_void, _size: usize, _committed: bool, _arena: c_uint) -> bool {
    true
}

/// Called only when an arena is destroyed; farmem never destroys its arenas.
unsafe extern "C" fn destroy(_h: *mut extent_hooks_t, addr: *mut c_void, size: usize, _committed: bool, _arena: c_uint) {
    // The range is dropped, not unmapped: extents are registered lazily, and
    // the kernel reports nothing about a range not yet armed, so an unmap
    // would leave farmem a region over whatever is mapped there next. The
    // address space stays reserved (an arena is destroyed rarely, if ever).
    // SAFETY: jemalloc gives the extent up for good; dropping its pages
    // touches nothing else, and farmem sees the drop if the range is armed.
    let _ = unsafe { syscall::madvise(addr, size, libc::MADV_DONTNEED) };
}

/// Memory is always committed (Linux overcommits), so committing succeeds.
unsafe extern "C" fn commit(_h: *mut extent_hooks_t, _addr: *mut c_void, _size: usize, _off: usize, _len: usize, _arena: c_uint) -> bool {
    false
}

/// Refused: jemalloc purges instead.
unsafe extern "C" fn decommit(_h: *mut extent_hooks_t, _addr: *mut c_void, _size: usize, _off: usize, _len: usize, _arena: c_uint) -> bool {
    true
}

/// `MADV_DONTNEED`: the pages read as zeros afterwards, and farmem forgets its
/// copies of them when it reads the REMOVE event.
unsafe extern "C" fn purge_forced(_h: *mut extent_hooks_t, addr: *mut c_void, _size: usize, off: usize, len: usize, _arena: c_uint) -> bool {
    // SAFETY: jemalloc owns the extent and asks for these pages to be dropped.
    unsafe { syscall::madvise(addr.cast::<u8>().add(off).cast(), len, libc::MADV_DONTNEED) }.is_err()
}

/// Splitting an extent needs nothing from the mapping.
unsafe extern "C" fn split(_h: *mut extent_hooks_t, _addr: *mut c_void, _size: usize, _a: usize, _b: usize, _committed: bool, _arena: c_uint) -> bool {
    false
}

/// Neighbouring extents may merge even across two mappings: jemalloc never
/// unmaps them (dalloc is refused), and a purge across the seam is two madvises'
/// worth of pages to the kernel.
unsafe extern "C" fn merge(_h: *mut extent_hooks_t, _a: *mut c_void, _sa: usize, _b: *mut c_void, _sb: usize, _committed: bool, _arena: c_uint) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Remembers what it was given.
    struct Recorder(Mutex<Vec<(usize, usize)>>);

    impl Backing for Recorder {
        fn register(&self, addr: *mut u8, len: usize) -> bool {
            self.0.lock().unwrap().push((addr as usize, len));
            true
        }
    }

    static RECORDER: Recorder = Recorder(Mutex::new(Vec::new()));

    #[test]
    fn an_arena_takes_its_extents_from_the_backing() {
        use tikv_jemalloc_sys as je;
        // SAFETY: the mallctl of the jemalloc this test links.
        let arena = unsafe { create_arena(je::mallctl, &RECORDER) }.unwrap();
        let size = 3 << 20;
        // SAFETY: a non-zero size and an arena that exists.
        let p = unsafe { je::mallocx(size, je::MALLOCX_ARENA(arena as usize) | je::MALLOCX_TCACHE_NONE) } as usize;
        assert_ne!(p, 0);
        // SAFETY: the allocation is `size` bytes.
        unsafe { std::ptr::write_bytes(p as *mut u8, 1, size) };
        let got = RECORDER.0.lock().unwrap().clone();
        assert!(got.iter().any(|&(a, l)| a <= p && p + size <= a + l), "{p:#x} not in {got:x?}");
        assert!(got.iter().all(|&(a, l)| a % PAGE == 0 && l % PAGE == 0));
        // SAFETY: p is live; freeing keeps the extent (dalloc is refused).
        unsafe { je::dallocx(p as *mut c_void, je::MALLOCX_TCACHE_NONE) };
    }
}
