//! Tests of the file tier; every one compares bytes. Spill files are made in
//! directories of their own under /var/tmp (a real file system, where
//! O_DIRECT works), removed at the end.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{record, slots, FileCompaction, FileConfig, FileTier};
use crate::{Handle, Page, PageClass, Tier, TierError, PAGE_SIZE};

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = PathBuf::from(format!("/var/tmp/farmem-file-{what}-{}-{}", std::process::id(), N.fetch_add(1, Relaxed)));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn entries(&self) -> Vec<String> {
        entries(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// Page `seed`: odd seeds random bytes (stored raw), even ones compressible.
fn page(seed: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    let mut rng = SmallRng::seed_from_u64(seed);
    if seed % 2 == 1 {
        rng.fill(&mut p[..]);
    } else {
        let word: u64 = rng.gen();
        for (i, c) in p.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&(word ^ (i as u64 / 16)).to_le_bytes());
        }
    }
    p
}

fn config(dir: &TempDir, limit: u64, segment: usize) -> FileConfig {
    FileConfig { segment_bytes: segment, ..FileConfig::new(&dir.0, limit) }
}

/// A tier in `dir` holding pages 0..n, flushed to the file.
fn flushed(config: FileConfig, n: u64) -> (FileTier, Vec<(Handle, u64)>) {
    let tier = FileTier::open(config).unwrap();
    let held = (0..n).map(|seed| (tier.store(&page(seed), PageClass::DEFAULT).unwrap(), seed)).collect();
    tier.flush().unwrap();
    (tier, held)
}

fn check(tier: &FileTier, h: Handle, seed: u64) {
    let mut out = [0u8; PAGE_SIZE];
    tier.load(h, &mut out).unwrap_or_else(|e| panic!("page {seed}: {e}"));
    assert!(out == page(seed), "page {seed} came back with other bytes");
}

/// The spill file, opened again (read-write) through /proc.
fn reopen(tier: &FileTier) -> File {
    OpenOptions::new().read(true).write(true).open(format!("/proc/self/fd/{}", tier.fd().as_raw_fd())).unwrap()
}

/// Flips bit 0 of byte `at` of the file.
fn flip(file: &File, at: u64) {
    let mut b = [0u8];
    file.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 1;
    file.write_all_at(&b, at).unwrap();
    file.sync_data().unwrap();
}

#[test]
fn round_trips_random_and_compressible_pages_under_4_threads() {
    let dir = TempDir::new("threads");
    let tier = Arc::new(FileTier::open(config(&dir, 64 << 20, 256 << 10)).unwrap());
    assert!(tier.direct_io(), "ext4 under /var/tmp takes O_DIRECT");
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let tier = tier.clone();
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t);
                let mut held = Vec::new();
                for i in 0..1500 {
                    let seed = t << 32 | i;
                    held.push((tier.store(&page(seed), PageClass::DEFAULT).unwrap(), seed));
                    // Loads of pages in the open segment and in the file, while others store.
                    let (h, s) = held[rng.gen_range(0..held.len())];
                    check(&tier, h, s);
                    if i % 500 == 499 {
                        tier.flush().unwrap();
                    }
                    if i % 3 == 0 {
                        let (h, _) = held.swap_remove(rng.gen_range(0..held.len()));
                        tier.remove(h);
                    }
                }
                for &(h, s) in &held {
                    check(&tier, h, s);
                }
                // Batched reads of the same pages.
                for chunk in held.chunks(40) {
                    let handles: Vec<_> = chunk.iter().map(|c| c.0).collect();
                    let mut out = vec![[0u8; PAGE_SIZE]; chunk.len()];
                    let mut seen = 0;
                    tier.load_many(&handles, &mut out, |i, r| {
                        r.unwrap();
                        seen += 1;
                        let _ = i;
                    });
                    assert_eq!(seen, chunk.len());
                    for (o, c) in out.iter().zip(chunk) {
                        assert!(*o == page(c.1));
                    }
                    // The same through the trait, as the runtime calls it.
                    let mut out = vec![[0u8; PAGE_SIZE]; chunk.len()];
                    let mut ok = vec![false; chunk.len()];
                    (&*tier as &dyn Tier).load_many(&handles, &mut out, &mut |i, r| ok[i] = r.is_ok());
                    assert!(ok.iter().all(|&k| k));
                    for (o, c) in out.iter().zip(chunk) {
                        assert!(*o == page(c.1));
                    }
                }
                held.len() as u64
            })
        })
        .collect();
    let live: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let (s, f) = (tier.stats(), tier.file_stats());
    assert_eq!(s.pages, live);
    assert_eq!((s.load_errors, f.checksum_errors), (0, 0));
    assert!(f.reads > 0 && f.ram_loads > 0 && f.writes > 0, "{f:?}");
    assert!(s.bytes_compressed < s.bytes_in, "{s:?}");
}

