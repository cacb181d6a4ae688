//! The kernel's own answer: zram as swap plus a memory cgroup limit.
//!
//! [`measure_zram_swapin`] sets up /dev/zram0 as swap, makes a memory cgroup
//! with the limit, forks a child into it that fills a heap (pushing most of it
//! out to zram) and times random reads, each read of a swapped-out page being a
//! swap-in. Everything it changes is undone when it returns, on error too: the
//! guards restore on drop, and SIGINT/SIGTERM during the run are caught, the
//! child killed and the guards dropped before the error is returned.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::heap;
use crate::stats::{histogram, LatencySummary};
use crate::BaselineError;

const ZRAM: &str = "/sys/block/zram0";
const ZRAM_DEV: &str = "/dev/zram0";
const CG_V1: &str = "/sys/fs/cgroup/memory";
const CG_V2: &str = "/sys/fs/cgroup";
/// `SWAP_FLAG_PREFER` from <sys/swap.h>: the low bits carry a priority.
const SWAP_FLAG_PREFER: libc::c_int = 0x8000;

fn write(path: impl AsRef<Path>, value: &str) -> Result<(), BaselineError> {
    let path = path.as_ref();
    fs::write(path, value).map_err(|source| BaselineError::Os { what: format!("writing '{value}' to {}", path.display()), source })
}

fn read(path: impl AsRef<Path>) -> Result<String, BaselineError> {
    let path = path.as_ref();
    fs::read_to_string(path).map_err(|source| BaselineError::Os { what: format!("reading {}", path.display()), source })
}

/// Whether the kernel baseline can run here; the error says why not.
pub fn kernel_available() -> Result<(), BaselineError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BaselineError::Unavailable("the kernel zram baseline needs root (it sets up swap and cgroups)".into()));
    }
    if !Path::new(ZRAM).exists() {
        let _ = std::process::Command::new("modprobe").arg("zram").status();
        if !Path::new(ZRAM).exists() {
            return Err(BaselineError::Unavailable("no zram device (/sys/block/zram0; modprobe zram failed)".into()));
        }
    }
    if cgroup_root().is_none() {
        return Err(BaselineError::Unavailable("no memory cgroup controller (v1 at /sys/fs/cgroup/memory, or v2 with +memory)".into()));
    }
    let swaps = read("/proc/swaps")?;
    if swaps.lines().any(|l| l.starts_with(ZRAM_DEV)) {
        return Err(BaselineError::Unavailable("/dev/zram0 is already in use as swap; farmem will not touch it".into()));
    }
    if read(format!("{ZRAM}/disksize"))?.trim() != "0" {
        return Err(BaselineError::Unavailable("/dev/zram0 is already configured (disksize is not 0); farmem will not touch it".into()));
    }
    Ok(())
}

