//! T1 round trips, packing and accounting; every check compares bytes or counts.

use std::collections::HashMap;
use std::sync::Arc;

use farmem_tiers::{Codec, CompressedConfig, CompressedTier, Incompressible, Page, PageClass, Tier, TierError, PAGE_SIZE};
use proptest::prelude::*;

fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    x |= 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// A page of the kind `kind` (0 zero, 1 same-filled, 2 text, 3 structs, 4 zero runs, 5 random).
fn page(kind: u64, seed: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    let mut r = xorshift(seed.wrapping_mul(0x9E3779B97F4A7C15));
    match kind % 6 {
        0 => {}
        1 => {
            let w = r().to_ne_bytes();
            p.chunks_exact_mut(8).for_each(|c| c.copy_from_slice(&w));
        }
        2 => {
            let words = ["the ", "cold ", "page ", "is ", "far ", "memory ", "{\"key\": ", "\"value\", ", "42, "];
            let mut at = 0;
            while at < PAGE_SIZE {
                let w = words[(r() % words.len() as u64) as usize].as_bytes();
                let n = w.len().min(PAGE_SIZE - at);
                p[at..at + n].copy_from_slice(&w[..n]);
                at += n;
            }
        }
        3 => {
            for rec in p.chunks_exact_mut(32) {
                rec[..8].copy_from_slice(&(0x7f3a_0000_0000u64 + (r() % 65536) * 16).to_le_bytes());
                rec[8..12].copy_from_slice(&((r() % 1000) as u32).to_le_bytes());
                rec[12] = (r() % 4) as u8;
            }
        }
        4 => {
            for (i, c) in p.chunks_exact_mut(256).enumerate() {
                if i % 3 == 0 {
                    c.iter_mut().for_each(|b| *b = r() as u8);
                }
            }
        }
        _ => p.chunks_exact_mut(8).for_each(|c| c.copy_from_slice(&r().to_ne_bytes())),
    }
    p
}

fn tiers() -> Vec<CompressedTier> {
    vec![CompressedTier::new(CompressedConfig::lz4()).unwrap(), CompressedTier::new(CompressedConfig::zstd(3)).unwrap()]
}

