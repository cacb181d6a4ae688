//! The statistics the shim hands out: the JSON written at exit
//! (`FARMEM_STATS`) and served to `farmem stat` are the same document.

use std::time::Instant;

use farmem_runtime::{Runtime, PAGE_SIZE};
use serde_json::{json, Value};

/// Resident and peak resident set of this process from /proc/self/status, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What the runtime has done since `started`, as one JSON object.
pub fn snapshot(rt: &Runtime, started: Instant, limit: Option<u64>, mmap_regions: usize) -> Value {
    let s = rt.stats();
    let (rss, hwm) = rss();
    let resident: u64 = s.per_region.iter().map(|r| r.resident_pages).sum::<u64>() * PAGE_SIZE as u64;
    let tiers: Vec<Value> = s
        .tiers
        .iter()
        .map(|(name, t)| {
            json!({
                "name": name,
                "pages": t.pages,
                "bytes_in": t.bytes_in,
                "bytes_used": t.bytes_used,
                "ratio": t.ratio(),
                "stores": t.stores,
                "loads": t.loads,
                "load_errors": t.load_errors,
                "load_p50_ns": t.load_p50_ns,
                "load_p99_ns": t.load_p99_ns,
                "store_p50_ns": t.store_p50_ns,
                "store_p99_ns": t.store_p99_ns,
            })
        })
        .collect();
    json!({
        "pid": std::process::id(),
        "uptime_seconds": started.elapsed().as_secs_f64(),
        "limit_bytes": limit,
        "pages_evicted": s.pages_evicted_total,
        "pages_faulted": s.faults_from_tier + s.faults_from_staging,
        "faults": s.faults(),
        "faults_zero_filled": s.faults_zero_filled,
        "pages_zero_filled": s.pages_zero_filled,
        // Where faults were served from: a page the evictor had only just
        // moved out (staging), a tier, or the sampler's raw tier.
        "faults_from_staging": s.faults_from_staging,
        "faults_from_tier": s.faults_from_tier,
        "faults_from_samples": s.sample_faults,
        "faults_deferred": s.faults_deferred,
        "faults_throttled": s.throttled_faults,
        "pages_reclaimed": s.pages_reclaimed,
        "pages_put_back": s.pages_put_back,
        "pages_prefetched": s.pages_prefetched,
        "evicted_pages": s.evicted_pages,
        "pages_dropped_by_program": s.pages_dropped_by_program,
        "pages_poisoned": s.pages_poisoned,
        "regions": s.regions,
        "mmap_regions": mmap_regions,
        "registered_bytes": s.registered_bytes,
        "resident_bytes": resident,
        "rss_bytes": rss,
        "peak_resident_bytes": hwm,
        "heap_peak_resident_bytes": s.policy.as_ref().map(|p| p.peak_resident_bytes),
        "write_tracking": s.policy.as_ref().map(|p| p.write_tracking),
        "written_pages_seen": s.policy.as_ref().map(|p| p.written_pages_seen),
        "tier_bytes": s.tiers.iter().map(|(_, t)| t.bytes_used).sum::<u64>(),
        "tier_bytes_stored": s.tiers.iter().map(|(_, t)| t.bytes_in).sum::<u64>(),
        "tiers": tiers,
        "stall_seconds": s.stall.as_secs_f64(),
        "fault_p50_us": s.fault_latency_us(0.5),
        "fault_p99_us": s.fault_latency_us(0.99),
    })
}