#[test]
fn loads_stay_right_while_compaction_runs() {
    let dir = TempDir::new("compact");
    // The explicit path alone: the counts below are its own.
    let tier = Arc::new(FileTier::open(FileConfig { compact_interval: None, ..config(&dir, 32 << 20, 128 << 10) }).unwrap());
    let mut held: Vec<_> = (0..3000).map(|seed| (tier.store(&page(seed), PageClass::DEFAULT).unwrap(), seed)).collect();
    tier.flush().unwrap();
    let blocks_before = reopen(&tier).metadata().unwrap().blocks();
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..2200 {
        let (h, _) = held.swap_remove(rng.gen_range(0..held.len()));
        tier.remove(h);
    }
    let held = Arc::new(held);
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..2)
        .map(|t| {
            let (tier, held, stop) = (tier.clone(), held.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t);
                let mut loads = 0;
                while !stop.load(Relaxed) || loads < 2000 {
                    let (h, s) = held[rng.gen_range(0..held.len())];
                    check(&tier, h, s);
                    loads += 1;
                }
            })
        })
        .collect();
    let mut total = FileCompaction::default();
    for _ in 0..3 {
        let r = tier.compact();
        tier.flush().unwrap();
        total.records_moved += r.records_moved;
        total.segments_freed += r.segments_freed;
        assert_eq!((r.records_left, r.records_corrupt), (0, 0), "{r:?}");
    }
    stop.store(true, Relaxed);
    loaders.into_iter().for_each(|l| l.join().unwrap());
    assert!(total.records_moved > 0 && total.segments_freed > 0, "{total:?}");
    for &(h, s) in held.iter() {
        check(&tier, h, s);
    }
    let blocks_after = reopen(&tier).metadata().unwrap().blocks();
    assert!(blocks_after < blocks_before, "freed segments are punched out: {blocks_before} -> {blocks_after} blocks");
    assert_eq!(tier.stats().load_errors, 0);
}

#[test]
fn background_compaction_keeps_every_page_right_under_4_threads() {
    let dir = TempDir::new("background");
    let every = Duration::from_millis(2);
    let tier = Arc::new(FileTier::open(FileConfig { compact_interval: Some(every), ..config(&dir, 64 << 20, 64 << 10) }).unwrap());
    let start = Instant::now();
    let tid = loop {
        match tier.shared.wake.tid.load(Relaxed) {
            0 if start.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(1)),
            0 => panic!("the compaction thread did not start"),
            tid => break tid,
        }
    };
    let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap();
    assert_eq!(comm.trim_end(), "farmem-compact");
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let tier = tier.clone();
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(100 + t);
                let mut held: Vec<(Handle, u64)> = Vec::new();
                let begun = Instant::now();
                let mut i = 0u64;
                // Until the background thread has compacted a few times while
                // this thread works (or a generous time has passed).
                while i < 2000 || (tier.file_stats().background_compactions < 4 && begun.elapsed() < Duration::from_secs(20)) {
                    let seed = t << 32 | i;
                    held.push((tier.store(&page(seed), PageClass::DEFAULT).unwrap(), seed));
                    let (h, s) = held[rng.gen_range(0..held.len())];
                    check(&tier, h, s);
                    // Three removes for every five stores: segments go sparse.
                    if rng.gen_ratio(3, 5) {
                        let (h, _) = held.swap_remove(rng.gen_range(0..held.len()));
                        tier.remove(h);
                    }
                    i += 1;
                }
                for &(h, s) in &held {
                    check(&tier, h, s);
                }
                held
            })
        })
        .collect();
    let held: Vec<_> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let (s, f) = (tier.stats(), tier.file_stats());
    assert!(f.background_compactions >= 4 && f.segments_freed > 0 && f.records_moved > 0, "{f:?}");
    assert!(s.compactions >= f.background_compactions && s.compaction_bytes_moved == f.bytes_moved && s.compaction_bytes_moved > 0, "{s:?}");
    assert_eq!(s.compaction_bytes_freed, f.segments_freed * f.segment_bytes);
    assert!(s.compaction_ns > 0 && s.load_p50_ns > 0 && s.store_p50_ns > 0, "{s:?}");
    assert_eq!((s.pages, s.load_errors, f.checksum_errors), (held.len() as u64, 0, 0));
    // Once more from the file, after the moved records are written.
    tier.flush().unwrap();
    for &(h, seed) in &held {
        check(&tier, h, seed);
    }
    let tier = Arc::into_inner(tier).expect("the workers are gone");
    drop(tier);
    assert!(!Path::new(&format!("/proc/self/task/{tid}")).exists(), "the compaction thread outlived its tier");
}

