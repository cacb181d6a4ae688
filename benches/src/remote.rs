//! The remote spill tier in `farmem bench fault --tier redis://HOST:PORT`
//! (or `memcached://`): fault-back from the store, beside a bare GET of a
//! 4 KiB value from the same server in the same run, and the rate of
//! demotion from T1 into it.

use std::sync::Arc;
use std::time::Instant;

use farmem_runtime::mem::Mapping;
use farmem_runtime::{Runtime, PAGE_SIZE};
use farmem_tiers::remote::BareClient;
use farmem_tiers::{CompressedConfig, CompressedTier, RemoteConfig, RemoteSpec, RemoteTier, Tier};
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use crate::farmem_runs::{self, FarmemRun, Service};
use crate::stats::{histogram, LatencySummary};

/// Distinct 4 KiB values the bare GETs read among.
const BARE_KEYS: u32 = 4096;

/// The remote tier's figures from one invocation.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteTierRun {
    /// The store, as `redis://HOST:PORT`.
    pub server: String,
    /// Whether pages went out encrypted.
    pub encrypted: bool,
    /// Fault-back from the remote tier (pages evicted straight into it).
    pub faults: FarmemRun,
    /// Bare GETs of random 4 KiB values from the same server, same run.
    pub bare_get: LatencySummary,
    /// p50 of fault-back over p50 of the bare GET.
    pub over_bare_p50: f64,
    /// p99 of fault-back over p99 of the bare GET.
    pub over_bare_p99: f64,
    /// Round trips of the tier's loads during the fault walk.
    pub load_round_trips: u64,
    /// Pages demoted from T1 into a fresh remote tier.
    pub demoted_pages: u64,
    /// MB/s of pages (4 KiB each, before compression) moved from T1 to the store, the flush included.
    pub demote_mb_per_s: f64,
    /// Batches (round trips) the demotion took.
    pub demote_batches: u64,
}

