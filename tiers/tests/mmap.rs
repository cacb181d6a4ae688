//! The mmap tier through its public API, on a memfd, on a file in a temporary
//! directory and on /dev/zero (a character device): round trips, threads, the
//! limit, handle reuse, hole punching and the errors for bad paths and sizes.
//! Every check compares bytes or exact counts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use farmem_tiers::{MmapTier, Page, PageClass, Tier, TierError, PAGE_SIZE};

/// A page no other (seed) gives: the seed in the first word, then a xorshift stream.
fn page(seed: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in p.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    p[..8].copy_from_slice(&seed.to_le_bytes());
    p
}

fn checksum(p: &Page) -> u64 {
    // FNV-1a: enough to tell pages apart, computed independently of the bytes compared.
    p.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A path in the temp dir no other test or run uses, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(what: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        TempPath(std::env::temp_dir().join(format!("farmem-mmap-{what}-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn round_trip(t: &MmapTier, n: u64) {
    let before = t.stats();
    let handles: Vec<_> = (0..n).map(|i| t.store(&page(i), PageClass::DEFAULT).unwrap()).collect();
    let s = t.stats();
    assert_eq!((s.pages, s.stores - before.stores, s.bytes_in, s.bytes_used), (n, n, n * PAGE_SIZE as u64, n * PAGE_SIZE as u64));
    let mut out = [0u8; PAGE_SIZE];
    // Backwards, so a slot mix-up cannot hide behind the order of stores.
    for (i, h) in handles.iter().enumerate().rev() {
        t.load(*h, &mut out).unwrap();
        assert!(out == page(i as u64), "page {i} came back different");
    }
    for h in &handles {
        t.remove(*h);
    }
    let s = t.stats();
    assert_eq!((s.pages, s.loads - before.loads, s.load_errors, s.bytes_used), (0, n, 0, 0));
    assert_eq!(t.capacity().used_bytes, 0);
    assert_eq!(t.name(), "mmap");
}

#[test]
fn round_trip_1000_pages_memfd() {
    let t = MmapTier::from_memfd(1000 * PAGE_SIZE as u64).unwrap();
    assert_eq!(t.capacity().limit_bytes, 1000 * PAGE_SIZE as u64);
    round_trip(&t, 1000);
}

#[test]
fn round_trip_1000_pages_new_file() {
    let path = TempPath::new("new");
    let t = MmapTier::open(&path.0, 1024 * PAGE_SIZE as u64).unwrap();
    // Created and unlinked at once: heap contents never outlive the process.
    assert!(!path.0.exists(), "{} should have been unlinked", path.0.display());
    assert_eq!(t.path(), path.0);
    round_trip(&t, 1000);
}

#[test]
fn existing_file_is_sized_used_and_emptied_on_drop() {
    use std::os::unix::fs::PermissionsExt;
    let path = TempPath::new("old");
    std::fs::write(&path.0, b"earlier contents").unwrap();
    std::fs::set_permissions(&path.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = MmapTier::open(&path.0, 1024 * PAGE_SIZE as u64).unwrap_err().to_string();
    assert!(err.contains("never overwrites") && err.contains(&*path.0.to_string_lossy()), "{err}");
    assert_eq!(std::fs::read(&path.0).unwrap(), b"earlier contents", "a refused file must keep its bytes");
    std::fs::write(&path.0, b"").unwrap();
    let t = MmapTier::open(&path.0, 1024 * PAGE_SIZE as u64).unwrap();
    assert_eq!(std::fs::metadata(&path.0).unwrap().len(), 1024 * PAGE_SIZE as u64);
    // Blocks are reserved up front, so a store never meets a full file system.
    assert!(t.allocated_bytes().unwrap() >= 1024 * PAGE_SIZE as u64, "{:?}", t.allocated_bytes());
    let mut first = [0u8; PAGE_SIZE];
    let h = t.store(&page(77), PageClass::DEFAULT).unwrap();
    t.load(h, &mut first).unwrap();
    assert!(first == page(77));
    t.remove(h);
    round_trip(&t, 1000);
    drop(t);
    assert_eq!(std::fs::metadata(&path.0).unwrap().len(), 0, "the heap's pages must not stay in the file");
}

#[test]
fn character_device_dev_zero() {
    // /dev/zero is a character device with no sysfs size: mapped shared it is
    // ordinary shared memory of the limit's size, which exercises the device path.
    let t = MmapTier::open("/dev/zero", 64 * PAGE_SIZE as u64).unwrap();
    assert_eq!(t.capacity().limit_bytes, 64 * PAGE_SIZE as u64);
    round_trip(&t, 64);
}

#[test]
fn four_threads_store_load_remove() {
    const PER_THREAD: u64 = 2000;
    // Room for about half of what the threads store in total, so slots are reused.
    let t = Arc::new(MmapTier::from_memfd(4 * 600 * PAGE_SIZE as u64).unwrap());
    let workers: Vec<_> = (0..4u64)
        .map(|id| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                let mut out = [0u8; PAGE_SIZE];
                let mut live = Vec::new();
                for round in 0..PER_THREAD / 500 {
                    for k in 0..500 {
                        let seed = id << 32 | (round * 500 + k);
                        let p = page(seed);
                        live.push((t.store(&p, PageClass::DEFAULT).unwrap(), seed, checksum(&p)));
                    }
                    for &(h, seed, sum) in &live {
                        t.load(h, &mut out).unwrap();
                        assert_eq!(checksum(&out), sum, "thread {id} seed {seed:#x}");
                        assert!(out == page(seed), "thread {id} seed {seed:#x} not byte-exact");
                    }
                    for (h, _, _) in live.drain(..) {
                        t.remove(h);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let s = t.stats();
    assert_eq!((s.pages, s.stores, s.loads, s.load_errors), (0, 4 * PER_THREAD, 4 * PER_THREAD, 0));
}

#[test]
fn full_tier_refuses_and_keeps_what_it_has() {
    let t = MmapTier::from_memfd(8 * PAGE_SIZE as u64).unwrap();
    let handles: Vec<_> = (0..8).map(|i| t.store(&page(i), PageClass::DEFAULT).unwrap()).collect();
    for _ in 0..3 {
        match t.store(&page(99), PageClass::DEFAULT) {
            Err(TierError::Full { tier: "mmap", limit_bytes }) => assert_eq!(limit_bytes, 8 * PAGE_SIZE as u64),
            other => panic!("expected Full, got {other:?}"),
        }
    }
    let s = t.stats();
    assert_eq!((s.pages, s.stores), (8, 8));
    let mut out = [0u8; PAGE_SIZE];
    for (i, h) in handles.iter().enumerate() {
        t.load(*h, &mut out).unwrap();
        assert!(out == page(i as u64), "page {i} changed after a refused store");
    }
    // One remove makes room for exactly one page.
    t.remove(handles[3]);
    let h = t.store(&page(100), PageClass::DEFAULT).unwrap();
    assert!(matches!(t.store(&page(101), PageClass::DEFAULT), Err(TierError::Full { .. })));
    t.load(h, &mut out).unwrap();
    assert!(out == page(100));
}

#[test]
fn reused_slot_is_not_confused() {
    let t = MmapTier::from_memfd(PAGE_SIZE as u64).unwrap();
    let a = t.store(&page(1), PageClass::DEFAULT).unwrap();
    t.remove(a);
    let b = t.store(&page(2), PageClass::DEFAULT).unwrap();
    assert_eq!(a.raw() & 0xffff_ffff, b.raw() & 0xffff_ffff, "one slot: B must reuse A's");
    assert_ne!(a, b, "the generation must tell them apart");
    let mut out = [0u8; PAGE_SIZE];
    t.load(b, &mut out).unwrap();
    assert!(out == page(2));
    // The stale handle loads nothing, and removing it again frees nothing.
    assert!(matches!(t.load(a, &mut out), Err(TierError::UnknownHandle(h)) if h == a));
    t.remove(a);
    assert_eq!(t.stats().pages, 1);
    assert!(matches!(t.store(&page(3), PageClass::DEFAULT), Err(TierError::Full { .. })));
    t.load(b, &mut out).unwrap();
    assert!(out == page(2));
    assert_eq!((t.stats().loads, t.stats().load_errors), (2, 1));
}

#[test]
fn remove_punches_holes_in_a_memfd() {
    let t = MmapTier::from_memfd(256 * PAGE_SIZE as u64).unwrap();
    assert_eq!(t.allocated_bytes().unwrap(), 0);
    let handles: Vec<_> = (0..256).map(|i| t.store(&page(i), PageClass::DEFAULT).unwrap()).collect();
    assert_eq!(t.allocated_bytes().unwrap(), 256 * PAGE_SIZE as u64);
    for h in &handles[..200] {
        t.remove(*h);
    }
    assert_eq!(t.allocated_bytes().unwrap(), 56 * PAGE_SIZE as u64);
    // The pages left are untouched by their neighbours' holes.
    let mut out = [0u8; PAGE_SIZE];
    for (i, h) in handles.iter().enumerate().skip(200) {
        t.load(*h, &mut out).unwrap();
        assert!(out == page(i as u64));
    }
    // A punched slot takes a new page whole.
    let h = t.store(&page(1000), PageClass::DEFAULT).unwrap();
    t.load(h, &mut out).unwrap();
    assert!(out == page(1000));
}

fn bad_backing(r: Result<MmapTier, TierError>) -> (PathBuf, String) {
    match r {
        Err(e @ TierError::BadBacking { .. }) => {
            let msg = e.to_string();
            let TierError::BadBacking { tier, path, .. } = e else { unreachable!() };
            assert_eq!(tier, "mmap");
            assert!(!msg.contains('\n'), "{msg}");
            (path, msg)
        }
        other => panic!("expected BadBacking, got {other:?}"),
    }
}

#[test]
fn bad_paths_are_refused_by_name() {
    let dir = std::env::temp_dir();
    let (path, msg) = bad_backing(MmapTier::open(&dir, 1 << 20));
    assert_eq!(path, dir);
    assert!(msg.contains(&dir.display().to_string()) && msg.contains("is a directory"), "{msg}");

    let missing = TempPath::new("nodir");
    let child = missing.0.join("pages");
    let (path, msg) = bad_backing(MmapTier::open(&child, 1 << 20));
    assert_eq!(path, child);
    assert!(msg.contains(&child.display().to_string()) && msg.contains("cannot create it"), "{msg}");
    assert!(!missing.0.exists());

    // Character devices other than DAX (and /dev/zero) are refused before
    // anything is written to them.
    for dev in ["/dev/null", "/dev/mem", "/dev/tty"] {
        if std::path::Path::new(dev).exists() {
            let (_, msg) = bad_backing(MmapTier::open(dev, 1 << 20));
            assert!(msg.contains(dev) && msg.contains("not a DAX device"), "{msg}");
        }
    }
}

#[test]
fn bad_limits_are_refused_by_size() {
    let path = TempPath::new("limit");
    for limit in [0, 1, 4095, 4097, 1 << 20 | 512] {
        for r in [MmapTier::open(&path.0, limit), MmapTier::from_memfd(limit)] {
            match r {
                Err(e @ TierError::BadLimit { tier: "mmap", limit_bytes }) => {
                    assert_eq!(limit_bytes, limit);
                    assert!(e.to_string().contains(&format!("{limit} bytes")), "{e}");
                }
                other => panic!("limit {limit}: expected BadLimit, got {other:?}"),
            }
        }
        assert!(!path.0.exists(), "a refused limit must not create the file");
    }
}

// ---- Compressed pages (mmap:PATH:SIZE:lz4 / :zstd) and NUMA binding ----

use farmem_tiers::{Handle, MmapConfig, MmapForm, TierSpec};

/// A heap-like page that compresses (log text with the seed in it), or, for
/// seeds 1, 2 and 3 mod 8, random bytes (stored raw), zeros, one repeated word.
fn mixed_page(seed: u64) -> Page {
    match seed % 8 {
        1 => page(seed),
        2 => [0; PAGE_SIZE],
        3 => {
            let mut p = [0u8; PAGE_SIZE];
            p.chunks_exact_mut(8).for_each(|c| c.copy_from_slice(&(seed | 1).to_le_bytes()));
            p
        }
        _ => {
            let mut p = [b' '; PAGE_SIZE];
            let mut at = 0;
            let mut line = 0u64;
            while at < PAGE_SIZE {
                let text = format!("2026-11-{:02} req={seed:x} line={line} status=200 path=/api/v1/items/{}\n", seed % 28 + 1, (seed * 31 + line) % 977);
                let n = text.len().min(PAGE_SIZE - at);
                p[at..at + n].copy_from_slice(&text.as_bytes()[..n]);
                at += n;
                line += 1;
            }
            p
        }
    }
}

fn compressed_round_trip(t: &MmapTier, n: u64) {
    let handles: Vec<_> = (0..n).map(|i| t.store(&mixed_page(i), PageClass::DEFAULT).unwrap()).collect();
    let s = t.stats();
    assert_eq!((s.pages, s.bytes_in), (n, n * PAGE_SIZE as u64));
    let kinds = |k: u64| (0..n).filter(|i| i % 8 == k).count() as u64;
    assert_eq!((s.zero_pages, s.same_filled_pages), (kinds(2), kinds(3)));
    assert!(s.bytes_compressed < s.bytes_in / 2, "heap-like pages compress: {s:?}");
    assert!(t.capacity().used_bytes < n * PAGE_SIZE as u64 / 2, "{:?}", t.capacity());
    let mut out = [0u8; PAGE_SIZE];
    for (i, h) in handles.iter().enumerate().rev() {
        t.load(*h, &mut out).unwrap();
        assert!(out == mixed_page(i as u64), "page {i} came back different");
    }
    // Several at once, through the trait's default `load_many`.
    let mut many = vec![[0u8; PAGE_SIZE]; 10];
    let mut seen = Vec::new();
    t.load_many(&handles[..10], &mut many, &mut |i, r| seen.push((i, r.is_ok())));
    assert_eq!(seen, (0..10).map(|i| (i, true)).collect::<Vec<_>>());
    assert!(many.iter().enumerate().all(|(i, p)| *p == mixed_page(i as u64)));
    for h in &handles {
        t.remove(*h);
    }
    let s = t.stats();
    assert_eq!((s.pages, s.bytes_compressed, s.loads, s.load_errors), (0, 0, n + 10, 0));
    assert_eq!(t.capacity().used_bytes, 0, "every slab went back to the region");
    assert!(s.load_p50_ns > 0 && s.store_p50_ns > 0, "{s:?}");
}

#[test]
fn lz4_and_zstd_round_trip_on_a_memfd_and_a_file() {
    for form in [MmapForm::Lz4, MmapForm::Zstd { level: 3 }] {
        let t = MmapTier::memfd_with(MmapConfig::new(4 << 20).with_form(form)).unwrap();
        assert_eq!(t.form(), form);
        compressed_round_trip(&t, 1000);
        // Emptied slabs are punched out of the memfd.
        assert_eq!(t.allocated_bytes().unwrap(), 0);
        let path = TempPath::new("lz4");
        let t = MmapTier::open_with(&path.0, MmapConfig::new(4 << 20).with_form(form)).unwrap();
        compressed_round_trip(&t, 1000);
    }
}

#[test]
fn the_spec_builds_compressed_and_numa_bound_mmap_tiers() {
    let path = TempPath::new("spec");
    for (form, text) in [(MmapForm::Lz4, "lz4"), (MmapForm::Zstd { level: 1 }, "zstd:1"), (MmapForm::Raw, "raw")] {
        let spec: TierSpec = format!("lz4,mmap:{}:4M:{text}:numa=0", path.0.display()).parse().unwrap();
        let tiers = spec.build().unwrap();
        let t = &tiers[1];
        assert_eq!((t.name(), t.capacity().limit_bytes), ("mmap", 4 << 20));
        let h = t.store(&mixed_page(4), PageClass::DEFAULT).unwrap();
        let mut out = [0u8; PAGE_SIZE];
        t.load(h, &mut out).unwrap();
        assert!(out == mixed_page(4), "{text}");
        let s = t.stats();
        assert_eq!(s.bytes_compressed < PAGE_SIZE as u64, form != MmapForm::Raw, "{text}: {s:?}");
    }
}

#[test]
fn four_threads_store_load_remove_compressed() {
    const PER_THREAD: u64 = 3000;
    let t = Arc::new(MmapTier::memfd_with(MmapConfig::new(8 << 20).with_form(MmapForm::Lz4)).unwrap());
    let workers: Vec<_> = (0..4u64)
        .map(|id| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                let mut out = [0u8; PAGE_SIZE];
                let mut live: Vec<(Handle, u64)> = Vec::new();
                let mut x = id + 1;
                for i in 0..PER_THREAD {
                    let seed = id << 32 | i;
                    live.push((t.store(&mixed_page(seed), PageClass::DEFAULT).unwrap(), seed));
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (h, s) = live[x as usize % live.len()];
                    t.load(h, &mut out).unwrap();
                    assert!(out == mixed_page(s), "thread {id} seed {s:#x}");
                    // Remove about half, at random: slabs of every class are freed and reused.
                    if x % 2 == 0 {
                        let (h, _) = live.swap_remove((x >> 8) as usize % live.len());
                        t.remove(h);
                    }
                }
                for &(h, s) in &live {
                    t.load(h, &mut out).unwrap();
                    assert!(out == mixed_page(s), "thread {id} seed {s:#x} at the end");
                }
                live.len() as u64
            })
        })
        .collect();
    let live: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let s = t.stats();
    assert_eq!((s.pages, s.stores, s.load_errors), (live, 4 * PER_THREAD, 0));
}

#[test]
fn a_full_compressed_tier_refuses_and_keeps_what_it_has() {
    // One 64 KiB slab: 16 incompressible pages, stored raw.
    let t = MmapTier::memfd_with(MmapConfig::new(64 << 10).with_form(MmapForm::Lz4)).unwrap();
    let held: Vec<_> = (0..16u64).map(|i| (t.store(&page(i), PageClass::DEFAULT).unwrap(), page(i))).collect();
    for _ in 0..3 {
        match t.store(&page(99), PageClass::DEFAULT) {
            Err(TierError::Full { tier: "mmap", limit_bytes }) => assert_eq!(limit_bytes, 64 << 10),
            other => panic!("expected Full, got {other:?}"),
        }
        // A compressible page needs a slab of its class too: none is left.
        assert!(matches!(t.store(&mixed_page(0), PageClass::DEFAULT), Err(TierError::Full { .. })));
    }
    // A page of one repeated word takes no room in the region.
    let zero = t.store(&[0; PAGE_SIZE], PageClass::DEFAULT).unwrap();
    let s = t.stats();
    assert_eq!((s.pages, s.stores, s.zero_pages), (17, 17, 1));
    let mut out = [0u8; PAGE_SIZE];
    for (h, p) in &held {
        t.load(*h, &mut out).unwrap();
        assert!(out == *p, "a page changed after a refused store");
    }
    t.load(zero, &mut out).unwrap();
    assert!(out == [0; PAGE_SIZE]);
    // One remove makes room for one raw page again.
    t.remove(held[5].0);
    let h = t.store(&page(100), PageClass::DEFAULT).unwrap();
    assert!(matches!(t.store(&page(101), PageClass::DEFAULT), Err(TierError::Full { .. })));
    t.load(h, &mut out).unwrap();
    assert!(out == page(100));
    assert!(matches!(t.load(held[5].0, &mut out), Err(TierError::UnknownHandle(_))));
}

#[test]
fn numa_0_works_and_a_missing_node_is_named() {
    for form in [MmapForm::Raw, MmapForm::Lz4] {
        let t = MmapTier::memfd_with(MmapConfig::new(1 << 20).with_form(form).on_node(0)).unwrap();
        assert_eq!(t.numa_node(), Some(0));
        let h = t.store(&mixed_page(6), PageClass::DEFAULT).unwrap();
        let mut out = [0u8; PAGE_SIZE];
        t.load(h, &mut out).unwrap();
        assert!(out == mixed_page(6));
    }
    let path = TempPath::new("numa");
    for node in [1023u32, 1024, 4000] {
        let (p, msg) = bad_backing(MmapTier::open_with(&path.0, MmapConfig::new(1 << 20).on_node(node)));
        assert_eq!(p, path.0);
        assert!(msg.contains(&format!("NUMA node {node}")) && msg.contains(&*path.0.to_string_lossy()), "{msg}");
        assert!(!path.0.exists(), "a refused node creates nothing");
        let (_, msg) = bad_backing(MmapTier::memfd_with(MmapConfig::new(1 << 20).on_node(node)));
        assert!(msg.contains(&format!("NUMA node {node}")), "{msg}");
    }
    // Through the spec, the message names the tier as written and the node.
    let spec: TierSpec = format!("lz4,mmap:{}:1M:lz4:numa=1023", path.0.display()).parse().unwrap();
    let e = spec.build().err().expect("node 1023 does not exist here");
    let msg = e.to_string();
    assert!(msg.contains("numa=1023") && msg.contains("NUMA node 1023 does not exist"), "{msg}");
}

/// Figures for the report, not a check: `cargo test --release -p
/// farmem-tiers --test mmap -- --ignored --nocapture load_latency`.
#[test]
#[ignore = "timing, not a check"]
fn load_latency_raw_lz4_zstd() {
    let n = 20_000u64;
    for form in [MmapForm::Raw, MmapForm::Lz4, MmapForm::Zstd { level: 1 }] {
        let t = MmapTier::memfd_with(MmapConfig::new(n * PAGE_SIZE as u64).with_form(form)).unwrap();
        let handles: Vec<_> = (0..n).map(|i| t.store(&mixed_page(i), PageClass::DEFAULT).unwrap()).collect();
        let mut out = [0u8; PAGE_SIZE];
        let mut x = 7u64;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t.load(handles[(x % n) as usize], &mut out).unwrap();
        }
        let s = t.stats();
        println!(
            "{form}: load p50 {:.2} µs p99 {:.2} µs, store p50 {:.2} µs; {:.2}x the pages of a raw tier in the same region",
            s.load_p50_ns as f64 / 1e3,
            s.load_p99_ns as f64 / 1e3,
            s.store_p50_ns as f64 / 1e3,
            (n * PAGE_SIZE as u64) as f64 / t.capacity().used_bytes as f64
        );
    }
}
