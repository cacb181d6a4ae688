//! Starting farmem inside a program that links jemalloc, and stopping it.
//!
//! One installation per process: the runtime lives in a `static` and is never
//! dropped, so the fault handlers serve farmem memory for as long as any of it
//! is registered, exit handlers included.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use farmem_runtime::{Runtime, RuntimeError, RuntimeScope, Stats};
use farmem_runtime::policy::PolicyConfig;
use farmem_tiers::{TierError, TierSpec};

use crate::config::{Config, ConfigError};
use crate::extent::{self, ExtentError, MallctlFn, RuntimeBacking};
use crate::route::{ArenaSet, MAX_ARENAS};

/// Why farmem could not be installed; the program runs on as before.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The configuration string has a key or value farmem cannot use.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `install` already ran in this process.
    #[error("farmem is already installed in this process (install runs once per process)")]
    AlreadyInstalled,
    /// The program's global allocator is not [`Jemalloc`](crate::Jemalloc).
    #[error("farmem_jemalloc::Jemalloc is not this program's #[global_allocator]: without it the runtime's own allocations could not be kept out of farmem memory")]
    NotGlobalAllocator,
    /// Only a user-mode-only userfaultfd is allowed here.
    #[error("userfaultfd is not available for kernel accesses ({0}): needs root or CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=1, or read-write access to /dev/userfaultfd")]
    Userfaultfd(io::Error),
    /// A tier of the configuration could not be made.
    #[error("farmem config: tiers: the tier {tier} could not be made: {source}")]
    Tier {
        /// The tier, as the spec writes it.
        tier: String,
        /// What failed.
        source: TierError,
    },
    /// The runtime could not start (or its policy could not).
    #[error("the farmem runtime could not start: {0}")]
    Runtime(#[from] RuntimeError),
    /// jemalloc refused to create the farmem arenas.
    #[error(transparent)]
    Arena(#[from] ExtentError),
}

/// Why [`start_runtime`] could not start the runtime.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A tier of the spec could not be made.
    #[error("the tier {tier} could not be made: {source}")]
    Tier {
        /// The tier, as the spec writes it.
        tier: String,
        /// What failed.
        source: TierError,
    },
    /// The runtime (or its policy) could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// How a runtime started by [`start_runtime`] serves faults (each as the
/// runtime's builder method of the same name; see `farmem_runtime::Config`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultOptions {
    /// Neighbours brought back with each spill-tier fault.
    pub prefetch: usize,
    /// The largest readahead window in pages (None: the runtime's default).
    pub readahead: Option<usize>,
    /// Fault handler threads (None: the runtime's default, one per CPU).
    pub fault_handlers: Option<usize>,
    /// Check every page that comes back.
    pub verify: bool,
    /// Who serves a fault: the handler threads, or the faulting thread.
    pub fault_mode: farmem_runtime::FaultMode,
}

/// Makes the tiers `tiers` names, starts a runtime over them that serves
/// faults as `options` says, and starts its policy when `policy` asks for
/// reclaim (a limit or a stall target). Shared with the LD_PRELOAD shim.
pub fn start_runtime(tiers: &TierSpec, policy: &PolicyConfig, options: FaultOptions) -> Result<Runtime, StartError> {
    let _scope = RuntimeScope::enter();
    // farmem's threads take no signal meant for the program: a handler run
    // on a fault handler could touch farmem memory, and a program that
    // blocks signals in its threads to take them in one (sigwait) expects
    // every thread to block them. Threads inherit the mask of the thread
    // that makes them.
    let _mask = SignalsBlocked::new();
    // Threads the tiers start (the file tier's compactor) stay in the
    // runtime's scope for life, so they never allocate from the program's
    // farmem arenas (hard rule 2).
    farmem_tiers::set_thread_hook(|| std::mem::forget(RuntimeScope::enter()));
    let tiers = tiers.build().map_err(|e| StartError::Tier { tier: e.tier, source: e.source })?;
    let mut builder = Runtime::builder().prefetch(options.prefetch).verify(options.verify).fault_mode(options.fault_mode);
    if let Some(pages) = options.readahead {
        builder = builder.readahead(pages);
    }
    if let Some(n) = options.fault_handlers {
        builder = builder.fault_handlers(n);
    }
    for t in tiers {
        builder = builder.tier(t);
    }
    let rt = builder.build()?;
    if policy.reclaims() {
        rt.start_policy(policy.clone())?;
    }
    Ok(rt)
}

/// All signals blocked on the calling thread until dropped, so that the
/// threads it starts meanwhile take none of the program's.
pub struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    /// Blocks every signal on this thread, keeping the old mask.
    pub fn new() -> Self {
        // SAFETY: sigfillset fills a set it was given; pthread_sigmask
        // changes the calling thread's mask and stores the old one.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            SignalsBlocked(old)
        }
    }
}

