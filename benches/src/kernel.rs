//! The kernel's own answer: zram as swap plus a memory cgroup limit.
//!
//! [`measure_zram_swapin`] sets up /dev/zram0 as swap ([`ZramSwap`]), makes a
//! memory cgroup with the limit ([`MemCgroup`]), forks a child, moves it into
//! the cgroup, and lets it fill a heap (pushing most of it out to zram) and
//! time random reads, each read of a swapped-out page being a swap-in. The
//! child writes its samples into a shared buffer and allocates nothing; the
//! parent summarises them.
//!
//! # Restoring the machine
//!
//! Everything changed is undone before the functions here return, whatever
//! happens:
//! - the guards undo on drop: [`ZramSwap`] turns the swap off, resets zram0
//!   (which frees its memory and sets its disksize back to 0), puts back the
//!   compressor zram0 had and `vm.swappiness`; [`MemCgroup`] moves any task
//!   out and removes the cgroup;
//! - the workload runs in a child process, so a crash, an OOM kill or a wrong
//!   byte in it only ends the child, and the parent tears down;
//! - while [`measure_zram_swapin`] or [`zram_ratio`] runs, SIGINT and SIGTERM
//!   are caught (the previous handlers are put back afterwards): the child is
//!   killed, the guards dropped, and [`BaselineError::Interrupted`] returned,
//!   so a Ctrl-C leaves the machine as it was. The caller should then exit.
//!
//! Only SIGKILL of the parent (or a power cut) can leave zram0 configured;
//! [`kernel_available`] then reports zram0 as busy, and `swapoff /dev/zram0;
//! echo 1 > /sys/block/zram0/reset` clears it. Runs in one machine are
//! serialised by an advisory lock (`/run/farmem-bench-zram0.lock`).

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::heap;
use crate::stats::{histogram, LatencySummary};
use crate::BaselineError;

/// zram0's directory in sysfs.
pub const ZRAM_SYS: &str = "/sys/block/zram0";
/// zram0's block device.
pub const ZRAM_DEV: &str = "/dev/zram0";
/// The priority zram0's swap gets (higher than any swap set up without one).
pub const SWAP_PRIORITY: i32 = 100;
/// The prefix of the cgroups made here; the pid of the process follows.
pub const CGROUP_PREFIX: &str = "farmem-bench-";
const LOCK_PATHS: [&str; 2] = ["/run/farmem-bench-zram0.lock", "/tmp/farmem-bench-zram0.lock"];
const SWAPPINESS: &str = "/proc/sys/vm/swappiness";
/// zswap's on/off switch.
pub const ZSWAP_ENABLED: &str = "/sys/module/zswap/parameters/enabled";
/// `SWAP_FLAG_PREFER` and `SWAP_FLAG_PRIO_MASK` from <sys/swap.h>.
const SWAP_FLAG_PREFER: libc::c_int = 0x8000;
const SWAP_FLAG_PRIO_MASK: libc::c_int = 0x7fff;

fn os(what: String) -> impl FnOnce(io::Error) -> BaselineError {
    move |source| BaselineError::Os { what, source }
}

fn last_os(what: impl Into<String>) -> BaselineError {
    BaselineError::Os { what: what.into(), source: io::Error::last_os_error() }
}

fn write(path: impl AsRef<Path>, value: &str) -> Result<(), BaselineError> {
    let path = path.as_ref();
    fs::write(path, value).map_err(os(format!("writing '{value}' to {}", path.display())))
}

fn read(path: impl AsRef<Path>) -> Result<String, BaselineError> {
    let path = path.as_ref();
    fs::read_to_string(path).map_err(os(format!("reading {}", path.display())))
}

fn zram_file(name: &str) -> String {
    format!("{ZRAM_SYS}/{name}")
}

/// Whether the kernel baseline can run here: root, a zram device (after one
/// `modprobe zram` if needed), a memory cgroup controller, and zram0 not in
/// use by anyone. The error is one sentence saying what is missing.
pub fn kernel_available() -> Result<(), BaselineError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BaselineError::NotRoot);
    }
    if !Path::new(ZRAM_SYS).exists() {
        static MODPROBE: Once = Once::new();
        MODPROBE.call_once(|| {
            let _ = std::process::Command::new("modprobe")
                .arg("zram")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        });
        if !Path::new(ZRAM_SYS).exists() {
            return Err(BaselineError::NoZram { path: ZRAM_SYS.into() });
        }
    }
    if !Path::new(ZRAM_DEV).exists() {
        return Err(BaselineError::NoZram { path: ZRAM_DEV.into() });
    }
    memory_cgroup_root()?;
    zram_is_free()
}

/// Err(ZramBusy) unless zram0 is unconfigured and not a swap device.
fn zram_is_free() -> Result<(), BaselineError> {
    let swaps = read("/proc/swaps")?;
    if swaps.lines().any(|l| l.split_whitespace().next() == Some(ZRAM_DEV)) {
        return Err(BaselineError::ZramBusy("it is an active swap device in /proc/swaps".into()));
    }
    let disksize = read(zram_file("disksize"))?;
    if disksize.trim() != "0" {
        return Err(BaselineError::ZramBusy(format!("{} is {}, not 0", zram_file("disksize"), disksize.trim())));
    }
    Ok(())
}

/// Where memory cgroups are made, and with which interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    /// The mount point of the hierarchy with the memory controller.
    pub path: PathBuf,
    /// cgroup v2 (memory.max) rather than v1 (memory.limit_in_bytes).
    pub v2: bool,
}

