//! `farmem bench policy`: a workload run for a fixed time without farmem,
//! then under farmem's policy in each mode, with resident memory,
//! throughput and stall over time. Two workloads:
//!
//! - `kv-zipf`: a store of 1 KiB values in one mapping, keys scattered over
//!   it by a multiplicative hash, driven by one thread: 90% reads, 10%
//!   writes, keys drawn from a Zipf distribution (YCSB's generator). Every
//!   page holds four random keys, so every page is warm: the worst case.
//! - `cold-tail` ([`cold_tail`]): a cache of objects of 64 B to 64 KiB, a
//!   share of them never read after loading, the rest read with Zipf.
//!
//! Every value carries its key, its version and a checksum of its body, and
//! every read checks all three, so a wrong byte anywhere ends the run with
//! an error.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use farmem_runtime::mem::Mapping;
use farmem_runtime::policy::PolicyConfig;
use farmem_runtime::Runtime;
use serde::Serialize;

use crate::plot;

pub(crate) mod cold_tail;

use cold_tail::ColdTail;

/// Bytes of one value of the store.
pub(crate) const VALUE: usize = 1024;
const PAGE: usize = 4096;

/// What to run.
#[derive(Debug, Clone)]
pub struct PolicyBenchConfig {
    /// Bytes of values.
    pub size: u64,
    /// How long each mode runs.
    pub duration: Duration,
    /// The Zipf exponent (0.99 in YCSB).
    pub theta: f64,
    /// The limit of the limit mode (default half of `size`).
    pub limit: Option<u64>,
    /// The target of the stall mode.
    pub stall: f64,
    /// Whether the policy tracks written pages (PAGEMAP_SCAN with async write-protect).
    pub write_tracking: bool,
    /// Where to write the figures as JSON.
    pub json: Option<PathBuf>,
    /// Where to write the plot (SVG).
    pub plot: Option<PathBuf>,
    /// What runs.
    pub workload: PolicyWorkload,
}

/// The workloads of `farmem bench policy`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicyWorkload {
    /// 1 KiB values, every page warm.
    KvZipf,
    /// Objects of mixed sizes, this share of them never read after loading.
    ColdTail {
        /// The share of the objects (about the share of bytes) never read again.
        cold_share: f64,
    },
}

impl PolicyWorkload {
    /// Its name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            PolicyWorkload::KvZipf => "kv-zipf",
            PolicyWorkload::ColdTail { .. } => "cold-tail",
        }
    }
}

/// One run's workload, built anew for each mode.
enum Work<'z> {
    KvZipf { store: Store, zipf: &'z Zipf },
    ColdTail(ColdTail),
}

impl Work<'_> {
    fn build<'z>(cfg: &PolicyBenchConfig, zipf: &'z Zipf) -> Result<Work<'z>, String> {
        Ok(match cfg.workload {
            PolicyWorkload::KvZipf => Work::KvZipf { store: Store::new(cfg.size)?, zipf },
            PolicyWorkload::ColdTail { cold_share } => Work::ColdTail(ColdTail::new(cfg.size, cold_share, cfg.theta)?),
        })
    }

    fn mapping(&self) -> &Mapping {
        match self {
            Work::KvZipf { store, .. } => &store.map,
            Work::ColdTail(c) => c.mapping(),
        }
    }

    fn fill(&mut self) {
        match self {
            Work::KvZipf { store, .. } => (0..store.n).for_each(|k| store.write(k)),
            Work::ColdTail(c) => c.fill(),
        }
    }

    fn op(&mut self, rng: &mut Rng) -> Result<(), String> {
        match self {
            Work::KvZipf { store, zipf } => {
                let k = zipf.next(rng.unit());
                if rng.next().is_multiple_of(10) {
                    store.write(k);
                    Ok(())
                } else {
                    store.read(k)
                }
            }
            Work::ColdTail(c) => c.op(rng),
        }
    }

    fn check_all(&self) -> Result<(), String> {
        match self {
            Work::KvZipf { store, .. } => (0..store.n).try_for_each(|k| store.read(k)),
            Work::ColdTail(c) => c.check_all(),
        }
    }

    /// Bytes of the heap in RAM, and for the cold tail the share of its
    /// cold-only pages out of RAM (mincore).
    fn residency(&self) -> (u64, Option<f64>) {
        let map = self.mapping();
        let mut v = vec![0u8; map.len() / PAGE];
        let _ = map.residency(0, &mut v);
        let resident = v.iter().filter(|&&b| b & 1 != 0).count() as u64 * PAGE as u64;
        match self {
            Work::KvZipf { .. } => (resident, None),
            Work::ColdTail(c) => (resident, Some(c.cold_out(&v))),
        }
    }
}