/// (the cgroup root, whether it is v2).
fn cgroup_root() -> Option<(PathBuf, bool)> {
    if fs::read_to_string(format!("{CG_V2}/cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|x| x == "memory")) {
        return Some((PathBuf::from(CG_V2), true));
    }
    Path::new(&format!("{CG_V1}/memory.limit_in_bytes")).exists().then(|| (PathBuf::from(CG_V1), false))
}

/// /dev/zram0 configured as swap; swapped off and reset on drop.
pub struct ZramSwap {
    swapped_on: bool,
}

impl ZramSwap {
    /// Configures zram0 with `algorithm` (or the kernel's default if it lacks
    /// it) and `disksize` bytes, writes a swap header, and turns it on.
    pub fn new(algorithm: &str, disksize: u64) -> Result<Self, BaselineError> {
        let mut guard = ZramSwap { swapped_on: false };
        reset_zram()?;
        set_algorithm(algorithm)?;
        write(format!("{ZRAM}/disksize"), &disksize.to_string())?;
        write_swap_header(disksize)?;
        let dev = CString::new(ZRAM_DEV).expect("no NUL");
        // SAFETY: swapon takes a NUL-terminated path and flags.
        if unsafe { libc::swapon(dev.as_ptr(), SWAP_FLAG_PREFER | 100) } != 0 {
            return Err(BaselineError::Os { what: format!("swapon {ZRAM_DEV}"), source: io::Error::last_os_error() });
        }
        guard.swapped_on = true;
        Ok(guard)
    }
}

impl Drop for ZramSwap {
    fn drop(&mut self) {
        if self.swapped_on {
            let dev = CString::new(ZRAM_DEV).expect("no NUL");
            // SAFETY: swapoff takes a NUL-terminated path.
            if unsafe { libc::swapoff(dev.as_ptr()) } != 0 {
                eprintln!("warning: swapoff {ZRAM_DEV} failed: {}", io::Error::last_os_error());
            }
        }
        if let Err(e) = reset_zram() {
            eprintln!("warning: could not reset zram0: {e}");
        }
    }
}

fn reset_zram() -> Result<(), BaselineError> {
    write(format!("{ZRAM}/reset"), "1")
}

fn set_algorithm(algorithm: &str) -> Result<(), BaselineError> {
    let offered = read(format!("{ZRAM}/comp_algorithm"))?;
    if offered.split_whitespace().any(|a| a.trim_matches(|c| c == '[' || c == ']') == algorithm) {
        write(format!("{ZRAM}/comp_algorithm"), algorithm)?;
    }
    Ok(())
}

/// The swap v1 header: "SWAPSPACE2" at the end of page 0, version and size at 1024.
fn write_swap_header(disksize: u64) -> Result<(), BaselineError> {
    let mut page = vec![0u8; 4096];
    page[1024..1028].copy_from_slice(&1u32.to_ne_bytes());
    page[1028..1032].copy_from_slice(&((disksize / 4096 - 1) as u32).to_ne_bytes());
    page[4086..4096].copy_from_slice(b"SWAPSPACE2");
    let mut f = fs::OpenOptions::new().write(true).open(ZRAM_DEV).map_err(|source| BaselineError::Os { what: format!("opening {ZRAM_DEV}"), source })?;
    f.write_all(&page).and_then(|_| f.sync_all()).map_err(|source| BaselineError::Os { what: format!("writing the swap header to {ZRAM_DEV}"), source })
}

/// zram's own counters, from mm_stat.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct ZramCounters {
    /// Uncompressed bytes stored.
    pub orig_bytes: u64,
    /// Compressed bytes.
    pub compr_bytes: u64,
    /// Memory zram uses, allocator overhead included.
    pub mem_used_bytes: u64,
}

fn zram_counters() -> Result<ZramCounters, BaselineError> {
    let s = read(format!("{ZRAM}/mm_stat"))?;
    let v: Vec<u64> = s.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if v.len() < 3 {
        return Err(BaselineError::Unavailable(format!("unexpected zram mm_stat: {s}")));
    }
    Ok(ZramCounters { orig_bytes: v[0], compr_bytes: v[1], mem_used_bytes: v[2] })
}

/// A memory cgroup with a limit; tasks moved out and the group removed on drop.
pub struct MemCgroup {
    dir: PathBuf,
    root: PathBuf,
}

impl MemCgroup {
    /// Makes `farmem-bench-<pid>` under the memory controller with `limit` bytes.
    pub fn new(limit: u64) -> Result<Self, BaselineError> {
        let (root, v2) = cgroup_root().ok_or_else(|| BaselineError::Unavailable("no memory cgroup controller".into()))?;
        let dir = root.join(format!("farmem-bench-{}", std::process::id()));
        fs::create_dir(&dir).map_err(|source| BaselineError::Os { what: format!("creating {}", dir.display()), source })?;
        let cg = MemCgroup { dir, root };
        if v2 {
            write(cg.dir.join("memory.max"), &limit.to_string())?;
        } else {
            write(cg.dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        }
        Ok(cg)
    }

    /// The file a task's pid is written to, to join the group.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        if let Ok(pids) = fs::read_to_string(self.procs_path()) {
            for pid in pids.split_whitespace() {
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.dir.display());
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ZramRunConfig {
    /// Heap size, bytes.
    pub heap_bytes: u64,
    /// Memory cgroup limit, bytes.
    pub limit_bytes: u64,
    /// zram's compressor.
    pub algorithm: String,
    /// Random reads to time.
    pub accesses: u64,
    /// Heap contents seed.
    pub seed: u64,
}

impl Default for ZramRunConfig {
    fn default() -> Self {
        ZramRunConfig { heap_bytes: 1 << 30, limit_bytes: 256 << 20, algorithm: "lz4".into(), accesses: 300_000, seed: 1 }
    }
}

/// The kernel run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ZramRun {
    /// zram's compressor.
    pub algorithm: String,
    /// Latency of each random read (hits and swap-ins).
    pub latency: LatencySummary,
    /// Reads per second.
    pub accesses_per_s: f64,
    /// zram's counters after the run.
    pub zram: ZramCounters,
    /// Uncompressed bytes per byte of memory zram used.
    pub ratio: f64,
    /// Pages swapped out during the run (from /proc/vmstat pswpout).
    pub swapped_out_pages: u64,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT/SIGTERM while alive, restoring the old handlers after.
struct SignalCatcher {
    old: [(libc::c_int, libc::sigaction); 2],
}

impl SignalCatcher {
    fn new() -> Self {
        INTERRUPTED.store(false, Ordering::SeqCst);
        // SAFETY: zeroed sigaction structs are valid to fill and pass to sigaction.
        let mut old: [(libc::c_int, libc::sigaction); 2] = unsafe { [(libc::SIGINT, std::mem::zeroed()), (libc::SIGTERM, std::mem::zeroed())] };
        for (sig, prev) in &mut old {
            // SAFETY: installing an async-signal-safe handler (an atomic store).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                libc::sigaction(*sig, &sa, prev);
            }
        }
        SignalCatcher { old }
    }
}

impl Drop for SignalCatcher {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: restoring the handler sigaction returned before.
            unsafe { libc::sigaction(*sig, prev, std::ptr::null_mut()) };
        }
    }
}

