//! Pages through T1 into the file spill tier and back: demotion on demand and
//! by the policy's age, a full spill tier, and a corrupt spill file, which
//! must end in SIGBUS for the access and never in wrong bytes.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{checksum, verify, Heap};
use farmem_runtime::policy::PolicyConfig;
use farmem_runtime::Runtime;
use farmem_tiers::{CompressedConfig, CompressedTier, FileConfig, FileTier};

fn spill_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("farmem-spill-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn filled(pages: usize) -> (Heap, Vec<u64>) {
    common::filled(pages, |i| i as u64 * 5 + 3)
}

fn t1() -> Arc<CompressedTier> {
    Arc::new(CompressedTier::new(CompressedConfig::default()).unwrap())
}

#[test]
fn pages_demoted_to_the_file_tier_come_back_byte_for_byte() {
    let dir = spill_dir("demote");
    let file = Arc::new(FileTier::open(FileConfig::new(&dir, 256 << 20)).unwrap());
    let rt = Runtime::builder().tier(t1()).tier(file.clone()).build().unwrap();
    const PAGES: usize = 16384;
    let (heap, sums) = filled(PAGES);
    rt.register(heap.ptr, heap.len).unwrap();
    let ev = rt.evict(heap.ptr, heap.len).unwrap();
    let t0 = Instant::now();
    let d = rt.demote_tier(0).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    file.flush().unwrap();
    let s = rt.stats();
    eprintln!("evicted {} pages; demoted {} from T1 to the file tier in {:.3} s ({:.0} MB/s of pages)", ev.evicted, d.demoted, secs, d.demoted as f64 * 4096.0 / secs / 1e6);
    assert_eq!(s.tiers[0].1.pages, 0, "T1 still holds pages after demotion");
    assert_eq!(s.tiers[1].1.pages, ev.evicted, "the file tier holds every evicted page");
    // Back from the file, from two threads.
    let heap = Arc::new(heap);
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let h = Arc::clone(&heap);
            std::thread::spawn(move || (t..PAGES).step_by(2).map(|i| checksum(h.page(i))).collect::<Vec<u64>>())
        })
        .collect();
    let got: Vec<Vec<u64>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for i in 0..PAGES {
        assert_eq!(got[i % 2][i / 2], sums[i], "page {i}");
    }
    // The fault thread counts a fault just after it wakes the thread; pages
    // brought back ahead of a fault (readahead) are counted apart.
    let s = common::settled(&rt, |s| s.faults_from_tier + s.pages_prefetched == ev.evicted);
    assert_eq!(s.faults_from_tier + s.pages_prefetched, ev.evicted);
    drop(rt);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_fault_on_the_file_tier_brings_the_pages_demoted_with_it_back_too() {
    let dir = spill_dir("prefetch");
    let file = Arc::new(FileTier::open(FileConfig::new(&dir, 64 << 20)).unwrap());
    let rt = Runtime::builder().tier(t1()).tier(file.clone()).prefetch(8).build().unwrap();
    const PAGES: usize = 2048;
    let (heap, sums) = filled(PAGES);
    rt.register(heap.ptr, heap.len).unwrap();
    let ev = rt.evict(heap.ptr, heap.len).unwrap();
    rt.demote_tier(0).unwrap();
    file.flush().unwrap();
    assert_eq!(rt.stats().tiers[1].1.pages, ev.evicted, "every evicted page is in the file tier");
    // A sequential read: each fault brings the next eight pages with it.
    verify(&heap, &sums);
    let s = common::settled(&rt, |s| s.faults_from_tier + s.pages_prefetched == ev.evicted && s.tiers[1].1.pages == 0);
    eprintln!("{} pages evicted: {} faults from the file tier, {} pages prefetched", ev.evicted, s.faults_from_tier, s.pages_prefetched);
    assert_eq!(s.faults_from_tier + s.pages_prefetched, ev.evicted, "each page came back once, by a fault or beside one");
    assert!(s.pages_prefetched * 4 >= ev.evicted * 3, "a sequential read of {} pages took {} faults", ev.evicted, s.faults_from_tier);
    assert_eq!(s.tiers[1].1.pages, 0, "the file tier still holds pages");
    drop(rt);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_policy_demotes_by_age_and_stops_when_the_spill_tier_is_full() {
    let dir = spill_dir("policy");
    // Room for the incompressible quarter (16 MiB, stored there at once) and
    // some of what T1 holds, not all of it.
    let file = Arc::new(FileTier::open(FileConfig::new(&dir, 20 << 20)).unwrap());
    let rt = Runtime::builder().tier(t1()).tier(file.clone()).build().unwrap();
    const PAGES: usize = 16384;
    let (heap, sums) = filled(PAGES);
    rt.register(heap.ptr, heap.len).unwrap();
    rt.start_policy(PolicyConfig { limit: Some(8 << 20), tick: Duration::from_millis(50), demote_after: Duration::from_millis(200), ..PolicyConfig::default() }).unwrap();
    let t0 = Instant::now();
    loop {
        let p = rt.stats().policy.unwrap();
        if p.demotion_blocked_ticks > 0 {
            eprintln!("after {:.1} s: {p:?}", t0.elapsed().as_secs_f64());
            assert!(p.demoted_pages > 200, "{p:?}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "demotion never filled the 20 MiB spill tier: {p:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = rt.stats();
    assert!(s.tiers[1].1.pages > 0 && s.tiers[0].1.pages > 0, "pages in both tiers: {:?}", s.tiers);
    rt.stop_policy();
    verify(&heap, &sums);
    drop(rt);
    std::fs::remove_dir_all(&dir).unwrap();
}

const CHILD: &str = "FARMEM_SPILL_CORRUPT_CHILD";

/// In a child process: pages straight into the file tier, the file damaged,
/// then every page read. The read of a damaged page must raise SIGBUS.
#[test]
fn a_damaged_spill_file_gives_sigbus_never_wrong_bytes() {
    damaged_spill_file("a_damaged_spill_file_gives_sigbus_never_wrong_bytes", false);
}

#[test]
fn a_damaged_page_among_prefetched_neighbours_gives_sigbus_never_wrong_bytes() {
    damaged_spill_file("a_damaged_page_among_prefetched_neighbours_gives_sigbus_never_wrong_bytes", true);
}

/// Runs test `name` again in a child process, which spills pages to a file
/// tier, damages a block of the file, and reads every page in order: the
/// child must die of SIGBUS. With `prefetch`, pages go through T1 into the
/// file, and each fault brings eight neighbours with it, so the damaged
/// records are met by prefetches first.
fn damaged_spill_file(name: &str, prefetch: bool) {
    if let Some(dir) = std::env::var_os(CHILD) {
        let file = Arc::new(FileTier::open(FileConfig::new(dir, 64 << 20)).unwrap());
        let rt = if prefetch {
            Runtime::builder().tier(t1()).tier(file.clone()).prefetch(8).build().unwrap()
        } else {
            Runtime::builder().tier(file.clone()).build().unwrap()
        };
        let (heap, sums) = filled(1024);
        rt.register(heap.ptr, heap.len).unwrap();
        let evicted = rt.evict(heap.ptr, heap.len).unwrap().evicted;
        if prefetch {
            rt.demote_tier(0).unwrap();
        }
        file.flush().unwrap();
        assert_eq!(rt.stats().tiers[usize::from(prefetch)].1.pages, evicted);
        assert!(evicted >= 512, "{evicted} pages evicted");
        // Damage a block of the file through a second descriptor: the first
        // one, or one in the middle of the records when they are prefetched.
        let path = format!("/proc/self/fd/{}", file.fd().as_raw_fd());
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xA5; 4096], if prefetch { 64 << 10 } else { 0 }).unwrap();
        f.sync_all().unwrap();
        for (i, &sum) in sums.iter().enumerate() {
            // A page either comes back right or the access never returns.
            assert_eq!(checksum(heap.page(i)), sum, "page {i} came back wrong");
        }
        // Every page came back right: the damage was not seen.
        std::process::exit(3);
    }
    let dir = spill_dir(if prefetch { "corrupt-prefetch" } else { "corrupt" });
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, &dir)
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "the child should die of SIGBUS, got {:?}\n{stderr}", out.status);
    std::fs::remove_dir_all(&dir).unwrap();
}
