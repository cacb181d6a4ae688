//! The file spill tier in `farmem bench fault --tier file:DIR`: fault-back
//! from the file, beside a bare O_DIRECT 4 KiB pread of the same file in the
//! same run, and the rate of demotion from T1 into it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use farmem_runtime::mem::Mapping;
use farmem_runtime::{Runtime, PAGE_SIZE};
use farmem_tiers::{CompressedConfig, CompressedTier, FileConfig, FileTier, Tier};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::farmem_runs::{self, FarmemRun};
use crate::stats::{histogram, LatencySummary};

/// The file tier's figures from one invocation.
#[derive(Debug, Clone, Serialize)]
pub struct FileTierRun {
    /// Fault-back from the file tier (pages evicted straight into it).
    pub faults: FarmemRun,
    /// Bare 4 KiB preads at random offsets of the same file, same run.
    pub bare_pread: LatencySummary,
    /// Whether the tier and the bare reads used O_DIRECT.
    pub direct_io: bool,
    /// p50 of fault-back over p50 of the bare read.
    pub over_bare_p50: f64,
    /// Pages demoted from T1 into a fresh file tier, and the rate.
    pub demoted_pages: u64,
    /// MB/s of pages moved from T1 into the file tier.
    pub demote_mb_per_s: f64,
}

/// Times `n` random 4 KiB preads of the file under `fd`, opened anew through
/// /proc (with O_DIRECT when `direct`), at page offsets below its size.
fn bare_preads(fd: i32, n: usize, direct: bool, seed: u64) -> Result<LatencySummary, String> {
    let path = format!("/proc/self/fd/{fd}");
    let f: File = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(if direct { libc::O_DIRECT } else { 0 })
        .open(&path)
        .map_err(|e| format!("opening the spill file again through {path}: {e}"))?;
    let len = f.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    let pages = len / PAGE_SIZE as u64;
    if pages == 0 {
        return Err("the spill file is empty after the flush".into());
    }
    // O_DIRECT needs an aligned buffer: a page of our own mapping.
    let buf = Mapping::anonymous(PAGE_SIZE).map_err(|e| e.to_string())?;
    // SAFETY: the mapping is one page, ours alone.
    let buf = unsafe { std::slice::from_raw_parts_mut(buf.addr(), PAGE_SIZE) };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut h = histogram();
    let t0 = Instant::now();
    for _ in 0..n {
        let off = rng.gen_range(0..pages) * PAGE_SIZE as u64;
        let s = Instant::now();
        f.read_exact_at(buf, off).map_err(|e| format!("pread at {off} of {path}: {e}"))?;
        h.record(s.elapsed().as_nanos().max(1) as u64).expect("in bounds");
    }
    Ok(LatencySummary::from_ns(&h, t0.elapsed().as_secs_f64()))
}

/// Runs the file tier's part of the fault bench in `dir`.
pub fn run(dir: &Path, size: usize, accesses: usize, seed: u64, service: crate::farmem_runs::Service) -> Result<FileTierRun, String> {
    let file = Arc::new(FileTier::open(FileConfig::new(dir, 2 * size as u64)).map_err(|e| e.to_string())?);
    let direct = file.direct_io();
    let mut bare = None;
    let tier: Arc<dyn Tier> = file.clone();
    let label = format!("file ({}, {})", dir.display(), if direct { "O_DIRECT" } else { "buffered" });
    let faults = farmem_runs::random_faults_with(tier, &label, size, accesses, seed, service, &mut || {
        file.flush().map_err(|e| e.to_string())?;
        bare = Some(bare_preads(file.fd().as_raw_fd(), accesses.min(size / PAGE_SIZE), direct, seed ^ 0x5eed)?);
        Ok(())
    })?;
    let bare = bare.expect("the walk ran after the eviction");
    drop(file);
    let (demoted_pages, demote_mb_per_s) = demotion(dir, size, seed)?;
    Ok(FileTierRun { over_bare_p50: faults.p50_us / bare.p50_us, faults, bare_pread: bare, direct_io: direct, demoted_pages, demote_mb_per_s })
}

/// Evicts a heap into T1, then times moving all of it into a file tier.
fn demotion(dir: &Path, size: usize, seed: u64) -> Result<(u64, f64), String> {
    let t1 = Arc::new(CompressedTier::new(CompressedConfig::default()).map_err(|e| e.to_string())?);
    let file = Arc::new(FileTier::open(FileConfig::new(dir, 2 * size as u64)).map_err(|e| e.to_string())?);
    let rt = Runtime::builder().tier(t1).tier(file.clone()).build().map_err(|e| e.to_string())?;
    let map = Mapping::anonymous(size).map_err(|e| e.to_string())?;
    rt.register(map.addr(), size).map_err(|e| e.to_string())?;
    // SAFETY: the mapping is `size` bytes and only this thread touches it now.
    crate::heap::fill(unsafe { std::slice::from_raw_parts_mut(map.addr(), size) }, seed);
    rt.evict(map.addr(), size).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let r = rt.demote_tier(0).map_err(|e| e.to_string())?;
    file.flush().map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    Ok((r.demoted, r.demoted as f64 * PAGE_SIZE as f64 / 1e6 / secs))
}
