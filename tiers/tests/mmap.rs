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
        TempPath(std::env::temp_dir().join(format!(
            "farmem-mmap-{what}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
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