/// Finds the memory controller: cgroup v2 if a v2 mount offers it, else the
/// v1 memory hierarchy.
pub fn memory_cgroup_root() -> Result<CgroupRoot, BaselineError> {
    let mounts = read("/proc/self/mounts")?;
    let mut v1 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let path = PathBuf::from(f[1].replace("\\040", " "));
        if f[2] == "cgroup2" {
            let has_memory = fs::read_to_string(path.join("cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
            if has_memory {
                return Ok(CgroupRoot { path, v2: true });
            }
        } else if f[2] == "cgroup" && f[3].split(',').any(|o| o == "memory") && v1.is_none() {
            v1 = Some(CgroupRoot { path, v2: false });
        }
    }
    v1.ok_or(BaselineError::NoMemoryCgroup)
}

/// Exclusive use of zram0, swap and zswap among farmem-bench runs: an
/// advisory `flock`, released on drop. Do not take it twice in one thread:
/// the second waits for the first.
pub struct ZramLock {
    _file: File,
}

impl ZramLock {
    /// Waits up to five minutes for other farmem-bench runs to finish.
    pub fn acquire() -> Result<Self, BaselineError> {
        let mut last = None;
        for path in LOCK_PATHS {
            match fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).custom_flags(libc::O_CLOEXEC).open(path) {
                Ok(file) => {
                    let t0 = Instant::now();
                    loop {
                        // SAFETY: flock on a descriptor this function owns.
                        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                            return Ok(ZramLock { _file: file });
                        }
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || t0.elapsed() > Duration::from_secs(300) {
                            return Err(BaselineError::Os { what: format!("locking {path} (another farmem-bench run holds it?)"), source: e });
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(e) => last = Some(BaselineError::Os { what: format!("opening {path}"), source: e }),
            }
        }
        Err(last.expect("at least one lock path"))
    }
}

/// The compressor zram0 uses now (the bracketed one in comp_algorithm).
fn current_algorithm() -> Result<String, BaselineError> {
    let s = read(zram_file("comp_algorithm"))?;
    s.split_whitespace()
        .find(|a| a.starts_with('['))
        .map(|a| a.trim_matches(|c| c == '[' || c == ']').to_string())
        .ok_or(BaselineError::Parse { path: zram_file("comp_algorithm"), value: s })
}

/// Selects `algorithm` if zram offers it; otherwise leaves the kernel's default.
fn set_algorithm(algorithm: &str) -> Result<(), BaselineError> {
    let offered = read(zram_file("comp_algorithm"))?;
    if offered.split_whitespace().any(|a| a.trim_matches(|c| c == '[' || c == ']') == algorithm) {
        write(zram_file("comp_algorithm"), algorithm)?;
    }
    Ok(())
}

/// Resets zram0, retrying while the device is still busy after a swapoff.
fn reset_zram() -> Result<(), BaselineError> {
    let mut r = Ok(());
    for _ in 0..50 {
        r = write(zram_file("reset"), "1");
        if r.is_ok() {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    r
}

/// zram0 configured: reset and its compressor put back on drop. Holds the lock.
struct ZramConfigured {
    old_algorithm: String,
    _lock: ZramLock,
}

impl ZramConfigured {
    /// Takes the lock, checks zram0 is free, selects `algorithm`, sets `disksize`.
    fn new(algorithm: &str, disksize: u64) -> Result<Self, BaselineError> {
        let lock = ZramLock::acquire()?;
        zram_is_free()?;
        let g = ZramConfigured { old_algorithm: current_algorithm()?, _lock: lock };
        set_algorithm(algorithm)?;
        write(zram_file("disksize"), &disksize.to_string())?;
        Ok(g)
    }
}

impl Drop for ZramConfigured {
    fn drop(&mut self) {
        if let Err(e) = reset_zram() {
            eprintln!("warning: could not reset zram0: {e}");
            return;
        }
        if current_algorithm().is_ok_and(|a| a != self.old_algorithm) {
            if let Err(e) = write(zram_file("comp_algorithm"), &self.old_algorithm) {
                eprintln!("warning: could not put zram0's compressor back: {e}");
            }
        }
    }
}

/// /dev/zram0 as a swap device. zswap, if enabled, is disabled meanwhile so
/// that swapped pages really go to zram. On drop: swapoff, zram0 reset
/// (disksize back to 0, its memory freed), its former compressor, zswap and
/// `vm.swappiness` put back. Only one exists at a time on a machine (an
/// advisory lock waits for others).
pub struct ZramSwap {
    swapped_on: bool,
    old_swappiness: Option<String>,
    zswap_was_enabled: bool,
    algorithm: String,
    // Dropped after the fields above are handled in Drop: resets zram0.
    _zram: ZramConfigured,
}

impl ZramSwap {
    /// Configures zram0 with `algorithm` (the kernel's default if zram lacks
    /// it) and `disksize` bytes, writes a swap header, and turns the swap on
    /// with priority [`SWAP_PRIORITY`].
    pub fn new(algorithm: &str, disksize: u64) -> Result<Self, BaselineError> {
        if disksize < 16 * heap::PAGE as u64 {
            return Err(BaselineError::Invalid { what: "zram disksize", value: format!("{disksize} bytes is below 16 pages") });
        }
        let zram = ZramConfigured::new(algorithm, disksize)?;
        let mut guard = ZramSwap { swapped_on: false, old_swappiness: None, zswap_was_enabled: false, algorithm: current_algorithm()?, _zram: zram };
        if fs::read_to_string(ZSWAP_ENABLED).is_ok_and(|v| v.trim() == "Y") {
            write(ZSWAP_ENABLED, "N")?;
            guard.zswap_was_enabled = true;
        }
        write_swap_header(Path::new(ZRAM_DEV), disksize)?;
        swap_on(Path::new(ZRAM_DEV))?;
        guard.swapped_on = true;
        Ok(guard)
    }

    /// The compressor zram0 really uses.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// Sets `vm.swappiness` (0..=200) for the life of the guard.
    pub fn set_swappiness(&mut self, value: u32) -> Result<(), BaselineError> {
        if value > 200 {
            return Err(BaselineError::Invalid { what: "swappiness", value: format!("{value} is above 200") });
        }
        if self.old_swappiness.is_none() {
            self.old_swappiness = Some(read(SWAPPINESS)?.trim().to_string());
        }
        write(SWAPPINESS, &value.to_string())
    }
}

impl Drop for ZramSwap {
    fn drop(&mut self) {
        if self.swapped_on {
            if let Err(e) = swap_off(Path::new(ZRAM_DEV)) {
                eprintln!("warning: {e}");
            }
        }
        if self.zswap_was_enabled {
            if let Err(e) = write(ZSWAP_ENABLED, "Y") {
                eprintln!("warning: could not enable zswap again: {e}");
            }
        }
        if let Some(old) = &self.old_swappiness {
            if let Err(e) = write(SWAPPINESS, old) {
                eprintln!("warning: could not put vm.swappiness back to {old}: {e}");
            }
        }
    }
}

/// Turns on swap on `path` (a block device or a swap file with a header)
/// with priority [`SWAP_PRIORITY`].
pub fn swap_on(path: &Path) -> Result<(), BaselineError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| BaselineError::Invalid { what: "swap path", value: format!("{} holds a NUL byte", path.display()) })?;
    // SAFETY: swapon takes a NUL-terminated path and flags.
    if unsafe { libc::swapon(c.as_ptr(), SWAP_FLAG_PREFER | (SWAP_PRIORITY & SWAP_FLAG_PRIO_MASK)) } != 0 {
        return Err(last_os(format!("swapon {}", path.display())));
    }
    Ok(())
}

/// Turns off swap on `path` (the kernel swaps its pages back in first).
pub fn swap_off(path: &Path) -> Result<(), BaselineError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| BaselineError::Invalid { what: "swap path", value: format!("{} holds a NUL byte", path.display()) })?;
    // SAFETY: swapoff takes a NUL-terminated path.
    if unsafe { libc::swapoff(c.as_ptr()) } != 0 {
        return Err(last_os(format!("swapoff {}", path.display())));
    }
    Ok(())
}

