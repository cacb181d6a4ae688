//! Tests of T1 that need its insides: exact memory accounting, slabs given back
//! to the kernel, corrupt objects.

use super::slab::{class_of, geometry};
use super::*;

const TABLE_PAGE: u64 = PAGE_SIZE as u64;
const META_PAGE: u64 = PAGE_SIZE as u64;

/// A page lz4 compresses to a few hundred bytes, different for each `seed`
/// only in its first word (so all compress to nearly the same size).
fn text_page(seed: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    let line = b"GET /api/v1/users/{id}/orders?limit=50 HTTP/1.1 200 OK 1532 bytes in 12 ms\n";
    for (i, b) in p.iter_mut().enumerate() {
        *b = line[i % line.len()] ^ ((i / 512) as u8);
    }
    p[..8].copy_from_slice(&seed.to_le_bytes());
    p
}

fn random_page(seed: u64) -> Page {
    let mut x = seed | 1;
    let mut p = [0u8; PAGE_SIZE];
    for w in p.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    p
}

/// A page of text from a 36-letter alphabet, each letter uniformly random
/// (redis values of random alphanumerics): no repeats for lz4 to find, but
/// only 5.2 bits of each byte carry anything, which zstd's entropy coding
/// takes out.
fn alphanumeric_page(seed: u64) -> Page {
    const LETTERS: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut p = random_page(seed);
    p.iter_mut().for_each(|b| *b = LETTERS[*b as usize % 36]);
    p
}

fn zstd1_len(p: &Page) -> usize {
    let mut buf = [0u8; SCRATCH_BYTES];
    codec::compress(Codec::Zstd { level: 1 }, p, &mut buf).unwrap().unwrap()
}

fn lz4_len(p: &Page) -> usize {
    let mut buf = [0u8; SCRATCH_BYTES];
    lz4_flex::block::compress_into(p, &mut buf).unwrap()
}

#[test]
fn counters_and_memory_are_exact_and_slabs_go_back_to_the_kernel() {
    let t = CompressedTier::new(CompressedConfig::lz4().with_limit(1 << 30)).unwrap();
    assert_eq!(t.stats(), TierStats::default());
    let len = lz4_len(&text_page(0));
    assert!((1..=t.threshold).contains(&len));
    let g = geometry(class_of(len));
    let n = 3 * g.per_slab as u64 + 1;
    let mut held = Vec::new();
    let mut total = 0;
    for seed in 0..n {
        let p = text_page(seed);
        let l = lz4_len(&p);
        assert_eq!(class_of(l), class_of(len), "seed {seed}");
        total += l as u64;
        held.push((t.store(&p, PageClass::DEFAULT).unwrap(), p));
    }
    for (w, _) in [(0u64, 0), (0, 1), (0, 2), (0x0101_0101_0101_0101, 3), (u64::MAX, 4)] {
        let mut p = [0u8; PAGE_SIZE];
        p.chunks_exact_mut(8).for_each(|c| c.copy_from_slice(&w.to_ne_bytes()));
        held.push((t.store(&p, PageClass::DEFAULT).unwrap(), p));
    }
    let s = t.stats();
    let pages = n + 5;
    let used = 4 * g.slab_bytes as u64 + TABLE_PAGE + META_PAGE;
    assert_eq!(
        s,
        TierStats {
            pages,
            zero_pages: 3,
            same_filled_pages: 2,
            rejected_incompressible: 0,
            bytes_in: pages * PAGE_SIZE as u64,
            bytes_compressed: total + 5 * 8,
            bytes_used: used,
            stores: pages,
            loads: 0,
            load_errors: 0,
            // Timings cannot be exact; every store was timed.
            store_p50_ns: s.store_p50_ns,
            store_p99_ns: s.store_p99_ns,
            ..TierStats::default()
        }
    );
    assert!(s.store_p50_ns > 0 && s.store_p99_ns >= s.store_p50_ns, "{s:?}");
    assert_eq!(t.memory(), CompressedMemory { slabs: 4, slab_bytes: 4 * g.slab_bytes as u64, table_bytes: TABLE_PAGE, metadata_bytes: META_PAGE });
    assert_eq!(t.capacity(), Capacity { limit_bytes: 1 << 30, used_bytes: used });
    // Three full slabs, and one page of the fourth for its one object.
    assert_eq!(t.slabs.resident_pages(), 3 * g.slab_bytes as usize / PAGE_SIZE + 1);

    let mut out = [0u8; PAGE_SIZE];
    for (h, p) in &held {
        t.load(*h, &mut out).unwrap();
        assert_eq!(&out, p);
    }
    let s = t.stats();
    assert_eq!(s.loads, pages);
    assert!(s.load_p50_ns > 0 && s.load_p99_ns >= s.load_p50_ns, "{s:?}");

    for (h, _) in &held {
        t.remove(*h);
    }
    let s = t.stats();
    assert_eq!((s.pages, s.zero_pages, s.same_filled_pages, s.bytes_in, s.bytes_compressed), (0, 0, 0, 0, 0));
    assert_eq!(s.bytes_used, TABLE_PAGE + META_PAGE, "only the table and metadata high-water marks remain");
    assert_eq!(t.memory().slabs, 0);
    assert_eq!(t.slabs.resident_pages(), 0, "empty slabs were not given back");

    // Removed handles load as unknown and removing them again changes nothing.
    assert!(matches!(t.load(held[0].0, &mut out), Err(TierError::UnknownHandle(_))));
    t.remove(held[0].0);
    assert_eq!(t.stats().pages, 0);
    assert_eq!(t.stats().load_errors, 1);
}