/// One second of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the run's start.
    pub t: f64,
    /// Operations per second over the second.
    pub ops_per_s: f64,
    /// The store's pages in RAM, bytes.
    pub resident_bytes: u64,
    /// farmem's tiers, bytes (compressed tier and the sampler's copies).
    pub tier_bytes: u64,
    /// Share of the second the worker spent waiting on farmem faults.
    pub stall: f64,
    /// cold-tail: the share of the pages only cold objects touch that is out of RAM.
    pub cold_out: Option<f64>,
}

/// One mode's run.
#[derive(Debug, Clone, Serialize)]
pub struct ModeRun {
    /// "plain", "limit" or "stall".
    pub mode: String,
    /// The policy's description, if farmem ran.
    pub policy: Option<String>,
    /// Per-second samples.
    pub samples: Vec<Sample>,
    /// Operations per second over the run.
    pub throughput: f64,
    /// Mean resident bytes over the last quarter of the run (settled).
    pub resident_bytes: u64,
    /// Mean resident plus tier bytes over the last quarter: the honest footprint.
    pub footprint_bytes: u64,
    /// Resident memory saved against the plain run, percent.
    pub resident_saved_pct: f64,
    /// Footprint saved against the plain run, percent.
    pub footprint_saved_pct: f64,
    /// Throughput lost against the plain run, percent.
    pub throughput_loss_pct: f64,
    /// Share of the run's wall time stalled on farmem faults, percent.
    pub stall_pct: f64,
    /// CPU spent sampling and aging, percent of one core over the run.
    pub sampling_cpu_pct: f64,
    /// The same, per 10 GiB of registered memory.
    pub sampling_cpu_pct_per_10gib: f64,
    /// Pages reclaimed, refaults and sampled faults.
    pub reclaimed_pages: u64,
    /// Faults on reclaimed pages.
    pub refaults: u64,
    /// Faults on sampled pages.
    pub sample_faults: u64,
    /// Pages the write tracking saw written (0 when it is off).
    pub written_pages_seen: u64,
    /// cold-tail: the share of the cold-only pages out of RAM at the end, percent.
    pub cold_out_pct: Option<f64>,
    /// cold-tail: seconds from the start until 90% of the cold-only pages were out.
    pub cold_out_90_s: Option<f64>,
}

/// YCSB's Zipfian generator over `[0, n)` (Gray et al., "Quickly generating
/// billion-record synthetic databases").
pub(crate) struct Zipf {
    n: f64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    /// The generator over `n` keys with exponent `theta` (0.99 in YCSB).
    pub(crate) fn new(n: u64, theta: f64) -> Zipf {
        let zeta = |k: u64| (1..=k).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2);
        let nf = n as f64;
        Zipf { n: nf, theta, alpha: 1.0 / (1.0 - theta), zetan, eta: (1.0 - (2.0 / nf).powf(1.0 - theta)) / (1.0 - zeta2 / zetan) }
    }

    /// The key for `u`, a uniform draw from [0, 1).
    pub(crate) fn next(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        ((self.n * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64).min(self.n as u64 - 1)
    }
}

/// xorshift64: cheap, and the same sequence in every run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A uniform draw from [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The key-value store: `n` values of 1 KiB.
pub(crate) struct Store {
    map: Mapping,
    /// How many keys (a power of two).
    pub(crate) n: u64,
    versions: Vec<u32>,
}

fn body_sum(b: &[u8]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for w in b.chunks_exact(8) {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x100000001b3);
    }
    h
}

impl Store {
    /// A store of the largest power of two of values that fits in `size` bytes.
    pub(crate) fn new(size: u64) -> Result<Store, String> {
        // A power of two, so that the key scatter is a bijection.
        let values = (size / VALUE as u64).max(1);
        let n = 1u64 << (63 - values.leading_zeros());
        let map = Mapping::anonymous(n as usize * VALUE).map_err(|e| format!("mapping {} MiB for the store: {e}", (n * VALUE as u64) >> 20))?;
        Ok(Store { map, n, versions: vec![0; n as usize] })
    }