#[test]
fn no_compaction_thread_when_asked_for_none() {
    let dir = TempDir::new("nothread");
    let tier = FileTier::open(FileConfig { compact_interval: None, ..config(&dir, 16 << 20, 64 << 10) }).unwrap();
    let held: Vec<_> = (0..200).map(|seed| (tier.store(&page(seed), PageClass::DEFAULT).unwrap(), seed)).collect();
    tier.flush().unwrap();
    for &(h, _) in held.iter().skip(1).step_by(2) {
        tier.remove(h);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((tier.file_stats().compactions, tier.shared.wake.tid.load(Relaxed)), (0, 0));
    assert!(tier.shared.wake.wanted.load(Relaxed), "the removes left sparse segments");
    for &(h, seed) in held.iter().step_by(2) {
        check(&tier, h, seed);
    }
}

#[test]
fn a_full_tier_refuses_stores_and_keeps_every_page() {
    let dir = TempDir::new("full");
    // Four segments of 64 KiB, one kept back: room for ~45 raw pages.
    let tier = FileTier::open(config(&dir, 256 << 10, 64 << 10)).unwrap();
    let mut held = Vec::new();
    let err = loop {
        let seed = 2 * held.len() as u64 + 1;
        match tier.store(&page(seed), PageClass::DEFAULT) {
            Ok(h) => held.push((h, seed)),
            Err(e) => break e,
        }
        assert!(held.len() < 64, "a 256 KiB tier took 64 raw pages");
    };
    assert!(matches!(err, TierError::Full { tier: "file", limit_bytes: 262144 }), "{err}");
    assert!(held.len() >= 40, "{} pages", held.len());
    assert!(tier.store(&page(1), PageClass::DEFAULT).is_err(), "still full");
    for &(h, s) in &held {
        check(&tier, h, s);
    }
    // Freeing pages makes room again: the full store compacts.
    for (h, _) in held.drain(..30) {
        tier.remove(h);
    }
    for seed in 1000..1020 {
        held.push((tier.store(&page(seed), PageClass::DEFAULT).unwrap(), seed));
    }
    assert!(tier.file_stats().segments_freed > 0);
    for &(h, s) in &held {
        check(&tier, h, s);
    }
}

#[test]
fn a_flipped_bit_fails_the_load_and_is_counted() {
    let dir = TempDir::new("crc");
    let (tier, held) = flushed(config(&dir, 16 << 20, 1 << 20), 20);
    let file = reopen(&tier);
    for (k, &(h, _)) in [held[3], held[10]].iter().enumerate() {
        let loc = tier.shared.slots.get(h).unwrap();
        // A payload bit of one, a header bit (the slot number) of the other.
        let at = tier.shared.file_offset(loc) + if k == 0 { loc.len() as u64 - 1 } else { 5 };
        flip(&file, at);
        let mut out = [7u8; PAGE_SIZE];
        let err = tier.load(h, &mut out).unwrap_err();
        match &err {
            TierError::SpillCorrupt { handle, offset, path, reason } => {
                assert_eq!((*handle, *offset), (h, tier.shared.file_offset(loc)));
                assert!(path.starts_with(&dir.0) && reason.contains("crc32c"), "{err}");
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains(&dir.0.display().to_string()), "{err}");
    }
    let f = tier.file_stats();
    assert_eq!((f.load_errors, f.checksum_errors, tier.stats().load_errors), (2, 2, 2));
    for &(h, s) in held.iter().filter(|(h, _)| *h != held[3].0 && *h != held[10].0) {
        check(&tier, h, s);
    }
}

#[test]
fn an_io_error_fails_the_load() {
    let dir = TempDir::new("eio");
    let (tier, held) = flushed(config(&dir, 16 << 20, 1 << 20), 10);
    tier.shared.fail_reads.store(1, Relaxed);
    let mut out = [0u8; PAGE_SIZE];
    let err = tier.load(held[4].0, &mut out).unwrap_err();
    assert!(matches!(&err, TierError::SpillIo { handle: Some(h), source, .. } if *h == held[4].0 && source.raw_os_error() == Some(libc::EIO)), "{err}");
    check(&tier, held[4].0, held[4].1);
    // A file cut short: the read comes back empty.
    reopen(&tier).set_len(0).unwrap();
    let err = tier.load(held[7].0, &mut out).unwrap_err();
    assert!(matches!(&err, TierError::SpillIo { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof), "{err}");
    assert!(err.to_string().contains("offset"), "{err}");
    assert_eq!(tier.stats().load_errors, 2);
}

#[test]
fn a_removed_handle_never_loads_another_page() {
    let dir = TempDir::new("gen");
    let tier = FileTier::open(config(&dir, 16 << 20, 1 << 20)).unwrap();
    let a = tier.store(&page(1), PageClass::DEFAULT).unwrap();
    tier.remove(a);
    tier.remove(a); // a second remove is ignored
    let b = tier.store(&page(2), PageClass::DEFAULT).unwrap();
    assert_eq!(slots::split(a).0, slots::split(b).0, "the slot is reused");
    let mut out = [0u8; PAGE_SIZE];
    assert!(matches!(tier.load(a, &mut out), Err(TierError::UnknownHandle(h)) if h == a));
    check(&tier, b, 2);
    assert_eq!(tier.stats().pages, 1);
}

#[test]
fn the_file_has_no_name_in_the_directory() {
    for tmpfile in [true, false] {
        let dir = TempDir::new("noname");
        let tier = FileTier::open(FileConfig { tmpfile, ..config(&dir, 16 << 20, 1 << 20) }).unwrap();
        let h = tier.store(&page(1), PageClass::DEFAULT).unwrap();
        tier.flush().unwrap();
        assert_eq!(dir.entries(), Vec::<String>::new(), "tmpfile {tmpfile}");
        let target = std::fs::read_link(format!("/proc/self/fd/{}", tier.fd().as_raw_fd())).unwrap();
        assert!(target.to_string_lossy().ends_with("(deleted)"), "{target:?}");
        let mode = reopen(&tier).metadata().unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        check(&tier, h, 1);
    }
}

#[test]
fn a_bad_directory_is_named() {
    let dir = TempDir::new("bad");
    let missing = dir.0.join("missing");
    let err = FileTier::open(FileConfig::new(&missing, 1 << 20)).unwrap_err();
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    std::fs::write(dir.0.join("plain"), b"x").unwrap();
    let err = FileTier::open(FileConfig::new(dir.0.join("plain"), 1 << 20)).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    assert!(matches!(FileTier::open(FileConfig::new(&dir.0, 12345)), Err(TierError::BadLimit { .. })));
    assert!(matches!(FileTier::open(FileConfig::new(&dir.0, 8192)), Err(TierError::BadLimit { .. })));
    let err = FileTier::open(FileConfig { segment_bytes: 5000, ..FileConfig::new(&dir.0, 1 << 20) }).unwrap_err();
    assert!(err.to_string().contains("segment_bytes 5000") && err.to_string().contains(&dir.0.display().to_string()), "{err}");
    assert_eq!(dir.entries(), vec!["plain".to_string()], "a refused open leaves nothing");
}

#[test]
fn encrypted_pages_round_trip_and_a_tampered_ciphertext_fails() {
    let dir = TempDir::new("aead");
    let (tier, held) = flushed(config(&dir, 16 << 20, 1 << 20).encrypted(), 40);
    for &(h, s) in &held {
        check(&tier, h, s);
    }
    // A raw-stored (random) page's bytes appear nowhere in the file.
    let file = reopen(&tier);
    let mut image = vec![0u8; tier.shared.segment_bytes];
    let n = file.read_at(&mut image, 0).unwrap();
    let needle = &page(1)[..64];
    assert!(!image[..n].windows(64).any(|w| w == needle), "plaintext in the spill file");
    // Change one ciphertext byte and fix the crc: only the tag can tell.
    let (h, _) = held[5];
    let loc = tier.shared.slots.get(h).unwrap();
    let at = tier.shared.file_offset(loc);
    let mut rec = vec![0u8; loc.len()];
    file.read_exact_at(&mut rec, at).unwrap();
    rec[record::HEADER + 3] ^= 0x40;
    let crc = crc32c::crc32c(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&rec, at).unwrap();
    file.sync_data().unwrap();
    let mut out = [0u8; PAGE_SIZE];
    let err = tier.load(h, &mut out).unwrap_err();
    assert!(matches!(&err, TierError::SpillCorrupt { reason, .. } if reason.contains("authentication")), "{err}");
    assert_eq!(tier.file_stats().checksum_errors, 1);
    assert!(tier.file_stats().encrypted);
}

const CHILD_DIR: &str = "FARMEM_FILE_TIER_CHILD_DIR";
const CHILD_NAMED: &str = "FARMEM_FILE_TIER_CHILD_NAMED";

/// Not a test of its own: the child of `nothing_is_left_after_sigkill`
/// (does nothing unless its environment variable is set).
#[test]
fn child_holds_a_spill_file() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else { return };
    let tmpfile = std::env::var_os(CHILD_NAMED).is_none();
    let tier = FileTier::open(FileConfig { tmpfile, ..FileConfig::new(dir, 16 << 20) }).unwrap();
    for seed in 0..300 {
        tier.store(&page(seed), PageClass::DEFAULT).unwrap();
    }
    tier.flush().unwrap();
    // Straight to fd 1: the harness captures `println!` even with --nocapture.
    let mut out = std::io::stdout();
    writeln!(out, "READY {}", tier.fd().as_raw_fd()).unwrap();
    out.flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn nothing_is_left_after_sigkill() {
    for named in [false, true] {
        let dir = TempDir::new("kill");
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["file::tests::child_holds_a_spill_file", "--exact", "--nocapture", "--test-threads=1"]).env(CHILD_DIR, &dir.0).stdout(Stdio::piped());
        if named {
            cmd.env(CHILD_NAMED, "1");
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // A child stuck before READY would block the read below for ever: kill it after 20 s.
        let ready = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let (ready, pid) = (ready.clone(), child.id() as i32);
            std::thread::spawn(move || {
                let start = Instant::now();
                while !ready.load(Relaxed) && start.elapsed() < Duration::from_secs(20) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if !ready.load(Relaxed) {
                    // SAFETY: kill of our child, not yet waited for (the test waits after READY or EOF).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            })
        };
        let fd = loop {
            let line = lines.next().expect("the child ended (or was killed) before it was ready").unwrap();
            // The harness prints the test's name on the same line first.
            if let Some((_, fd)) = line.split_once("READY ") {
                break fd.to_owned();
            }
        };
        ready.store(true, Relaxed);
        watchdog.join().unwrap();
        assert_eq!(dir.entries(), Vec::<String>::new(), "named {named}: a spill file is visible");
        let held = std::fs::metadata(format!("/proc/{}/fd/{fd}", child.id())).unwrap();
        assert!(held.len() >= 4096, "the child's file holds its pages ({} bytes)", held.len());
        // SAFETY: kill with the id of a child we spawned and have not waited for.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
        child.wait().unwrap();
        assert_eq!(dir.entries(), Vec::<String>::new(), "named {named}: left behind");
    }
}

/// Figures for the report, not a check: `cargo test -p farmem-tiers --release
/// --lib file::tests::throughput -- --ignored --nocapture` (FARMEM_FILE_BENCH_DIR
/// picks the directory, /var/tmp by default).
#[test]
#[ignore]
fn throughput() {
    let base = std::env::var_os("FARMEM_FILE_BENCH_DIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let dir = TempDir(base.join(format!("farmem-file-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let n = 32768u64; // 128 MiB of pages
    let pages: Vec<Page> = (0..n).map(|s| if s % 4 == 1 { page(s) } else { page(s & !1) }).collect();
    let tier = Arc::new(FileTier::open(FileConfig::new(&dir.0, 1 << 30)).unwrap());
    let t = Instant::now();
    let handles: Vec<_> = pages.iter().map(|p| tier.store(p, PageClass::DEFAULT).unwrap()).collect();
    tier.flush().unwrap();
    let store = t.elapsed();
    let s = tier.stats();
    println!(
        "store+flush: {n} pages in {store:?}: {:.0} MiB/s, {:.0} k pages/s; ratio {:.2}, direct {}",
        (n * 4096) as f64 / store.as_secs_f64() / 1048576.0,
        n as f64 / store.as_secs_f64() / 1e3,
        s.bytes_in as f64 / s.bytes_compressed as f64,
        tier.direct_io()
    );
    let mut rng = SmallRng::seed_from_u64(1);
    let mut lat = Vec::new();
    let mut out = [0u8; PAGE_SIZE];
    for _ in 0..20000 {
        let i = rng.gen_range(0..n as usize);
        let t = Instant::now();
        tier.load(handles[i], &mut out).unwrap();
        lat.push(t.elapsed());
        assert!(out == pages[i]);
    }
    lat.sort();
    let pct = |v: &[Duration], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    println!("load, 1 thread, random: p50 {:?} p99 {:?}", pct(&lat, 0.5), pct(&lat, 0.99));
    let t = Instant::now();
    let mut outs = vec![[0u8; PAGE_SIZE]; 32];
    let rounds = 1000;
    for _ in 0..rounds {
        let hs: Vec<_> = (0..32).map(|_| handles[rng.gen_range(0..n as usize)]).collect();
        tier.load_many(&hs, &mut outs, |_, r| r.unwrap());
    }
    let e = t.elapsed();
    println!("load_many of 32, 1 thread: {:.0} k pages/s, {:?} a batch", (rounds * 32) as f64 / e.as_secs_f64() / 1e3, e / rounds);
    let t = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|k| {
            let (tier, handles) = (tier.clone(), handles.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(k);
                let mut out = [0u8; PAGE_SIZE];
                for _ in 0..10000 {
                    tier.load(handles[rng.gen_range(0..handles.len())], &mut out).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    println!("load, 4 threads, random: {:.0} k pages/s", 40000.0 / t.elapsed().as_secs_f64() / 1e3);
    // The floor: a bare 4 KiB O_DIRECT pread of the same file, 1 thread.
    let direct = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(format!("/proc/self/fd/{}", tier.fd().as_raw_fd())).unwrap();
    let buf = crate::mem::Mapping::anonymous(4096).unwrap();
    // SAFETY: the mapping holds 4096 bytes and is not otherwise used.
    let buf = unsafe { std::slice::from_raw_parts_mut(buf.addr(), 4096) };
    let blocks = tier.file_stats().bytes_written / 4096;
    let mut lat = Vec::new();
    for _ in 0..20000 {
        let t = Instant::now();
        direct.read_exact_at(buf, rng.gen_range(0..blocks) * 4096).unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    println!("bare O_DIRECT pread 4 KiB, 1 thread: p50 {:?} p99 {:?}", pct(&lat, 0.5), pct(&lat, 0.99));
}
