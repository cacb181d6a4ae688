//! `farmem bench compare`: one workload run one variant after another on the
//! same machine, farmem beside the kernel's own answers, with the same memory
//! budget.
//!
//! - `plain`: no limit, no farmem; its peak resident set is what the budgets
//!   are shares of;
//! - `farmem-stall`: under `farmem run --stall 0.1%` (no budget: farmem finds
//!   its own size);
//! - per budget, `farmem-limit` (`farmem run --limit BUDGET`), `kernel-zram`
//!   (a memory cgroup limit of BUDGET with zram swap, [`crate::kernel`]) and
//!   `kernel-zswap` (the same limit with zswap over a swap file, [`zswap`]).
//!
//! `--command 'PROGRAM ARGS'` runs the user's own program instead, round
//! after round, and judges each run by the sha256 of what it printed and
//! wrote ([`command`]).
//!
//! Each workload is a process of its own ([`workload`] behind the hidden
//! `farmem bench workload`, redis-server for [`redis`], memcached for
//! [`memcached`]), sampled from outside ([`probe`]). Kernel variants that
//! cannot run here are skipped with one sentence, and the others still run.
//! SIGINT and SIGTERM end the measured process and restore zram, swap, zswap
//! and the cgroup before the harness returns. Results go to `--out DIR`
//! ([`report`]).

pub mod command;
pub mod memcached;
pub mod probe;
pub mod redis;
pub mod report;
pub mod workload;
pub mod zswap;

use std::ffi::{CString, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::kernel::{self, MemCgroup, SignalCatcher, ZramSwap};
use crate::BaselineError;
use probe::{MemorySummary, Sample, Sampler, Sources};

/// Why a comparison (or one of its runs) failed; one sentence naming what.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A value the harness cannot use.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// The setting.
        what: &'static str,
        /// Its value and why it is refused.
        value: String,
    },
    /// The workload could not be set up.
    #[error("the workload could not run: {0}")]
    Workload(String),
    /// A value read back differed from what was written.
    #[error("wrong bytes: {0}")]
    WrongBytes(String),
    /// The measured process failed.
    #[error("the measured process {0}")]
    Child(String),
    /// The kernel's OOM killer ended the program: the budget was too small
    /// for the kernel variant. A result, not a harness failure.
    #[error("the OOM killer ended the program inside the memory cgroup: {0}")]
    OomKilled(String),
    /// A kernel variant's program did not finish in time (thrashing under
    /// the budget) and was killed. A result, not a harness failure.
    #[error("{0}")]
    TooSlow(String),
    /// redis answered something unexpected.
    #[error("redis: {0}")]
    Redis(String),
    /// memcached answered something unexpected, or refused a request.
    #[error("memcached: {0}")]
    Memcached(String),
    /// A file or system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The kernel baselines' set-up failed, or the run was interrupted.
    #[error(transparent)]
    Baseline(#[from] BaselineError),
    /// Some runs failed; their JSON and the table say why.
    #[error("{failed} of {runs} runs failed (see {dir}/summary.md)")]
    RunsFailed {
        /// Failed runs.
        failed: usize,
        /// All runs.
        runs: usize,
        /// The output directory.
        dir: String,
    },
}

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// The key-value store of `farmem bench policy`, Zipf 0.99 keys.
    KvZipf,
    /// The same store, uniform keys.
    KvUniform,
    /// redis-server driven by redis-benchmark.
    Redis,
    /// Sequential scans over a large array.
    Scan,
    /// memcached driven by the harness's own loopback client: Zipf gets and sets.
    Memcached,
    /// The user's own program (`--command`, [`command`]).
    Command,
    /// Threads allocating and freeing objects of mixed sizes, after larson
    /// ([`workload::alloc`]): the cost of farmem's malloc itself.
    Alloc,
}

impl Workload {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::KvZipf => "kv-zipf",
            Workload::KvUniform => "kv-uniform",
            Workload::Redis => "redis",
            Workload::Scan => "scan",
            Workload::Memcached => "memcached",
            Workload::Command => "command",
            Workload::Alloc => "alloc",
        }
    }

    /// Bytes of data by default, and with --quick.
    fn default_size(self, quick: bool) -> u64 {
        match (self, quick) {
            (Workload::Redis | Workload::Memcached, false) => 1 << 30,
            (Workload::Redis | Workload::Memcached, true) => 64 << 20,
            // Live objects: the point is malloc's speed, not the heap's size.
            (Workload::Alloc, false) => 256 << 20,
            (Workload::Alloc, true) => 32 << 20,
            (_, false) => 4 << 30,
            (_, true) => 256 << 20,
        }
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Workload::KvZipf, Workload::KvUniform, Workload::Redis, Workload::Memcached, Workload::Scan, Workload::Alloc]
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("'{s}' is not a workload: write kv-zipf, kv-uniform, redis, memcached, scan or alloc (or --command 'PROGRAM ARGS' for your own)"))
    }
}

/// A memory budget: a share of the plain run's peak resident set, or bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// A fraction in (0, 1].
    Share(f64),
    /// Bytes.
    Bytes(u64),
}

impl FromStr for Budget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => Ok(Budget::Share(v / 100.0)),
                _ => Err(format!("'{t}' is not a budget: a percentage must be in (0%, 100%]")),
            };
        }
        farmem_runtime::policy::parse_size(t).map(Budget::Bytes).map_err(|_| format!("'{t}' is not a budget: write a share of the plain run's peak (50%) or a size (512M)"))
    }
}

