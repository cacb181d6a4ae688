//! `libfarmem.so`: the LD_PRELOAD shim that brings an unmodified program's
//! heap under farmem.
//!
//! ```sh
//! # through the command line, which finds the library and sets the variables:
//! farmem run --limit 2G --tiers zstd:3 --stats /tmp/redis.json -- redis-server
//! # or by hand:
//! LD_PRELOAD=target/release/libfarmem.so FARMEM_LIMIT=2G redis-server
//! farmem stat "$(pidof redis-server)"
//! ```
//!
//! Loaded into a process, the shim reads the configuration in the environment
//! (see [`config`]) from its constructor, and starts the runtime once the
//! program has a heap worth managing ([`lazy`]): a shell or launcher that
//! only starts other programs never starts one. Then:
//!
//! - `malloc` and the rest of the family are jemalloc's ([`alloc`]), and so
//!   are C++'s `operator new` and `delete` ([`cxx`]); the
//!   program's threads allocate from arenas whose extents are registered
//!   with farmem as jemalloc maps them ([`extent`]), while everything the shim
//!   and the runtime allocate comes from an arena farmem never registers;
//! - large private anonymous `mmap`s are registered too, and `munmap` and
//!   `mremap` on them keep farmem's regions right ([`mmap`]);
//! - in signal mode, the calls that hand the kernel a buffer pin it first
//!   ([`kernel_io`]), and so do the waits on futex words in the heap
//!   ([`locks`]);
//! - `farmem stat PID` reads live statistics from a Unix socket ([`server`]),
//!   and `FARMEM_STATS=PATH` gets the final ones at exit ([`report`]) from
//!   one process: the first under the shim, or what it execs into (the pid
//!   stays; the variable stays in the environment, tagged with the pid in
//!   `FARMEM_STATS_PID`); never from a child it forks or spawns.
//!
//! A bad variable, or a kernel without userfaultfd, costs one line on stderr;
//! the program then runs on plain jemalloc, without farmem (hard rule 5).
//! `fork` is the runtime's business (evicted pages come back before the fork;
//! the child runs on ordinary memory); the child's shim stops registering and
//! never starts a runtime. `exec` starts a fresh shim in the new image, with
//! a runtime of its own (the same configuration, the limit included) once its
//! heap is worth one.

// Unit tests build without the constructor and the exported symbols.
#![cfg_attr(test, allow(dead_code))]
// The statistics report is one json! literal with more keys than the default limit expands.
#![recursion_limit = "256"]

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("libfarmem.so supports Linux on x86-64 only");

pub mod agent;
pub mod alloc;
pub mod config;
pub mod cxx;
pub mod guard;
pub mod kernel_io;
pub mod lazy;
pub mod locks;
pub mod mmap;
pub mod report;
pub mod server;
pub mod signals;
pub mod thread;

/// The extent hooks, shared with programs that link farmem (farmem-jemalloc).
pub use farmem_jemalloc::extent;
/// Raw syscalls that bypass the shim's own hooks.
pub use farmem_jemalloc::sys as syscall;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use farmem_runtime::{Runtime, RuntimeError, RuntimeScope};
use farmem_tiers::TierError;
use tikv_jemalloc_sys as je;

use config::{ConfigError, ShimConfig};

#[global_allocator]
static GLOBAL: farmem_jemalloc::PlainJemalloc = farmem_jemalloc::PlainJemalloc;

/// The process's runtime, once started; never dropped, so the fault handlers
/// serves until the process is gone, exit handlers included.
static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// The process that started the runtime (a forked child's copy is inert).
static OWNER_PID: AtomicU32 = AtomicU32::new(0);
/// When this image's shim was loaded.
static STARTED: OnceLock<Instant> = OnceLock::new();
/// Where this process writes its statistics at exit, if it owns them.
static STATS_PATH: OnceLock<PathBuf> = OnceLock::new();
/// The process that owns `STATS_PATH` (a forked child's copy does not write).
static STATS_OWNER: AtomicU32 = AtomicU32::new(0);
static SOCKET_PATH: OnceLock<PathBuf> = OnceLock::new();
static LIMIT: OnceLock<Option<u64>> = OnceLock::new();

