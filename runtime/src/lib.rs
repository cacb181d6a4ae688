//! farmem's runtime: registered regions, the userfaultfd fault engine,
//! eviction into tiers, and statistics.
//!
//! A [`Runtime`] owns a userfaultfd and the thread that serves its faults.
//! Register a range of private anonymous memory, evict pages of it, and touch
//! them again: each page comes back byte for byte the moment any thread reads or
//! writes it.
//!
//! ```no_run
//! use farmem_runtime::Runtime;
//!
//! let rt = Runtime::builder().build().expect("userfaultfd available");
//! let len = 64 << 20;
//! // SAFETY: a fresh private anonymous mapping.
//! let p = unsafe {
//!     libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE,
//!                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
//! } as *mut u8;
//! rt.register(p, len).unwrap();
//! // SAFETY: the mapping is ours and `len` bytes long.
//! unsafe { std::ptr::write_bytes(p, 7, len) };
//! let report = rt.evict(p, len).unwrap();
//! assert_eq!(report.evicted, (len / 4096) as u64);
//! // SAFETY: as above; the read faults the page back in.
//! assert_eq!(unsafe { *p.add(12345) }, 7);
//! println!("{:?}", rt.stats());
//! ```
//!
//! Hard rules kept here (see DESIGN.md): a page a tier cannot return is poisoned
//! (SIGBUS), never zero-filled; the runtime's memory is its own mappings or
//! allocations made inside a [`RuntimeScope`]; `munmap`/`madvise`/`mremap` by the
//! program drop or move farmem's copies in the kernel's order of events.
//!
//! `fork` gives the child all of the parent's memory: evicted pages are brought
//! back before the fork (see the `fork` module), and the child's copy of the
//! runtime is inert. Not yet done: write-protect based dirty tracking (an
//! evicted page's tier copy is dropped when it faults back).

pub mod cpus;
mod error;
mod evict;
mod fatal;
mod fault;
mod fork;
mod gate;
pub mod pagemap;
mod pagestate;
mod pins;
pub mod policy;
mod readahead;
mod region;
mod scope;
mod signal;
mod stats;
pub mod uffd;
mod verify;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use farmem_tiers::{CompressedConfig, CompressedTier, RawTier, Tier};

pub use error::RuntimeError;
pub use evict::{DemoteReport, EvictReport};
pub use farmem_tiers::mem;
pub use scope::{enter_hook_owned, in_runtime, this_thread, with_thread, HookGuard, OwnedHookGuard, RuntimeScope, ThreadScope};
pub use pins::{in_farmem, Pinned};
pub use signal::{parse_fault_mode, program_action, serving_fault, FaultMode};
pub use stats::{AtomicHistogram, RegionStats, Stats};

use evict::{Staging, Target};
use fault::{Completion, FaultHandler, Request, Requests, Turns};
use region::{Region, RegionTable};
use stats::Counters;
use uffd::{feature, mode, Userfaultfd};

/// The size of a page.
pub const PAGE_SIZE: usize = 4096;

/// The most pages a spill-tier fault brings back beside its own ([`Config::prefetch`]).
pub const MAX_PREFETCH: usize = 64;

/// Readahead's largest window by default ([`Config::readahead`]).
pub const DEFAULT_READAHEAD: usize = 32;

/// Parses a readahead window as the command line and the environment write
/// it: a number of pages from 0 (off) to [`MAX_PREFETCH`].
pub fn parse_readahead(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n <= MAX_PREFETCH => Ok(n),
        _ => Err(format!("write a number of pages from 0 (off) to {MAX_PREFETCH} (the most pages brought back ahead of a program reading evicted memory in order)")),
    }
}

/// Parses a number of fault handlers as the command line and the environment
/// write it: 0 (one per CPU the process may run on, the default) to
/// [`MAX_FAULT_HANDLERS`].
pub fn parse_fault_handlers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n <= MAX_FAULT_HANDLERS => Ok(n),
        _ => Err(format!("write a number of fault handler threads from 0 (one per CPU, pinned) to {MAX_FAULT_HANDLERS}; 1 is one unpinned handler")),
    }
}

/// Parses a prefetch depth as the command line and the environment write it:
/// a number of pages from 0 to [`MAX_PREFETCH`].
pub fn parse_prefetch(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n <= MAX_PREFETCH => Ok(n),
        _ => Err(format!("write a number of pages from 0 to {MAX_PREFETCH} (pages after a spill-tier fault brought back with it)")),
    }
}

