//! `farmem bench fault`: fault-back latency from each farmem tier configuration,
//! beside, in the same run, the machine's own baselines.

use std::path::PathBuf;
use std::sync::Arc;

use farmem_tiers::{Codec, CompressedConfig, CompressedTier, MmapTier, RawTier, Tier};
use serde::Serialize;

use crate::farmem_runs::{self, CappedRun, FarmemRun};
use crate::{first_touch, kernel};

/// What to run.
#[derive(Debug, Clone)]
pub struct FaultBenchConfig {
    /// Heap size for the fault walks and the kernel run, bytes.
    pub size: usize,
    /// Faults timed per run.
    pub accesses: usize,
    /// Where to write the JSON figures.
    pub json: Option<PathBuf>,
    /// Whether to run the kernel's zram baseline.
    pub kernel: bool,
    /// How the fault handlers serve faults.
    pub service: farmem_runs::Service,
    /// Second tiers to measure beside T1, each a fresh tier per run.
    pub spill: Vec<SpillBench>,
}

/// A second tier `farmem bench fault --tier` measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpillBench {
    /// The CXL/DAX tier over this path (a /dev/dax device, or a new or empty
    /// file), or over a memfd when `None`.
    Mmap(Option<PathBuf>),
    /// The file tier, its spill file in this directory.
    File(PathBuf),
    /// The remote tier on this store (`redis://HOST:PORT`, `memcached://...`).
    Remote(farmem_tiers::RemoteSpec),
}

impl std::str::FromStr for SpillBench {
    type Err = String;

    /// `mmap:PATH`, `mmap:memfd`, `file:DIR`, or a remote tier as a tier spec writes it.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("redis:") || s.starts_with("memcached:") {
            return match s.parse::<farmem_tiers::TierSpec>().map_err(|e| format!("--tier {s}: {e}"))?.spill.pop() {
                Some(farmem_tiers::SpillTier::Remote(r)) => Ok(SpillBench::Remote(r)),
                other => Err(format!("--tier {s}: not a remote tier ({other:?})")),
            };
        }
        match s.split_once(':') {
            Some(("mmap", "memfd")) => Ok(SpillBench::Mmap(None)),
            Some(("mmap", path)) if path.starts_with('/') => Ok(SpillBench::Mmap(Some(PathBuf::from(path)))),
            Some(("mmap", path)) => Err(format!("--tier mmap:{path}: the path must be absolute (or `memfd`)")),
            Some(("file", dir)) if dir.starts_with('/') => Ok(SpillBench::File(PathBuf::from(dir))),
            Some(("file", dir)) => Err(format!("--tier file:{dir}: the directory must be absolute")),
            _ => Err(format!("--tier {s}: expected mmap:PATH (a /dev/dax device or a new or empty file), mmap:memfd, file:DIR, redis://HOST:PORT or memcached://HOST:PORT")),
        }
    }
}

impl SpillBench {
    fn label(&self) -> String {
        match self {
            SpillBench::Mmap(None) => "mmap (raw, memfd)".into(),
            SpillBench::Mmap(Some(p)) => format!("mmap (raw, {})", p.display()),
            SpillBench::File(d) => format!("file ({})", d.display()),
            SpillBench::Remote(r) => format!("{} ({})", r.protocol.scheme(), r.server()),
        }
    }

    fn make(&self, limit_bytes: u64) -> Result<Arc<dyn Tier>, String> {
        let t = match self {
            SpillBench::Mmap(None) => MmapTier::from_memfd(limit_bytes),
            SpillBench::Mmap(Some(p)) => MmapTier::open(p, limit_bytes),
            SpillBench::File(_) => unreachable!("the file tier is run by spill::run"),
            SpillBench::Remote(_) => unreachable!("the remote tier is run by remote::run"),
        };
        Ok(Arc::new(t.map_err(|e| e.to_string())?))
    }
}

