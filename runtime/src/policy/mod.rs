//! Deciding what to evict and how much: access sampling, page ages, and the
//! controller (limit, stall and floor modes).
//!
//! One thread, `farmem-policy`, runs once per tick (a second by default):
//! 1. it ages: reads an eighth of the pages' states and stamps (each page is
//!    read every 8 ticks), counts resident pages per generation of age, and
//!    lists pages due for demotion. Where the kernel allows, written pages
//!    are stamped seen first, as many as an allowance for the write faults
//!    this costs the program pays for (see the `written` module);
//! 2. it measures resident memory (pages in RAM plus the sampler's raw copies)
//!    and the share of wall time the program spent waiting on farmem faults;
//! 3. the [`Controller`] sets a target, and the thread reclaims down to it,
//!    oldest first: sampled pages that stayed idle (compressed straight from the
//!    sampler's tier), then resident pages of the oldest generations. In stall
//!    mode the latter are taken only as many as the stall left under the
//!    target can pay for, given the share of recent cuts that faulted back
//!    and what a fault costs;
//! 4. pages that stayed in a tier past `demote_after` move to the next
//!    configured tier (T1 to a spill tier), until that one is full;
//! 5. sampled pages nobody needed go back to RAM after a few ticks;
//! 6. the sampler takes the next pages out (see the `sampler` module).
//!
//! With a limit, the thread also checks resident memory ten times a tick, so a
//! program that allocates fast is held near its cap; if reclaim still falls
//! behind, the fault handlers delay the program's faults that grow its resident
//! set (as cgroup memory.high throttles), until reclaim catches up.
//!
//! ```no_run
//! use farmem_runtime::{policy::PolicyConfig, Runtime};
//!
//! let rt = Runtime::builder().build().unwrap();
//! // ... register the heap ...
//! rt.start_policy(PolicyConfig { stall: Some(0.001), ..PolicyConfig::default() }).unwrap();
//! ```

pub mod ages;
mod config;
mod controller;
mod guard;
pub mod incompressible;
mod probe;
mod sampler;
mod written;

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use ages::GENERATIONS;
pub use config::{parse_size, parse_stall, parse_switch, PolicyConfig, DEFAULT_STALL};
pub use controller::Controller;
pub use probe::AccessSources;

use crate::evict::{self, Target};
use crate::pagestate::State;
use crate::region::Region;
use crate::{RuntimeScope, Shared, PAGE_SIZE};
use ages::generation;
use guard::Guard;
use sampler::{pick_resident, Hand, Picked, Rate};
use written::WriteTracker;

/// Ticks a sampled page stays out unused before it goes back to RAM.
const SAMPLE_WINDOW: u32 = 4;
/// The sampler looks at most this many pages per page it wants to take out.
const SAMPLE_EXAMINE: usize = 16;
/// The sampler never has more than this share of registered pages out at once.
const SAMPLE_CAP_SHARE: u64 = 16;
/// The refault share assumed at least, so that a run of cold cuts does not
/// open the way to cutting a warm set all at once.
const MIN_REFAULT_SHARE: f64 = 0.05;
/// The share of sampled pages assumed at least to fault back, when the
/// sampler's rate is capped by its stall allowance.
const MIN_SAMPLE_HIT: f64 = 0.01;
/// Ticks over which cuts and their early refaults are compared.
const RECENT_TICKS: usize = 8;
/// The aging pass reads one of this many parts of the pages per tick.
const SCAN_PARTS: usize = 8;
/// Pages listed for demotion per tier per tick (256 MiB).
const DEMOTE_PER_TICK: usize = 65536;
/// The shortest span the stall is measured over.
const STALL_WINDOW: Duration = Duration::from_secs(1);
/// The share of the stall target the sampler's own faults may use.
const SAMPLE_STALL_SHARE: f64 = 0.25;
/// The shortest gap between two limit checks asked for by the fault handlers.
const MIN_CHECK_GAP: Duration = Duration::from_millis(2);
/// How often the limit is checked while the program is throttled, or while
/// its resident set grows fast.
const THROTTLED_STEP: Duration = Duration::from_millis(10);