/// Why the shim left the program without farmem.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A variable with a value the shim cannot use.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The runtime could not start (no userfaultfd, a kernel without the features).
    #[error("the runtime could not start: {0}")]
    Runtime(#[from] RuntimeError),
    /// Only a user-mode-only userfaultfd is allowed here.
    #[error("userfaultfd is not available for kernel accesses ({0}): needs root or CAP_SYS_PTRACE, vm.unprivileged_userfaultfd=1, or read-write access to /dev/userfaultfd")]
    Userfaultfd(std::io::Error),
    /// A tier could not be made.
    #[error("FARMEM_TIERS: the tier {tier} could not be made: {source}")]
    Tier {
        /// The tier, as the spec writes it.
        tier: String,
        /// What failed.
        source: TierError,
    },
    /// jemalloc refused the farmem arenas.
    #[error(transparent)]
    Arena(#[from] extent::ExtentError),
}

/// Notes jemalloc's fresh extents until the runtime runs, then hands them to it.
static BACKING: lazy::LazyBacking = lazy::LazyBacking;
/// The configuration, read by the constructor, for the runtime's start.
static CONFIG: OnceLock<ShimConfig> = OnceLock::new();

/// The constructor's part: reads the configuration, claims the statistics
/// file, makes and activates the farmem arenas, and leaves the runtime to
/// start when the heap is worth it ([`lazy`]).
fn configure() -> Result<(), StartError> {
    let cfg = ShimConfig::from_env()?;
    let filter = match &cfg.log {
        Some(f) => tracing_subscriber::EnvFilter::try_new(f).map_err(|e| ConfigError {
            var: "FARMEM_LOG",
            value: f.clone(),
            reason: format!("not a tracing filter ({e}): write e.g. info or farmem_runtime=debug"),
        })?,
        None => tracing_subscriber::EnvFilter::new("warn"),
    };
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    // A probe (opened and closed): a process that cannot have farmem is told
    // so from the start, and once per process tree.
    syscall::full_userfaultfd().map_err(StartError::Userfaultfd)?;
    claim_stats(&cfg);
    let _ = LIMIT.set(cfg.policy.limit);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, alloc::MAX_ARENAS);
    let mut arenas = Vec::with_capacity(cpus);
    for _ in 0..cpus {
        // SAFETY: je::mallctl is the mallctl of the jemalloc linked into the shim.
        arenas.push(unsafe { extent::create_arena(je::mallctl, &BACKING) }?);
    }
    // SAFETY: a plain extern "C" function that lives as long as the program.
    unsafe {
        libc::pthread_atfork(None, None, Some(after_fork_child));
        libc::atexit(at_exit);
    }
    let start_at = cfg.start_at.min(cfg.policy.limit.map_or(u64::MAX, |l| l / 2));
    if cfg.fault_mode == farmem_runtime::FaultMode::Signal {
        // Before main, and before any thread of the program's: no stream
        // has done I/O yet, and no thread has blocked SIGBUS.
        signals::keep_sigbus();
        kernel_io::plain_stdio();
    }
    lazy::arm(start_at, cfg.policy.limit.is_some() || cfg.agent.is_some());
    mmap::watch(cfg.mmap_min);
    alloc::activate(&arenas);
    tracing::debug!(start_at, ?arenas, "farmem waiting for a heap to manage");
    let _ = CONFIG.set(cfg);
    Ok(())
}

/// The process's runtime, if it runs.
pub(crate) fn runtime() -> Option<&'static Runtime> {
    RUNTIME.get()
}

/// Starts the runtime, its statistics socket and the mmap hook's
/// registration ([`lazy`] calls it once, from a program thread that holds
/// no lock of jemalloc's).
pub(crate) fn start_runtime() -> Result<&'static Runtime, StartError> {
    let _g = guard::enter_owned();
    let cfg = CONFIG.get().expect("configured before any start");
    // The shim's own threads (statistics, evict-every) block every signal,
    // as the runtime's do (see `farmem_jemalloc::start_runtime`): they
    // inherit the mask of whichever program thread crossed the start size.
    let _mask = farmem_jemalloc::SignalsBlocked::new();
    let options = farmem_jemalloc::FaultOptions { prefetch: cfg.prefetch, readahead: cfg.readahead, fault_handlers: cfg.fault_handlers, verify: cfg.verify, fault_mode: cfg.fault_mode };
    let rt = farmem_jemalloc::start_runtime(&cfg.tiers, &cfg.policy, options).map_err(|e| match e {
        farmem_jemalloc::StartError::Tier { tier, source } => StartError::Tier { tier, source },
        farmem_jemalloc::StartError::Runtime(e) => StartError::Runtime(e),
    })?;
    let rt: &'static Runtime = RUNTIME.get_or_init(|| rt);
    if cfg.fault_mode == farmem_runtime::FaultMode::Signal {
        kernel_io::start();
    }
    OWNER_PID.store(std::process::id(), Ordering::Relaxed);
    if let Some(every) = cfg.evict_every {
        let _ = std::thread::Builder::new().name("farmem-evict".into()).spawn(move || {
            let _scope = RuntimeScope::enter();
            evict_every(rt, every)
        });
    }
    match server::bind(std::process::id()) {
        Ok((listener, path)) => {
            let _ = SOCKET_PATH.set(path);
            let _ = std::thread::Builder::new().name("farmem-stats".into()).spawn(move || {
                let _scope = RuntimeScope::enter();
                server::serve(listener, snapshot, agent::order)
            });
        }
        Err(e) => tracing::warn!("farmem stat will not reach this process: {e}"),
    }
    mmap::start(rt, cfg.mmap_min);
    agent::control(rt, cfg.policy.clone());
    if let (Some(socket), Some(stats)) = (&cfg.agent, SOCKET_PATH.get()) {
        agent::join(rt, socket.clone(), stats.clone(), cfg.label.clone(), cfg.policy.clone());
    } else if cfg.agent.is_some() {
        tracing::warn!("FARMEM_AGENT is set, but this process serves no statistics socket for the agent to read: it does not join");
    }
    tracing::info!(?cfg, arenas = ?alloc::arenas(), after_seconds = STARTED.get().map_or(0.0, |t| t.elapsed().as_secs_f64()), "farmem started");
    Ok(rt)
}