/// How the runtime is set up. Build it with [`Runtime::builder`].
#[derive(Clone)]
pub struct Config {
    /// The tiers, fastest first; eviction stores into the first with room.
    pub tiers: Vec<Arc<dyn Tier>>,
    /// Pages evicted per batch (the staging area's size).
    pub batch_pages: usize,
    /// Pages zero-filled per fault on never-evicted memory, the faulting page included.
    pub zero_fill_batch: usize,
    /// How long a fault handler keeps polling after its last message before it
    /// sleeps in poll(2). Spinning saves the wake-up of a sleeping fault handler
    /// (an isolated fault here: 12 µs with a 50 µs spin, 18 µs without), but
    /// only where a core is idle: beside a busy program it takes the core the
    /// program needs. On 2 vCPUs a 50 µs spin cost Redis 12-15% of its GETs
    /// and the kv workloads 5-10%, so the default is 0. It never spins while
    /// an eviction runs or within a millisecond of one.
    pub spin: Duration,
    /// Pages after a faulting page brought back with it when it comes from a
    /// spill tier (not T1 or the sampler's), as long as they sit in the same
    /// tier: pages demoted together lie together in the spill file, and all
    /// their reads are in flight at once. 0 (the default) turns it off.
    pub prefetch: usize,
    /// The most pages brought back ahead of a program whose faults come in
    /// order, from any tier but the sampler's (the `readahead` module): the window
    /// starts at 4 on the second fault in a row and doubles up to this.
    /// 0 turns it off.
    pub readahead: usize,
    /// Verification mode: a checksum of every page out of RAM, compared when
    /// it comes back; a mismatch aborts the process with one line saying
    /// which page (see the `verify` module). For tests and bug hunts.
    pub verify: bool,
    /// Fault handler threads. 0 (the default): one per CPU the process may
    /// run on, each pinned to its CPU, so that a fault is served on the CPU
    /// where it happened. 1: one handler, not pinned. More: pinned to the
    /// allowed CPUs in turn.
    pub fault_handlers: usize,
    /// How faults are served: by the handler threads (the default) or by the
    /// faulting thread itself (see the `signal` module and its catch).
    pub fault_mode: FaultMode,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("tiers", &self.tiers.iter().map(|t| t.name().to_string()).collect::<Vec<_>>())
            .field("batch_pages", &self.batch_pages)
            .field("zero_fill_batch", &self.zero_fill_batch)
            .field("spin", &self.spin)
            .field("prefetch", &self.prefetch)
            .field("readahead", &self.readahead)
            .field("verify", &self.verify)
            .field("fault_handlers", &self.fault_handlers)
            .field("fault_mode", &self.fault_mode)
            .finish()
    }
}

/// Builds a [`Runtime`].
#[derive(Default)]
pub struct RuntimeBuilder {
    tiers: Vec<Arc<dyn Tier>>,
    batch_pages: Option<usize>,
    zero_fill_batch: Option<usize>,
    spin: Option<Duration>,
    prefetch: usize,
    readahead: Option<usize>,
    verify: bool,
    fault_handlers: usize,
    fault_mode: FaultMode,
}

impl RuntimeBuilder {
    /// Adds a tier after those already given. Without any, the runtime uses a
    /// [`CompressedTier`] with its default config: lz4, and zstd:1 for pages
    /// lz4 leaves above its threshold (`lz4+zstd:1`).
    pub fn tier(mut self, tier: Arc<dyn Tier>) -> Self {
        self.tiers.push(tier);
        self
    }

    /// Pages per eviction batch (default 256, i.e. 1 MiB).
    pub fn batch_pages(mut self, pages: usize) -> Self {
        self.batch_pages = Some(pages.max(1));
        self
    }

    /// Pages zero-filled per fault on never-evicted memory (default 8, at most 16).
    pub fn zero_fill_batch(mut self, pages: usize) -> Self {
        self.zero_fill_batch = Some(pages.clamp(1, fault::MAX_ZERO_BATCH));
        self
    }

