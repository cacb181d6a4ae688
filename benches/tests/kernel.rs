//! The kernel baseline restores the machine, and its figures are sane.

use farmem_bench::kernel::{kernel_available, measure_zram_swapin, zram_ratio, ZramRunConfig};

fn machine_is_clean() -> Result<(), String> {
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
    if swaps.lines().any(|l| l.starts_with("/dev/zram0")) {
        return Err("zram0 still in use as swap".into());
    }
    let disksize = std::fs::read_to_string("/sys/block/zram0/disksize").unwrap();
    if disksize.trim() != "0" {
        return Err(format!("zram0 disksize is {disksize}"));
    }
    for root in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"] {
        if let Ok(dir) = std::fs::read_dir(root) {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&format!("farmem-bench-{}", std::process::id())) {
                    return Err(format!("cgroup {} left behind", e.path().display()));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn a_short_zram_run_swaps_reads_back_right_and_restores_the_machine() {
    if let Err(e) = kernel_available() {
        println!("skipped: {e}");
        return;
    }
    let cfg = ZramRunConfig { heap_bytes: 256 << 20, limit_bytes: 64 << 20, accesses: 20_000, ..ZramRunConfig::default() };
    let run = measure_zram_swapin(&cfg).unwrap();
    assert!(run.swapped_out_pages > 10_000, "{run:?}");
    assert!(run.ratio > 1.5, "zram ratio {:.2}", run.ratio);
    assert_eq!(run.latency.count, 20_000);
    assert!(run.latency.p50_us > 0.0 && run.latency.p99_us >= run.latency.p50_us);
    machine_is_clean().unwrap();
    // The lzo-rle ratio on the same kind of pages, also restored after.
    let mut pages = vec![0u8; 32 << 20];
    farmem_bench::heap::fill(&mut pages, 1);
    let r = zram_ratio(&pages, "lzo-rle").unwrap();
    assert!(r.ratio > 1.5 && r.zram.orig_bytes >= (30 << 20), "{r:?}");
    machine_is_clean().unwrap();
}