    /// The slot of key `k`: keys are scattered so hot keys share no pages.
    fn slot(&self, k: u64) -> usize {
        (k.wrapping_mul(0x9E3779B97F4A7C15) & (self.n - 1)) as usize
    }

    fn value(&self, k: u64) -> &[u8] {
        let s = self.slot(k);
        // SAFETY: slot < n, and the mapping is n values long; one thread uses the store.
        unsafe { std::slice::from_raw_parts(self.map.addr().add(s * VALUE), VALUE) }
    }

    fn value_mut(&mut self, k: u64) -> &mut [u8] {
        let s = self.slot(k);
        // SAFETY: as in `value`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.map.addr().add(s * VALUE), VALUE) }
    }

    /// Writes a new version of key `k`'s value: a body of mixed
    /// compressibility (cut from [`crate::heap::fill`]), its key, version and checksum.
    pub(crate) fn write(&mut self, k: u64) {
        self.versions[k as usize] = self.versions[k as usize].wrapping_add(1);
        let v = self.versions[k as usize];
        let val = self.value_mut(k);
        // A page-sized block of realistic contents, cut to the value's body.
        let mut block = [0u8; PAGE];
        crate::heap::fill(&mut block, k.wrapping_mul(31).wrapping_add(v as u64));
        val[24..].copy_from_slice(&block[(k as usize % 4) * VALUE..][..VALUE - 24]);
        let sum = body_sum(&val[24..]);
        val[..8].copy_from_slice(&k.to_le_bytes());
        val[8..16].copy_from_slice(&(v as u64).to_le_bytes());
        val[16..24].copy_from_slice(&sum.to_le_bytes());
    }

    /// Reads key `k`'s value and checks its key, version and checksum.
    pub(crate) fn read(&self, k: u64) -> Result<(), String> {
        let val = self.value(k);
        let key = u64::from_le_bytes(val[..8].try_into().unwrap());
        let ver = u64::from_le_bytes(val[8..16].try_into().unwrap());
        let sum = u64::from_le_bytes(val[16..24].try_into().unwrap());
        if key != k || ver != self.versions[k as usize] as u64 || sum != body_sum(&val[24..]) {
            return Err(format!("key {k}: wrong bytes read back (key {key}, version {ver} of {}, checksum mismatch: {})", self.versions[k as usize], sum != body_sum(&val[24..])));
        }
        Ok(())
    }
}