    /// How long each fault handler spins before sleeping (default 0: see [`Config::spin`]).
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = Some(spin);
        self
    }

    /// Pages after a page faulted back from a spill tier to bring back with it
    /// (default 0, at most 64): see [`Config::prefetch`].
    pub fn prefetch(mut self, pages: usize) -> Self {
        self.prefetch = pages.min(MAX_PREFETCH);
        self
    }

    /// The largest readahead window, in pages (default 32, at most 64, 0
    /// off): see [`Config::readahead`].
    pub fn readahead(mut self, pages: usize) -> Self {
        self.readahead = Some(pages.min(MAX_PREFETCH));
        self
    }

    /// Verification mode (default off): see [`Config::verify`].
    pub fn verify(mut self, on: bool) -> Self {
        self.verify = on;
        self
    }

    /// Fault handler threads (default 0: one per allowed CPU, pinned; at
    /// most [`MAX_FAULT_HANDLERS`]): see [`Config::fault_handlers`].
    pub fn fault_handlers(mut self, n: usize) -> Self {
        self.fault_handlers = n.min(MAX_FAULT_HANDLERS);
        self
    }

    /// How faults are served (default [`FaultMode::Thread`]): see [`Config::fault_mode`].
    /// In [`FaultMode::Signal`] the program must not hand registered memory
    /// to the kernel before touching it: such a system call fails with EFAULT.
    pub fn fault_mode(mut self, mode: FaultMode) -> Self {
        self.fault_mode = mode;
        self
    }

    /// Opens the userfaultfd, checks the kernel's features, and starts the fault handlers.
    pub fn build(self) -> Result<Runtime, RuntimeError> {
        let _scope = RuntimeScope::enter();
        let mut tiers = self.tiers;
        if tiers.is_empty() {
            let t1 = CompressedTier::new(CompressedConfig::default())
                .map_err(|e| RuntimeError::Os { op: "creating the compressed tier", source: std::io::Error::other(e.to_string()) })?;
            tiers.push(Arc::new(t1));
        }
        if tiers.len() > 15 {
            return Err(RuntimeError::Os { op: "configuring tiers", source: std::io::Error::other("at most 15 tiers") });
        }
        let config = Config {
            tiers: tiers.clone(),
            batch_pages: self.batch_pages.unwrap_or(256),
            zero_fill_batch: self.zero_fill_batch.unwrap_or(8),
            spin: self.spin.unwrap_or(fault::DEFAULT_SPIN),
            prefetch: self.prefetch,
            readahead: self.readahead.unwrap_or(DEFAULT_READAHEAD),
            verify: self.verify,
            fault_handlers: self.fault_handlers,
            fault_mode: self.fault_mode,
        };
        let signal = if config.fault_mode == FaultMode::Signal { feature::SIGBUS } else { 0 };
        let required = feature::MOVE | feature::POISON | feature::EVENT_REMOVE | feature::EVENT_UNMAP | feature::EVENT_REMAP | signal;
        // Async write-protect is wanted, not required: without it the policy
        // sees accesses through faults alone.
        let uffd = Userfaultfd::open(required | feature::WP_ASYNC | feature::WP_UNPOPULATED, required)?;
        let pagemap = if uffd.has(feature::WP_ASYNC) { pagemap::PageMap::open().ok().filter(|p| p.supported().unwrap_or(false)) } else { None };
        let staging_uffd = Userfaultfd::open(feature::MOVE, feature::MOVE)?;
        let staging = Staging::new(config.batch_pages).map_err(|source| RuntimeError::Os { op: "mapping the staging area", source })?;
        staging_uffd.register(staging.base(), staging.len(), mode::WP).map_err(|source| RuntimeError::Register {
            addr: staging.base(),
            len: staging.len(),
            source,
        })?;
        // The sampler's raw tier, after the configured ones. Address space only:
        // the policy keeps what it holds to a share of the registered memory.
        let sample = RawTier::named("sampled", SAMPLE_TIER_SPACE)
            .map_err(|e| RuntimeError::Os { op: "mapping the sampler's tier", source: std::io::Error::other(e.to_string()) })?;
        let sample_tier = tiers.len() as u8;
        let mut all_tiers = tiers;
        all_tiers.push(Arc::new(sample));
        let shared = Arc::new(Shared {
            uffd,
            pagemap,
            staging_uffd,
            staging,
            regions: RegionTable::default(),
            tiers: all_tiers,
            sample_tier,
            tick: AtomicU32::new(0),
            limit_pages: AtomicU64::new(0),
            limit_request: AtomicU64::new(0),
            reclaim_short: AtomicBool::new(false),
            resident_est: std::sync::atomic::AtomicI64::new(0),
            policy_bell: policy::Bell::default(),
            counters: Counters::default(),
            requests: Requests::new().map_err(|source| RuntimeError::Os { op: "eventfd", source })?,
            stopping: AtomicBool::new(false),
            owner_pid: std::process::id(),
            fork_gate: fork::ForkGate::default(),
            evict_quiet_since_us: AtomicU64::new(1),
            epoch: std::time::Instant::now(),
            turns: Turns::new(config.readahead),
            removals: signal::Removals::new(),
            config,
        });
        let signal = match shared.config.fault_mode {
            FaultMode::Signal => Some(signal::attach(&shared)?),
            FaultMode::Thread => None,
        };
        let fault_threads = start_fault_handlers(&shared)?;
        fork::track(&shared);
        tracing::debug!(features = format_args!("{:#x}", shared.uffd.features()), "farmem runtime started");
        Ok(Runtime { shared, fault_threads, policy: Mutex::new(None), signal })
    }
}