#[test]
fn reject_and_store_raw_account_exactly() {
    let p = random_page(7);
    let rejecting = CompressedTier::new(CompressedConfig::lz4().with_limit(1 << 30)).unwrap();
    match rejecting.store(&p, PageClass::DEFAULT) {
        Err(TierError::Incompressible { compressed, threshold }) => assert_eq!((compressed, threshold), (lz4_len(&p), 3072)),
        other => panic!("{other:?}"),
    }
    let s = rejecting.stats();
    assert_eq!((s.pages, s.rejected_incompressible, s.stores, s.bytes_used), (0, 1, 0, 0));

    let raw = CompressedTier::new(CompressedConfig::zstd(3).with_limit(1 << 30).with_incompressible(Incompressible::StoreRaw)).unwrap();
    let h = raw.store(&p, PageClass::DEFAULT).unwrap();
    let s = raw.stats();
    assert_eq!((s.pages, s.rejected_incompressible, s.bytes_compressed), (1, 0, PAGE_SIZE as u64));
    assert_eq!(s.bytes_used, geometry(class_of(PAGE_SIZE)).slab_bytes as u64 + TABLE_PAGE + META_PAGE);
    assert!(matches!(raw.handles.get(h), Some(Entry::Object { encoding: Encoding::Raw, len: PAGE_SIZE, .. })));
    let mut out = [0u8; PAGE_SIZE];
    raw.load(h, &mut out).unwrap();
    assert_eq!(out, p);
}