/// The figures, flat where the issue names keys, runs in full below.
#[derive(Debug, Serialize)]
pub struct FaultBenchReport {
    /// lz4 fault-back p50, microseconds, as the program sees it.
    pub p50_us: f64,
    /// lz4 p99.
    pub p99_us: f64,
    /// lz4 p99.9.
    pub p999_us: f64,
    /// lz4 faults per second from one thread.
    pub faults_per_s: f64,
    /// lz4 compression ratio (bytes in per byte of tier memory).
    pub ratio: f64,
    /// The engine's own floor: a fault served with no decompression, p50.
    pub floor_p50_us: f64,
    /// Fault handler threads that served the lz4 run.
    pub fault_handlers: usize,
    /// Who served the faults: `thread` (the handler threads) or `signal` (the
    /// faulting thread, in its SIGBUS handler).
    pub fault_mode: &'static str,
    /// The lz4 run's fault handler CPU time per fault, microseconds.
    pub handler_cpu_us_per_fault: f64,
    /// A plain first-touch anonymous page fault, p50.
    pub first_touch_p50_us: f64,
    /// The bare mechanism of signal mode (SIGBUS, one UFFDIO_COPY, no
    /// runtime), p50: signal mode's floor on this machine (None if skipped).
    pub signal_floor_p50_us: Option<f64>,
    /// The bare mechanism of thread mode (a handler thread pinned to the
    /// faulting thread's CPU: poll, read, one UFFDIO_COPY), p50: thread
    /// mode's floor on this machine (None if skipped).
    pub thread_floor_p50_us: Option<f64>,
    /// The same with a bare handler pinned to each CPU, all polling the one
    /// userfaultfd, p50: the floor of farmem's arrangement.
    pub thread_floor_each_cpu_p50_us: Option<f64>,
    /// The first `--tier` run's fault-back p50 (None without `--tier`).
    pub spill_p50_us: Option<f64>,
    /// Its p99.
    pub spill_p99_us: Option<f64>,
    /// Its p50 over lz4's (T1's) p50, from the same invocation.
    pub spill_over_t1_p50: Option<f64>,
    /// The first remote `--tier`'s bare GET of a 4 KiB value from the same
    /// server, p50, same invocation (None without a remote `--tier`).
    pub remote_get_p50_us: Option<f64>,
    /// Its p99.
    pub remote_get_p99_us: Option<f64>,
    /// The first remote `--tier`'s demotion rate from T1, MB/s of pages.
    pub remote_demote_mb_per_s: Option<f64>,
    /// The kernel's zram swap-in p50 (None when skipped).
    pub kernel_zram_p50_us: Option<f64>,
    /// The kernel's zram swap-in p99.
    pub kernel_zram_p99_us: Option<f64>,
    /// The kernel's zram swap-in p99.9.
    pub kernel_zram_p999_us: Option<f64>,
    /// The kernel run's random reads per second (heap over a cgroup limit).
    pub kernel_zram_accesses_per_s: Option<f64>,
    /// zram's own ratio (lz4) in the kernel run.
    pub kernel_zram_ratio: Option<f64>,
    /// zram's lzo-rle ratio on the same pages farmem compressed.
    pub zram_lzo_rle_ratio: Option<f64>,
    /// farmem's random reads per second with the same heap held to the same cap.
    pub farmem_capped_accesses_per_s: f64,
    /// Every farmem run.
    pub runs: Vec<FarmemRun>,
    /// The capped farmem run.
    pub capped: CappedRun,
    /// The first-touch baseline.
    pub first_touch: crate::stats::LatencySummary,
    /// The bare signal-mode mechanism in full.
    pub signal_floor: Option<crate::stats::LatencySummary>,
    /// The bare thread-mode mechanism, one handler on the faulting CPU, in full.
    pub thread_floor: Option<crate::stats::LatencySummary>,
    /// The bare thread-mode mechanism, a handler on each CPU, in full.
    pub thread_floor_each_cpu: Option<crate::stats::LatencySummary>,
    /// The kernel run in full.
    pub kernel_zram: Option<kernel::ZramRun>,
    /// Each file tier run, with its bare-read baseline and demotion rate.
    pub file_tiers: Vec<crate::spill::FileTierRun>,
    /// Each remote tier run, with its bare-GET baseline and demotion rate.
    pub remote_tiers: Vec<crate::remote::RemoteTierRun>,
    /// Why a part was skipped.
    pub skipped: Vec<String>,
}

const SEED: u64 = 0xbe_c4;

/// Makes a fresh tier for one run.
type MakeTier = Box<dyn Fn() -> Result<Arc<dyn Tier>, String>>;

fn compressed(codec: Codec) -> Result<Arc<dyn Tier>, String> {
    let t = CompressedTier::new(CompressedConfig { codecs: vec![codec], ..CompressedConfig::default() }).map_err(|e| e.to_string())?;
    Ok(Arc::new(t))
}

