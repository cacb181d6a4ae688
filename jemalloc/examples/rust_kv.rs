//! A key-value heap under farmem, linked rather than preloaded: fills a
//! `HashMap<u64, Vec<u8>>` larger than the limit, lets farmem evict the cold
//! values, checks every byte, then frees half of it and has jemalloc purge,
//! which drops farmem's copies of those pages.
//!
//! ```sh
//! cargo run --release -p farmem-jemalloc --example rust_kv -- 512M 128M
//! ```
//!
//! `tests/linked.rs` runs [`run`] with a smaller heap and checks its report.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use farmem_runtime::Stats;

#[global_allocator]
static GLOBAL: farmem_jemalloc::Jemalloc = farmem_jemalloc::Jemalloc;

/// What to run.
pub struct Options {
    /// Bytes of values in the map.
    pub heap: usize,
    /// farmem's limit on resident heap bytes.
    pub limit: usize,
    /// Bytes per value (a multiple of 4096: jemalloc gives large values whole pages).
    pub value: usize,
    /// How long to wait for the policy to bring the heap under the limit.
    pub settle: Duration,
}

/// What happened, for the example's output and the test's checks.
pub struct Report {
    /// After the heap was filled and the policy had its time.
    pub settled: Stats,
    /// After every value was checked.
    pub checked: Stats,
    /// Values whose bytes were not what was written.
    pub mismatches: usize,
    /// Whether every value lay in memory registered with farmem.
    pub values_in_farmem: bool,
    /// Pages of the freed values that were evicted just before the free.
    pub freed_evicted_pages: u64,
    /// After half the values were freed and jemalloc purged.
    pub purged: Stats,
    /// Values wrong after uninstall (evicted pages brought back).
    pub mismatches_after_uninstall: usize,
    /// How long the policy took to bring the heap under the limit (None: it did not in time).
    pub settle_time: Option<Duration>,
}

/// The byte at `i` of the value of `key`: different for every key and page,
/// so a zero page or a page of another value shows.
fn byte(key: u64, i: usize) -> u8 {
    let page = (i / 4096) as u64;
    let x = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ page.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (x >> ((i % 8) * 8)) as u8 ^ (i / 64) as u8
}

fn value(key: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| byte(key, i)).collect()
}

fn intact(key: u64, v: &[u8]) -> bool {
    v.iter().enumerate().all(|(i, &b)| b == byte(key, i))
}

/// `arena.<all>.purge`: jemalloc gives every arena's unused dirty pages back
/// (MADV_DONTNEED through farmem's purge hook).
fn purge_all_arenas() -> std::io::Result<()> {
    // 4096 is MALLCTL_ARENAS_ALL in jemalloc.h.
    // SAFETY: a purge mallctl takes no old or new value.
    let r = unsafe { tikv_jemalloc_sys::mallctl(c"arena.4096.purge".as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(r))
    }
}

/// Fills, settles, checks, frees and purges, uninstalls and checks again.
pub fn run(o: &Options) -> Result<Report, farmem_jemalloc::InstallError> {
    let farmem = farmem_jemalloc::install(&format!("limit={} tiers=lz4", o.limit))?;
    let count = o.heap / o.value;
    let mut map: HashMap<u64, Vec<u8>> = HashMap::with_capacity(count);
    for k in 0..count as u64 {
        map.insert(k, value(k, o.value));
    }
    let regions = farmem.stats().per_region;
    let values_in_farmem = map.values().all(|v| {
        let (a, l) = (v.as_ptr() as u64, v.len() as u64);
        regions.iter().any(|r| r.start <= a && a + l <= r.start + r.len)
    });
    let start = Instant::now();
    let mut settle_time = None;
    while start.elapsed() < o.settle {
        let s = farmem.stats();
        if s.resident_pages() * 4096 <= o.limit as u64 + (o.limit as u64 / 4) && s.pages_evicted_total > 0 {
            settle_time = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let settled = farmem.stats();
    let mismatches = map.iter().filter(|(&k, v)| !intact(k, v)).count();
    let checked = farmem.stats();

    // Free half: evict those values first, so their pages have copies in a
    // tier that the purge must drop.
    let freed: Vec<u64> = map.keys().copied().filter(|k| k % 2 == 0).collect();
    let mut freed_evicted_pages = 0;
    for k in &freed {
        let v = &map[k];
        if (v.as_ptr() as usize).is_multiple_of(4096) && v.len().is_multiple_of(4096) {
            if let Ok(r) = farmem.runtime().evict(v.as_ptr() as *mut u8, v.len()) {
                freed_evicted_pages += r.evicted;
            }
        }
    }
    for k in &freed {
        map.remove(k);
    }
    map.shrink_to_fit();
    purge_all_arenas().expect("jemalloc refused arena.<all>.purge");
    // The fault thread reads the REMOVE events the purge caused.
    std::thread::sleep(Duration::from_millis(200));
    let purged = farmem.stats();
    drop(farmem);
    let mismatches_after_uninstall = map.iter().filter(|(&k, v)| !intact(k, v)).count();
    Ok(Report { settled, checked, mismatches, values_in_farmem, freed_evicted_pages, purged, mismatches_after_uninstall, settle_time })
}

fn mib(pages: u64) -> f64 {
    (pages * 4096) as f64 / (1 << 20) as f64
}

/// Prints one stage's statistics.
pub fn print(stage: &str, s: &Stats) {
    println!(
        "{stage:>8}: registered {:.0} MiB, resident {:.1} MiB, evicted now {:.1} MiB, evicted in all {} pages, faults from tier {}, dropped by purge {}, tier bytes {:.1} MiB, poisoned {}",
        s.registered_bytes as f64 / (1 << 20) as f64,
        mib(s.resident_pages()),
        mib(s.evicted_pages),
        s.pages_evicted_total,
        s.faults_from_tier,
        s.pages_dropped_by_program,
        s.tier_bytes() as f64 / (1 << 20) as f64,
        s.pages_poisoned
    );
}

#[allow(dead_code)] // tests/linked.rs includes this file for `run` alone
fn main() {
    let arg = |i: usize, default: &str| std::env::args().nth(i).unwrap_or_else(|| default.into());
    let size = |s: String| farmem_runtime::policy::parse_size(&s).unwrap_or_else(|e| panic!("{e}")) as usize;
    let o = Options { heap: size(arg(1, "512M")), limit: size(arg(2, "128M")), value: 64 << 10, settle: Duration::from_secs(30) };
    println!("heap {} MiB in {} KiB values, limit {} MiB", o.heap >> 20, o.value >> 10, o.limit >> 20);
    let r = match run(&o) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rust_kv: {e}");
            std::process::exit(2);
        }
    };
    print("settled", &r.settled);
    print("checked", &r.checked);
    print("purged", &r.purged);
    match r.settle_time {
        Some(t) => println!("under the limit after {:.1} s", t.as_secs_f64()),
        None => println!("not under the limit within {:?}", o.settle),
    }
    println!("values in farmem memory: {}; freed values evicted first: {} pages", r.values_in_farmem, r.freed_evicted_pages);
    println!("mismatched values: {} (after uninstall: {})", r.mismatches, r.mismatches_after_uninstall);
    if r.mismatches + r.mismatches_after_uninstall > 0 || r.checked.pages_poisoned > 0 {
        std::process::exit(1);
    }
}