impl Budget {
    /// Its bytes for a plain run that peaked at `peak` bytes (at least 8 MiB,
    /// below which the process itself does not fit in a cgroup).
    pub fn bytes(self, peak: u64) -> u64 {
        match self {
            Budget::Share(f) => (peak as f64 * f) as u64,
            Budget::Bytes(b) => b,
        }
        .max(8 << 20)
    }

    /// As written on the command line (50%, or MiB).
    pub fn label(self) -> String {
        match self {
            Budget::Share(f) => format!("{}%", (f * 1000.0).round() / 10.0),
            Budget::Bytes(b) => format!("{}M", b >> 20),
        }
    }
}

/// The ways a workload is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// No limit, no farmem.
    Plain,
    /// No limit, the system's stock jemalloc preloaded (Debian's
    /// libjemalloc2): the allocator farmem's malloc is built on, as a
    /// baseline for [`Workload::Alloc`], where it runs by default.
    Jemalloc,
    /// `farmem run --limit BUDGET`.
    FarmemLimit,
    /// `farmem run --stall 0.1%`.
    FarmemStall,
    /// `farmem run --limit BUDGET --fault signal`: faults served in the
    /// faulting thread. Runs only when asked for (`--variant farmem-signal`).
    FarmemSignal,
    /// A memory cgroup limit of BUDGET with zram swap.
    KernelZram,
    /// A memory cgroup limit of BUDGET with zswap over a swap file.
    KernelZswap,
}

/// Every variant, in the order they run.
pub const VARIANTS: [Variant; 7] = [Variant::Plain, Variant::Jemalloc, Variant::FarmemStall, Variant::FarmemLimit, Variant::FarmemSignal, Variant::KernelZram, Variant::KernelZswap];

impl Variant {
    /// Its name in the outputs.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Jemalloc => "jemalloc",
            Variant::FarmemLimit => "farmem-limit",
            Variant::FarmemStall => "farmem-stall",
            Variant::FarmemSignal => "farmem-signal",
            Variant::KernelZram => "kernel-zram",
            Variant::KernelZswap => "kernel-zswap",
        }
    }

    fn farmem(self) -> bool {
        matches!(self, Variant::FarmemLimit | Variant::FarmemStall | Variant::FarmemSignal)
    }

    /// Whether it runs on `workload` when no `--variant` is given.
    pub fn by_default(self, workload: Workload) -> bool {
        match self {
            Variant::FarmemSignal => false,
            Variant::Jemalloc => workload == Workload::Alloc,
            _ => true,
        }
    }

    fn budgeted(self) -> bool {
        matches!(self, Variant::FarmemLimit | Variant::FarmemSignal | Variant::KernelZram | Variant::KernelZswap)
    }
}

impl FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        VARIANTS.into_iter().find(|v| v.name() == s).ok_or_else(|| format!("'{s}' is not a variant: write plain, jemalloc, farmem-limit, farmem-signal, farmem-stall, kernel-zram or kernel-zswap"))
    }
}

/// What `farmem bench compare` runs.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// The workload.
    pub workload: Workload,
    /// The budgets (at least one).
    pub budgets: Vec<Budget>,
    /// How long the timed part of kv-*, memcached and scan runs.
    pub duration: Duration,
    /// Where the outputs go (default `compare-YYYYMMDD-HHMMSS`).
    pub out: Option<PathBuf>,
    /// Small data and short runs: the whole comparison in under a minute.
    pub quick: bool,
    /// Bytes of data (default per workload: 4 GiB, 1 GiB for redis and memcached; --quick 256 MiB, 64 MiB).
    pub size: Option<u64>,
    /// The variants to run besides plain (default all).
    pub variants: Vec<Variant>,
    /// The `farmem` executable (for `farmem run` and `farmem bench workload`).
    pub farmem: PathBuf,
    /// The user's command, for [`Workload::Command`].
    pub command: Option<command::CommandSpec>,
    /// redis: load the server from this file of commands (`redis-cli
    /// --pipe`, timed) instead of the harness's own keys; the GETs then go
    /// over `DBSIZE` keys, and the digest, not a sample of values, is checked.
    pub redis_load: Option<PathBuf>,
}

/// One run of one variant: what the JSON file of the run holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunRecord {
    /// The workload's name.
    pub workload: String,
    /// The variant's name.
    pub variant: String,
    /// The budget as given (None for plain and farmem-stall).
    pub budget: Option<String>,
    /// The budget in bytes.
    pub budget_bytes: Option<u64>,
    /// "ok", "skipped", "failed", or for kernel variants "oom-killed" (the
    /// OOM killer ended the program: the budget was too small for it) or
    /// "timed-out" (it thrashed past the time limit and was killed), or for
    /// kernel-zswap "not-comparable" (thrashing because its pool is charged to
    /// the group, [`zswap::NOT_COMPARABLE`]); for `--command`, "wrong-output".
    pub status: String,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    /// Operations per second (see `unit`).
    pub throughput: f64,
    /// What one operation is: "op" (a get or set) or "MiB" (scanned).
    pub unit: String,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds.
    pub p999_us: f64,
    /// Wall seconds of the whole run (start to exit).
    pub wall_s: f64,
    /// User CPU seconds of the whole run (wait4 rusage of the started process and its children).
    pub cpu_user_s: f64,
    /// System CPU seconds of the whole run.
    pub cpu_sys_s: f64,
    /// Resident memory, footprint, tiers, swap, zram and zswap from the samples.
    pub memory: MemorySummary,
    /// Values (or chunks) whose bytes were checked.
    pub checked: u64,
    /// redis: DEBUG DIGEST after the run (equal across variants, else the run fails).
    pub digest: Option<String>,
    /// farmem's final statistics (`farmem run --stats`).
    pub farmem_stats: Option<Value>,
    /// zram's counters at the end of the timed part (kernel-zram).
    pub zram: Option<kernel::ZramCounters>,
    /// The compressor zram or zswap used.
    pub compressor: Option<String>,
    /// The workload's own report (kv-*, scan, memcached: keys, phases, the
    /// server's counters), or redis-benchmark's figures.
    pub workload_report: Option<Value>,
    /// The samples, every 250 ms.
    pub samples: Vec<Sample>,
    /// redis and memcached: seconds the load took (the server filled before the timed part).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_s: Option<f64>,
    /// `--command --rounds N`: which round this run was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<usize>,
    /// `--command`: how the program ended and what it printed and wrote, as hashes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<command::CommandOutput>,
    /// The process tree's largest resident set by wait4's ru_maxrss, bytes
    /// (`--command`, whose runs may be too short for the samples).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_rusage_bytes: Option<u64>,
}