/// Writes the swap v1 header for `size` bytes of swap at the start of `path`
/// (a device, or a file already `size` bytes long): version 1, last_page and
/// nr_badpages 0 at offset 1024, "SWAPSPACE2" at the end of page 0.
pub fn write_swap_header(path: &Path, size: u64) -> Result<(), BaselineError> {
    let last_page = u32::try_from(size / heap::PAGE as u64 - 1)
        .map_err(|_| BaselineError::Invalid { what: "swap size", value: format!("{size} bytes is too large for a swap header") })?;
    let mut page = vec![0u8; heap::PAGE];
    page[1024..1028].copy_from_slice(&1u32.to_ne_bytes());
    page[1028..1032].copy_from_slice(&last_page.to_ne_bytes());
    page[1032..1036].copy_from_slice(&0u32.to_ne_bytes());
    page[4086..4096].copy_from_slice(b"SWAPSPACE2");
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(os(format!("opening {}", path.display())))?;
    f.write_all(&page).and_then(|_| f.sync_all()).map_err(os(format!("writing the swap header to {}", path.display())))
}

/// zram's own counters, from `mm_stat`.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct ZramCounters {
    /// Uncompressed bytes stored (same-filled pages included).
    pub orig_bytes: u64,
    /// Compressed bytes.
    pub compr_bytes: u64,
    /// Memory zram uses, allocator overhead included.
    pub mem_used_bytes: u64,
    /// Pages stored as one repeated word (zero pages among them), using no memory.
    pub same_pages: u64,
    /// Pages that did not compress and are stored whole.
    pub huge_pages: u64,
}

impl ZramCounters {
    /// Uncompressed bytes per byte of memory zram uses (0 when empty).
    pub fn ratio(&self) -> f64 {
        if self.mem_used_bytes > 0 {
            self.orig_bytes as f64 / self.mem_used_bytes as f64
        } else {
            0.0
        }
    }
}

/// Reads zram0's `mm_stat`.
pub fn zram_counters() -> Result<ZramCounters, BaselineError> {
    let path = zram_file("mm_stat");
    let s = read(&path)?;
    let v: Vec<u64> = s.split_whitespace().map_while(|x| x.parse().ok()).collect();
    if v.len() < 3 {
        return Err(BaselineError::Parse { path, value: s });
    }
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Ok(ZramCounters { orig_bytes: v[0], compr_bytes: v[1], mem_used_bytes: v[2], same_pages: at(5), huge_pages: at(7) })
}

/// A memory cgroup with a limit (v2 `memory.max` with `memory.swap.max` left
/// at max, or v1 `memory.limit_in_bytes`). On drop its tasks are moved to the
/// root cgroup and it is removed; on v2, the memory controller is disabled
/// again in the root's subtree_control if this guard enabled it.
pub struct MemCgroup {
    dir: PathBuf,
    root: CgroupRoot,
    enabled_memory_v2: bool,
}