#[test]
fn every_kind_of_page_round_trips_with_both_codecs() {
    for t in tiers() {
        let mut held = Vec::new();
        for kind in 0..6 {
            for seed in 0..50 {
                let p = page(kind, seed);
                match t.store(&p, PageClass::DEFAULT) {
                    Ok(h) => held.push((h, p)),
                    Err(TierError::Incompressible { .. }) => assert_eq!(kind, 5, "only random pages are refused"),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let mut out = [0u8; PAGE_SIZE];
        for (h, p) in &held {
            t.load(*h, &mut out).unwrap();
            assert_eq!(&out, p);
        }
        let s = t.stats();
        assert_eq!(s.pages, held.len() as u64);
        assert_eq!(s.zero_pages, 50);
        assert_eq!(s.same_filled_pages, 50);
        assert_eq!(s.rejected_incompressible, 50);
        for (h, _) in held {
            t.remove(h);
        }
        let s = t.stats();
        assert_eq!((s.pages, s.bytes_compressed, s.zero_pages), (0, 0, 0));
        assert!(s.bytes_used <= 64 << 10, "slabs not returned: {} bytes used", s.bytes_used);
    }
}

#[test]
fn store_raw_keeps_incompressible_pages() {
    let t = CompressedTier::new(CompressedConfig { incompressible: Incompressible::StoreRaw, ..CompressedConfig::lz4() }).unwrap();
    let p = page(5, 9);
    let h = t.store(&p, PageClass::DEFAULT).unwrap();
    let mut out = [0u8; PAGE_SIZE];
    t.load(h, &mut out).unwrap();
    assert_eq!(out, p);
    assert_eq!(t.stats().bytes_compressed, PAGE_SIZE as u64);
}

#[test]
fn a_page_class_can_choose_zstd() {
    let t = CompressedTier::new(CompressedConfig { codecs: vec![Codec::Lz4, Codec::Zstd { level: 9 }], ..CompressedConfig::default() }).unwrap();
    let p = page(2, 4);
    let a = t.store(&p, PageClass::DEFAULT).unwrap();
    let before = t.stats().bytes_compressed;
    let b = t.store(&p, PageClass::COLD).unwrap();
    let zstd_len = t.stats().bytes_compressed - before;
    assert!(zstd_len < before, "zstd:9 ({zstd_len}) should beat lz4 ({before}) on text");
    let mut out = [0u8; PAGE_SIZE];
    t.load(a, &mut out).unwrap();
    assert_eq!(out, p);
    t.load(b, &mut out).unwrap();
    assert_eq!(out, p);
}

#[test]
fn full_at_the_limit_and_nothing_dropped() {
    let t = CompressedTier::new(CompressedConfig { limit_bytes: 128 << 10, ..CompressedConfig::lz4() }).unwrap();
    let mut held = Vec::new();
    let mut seed = 0;
    let full = loop {
        seed += 1;
        let p = page(3, seed);
        match t.store(&p, PageClass::DEFAULT) {
            Ok(h) => held.push((h, p)),
            Err(e) => break e,
        }
        assert!(seed < 100_000);
    };
    assert!(matches!(full, TierError::Full { .. }), "{full}");
    assert!(held.len() > 10);
    let mut out = [0u8; PAGE_SIZE];
    for (h, p) in &held {
        t.load(*h, &mut out).unwrap();
        assert_eq!(&out, p);
    }
}

#[test]
fn threads_store_load_and_remove_at_once() {
    for t in tiers() {
        let t = Arc::new(t);
        let threads: Vec<_> = (0..4u64)
            .map(|k| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    let mut held: Vec<(farmem_tiers::Handle, Page)> = Vec::new();
                    let mut out = [0u8; PAGE_SIZE];
                    for i in 0..3000u64 {
                        let p = page(i % 5, k * 1_000_000 + i);
                        held.push((t.store(&p, PageClass::DEFAULT).unwrap(), p));
                        if i % 3 == 0 {
                            let (h, p) = held.swap_remove((i as usize * 7919) % held.len());
                            t.load(h, &mut out).unwrap();
                            assert_eq!(out, p);
                            t.remove(h);
                        }
                    }
                    for (h, p) in held {
                        t.load(h, &mut out).unwrap();
                        assert_eq!(out, p);
                        t.remove(h);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let s = t.stats();
        assert_eq!((s.pages, s.bytes_compressed), (0, 0));
    }
}

#[test]
fn overhead_on_realistic_pages_is_under_ten_percent() {
    for t in tiers() {
        // A heap-like mix: text, structs, zero runs, some zero and same-filled pages.
        for i in 0..40_000u64 {
            let kind = [2, 3, 4, 2, 3, 0, 1, 3, 2, 4][(i % 10) as usize];
            let _ = t.store(&page(kind, i), PageClass::DEFAULT).unwrap();
        }
        let s = t.stats();
        println!(
            "{}: {} pages, ratio {:.2}x, compressed {} B, used {} B, overhead {:.2}%",
            t.name(),
            s.pages,
            s.ratio(),
            s.bytes_compressed,
            s.bytes_used,
            100.0 * s.overhead()
        );
        assert!(s.overhead() < 0.10, "overhead {:.3}", s.overhead());
        assert!(s.ratio() > 2.0, "ratio {:.2}", s.ratio());
    }
}

#[derive(Debug, Clone)]
enum Op {
    Store(u64, u64),
    Load(usize),
    Remove(usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn matches_a_map(ops in proptest::collection::vec(prop_oneof![
        3 => (0u64..6, any::<u64>()).prop_map(|(k, s)| Op::Store(k, s)),
        2 => any::<usize>().prop_map(Op::Load),
        2 => any::<usize>().prop_map(Op::Remove),
    ], 1..400), zstd in any::<bool>()) {
        let cfg = if zstd { CompressedConfig::zstd(1) } else { CompressedConfig::lz4() };
        let t = CompressedTier::new(CompressedConfig { incompressible: Incompressible::StoreRaw, ..cfg }).unwrap();
        let mut shadow: HashMap<u64, Page> = HashMap::new();
        let mut keys: Vec<u64> = Vec::new();
        let mut out = [0u8; PAGE_SIZE];
        for op in ops {
            match op {
                Op::Store(k, s) => {
                    let p = page(k, s);
                    let h = t.store(&p, PageClass::DEFAULT).unwrap();
                    prop_assert!(shadow.insert(h.raw(), p).is_none(), "handle reused while live");
                    keys.push(h.raw());
                }
                Op::Load(i) if !keys.is_empty() => {
                    let h = keys[i % keys.len()];
                    t.load(farmem_tiers::Handle::new(h), &mut out).unwrap();
                    prop_assert_eq!(&out, &shadow[&h]);
                }
                Op::Remove(i) if !keys.is_empty() => {
                    let h = keys.swap_remove(i % keys.len());
                    t.remove(farmem_tiers::Handle::new(h));
                    shadow.remove(&h);
                }
                _ => {}
            }
            prop_assert_eq!(t.stats().pages, shadow.len() as u64);
        }
    }
}