/// The kernel set-up a run holds while it runs: dropped after it.
enum KernelSetup {
    None,
    Zram(ZramSwap, MemCgroup),
    Zswap(zswap::ZswapSwap, MemCgroup),
}

impl KernelSetup {
    fn cgroup(&self) -> Option<&MemCgroup> {
        match self {
            KernelSetup::None => None,
            KernelSetup::Zram(_, c) | KernelSetup::Zswap(_, c) => Some(c),
        }
    }
}

/// Whether a process that ended with wait status `st` inside the variant's
/// memory cgroup was the OOM killer's: killed by SIGKILL, and the group counts
/// a kill (a SIGKILL from someone else, e.g. an operator ending a thrashing
/// run, is not an OOM kill). A kernel that keeps no count is taken at its word.
fn oom_killed(setup: &KernelSetup, st: libc::c_int) -> bool {
    let Some(cg) = setup.cgroup() else { return false };
    libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL && cg.oom_kills().is_none_or(|n| n > 0)
}

/// A started measured process: the process started (maybe `farmem run`)
/// and the one to sample (the program itself). Killed and reaped on drop.
struct Started {
    pid: libc::pid_t,
    measured: u32,
    reaped: bool,
    stdout: Option<std::process::ChildStdout>,
}

impl Started {
    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: signalling processes this harness started (the program
        // under `farmem run` is its child, alive until that is reaped), then
        // reaping our own child, which SIGKILL ends promptly.
        unsafe {
            if self.measured as libc::pid_t != self.pid {
                libc::kill(self.measured as libc::pid_t, libc::SIGKILL);
            }
            libc::kill(self.pid, libc::SIGKILL);
            let mut st = 0;
            while libc::waitpid(self.pid, &mut st, 0) < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {}
        }
        self.reaped = true;
    }

    /// Waits up to `limit` for the process to exit, checking for SIGINT/SIGTERM.
    fn wait(&mut self, limit: Duration) -> Result<(libc::c_int, libc::rusage), CompareError> {
        let t0 = Instant::now();
        loop {
            let mut st = 0;
            // SAFETY: a zeroed rusage is a valid out-parameter.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waiting for our own child, into locals.
            let r = unsafe { libc::wait4(self.pid, &mut st, libc::WNOHANG, &mut ru) };
            if r == self.pid {
                self.reaped = true;
                return Ok((st, ru));
            }
            if r < 0 {
                self.reaped = true;
                return Err(CompareError::Io { what: format!("waiting for process {}", self.pid), source: std::io::Error::last_os_error() });
            }
            if kernel::interrupted().is_err() {
                self.kill();
                return Err(BaselineError::Interrupted.into());
            }
            if t0.elapsed() > limit {
                return Err(CompareError::Child(format!("{} did not exit within {limit:?}", self.pid)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pid of the first child of `pid` (the program `farmem run` started).
fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?.split_whitespace().next()?.parse().ok()
}

/// "exited with status 3" or "was killed by signal 9 (...)".
fn describe(st: libc::c_int) -> String {
    if libc::WIFEXITED(st) {
        format!("exited with status {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        let sig = libc::WTERMSIG(st);
        format!("was killed by signal {sig}{}", if sig == libc::SIGKILL { " (the OOM killer, if the budget is too small for the process itself)" } else { "" })
    } else {
        format!("ended with wait status {st:#x}")
    }
}

fn cpu(ru: &libc::rusage) -> (f64, f64) {
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(ru.ru_utime), s(ru.ru_stime))
}

/// One run being prepared: the variant, its budget, its files.
struct Plan<'a> {
    cfg: &'a CompareConfig,
    dir: &'a Path,
    variant: Variant,
    budget: Option<(Budget, u64)>,
    /// Bytes of swap to offer the kernel variants (the plain run's peak and some).
    swap_bytes: u64,
    label: String,
    /// `--command --rounds N`: the round, part of the file names.
    round: Option<usize>,
}

impl Plan<'_> {
    fn file_stem(&self) -> String {
        let b = self.budget.map_or(String::new(), |(b, _)| format!("-{}", b.label().replace('%', "pct")));
        let r = self.round.map_or(String::new(), |r| format!("-r{r}"));
        format!("{}-{}{b}{r}", self.cfg.workload.name(), self.variant.name())
    }

    /// Sets up zram or zswap and the cgroup, if the variant wants them.
    fn kernel_setup(&self) -> Result<KernelSetup, CompareError> {
        let limit = self.budget.map_or(0, |(_, b)| b);
        Ok(match self.variant {
            Variant::KernelZram => {
                kernel::kernel_available()?;
                let z = ZramSwap::new("lz4", self.swap_bytes)?;
                KernelSetup::Zram(z, MemCgroup::new(limit)?)
            }
            Variant::KernelZswap => {
                let z = zswap::ZswapSwap::new(self.swap_bytes, "lz4")?;
                KernelSetup::Zswap(z, MemCgroup::new(limit)?)
            }
            _ => KernelSetup::None,
        })
    }

    /// The command for `program`, wrapped as the variant wants.
    fn command(&self, program: &[OsString], setup: &KernelSetup) -> Result<Command, CompareError> {
        let mut cmd = if self.variant.farmem() {
            let mut c = Command::new(&self.cfg.farmem);
            c.arg("run");
            match self.variant {
                Variant::FarmemLimit => c.args(["--limit", &self.budget.map_or(0, |(_, b)| b).to_string()]),
                Variant::FarmemSignal => c.args(["--limit", &self.budget.map_or(0, |(_, b)| b).to_string(), "--fault", "signal"]),
                _ => c.args(["--stall", "0.1%"]),
            };
            c.arg("--stats").arg(self.dir.join(format!("{}.farmem-stats.json", self.file_stem()))).arg("--").args(program);
            c
        } else {
            let mut c = Command::new(&program[0]);
            c.args(&program[1..]);
            c
        };
        for v in ["LD_PRELOAD", "FARMEM_LIMIT", "FARMEM_STALL", "FARMEM_MIN", "FARMEM_TIERS", "FARMEM_STATS", "FARMEM_EVICT_EVERY", "FARMEM_FAULT"] {
            cmd.env_remove(v);
        }
        if self.variant == Variant::Jemalloc {
            let lib = stock_jemalloc().ok_or_else(|| CompareError::Workload(NO_STOCK_JEMALLOC.into()))?;
            cmd.env("LD_PRELOAD", lib);
        }
        let log = self.dir.join(format!("{}.stderr.log", self.file_stem()));
        let log = std::fs::File::create(&log).map_err(|source| CompareError::Io { what: format!("creating {}", log.display()), source })?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        if let Some(cg) = setup.cgroup() {
            let procs = CString::new(cg.path().join("cgroup.procs").into_os_string().into_encoded_bytes())
                .map_err(|_| CompareError::Invalid { what: "cgroup path", value: format!("{} holds a NUL byte", cg.path().display()) })?;
            // SAFETY: between fork and exec the closure only makes the
            // async-signal-safe calls open, write and close, on a path
            // allocated before the fork. Writing 0 to cgroup.procs moves
            // the writer, so the program starts inside the cgroup.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                    Ok(())
                });
            }
        }
        Ok(cmd)
    }