/// The policy's state, as the statistics show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyStats {
    /// The modes in force, e.g. "limit 2.0 GiB, stall 0.10%, min 0 B".
    pub mode: String,
    /// Ticks run.
    pub ticks: u64,
    /// Resident bytes the controller reclaims down to, if it set a target.
    pub target_bytes: Option<u64>,
    /// Resident bytes at the last measure: registered pages in RAM plus the
    /// sampler's raw copies.
    pub resident_bytes: u64,
    /// The most resident bytes measured.
    pub peak_resident_bytes: u64,
    /// Share of the last tick's wall time the program spent waiting for pages
    /// to come back from tiers (summed over its threads).
    pub stall_fraction: f64,
    /// Pages reclaimed into the tiers by the policy.
    pub reclaimed_pages: u64,
    /// Of those, pages compressed straight from the sampler's tier.
    pub reclaimed_from_samples: u64,
    /// Pages reclaim picked but no tier would hold (incompressible with no
    /// spill tier, or every tier full): they stayed in RAM.
    pub reclaim_refused_pages: u64,
    /// Whether the last reclaim over the limit found nothing more it could
    /// take (the throttle is lifted meanwhile; see the log for why).
    pub limit_short: bool,
    /// Whether faults back outnumber evictions tenfold (reclaim then leaves
    /// the newest pages alone; see the log).
    pub thrashing: bool,
    /// Pages marked incompressible when the marks were last cleared (every
    /// [`incompressible::CLEAR_EVERY`] ticks): memory reclaim cannot take.
    pub incompressible_pages: u64,
    /// Pages the sampler has taken out since start.
    pub sampled_pages: u64,
    /// Pages the sampler has out now.
    pub sampled_now: u64,
    /// Pages the sampler takes out per tick now.
    pub sample_rate: u64,
    /// Pages seen within this many ticks are not sampled.
    pub hot_window_ticks: u32,
    /// Resident pages per generation of age at the last tick (see [`GENERATIONS`]).
    pub generations: [u64; GENERATIONS.len()],
    /// CPU the policy thread spent on aging and sampling, in seconds.
    pub sampling_cpu_seconds: f64,
    /// That CPU over the last tick, as a share of one core.
    pub sampling_cpu_fraction: f64,
    /// CPU the policy thread spent reclaiming and demoting, in seconds.
    pub reclaim_cpu_seconds: f64,
    /// Pages moved from a tier to the next (T1 to a spill tier).
    pub demoted_pages: u64,
    /// Ticks in which demotion stopped because the tiers below were full.
    pub demotion_blocked_ticks: u64,
    /// Whether written pages are tracked (PAGEMAP_SCAN with async write-protect).
    pub write_tracking: bool,
    /// Pages the write tracking found written, over all its scans.
    pub written_pages_seen: u64,
    /// What the kernel offers for seeing accesses, probed at start.
    pub access_sources: AccessSources,
}

/// The running policy thread.
pub(crate) struct PolicyHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<PolicyStats>>,
    /// Started with a limit: [`crate::Runtime::set_limit`] may change it.
    limited: bool,
}

/// Wakes the policy thread between its checks: to stop, or to reclaim at once
/// because the fault handlers saw the program's resident set cross its limit.
/// Reclaiming when the limit is crossed, rather than at the next timed check,
/// is what keeps the program from being throttled.
#[derive(Default)]
pub(crate) struct Bell {
    state: Mutex<BellState>,
    cv: Condvar,
    /// A reclaim was asked and the policy thread has not answered yet: the
    /// fault thread rings once, not on every fault.
    asked: AtomicBool,
}

#[derive(Default)]
struct BellState {
    stop: bool,
    reclaim: bool,
}

/// Why the policy thread woke.
#[derive(Debug, PartialEq)]
enum Wake {
    Stop,
    Reclaim,
    Timeout,
}

impl Bell {
    /// Asks the policy thread to check the limit now (the fault handlers call it).
    pub(crate) fn ask_reclaim(&self) {
        if !self.asked.swap(true, Relaxed) {
            self.state.lock().unwrap_or_else(|e| e.into_inner()).reclaim = true;
            self.cv.notify_all();
        }
    }

    fn stop(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        self.cv.notify_all();
    }

    /// Ready for a new policy thread.
    fn reset(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = BellState::default();
        self.asked.store(false, Relaxed);
    }

    /// Waits up to `d` for a stop or a reclaim request.
    fn wait(&self, d: Duration) -> Wake {
        let g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = self.cv.wait_timeout_while(g, d, |s| !s.stop && !s.reclaim).unwrap_or_else(|e| e.into_inner());
        if g.stop {
            Wake::Stop
        } else if std::mem::take(&mut g.reclaim) {
            Wake::Reclaim
        } else {
            Wake::Timeout
        }
    }

    /// The reclaim asked for is done (or was not needed): the fault handlers may ask again.
    fn answered(&self) {
        self.asked.store(false, Relaxed);
    }
}

impl PolicyHandle {
    /// Starts the policy thread.
    pub fn start(shared: Arc<Shared>, config: PolicyConfig) -> std::io::Result<Self> {
        shared.policy_bell.reset();
        let stats = Arc::new(Mutex::new(PolicyStats { mode: describe(&config), ..PolicyStats::default() }));
        let (sh, o) = (Arc::clone(&shared), Arc::clone(&stats));
        let limited = config.limit.is_some();
        shared.limit_request.store(0, Relaxed);
        // Unnamed for std, as the fault handlers: see `RuntimeBuilder::build`.
        let thread = std::thread::Builder::new().spawn(move || {
            let _scope = RuntimeScope::enter();
            crate::set_thread_name(c"farmem-policy");
            Policy::new(sh, config, o).run();
        })?;
        Ok(PolicyHandle { shared, thread: Some(thread), stats, limited })
    }

