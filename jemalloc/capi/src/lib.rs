//! `libfarmem_jemalloc_c` (`.a` and `.so`): farmem for a C program linked
//! against the system libjemalloc, through `jemalloc/include/farmem_jemalloc.h`.
//!
//! ```c
//! #include "farmem_jemalloc.h"
//! if (farmem_jemalloc_install("limit=256M tiers=lz4") != 0)
//!     fprintf(stderr, "farmem: %s\n", farmem_jemalloc_last_error());
//! ```
//!
//! `farmem_jemalloc_install` finds the program's jemalloc by `mallctl`
//! (`dlsym(RTLD_DEFAULT)`, or the one passed to `farmem_jemalloc_install_with`),
//! creates farmem arenas in it, starts the runtime, and binds the calling
//! thread to a farmem arena; other threads call `farmem_jemalloc_bind_thread`.
//!
//! Hard rule 2: the Rust code of this library (the runtime, its tiers and
//! tables) allocates from a jemalloc of its own, the prefixed `_rjem_` copy of
//! tikv-jemalloc-sys, which has no farmem arenas at all; the program's
//! jemalloc only ever sees farmem's hooks on the manual arenas made here, and
//! jemalloc never hands a manual arena to a thread that did not ask for it. So
//! the runtime's threads (and glibc's own allocations for them, which go to the
//! program's `malloc`) stay on automatic arenas in ordinary memory.

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("libfarmem_jemalloc_c supports Linux on x86-64 only");

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};

use farmem_jemalloc::extent::MallctlFn;
use farmem_jemalloc::route::ArenaSet;
use farmem_jemalloc::{Config, InstallError, PlainJemalloc};

/// The library's private allocator: arena 0 of its own `_rjem_` jemalloc.
#[global_allocator]
static GLOBAL: PlainJemalloc = PlainJemalloc;

/// The farmem arenas made in the program's jemalloc (bound explicitly; no
/// allocator routes through this set).
static PROGRAM_ARENAS: ArenaSet = ArenaSet::new();

/// Success.
pub const FARMEM_JEMALLOC_OK: c_int = 0;
/// The configuration string is not accepted.
pub const FARMEM_JEMALLOC_ERR_CONFIG: c_int = 1;
/// farmem is already installed in this process.
pub const FARMEM_JEMALLOC_ERR_INSTALLED: c_int = 2;
/// No jemalloc 5 `mallctl` in the program.
pub const FARMEM_JEMALLOC_ERR_NO_JEMALLOC: c_int = 3;
/// userfaultfd is not available.
pub const FARMEM_JEMALLOC_ERR_USERFAULTFD: c_int = 4;
/// A tier could not be made.
pub const FARMEM_JEMALLOC_ERR_TIER: c_int = 5;
/// The runtime could not start.
pub const FARMEM_JEMALLOC_ERR_RUNTIME: c_int = 6;
/// jemalloc refused the farmem arenas.
pub const FARMEM_JEMALLOC_ERR_ARENA: c_int = 7;
/// farmem is not installed.
pub const FARMEM_JEMALLOC_ERR_NOT_INSTALLED: c_int = 8;
/// jemalloc refused to bind the thread to a farmem arena.
pub const FARMEM_JEMALLOC_ERR_BIND: c_int = 9;

/// What a C call could not do.
#[derive(Debug, thiserror::Error)]
enum CError {
    /// `install` failed.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// The configuration pointer was NULL or not UTF-8.
    #[error("farmem config: the string is NULL or not UTF-8")]
    ConfigText,
    /// No usable jemalloc in the program.
    #[error("no jemalloc 5 in this program: {0} (link with -ljemalloc, or pass its mallctl to farmem_jemalloc_install_with)")]
    NoJemalloc(String),
    /// farmem is not installed.
    #[error("farmem is not installed in this process")]
    NotInstalled,
    /// Binding the thread failed.
    #[error("jemalloc refused to bind this thread to a farmem arena: {0}")]
    Bind(std::io::Error),
}