fn vmstat(key: &str) -> u64 {
    fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

/// Runs the zram swap-in baseline; see the module doc.
pub fn measure_zram_swapin(cfg: &ZramRunConfig) -> Result<ZramRun, BaselineError> {
    kernel_available()?;
    let heap_bytes = (cfg.heap_bytes as usize).next_multiple_of(heap::PAGE);
    let n = cfg.accesses as usize;
    let _signals = SignalCatcher::new();
    let _zram = ZramSwap::new(&cfg.algorithm, 2 * heap_bytes as u64)?;
    let cgroup = MemCgroup::new(cfg.limit_bytes)?;
    // Shared with the child: n latency samples, then [wrong reads, done flag].
    let shared_len = (n + 2) * 8;
    // SAFETY: a fresh shared anonymous mapping, unmapped below.
    let shared = unsafe {
        libc::mmap(std::ptr::null_mut(), shared_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
    };
    if shared == libc::MAP_FAILED {
        return Err(BaselineError::Os { what: "mapping the sample buffer".into(), source: io::Error::last_os_error() });
    }
    let samples = shared as *mut u64;
    let procs = CString::new(cgroup.procs_path().into_os_string().into_encoded_bytes()).expect("no NUL");
    let pswpout0 = vmstat("pswpout ");
    // SAFETY: fork; the child below only makes system calls and touches memory
    // it maps itself or the shared buffer, and allocates nothing.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(BaselineError::Os { what: "fork".into(), source: io::Error::last_os_error() });
    }
    if pid == 0 {
        // SAFETY: the child's body, allocation-free; it ends in _exit.
        unsafe { child(&procs, heap_bytes, n, cfg.seed, samples) };
    }
    // The child raises its done flag and waits, so zram's counters are read
    // while its heap is still swapped out; then it is killed.
    let mut zram_at_end = None;
    let status = loop {
        // SAFETY: the flag word lies inside the shared buffer.
        if zram_at_end.is_none() && unsafe { std::ptr::read_volatile(samples.add(n + 1)) } == 1 {
            zram_at_end = Some(zram_counters());
            // SAFETY: ending our own child, which waits in pause().
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut st = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            break st;
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut st, 0);
                libc::munmap(shared, shared_len);
            }
            return Err(BaselineError::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: the child has exited; the buffer holds n samples and two words.
    let (hist, secs, wrong) = unsafe {
        let mut h = histogram();
        let mut total = 0u64;
        for i in 0..n {
            let v = *samples.add(i);
            total += v;
            h.record(v.max(1)).map_err(|_| BaselineError::Unavailable("latency sample out of range".into()))?;
        }
        let wrong = *samples.add(n);
        libc::munmap(shared, shared_len);
        (h, total as f64 / 1e9, wrong)
    };
    let Some(zram) = zram_at_end else {
        return Err(BaselineError::Child(format!("the measured child failed (wait status {status:#x})")));
    };
    let zram = zram?;
    if wrong > 0 {
        return Err(BaselineError::Child(format!("{wrong} reads returned wrong bytes under zram swap")));
    }
    let latency = LatencySummary::from_ns(&hist, secs);
    Ok(ZramRun {
        algorithm: read(format!("{ZRAM}/comp_algorithm")).map(|s| s.split_whitespace().find(|a| a.starts_with('[')).unwrap_or("?").trim_matches(|c| c == '[' || c == ']').to_string()).unwrap_or_default(),
        accesses_per_s: latency.per_s,
        latency,
        ratio: if zram.mem_used_bytes > 0 { zram.orig_bytes as f64 / zram.mem_used_bytes as f64 } else { 0.0 },
        zram,
        swapped_out_pages: vmstat("pswpout ").saturating_sub(pswpout0),
    })
}

/// The measured child: join the cgroup, fill the heap, time random reads.
///
/// # Safety
/// Called only in a freshly forked child; `samples` maps n+2 shared words.
unsafe fn child(procs: &CString, heap_bytes: usize, n: usize, seed: u64, samples: *mut u64) -> ! {
    // SAFETY (whole body): raw system calls on memory this child owns; no allocation.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
        let mut digits = [0u8; 20];
        let mut pid = libc::getpid() as u64;
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (pid % 10) as u8;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        if fd < 0 || libc::write(fd, digits[at..].as_ptr().cast(), digits.len() - at) < 0 {
            libc::_exit(2);
        }
        libc::close(fd);
        let p = libc::mmap(std::ptr::null_mut(), heap_bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        if p == libc::MAP_FAILED {
            libc::_exit(3);
        }
        let heap_slice = std::slice::from_raw_parts_mut(p as *mut u8, heap_bytes);
        heap::fill(heap_slice, seed);
        let pages = heap_bytes / heap::PAGE;
        let mut expect = [0u8; heap::PAGE];
        let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let mut wrong = 0u64;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let page = (x % pages as u64) as usize;
            let off = page * heap::PAGE + (page % 512) * 8;
            let s = Instant::now();
            let v = std::ptr::read_volatile((p as *const u8).add(off) as *const u64);
            *samples.add(i) = s.elapsed().as_nanos() as u64;
            heap::fill_page(&mut expect, seed, page);
            let e = u64::from_ne_bytes(expect[(page % 512) * 8..(page % 512) * 8 + 8].try_into().unwrap_or([0; 8]));
            if v != e {
                wrong += 1;
            }
        }
        *samples.add(n) = wrong;
        std::ptr::write_volatile(samples.add(n + 1), 1);
        loop {
            libc::pause();
        }
    }
}

/// The ratio zram gets on exactly these pages with `algorithm`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ZramRatio {
    /// zram's counters after writing the pages.
    pub zram: ZramCounters,
    /// Uncompressed bytes per byte of memory used.
    pub ratio: f64,
}