/// The runtime could not start: the program goes on without farmem. One
/// line, unless a process of the tree said why already (this one cannot
/// mark the environment: other threads may be reading it).
pub(crate) fn start_failed(e: &StartError) {
    if std::env::var_os(REPORTED).is_none() {
        eprintln!("farmem: {e}; running without farmem");
    }
    mmap::stop();
    alloc::deactivate();
    // farmem was off: no statistics, as for a bad variable.
    STATS_OWNER.store(0, Ordering::Relaxed);
}

/// Takes the statistics file if this process owns it: the first process
/// under the shim that finds `FARMEM_STATS` claims it, and leaves its pid in
/// the environment for what it starts. An image it execs into keeps the
/// pid, so the statistics are written by whatever program `farmem run`'s
/// child ends up being (a launcher script exec'd python: python writes);
/// a process it forks or spawns has another pid and writes nothing. Called
/// from the constructor, before any thread of the shim starts: setenv is not
/// thread-safe.
fn claim_stats(cfg: &ShimConfig) {
    let pid = std::process::id();
    let Some(path) = cfg.stats_path.as_ref().filter(|_| cfg.owns_stats(pid)) else { return };
    let _ = STATS_PATH.set(path.clone());
    STATS_OWNER.store(pid, Ordering::Relaxed);
    if cfg.stats_owner.is_none() {
        std::env::set_var(config::STATS_OWNER_VAR, pid.to_string());
    }
}

fn snapshot() -> String {
    let started = STARTED.get().copied().unwrap_or_else(Instant::now);
    report::snapshot(RUNTIME.get(), started, agent::limit(LIMIT.get().copied().flatten()), mmap::regions()).to_string()
}

/// Testing aid (`FARMEM_EVICT_EVERY`): evicts every registered page, again and
/// again, so that tests see faults without the policy.
fn evict_every(rt: &Runtime, every: std::time::Duration) {
    loop {
        std::thread::sleep(every);
        for r in rt.stats().per_region {
            if r.resident_pages > 0 {
                // A region that went away in between is not an error here.
                let _ = rt.evict(r.start as *mut u8, r.len as usize);
            }
        }
    }
}

extern "C" fn after_fork_child() {
    // A forked child runs on ordinary memory, and never starts a runtime.
    lazy::disable();
    mmap::stop();
}

extern "C" fn at_exit() {
    let _g = guard::enter_owned();
    let _scope = RuntimeScope::enter();
    let pid = std::process::id();
    if pid == OWNER_PID.load(Ordering::Relaxed) {
        if let Some(p) = SOCKET_PATH.get() {
            let _ = std::fs::remove_file(p);
        }
    }
    if pid != STATS_OWNER.load(Ordering::Relaxed) {
        return;
    }
    if let Some(p) = STATS_PATH.get() {
        if let Err(e) = std::fs::write(p, snapshot() + "\n") {
            eprintln!("farmem: FARMEM_STATS: cannot write {}: {e}", p.display());
        }
    }
}

/// The constructor: runs once, before `main`, when the library is loaded.
extern "C" fn init() {
    let _g = guard::enter_owned();
    // jemalloc sets itself up (and registers its fork handlers) before the
    // runtime does, so the runtime's fork handler runs first and jemalloc's
    // locks are taken only after evicted pages are back.
    // SAFETY: a one-byte allocation freed at once.
    unsafe { je::free(je::malloc(1)) };
    if let Err(e) = thread::resolve() {
        // Without libc's pthread_create no thread could start: say so loudly.
        eprintln!("farmem: {e}; threads cannot be created in this process");
        return;
    }
    let _ = STARTED.set(Instant::now());
    if let Err(e) = configure() {
        // One line per process tree: the children of a shell or launcher
        // inherit both the bad value and this mark.
        if std::env::var_os(REPORTED).is_none() {
            eprintln!("farmem: {e}; running without farmem");
            // SAFETY: constructors run before main, with one thread: nothing
            // reads the environment meanwhile.
            unsafe { libc::setenv(REPORTED_C.as_ptr(), c"1".as_ptr(), 1) };
        }
    }
}

/// Set in the environment once a process has said why farmem is off, so
/// that the processes it starts do not say it again.
const REPORTED: &str = "FARMEM_OFF_REPORTED";
const REPORTED_C: &std::ffi::CStr = c"FARMEM_OFF_REPORTED";

#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;
