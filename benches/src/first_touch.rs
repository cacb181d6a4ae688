//! The kernel's plain first-touch anonymous page fault, timed one by one.

use std::time::Instant;

use farmem_runtime::mem::Mapping;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::stats::{histogram, LatencySummary};
use crate::BaselineError;

/// Maps `pages` fresh anonymous pages (transparent huge pages off, so every
/// page faults on its own), writes one byte to each in a random order, and
/// times each write with [`Instant`] (about 25 ns of the figure is the clock).
/// `per_s` is faults per second of time spent in the timed writes.
pub fn measure_first_touch(pages: usize) -> Result<LatencySummary, BaselineError> {
    if pages == 0 {
        return Err(BaselineError::Invalid { what: "pages", value: "0: there is nothing to touch".into() });
    }
    let len = pages.checked_mul(4096).ok_or(BaselineError::Invalid { what: "pages", value: format!("{pages} pages overflow the address space") })?;
    let map = Mapping::anonymous(len).map_err(|source| BaselineError::Os { what: format!("mmap of {len} anonymous bytes"), source })?;
    // SAFETY: advice on our own mapping; failure only means THP may apply.
    unsafe { libc::madvise(map.addr().cast(), len, libc::MADV_NOHUGEPAGE) };
    let mut order: Vec<usize> = (0..pages).collect();
    order.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(1));
    let mut h = histogram();
    let mut total_ns = 0u64;
    for &i in &order {
        let s = Instant::now();
        // SAFETY: page i lies inside the mapping.
        unsafe { std::ptr::write_volatile(map.addr().add(i * 4096), 1u8) };
        let ns = (s.elapsed().as_nanos() as u64).max(1);
        total_ns += ns;
        h.record(ns).map_err(|_| BaselineError::Parse { path: "first-touch samples".into(), value: format!("{ns} ns is out of the histogram's range") })?;
    }
    Ok(LatencySummary::from_ns(&h, total_ns as f64 / 1e9))
}
