//! The linked jemalloc hook end to end, in a Rust program whose global
//! allocator is `farmem_jemalloc::Jemalloc`: the `rust_kv` example's workload
//! (included from `examples/rust_kv.rs`) with a heap four times the limit.

#[path = "../examples/rust_kv.rs"]
mod rust_kv;

use std::time::Duration;

#[test]
fn heap_is_evicted_faulted_back_intact_and_purges_drop_farmem_copies() {
    let o = rust_kv::Options { heap: 256 << 20, limit: 64 << 20, value: 64 << 10, settle: Duration::from_secs(20) };
    let r = rust_kv::run(&o).expect("install");
    rust_kv::print("settled", &r.settled);
    rust_kv::print("checked", &r.checked);
    rust_kv::print("purged", &r.purged);

    // farmem's threads block the program's signals (a handler run on the
    // fault thread could touch farmem memory); this test's own threads do
    // not. The policy thread is gone with the uninstall; the fault thread stays.
    let blocked = farmem_threads_blocking(libc::SIGTERM);
    assert!(!blocked.is_empty() && blocked.iter().all(|(_, b)| *b), "farmem threads and whether they block SIGTERM: {blocked:?}");
    // The program's values were served from farmem arenas.
    assert!(r.values_in_farmem, "a value lies outside the registered extents");
    assert!(r.settled.registered_bytes >= o.heap as u64, "only {} bytes registered", r.settled.registered_bytes);
    // The policy alone took the heap down to about the limit, and the check
    // faulted pages back from the tier, every byte right.
    assert!(r.settle_time.is_some(), "not under the limit in {:?}", o.settle);
    assert!(r.settled.pages_evicted_total > 0);
    assert!(r.checked.faults_from_tier > 0, "nothing faulted back");
    assert_eq!(r.mismatches, 0);
    assert_eq!(r.checked.pages_poisoned, 0);
    // Freed and purged: farmem dropped its copies of the freed values' evicted
    // pages (about half the heap), and holds fewer evicted pages.
    let freed_pages = (o.heap / 2 / 4096) as u64;
    let dropped = r.purged.pages_dropped_by_program - r.checked.pages_dropped_by_program;
    assert!(dropped >= freed_pages / 2, "the purge dropped {dropped} evicted pages of {freed_pages} freed");
    assert!(r.purged.evicted_pages < r.checked.evicted_pages, "{} evicted pages before the purge, {} after", r.checked.evicted_pages, r.purged.evicted_pages);
    // Uninstalled: evicted pages came back, still right.
    assert_eq!(r.mismatches_after_uninstall, 0);
    assert!(farmem_jemalloc::runtime().unwrap().stats().regions == 0, "regions left after uninstall");
    assert!(matches!(farmem_jemalloc::install(""), Err(farmem_jemalloc::InstallError::AlreadyInstalled)));
}

/// Each of this process's threads named farmem-*, and whether it blocks `sig`
/// (the SigBlk mask of /proc/self/task/TID/status).
fn farmem_threads_blocking(sig: i32) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string();
        if !name.starts_with("farmem") {
            continue;
        }
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let mask = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).map(|m| u64::from_str_radix(m.trim(), 16).unwrap_or(0)).unwrap_or(0);
        out.push((name, mask & (1u64 << (sig - 1)) != 0));
    }
    out
}