#[test]
fn a_corrupt_object_is_an_error_never_a_page() {
    for config in [CompressedConfig::lz4(), CompressedConfig::zstd(3)] {
        let t = CompressedTier::new(config.with_limit(1 << 30)).unwrap();
        let h = t.store(&text_page(1), PageClass::DEFAULT).unwrap();
        let Some(Entry::Object { len, offset, .. }) = t.handles.get(h) else { panic!("not an object") };
        // SAFETY: the object is this test's own and nothing else uses the tier.
        unsafe { std::ptr::write_bytes(t.slabs.object(offset, len), 0xff, len) };
        let mut out = [0u8; PAGE_SIZE];
        match t.load(h, &mut out) {
            Err(TierError::Corrupt { handle, reason }) => {
                assert_eq!(handle, h);
                assert!(reason.contains(&format!("{offset:#x}")), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((t.stats().loads, t.stats().load_errors), (0, 1));
        t.remove(h);
        assert_eq!(t.stats().bytes_used, TABLE_PAGE + META_PAGE);
    }
}

#[test]
fn full_changes_nothing_and_fill_pages_still_fit_the_table() {
    let len = lz4_len(&text_page(0));
    let g = geometry(class_of(len));
    let limit = g.slab_bytes as u64 + TABLE_PAGE + META_PAGE;
    let t = CompressedTier::new(CompressedConfig::lz4().with_limit(limit)).unwrap();
    let held: Vec<_> = (0..g.per_slab as u64).map(|s| t.store(&text_page(s), PageClass::DEFAULT).unwrap()).collect();
    let before = t.stats();
    assert_eq!(before.bytes_used, limit);
    match t.store(&text_page(99), PageClass::DEFAULT) {
        Err(TierError::Full { tier: "lz4", limit_bytes }) => assert_eq!(limit_bytes, limit),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.stats(), before);
    // A zero page needs only a table entry, and the table's page has room.
    let z = t.store(&[0; PAGE_SIZE], PageClass::DEFAULT).unwrap();
    assert_eq!(t.stats().bytes_used, limit);
    t.remove(held[0]);
    let again = t.store(&text_page(100), PageClass::DEFAULT).unwrap();
    let mut out = [0u8; PAGE_SIZE];
    t.load(again, &mut out).unwrap();
    assert_eq!(out, text_page(100));
    t.load(z, &mut out).unwrap();
    assert_eq!(out, [0; PAGE_SIZE]);
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    for (config, words) in [
        (CompressedConfig { codecs: vec![], ..CompressedConfig::lz4() }, "no codec"),
        (CompressedConfig::zstd(1000), "zstd level 1000"),
        (CompressedConfig::lz4().with_fallback(Some(Codec::Zstd { level: 1000 })), "zstd level 1000"),
    ] {
        match CompressedTier::new(config) {
            Err(TierError::Os { source, .. }) => assert!(source.to_string().contains(words), "{source}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        }
    }
    let c = CompressedConfig::lz4().with_codec(PageClass(2), Codec::Zstd { level: 5 });
    assert_eq!(c.codecs, vec![Codec::Lz4, Codec::Lz4, Codec::Zstd { level: 5 }]);
    assert_eq!(c.codec(PageClass(200)), Codec::Zstd { level: 5 });
    assert_eq!(c.codec(PageClass::COLD), Codec::Lz4);
}

#[test]
fn compaction_packs_a_class_into_the_fewest_slabs_and_gives_the_rest_back() {
    let t = CompressedTier::new(CompressedConfig::lz4().with_limit(1 << 30)).unwrap();
    let len = lz4_len(&text_page(0));
    let g = geometry(class_of(len));
    let n = 20 * g.per_slab as u64;
    let held: Vec<_> = (0..n).map(|s| (t.store(&text_page(s), PageClass::DEFAULT).unwrap(), text_page(s))).collect();
    assert_eq!(t.memory().slabs, 20);
    // Keep every fourth page: each slab keeps a quarter of its objects.
    let (kept, gone): (Vec<_>, Vec<_>) = held.into_iter().enumerate().partition(|(i, _)| i % 4 == 0);
    for (_, (h, _)) in &gone {
        t.remove(*h);
    }
    assert_eq!(t.memory().slabs, 20, "no slab emptied by scattered removes");
    let live = kept.len() as u64;
    let r = t.compact();
    let fewest = live.div_ceil(g.per_slab as u64);
    assert_eq!(r.slabs_freed, 20 - fewest, "{r:?}");
    assert_eq!(r.bytes_freed, r.slabs_freed * g.slab_bytes as u64);
    assert_eq!(r.objects_left, 0);
    assert!(r.objects_moved > 0 && r.objects_moved <= live);
    // The work shows in the tier's statistics: every moved object is of the class.
    let s = t.stats();
    assert_eq!((s.compactions, s.compaction_bytes_freed), (1, r.bytes_freed));
    let per_object = s.compaction_bytes_moved / r.objects_moved;
    assert!(per_object > g.size as u64 - 32 && per_object <= g.size as u64, "{per_object} bytes an object of class {}", g.size);
    assert!(s.compaction_ns > 0);
    assert_eq!(t.memory().slabs, fewest);
    let table = (n * 16).next_multiple_of(PAGE_SIZE as u64);
    assert_eq!(t.memory().table_bytes, table);
    assert_eq!(t.stats().bytes_used, fewest * g.slab_bytes as u64 + table + META_PAGE);
    assert!(t.slabs.resident_pages() <= fewest as usize * g.slab_bytes as usize / PAGE_SIZE);
    let mut out = [0u8; PAGE_SIZE];
    for (_, (h, p)) in &kept {
        t.load(*h, &mut out).unwrap();
        assert_eq!(&out, p);
    }
    // Nothing left to do, and the tier works on as before.
    assert_eq!(t.compact(), CompactReport::default());
    let h = t.store(&text_page(n + 1), PageClass::DEFAULT).unwrap();
    t.load(h, &mut out).unwrap();
    assert_eq!(out, text_page(n + 1));
    for (_, (h, _)) in kept {
        t.remove(h);
    }
    t.remove(h);
    assert_eq!((t.memory().slabs, t.stats().bytes_used), (0, table + META_PAGE));
}

#[test]
fn a_slab_that_could_not_be_emptied_is_finished_by_the_next_compaction() {
    let len = lz4_len(&text_page(0));
    let g = geometry(class_of(len));
    let per = g.per_slab as u64;
    let t = CompressedTier::new(CompressedConfig::lz4().with_limit(1 << 30)).unwrap();
    let held: Vec<_> = (0..2 * per).map(|s| t.store(&text_page(s), PageClass::DEFAULT).unwrap()).collect();
    // Slab 0 keeps 1 object, slab 1 keeps half.
    for &h in held[1..per as usize].iter().chain(&held[(per + per / 2) as usize..]) {
        t.remove(h);
    }
    assert_eq!(t.slabs.begin_evacuation(class_of(len)), 1);
    // A store cannot go to the evacuating slab; a remove from it retires it.
    let extra = t.store(&text_page(999), PageClass::DEFAULT).unwrap();
    let Some(Entry::Object { offset, .. }) = t.handles.get(extra) else { panic!() };
    assert_eq!(offset / slab::STRIDE, 1);
    t.remove(held[0]);
    assert_eq!(t.memory().slabs, 2, "retired, not yet given back");
    let r = t.compact();
    assert_eq!((r.slabs_freed, r.objects_moved), (1, 0));
    assert_eq!(t.memory().slabs, 1);
    let mut out = [0u8; PAGE_SIZE];
    t.load(extra, &mut out).unwrap();
    assert_eq!(out, text_page(999));
}

#[test]
fn the_fallback_keeps_what_lz4_refuses_and_only_that() {
    let mut out = [0u8; PAGE_SIZE];
    let alnum = alphanumeric_page(3);
    let (lz4, zstd) = (lz4_len(&alnum), zstd1_len(&alnum));
    assert!(lz4 > 3072 && zstd <= 2800, "lz4 {lz4}, zstd:1 {zstd} bytes: not the page this test is about");

    // lz4 alone refuses it; lz4+zstd:1 (the default) keeps it as zstd.
    let alone = CompressedTier::new(CompressedConfig::lz4().with_limit(1 << 30)).unwrap();
    assert!(matches!(alone.store(&alnum, PageClass::DEFAULT), Err(TierError::Incompressible { .. })));
    assert_eq!((alone.stats().rejected_incompressible, alone.stats().fallback_failures), (1, 0));
    let t = CompressedTier::new(CompressedConfig::default().with_limit(1 << 30)).unwrap();
    assert_eq!((t.config().fallback, t.name()), (Some(Codec::Zstd { level: 1 }), "lz4+zstd"));
    let h = t.store(&alnum, PageClass::DEFAULT).unwrap();
    assert!(matches!(t.handles.get(h), Some(Entry::Object { encoding: Encoding::Zstd, len, .. }) if len == zstd));
    t.load(h, &mut out).unwrap();
    assert_eq!(out, alnum);
    let s = t.stats();
    assert_eq!((s.stores, s.fallback_stores, s.fallback_failures, s.rejected_incompressible, s.bytes_compressed), (1, 1, 0, 0, zstd as u64));

    // A page lz4 compresses never meets the fallback.
    let text = text_page(5);
    let h2 = t.store(&text, PageClass::DEFAULT).unwrap();
    assert!(matches!(t.handles.get(h2), Some(Entry::Object { encoding: Encoding::Lz4, .. })));
    t.load(h2, &mut out).unwrap();
    assert_eq!(out, text);
    assert_eq!((t.stats().stores, t.stats().fallback_stores, t.stats().fallback_failures), (2, 1, 0));

    // Random bytes defeat both: refused, with the smaller of the two sizes.
    let noise = random_page(9);
    match t.store(&noise, PageClass::DEFAULT) {
        Err(TierError::Incompressible { compressed, threshold: 3072 }) => assert_eq!(compressed, lz4_len(&noise).min(zstd1_len(&noise))),
        other => panic!("{other:?}"),
    }
    let s = t.stats();
    assert_eq!((s.stores, s.fallback_stores, s.fallback_failures, s.rejected_incompressible, s.pages), (2, 1, 1, 1, 2));
    t.remove(h);
    t.remove(h2);
    assert_eq!((t.stats().pages, t.stats().bytes_used), (0, TABLE_PAGE + META_PAGE));
}

#[test]
fn store_raw_comes_after_the_fallback_and_a_class_with_the_fallbacks_codec_skips_it() {
    let mut out = [0u8; PAGE_SIZE];
    let raw = CompressedTier::new(CompressedConfig::default().with_limit(1 << 30).with_incompressible(Incompressible::StoreRaw)).unwrap();
    let (noise, alnum) = (random_page(1), alphanumeric_page(2));
    let hn = raw.store(&noise, PageClass::DEFAULT).unwrap();
    let ha = raw.store(&alnum, PageClass::DEFAULT).unwrap();
    assert!(matches!(raw.handles.get(hn), Some(Entry::Object { encoding: Encoding::Raw, .. })));
    assert!(matches!(raw.handles.get(ha), Some(Entry::Object { encoding: Encoding::Zstd, .. })));
    for (h, p) in [(hn, noise), (ha, alnum)] {
        raw.load(h, &mut out).unwrap();
        assert_eq!(out, p);
    }
    let s = raw.stats();
    assert_eq!((s.stores, s.fallback_stores, s.fallback_failures, s.rejected_incompressible), (2, 1, 1, 0));

    // The cold class already compresses with zstd:1: the same codec again
    // would only repeat the work, so it is not tried.
    let cold = Codec::Zstd { level: 1 };
    let t = CompressedTier::new(CompressedConfig::default().with_limit(1 << 30).with_codec(PageClass::COLD, cold)).unwrap();
    assert!(matches!(t.store(&noise, PageClass::COLD), Err(TierError::Incompressible { .. })));
    t.store(&alnum, PageClass::COLD).unwrap();
    let s = t.stats();
    assert_eq!((s.stores, s.fallback_stores, s.fallback_failures, s.rejected_incompressible), (1, 0, 0, 1));
    // A tier named by its default class, whose fallback it never tries.
    let same = CompressedTier::new(CompressedConfig::zstd(1).with_fallback(Some(cold))).unwrap();
    assert_eq!(same.name(), "zstd");
}

#[test]
fn a_full_tier_does_not_count_a_fallback_store() {
    let len = zstd1_len(&alphanumeric_page(0));
    let g = geometry(class_of(len));
    let limit = g.slab_bytes as u64 + TABLE_PAGE + META_PAGE;
    let t = CompressedTier::new(CompressedConfig::default().with_limit(limit)).unwrap();
    let mut seed = 0;
    let err = loop {
        match t.store(&alphanumeric_page(seed), PageClass::DEFAULT) {
            Ok(_) => seed += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, TierError::Full { tier: "lz4+zstd", .. }), "{err}");
    assert_eq!((t.stats().fallback_stores, t.stats().stores), (seed, seed));
}