/// Runs every part, prints a table, writes JSON if asked.
pub fn run(cfg: &FaultBenchConfig) -> Result<(), String> {
    let size = cfg.size.next_multiple_of(4096);
    let mut skipped = Vec::new();
    // The kernel run goes first, in a child process, before this process starts
    // any runtime thread.
    let kernel_zram = if !cfg.kernel {
        skipped.push("kernel zram run: --no-kernel".to_string());
        None
    } else {
        match kernel::kernel_available() {
            Err(e) => {
                eprintln!("skipped: kernel zram run: {e}");
                skipped.push(format!("kernel zram run: {e}"));
                None
            }
            Ok(()) => {
                eprintln!("kernel: zram (lz4) swap, {} MiB heap under a {} MiB memory cgroup limit...", size >> 20, (size / 4) >> 20);
                let zc = kernel::ZramRunConfig {
                    heap_bytes: size as u64,
                    limit_bytes: (size / 4) as u64,
                    algorithm: "lz4".into(),
                    accesses: cfg.accesses as u64,
                    seed: SEED,
                    ..kernel::ZramRunConfig::default()
                };
                Some(kernel::measure_zram_swapin(&zc).map_err(|e| format!("kernel zram run: {e}"))?)
            }
        }
    };
    let zram_lzo_rle_ratio = if kernel_zram.is_some() {
        eprintln!("kernel: zram lzo-rle ratio on the same pages...");
        let mut pages = vec![0u8; size.min(256 << 20)];
        crate::heap::fill(&mut pages, SEED);
        match kernel::zram_ratio(&pages, "lzo-rle") {
            Ok(r) => Some(r.ratio),
            Err(e @ crate::BaselineError::Interrupted) => return Err(format!("zram lzo-rle ratio: {e}")),
            Err(e) => {
                skipped.push(format!("zram lzo-rle ratio: {e}"));
                None
            }
        }
    } else {
        None
    };
    eprintln!("first-touch page faults...");
    let first_touch = first_touch::measure_first_touch(cfg.accesses.min(size / 4096)).map_err(|e| e.to_string())?;
    eprintln!("bare thread-mode faults (a handler thread, UFFDIO_COPY, no runtime)...");
    let thread_floor_of = |h| match crate::thread_floor::measure_thread_floor(cfg.accesses.min(size / 4096), h) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("skipped: bare thread-mode faults ({h:?}): {e}");
            None
        }
    };
    let thread_floor = thread_floor_of(crate::thread_floor::Handlers::SameCpu);
    let thread_floor_each_cpu = thread_floor_of(crate::thread_floor::Handlers::EachCpu);
    // Before any runtime: it takes SIGBUS's action for its duration.
    eprintln!("bare signal-mode faults (SIGBUS, UFFDIO_COPY, no runtime)...");
    let signal_floor = match crate::signal_floor::measure_signal_floor(cfg.accesses.min(size / 4096)) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("skipped: bare signal-mode faults: {e}");
            skipped.push(format!("bare signal-mode faults: {e}"));
            None
        }
    };

    let mut runs = Vec::new();
    let configs: [(&str, MakeTier); 3] = [
        ("floor (raw, no codec)", Box::new(move || Ok(Arc::new(RawTier::new(2 * size as u64).map_err(|e| e.to_string())?) as Arc<dyn Tier>))),
        ("lz4", Box::new(|| compressed(Codec::Lz4))),
        ("zstd:3", Box::new(|| compressed(Codec::Zstd { level: 3 }))),
    ];
    for (label, make) in &configs {
        eprintln!("farmem: {label}, {} MiB heap evicted, {} random faults...", size >> 20, cfg.accesses.min(size / 4096));
        runs.push(farmem_runs::random_faults(make()?, label, size, cfg.accesses, SEED, cfg.service)?);
    }
    let mut spill_runs = Vec::new();
    let mut file_runs = Vec::new();
    let mut remote_runs = Vec::new();
    for spill in &cfg.spill {
        let label = spill.label();
        if let SpillBench::Remote(spec) = spill {
            eprintln!("farmem: {label}, {} MiB heap evicted into the store, {} random faults, then as many bare 4 KiB GETs from it; then T1 demoted into it...", size >> 20, cfg.accesses.min(size / 4096));
            let r = crate::remote::run(spec, size, cfg.accesses, SEED, cfg.service)?;
            spill_runs.push(r.faults.clone());
            runs.push(r.faults.clone());
            remote_runs.push(r);
            continue;
        }
        if let SpillBench::File(dir) = spill {
            eprintln!("farmem: {label}, {} MiB heap evicted into the file, {} random faults, then as many bare 4 KiB preads of it; then T1 demoted into a new file...", size >> 20, cfg.accesses.min(size / 4096));
            let f = crate::spill::run(dir, size, cfg.accesses, SEED, cfg.service)?;
            spill_runs.push(f.faults.clone());
            runs.push(f.faults.clone());
            file_runs.push(f);
            continue;
        }
        eprintln!("farmem: {label}, {} MiB heap evicted, {} random faults...", size >> 20, cfg.accesses.min(size / 4096));
        let run = farmem_runs::random_faults(spill.make(size as u64)?, &label, size, cfg.accesses, SEED, cfg.service)?;
        spill_runs.push(run.clone());
        runs.push(run);
    }
    eprintln!("farmem: lz4, {} MiB heap held to {} MiB resident, {} random reads...", size >> 20, (size / 4) >> 20, cfg.accesses);
    let capped = farmem_runs::capped_random_reads(compressed(Codec::Lz4)?, size, size / 4, cfg.accesses, SEED, cfg.service)?;

    let lz4 = runs.iter().find(|r| r.label == "lz4").expect("lz4 run").clone();
    let floor = runs[0].clone();
    let report = FaultBenchReport {
        p50_us: lz4.p50_us,
        p99_us: lz4.p99_us,
        p999_us: lz4.p999_us,
        faults_per_s: lz4.faults_per_s,
        ratio: lz4.ratio,
        floor_p50_us: floor.p50_us,
        fault_handlers: lz4.fault_handlers,
        fault_mode: cfg.service.fault_mode.name(),
        handler_cpu_us_per_fault: lz4.handler_cpu_us_per_fault,
        spill_p50_us: spill_runs.first().map(|r| r.p50_us),
        spill_p99_us: spill_runs.first().map(|r| r.p99_us),
        spill_over_t1_p50: spill_runs.first().map(|r| r.p50_us / lz4.p50_us),
        remote_get_p50_us: remote_runs.first().map(|r| r.bare_get.p50_us),
        remote_get_p99_us: remote_runs.first().map(|r| r.bare_get.p99_us),
        remote_demote_mb_per_s: remote_runs.first().map(|r| r.demote_mb_per_s),
        first_touch_p50_us: first_touch.p50_us,
        signal_floor_p50_us: signal_floor.as_ref().map(|s| s.p50_us),
        thread_floor_p50_us: thread_floor.as_ref().map(|s| s.p50_us),
        thread_floor_each_cpu_p50_us: thread_floor_each_cpu.as_ref().map(|s| s.p50_us),
        kernel_zram_p50_us: kernel_zram.as_ref().map(|k| k.latency.p50_us),
        kernel_zram_p99_us: kernel_zram.as_ref().map(|k| k.latency.p99_us),
        kernel_zram_p999_us: kernel_zram.as_ref().map(|k| k.latency.p999_us),
        kernel_zram_accesses_per_s: kernel_zram.as_ref().map(|k| k.accesses_per_s),
        kernel_zram_ratio: kernel_zram.as_ref().map(|k| k.ratio),
        zram_lzo_rle_ratio,
        farmem_capped_accesses_per_s: capped.accesses_per_s,
        runs,
        capped,
        first_touch,
        signal_floor,
        thread_floor,
        thread_floor_each_cpu,
        kernel_zram,
        file_tiers: file_runs,
        remote_tiers: remote_runs,
        skipped,
    };
    print_table(&report);
    if let Some(path) = &cfg.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "skipped".into())
}