/// Pages of `[start, start+len)` in RAM, by mincore in 64 MiB steps (0 if unmapped).
fn resident_pages(start: u64, len: u64) -> u64 {
    const STEP: u64 = 64 << 20;
    let mut vec = vec![0u8; (STEP / PAGE_SIZE as u64) as usize];
    let mut n = 0;
    let mut at = start;
    while at < start + len {
        let l = STEP.min(start + len - at);
        let pages = (l / PAGE_SIZE as u64) as usize;
        // SAFETY: mincore reads page tables for the range and writes one byte per page into `vec`.
        if unsafe { libc::mincore(at as *mut libc::c_void, l as usize, vec.as_mut_ptr()) } == 0 {
            n += vec[..pages].iter().filter(|&&b| b & 1 != 0).count() as u64;
        }
        at += l;
    }
    n
}

/// Whether the page at `addr` is mapped at all (mincore says ENOMEM if not).
fn is_mapped(addr: u64) -> bool {
    let mut v = 0u8;
    // SAFETY: mincore only reads the page tables for one page and writes one byte.
    unsafe { libc::mincore(addr as *mut libc::c_void, PAGE_SIZE, &mut v) == 0 }
}

/// Whether the page at `addr` is in the page tables (false if unmapped).
fn is_present(addr: u64) -> bool {
    let mut v = 0u8;
    // SAFETY: mincore reads the page tables for one page and writes one byte.
    unsafe { libc::mincore(addr as *mut libc::c_void, PAGE_SIZE, &mut v) == 0 && v & 1 != 0 }
}

/// Names the calling thread for ps and debuggers, without allocating.
/// The most fault handler threads a runtime starts.
pub const MAX_FAULT_HANDLERS: usize = 64;

/// Starts the fault handlers `shared.config.fault_handlers` asks for (see
/// [`Config::fault_handlers`]).
fn start_fault_handlers(shared: &Arc<Shared>) -> Result<Vec<JoinHandle<()>>, RuntimeError> {
    let cpus = cpus::allowed().unwrap_or_else(|e| {
        tracing::warn!("cannot read the CPUs this process may run on: {e}; one fault handler, not pinned");
        Vec::new()
    });
    let n = match shared.config.fault_handlers {
        0 => cpus.len().clamp(1, MAX_FAULT_HANDLERS),
        n => n,
    };
    let pinned = n > 1 && !cpus.is_empty();
    shared.turns.set_handlers(n);
    let mut threads = Vec::with_capacity(n);
    for k in 0..n {
        let cpu = pinned.then(|| cpus[k % cpus.len()]);
        let thread_shared = Arc::clone(shared);
        // Made here, inside the runtime's scope: see below.
        let name = std::ffi::CString::new(format!("farmem-fault-{k}")).expect("no NUL in a thread name");
        // Unnamed for std: a std thread name is copied into a fresh allocation as
        // the thread starts, before it can enter the runtime's scope, and so could
        // land in registered memory. The kernel's name is set from inside instead.
        let t = std::thread::Builder::new()
            .spawn(move || {
                let _scope = RuntimeScope::enter();
                set_thread_name(&name);
                if let Some(cpu) = cpu {
                    if let Err(e) = cpus::pin(cpu) {
                        tracing::warn!("cannot pin fault handler {k} to CPU {cpu}: {e}; it runs unpinned");
                    }
                }
                let stopping = Arc::clone(&thread_shared);
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| FaultHandler::new(thread_shared).run()));
                if r.is_err() || !stopping.stopping.load(Ordering::Acquire) {
                    // Without its fault handlers, later faults on farmem memory
                    // could wait forever: a clear end beats a silent hang.
                    let why = match &r {
                        Err(payload) => fatal::panic_message(payload.as_ref()),
                        Ok(()) => "it returned",
                    };
                    fatal::abort_with(format_args!("farmem: fault handler {k} stopped unexpectedly ({why}); aborting rather than leaving the program's threads blocked on their memory"));
                }
            })
            .map_err(|source| RuntimeError::Os { op: "starting a fault handler thread", source });
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop_fault_handlers(shared, threads);
                return Err(e);
            }
        }
    }
    Ok(threads)
}

