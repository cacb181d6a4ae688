//! The statistics the shim hands out: the JSON written at exit
//! (`FARMEM_STATS`) and served to `farmem stat` are the same document.

use std::time::Instant;

use farmem_runtime::{Runtime, Stats, PAGE_SIZE};
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

/// This image's executable, as /proc shows it.
pub fn exe() -> String {
    std::fs::read_link("/proc/self/exe").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

/// What the runtime has done since this image was loaded (`started`), as one
/// JSON object: the runtime's counters, or the same keys at zero for an
/// image whose runtime never started (its heap stayed small).
pub fn snapshot(rt: Option<&Runtime>, started: Instant, limit: Option<u64>, mmap_regions: usize) -> Value {
    let stats = rt.map(Runtime::stats);
    let s = stats.as_ref();
    let count = |f: fn(&Stats) -> u64| s.map_or(0, f);
    let (rss, hwm) = rss();
    let resident = count(|s| s.per_region.iter().map(|r| r.resident_pages).sum::<u64>() * PAGE_SIZE as u64);
    let tiers: Vec<Value> = s
        .into_iter()
        .flat_map(|s| &s.tiers)
        .map(|(name, t)| {
            json!({
                "name": name,
                "pages": t.pages,
                "bytes_in": t.bytes_in,
                "bytes_used": t.bytes_used,
                "ratio": t.ratio(),
                "stores": t.stores,
                "rejected_incompressible": t.rejected_incompressible,
                // T1's second codec (lz4+zstd): stores it made, and pages it
                // too left above the threshold.
                "fallback_stores": t.fallback_stores,
                "fallback_failures": t.fallback_failures,
                "loads": t.loads,
                "load_errors": t.load_errors,
                "load_p50_ns": t.load_p50_ns,
                "load_p99_ns": t.load_p99_ns,
                "store_p50_ns": t.store_p50_ns,
                "store_p99_ns": t.store_p99_ns,
            })
        })
        .collect();
    let policy = s.and_then(|s| s.policy.as_ref());
    json!({
        "pid": std::process::id(),
        "exe": exe(),
        "runtime_started": rt.is_some(),
        "uptime_seconds": started.elapsed().as_secs_f64(),
        "limit_bytes": limit,
        "pages_evicted": count(|s| s.pages_evicted_total),
        "pages_faulted": count(|s| s.faults_from_tier + s.faults_from_staging),
        "faults": count(Stats::faults),
        "faults_zero_filled": count(|s| s.faults_zero_filled),
        "pages_zero_filled": count(|s| s.pages_zero_filled),
        // Where faults were served from: a page the evictor had only just
        // moved out (staging), a tier, or the sampler's raw tier.
        "faults_from_staging": count(|s| s.faults_from_staging),
        "faults_from_tier": count(|s| s.faults_from_tier),
        "faults_from_samples": count(|s| s.sample_faults),
        "faults_deferred": count(|s| s.faults_deferred),
        "faults_raced": count(|s| s.faults_raced),
        "installs_retried": count(|s| s.installs_retried),
        "faults_throttled": count(|s| s.throttled_faults),
        "pages_reclaimed": count(|s| s.pages_reclaimed),
        "pages_put_back": count(|s| s.pages_put_back),
        "pages_prefetched": count(|s| s.pages_prefetched),
        "evicted_pages": count(|s| s.evicted_pages),
        "pages_dropped_by_program": count(|s| s.pages_dropped_by_program),
        "pages_poisoned": count(|s| s.pages_poisoned),
        "regions": count(|s| s.regions as u64),
        "mmap_regions": mmap_regions,
        "registered_bytes": count(|s| s.registered_bytes),
        "resident_bytes": resident,
        "rss_bytes": rss,
        "peak_resident_bytes": hwm,
        "heap_peak_resident_bytes": policy.map(|p| p.peak_resident_bytes),
        "write_tracking": policy.map(|p| p.write_tracking),
        "written_pages_seen": policy.map(|p| p.written_pages_seen),
        "tier_bytes": count(Stats::tier_bytes),
        "tier_bytes_stored": count(|s| s.tiers.iter().map(|(_, t)| t.bytes_in).sum::<u64>()),
        "tiers": tiers,
        "stall_seconds": s.map_or(0.0, |s| s.stall.as_secs_f64()),
        "fault_handlers": s.map(|s| s.fault_handlers),
        "fault_mode": s.map(|s| s.fault_mode.name()),
        "faults_in_thread": count(|s| s.faults_in_thread),
        "syscall_efault_retries": crate::kernel_io::efault_retries(),
        "fault_handler_cpu_seconds": s.map(|s| s.fault_handler_cpu.as_secs_f64()),
        "fault_p50_us": s.map_or(0.0, |s| s.fault_latency_us(0.5)),
        "fault_p99_us": s.map_or(0.0, |s| s.fault_latency_us(0.99)),
    })
}