/// Writes `pages` to /dev/zram0 configured with `algorithm` (no swap) and reads its counters.
pub fn zram_ratio(pages: &[u8], algorithm: &str) -> Result<ZramRatio, BaselineError> {
    kernel_available()?;
    reset_zram()?;
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = reset_zram();
        }
    }
    let _reset = Reset;
    set_algorithm(algorithm)?;
    let len = pages.len().next_multiple_of(heap::PAGE) as u64;
    write(format!("{ZRAM}/disksize"), &len.to_string())?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(ZRAM_DEV)
        .map_err(|source| BaselineError::Os { what: format!("opening {ZRAM_DEV}"), source })?;
    // O_DIRECT wants an aligned buffer: copy through one.
    let chunk = 1 << 20;
    let layout = std::alloc::Layout::from_size_align(chunk, 4096).expect("valid layout");
    // SAFETY: a fresh allocation of `chunk` bytes, freed below.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    let mut r = Ok(());
    for c in pages.chunks(chunk) {
        // SAFETY: `buf` holds `chunk` bytes; c.len() <= chunk.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf, chunk) };
        dst[..c.len()].copy_from_slice(c);
        let n = c.len().next_multiple_of(heap::PAGE);
        if let Err(e) = f.write_all(&dst[..n]) {
            r = Err(BaselineError::Os { what: format!("writing to {ZRAM_DEV}"), source: e });
            break;
        }
    }
    // SAFETY: freeing the allocation made above with the same layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    r?;
    drop(f);
    let zram = zram_counters()?;
    Ok(ZramRatio { ratio: if zram.mem_used_bytes > 0 { zram.orig_bytes as f64 / zram.mem_used_bytes as f64 } else { 0.0 }, zram })
}