    /// Starts the command and finds the process to sample.
    fn start(&self, mut cmd: Command) -> Result<Started, CompareError> {
        let mut child = cmd.spawn().map_err(|source| CompareError::Io { what: format!("starting {:?}", cmd.get_program()), source })?;
        let pid = child.id() as libc::pid_t;
        let mut s = Started { pid, measured: pid as u32, reaped: false, stdout: child.stdout.take() };
        if self.variant.farmem() {
            let t0 = Instant::now();
            s.measured = loop {
                if let Some(c) = first_child(pid as u32) {
                    break c;
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    return Err(CompareError::Child(format!("`farmem run` ({pid}) started no program within 10 s")));
                }
                // A zombie: `farmem run` has ended. A user's command can be
                // over before its pid is seen: `farmem run` is then measured
                // itself, and its exit status and output are judged as the
                // program's. The built-in workloads never end that soon.
                let ended = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| st.contains(") Z"));
                if ended && self.cfg.workload == Workload::Command {
                    break pid as u32;
                }
                if ended {
                    let (st, _) = s.wait(Duration::from_secs(1))?;
                    let log = std::fs::read_to_string(self.dir.join(format!("{}.stderr.log", self.file_stem()))).unwrap_or_default();
                    let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(its .stderr.log is empty)");
                    return Err(CompareError::Child(format!("`farmem run` {} before starting the program: {last}", describe(st))));
                }
                std::thread::sleep(Duration::from_millis(5));
            };
        }
        Ok(s)
    }

    fn sources(&self, setup: &KernelSetup) -> Sources {
        Sources {
            farmem: self.variant.farmem(),
            zram: matches!(setup, KernelSetup::Zram(..)),
            zswap: matches!(setup, KernelSetup::Zswap(..)),
            cgroup: setup.cgroup().map(|c| c.path().to_path_buf()),
        }
    }

    fn record(&self) -> RunRecord {
        RunRecord {
            workload: self.cfg.workload.name().into(),
            variant: self.variant.name().into(),
            budget: self.budget.map(|(b, _)| b.label()),
            budget_bytes: self.budget.map(|(_, b)| b),
            status: "ok".into(),
            round: self.round,
            ..RunRecord::default()
        }
    }

    /// Runs the variant: set-up, the workload, tear-down (by drop, whatever happens).
    fn run(&self) -> Result<RunRecord, CompareError> {
        self.run_with(|setup, rec| match self.cfg.workload {
            Workload::Redis => self.run_redis(setup, rec),
            Workload::Memcached => self.run_memcached(setup, rec),
            Workload::Command => self.run_command(setup, rec, None),
            _ => self.run_workload_process(setup, rec),
        })
    }

    /// Runs the variant with `body` as the workload.
    fn run_with(&self, body: impl FnOnce(&KernelSetup, &mut RunRecord) -> Result<(), CompareError>) -> Result<RunRecord, CompareError> {
        let setup = self.kernel_setup()?;
        let mut rec = self.record();
        rec.compressor = match &setup {
            KernelSetup::Zram(z, _) => Some(z.algorithm().to_string()),
            KernelSetup::Zswap(z, _) => Some(z.compressor().to_string()),
            KernelSetup::None => None,
        };
        body(&setup, &mut rec)?;
        if matches!(setup, KernelSetup::Zram(..)) {
            rec.zram = kernel::zram_counters().ok();
        }
        if self.variant.farmem() {
            let p = self.dir.join(format!("{}.farmem-stats.json", self.file_stem()));
            rec.farmem_stats = std::fs::read_to_string(&p).ok().and_then(|t| serde_json::from_str(&t).ok());
        }
        rec.memory = probe::summarise(&rec.samples);
        if let Some(r) = rec.peak_rss_rusage_bytes {
            rec.memory.peak_rss_bytes = rec.memory.peak_rss_bytes.max(r);
        }
        Ok(rec)
    }

    /// The record of a run that ended with `r`: a failure, or for the kernel
    /// variants a result (OOM-killed, timed out, or for zswap not comparable).
    /// Err only when interrupted.
    fn outcome(&self, r: Result<RunRecord, CompareError>) -> Result<RunRecord, CompareError> {
        let (status, e) = match r {
            Ok(r) => return Ok(r),
            Err(CompareError::Baseline(BaselineError::Interrupted)) => return Err(BaselineError::Interrupted.into()),
            Err(e @ CompareError::OomKilled(_)) => ("oom-killed", e.to_string()),
            Err(CompareError::TooSlow(m)) if self.variant == Variant::KernelZswap => ("not-comparable", format!("{m}: {}", zswap::NOT_COMPARABLE)),
            Err(e @ CompareError::TooSlow(_)) => ("timed-out", e.to_string()),
            Err(e) => ("failed", format!("{e}")),
        };
        eprintln!("{}: {}{e}", self.label, if status == "failed" { "failed: " } else { "" });
        Ok(RunRecord { status: status.into(), reason: Some(e), ..self.record() })
    }

    fn size(&self) -> u64 {
        self.cfg.size.unwrap_or(self.cfg.workload.default_size(self.cfg.quick))
    }

    /// How long a run of a timed workload may take, fill and checks included.
    fn time_limit(&self) -> Duration {
        // Thrashing under a tight budget can take the kernel variants
        // forever; --quick must end in a minute or so.
        if self.cfg.quick {
            self.cfg.duration * 3 + Duration::from_secs(20)
        } else {
            self.cfg.duration * 20 + Duration::from_secs(600)
        }
    }

    /// kv-* and scan: `farmem bench workload KIND`, its JSON line read at exit.
    fn run_workload_process(&self, setup: &KernelSetup, rec: &mut RunRecord) -> Result<(), CompareError> {
        let program: Vec<OsString> = vec![
            self.cfg.farmem.clone().into_os_string(),
            "bench".into(),
            "workload".into(),
            self.cfg.workload.name().into(),
            "--size".into(),
            self.size().to_string().into(),
            "--duration".into(),
            format!("{}s", self.cfg.duration.as_secs_f64()).into(),
        ];
        let cmd = self.command(&program, setup)?;
        let t0 = Instant::now();
        let mut started = self.start(cmd)?;
        let sampler = Sampler::start(started.measured, t0, self.sources(setup), self.label.clone());
        let limit = self.time_limit();
        let waited = started.wait(limit);
        if setup.cgroup().is_some() && matches!(waited, Err(CompareError::Child(_))) {
            started.kill();
            rec.samples = sampler.finish();
            return Err(CompareError::TooSlow(format!("the program did not finish within {limit:?} under {} (thrashing) and was killed", self.variant.name())));
        }
        rec.samples = sampler.finish();
        let (st, ru) = waited?;
        rec.wall_s = t0.elapsed().as_secs_f64();
        (rec.cpu_user_s, rec.cpu_sys_s) = cpu(&ru);
        let mut out = String::new();
        if let Some(mut o) = started.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut out);
        }
        if oom_killed(setup, st) {
            return Err(CompareError::OomKilled(format!("{} MiB was not enough with {}", self.budget.map_or(0, |(_, b)| b >> 20), self.variant.name())));
        }
        if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
            let log = std::fs::read_to_string(self.dir.join(format!("{}.stderr.log", self.file_stem()))).unwrap_or_default();
            let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            return Err(if last.contains("wrong bytes") { CompareError::WrongBytes(last) } else { CompareError::Child(format!("{}: {last}", describe(st))) });
        }
        let line = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
        let r: workload::WorkloadResult = serde_json::from_str(line).map_err(|e| CompareError::Child(format!("printed no result ({e}): {out:?}")))?;
        (rec.throughput, rec.p50_us, rec.p99_us, rec.p999_us, rec.checked) = (r.throughput, r.p50_us, r.p99_us, r.p999_us, r.checked);
        rec.unit = r.unit.clone();
        rec.workload_report = serde_json::to_value(&r).ok();
        Ok(())
    }

    /// redis: the server is the measured process; load, digest, benchmark,
    /// check a sample of values, digest again, shut down.
    fn run_redis(&self, setup: &KernelSetup, rec: &mut RunRecord) -> Result<(), CompareError> {
        const VALUE: usize = 1024;
        let keys = (self.size() / (VALUE as u64 + 100)).max(1000);
        let requests = if self.cfg.quick { 20_000 } else { 400_000 };
        let port = redis::free_port()?;
        let rdir = self.dir.join(format!("{}.redis", self.file_stem()));
        std::fs::create_dir_all(&rdir).map_err(|source| CompareError::Io { what: format!("creating {}", rdir.display()), source })?;
        let mut program: Vec<OsString> = vec!["redis-server".into()];
        program.extend(redis::server_args(port, &rdir).into_iter().map(OsString::from));
        let cmd = self.command(&program, setup)?;
        let t0 = Instant::now();
        let started = self.start(cmd)?;
        let sampler = Sampler::start(started.measured, t0, self.sources(setup), self.label.clone());
        let body = (|| -> Result<(), CompareError> {
            let mut c = redis::Conn::connect(port, Duration::from_secs(20))?;
            let tf = Instant::now();
            let (keys, requests) = match &self.cfg.redis_load {
                Some(file) => {
                    let p = redis::pipe(port, file, t0 + self.time_limit())?;
                    let n = match c.call(&[b"DBSIZE"])? {
                        redis::Reply::Int(n) if n > 0 => n as u64,
                        r => return Err(CompareError::Redis(format!("DBSIZE after loading {} answered {r:?}", file.display()))),
                    };
                    rec.checked = p.replies;
                    (n, if self.cfg.quick { requests } else { 200_000 })
                }
                None => {
                    c.load(keys, VALUE)?;
                    (keys, requests)
                }
            };
            let fill = tf.elapsed().as_secs_f64();
            rec.load_s = Some(fill);
            let before = c.digest()?;
            kernel::interrupted()?;
            let b = redis::benchmark(port, keys, requests)?;
            kernel::interrupted()?;
            if self.cfg.redis_load.is_none() {
                rec.checked = c.verify(keys, VALUE, if self.cfg.quick { 2_000 } else { 20_000 }, 99)?;
            }
            let after = c.digest()?;
            if after != before {
                return Err(CompareError::WrongBytes(format!("redis: DEBUG DIGEST went from {before} to {after} over a read-only benchmark")));
            }
            rec.digest = Some(after);
            (rec.throughput, rec.p50_us, rec.p99_us, rec.p999_us) = (b.rps, b.p50_us, b.p99_us, b.p999_us);
            rec.unit = "op".into();
            rec.workload_report = Some(serde_json::json!({"keys": keys, "value_bytes": self.cfg.redis_load.is_none().then_some(VALUE), "load_file": self.cfg.redis_load, "requests": requests, "clients": 8, "fill_seconds": fill, "rps": b.rps}));
            c.shutdown();
            Ok(())
        })();
        let ended = self.end_server("redis-server", started, sampler, body, setup, t0, rec);
        if ended.is_ok() {
            let _ = std::fs::remove_dir_all(&rdir);
        }
        ended
    }

    /// memcached: the server is the measured process; the harness's own
    /// client loads it, runs Zipf gets and sets from several connections
    /// checking every value, reads every key back and shuts it down.
    fn run_memcached(&self, setup: &KernelSetup, rec: &mut RunRecord) -> Result<(), CompareError> {
        use memcached::{CONNECTIONS, THETA, VALUE_BYTES};
        let keys = (self.size() / (VALUE_BYTES as u64 + 100)).max(1000);
        let mib = memcached::memory_mib(keys, VALUE_BYTES);
        let port = redis::free_port()?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut program: Vec<OsString> = vec!["memcached".into()];
        program.extend(memcached::server_args(port, mib, root).into_iter().map(OsString::from));
        let cmd = self.command(&program, setup)?;
        let limit = self.time_limit();
        let t0 = Instant::now();
        let started = self.start(cmd)?;
        let sampler = Sampler::start(started.measured, t0, self.sources(setup), self.label.clone());
        let body = (|| -> Result<(), CompareError> {
            let o = memcached::drive(port, keys, self.cfg.duration, t0 + limit, limit)?;
            let stat = |name: &str| o.stats.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.parse::<u64>().ok());
            if stat("evictions") != Some(0) {
                return Err(CompareError::Memcached(format!("evicted {:?} items with -m {mib}: the check needs every key kept", stat("evictions"))));
            }
            rec.throughput = o.ops as f64 / o.seconds.max(1e-9);
            rec.load_s = Some(o.fill_seconds);
            (rec.p50_us, rec.p99_us, rec.p999_us) = (o.latency.p50_us, o.latency.p99_us, o.latency.p999_us);
            rec.checked = o.checked;
            rec.unit = "op".into();
            let counters: serde_json::Map<String, Value> =
                ["curr_items", "bytes", "limit_maxbytes", "evictions", "store_no_memory", "get_hits", "get_misses", "cmd_get", "cmd_set", "hash_bytes"]
                    .iter()
                    .filter_map(|n| Some((n.to_string(), Value::from(stat(n)?))))
                    .collect();
            rec.workload_report = Some(serde_json::json!({
                "keys": keys, "value_bytes": VALUE_BYTES, "memory_mib": mib, "connections": CONNECTIONS, "get_share": 0.9, "zipf_theta": THETA,
                "fill_seconds": o.fill_seconds, "seconds": o.seconds, "ops": o.ops, "gets": o.gets, "sets": o.sets,
                "verify_seconds": o.verify_seconds, "max_us": o.latency.max_us, "server": counters,
            }));
            Ok(())
        })();
        self.end_server("memcached", started, sampler, body, setup, t0, rec)
    }

    /// The end of a server run: waits for the server (`name`) to exit (only
    /// briefly after a failed `body`: dropping `started` kills it), keeps
    /// the samples, and tells the OOM killer, a kernel variant thrashing past
    /// the time limit and a failed exit apart.
    #[allow(clippy::too_many_arguments)]
    fn end_server(
        &self,
        name: &str,
        mut started: Started,
        sampler: Sampler,
        body: Result<(), CompareError>,
        setup: &KernelSetup,
        t0: Instant,
        rec: &mut RunRecord,
    ) -> Result<(), CompareError> {
        let waited = started.wait(if body.is_ok() { Duration::from_secs(60) } else { Duration::from_millis(300) });
        rec.samples = sampler.finish();
        let oom = |st: libc::c_int| oom_killed(setup, st);
        if let Err(e) = body {
            return Err(match (waited, e) {
                (Ok((st, _)), e) if oom(st) => {
                    CompareError::OomKilled(format!("{} MiB was not enough with {} ({e})", self.budget.map_or(0, |(_, b)| b >> 20), self.variant.name()))
                }
                // Too slow is the kernel's own result at a tight budget, but
                // a failure of farmem or of the server on its own.
                (_, CompareError::TooSlow(m)) if setup.cgroup().is_none() => CompareError::Child(format!("{name} was too slow: {m}")),
                (_, e) => e,
            });
        }
        let (st, ru) = waited?;
        if oom(st) {
            return Err(CompareError::OomKilled(format!("{} MiB was not enough with {}", self.budget.map_or(0, |(_, b)| b >> 20), self.variant.name())));
        }
        rec.wall_s = t0.elapsed().as_secs_f64();
        (rec.cpu_user_s, rec.cpu_sys_s) = cpu(&ru);
        if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
            return Err(CompareError::Child(format!("{name} {}", describe(st))));
        }
        Ok(())
    }
}