fn run_mode(cfg: &PolicyBenchConfig, mode: &str, policy: Option<PolicyConfig>, zipf: &Zipf) -> Result<ModeRun, String> {
    let mut work = Work::build(cfg, zipf)?;
    let rt = match &policy {
        Some(_) => {
            let rt = Runtime::builder().build().map_err(|e| e.to_string())?;
            let map = work.mapping();
            rt.register(map.addr(), map.len()).map_err(|e| e.to_string())?;
            Some(rt)
        }
        None => None,
    };
    eprint!("{mode}: filling {} MiB ...", work.mapping().len() >> 20);
    work.fill();
    eprintln!(" done");
    if let (Some(rt), Some(p)) = (&rt, policy.clone()) {
        rt.start_policy(p).map_err(|e| e.to_string())?;
    }
    let mut rng = Rng(0x2545F4914F6CDD1D);
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut ops = 0u64;
    let (mut last_t, mut last_ops) = (Instant::now(), 0u64);
    let stall0 = rt.as_ref().map_or(Duration::ZERO, |r| r.stats().reclaim_stall);
    let mut last_stall = stall0;
    while t0.elapsed() < cfg.duration {
        for _ in 0..1024 {
            work.op(&mut rng)?;
        }
        ops += 1024;
        if last_t.elapsed() >= Duration::from_secs(1) {
            let dt = last_t.elapsed().as_secs_f64();
            let (tier_bytes, stall) = match &rt {
                Some(r) => {
                    let s = r.stats();
                    let st = (s.reclaim_stall - last_stall).as_secs_f64() / dt;
                    last_stall = s.reclaim_stall;
                    (s.tier_bytes(), st)
                }
                None => (0, 0.0),
            };
            let (resident_bytes, cold_out) = work.residency();
            let sample = Sample { t: t0.elapsed().as_secs_f64(), ops_per_s: (ops - last_ops) as f64 / dt, resident_bytes, tier_bytes, stall, cold_out };
            let cold = cold_out.map_or(String::new(), |c| format!("  cold out {:>5.1}%", c * 100.0));
            eprint!("\r{mode}: {:>4.0} s  {:>9.0} ops/s  resident {:>6} MiB  tiers {:>5} MiB  stall {:>6.3}%{cold}   ", sample.t, sample.ops_per_s, sample.resident_bytes >> 20, tier_bytes >> 20, stall * 100.0);
            samples.push(sample);
            (last_t, last_ops) = (Instant::now(), ops);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    eprintln!();
    // Taken before the check below, whose reads fault back every evicted page.
    let end = rt.as_ref().map(|r| r.stats());
    // Every value once more: eviction lost nothing.
    work.check_all()?;
    let settled = &samples[samples.len() * 3 / 4..];
    let mean = |f: &dyn Fn(&Sample) -> u64| settled.iter().map(f).sum::<u64>() / settled.len().max(1) as u64;
    let resident = mean(&|s| s.resident_bytes);
    let footprint = mean(&|s| s.resident_bytes + s.tier_bytes);
    let (stall_pct, cpu, reclaimed, refaults, sample_faults, written, desc) = match end {
        Some(s) => {
            let p = s.policy.clone().unwrap_or_default();
            (
                (s.reclaim_stall - stall0).as_secs_f64() / wall * 100.0,
                p.sampling_cpu_seconds / wall * 100.0,
                p.reclaimed_pages,
                s.faults_from_tier,
                s.sample_faults,
                p.written_pages_seen,
                Some(p.mode),
            )
        }
        None => (0.0, 0.0, 0, 0, 0, 0, None),
    };
    drop(rt);
    let gib10 = work.mapping().len() as f64 / (10u64 << 30) as f64;
    let cold_out_pct = samples.last().and_then(|s| s.cold_out).map(|c| c * 100.0);
    let cold_out_90_s = samples.iter().find(|s| s.cold_out.is_some_and(|c| c >= 0.9)).map(|s| s.t);
    Ok(ModeRun {
        mode: mode.into(),
        policy: desc,
        samples,
        throughput: ops as f64 / wall,
        resident_bytes: resident,
        footprint_bytes: footprint,
        resident_saved_pct: 0.0,
        footprint_saved_pct: 0.0,
        throughput_loss_pct: 0.0,
        stall_pct,
        sampling_cpu_pct: cpu,
        sampling_cpu_pct_per_10gib: cpu / gib10,
        reclaimed_pages: reclaimed,
        refaults,
        sample_faults,
        written_pages_seen: written,
        cold_out_pct,
        cold_out_90_s,
    })
}

/// Runs the bench and prints its table; writes JSON and the plot when asked.
pub fn run(cfg: &PolicyBenchConfig) -> Result<(), String> {
    // kv-zipf's generator is over the store's keys, and takes a while to set up:
    // made once for all modes. The cold tail makes its own, over its hot objects.
    let n = Store::new(cfg.size)?.n;
    let zipf = Zipf::new(if cfg.workload == PolicyWorkload::KvZipf { n } else { 2 }, cfg.theta);
    let limit = cfg.limit.unwrap_or(cfg.size / 2);
    let modes: Vec<(&str, Option<PolicyConfig>)> = vec![
        ("plain", None),
        ("limit", Some(PolicyConfig { limit: Some(limit), write_tracking: cfg.write_tracking, ..PolicyConfig::default() })),
        ("stall", Some(PolicyConfig { stall: Some(cfg.stall), write_tracking: cfg.write_tracking, ..PolicyConfig::default() })),
    ];
    let mut runs = Vec::new();
    for (mode, p) in modes {
        runs.push(run_mode(cfg, mode, p, &zipf)?);
    }
    let (plain_ops, plain_res) = (runs[0].throughput, runs[0].resident_bytes.max(1));
    for r in &mut runs {
        r.resident_saved_pct = (1.0 - r.resident_bytes as f64 / plain_res as f64) * 100.0;
        r.footprint_saved_pct = (1.0 - r.footprint_bytes as f64 / plain_res as f64) * 100.0;
        r.throughput_loss_pct = (1.0 - r.throughput / plain_ops) * 100.0;
    }
    let what = match cfg.workload {
        PolicyWorkload::KvZipf => format!("{} MiB of 1 KiB values, Zipf {} keys", (n * VALUE as u64) >> 20, cfg.theta),
        PolicyWorkload::ColdTail { cold_share } => format!("cold-tail: {} {}", ColdTail::new(cfg.size, cold_share, cfg.theta)?.describe(), cfg.theta),
    };
    println!("policy bench: {what}, 90% reads, one worker thread, {} s per mode", cfg.duration.as_secs());
    let cold = cfg.workload != PolicyWorkload::KvZipf;
    println!(
        "{:<7} {:>11} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10}{}",
        "mode", "ops/s", "loss %", "resident", "saved %", "+tiers", "saved %", "stall %", "sample cpu%",
        if cold { "  cold out %  90% out after" } else { "" }
    );
    for r in &runs {
        let cold_cols = match (cold, r.cold_out_pct) {
            (false, _) => String::new(),
            (true, c) => format!(" {:>11.1} {:>14}", c.unwrap_or(0.0), r.cold_out_90_s.map_or("-".into(), |t| format!("{t:.0} s"))),
        };
        println!(
            "{:<7} {:>11.0} {:>10.1} {:>7} MiB {:>10.1} {:>6} MiB {:>9.1} {:>9.3} {:>10.2}{cold_cols}",
            r.mode,
            r.throughput,
            r.throughput_loss_pct,
            r.resident_bytes >> 20,
            r.resident_saved_pct,
            r.footprint_bytes >> 20,
            r.footprint_saved_pct,
            r.stall_pct,
            r.sampling_cpu_pct
        );
    }
    println!("(resident and +tiers: means over the last quarter of each run; sample cpu: % of one core for aging and sampling{})", if cold { "; cold out: the pages only cold objects touch that are out of RAM at the end" } else { "" });
    if let Some(path) = &cfg.json {
        let json = serde_json::json!({
            "workload": cfg.workload.name(),
            "size_bytes": if cold { cfg.size } else { n * VALUE as u64 }, "theta": cfg.theta, "duration_s": cfg.duration.as_secs_f64(),
            "modes": runs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if let Some(path) = &cfg.plot {
        std::fs::write(path, svg(&runs)).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("plot: {}", path.display());
    }
    std::io::stdout().flush().ok();
    Ok(())
}

/// Resident memory and throughput over time, one line per mode, as SVG.
fn svg(runs: &[ModeRun]) -> String {
    type Series<'a> = (&'a str, &'a dyn Fn(&Sample) -> f64);
    let panels: [Series; 2] = [("resident MiB", &|s| (s.resident_bytes >> 20) as f64), ("ops/s", &|s| s.ops_per_s)];
    let panels: Vec<plot::Panel> = panels
        .iter()
        .map(|(title, f)| plot::Panel {
            title: title.to_string(),
            x_unit: "s".into(),
            series: runs.iter().map(|r| plot::Series { label: r.mode.clone(), points: r.samples.iter().map(|s| (s.t, f(s))).collect() }).collect(),
        })
        .collect();
    plot::svg(&panels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let z = Zipf::new(1 << 16, 0.99);
        let mut r = Rng(7);
        let mut hits = vec![0u32; 1 << 16];
        for _ in 0..200_000 {
            hits[z.next(r.unit()) as usize] += 1;
        }
        let top: u32 = hits[..655].iter().sum();
        // The top 1% of keys draw far more than 1% of the accesses.
        assert!(top > 200_000 / 3, "top 1% drew {top}");
        assert!(hits[0] > hits[1000] * 50);
    }

    #[test]
    fn every_read_checks_its_value() {
        let mut s = Store::new(1 << 20).unwrap();
        for k in 0..s.n {
            s.write(k);
        }
        s.read(5).unwrap();
        s.value_mut(5)[100] ^= 1;
        assert!(s.read(5).is_err());
    }
}
