//! `farmem demo`: the whole engine on a realistic heap, checked byte for byte.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use farmem_bench::heap;
use farmem_runtime::mem::Mapping;
use farmem_runtime::{Runtime, PAGE_SIZE};
use farmem_tiers::{Codec, CompressedConfig, CompressedTier};
use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::SeedableRng;

const SEED: u64 = 0xfa7_3e3;

fn gib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// Resident memory of this process, from /proc/self/statm.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * PAGE_SIZE as u64
}

fn progress(what: &str, done: usize, total: usize) {
    if done.is_multiple_of((total / 20).max(1)) || done == total {
        eprint!("\r{what}: {:>3}%", done * 100 / total.max(1));
        if done == total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

/// Parses "lz4", "zstd" or "zstd:LEVEL".
pub fn codec(s: &str) -> Result<Codec, String> {
    match s.split_once(':') {
        None if s == "lz4" => Ok(Codec::Lz4),
        None if s == "zstd" => Ok(Codec::Zstd { level: 3 }),
        Some(("zstd", l)) => l.parse().map(|level| Codec::Zstd { level }).map_err(|_| format!("zstd level '{l}' is not a number (1-19)")),
        _ => Err(format!("codec '{s}' is not one of: lz4, zstd, zstd:LEVEL")),
    }
}

pub fn run(size: u64, threads: usize, codec_name: &str) -> Result<(), String> {
    let codec = codec(codec_name)?;
    let size = (size as usize).next_multiple_of(PAGE_SIZE);
    let pages = size / PAGE_SIZE;
    // The mapping outlives the runtime, which gives its pages back on drop.
    let map = Mapping::anonymous(size).map_err(|e| e.to_string())?;
    let tier = CompressedTier::new(CompressedConfig { codecs: vec![codec], ..CompressedConfig::default() }).map_err(|e| e.to_string())?;
    let rt = Runtime::builder().tier(Arc::new(tier)).build().map_err(|e| e.to_string())?;
    rt.register(map.addr(), size).map_err(|e| e.to_string())?;
    // SAFETY: the mapping is `size` bytes; this thread is its only user until the readers start.
    let bytes = unsafe { std::slice::from_raw_parts_mut(map.addr(), size) };

    println!("farmem demo: {} of heap (strings, structs with pointers, zero runs, random bytes), codec {codec_name}", gib(size as u64));
    let rss_start = rss();
    let chunk = 256 * PAGE_SIZE;
    for (k, c) in bytes.chunks_mut(chunk).enumerate() {
        heap::fill_at(c, SEED, k * chunk / PAGE_SIZE);
        progress("filling", k + 1, size.div_ceil(chunk));
    }
    let sums = heap::page_checksums(bytes);
    let rss_full = rss();

    let t = Instant::now();
    let step = 1024 * PAGE_SIZE;
    let mut evicted = 0;
    let mut rejected = 0;
    for (k, at) in (0..size).step_by(step).enumerate() {
        let len = step.min(size - at);
        // SAFETY: the range lies inside the mapping.
        let r = rt.evict(unsafe { map.addr().add(at) }, len).map_err(|e| e.to_string())?;
        evicted += r.evicted;
        rejected += r.rejected;
        progress("evicting", k + 1, size.div_ceil(step));
    }
    let evict_secs = t.elapsed().as_secs_f64();
    let rss_evicted = rss();
    let tier = rt.stats().tiers[0].1;

    let mut order: Vec<usize> = (0..pages).collect();
    order.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(SEED));
    let order = Arc::new(order);
    let wrong = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let t = Instant::now();
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|t| {
                let (order, sums, wrong, done) = (Arc::clone(&order), &sums, &wrong, &done);
                let base = map.addr() as usize;
                s.spawn(move || {
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
                    for &p in order.iter().skip(t).step_by(threads.max(1)) {
                        // SAFETY: page p lies inside the mapping; readers only read.
                        let page = unsafe { std::slice::from_raw_parts((base + p * PAGE_SIZE) as *const u8, PAGE_SIZE) };
                        let s = Instant::now();
                        // The first touch of the page is the fault; time just that.
                        // SAFETY: the page is mapped and readable; nobody writes it now.
                        let first = unsafe { std::ptr::read_volatile(page.as_ptr()) };
                        h.record(s.elapsed().as_nanos().max(1) as u64).expect("bounds");
                        std::hint::black_box(first);
                        if heap::checksum(page) != sums[p] {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if t == 0 {
                            progress("reading back", n as usize, pages);
                        }
                    }
                    h
                })
            })
            .collect();
        for h in handles {
            lat.add(h.join().expect("reader thread")).expect("same bounds");
        }
    });
    if done.load(Ordering::Relaxed) as usize != pages {
        progress("reading back", pages, pages);
    }
    let read_secs = t.elapsed().as_secs_f64();
    let rss_end = rss();
    let after = rt.stats();
    let wrong = wrong.load(Ordering::Relaxed);

    println!();
    println!("  heap                      {}", gib(size as u64));
    println!("  process RSS, at start     {}", gib(rss_start));
    println!("  process RSS, heap filled  {}", gib(rss_full));
    println!(
        "  process RSS, evicted      {}, the compressed tier's {} included ({:.0}% less than filled)",
        gib(rss_evicted),
        gib(tier.bytes_used),
        100.0 * (1.0 - rss_evicted as f64 / rss_full.max(1) as f64)
    );
    println!(
        "  pages evicted             {evicted} of {pages} in {evict_secs:.2}s ({:.0} MB/s); {} zero, {} same-filled, {rejected} kept in RAM as incompressible",
        evicted as f64 * PAGE_SIZE as f64 / 1e6 / evict_secs,
        tier.zero_pages,
        tier.same_filled_pages
    );
    println!(
        "  compression ratio         {:.2}x  (tier overhead beyond compressed bytes {:.1}%)",
        tier.ratio(),
        100.0 * tier.overhead()
    );
    println!(
        "  read back                 {pages} pages from {threads} threads in random order in {read_secs:.2}s ({:.0} faults/s)",
        after.faults_from_tier as f64 / read_secs
    );
    println!(
        "  fault latency (program)   p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us",
        lat.value_at_quantile(0.5) as f64 / 1e3,
        lat.value_at_quantile(0.99) as f64 / 1e3,
        lat.value_at_quantile(0.999) as f64 / 1e3
    );
    println!(
        "  fault service (farmem)    p50 {:.1} us  p99 {:.1} us;  stall {:.2}s in all",
        after.fault_latency_us(0.5),
        after.fault_latency_us(0.99),
        after.stall.as_secs_f64()
    );
    println!("  process RSS, read back    {}", gib(rss_end));
    if wrong > 0 {
        return Err(format!("{wrong} pages read back with wrong bytes"));
    }
    println!("  checksums                 all {pages} pages match");
    Ok(())
}