/// `compare-YYYYMMDD-HHMMSS` (UTC) in the current directory.
fn default_out() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    PathBuf::from(format!("compare-{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// Where the system's stock jemalloc is installed, if it is.
pub fn stock_jemalloc() -> Option<PathBuf> {
    ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2"].into_iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Why the jemalloc variant cannot run.
const NO_STOCK_JEMALLOC: &str = "the system's jemalloc is not installed (apt-get install libjemalloc2)";

/// Whether `variant` can run here; the error is one sentence.
fn refusal(variant: Variant, workload: Workload) -> Option<String> {
    let r = match variant {
        Variant::Jemalloc => stock_jemalloc().is_none().then(|| NO_STOCK_JEMALLOC.to_string()),
        Variant::KernelZram => kernel::kernel_available().err().map(|e| e.to_string()),
        Variant::KernelZswap => zswap::zswap_available().err().map(|e| e.to_string()),
        _ => None,
    };
    r.or_else(|| {
        let (tools, why): (&[&str], &str) = match workload {
            Workload::Redis => {
                (&["redis-server", "redis-benchmark"], "redis-server or redis-benchmark is not installed (apt-get install redis-server redis-tools)")
            }
            Workload::Memcached => (&["memcached"], "memcached is not installed (apt-get install memcached)"),
            _ => (&[], ""),
        };
        let missing = !tools.iter().all(|t| std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(t).is_file()));
        missing.then(|| why.into())
    })
}

/// Runs the comparison; prints the table and writes the outputs. Err when
/// interrupted, or when a run failed (a wrong byte among them).
pub fn run(cfg: &CompareConfig) -> Result<(), CompareError> {
    if cfg.workload == Workload::Command {
        return command::run(cfg);
    }
    if let Some(f) = &cfg.redis_load {
        if cfg.workload != Workload::Redis {
            return Err(CompareError::Invalid { what: "--redis-load", value: format!("{}: only --workload redis loads from a file", f.display()) });
        }
        std::fs::File::open(f).map_err(|source| CompareError::Io { what: format!("opening --redis-load {}", f.display()), source })?;
    }
    if cfg.budgets.is_empty() {
        return Err(CompareError::Invalid { what: "--budget", value: "none given: write e.g. --budget 50%".into() });
    }
    let dir = cfg.out.clone().unwrap_or_else(default_out);
    std::fs::create_dir_all(&dir).map_err(|source| CompareError::Io { what: format!("creating {}", dir.display()), source })?;
    let _signals = SignalCatcher::new();
    let mut variants: Vec<Variant> = VARIANTS.into_iter().filter(|v| *v == Variant::Plain || (cfg.variants.is_empty() && v.by_default(cfg.workload)) || cfg.variants.contains(v)).collect();
    variants.dedup();
    let per_budget = variants.iter().filter(|v| v.budgeted()).count();
    let total = variants.len() - per_budget + per_budget * cfg.budgets.len();
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut plain_peak = 0u64;
    let mut n = 0;
    for v in variants.iter().copied() {
        let budgets: Vec<Option<Budget>> = if v.budgeted() { cfg.budgets.iter().copied().map(Some).collect() } else { vec![None] };
        for b in budgets {
            n += 1;
            let budget = b.map(|b| (b, b.bytes(plain_peak)));
            let label = format!("[{n}/{total}] {} {}{}", cfg.workload.name(), v.name(), budget.map_or(String::new(), |(b, bytes)| format!(" {} ({} MiB)", b.label(), bytes >> 20)));
            let plan = Plan { cfg, dir: &dir, variant: v, budget, swap_bytes: plain_peak * 2 + (64 << 20), label: label.clone(), round: None };
            let rec = if let Some(why) = refusal(v, cfg.workload) {
                eprintln!("{label}: skipped: {why}");
                RunRecord { status: "skipped".into(), reason: Some(why), ..plan.record() }
            } else {
                eprintln!("{label}: running");
                plan.outcome(plan.run())?
            };
            if v == Variant::Plain {
                if rec.status != "ok" {
                    report::write(&dir, &format!("{}.json", plan.file_stem()), &serde_json::to_string_pretty(&rec).unwrap_or_default())?;
                    return Err(CompareError::Workload(format!("the plain run failed, so there is nothing to compare against: {}", rec.reason.unwrap_or_default())));
                }
                plain_peak = rec.memory.peak_rss_bytes;
            }
            let mut rec = rec;
            if let (Some(d), Some(p)) = (rec.digest.clone(), runs.first().and_then(|r| r.digest.clone())) {
                if d != p {
                    rec.reason = Some(format!("wrong bytes: DEBUG DIGEST {d} differs from the plain run's {p}"));
                    rec.status = "failed".into();
                }
            }
            report::write(&dir, &format!("{}.json", plan.file_stem()), &serde_json::to_string_pretty(&rec).unwrap_or_default())?;
            runs.push(rec);
        }
    }
    let title = format!(
        "farmem bench compare: {}, {} MiB of data{}, plain peak RSS {} MiB",
        cfg.workload.name(),
        cfg.size.unwrap_or(cfg.workload.default_size(cfg.quick)) >> 20,
        if cfg.workload == Workload::Redis { String::new() } else { format!(", {:.0} s timed", cfg.duration.as_secs_f64()) },
        plain_peak >> 20
    );
    let md = report::markdown(&title, &runs);
    report::write(&dir, "summary.md", &md)?;
    report::write(&dir, "resident.svg", &report::resident_svg(&runs))?;
    if cfg.budgets.len() > 1 {
        report::write(&dir, "throughput-vs-budget.svg", &report::throughput_svg(&runs, plain_peak))?;
    }
    println!("{md}");
    println!("outputs in {}", dir.display());
    let failed = runs.iter().filter(|r| r.status == "failed").count();
    if failed > 0 {
        return Err(CompareError::RunsFailed { failed, runs: runs.len(), dir: dir.display().to_string() });
    }
    Ok(())
}

/// The hidden `farmem bench workload KIND`: runs a kv-* or scan workload in
/// this process and prints its [`workload::WorkloadResult`] as one JSON line.
pub fn run_workload(kind: Workload, size: u64, duration: Duration) -> Result<(), CompareError> {
    let r = match kind {
        Workload::KvZipf => workload::kv(size, duration, Some(0.99))?,
        Workload::KvUniform => workload::kv(size, duration, None)?,
        Workload::Scan => workload::scan(size, duration)?,
        Workload::Alloc => workload::alloc(size, duration)?,
        Workload::Redis | Workload::Memcached | Workload::Command => {
            return Err(CompareError::Invalid { what: "workload", value: format!("{} runs a server, not a workload process", kind.name()) })
        }
    };
    println!("{}", serde_json::to_string(&r).unwrap_or_default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_workloads_and_variants_parse() {
        assert_eq!("50%".parse::<Budget>().unwrap(), Budget::Share(0.5));
        assert_eq!(" 30 % ".parse::<Budget>().unwrap(), Budget::Share(0.3));
        assert_eq!("512M".parse::<Budget>().unwrap(), Budget::Bytes(512 << 20));
        for bad in ["0%", "150%", "half", "-5%"] {
            assert!(bad.parse::<Budget>().is_err(), "{bad}");
        }
        assert_eq!(Budget::Share(0.5).bytes(1 << 30), 512 << 20);
        assert_eq!(Budget::Share(0.01).bytes(100 << 20), 8 << 20, "never below 8 MiB");
        assert_eq!(Budget::Share(0.5).label(), "50%");
        assert_eq!(Budget::Share(0.333).label(), "33.3%");
        assert_eq!(Budget::Bytes(512 << 20).label(), "512M");
        for w in ["kv-zipf", "kv-uniform", "redis", "memcached", "scan", "alloc"] {
            assert_eq!(w.parse::<Workload>().unwrap().name(), w);
        }
        assert!("memcache".parse::<Workload>().unwrap_err().contains("memcached"));
        assert_eq!(Workload::Memcached.default_size(false), 1 << 30);
        assert_eq!(Workload::Memcached.default_size(true), 64 << 20);
        for v in VARIANTS {
            assert_eq!(v.name().parse::<Variant>().unwrap(), v);
        }
        assert!(Variant::Jemalloc.by_default(Workload::Alloc) && !Variant::Jemalloc.by_default(Workload::KvZipf) && !Variant::FarmemSignal.by_default(Workload::Alloc));
        assert!(default_out().to_string_lossy().starts_with("compare-20"));
    }

    #[test]
    fn a_process_joins_the_cgroup_before_exec_and_the_cgroup_is_removed_after() {
        let _machine = crate::kernel::MACHINE_TEST.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = kernel::kernel_available() {
            println!("skipped: {e}");
            return;
        }
        let dir = std::env::temp_dir().join(format!("farmem-compare-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = CompareConfig { workload: Workload::Scan, budgets: vec![], duration: Duration::from_secs(1), out: None, quick: true, size: None, variants: vec![], farmem: "/bin/false".into(), command: None, redis_load: None };
        let plan = Plan { cfg: &cfg, dir: &dir, variant: Variant::KernelZram, budget: Some((Budget::Bytes(64 << 20), 64 << 20)), swap_bytes: 64 << 20, label: "t".into(), round: None };
        let cg_path;
        {
            let setup = plan.kernel_setup().unwrap();
            let cg = setup.cgroup().unwrap();
            cg_path = cg.path().to_path_buf();
            let cmd = plan.command(&["/bin/cat".into(), "/proc/self/cgroup".into()], &setup).unwrap();
            let mut s = plan.start(cmd).unwrap();
            let (st, _) = s.wait(Duration::from_secs(10)).unwrap();
            assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0);
            let mut out = String::new();
            std::io::Read::read_to_string(s.stdout.as_mut().unwrap(), &mut out).unwrap();
            let name = cg_path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(out.lines().any(|l| l.contains("memory") && l.ends_with(&name)), "not in {name}: {out}");
            assert!(std::fs::read_to_string("/proc/swaps").unwrap().contains(kernel::ZRAM_DEV));
        }
        assert!(!cg_path.exists(), "the cgroup is removed");
        assert!(!std::fs::read_to_string("/proc/swaps").unwrap().contains(kernel::ZRAM_DEV), "zram swap is off");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