impl CError {
    fn code(&self) -> c_int {
        match self {
            CError::Install(InstallError::Config(_)) | CError::ConfigText => FARMEM_JEMALLOC_ERR_CONFIG,
            CError::Install(InstallError::AlreadyInstalled) => FARMEM_JEMALLOC_ERR_INSTALLED,
            CError::Install(InstallError::Userfaultfd(_)) => FARMEM_JEMALLOC_ERR_USERFAULTFD,
            CError::Install(InstallError::Tier { .. }) => FARMEM_JEMALLOC_ERR_TIER,
            CError::Install(InstallError::Arena(_)) => FARMEM_JEMALLOC_ERR_ARENA,
            CError::Install(_) => FARMEM_JEMALLOC_ERR_RUNTIME,
            CError::NoJemalloc(_) => FARMEM_JEMALLOC_ERR_NO_JEMALLOC,
            CError::NotInstalled => FARMEM_JEMALLOC_ERR_NOT_INSTALLED,
            CError::Bind(_) => FARMEM_JEMALLOC_ERR_BIND,
        }
    }
}

thread_local! {
    /// The message of this thread's last failed call.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `r`'s error for `farmem_jemalloc_last_error` and returns its code.
fn report(r: Result<(), CError>) -> c_int {
    match r {
        Ok(()) => FARMEM_JEMALLOC_OK,
        Err(e) => {
            let msg = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
            LAST_ERROR.with(|l| *l.borrow_mut() = msg);
            e.code()
        }
    }
}

/// Checks that `mallctl` belongs to a jemalloc 5.x.
///
/// # Safety
/// `mallctl` must be callable as jemalloc's `mallctl`.
unsafe fn check_jemalloc(mallctl: MallctlFn) -> Result<(), CError> {
    let mut version: *const c_char = std::ptr::null();
    let mut len = std::mem::size_of::<*const c_char>();
    // SAFETY: "version" is a const char * by jemalloc's documentation; old is one with its size.
    let r = unsafe { mallctl(c"version".as_ptr(), (&mut version as *mut *const c_char).cast(), &mut len, std::ptr::null_mut(), 0) };
    if r != 0 || version.is_null() {
        return Err(CError::NoJemalloc(format!("mallctl(\"version\") failed with {r}")));
    }
    // SAFETY: jemalloc's version is a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(version) }.to_string_lossy();
    if !v.starts_with("5.") {
        return Err(CError::NoJemalloc(format!("jemalloc {v} is not 5.x")));
    }
    Ok(())
}

/// # Safety
/// `config` is NULL or a NUL-terminated string; `mallctl` as `check_jemalloc`.
unsafe fn install(config: *const c_char, mallctl: MallctlFn) -> Result<(), CError> {
    if config.is_null() {
        return Err(CError::ConfigText);
    }
    // SAFETY: as the caller promised.
    let text = unsafe { CStr::from_ptr(config) }.to_str().map_err(|_| CError::ConfigText)?;
    let config: Config = text.parse().map_err(InstallError::from)?;
    // SAFETY: as the caller promised.
    unsafe { check_jemalloc(mallctl) }?;
    // SAFETY: mallctl is a live jemalloc 5's (checked above, and it lives as
    // long as the program it is linked into). Hard rule 2: this library's Rust
    // allocations go to its own `_rjem_` jemalloc (GLOBAL), never to the
    // program's jemalloc whose arenas the set holds.
    let guard = unsafe { farmem_jemalloc::install_into(&config, mallctl, &PROGRAM_ARENAS) }?;
    guard.keep();
    farmem_jemalloc::bind_current_thread().map_err(CError::Bind)?;
    Ok(())
}

/// Installs farmem into the program's jemalloc, found as `mallctl` by
/// `dlsym(RTLD_DEFAULT)`, configured by `config` (e.g. `"limit=256M
/// tiers=zstd:3"`, the grammar of `--limit`, `--stall`, `--min`, `--tiers`),
/// and binds the calling thread to a farmem arena. Returns 0, or an error code
/// with a message from `farmem_jemalloc_last_error`.
///
/// # Safety
/// `config` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn farmem_jemalloc_install(config: *const c_char) -> c_int {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mallctl".as_ptr()) };
    if sym.is_null() {
        return report(Err(CError::NoJemalloc("dlsym(RTLD_DEFAULT, \"mallctl\") found nothing".into())));
    }
    // SAFETY: a symbol named mallctl; check_jemalloc asks it its version before anything else.
    let mallctl: MallctlFn = unsafe { std::mem::transmute::<*mut c_void, MallctlFn>(sym) };
    // SAFETY: as the caller promised.
    report(unsafe { install(config, mallctl) })
}