/// Times `n` GETs of random 4 KiB values from the store, after storing
/// [`BARE_KEYS`] of them under a key base of its own (deleted after).
fn bare_gets(config: &RemoteConfig, n: usize, seed: u64) -> Result<LatencySummary, String> {
    let server = config.spec.server();
    let err = |e: std::io::Error| format!("bare GETs from {server}: {e}");
    let mut c = BareClient::connect(config).map_err(err)?;
    let base = format!("fm-bench:{}:", std::process::id()).into_bytes();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut value = vec![0u8; PAGE_SIZE];
    for k in 0..BARE_KEYS {
        rng.fill_bytes(&mut value);
        c.set(&base, k.into(), &value).map_err(err)?;
    }
    let mut h = histogram();
    let mut out = vec![0u8; PAGE_SIZE + 64];
    let t0 = Instant::now();
    for _ in 0..n {
        let k = rng.gen_range(0..BARE_KEYS);
        let s = Instant::now();
        let len = c.get(&base, k.into(), &mut out).map_err(err)?;
        h.record(s.elapsed().as_nanos().max(1) as u64).expect("in bounds");
        if len != PAGE_SIZE {
            return Err(format!("bare GET from {server} gave {len} bytes, not {PAGE_SIZE}"));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    c.delete(&base, 0..BARE_KEYS).map_err(err)?;
    Ok(LatencySummary::from_ns(&h, secs))
}

/// The tier's config for a run of a `size`-byte heap: room for it twice.
fn config(spec: &RemoteSpec, size: usize) -> RemoteConfig {
    let mut spec = spec.clone();
    spec.size_bytes = spec.size_bytes.max(2 * size as u64);
    RemoteConfig::new(spec)
}

/// Runs the remote tier's part of the fault bench against `spec`'s server.
pub fn run(spec: &RemoteSpec, size: usize, accesses: usize, seed: u64, service: Service) -> Result<RemoteTierRun, String> {
    let cfg = config(spec, size);
    let remote = Arc::new(RemoteTier::open(cfg.clone()).map_err(|e| e.to_string())?);
    let label = format!("{} ({})", spec.protocol.scheme(), spec.server());
    let mut bare = None;
    let mut trips_before = 0;
    let tier: Arc<dyn Tier> = remote.clone();
    let faults = farmem_runs::random_faults_with(tier, &label, size, accesses, seed, service, &mut || {
        remote.flush().map_err(|e| e.to_string())?;
        bare = Some(bare_gets(&cfg, accesses.min(size / PAGE_SIZE), seed ^ 0x5eed)?);
        trips_before = remote.remote_stats().load_round_trips;
        Ok(())
    })?;
    let load_round_trips = remote.remote_stats().load_round_trips - trips_before;
    let bare = bare.expect("the walk ran after the eviction");
    drop(remote);
    let (demoted_pages, demote_mb_per_s, demote_batches) = demotion(&cfg, size, seed)?;
    Ok(RemoteTierRun {
        server: spec.server(),
        encrypted: !spec.plain,
        over_bare_p50: faults.p50_us / bare.p50_us,
        over_bare_p99: faults.p99_us / bare.p99_us,
        faults,
        bare_get: bare,
        load_round_trips,
        demoted_pages,
        demote_mb_per_s,
        demote_batches,
    })
}

/// Evicts a heap into T1, then times moving all of it into the store.
fn demotion(cfg: &RemoteConfig, size: usize, seed: u64) -> Result<(u64, f64, u64), String> {
    let t1 = Arc::new(CompressedTier::new(CompressedConfig::default()).map_err(|e| e.to_string())?);
    let remote = Arc::new(RemoteTier::open(cfg.clone()).map_err(|e| e.to_string())?);
    let rt = Runtime::builder().tier(t1).tier(remote.clone()).build().map_err(|e| e.to_string())?;
    let map = Mapping::anonymous(size).map_err(|e| e.to_string())?;
    rt.register(map.addr(), size).map_err(|e| e.to_string())?;
    // SAFETY: the mapping is `size` bytes and only this thread touches it now.
    crate::heap::fill(unsafe { std::slice::from_raw_parts_mut(map.addr(), size) }, seed);
    rt.evict(map.addr(), size).map_err(|e| e.to_string())?;
    let batches0 = remote.remote_stats().batches;
    let t = Instant::now();
    let r = rt.demote_tier(0).map_err(|e| e.to_string())?;
    remote.flush().map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    let batches = remote.remote_stats().batches - batches0;
    drop(rt);
    Ok((r.demoted, r.demoted as f64 * PAGE_SIZE as f64 / 1e6 / secs, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use farmem_tiers::remote::LocalServer;
    use farmem_tiers::RemoteProtocol;

    #[test]
    fn the_bench_times_faults_beside_bare_gets_and_demotion_on_both_protocols() {
        for protocol in [RemoteProtocol::Redis, RemoteProtocol::Memcached] {
            let server = match LocalServer::start(protocol) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!("skipped: {} is not installed (bash .ci/run installs it)", protocol.scheme());
                    continue;
                }
                Err(e) => panic!("{e}"),
            };
            let spec = format!("lz4,{}://127.0.0.1:{}", protocol.scheme(), server.port);
            let crate::fault::SpillBench::Remote(spec) = spec[4..].parse::<crate::fault::SpillBench>().unwrap() else { panic!("{spec} is not a remote tier") };
            let r = run(&spec, 8 << 20, 500, 7, Service::default()).unwrap();
            eprintln!("{}: {:.1} us against a bare GET's {:.1} us; demotion {:.0} MB/s", r.server, r.faults.p50_us, r.bare_get.p50_us, r.demote_mb_per_s);
            assert_eq!(r.bare_get.count, 500);
            assert!(r.faults.p50_us > 0.0 && r.over_bare_p50 > 0.0);
            // One GET per fault: a fault-back is one round trip.
            assert!(r.load_round_trips >= 500 && r.load_round_trips <= 510, "{} round trips for 500 faults", r.load_round_trips);
            assert!(r.demoted_pages > 1000 && r.demote_batches * 256 >= r.demoted_pages && r.demote_batches < r.demoted_pages / 16, "{r:?}");
            if protocol == RemoteProtocol::Redis {
                let out = std::process::Command::new("redis-cli").args(["-p", &server.port.to_string(), "DBSIZE"]).output().unwrap();
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "the bench leaves keys on the server");
            }
        }
    }
}