impl Default for SignalsBlocked {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// The process's runtime, once installed; never dropped.
static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// The jemalloc the farmem arenas belong to, and their set.
static TARGET: OnceLock<(MallctlFn, &'static ArenaSet)> = OnceLock::new();
/// Taken by the first `install` that gets under way.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// Registers the farmem arenas' fresh extents with `RUNTIME` until uninstall.
static BACKING: RuntimeBacking = RuntimeBacking::new(&RUNTIME);

/// Installs farmem into the jemalloc whose `mallctl` is given: creates the
/// farmem arenas there, starts the runtime and its policy, and activates `set`
/// so that whoever routes allocations through it binds program threads to
/// those arenas. [`install`](crate::install) is this for the `_rjem_` jemalloc
/// and the [`Jemalloc`](crate::Jemalloc) allocator.
///
/// # Safety
/// `mallctl` must be the `mallctl` of a live jemalloc 5.x, for the rest of the
/// process. Hard rule 2 is the caller's: no allocation the runtime makes
/// (through the Rust global allocator, on any thread, in
/// [`in_runtime`](farmem_runtime::in_runtime) scope) may be served from an
/// arena of `set`: the Rust global allocator must be another jemalloc, or
/// route `in_runtime()` allocations to an arena farmem never hooks.
pub unsafe fn install_into(config: &Config, mallctl: MallctlFn, set: &'static ArenaSet) -> Result<Guard, InstallError> {
    if CLAIMED.swap(true, Ordering::AcqRel) {
        return Err(InstallError::AlreadyInstalled);
    }
    // SAFETY: as the caller promised.
    let r = unsafe { start(config, mallctl, set) };
    if r.is_err() {
        // Nothing is running: a corrected configuration may try again.
        CLAIMED.store(false, Ordering::Release);
    }
    r
}

/// # Safety
/// As [`install_into`].
unsafe fn start(config: &Config, mallctl: MallctlFn, set: &'static ArenaSet) -> Result<Guard, InstallError> {
    // Everything made here (tiers, the region table, the hook tables) is the
    // runtime's own, whatever allocator serves it.
    let _scope = RuntimeScope::enter();
    if RUNTIME.get().is_some() {
        // A runtime left by an uninstall: its arenas and statics are spent.
        return Err(InstallError::AlreadyInstalled);
    }
    crate::sys::full_userfaultfd().map_err(InstallError::Userfaultfd)?;
    let count = config.arenas.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).clamp(1, MAX_ARENAS);
    // The arenas first: until the runtime is in place their extents stay
    // ordinary memory, and a failure below leaves only idle arenas behind.
    let mut arenas = Vec::with_capacity(count);
    for _ in 0..count {
        // SAFETY: mallctl is a live jemalloc's, as the caller promised.
        arenas.push(unsafe { extent::create_arena(mallctl, &BACKING) }?);
    }
    let rt = start_runtime(&config.tiers, &config.policy, config.fault_options()).map_err(|e| match e {
        StartError::Tier { tier, source } => InstallError::Tier { tier, source },
        StartError::Runtime(e) => InstallError::Runtime(e),
    })?;
    let _ = RUNTIME.set(rt);
    let _ = TARGET.set((mallctl, set));
    set.activate(&arenas);
    tracing::info!(?config, ?arenas, "farmem installed");
    Ok(Guard { _private: () })
}

/// Stops farmem: no more threads are bound or extents registered, the policy
/// stops, and every evicted page is brought back as its region is released.
/// Memory stays correct throughout; threads bound to farmem arenas keep them,
/// as ordinary memory from now on. Does nothing if farmem is not installed
/// (or was uninstalled already).
pub fn uninstall() {
    let (Some(rt), Some(&(_, set))) = (RUNTIME.get(), TARGET.get()) else { return };
    if !BACKING.disable() {
        return;
    }
    let _scope = RuntimeScope::enter();
    rt.stop_policy();
    // An extent registered while this runs may stay registered: the fault
    // thread keeps serving it (it is never evicted without the policy).
    for r in rt.stats().per_region {
        if let Err(e) = rt.unregister(r.start as *mut u8) {
            tracing::warn!("could not release region {:#x}+{:#x}: {e}", r.start, r.len);
        }
    }
    // Last: while the set is active the runtime's allocations above go to the
    // plain arena even on a thread bound to a farmem arena.
    set.deactivate();
}

/// The runtime, if farmem is installed in this process (for statistics).
pub fn runtime() -> Option<&'static Runtime> {
    RUNTIME.get()
}

/// Binds the calling thread to a farmem arena and returns the arena; for
/// threads whose allocations are not routed by [`Jemalloc`](crate::Jemalloc)
/// (a C program's threads). Fails if farmem is not installed or jemalloc refuses.
pub fn bind_current_thread() -> io::Result<u32> {
    let Some(&(mallctl, set)) = TARGET.get() else { return Err(io::Error::other("farmem is not installed")) };
    if !set.active() {
        return Err(io::Error::other("farmem was uninstalled"));
    }
    set.bind_current_thread(mallctl)
}

/// farmem, installed; dropping it (or [`Guard::uninstall`]) calls
/// [`uninstall`]. Use [`Guard::keep`] to keep farmem for the rest of the process.
#[must_use = "dropping the guard uninstalls farmem at once"]
pub struct Guard {
    _private: (),
}

impl Guard {
    /// The runtime's statistics now.
    pub fn stats(&self) -> Stats {
        let _scope = RuntimeScope::enter();
        self.runtime().stats()
    }

    /// The runtime.
    pub fn runtime(&self) -> &'static Runtime {
        RUNTIME.get().expect("a Guard exists only once the runtime is in place")
    }

    /// The farmem arenas' indices (for `arena.<i>.*` mallctls, `MALLOCX_ARENA`).
    pub fn arenas(&self) -> Vec<u32> {
        TARGET.get().map(|(_, set)| set.arenas()).unwrap_or_default()
    }

    /// Uninstalls farmem now (as dropping the guard does).
    pub fn uninstall(self) {}

    /// Keeps farmem installed for the rest of the process.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        uninstall();
    }
}
