//! What a run looks like from outside: the measured process's memory from
//! /proc, farmem's tiers from the shim's statistics socket, zram's and
//! zswap's pools, sampled every [`PERIOD`] on a thread of its own, with a
//! progress line on stderr.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// How often the process is sampled.
pub const PERIOD: Duration = Duration::from_millis(250);

/// The `Key: N kB` fields of /proc/PID/status or /proc/PID/smaps_rollup, in bytes.
pub fn kb_fields(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim();
            let n: u64 = v.strip_suffix("kB").unwrap_or(v).trim().parse().ok()?;
            Some((k.trim().to_string(), if v.ends_with("kB") { n * 1024 } else { n }))
        })
        .collect()
}

/// User and system CPU seconds from the text of /proc/PID/stat (fields 14
/// and 15, counted after the command name, which may hold spaces and parentheses).
pub fn stat_cpu_seconds(text: &str) -> Option<(f64, f64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) is index 11 and stime (15) index 12.
    let (u, s): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((u as f64 / hz, s as f64 / hz))
}

/// One look at the measured process and what holds memory for it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// Resident set (VmRSS), bytes.
    pub rss_bytes: u64,
    /// Proportional set size (smaps_rollup Pss), bytes.
    pub pss_bytes: u64,
    /// The process's pages in swap (VmSwap), bytes.
    pub swap_bytes: u64,
    /// farmem's tiers, bytes used (the compressed tier lives inside the
    /// process, so it is also in `rss_bytes`; a spill file is not).
    pub tier_bytes: u64,
    /// Registered pages farmem keeps resident, bytes.
    pub farmem_resident_bytes: u64,
    /// Memory zram uses (mm_stat mem_used_total), bytes.
    pub zram_bytes: u64,
    /// zswap's compressed pool (/proc/meminfo Zswap), bytes.
    pub zswap_bytes: u64,
    /// The memory cgroup's own swap count (v1 memory.stat swap, v2
    /// memory.swap.current), bytes.
    pub cgroup_swap_bytes: u64,
    /// CPU seconds of the measured process so far (user + system).
    pub cpu_s: f64,
}

impl Sample {
    /// Memory the run costs the machine: the process's resident set, plus the
    /// compressed pool the kernel keeps outside it (zram or zswap). farmem's
    /// compressed tier is already inside the resident set.
    pub fn footprint_bytes(&self) -> u64 {
        self.rss_bytes + self.zram_bytes + self.zswap_bytes
    }
}

/// What else to look at beside the process.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Read farmem's statistics socket of the process.
    pub farmem: bool,
    /// Read zram0's mm_stat.
    pub zram: bool,
    /// Read zswap's pool from /proc/meminfo.
    pub zswap: bool,
    /// The memory cgroup's directory, for its swap count.
    pub cgroup: Option<std::path::PathBuf>,
}

/// Reads farmem's statistics of `pid` from its socket (see preload/src/server.rs
/// for where it may be); None when the shim serves none (yet).
pub fn farmem_snapshot(pid: u32) -> Option<Value> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let mut dirs = vec![format!("/run/farmem"), format!("/tmp/farmem-{uid}")];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        dirs.insert(1, format!("{}/farmem", x.to_string_lossy()));
    }
    dirs.iter().find_map(|d| {
        let mut s = UnixStream::connect(format!("{d}/{pid}.sock")).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    })
}

/// The value of `key` (a `key value` line) in a memory.stat file.
fn memory_stat(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One sample of `pid` and the `sources`; None once the process is gone.
pub fn sample(pid: u32, t: f64, sources: &Sources) -> Option<Sample> {
    let status = kb_fields(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?);
    let rollup = kb_fields(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default());
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| stat_cpu_seconds(&s)).map_or(0.0, |(u, s)| u + s);
    let mut s = Sample {
        t,
        rss_bytes: status.get("VmRSS").copied().unwrap_or(0),
        pss_bytes: rollup.get("Pss").copied().unwrap_or(0),
        swap_bytes: status.get("VmSwap").copied().unwrap_or(0),
        cpu_s: cpu,
        ..Sample::default()
    };
    if sources.farmem {
        if let Some(v) = farmem_snapshot(pid) {
            s.tier_bytes = v.get("tier_bytes").and_then(Value::as_u64).unwrap_or(0);
            s.farmem_resident_bytes = v.get("resident_bytes").and_then(Value::as_u64).unwrap_or(0);
        }
    }
    if sources.zram {
        s.zram_bytes = crate::kernel::zram_counters().map_or(0, |c| c.mem_used_bytes);
    }
    if sources.zswap {
        s.zswap_bytes = kb_fields(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default()).get("Zswap").copied().unwrap_or(0);
    }
    if let Some(dir) = &sources.cgroup {
        s.cgroup_swap_bytes = std::fs::read_to_string(dir.join("memory.swap.current"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .or_else(|| memory_stat(&std::fs::read_to_string(dir.join("memory.stat")).ok()?, "swap"))
            .unwrap_or(0);
    }
    Some(s)
}

/// Samples a process every [`PERIOD`] until stopped or the process is gone,
/// printing a progress line (`label`, time, resident, tiers or swap) every second.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling `pid`; `t0` is the run's start.
    pub fn start(pid: u32, t0: Instant, sources: Sources, label: String) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out: Vec<Sample> = Vec::new();
            let mut last_print = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let Some(s) = sample(pid, t0.elapsed().as_secs_f64(), &sources) else { break };
                if last_print.elapsed() >= Duration::from_secs(1) {
                    last_print = Instant::now();
                    let outside = s.tier_bytes.max(s.zram_bytes + s.zswap_bytes);
                    eprint!("\r{label}: {:>5.0} s  resident {:>6} MiB  tiers/zram/zswap {:>6} MiB  swap {:>6} MiB   ", s.t, s.rss_bytes >> 20, outside >> 20, s.swap_bytes >> 20);
                    let _ = std::io::stderr().flush();
                }
                out.push(s);
                std::thread::sleep(PERIOD);
            }
            out
        });
        Sampler { stop, thread }
    }

    /// Stops and returns the samples taken.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let v = self.thread.join().unwrap_or_default();
        eprintln!();
        v
    }
}