    /// Whether it runs in limit mode.
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// A copy of the policy's statistics.
    pub fn stats(&self) -> PolicyStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for PolicyHandle {
    fn drop(&mut self) {
        self.shared.policy_bell.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn describe(c: &PolicyConfig) -> String {
    let mut parts = Vec::new();
    if let Some(l) = c.limit {
        parts.push(format!("limit {}", bytes(l)));
    }
    if let Some(s) = c.stall {
        parts.push(format!("stall {:.2}%", s * 100.0));
    }
    if c.min > 0 {
        parts.push(format!("min {}", bytes(c.min)));
    }
    if parts.is_empty() {
        parts.push("sampling only".into());
    }
    parts.join(", ")
}

fn bytes(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A page out of RAM (in the sampler's tier, or one due for demotion), with
/// how long it has been out.
struct Sampled {
    out_age: u32,
    region: Arc<Region>,
    page: usize,
}

/// What one reclaim did.
#[derive(Debug, Default, Clone, Copy)]
struct Cut {
    /// Pages taken out of RAM.
    pages: u64,
    /// Fewer pages than asked, and no other page it could take.
    short: bool,
    /// Pages picked that no tier would hold.
    refused: u64,
}

/// What the aging pass saw.
#[derive(Default)]
struct Scan {
    present: u64,
    registered: u64,
    generations: [u64; GENERATIONS.len()],
    sampled: Vec<Sampled>,
    /// Pages the write tracking found written this tick.
    written: u64,
    /// Per configured tier that has one after it: pages due for demotion.
    due: Vec<Vec<Sampled>>,
}

struct Policy {
    shared: Arc<Shared>,
    config: PolicyConfig,
    ctl: Controller,
    rate: Rate,
    sample_hand: Hand,
    reclaim_hand: Hand,
    last_wall: Instant,
    stall_window: VecDeque<(Instant, u64)>,
    last_reclaim_stall_ns: u64,
    last_sample_faults: u64,
    last_refaults: u64,
    sampled_last_tick: u64,
    scan: Scan,
    /// Pages the sampler took out: when, and where.
    outstanding: Vec<(u32, Arc<Region>, usize)>,
    /// The program was over its limit by 5% or more (the fault handlers throttle it) at the last look.
    throttled: bool,
    /// Resident bytes at the last limit check, and whether they grew by more
    /// than a fiftieth of the limit since the one before: memory the program
    /// touches for the first time in a region farmem has not armed yet
    /// reaches no fault handler, so only a check sees it.
    last_resident: u64,
    growing: bool,
    /// Pages reclaimed in each of the last ticks.
    recent_cuts: VecDeque<u64>,
    /// Early refaults (out for less than 8 ticks) in each of the last ticks.
    recent_early: VecDeque<u64>,
    last_early_refaults: u64,
    /// Of recently reclaimed pages, the share that faulted back early.
    refault_share: f64,
    /// Stall per fault from a tier, seconds (moving average).
    fault_cost: f64,
    /// Share of sampled pages that fault back (moving average).
    sample_hit: f64,
    /// In stall mode, the most resident pages not known to be idle that one
    /// tick may reclaim.
    unknown_cut_cap: Option<u64>,
    /// Written-page tracking, where the kernel and the configuration allow it.
    written: Option<WriteTracker>,
    /// Says when the limit cannot be held or the program thrashes.
    guard: Guard,
    stats: PolicyStats,
    out: Arc<Mutex<PolicyStats>>,
}

impl Policy {
    fn new(shared: Arc<Shared>, config: PolicyConfig, out: Arc<Mutex<PolicyStats>>) -> Self {
        let c = &shared.counters;
        let (stall, sf, rf) = (c.reclaim_stall_ns.load(Relaxed), c.sample_faults.load(Relaxed), refaults(&shared));
        let mut stats = out.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let written = (config.write_tracking && shared.pagemap.is_some()).then(WriteTracker::new);
        stats.write_tracking = written.is_some();
        stats.access_sources = probe::probe(shared.pagemap.is_some());
        tracing::info!("policy: {}; access sources: {}; write tracking {}", stats.mode, stats.access_sources, if written.is_some() { "on" } else { "off" });
        Policy {
            ctl: Controller::new(&config),
            rate: Rate::new(),
            sample_hand: Hand::default(),
            reclaim_hand: Hand::default(),
            last_wall: Instant::now(),
            stall_window: VecDeque::from([(Instant::now(), stall)]),
            last_reclaim_stall_ns: stall,
            last_sample_faults: sf,
            last_refaults: rf,
            sampled_last_tick: 0,
            scan: Scan::default(),
            outstanding: Vec::new(),
            throttled: false,
            last_resident: 0,
            growing: false,
            recent_cuts: VecDeque::new(),
            recent_early: VecDeque::new(),
            last_early_refaults: early_refaults(&shared),
            refault_share: 0.1,
            fault_cost: 15e-6,
            sample_hit: 0.1,
            unknown_cut_cap: None,
            written,
            guard: Guard::new(&shared),
            stats,
            out,
            shared,
            config,
        }
    }

    fn run(mut self) {
        let tick = self.config.tick.max(Duration::from_millis(10));
        let step = if self.config.limit.is_some() { (tick / 10).max(Duration::from_millis(10)) } else { tick };
        let mut next_tick = Instant::now() + tick;
        let mut last_check = Instant::now();
        // The fault handlers hold the limit from the start, not from the first check.
        self.set_throttle();
        loop {
            // While the program is throttled, look again soon: the sooner the
            // reclaim catches up, the sooner the program runs at full speed.
            // While it grows fast, too: a fill must not run far past the limit.
            let wait = if self.throttled || self.growing { THROTTLED_STEP } else { step };
            let wake = self.shared.policy_bell.wait(wait);
            if wake == Wake::Stop || self.shared.stopping.load(Relaxed) {
                break;
            }
            let asked = self.shared.limit_request.swap(0, Relaxed);
            if asked > 0 && self.config.limit.is_some() {
                self.config.limit = Some(asked);
                self.ctl.set_limit(asked);
                self.stats.mode = describe(&self.config);
                self.set_throttle();
            }
            if wake == Wake::Reclaim {
                // A reclaim that found nothing to take is not retried at once.
                let since = last_check.elapsed();
                if since < MIN_CHECK_GAP {
                    std::thread::sleep(MIN_CHECK_GAP - since);
                }
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = (next_tick + tick).max(Instant::now());
            } else if self.config.limit.is_some() {
                self.check_limit();
            }
            last_check = Instant::now();
            self.shared.policy_bell.answered();
        }
        self.shared.limit_pages.store(0, Relaxed);
    }

    /// Corrects the fault handlers' resident estimate to `measured` bytes,
    /// given what the estimate was when the measure began. The correction is
    /// added rather than stored, so that pages faulted in or reclaimed while
    /// the policy measured and reclaimed (a long tick, on a busy machine)
    /// stay counted: the throttle must never think the program smaller than it is.
    fn resync(&self, measured: u64, est_before: i64) {
        let pages = (measured / PAGE_SIZE as u64) as i64;
        self.shared.resident_est.fetch_add(pages - est_before, Relaxed);
    }

    /// Publishes the limit to the fault handlers, and remembers whether the
    /// program is over it by 5% or more, to look again soon.
    fn set_throttle(&mut self) {
        let limit = self.config.limit.map_or(0, |l| l / PAGE_SIZE as u64);
        self.shared.limit_pages.store(limit, Relaxed);
        let est = self.shared.resident_est.load(Relaxed).max(0) as u64;
        self.throttled = limit > 0 && est > limit + limit / 20;
    }

    fn sample_tier_bytes(&self) -> u64 {
        self.shared.tiers[self.shared.sample_tier as usize].capacity().used_bytes
    }

    /// One tick: age, measure, control, reclaim, return, sample.
    fn tick(&mut self) {
        let shared = Arc::clone(&self.shared);
        let cpu0 = thread_cpu();
        let now = shared.tick.fetch_add(1, Relaxed) + 1;
        let wall = self.last_wall.elapsed().as_secs_f64().max(1e-3);
        self.last_wall = Instant::now();
        // The first tick reads every page (and finds pages an earlier policy
        // left sampled); later ones an eighth each.
        let parts = if self.stats.ticks == 0 { 1 } else { SCAN_PARTS };
        let est_before = shared.resident_est.load(Relaxed);
        // With a limit, the checks between ticks measure resident memory ten
        // times a tick and correct the fault handlers' estimate each time: the
        // tick takes that estimate rather than walk every page table again.
        let measure = self.config.limit.is_none() || self.stats.ticks == 0;
        // Written pages are stamped first, so that the generation counts include them.
        let written = match (&shared.pagemap, self.written.as_mut()) {
            (Some(pm), Some(w)) => {
                w.earn(wall, self.config.stall);
                w.track(pm, &shared.regions.all(), now)
            }
            _ => 0,
        };
        if now.is_multiple_of(incompressible::CLEAR_EVERY) {
            self.stats.incompressible_pages = shared.regions.all().iter().map(|r| r.incompressible.clear_all()).sum();
        }
        self.scan = scan(&shared, now, self.config.demote_ticks(), self.stats.ticks as usize % parts, parts, measure);
        self.scan.written = written;
        if parts == 1 {
            self.outstanding = self.scan.sampled.iter().map(|x| (now.wrapping_sub(x.out_age), Arc::clone(&x.region), x.page)).collect();
        }
        // The sampled pages still out, from the sampler's own list.
        let sample = shared.sample_tier;
        self.outstanding.retain(|(_, r, i)| matches!(r.states.get(*i), State::Evicted { tier, .. } if tier == sample));
        self.scan.sampled = self.outstanding.iter().map(|(at, r, i)| Sampled { out_age: now.wrapping_sub(*at), region: Arc::clone(r), page: *i }).collect();
        let resident = if measure {
            let r = self.scan.present * PAGE_SIZE as u64 + self.sample_tier_bytes();
            self.resync(r, est_before);
            r
        } else {
            shared.resident_est.load(Relaxed).max(0) as u64 * PAGE_SIZE as u64
        };

        let c = &shared.counters;
        let stall_ns = c.reclaim_stall_ns.load(Relaxed);
        let sample_faults = c.sample_faults.load(Relaxed);
        let refaults = refaults(&shared);
        let d_stall = stall_ns.saturating_sub(self.last_reclaim_stall_ns) as f64 * 1e-9;
        let d_sample = sample_faults.saturating_sub(self.last_sample_faults);
        let d_refault = refaults.saturating_sub(self.last_refaults);
        (self.last_reclaim_stall_ns, self.last_sample_faults, self.last_refaults) = (stall_ns, sample_faults, refaults);
        // The controller steers by the stall over at least the last second: a
        // shorter window holds too few faults to tell a target of 0.1% from noise.
        let t = Instant::now();
        self.stall_window.push_back((t, stall_ns));
        while self.stall_window.len() > 2 && t.duration_since(self.stall_window[1].0) >= STALL_WINDOW {
            self.stall_window.pop_front();
        }
        let (t0, ns0) = self.stall_window[0];
        let stall = if self.stall_window.len() > 1 { (stall_ns - ns0) as f64 * 1e-9 / t.duration_since(t0).as_secs_f64().max(1e-3) } else { 0.0 };
        // The sampled pages' share of the stall, by their share of the faults.
        let sample_stall = if d_sample + d_refault > 0 { d_stall * d_sample as f64 / (d_sample + d_refault) as f64 } else { 0.0 };
        let cpu_aging = thread_cpu() - cpu0;

        // What the last cuts cost: the share of reclaimed pages that came back,
        // and the stall per fault.
        // Refaults of pages out for less than 8 ticks, against the pages cut
        // over the last 8 ticks: the cuts' refaults come over several ticks.
        let early = early_refaults(&shared);
        let d_early = early.saturating_sub(self.last_early_refaults);
        self.last_early_refaults = early;
        self.recent_early.push_back(d_early);
        if self.recent_early.len() > RECENT_TICKS {
            self.recent_early.pop_front();
        }
        let cuts: u64 = self.recent_cuts.iter().sum();
        if cuts > 0 {
            let r = (self.recent_early.iter().sum::<u64>() as f64 / cuts as f64).clamp(0.0, 1.0);
            self.refault_share = r.max(MIN_REFAULT_SHARE);
        }
        if d_refault + d_sample > 0 {
            self.fault_cost = 0.7 * self.fault_cost + 0.3 * d_stall / (d_refault + d_sample) as f64;
        }
        self.unknown_cut_cap = self.config.stall.map(|goal| {
            let headroom = (goal - stall).max(0.0) * wall;
            (headroom / (self.refault_share * self.fault_cost)) as u64
        });
        self.guard.tick(&shared, wall, resident, self.config.limit);
        let target = self.ctl.tick(resident, stall);
        let cpu1 = thread_cpu();
        let cut = self.limit_reclaim(resident, target, now);
        let reclaimed = cut.pages;
        self.recent_cuts.push_back(reclaimed);
        if self.recent_cuts.len() > RECENT_TICKS {
            self.recent_cuts.pop_front();
        }
        self.set_throttle();
        let cpu_reclaim = thread_cpu() - cpu1;

        let cpu_demote0 = thread_cpu();
        self.demote();
        let cpu_reclaim = cpu_reclaim + (thread_cpu() - cpu_demote0);

        let cpu2 = thread_cpu();
        self.put_back();
        let cap = (self.scan.registered / SAMPLE_CAP_SHARE).max(1024);
        let out_now = self.scan.sampled.len() as u64;
        let want = (self.rate.per_tick as u64).min(cap.saturating_sub(out_now)) as usize;
        let mut sampled = 0;
        for Picked { region, idx } in pick_resident(&shared, &mut self.sample_hand, want, now, self.rate.hot_window, want.saturating_mul(SAMPLE_EXAMINE)) {
            let _pass = shared.fork_gate.enter();
            match evict::evict_pages(&shared, &region, &idx, Target::Sample) {
                Ok(r) => {
                    sampled += r.evicted;
                    for &i in &idx {
                        if matches!(region.states.get(i), State::Evicted { tier, .. } if tier == sample) {
                            self.outstanding.push((now, Arc::clone(&region), i));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("sampling pages of region {:#x} failed: {e}", region.start())
                }
            }
        }
        let cpu_sampling = cpu_aging + (thread_cpu() - cpu2);
        let scale = (self.scan.registered * PAGE_SIZE as u64).max(1 << 30) as f64 / (10u64 << 30) as f64;
        let budget = self.config.sampling_cpu * scale * wall;
        let allowance = self.config.stall.map_or(f64::INFINITY, |g| g * wall * SAMPLE_STALL_SHARE);
        self.rate.adjust(self.sampled_last_tick, d_sample, cpu_sampling, sample_stall, budget, allowance);
        // In stall mode the sampler's faults must fit in its share of the
        // target before they happen, not only be cut back after: at the share
        // of samples that come back and what a fault costs, that caps the
        // pages taken out per tick.
        if self.sampled_last_tick > 0 {
            let hit = (d_sample as f64 / self.sampled_last_tick as f64).min(1.0);
            self.sample_hit = 0.7 * self.sample_hit + 0.3 * hit;
        }
        if allowance.is_finite() {
            self.rate.cap((allowance / (self.sample_hit.max(MIN_SAMPLE_HIT) * self.fault_cost)) as usize);
        }
        self.sampled_last_tick = sampled;

        let s = &mut self.stats;
        s.ticks += 1;
        s.target_bytes = self.ctl.target();
        s.resident_bytes = resident;
        s.peak_resident_bytes = s.peak_resident_bytes.max(resident);
        s.stall_fraction = stall;
        s.sampled_pages += sampled;
        s.sampled_now = out_now + sampled;
        s.sample_rate = self.rate.per_tick as u64;
        s.hot_window_ticks = self.rate.hot_window;
        s.generations = self.scan.generations;
        s.sampling_cpu_seconds += cpu_sampling;
        s.sampling_cpu_fraction = cpu_sampling / wall;
        s.reclaim_cpu_seconds += cpu_reclaim;
        s.written_pages_seen = self.written.as_ref().map_or(0, |w| w.seen);
        tracing::debug!(
            tick = now,
            resident_mib = resident >> 20,
            target_mib = self.ctl.target().map(|t| t >> 20),
            stall_pct = stall * 100.0,
            reclaimed,
            refaults = d_refault,
            sampled,
            written = self.scan.written,
            sample_faults = d_sample,
            sample_rate = self.rate.per_tick,
            hot_window = self.rate.hot_window,
            sampling_cpu_pct = cpu_sampling / wall * 100.0,
            aging_cpu_ms = cpu_aging * 1e3,
            tick_ms = self.last_wall.elapsed().as_secs_f64() * 1e3,
            reclaim_cpu_ms = cpu_reclaim * 1e3,
            "policy tick"
        );
        self.publish();
    }

    /// Between ticks: holds the limit.
    fn check_limit(&mut self) {
        let est_before = self.shared.resident_est.load(Relaxed);
        let present: u64 = self.shared.regions.all().iter().map(|r| crate::resident_pages(r.start(), r.len())).sum();
        let resident = present * PAGE_SIZE as u64 + self.sample_tier_bytes();
        self.resync(resident, est_before);
        let limit = self.config.limit.unwrap_or(u64::MAX);
        self.growing = resident > self.last_resident.saturating_add(limit / 50);
        self.last_resident = resident;
        let target = self.ctl.check_limit(resident);
        let now = self.shared.tick.load(Relaxed);
        let t0 = Instant::now();
        let cut = self.limit_reclaim(resident, target, now);
        if target < resident {
            tracing::trace!(resident_kib = resident >> 10, target_kib = target >> 10, got = cut.pages, short = cut.short, us = t0.elapsed().as_micros() as u64, "limit check");
        }
        self.set_throttle();
        self.stats.resident_bytes = resident;
        self.stats.peak_resident_bytes = self.stats.peak_resident_bytes.max(resident);
        self.publish();
    }

    fn publish(&mut self) {
        self.stats.limit_short = self.shared.reclaim_short.load(Relaxed);
        self.stats.thrashing = self.guard.thrashing();
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = self.stats.clone();
    }

    /// Reclaims toward `target` and tells the guard how it went: over the
    /// limit, a reclaim that came up short lifts the throttle. While the limit
    /// cannot be held, reclaim is retried only now and then.
    fn limit_reclaim(&mut self, resident: u64, target: u64, now: u32) -> Cut {
        let Some(limit) = self.config.limit else {
            return self.reclaim(resident, target, now);
        };
        if resident <= limit {
            self.guard.under_limit(&self.shared, limit);
            return self.reclaim(resident, target, now);
        }
        if !self.guard.may_reclaim() {
            return Cut { short: true, ..Cut::default() };
        }
        let cut = self.reclaim(resident, target, now);
        self.guard.reclaimed(&self.shared, cut.short, resident, limit, cut.refused);
        cut
    }

    /// Reclaims from `resident` down to `target` bytes, oldest first.
    fn reclaim(&mut self, resident: u64, target: u64, now: u32) -> Cut {
        if target >= resident {
            return Cut::default();
        }
        let shared = Arc::clone(&self.shared);
        let mut need = (resident - target).div_ceil(PAGE_SIZE as u64);
        let asked = need;
        let mut done = 0;
        let mut refused = 0;
        // Idle sampled pages first, those out longest first: compressing them
        // costs no page-table work, and they are known to be unused.
        let mut idle: Vec<&Sampled> = self.scan.sampled.iter().filter(|s| s.out_age >= 1).collect();
        idle.sort_by_key(|s| std::cmp::Reverse(s.out_age));
        idle.truncate(need as usize);
        for (region, pages) in by_region(idle.iter().map(|s| (&s.region, s.page))) {
            let _pass = shared.fork_gate.enter();
            let r = evict::demote(&shared, &region, &pages, shared.sample_tier);
            done += r.demoted;
            self.stats.reclaimed_from_samples += r.demoted;
        }
        need = need.saturating_sub(done);
        // In stall mode, resident pages not known to be idle are taken only as
        // many as the stall left under the target can pay for, at the share of
        // recent cuts that came back and what a fault costs.
        if let Some(cap) = self.unknown_cut_cap {
            need = need.min(cap);
        }
        // Then resident pages, from the oldest generation down. The counts are
        // from the last aging pass, so they may name pages reclaimed since:
        // when a generation runs dry, the next younger one is searched.
        let mut from = 0;
        let mut have = 0;
        for g in (0..GENERATIONS.len()).rev() {
            have += self.scan.generations[g];
            from = g;
            if have >= need {
                break;
            }
        }
        // Before the policy's first aging pass (a limit check right after it
        // starts) the counts are not known: the search starts at the oldest
        // generation rather than take pages in address order.
        if have == 0 {
            from = GENERATIONS.len() - 1;
        }
        // Within a generation the hand goes on until enough pages are taken
        // or it has passed every page once: picked pages may be refused
        // (incompressible with nowhere else to go, or faulted for), and a
        // check that stopped at the first refusals would leave the program
        // over its limit, throttled, while takeable pages wait further on.
        let lap: usize = shared.regions.all().iter().map(|r| r.pages()).sum();
        // While thrashing, the newest generation is left alone (see `guard`).
        let floor = usize::from(self.guard.thrashing());
        let mut g = from.max(floor);
        let mut passed_all = false;
        while need > 0 {
            let mut got = 0;
            let mut examined = 0;
            while need > got && examined < lap {
                let picks = pick_resident(&shared, &mut self.reclaim_hand, (need - got) as usize, now, GENERATIONS[g], lap - examined);
                examined += self.reclaim_hand.examined.max(1);
                if picks.is_empty() {
                    examined = lap;
                    break;
                }
                for Picked { region, idx } in picks {
                    let _pass = shared.fork_gate.enter();
                    match evict::evict_pages(&shared, &region, &idx, Target::Tiers) {
                        Ok(r) => {
                            got += r.evicted;
                            refused += r.rejected + r.full;
                            if r.full > 0 {
                                // Every tier is full: nothing else can go either.
                                examined = lap;
                            }
                        }
                        Err(e) => tracing::warn!("reclaiming pages of region {:#x} failed: {e}", region.start()),
                    }
                }
            }
            take_oldest(&mut self.scan.generations, got);
            done += got;
            need = need.saturating_sub(got);
            if g == floor {
                passed_all = examined >= lap;
                break;
            }
            g -= 1;
        }
        self.stats.reclaimed_pages += done;
        self.stats.reclaim_refused_pages += refused;
        shared.counters.pages_reclaimed.fetch_add(done, Relaxed);
        // Short: under half what was asked, and the last pass looked at every
        // page (a stall-mode cap or a hand that stopped early is not short;
        // a few pages the program faulted for meanwhile are not either).
        Cut { pages: done, short: passed_all && done < asked / 2 && self.unknown_cut_cap.is_none(), refused }
    }

    /// Moves pages that stayed in a tier past the demotion age to the tiers
    /// after it, until those are full (then the policy says so and waits).
    fn demote(&mut self) {
        let shared = Arc::clone(&self.shared);
        let due = std::mem::take(&mut self.scan.due);
        let mut blocked = false;
        for (tier, pages) in due.into_iter().enumerate() {
            for (region, idx) in by_region(pages.iter().map(|s| (&s.region, s.page))) {
                let _pass = shared.fork_gate.enter();
                let r = evict::demote(&shared, &region, &idx, tier as u8);
                self.stats.demoted_pages += r.demoted;
                if r.full {
                    blocked = true;
                    break;
                }
            }
        }
        if blocked {
            self.stats.demotion_blocked_ticks += 1;
            tracing::debug!("demotion stopped: the spill tiers are full");
        }
    }

    /// Sends sampled pages that stayed out a full window, unused and not
    /// reclaimed, back to RAM.
    fn put_back(&mut self) {
        let sample = self.shared.sample_tier;
        let due = self.scan.sampled.iter().filter(|s| s.out_age >= SAMPLE_WINDOW);
        for (region, pages) in by_region(due.map(|s| (&s.region, s.page))) {
            let pages: Vec<usize> = pages.into_iter().filter(|&i| matches!(region.states.get(i), State::Evicted { tier, .. } if tier == sample)).collect();
            if !pages.is_empty() {
                self.shared.requests.push(crate::fault::Request::PutBack { region, pages, tier: sample });
            }
        }
        self.scan.sampled.retain(|s| s.out_age < SAMPLE_WINDOW);
    }
}

/// Takes `n` reclaimed pages off the generation counts, oldest first.
fn take_oldest(generations: &mut [u64], mut n: u64) {
    for count in generations.iter_mut().rev() {
        let t = n.min(*count);
        *count -= t;
        n -= t;
    }
}

/// Refaults of pages that had been out for less than 8 ticks (generations 0 and 1).
fn early_refaults(shared: &Shared) -> u64 {
    shared.counters.refaults_by_generation[..2].iter().map(|c| c.load(Relaxed)).sum()
}

/// All refaults counted so far.
fn refaults(shared: &Shared) -> u64 {
    shared.counters.refaults_by_generation.iter().map(|c| c.load(Relaxed)).sum()
}

/// Groups pages by region (by identity), each group's pages ascending.
fn by_region<'a>(pages: impl Iterator<Item = (&'a Arc<Region>, usize)>) -> Vec<(Arc<Region>, Vec<usize>)> {
    let mut groups: Vec<(Arc<Region>, Vec<usize>)> = Vec::new();
    for (r, i) in pages {
        match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, r)) {
            Some((_, v)) => v.push(i),
            None => groups.push((Arc::clone(r), vec![i])),
        }
    }
    for (_, v) in &mut groups {
        v.sort_unstable();
    }
    groups
}

/// The aging pass over part `part` of `parts` of every region (the pages of
/// each region are cut in `parts` runs; one is read per tick, so a page's
/// state is looked at every `parts` ticks): its pages' states and stamps, the
/// generation counts (scaled up by `parts`), and up to `DEMOTE_PER_TICK` pages
/// out for `demote_ticks` or more in each tier that has a configured tier
/// after it. With `measure`, what is in RAM is counted over all pages.
fn scan(shared: &Shared, now: u32, demote_ticks: u32, part: usize, parts: usize, measure: bool) -> Scan {
    const CHUNK: usize = 16384;
    let mut s = Scan { due: (0..shared.sample_tier.saturating_sub(1)).map(|_| Vec::new()).collect(), ..Scan::default() };
    let mut present = vec![0u8; CHUNK];
    for region in shared.regions.all() {
        s.registered += region.pages() as u64;
        if measure {
            s.present += crate::resident_pages(region.start(), region.len());
        }
        let (first, end) = (region.pages() * part / parts, region.pages() * (part + 1) / parts);
        let mut at = first;
        while at < end {
            let n = CHUNK.min(end - at);
            // SAFETY: mincore reads the page tables of `n` pages of the region
            // and writes one byte per page into `present[..n]`.
            if unsafe { libc::mincore(region.page_addr(at) as *mut libc::c_void, n * PAGE_SIZE, present.as_mut_ptr()) } != 0 {
                present[..n].fill(0);
            }
            for (k, &p) in present[..n].iter().enumerate() {
                let i = at + k;
                let (seen, out) = region.ages.ages(i, now);
                match region.states.get(i) {
                    State::Resident if p & 1 != 0 => s.generations[generation(seen)] += parts as u64,
                    State::Evicted { tier, .. } if tier == shared.sample_tier => {
                        s.sampled.push(Sampled { out_age: out, region: Arc::clone(&region), page: i });
                    }
                    State::Evicted { tier, .. } if out >= demote_ticks && (tier as usize) < s.due.len() => {
                        let due = &mut s.due[tier as usize];
                        if due.len() < DEMOTE_PER_TICK {
                            due.push(Sampled { out_age: out, region: Arc::clone(&region), page: i });
                        }
                    }
                    _ => {}
                }
            }
            at += n;
        }
    }
    s
}
