//! The kernel's plain first-touch anonymous page fault, timed one by one.

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::stats::{histogram, LatencySummary};
use crate::BaselineError;

/// Touches `pages` fresh anonymous pages in random order, timing each write.
pub fn measure_first_touch(pages: usize) -> Result<LatencySummary, BaselineError> {
    let len = pages.max(1) * 4096;
    // SAFETY: a fresh anonymous mapping, unmapped below.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    if p == libc::MAP_FAILED {
        return Err(BaselineError::Os { what: format!("mmap of {len} bytes"), source: std::io::Error::last_os_error() });
    }
    let base = p as *mut u8;
    let mut order: Vec<usize> = (0..pages.max(1)).collect();
    order.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(1));
    let mut h = histogram();
    let t0 = Instant::now();
    for &i in &order {
        let s = Instant::now();
        // SAFETY: page i lies inside the mapping.
        unsafe { std::ptr::write_volatile(base.add(i * 4096), 1u8) };
        h.record(s.elapsed().as_nanos().max(1) as u64).expect("in bounds");
    }
    let secs = t0.elapsed().as_secs_f64();
    // SAFETY: unmapping what was mapped above.
    unsafe { libc::munmap(p, len) };
    Ok(LatencySummary::from_ns(&h, secs))
}