/// Stops the fault handlers and waits for them. The eventfd is kicked until
/// every one is gone: a handler that was about to sleep when `stopping` was
/// set may have missed the first kick.
fn stop_fault_handlers(shared: &Shared, threads: Vec<JoinHandle<()>>) {
    shared.stopping.store(true, Ordering::Release);
    while threads.iter().any(|t| !t.is_finished()) {
        shared.requests.kick();
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    for t in threads {
        let _ = t.join();
    }
}

fn set_thread_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// What the fault handlers and the callers share.
pub(crate) struct Shared {
    uffd: Userfaultfd,
    /// /proc/self/pagemap, when the kernel has PAGEMAP_SCAN and the userfaultfd
    /// async write-protect: regions are then registered for write-protect
    /// too, and the policy can track written pages.
    pagemap: Option<pagemap::PageMap>,
    staging_uffd: Userfaultfd,
    staging: Staging,
    regions: RegionTable,
    /// The configured tiers, then the sampler's raw tier.
    tiers: Vec<Arc<dyn Tier>>,
    /// The index of the sampler's tier in `tiers`.
    sample_tier: u8,
    /// The policy's clock: ticks since start (see `policy::ages`).
    tick: AtomicU32,
    /// The policy's limit in pages (0: none), for the fault handlers' throttle.
    limit_pages: AtomicU64,
    /// A new limit in bytes for a policy running in limit mode, taken by
    /// the policy thread at its next look (0: none asked).
    limit_request: AtomicU64,
    /// Resident pages as the policy last measured them, plus the pages the
    /// fault handlers installed and less those reclaimed since: the throttle's
    /// view, kept current even when the policy thread gets no CPU.
    resident_est: std::sync::atomic::AtomicI64,
    /// The last reclaim under the limit came up short with nothing else it
    /// could take: the fault handlers' throttle would only slow the program.
    reclaim_short: AtomicBool,
    /// Wakes the policy thread (to reclaim at once when the limit is crossed).
    policy_bell: policy::Bell,
    counters: Counters,
    requests: Requests,
    stopping: AtomicBool,
    /// The process the runtime belongs to; a forked child's copy is inert.
    owner_pid: u32,
    /// Holds eviction off across a fork.
    fork_gate: fork::ForkGate,
    /// When the last eviction batch ended (or 0 while one runs), in
    /// microseconds since `epoch`: the fault handlers do not spin near one.
    evict_quiet_since_us: AtomicU64,
    epoch: std::time::Instant,
    /// How the fault handlers take turns.
    turns: Turns,
    /// Tier copies the SIGBUS handler of signal mode left for the handler threads to free.
    removals: signal::Removals,
    config: Config,
}

impl Shared {
    /// How regions are registered: for missing faults, and for async
    /// write-protect when written pages can be tracked. Write-protect costs
    /// nothing until a scan protects a page.
    fn register_mode(&self) -> u64 {
        mode::MISSING | if self.pagemap.is_some() { mode::WP } else { 0 }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }
}

/// The far-memory runtime of one process: regions, the fault handlers, the tiers.
///
/// Dropping it brings every evicted page back, unregisters every region and
/// stops the fault handlers.
pub struct Runtime {
    shared: Arc<Shared>,
    fault_threads: Vec<JoinHandle<()>>,
    policy: Mutex<Option<policy::PolicyHandle>>,
    /// In signal mode, its place in the SIGBUS handler's table.
    signal: Option<signal::Attached>,
}

/// Address space reserved for the sampler's raw tier.
const SAMPLE_TIER_SPACE: u64 = 64 << 30;

fn check_aligned(addr: u64, len: u64) -> Result<(), RuntimeError> {
    if !addr.is_multiple_of(PAGE_SIZE as u64) || !len.is_multiple_of(PAGE_SIZE as u64) || len == 0 {
        return Err(RuntimeError::NotAligned { addr, len });
    }
    Ok(())
}

impl Runtime {
    /// A builder with the defaults: one `lz4+zstd:1` compressed tier, 1 MiB batches.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// Fails in a forked child, whose copy of the runtime has no fault handlers.
    fn check_process(&self) -> Result<(), RuntimeError> {
        if std::process::id() != self.shared.owner_pid {
            return Err(RuntimeError::Forked);
        }
        Ok(())
    }

    /// The userfaultfd features the kernel granted.
    pub fn features(&self) -> u64 {
        self.shared.uffd.features()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Brings `[addr, addr+len)` under farmem. It must be private anonymous
    /// memory, mapped and writable, page-aligned, and not overlap a region.
    pub fn register(&self, addr: *mut u8, len: usize) -> Result<(), RuntimeError> {
        let _scope = RuntimeScope::enter();
        let region = self.track(addr, len)?;
        let (a, l) = (region.start(), region.len());
        if let Err(source) = self.shared.uffd.register(a, l, self.shared.register_mode()) {
            self.shared.regions.remove(&region);
            return Err(RuntimeError::Register { addr: a, len: l, source });
        }
        region.armed.store(true, Ordering::Release);
        Ok(())
    }

    /// As [`Runtime::register`], but the range is registered with the
    /// userfaultfd only when farmem first takes a page of it out of RAM (for
    /// eviction or sampling): until then the program's first touches of it are
    /// ordinary page faults, so memory that never goes cold costs nothing.
    ///
    /// While a policy with a limit runs, the range is armed at once instead:
    /// the first touches of a fast fill must reach the fault handlers, which
    /// counts them and asks for reclaim as the limit is crossed; a range no
    /// fault thread sees would only be caught by the next check.
    ///
    /// The caller promises that the range is neither unmapped nor moved
    /// (munmap, mremap) without [`Runtime::unregister`] first: until the range
    /// is armed, the kernel reports nothing the program does to it. Dropping
    /// pages (MADV_DONTNEED) is fine. jemalloc extents whose `dalloc` is
    /// refused keep this promise.
    pub fn register_lazy(&self, addr: *mut u8, len: usize) -> Result<(), RuntimeError> {
        let _scope = RuntimeScope::enter();
        let region = self.track(addr, len)?;
        if self.shared.limit_pages.load(Ordering::Relaxed) > 0 {
            // The evictor arms lazy regions under the same lock.
            let _batch = region.evict_lock.lock().unwrap_or_else(|e| e.into_inner());
            if !region.armed.load(Ordering::Acquire) {
                match self.shared.uffd.register(region.start(), region.len(), self.shared.register_mode()) {
                    Ok(()) => region.armed.store(true, Ordering::Release),
                    // It stays lazy: armed when its first page is taken out.
                    Err(e) => tracing::debug!("arming region {:#x}+{:#x} at once failed: {e}", region.start(), region.len()),
                }
            }
        }
        Ok(())
    }

    /// Adds a region for `[addr, addr+len)` to the table, not yet armed.
    fn track(&self, addr: *mut u8, len: usize) -> Result<Arc<Region>, RuntimeError> {
        self.check_process()?;
        let (a, l) = (addr as u64, len as u64);
        check_aligned(a, l)?;
        let region =
            Arc::new(Region::new(a, l, self.shared.tick.load(Ordering::Relaxed), self.shared.config.verify).map_err(|source| RuntimeError::Os { op: "mapping page states", source })?);
        if !self.shared.regions.insert(Arc::clone(&region)) {
            return Err(RuntimeError::Overlap { addr: a, len: l });
        }
        Ok(region)
    }

    /// The program is about to unmap the whole region that starts at `addr`
    /// (or replace it with a new mapping). From the return on, no eviction
    /// touches the region: the batch in flight, if any, has finished. That
    /// matters because UFFDIO_MOVE takes whatever page is at an address: a
    /// batch claimed before the unmap and moving after it would carry off a
    /// page of the mapping made there next, which no fault could bring back.
    /// The kernel's UNMAP event then forgets the region's copies; a region
    /// the kernel was never told of (lazy, unarmed) leaves the table here.
    /// Returns false if no region starts at `addr`. If the unmap fails, call
    /// [`Runtime::reopen`].
    pub fn retire(&self, addr: *mut u8) -> bool {
        let _scope = RuntimeScope::enter();
        let a = addr as u64;
        let Some(region) = self.shared.regions.find(a).filter(|r| r.start() == a) else {
            return false;
        };
        let _batch = region.evict_lock.lock().unwrap_or_else(|e| e.into_inner());
        region.closed.store(true, Ordering::Release);
        if !region.armed.load(Ordering::Acquire) {
            self.shared.regions.remove(&region);
        }
        true
    }

    /// Undoes [`Runtime::retire`] after an unmap that failed: the region is
    /// still mapped, and evictions may take its pages again.
    pub fn reopen(&self, addr: *mut u8) {
        let _scope = RuntimeScope::enter();
        let a = addr as u64;
        if let Some(region) = self.shared.regions.find(a).filter(|r| r.start() == a) {
            region.closed.store(false, Ordering::Release);
        }
    }

    /// Brings every evicted page of the region that starts at `addr` back into
    /// RAM, then releases the region from farmem.
    pub fn unregister(&self, addr: *mut u8) -> Result<(), RuntimeError> {
        let _scope = RuntimeScope::enter();
        self.check_process()?;
        let a = addr as u64;
        let region = self.shared.regions.find(a).filter(|r| r.start() == a).ok_or(RuntimeError::NotRegistered { addr: a, len: 0 })?;
        self.unregister_region(region)
    }

    fn unregister_region(&self, region: Arc<Region>) -> Result<(), RuntimeError> {
        if self.fault_threads.is_empty() || self.fault_threads.iter().any(|t| t.is_finished()) {
            return Err(RuntimeError::Stopped);
        }
        let (addr, len) = (region.start(), region.len());
        let done = Arc::new(Completion::default());
        self.shared.requests.push(Request::Unregister { region, done: Arc::clone(&done) });
        done.wait().map_err(|source| RuntimeError::Register { addr, len, source })
    }

    /// Takes the resident pages of `[addr, addr+len)` out of RAM into the tiers.
    /// The range must lie inside registered regions. Safe to call while other
    /// threads use the memory: a page touched during its eviction stays right.
    pub fn evict(&self, addr: *mut u8, len: usize) -> Result<EvictReport, RuntimeError> {
        let _scope = RuntimeScope::enter();
        self.check_process()?;
        let _pass = self.shared.fork_gate.enter();
        let (a, l) = (addr as u64, len as u64);
        check_aligned(a, l)?;
        let mut report = EvictReport::default();
        let mut at = a;
        while at < a + l {
            let region = self.shared.regions.find(at).ok_or(RuntimeError::NotRegistered { addr: at, len: a + l - at })?;
            let first = ((at - region.start()) / PAGE_SIZE as u64) as usize;
            let end = (a + l).min(region.start() + region.len());
            let count = ((end - at) / PAGE_SIZE as u64) as usize;
            let idx: Vec<usize> = (first..first + count).collect();
            let r = evict::evict_pages(&self.shared, &region, &idx, Target::Tiers).map_err(|source| RuntimeError::Os { op: "evicting pages", source })?;
            report.add(&r);
            at = end;
        }
        Ok(report)
    }

    /// Takes the pages that start at the given addresses out of RAM, in batches:
    /// for a reclaimer whose victims are scattered. Each address must be
    /// page-aligned and registered; the list is best given sorted.
    pub fn evict_pages(&self, pages: &[*mut u8]) -> Result<EvictReport, RuntimeError> {
        let _scope = RuntimeScope::enter();
        self.check_process()?;
        let _pass = self.shared.fork_gate.enter();
        let mut report = EvictReport::default();
        let mut k = 0;
        while k < pages.len() {
            let a = pages[k] as u64;
            check_aligned(a, PAGE_SIZE as u64)?;
            let region = self.shared.regions.find(a).ok_or(RuntimeError::NotRegistered { addr: a, len: PAGE_SIZE as u64 })?;
            let mut idx = Vec::new();
            while k < pages.len() && region.contains(pages[k] as u64) {
                let p = pages[k] as u64;
                check_aligned(p, PAGE_SIZE as u64)?;
                idx.push(((p - region.start()) / PAGE_SIZE as u64) as usize);
                k += 1;
            }
            let r = evict::evict_pages(&self.shared, &region, &idx, Target::Tiers).map_err(|source| RuntimeError::Os { op: "evicting pages", source })?;
            report.add(&r);
        }
        Ok(report)
    }

    /// Starts the policy thread: it samples accesses, ages pages, and reclaims
    /// as `config` asks (a limit, a stall target, a floor). Replaces a policy
    /// already running.
    pub fn start_policy(&self, config: policy::PolicyConfig) -> Result<(), RuntimeError> {
        let _scope = RuntimeScope::enter();
        self.check_process()?;
        if config.stall.is_some_and(|s| !(s > 0.0 && s < 1.0)) {
            return Err(RuntimeError::Os { op: "starting the policy", source: std::io::Error::other("the stall target must be a fraction between 0 and 1") });
        }
        let mut slot = self.policy.lock().unwrap_or_else(|e| e.into_inner());
        // The old policy stops (and joins) before the new one starts.
        drop(slot.take());
        *slot = Some(
            policy::PolicyHandle::start(Arc::clone(&self.shared), config).map_err(|source| RuntimeError::Os { op: "starting the policy thread", source })?,
        );
        Ok(())
    }

    /// Changes the limit of a policy running in limit mode to `bytes`, in
    /// place: what the policy learned of the program's pages (their ages,
    /// the sampler's state) stays, as it would not across
    /// [`Runtime::start_policy`]. The policy takes it within a check
    /// (a tenth of a tick). Returns false, changing nothing, when no policy
    /// runs with a limit (start one with the limit instead).
    pub fn set_limit(&self, bytes: u64) -> bool {
        let slot = self.policy.lock().unwrap_or_else(|e| e.into_inner());
        if bytes == 0 || !slot.as_ref().is_some_and(|p| p.limited()) {
            return false;
        }
        self.shared.limit_request.store(bytes, Ordering::Release);
        true
    }

    /// Stops the policy thread, if one runs; evicted pages stay where they are.
    pub fn stop_policy(&self) {
        let _scope = RuntimeScope::enter();
        drop(self.policy.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// Moves every page held by configured tier `tier` (0 is T1) into the
    /// tiers after it, until they are full: what the policy does for pages
    /// past their demotion age, on demand.
    pub fn demote_tier(&self, tier: usize) -> Result<DemoteReport, RuntimeError> {
        let _scope = RuntimeScope::enter();
        self.check_process()?;
        let _pass = self.shared.fork_gate.enter();
        if tier + 1 >= self.shared.sample_tier as usize {
            return Err(RuntimeError::Os { op: "demoting pages", source: std::io::Error::other(format!("tier {tier} has no configured tier after it")) });
        }
        let mut report = DemoteReport::default();
        for region in self.shared.regions.all() {
            let held: Vec<usize> =
                (0..region.pages()).filter(|&i| matches!(region.states.get(i), pagestate::State::Evicted { tier: t, .. } if t as usize == tier)).collect();
            for chunk in held.chunks(4096) {
                report.add(&evict::demote(&self.shared, &region, chunk, tier as u8));
                if report.full {
                    return Ok(report);
                }
            }
        }
        Ok(report)
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> Stats {
        use std::os::unix::thread::JoinHandleExt;
        let c = &self.shared.counters;
        let regions = self.shared.regions.all();
        Stats {
            regions: regions.len(),
            per_region: regions
                .iter()
                .map(|r| RegionStats {
                    start: r.start(),
                    len: r.len(),
                    resident_pages: resident_pages(r.start(), r.len()),
                    evicted_pages: r.evicted.load(Ordering::Relaxed),
                })
                .collect(),
            registered_bytes: regions.iter().map(|r| r.len()).sum(),
            evicted_pages: regions.iter().map(|r| r.evicted.load(Ordering::Relaxed)).sum(),
            pages_evicted_total: c.pages_evicted.load(Ordering::Relaxed),
            faults_from_tier: c.faults_from_tier.load(Ordering::Relaxed),
            pages_reclaimed: c.pages_reclaimed.load(Ordering::Relaxed),
            throttled_faults: c.throttled_faults.load(Ordering::Relaxed),
            sample_faults: c.sample_faults.load(Ordering::Relaxed),
            refaults_by_generation: std::array::from_fn(|g| c.refaults_by_generation[g].load(Ordering::Relaxed)),
            pages_put_back: c.pages_put_back.load(Ordering::Relaxed),
            pages_prefetched: c.pages_prefetched.load(Ordering::Relaxed),
            reclaim_stall: Duration::from_nanos(c.reclaim_stall_ns.load(Ordering::Relaxed)),
            faults_from_staging: c.faults_from_staging.load(Ordering::Relaxed),
            faults_zero_filled: c.faults_zero_filled.load(Ordering::Relaxed),
            pages_zero_filled: c.pages_zero_filled.load(Ordering::Relaxed),
            faults_deferred: c.faults_deferred.load(Ordering::Relaxed),
            faults_raced: c.faults_raced.load(Ordering::Relaxed),
            faults_in_thread: c.faults_in_thread.load(Ordering::Relaxed),
            fault_mode: self.shared.config.fault_mode,
            installs_retried: c.installs_retried.load(Ordering::Relaxed),
            pages_poisoned: c.pages_poisoned.load(Ordering::Relaxed),
            pages_dropped_by_program: c.pages_dropped_by_program.load(Ordering::Relaxed),
            evict_skipped_busy: c.evict_skipped_busy.load(Ordering::Relaxed),
            evict_rejected: c.evict_rejected.load(Ordering::Relaxed),
            evict_tier_full: c.evict_tier_full.load(Ordering::Relaxed),
            stall: Duration::from_nanos(c.stall_ns.load(Ordering::Relaxed)),
            fault_handlers: self.fault_threads.len(),
            fault_handler_cpu: self.fault_threads.iter().filter_map(|t| cpus::thread_cpu_time(t.as_pthread_t()).ok()).sum(),
            fault_latency_ns: c.fault_latency.to_hdr(),
            tiers: self.shared.tiers.iter().map(|t| (t.name().to_string(), t.stats())).collect(),
            policy: self.policy.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|p| p.stats()),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _scope = RuntimeScope::enter();
        if self.check_process().is_err() {
            // A forked child's copy: no fault handlers to stop; its memory is the
            // child's own, complete since the fork.
            for t in self.fault_threads.drain(..) {
                std::mem::forget(t);
            }
            return;
        }
        drop(self.policy.get_mut().unwrap_or_else(|e| e.into_inner()).take());
        for region in self.shared.regions.all() {
            let (a, l) = (region.start(), region.len());
            if let Err(e) = self.unregister_region(region) {
                tracing::error!("could not release region {a:#x}+{l:#x}: {e}");
            }
        }
        stop_fault_handlers(&self.shared, std::mem::take(&mut self.fault_threads));
        // No region is left to fault on: the SIGBUS handler may let go of it.
        drop(self.signal.take());
    }
}