fn print_table(r: &FaultBenchReport) {
    println!();
    println!("{:<34} {:>9} {:>9} {:>9} {:>11} {:>7}", "fault served by", "p50 us", "p99 us", "p99.9 us", "faults/s", "ratio");
    for run in &r.runs {
        println!(
            "{:<34} {:>9.1} {:>9.1} {:>9.1} {:>11.0} {:>7.2}",
            format!("farmem {}", run.label),
            run.p50_us,
            run.p99_us,
            run.p999_us,
            run.faults_per_s,
            run.ratio
        );
    }
    let ft = &r.first_touch;
    println!("{:<34} {:>9.1} {:>9.1} {:>9.1} {:>11.0} {:>7}", "kernel first-touch fault", ft.p50_us, ft.p99_us, ft.p999_us, ft.per_s, "-");
    if let Some(s) = &r.signal_floor {
        println!("{:<34} {:>9.1} {:>9.1} {:>9.1} {:>11.0} {:>7}", "bare SIGBUS + UFFDIO_COPY", s.p50_us, s.p99_us, s.p999_us, s.per_s, "-");
    }
    for (label, s) in [("bare handler thread, same CPU", &r.thread_floor), ("bare handler thread on each CPU", &r.thread_floor_each_cpu)] {
        if let Some(s) = s {
            println!("{:<34} {:>9.1} {:>9.1} {:>9.1} {:>11.0} {:>7}", label, s.p50_us, s.p99_us, s.p999_us, s.per_s, "-");
        }
    }
    match &r.kernel_zram {
        Some(k) => println!(
            "{:<34} {:>9.1} {:>9.1} {:>9.1} {:>11.0} {:>7.2}",
            "kernel zram swap-in (lz4)", k.latency.p50_us, k.latency.p99_us, k.latency.p999_us, k.accesses_per_s, k.ratio
        ),
        None => println!("{:<34} skipped", "kernel zram swap-in"),
    }
    println!();
    println!(
        "random reads, {} MiB heap held to {} MiB resident: farmem {:.0}/s (p50 {:.1} us, p99 {:.1} us), kernel zram {}/s (p99 {} us)",
        r.capped.heap_bytes >> 20,
        r.capped.cap_bytes >> 20,
        r.capped.accesses_per_s,
        r.capped.p50_us,
        r.capped.p99_us,
        opt(r.kernel_zram_accesses_per_s),
        opt(r.kernel_zram_p99_us)
    );
    if let (Some(s), Some(k)) = (&r.signal_floor, &r.kernel_zram) {
        println!(
            "signal mode's floor here: a bare SIGBUS fault served by one UFFDIO_COPY takes {:.2}x the kernel's zram swap-in at p50 ({:.1} against {:.1} us)",
            s.p50_us / k.latency.p50_us,
            s.p50_us,
            k.latency.p50_us
        );
    }
    println!("compression on the same pages: farmem lz4 {:.2}x, zram lzo-rle {}x", r.ratio, opt(r.zram_lzo_rle_ratio));
    println!("fault mode: {}; fault handlers: {} (lz4 run), their CPU {:.1} us per fault", r.fault_mode, r.fault_handlers, r.handler_cpu_us_per_fault);
    let lz4 = r.runs.iter().find(|x| x.label == "lz4");
    if let Some(l) = lz4 {
        println!(
            "decompression over the engine's floor: {:+.0}% at p50; T1 overhead beyond compressed bytes {:.1}%",
            100.0 * (l.p50_us / r.floor_p50_us - 1.0),
            100.0 * l.tier_overhead
        );
        for spill in r.runs.iter().filter(|x| x.label.starts_with("mmap")) {
            println!("{}: fault-back p50 {:.2}x T1's (lz4) in the same run", spill.label, spill.p50_us / l.p50_us);
        }
    }
    for f in &r.file_tiers {
        let b = &f.bare_pread;
        println!(
            "{}: fault-back p50 {:.1} us, p99 {:.1} us against a bare {} 4 KiB pread of the same file p50 {:.1} us, p99 {:.1} us: {:.2}x; demotion T1 to file {:.0} MB/s ({} pages)",
            f.faults.label,
            f.faults.p50_us,
            f.faults.p99_us,
            if f.direct_io { "O_DIRECT" } else { "buffered" },
            b.p50_us,
            b.p99_us,
            f.over_bare_p50,
            f.demote_mb_per_s,
            f.demoted_pages
        );
    }
    for r in &r.remote_tiers {
        let b = &r.bare_get;
        println!(
            "{}{}: fault-back p50 {:.1} us, p99 {:.1} us against a bare 4 KiB GET from the same server p50 {:.1} us, p99 {:.1} us: {:.2}x at p50, {:.2}x at p99; demotion T1 to the store {:.0} MB/s ({} pages in {} round trips)",
            r.faults.label,
            if r.encrypted { ", encrypted" } else { ", plain" },
            r.faults.p50_us,
            r.faults.p99_us,
            b.p50_us,
            b.p99_us,
            r.over_bare_p50,
            r.over_bare_p99,
            r.demote_mb_per_s,
            r.demoted_pages,
            r.demote_batches
        );
    }
}