/// Peak and mean of the samples' resident set and footprint, peak swap and
/// tiers, and the largest CPU seconds seen.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MemorySummary {
    /// Largest resident set sampled, bytes.
    pub peak_rss_bytes: u64,
    /// Mean resident set over the samples, bytes.
    pub avg_rss_bytes: u64,
    /// Largest footprint (resident + zram/zswap pool), bytes.
    pub peak_footprint_bytes: u64,
    /// Mean footprint, bytes.
    pub avg_footprint_bytes: u64,
    /// Largest farmem tier use, bytes.
    pub peak_tier_bytes: u64,
    /// Largest use of swap by the process, bytes.
    pub peak_swap_bytes: u64,
    /// Largest memory zram used, bytes.
    pub peak_zram_bytes: u64,
    /// Largest zswap pool, bytes.
    pub peak_zswap_bytes: u64,
    /// Samples taken.
    pub samples: usize,
}

/// Summarises the samples.
pub fn summarise(samples: &[Sample]) -> MemorySummary {
    let n = samples.len().max(1) as u64;
    let peak = |f: &dyn Fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    let mean = |f: &dyn Fn(&Sample) -> u64| samples.iter().map(f).sum::<u64>() / n;
    MemorySummary {
        peak_rss_bytes: peak(&|s| s.rss_bytes),
        avg_rss_bytes: mean(&|s| s.rss_bytes),
        peak_footprint_bytes: peak(&|s| s.footprint_bytes()),
        avg_footprint_bytes: mean(&|s| s.footprint_bytes()),
        peak_tier_bytes: peak(&|s| s.tier_bytes),
        peak_swap_bytes: peak(&|s| s.swap_bytes),
        peak_zram_bytes: peak(&|s| s.zram_bytes),
        peak_zswap_bytes: peak(&|s| s.zswap_bytes),
        samples: samples.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tredis-server\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  123456 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nRssAnon:\t    8192 kB\nVmSwap:\t     512 kB\nThreads:\t5\n";
    const ROLLUP: &str = "55d0c0000000-7ffd00000000 ---p 00000000 00:00 0                          [rollup]\nRss:               10240 kB\nPss:                9000 kB\nSwap:                512 kB\n";

    #[test]
    fn status_and_rollup_fields_parse_to_bytes() {
        let s = kb_fields(STATUS);
        assert_eq!(s["VmRSS"], 10 << 20);
        assert_eq!(s["VmHWM"], 20 << 20);
        assert_eq!(s["VmSwap"], 512 << 10);
        assert_eq!(s["Threads"], 5, "a count without kB stays a count");
        assert!(!s.contains_key("Name") && !s.contains_key("State"));
        let r = kb_fields(ROLLUP);
        assert_eq!(r["Pss"], 9000 << 10);
        assert_eq!(r["Swap"], 512 << 10);
    }

    #[test]
    fn cpu_seconds_survive_a_command_name_with_spaces_and_parentheses() {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let line = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 300 0 0 0 250 50 0 0 20 0 1 0 100 1000 100";
        let (u, s) = stat_cpu_seconds(line).unwrap();
        assert_eq!((u, s), (250.0 / hz, 50.0 / hz));
        assert_eq!(stat_cpu_seconds("garbage"), None);
        assert_eq!(memory_stat("cache 5\nrss 7\nswap 4096\n", "swap"), Some(4096));
        assert_eq!(memory_stat("swapcached 1\n", "swap"), None);
    }

    #[test]
    fn the_sampler_sees_this_process_and_summaries_add_up() {
        let t0 = Instant::now();
        let s = Sampler::start(std::process::id(), t0, Sources::default(), "test".into());
        std::thread::sleep(Duration::from_millis(700));
        let samples = s.finish();
        assert!(samples.len() >= 2, "{samples:?}");
        assert!(samples.iter().all(|s| s.rss_bytes > 0 && s.pss_bytes > 0));
        assert!(samples.windows(2).all(|w| w[1].t > w[0].t));
        let fake: Vec<Sample> = [(100, 0), (300, 50)].iter().map(|&(r, z)| Sample { rss_bytes: r, zram_bytes: z, ..Sample::default() }).collect();
        let m = summarise(&fake);
        assert_eq!((m.peak_rss_bytes, m.avg_rss_bytes, m.peak_footprint_bytes, m.avg_footprint_bytes, m.peak_zram_bytes), (300, 200, 350, 225, 50));
        assert_eq!(summarise(&[]).samples, 0);
        // A process that is gone gives no sample.
        assert!(sample(u32::MAX - 1, 0.0, &Sources::default()).is_none());
    }
}