impl MemCgroup {
    /// Makes `farmem-bench-<pid>` under the memory controller with `limit` bytes.
    /// Leftover `farmem-bench-*` cgroups of dead processes with no tasks are removed first.
    pub fn new(limit: u64) -> Result<Self, BaselineError> {
        let root = memory_cgroup_root()?;
        remove_stale_cgroups(&root.path);
        let mut enabled_memory_v2 = false;
        if root.v2 {
            let ctl = root.path.join("cgroup.subtree_control");
            if !read(&ctl)?.split_whitespace().any(|c| c == "memory") {
                write(&ctl, "+memory")?;
                enabled_memory_v2 = true;
            }
        }
        let dir = root.path.join(format!("{CGROUP_PREFIX}{}", std::process::id()));
        if let Err(e) = fs::create_dir(&dir) {
            if enabled_memory_v2 {
                let _ = fs::write(root.path.join("cgroup.subtree_control"), "-memory");
            }
            return Err(BaselineError::Os { what: format!("creating {}", dir.display()), source: e });
        }
        let cg = MemCgroup { dir, root, enabled_memory_v2 };
        if cg.root.v2 {
            write(cg.dir.join("memory.max"), &limit.to_string())?;
            let swap_max = cg.dir.join("memory.swap.max");
            if swap_max.exists() {
                write(swap_max, "max")?;
            }
        } else {
            write(cg.dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        }
        Ok(cg)
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether it is a cgroup v2 group.
    pub fn is_v2(&self) -> bool {
        self.root.v2
    }

    /// How many times the OOM killer killed a process of the group, when the
    /// kernel says (`oom_kill` of v2 `memory.events`, v1 `memory.oom_control`).
    pub fn oom_kills(&self) -> Option<u64> {
        let file = if self.root.v2 { "memory.events" } else { "memory.oom_control" };
        let text = fs::read_to_string(self.dir.join(file)).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
    }

    /// Moves process `pid` into the group.
    pub fn add(&self, pid: i32) -> Result<(), BaselineError> {
        write(self.dir.join("cgroup.procs"), &pid.to_string())
    }

    /// Sets the group's own swappiness (v1 `memory.swappiness`; v2 has none and
    /// follows `vm.swappiness`).
    pub fn set_swappiness(&self, value: u32) -> Result<(), BaselineError> {
        if self.root.v2 {
            return Ok(());
        }
        write(self.dir.join("memory.swappiness"), &value.to_string())
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        if let Ok(pids) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in pids.split_whitespace() {
                let _ = fs::write(self.root.path.join("cgroup.procs"), pid);
            }
        }
        let mut removed = false;
        for _ in 0..100 {
            if fs::remove_dir(&self.dir).is_ok() {
                removed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !removed {
            eprintln!("warning: could not remove {}", self.dir.display());
        }
        if self.enabled_memory_v2 {
            let _ = fs::write(self.root.path.join("cgroup.subtree_control"), "-memory");
        }
    }
}

/// Removes `farmem-bench-<pid>` cgroups whose process is gone and which hold no task.
fn remove_stale_cgroups(root: &Path) {
    let Ok(dir) = fs::read_dir(root) else { return };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(CGROUP_PREFIX)).and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        let empty = fs::read_to_string(e.path().join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
        if !alive && empty {
            let _ = fs::remove_dir(e.path());
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ZramRunConfig {
    /// Heap size, bytes (default 1 GiB).
    pub heap_bytes: u64,
    /// Memory cgroup limit, bytes (default 256 MiB).
    pub limit_bytes: u64,
    /// zram's compressor (default "lz4"; the kernel's default if zram lacks it).
    pub algorithm: String,
    /// Random reads to time (default 300 000).
    pub accesses: u64,
    /// Heap contents seed, for [`heap::fill`].
    pub seed: u64,
    /// `vm.swappiness` for the run (default None: leave it as it is).
    pub swappiness: Option<u32>,
}

impl Default for ZramRunConfig {
    fn default() -> Self {
        ZramRunConfig { heap_bytes: 1 << 30, limit_bytes: 256 << 20, algorithm: "lz4".into(), accesses: 300_000, seed: 1, swappiness: None }
    }
}

/// The kernel run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ZramRun {
    /// zram's compressor, as zram reports it.
    pub algorithm: String,
    /// Latency of each random read (hits and swap-ins alike).
    pub latency: LatencySummary,
    /// Reads per second of time spent in the timed reads.
    pub accesses_per_s: f64,
    /// Uncompressed bytes zram held at the end of the reads.
    pub zram_orig_bytes: u64,
    /// Compressed bytes zram held.
    pub zram_compr_bytes: u64,
    /// Memory zram used, allocator overhead included.
    pub zram_mem_used_bytes: u64,
    /// Same-filled (zero among them) pages zram held, using no memory.
    pub zram_same_pages: u64,
    /// Uncompressed bytes per byte of memory zram used (orig / mem_used_total).
    pub ratio: f64,
    /// Uncompressed bytes per byte of memory zram used, counting as stored
    /// the zero pages the swap layer kept out of zram (see `zero_pages_in_swap`).
    pub ratio_with_zero_pages: f64,
    /// Pages swapped out during the run (/proc/vmstat pswpout).
    pub swapped_out_pages: u64,
    /// Zero pages in swap at the end of the reads (swpout_zero - swpin_zero):
    /// since Linux 6.12 the swap layer records them in a bitmap and never
    /// writes them to zram, so zram's counters leave them out.
    pub zero_pages_in_swap: u64,
    /// Pages swapped in during the run (/proc/vmstat pswpin).
    pub swapped_in_pages: u64,
    /// Seconds the child took to fill the heap (the reclaim it caused included).
    pub fill_s: f64,
    /// Heap size, bytes.
    pub heap_bytes: u64,
    /// Memory cgroup limit, bytes.
    pub limit_bytes: u64,
    /// Whether the cgroup was a v2 one.
    pub cgroup_v2: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Err(Interrupted) once SIGINT or SIGTERM came while a [`SignalCatcher`] lived.
pub fn interrupted() -> Result<(), BaselineError> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(BaselineError::Interrupted)
    } else {
        Ok(())
    }
}

/// Catches SIGINT/SIGTERM while alive (see [`interrupted`]), putting the
/// old handlers back after.
pub struct SignalCatcher {
    old: [(libc::c_int, libc::sigaction); 2],
}

impl SignalCatcher {
    /// Installs the handlers and clears an earlier interruption.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        INTERRUPTED.store(false, Ordering::SeqCst);
        // SAFETY: zeroed sigaction structs are valid to fill and pass to sigaction.
        let mut old: [(libc::c_int, libc::sigaction); 2] = unsafe { [(libc::SIGINT, std::mem::zeroed()), (libc::SIGTERM, std::mem::zeroed())] };
        for (sig, prev) in &mut old {
            // SAFETY: installs an async-signal-safe handler (one atomic store);
            // sigemptyset fills a struct we own.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(*sig, &sa, prev);
            }
        }
        SignalCatcher { old }
    }
}

impl Drop for SignalCatcher {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: puts back the handler sigaction returned before.
            unsafe { libc::sigaction(*sig, prev, std::ptr::null_mut()) };
        }
    }
}