/// As `farmem_jemalloc_install`, with the jemalloc's `mallctl` given (a
/// statically linked or prefixed jemalloc, e.g. `je_mallctl`).
///
/// # Safety
/// `config` as for `farmem_jemalloc_install`; `mallctl` is a jemalloc 5.x's.
#[no_mangle]
pub unsafe extern "C" fn farmem_jemalloc_install_with(config: *const c_char, mallctl: Option<MallctlFn>) -> c_int {
    let Some(mallctl) = mallctl else { return report(Err(CError::NoJemalloc("the mallctl given is NULL".into()))) };
    // SAFETY: as the caller promised.
    report(unsafe { install(config, mallctl) })
}

/// Binds the calling thread to a farmem arena: its `malloc` calls are served
/// from farmem memory from now on. Returns 0 or an error code.
#[no_mangle]
pub extern "C" fn farmem_jemalloc_bind_thread() -> c_int {
    report(match farmem_jemalloc::runtime() {
        None => Err(CError::NotInstalled),
        Some(_) => farmem_jemalloc::bind_current_thread().map(drop).map_err(CError::Bind),
    })
}

/// Stops farmem: reclaim stops and evicted pages come back into RAM; memory
/// stays correct. farmem cannot be installed again in this process.
#[no_mangle]
pub extern "C" fn farmem_jemalloc_uninstall() -> c_int {
    report(match farmem_jemalloc::runtime() {
        None => Err(CError::NotInstalled),
        Some(_) => {
            farmem_jemalloc::uninstall();
            Ok(())
        }
    })
}

/// The message of the calling thread's last failed call ("" if none); valid
/// until the thread's next farmem_jemalloc call.
#[no_mangle]
pub extern "C" fn farmem_jemalloc_last_error() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

/// The runtime's statistics, as `farmem_jemalloc_stats` fills them.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct FarmemJemallocStats {
    /// Bytes registered with farmem (the farmem arenas' extents).
    pub registered_bytes: u64,
    /// Pages of registered memory in RAM now.
    pub resident_pages: u64,
    /// Pages out of RAM now.
    pub evicted_pages: u64,
    /// Pages evicted since install.
    pub pages_evicted_total: u64,
    /// Faults served from a tier.
    pub faults_from_tier: u64,
    /// Pages whose copies farmem dropped because jemalloc purged them.
    pub pages_dropped_by_program: u64,
    /// Pages a tier could not return (accesses got SIGBUS); 0 unless hardware or a spill file failed.
    pub pages_poisoned: u64,
    /// Bytes the tiers hold.
    pub tier_bytes: u64,
}

/// Fills `*out` with the runtime's statistics. Returns 0 or an error code.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn farmem_jemalloc_stats(out: *mut FarmemJemallocStats) -> c_int {
    let Some(rt) = farmem_jemalloc::runtime() else { return report(Err(CError::NotInstalled)) };
    let s = rt.stats();
    let stats = FarmemJemallocStats {
        registered_bytes: s.registered_bytes,
        resident_pages: s.resident_pages(),
        evicted_pages: s.evicted_pages,
        pages_evicted_total: s.pages_evicted_total,
        faults_from_tier: s.faults_from_tier,
        pages_dropped_by_program: s.pages_dropped_by_program,
        pages_poisoned: s.pages_poisoned,
        tier_bytes: s.tier_bytes(),
    };
    if !out.is_null() {
        // SAFETY: as the caller promised.
        unsafe { *out = stats };
    }
    FARMEM_JEMALLOC_OK
}