fn vmstat(key: &str) -> u64 {
    fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

/// Words at the start of the shared buffer, before the samples.
const HDR_STATE: usize = 0;
const HDR_WRONG: usize = 1;
const HDR_FIRST_WRONG: usize = 2;
const HDR_FILL_NS: usize = 3;
const HDR_WORDS: usize = 4;
/// Values of the state word.
const STATE_DONE: u64 = 2;

/// An anonymous MAP_SHARED buffer of u64 words, seen by parent and child.
struct Shared {
    ptr: *mut u64,
    words: usize,
}

impl Shared {
    fn new(words: usize) -> Result<Self, BaselineError> {
        let len = words * 8;
        // SAFETY: a fresh shared anonymous mapping, unmapped on drop.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(last_os(format!("mapping a {len}-byte shared sample buffer")));
        }
        // Touch every page here, so the buffer is charged to the parent's
        // cgroup, not the measured one.
        // SAFETY: the mapping is `len` bytes long and writable.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0, len) };
        Ok(Shared { ptr: p as *mut u64, words })
    }

    fn get(&self, i: usize) -> u64 {
        assert!(i < self.words);
        // SAFETY: i is inside the mapping; the child may write it concurrently,
        // hence the volatile read of an aligned word.
        unsafe { std::ptr::read_volatile(self.ptr.add(i)) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in new.
        unsafe { libc::munmap(self.ptr.cast(), self.words * 8) };
    }
}

/// A forked child, killed and reaped on drop unless already reaped.
struct ChildProc {
    pid: libc::pid_t,
    reaped: bool,
}

impl ChildProc {
    /// Kills and reaps the child; returns its wait status.
    fn kill_and_reap(&mut self) -> libc::c_int {
        let mut st = 0;
        if !self.reaped {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, &mut st, 0);
            }
            self.reaped = true;
        }
        st
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// What the child body gets: all of it prepared before the fork.
struct ChildArgs {
    heap_bytes: usize,
    accesses: usize,
    seed: u64,
    shared: *mut u64,
}

/// The child's work; returns an exit code (0: done, results in the buffer).
///
/// # Safety
/// Runs in a freshly forked child: it must not allocate or take locks.
type ChildBody = unsafe fn(&ChildArgs) -> i32;

/// What the parent saw at the end of the child's run.
struct ChildOutcome {
    counters: ZramCounters,
    pswpout: u64,
    pswpin: u64,
    zero_in_swap: u64,
}

/// Forks, moves the child into `cgroup`, releases it to run `body`, and
/// waits; when the child reports done, zram's counters are read while its
/// heap is still swapped out, then it is killed. SIGINT/SIGTERM (caught by
/// the caller's [`SignalCatcher`]) kill it and return Interrupted.
fn run_child(cgroup: &MemCgroup, shared: &Shared, args: &ChildArgs, body: ChildBody) -> Result<ChildOutcome, BaselineError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_os("creating a pipe to start the measured child"));
    }
    let (go_read, go_write) = (fds[0], fds[1]);
    let (pswpout0, pswpin0) = (vmstat("pswpout"), vmstat("pswpin"));
    let (zout0, zin0) = (vmstat("swpout_zero"), vmstat("swpin_zero"));
    // SAFETY: fork; the child runs only `child_main`, which makes system
    // calls, touches memory it maps or the shared buffer, allocates nothing,
    // and ends in _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = last_os("fork");
        // SAFETY: closing the pipe made above.
        unsafe {
            libc::close(go_read);
            libc::close(go_write);
        }
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: in the child, right after fork.
        unsafe { child_main(go_read, go_write, args, body) };
    }
    let mut child = ChildProc { pid, reaped: false };
    // SAFETY: the parent's copy of the read end is not needed.
    unsafe { libc::close(go_read) };
    let started = cgroup.add(pid).and_then(|_| {
        // SAFETY: writes one byte from a local to the pipe's write end.
        let n = unsafe { libc::write(go_write, [1u8].as_ptr().cast(), 1) };
        if n == 1 {
            Ok(())
        } else {
            Err(last_os("starting the measured child"))
        }
    });
    // SAFETY: closing the write end; the child saw its byte or sees EOF.
    unsafe { libc::close(go_write) };
    started?;
    let mut outcome = None;
    loop {
        interrupted()?;
        if outcome.is_none() && shared.get(HDR_STATE) == STATE_DONE {
            let zero_in_swap = vmstat("swpout_zero").saturating_sub(zout0).saturating_sub(vmstat("swpin_zero").saturating_sub(zin0));
            outcome = Some(ChildOutcome {
                counters: zram_counters()?,
                pswpout: vmstat("pswpout").saturating_sub(pswpout0),
                pswpin: vmstat("pswpin").saturating_sub(pswpin0),
                zero_in_swap,
            });
            let st = child.kill_and_reap();
            if libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL {
                break;
            }
            return Err(BaselineError::Child(describe_status(st)));
        }
        let mut st = 0;
        // SAFETY: polling our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            child.reaped = true;
            return Err(BaselineError::Child(describe_status(st)));
        }
        if r < 0 {
            return Err(last_os(format!("waiting for the measured child {pid}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(outcome.expect("set before the loop ends"))
}

/// "exited with status 3 (...)" or "was killed by signal 9 (...)".
fn describe_status(st: libc::c_int) -> String {
    if libc::WIFEXITED(st) {
        let code = libc::WEXITSTATUS(st);
        let why = match code {
            CHILD_NO_START => "it was not started",
            CHILD_NO_HEAP => "it could not map the heap",
            _ => "before finishing its reads",
        };
        format!("exited with status {code} ({why})")
    } else if libc::WIFSIGNALED(st) {
        let sig = libc::WTERMSIG(st);
        let why = if sig == libc::SIGKILL { "SIGKILL: the OOM killer, if the cgroup limit is too small for the process itself" } else { "it crashed or was signalled" };
        format!("was killed by signal {sig} ({why})")
    } else {
        format!("ended with wait status {st:#x}")
    }
}

const CHILD_NO_START: i32 = 2;
const CHILD_NO_HEAP: i32 = 3;

/// The forked child: wait to be moved into the cgroup, run the body, report
/// done and wait to be killed.
///
/// # Safety
/// Called only in a freshly forked child; allocates nothing.
unsafe fn child_main(go_read: libc::c_int, go_write: libc::c_int, args: &ChildArgs, body: ChildBody) -> ! {
    // SAFETY: raw system calls on descriptors and memory this child owns; the
    // body's own contract is the same as ours.
    unsafe {
        libc::close(go_write);
        let mut b = 0u8;
        if libc::read(go_read, (&mut b as *mut u8).cast(), 1) != 1 {
            libc::_exit(CHILD_NO_START);
        }
        libc::close(go_read);
        let code = body(args);
        if code != 0 {
            libc::_exit(code);
        }
        std::ptr::write_volatile(args.shared.add(HDR_STATE), STATE_DONE);
        loop {
            libc::pause();
        }
    }
}

/// The measured workload: map and fill the heap, then time random reads and
/// check every page read against what [`heap::fill_page`] makes.
///
/// # Safety
/// Runs in a forked child; `args.shared` maps HDR_WORDS + accesses words.
unsafe fn zram_workload(args: &ChildArgs) -> i32 {
    // SAFETY: memory this child maps itself and the shared buffer, within
    // their bounds; no allocation (heap::fill_page allocates nothing).
    unsafe {
        let (heap_bytes, n, seed, out) = (args.heap_bytes, args.accesses, args.seed, args.shared);
        let p = libc::mmap(std::ptr::null_mut(), heap_bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        if p == libc::MAP_FAILED {
            return CHILD_NO_HEAP;
        }
        // Page by page, as the first-touch baseline and farmem see it.
        libc::madvise(p, heap_bytes, libc::MADV_NOHUGEPAGE);
        let base = p as *mut u8;
        let t = Instant::now();
        heap::fill(std::slice::from_raw_parts_mut(base, heap_bytes), seed);
        *out.add(HDR_FILL_NS) = t.elapsed().as_nanos() as u64;
        let pages = heap_bytes / heap::PAGE;
        let samples = out.add(HDR_WORDS);
        let mut expect = [0u8; heap::PAGE];
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut wrong = 0u64;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let page = (x % pages as u64) as usize;
            let word = page % (heap::PAGE / 8);
            let at = base.add(page * heap::PAGE);
            let s = Instant::now();
            let v = std::ptr::read_volatile(at.add(word * 8) as *const u64);
            *samples.add(i) = s.elapsed().as_nanos() as u64;
            // Check the whole page, outside the timed part.
            let got = std::slice::from_raw_parts(at as *const u8, heap::PAGE);
            if !page_is_right(got, v, word, seed, page, &mut expect) {
                if wrong == 0 {
                    *out.add(HDR_FIRST_WRONG) = page as u64;
                }
                wrong += 1;
            }
        }
        *out.add(HDR_WRONG) = wrong;
        0
    }
}

/// Whether `got` (page `page` of the heap made with `seed`) and the word `v`
/// read from it at word index `word` are what [`heap::fill_page`] writes.
/// `scratch` receives the expected page. Allocates nothing.
fn page_is_right(got: &[u8], v: u64, word: usize, seed: u64, page: usize, scratch: &mut [u8; heap::PAGE]) -> bool {
    heap::fill_page(scratch, seed, page);
    let e = u64::from_ne_bytes(scratch[word * 8..word * 8 + 8].try_into().unwrap_or([0; 8]));
    v == e && got == &scratch[..]
}

/// Runs the zram swap-in baseline (see the module doc): returns the latency
/// of `cfg.accesses` random reads of a `cfg.heap_bytes` heap of
/// [`heap::fill`] pages held under a `cfg.limit_bytes` memory cgroup limit
/// with zram swap, and zram's counters at the end. Call it before starting
/// threads of your own if you can: it forks. A read that returns other bytes
/// than were written is an error ([`BaselineError::WrongBytes`]).
pub fn measure_zram_swapin(cfg: &ZramRunConfig) -> Result<ZramRun, BaselineError> {
    let heap_bytes = (cfg.heap_bytes as usize).next_multiple_of(heap::PAGE);
    if heap_bytes < 16 * heap::PAGE {
        return Err(BaselineError::Invalid { what: "heap_bytes", value: format!("{} is below 16 pages", cfg.heap_bytes) });
    }
    if cfg.limit_bytes < 4 << 20 {
        return Err(BaselineError::Invalid { what: "limit_bytes", value: format!("{} is below 4 MiB, too little for the process itself", cfg.limit_bytes) });
    }
    if cfg.accesses == 0 || cfg.accesses > 1 << 32 {
        return Err(BaselineError::Invalid { what: "accesses", value: format!("{} is not in 1..=2^32", cfg.accesses) });
    }
    kernel_available()?;
    let n = cfg.accesses as usize;
    let _signals = SignalCatcher::new();
    let mut zram = ZramSwap::new(&cfg.algorithm, 2 * heap_bytes as u64)?;
    if let Some(s) = cfg.swappiness {
        zram.set_swappiness(s)?;
    }
    interrupted()?;
    let cgroup = MemCgroup::new(cfg.limit_bytes)?;
    if let Some(s) = cfg.swappiness {
        cgroup.set_swappiness(s)?;
    }
    let shared = Shared::new(HDR_WORDS + n)?;
    interrupted()?;
    let args = ChildArgs { heap_bytes, accesses: n, seed: cfg.seed, shared: shared.ptr };
    let outcome = run_child(&cgroup, &shared, &args, zram_workload)?;
    let wrong = shared.get(HDR_WRONG);
    if wrong > 0 {
        return Err(BaselineError::WrongBytes { wrong, accesses: cfg.accesses, first_page: shared.get(HDR_FIRST_WRONG) });
    }
    let mut hist = histogram();
    let mut total_ns = 0u64;
    for i in 0..n {
        let v = shared.get(HDR_WORDS + i).max(1);
        total_ns += v;
        hist.record(v).map_err(|_| BaselineError::Parse { path: "the child's latency samples".into(), value: format!("{v} ns is out of the histogram's range") })?;
    }
    let latency = LatencySummary::from_ns(&hist, total_ns as f64 / 1e9);
    let c = outcome.counters;
    Ok(ZramRun {
        algorithm: zram.algorithm().to_string(),
        accesses_per_s: latency.per_s,
        latency,
        zram_orig_bytes: c.orig_bytes,
        zram_compr_bytes: c.compr_bytes,
        zram_mem_used_bytes: c.mem_used_bytes,
        zram_same_pages: c.same_pages,
        ratio: c.ratio(),
        ratio_with_zero_pages: if c.mem_used_bytes > 0 {
            (c.orig_bytes + outcome.zero_in_swap * heap::PAGE as u64) as f64 / c.mem_used_bytes as f64
        } else {
            0.0
        },
        swapped_out_pages: outcome.pswpout,
        zero_pages_in_swap: outcome.zero_in_swap,
        swapped_in_pages: outcome.pswpin,
        fill_s: shared.get(HDR_FILL_NS) as f64 / 1e9,
        heap_bytes: heap_bytes as u64,
        limit_bytes: cfg.limit_bytes,
        cgroup_v2: cgroup.is_v2(),
    })
}

/// The ratio zram gets on exactly the given pages.
#[derive(Debug, Clone, Serialize)]
pub struct ZramRatio {
    /// zram's compressor, as zram reports it.
    pub algorithm: String,
    /// zram's counters after writing the pages.
    pub counters: ZramCounters,
    /// Uncompressed bytes per byte of memory zram used (orig / mem_used_total).
    pub ratio: f64,
}

/// Writes `pages` to /dev/zram0 configured with `algorithm` (the kernel's
/// default if zram lacks it) as a plain block device with O_DIRECT (no swap),
/// reads its counters, and resets it. A partial last page is padded with zeros.
pub fn zram_ratio(pages: &[u8], algorithm: &str) -> Result<ZramRatio, BaselineError> {
    if pages.is_empty() {
        return Err(BaselineError::Invalid { what: "pages", value: "no bytes given".into() });
    }
    kernel_available()?;
    let _signals = SignalCatcher::new();
    let len = pages.len().next_multiple_of(heap::PAGE);
    let _zram = ZramConfigured::new(algorithm, len as u64)?;
    let algorithm = current_algorithm()?;
    let counters = {
        let mut f = fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT | libc::O_CLOEXEC).open(ZRAM_DEV).map_err(os(format!("opening {ZRAM_DEV}")))?;
        // O_DIRECT wants an aligned buffer: copy through one.
        let chunk = 1 << 20;
        let buf = Aligned::new(chunk)?;
        // SAFETY: `buf` maps `chunk` writable bytes and outlives the slice.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.0, chunk) };
        for c in pages.chunks(chunk) {
            interrupted()?;
            dst[..c.len()].copy_from_slice(c);
            let n = c.len().next_multiple_of(heap::PAGE);
            dst[c.len()..n].fill(0);
            f.write_all(&dst[..n]).map_err(os(format!("writing to {ZRAM_DEV}")))?;
        }
        drop(f);
        zram_counters()?
    };
    Ok(ZramRatio { algorithm, ratio: counters.ratio(), counters })
}

/// A page-aligned anonymous mapping, unmapped on drop.
struct Aligned(*mut u8, usize);

impl Aligned {
    fn new(len: usize) -> Result<Self, BaselineError> {
        // SAFETY: a fresh private anonymous mapping, unmapped on drop.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(last_os(format!("mapping a {len}-byte O_DIRECT buffer")));
        }
        Ok(Aligned(p.cast(), len))
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: unmapping what new mapped.
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}

/// Held by the tests that change zram, swap, zswap or cgroups: a test that
/// compares the machine's state before and after must not see another's.
#[cfg(test)]
pub(crate) static MACHINE_TEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    fn machine_state() -> (String, String, String, String) {
        (read(SWAPPINESS).unwrap(), current_algorithm().unwrap(), read("/proc/swaps").unwrap(), fs::read_to_string(ZSWAP_ENABLED).unwrap_or_default())
    }

    fn assert_restored(before: &(String, String, String, String)) {
        assert_eq!(&machine_state(), before, "swappiness, zram0's compressor, zswap or the swaps changed");
        assert_eq!(read(zram_file("disksize")).unwrap().trim(), "0");
        let root = memory_cgroup_root().unwrap();
        assert!(!root.path.join(format!("{CGROUP_PREFIX}{}", std::process::id())).exists(), "the cgroup is left");
    }

    /// Fails the way a broken workload would.
    unsafe fn exits_with_7(_: &ChildArgs) -> i32 {
        7
    }

    /// Crashes the way a buggy workload would.
    unsafe fn aborts(_: &ChildArgs) -> i32 {
        // SAFETY: ends this forked child.
        unsafe { libc::abort() }
    }

    #[test]
    fn the_guards_restore_the_machine_when_the_workload_fails() {
        let _machine = MACHINE_TEST.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = kernel_available() {
            println!("skipped: {e}");
            return;
        }
        // Enable zswap for the test, if this kernel has it, to see the guard
        // turn it off and back on; the setting is put back at the end.
        let zswap_before = fs::read_to_string(ZSWAP_ENABLED).ok();
        struct PutBack(Option<String>);
        impl Drop for PutBack {
            fn drop(&mut self) {
                if let Some(v) = &self.0 {
                    let _ = fs::write(ZSWAP_ENABLED, v.trim());
                }
            }
        }
        let _put_back = PutBack(zswap_before.clone());
        if zswap_before.is_some() {
            write(ZSWAP_ENABLED, "Y").unwrap();
        }
        let before = machine_state();
        for (body, expect) in [(exits_with_7 as ChildBody, "exited with status 7"), (aborts as ChildBody, "killed by signal 6")] {
            let r = (|| {
                let _signals = SignalCatcher::new();
                let mut zram = ZramSwap::new("lz4", 64 << 20)?;
                zram.set_swappiness(100)?;
                assert_eq!(read(SWAPPINESS).unwrap().trim(), "100");
                assert!(read("/proc/swaps").unwrap().contains(ZRAM_DEV));
                if zswap_before.is_some() {
                    assert_eq!(read(ZSWAP_ENABLED).unwrap().trim(), "N", "zswap is on during the run");
                }
                let cgroup = MemCgroup::new(32 << 20)?;
                let shared = Shared::new(HDR_WORDS + 1)?;
                let args = ChildArgs { heap_bytes: 1 << 20, accesses: 1, seed: 1, shared: shared.ptr };
                run_child(&cgroup, &shared, &args, body).map(|_| ())
            })();
            match r {
                Err(BaselineError::Child(m)) => assert!(m.contains(expect), "{m}"),
                other => panic!("expected a child failure, got {other:?}"),
            }
            assert_restored(&before);
        }
    }

    #[test]
    fn a_wrong_byte_anywhere_in_a_page_is_caught() {
        let mut page = [0u8; heap::PAGE];
        let mut scratch = [0u8; heap::PAGE];
        for index in 0..64 {
            heap::fill_page(&mut page, 3, index);
            let word = index % 512;
            let v = u64::from_ne_bytes(page[word * 8..word * 8 + 8].try_into().unwrap());
            assert!(page_is_right(&page, v, word, 3, index, &mut scratch));
            assert!(!page_is_right(&page, v ^ 1, word, 3, index, &mut scratch), "a wrong word read");
            assert!(
                !page_is_right(&page, v, word, 3, index + 1, &mut scratch) || (heap::page_kind(3, index) == heap::PageKind::Zero && heap::page_kind(3, index + 1) == heap::PageKind::Zero),
                "another page's bytes"
            );
            page[(index * 61) % heap::PAGE] ^= 0x10;
            assert!(!page_is_right(&page, v, word, 3, index, &mut scratch), "a flipped bit elsewhere in the page");
        }
    }

    #[test]
    fn bad_configurations_are_refused_before_touching_anything() {
        let bad = [
            ZramRunConfig { heap_bytes: 4096, ..ZramRunConfig::default() },
            ZramRunConfig { limit_bytes: 1 << 20, ..ZramRunConfig::default() },
            ZramRunConfig { accesses: 0, ..ZramRunConfig::default() },
        ];
        for cfg in bad {
            match measure_zram_swapin(&cfg) {
                Err(BaselineError::Invalid { .. }) => {}
                other => panic!("{cfg:?} gave {other:?}"),
            }
        }
        assert!(matches!(zram_ratio(&[], "lz4"), Err(BaselineError::Invalid { .. })));
    }

    #[test]
    fn mm_stat_parses_and_errors_read_as_sentences() {
        if Path::new(ZRAM_SYS).exists() {
            zram_counters().unwrap();
        }
        assert_eq!(BaselineError::NotRoot.to_string(), "the kernel baseline needs root: it configures /dev/zram0, swap and a memory cgroup");
        let c = ZramCounters { orig_bytes: 300, mem_used_bytes: 100, ..ZramCounters::default() };
        assert_eq!(c.ratio(), 3.0);
        assert_eq!(ZramCounters::default().ratio(), 0.0);
    }
}
