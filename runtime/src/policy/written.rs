//! Written-page tracking: PAGEMAP_SCAN with async write-protect.
//!
//! Where the kernel has both (Linux 6.7+), regions are registered for
//! write-protect as well as for missing faults, with `UFFD_FEATURE_WP_ASYNC`.
//! A scan reports the pages in RAM written since the last one and protects
//! them again in the same walk; the next write to such a page is resolved by
//! the kernel itself, with no message to the fault thread, and marks the page
//! written. So a page the program writes is seen in use at the next scan
//! without a fault and without a copy, and the sampler leaves it alone.
//! Reads are not seen: the sampler's faults still find those.
//!
//! The price is paid by the program: the first write to a page after each
//! scan is a minor fault in the kernel ([`WP_FAULT_S`]). Each page a scan
//! reports and protects may cost one such fault later, so every page reported
//! is charged against an allowance (a share of wall time), and the next
//! protecting scan waits until the charge is paid off. Over time the write
//! faults therefore stay within the allowance. The price of that bound: the
//! first scan of a large heap reports every page it finds in RAM, and the
//! scans after it wait in proportion (at 0.2%, about 2.6 minutes for each GiB
//! in RAM).
//!
//! Only pages in RAM are matched. A scan that matched holes would leave a
//! uffd-wp marker in each, and the fault engine's UFFDIO_ZEROPAGE and
//! UFFDIO_POISON refuse a marker (EEXIST), as UFFDIO_MOVE does (EFAULT).

use std::io;

use crate::pagemap::{Categories, PageMap, PageRegion, ScanOptions};
use crate::pagestate::State;
use crate::region::Region;
use crate::PAGE_SIZE;

/// What the program's first write to a protected page costs it: a minor fault
/// resolved in the kernel. Measured on this project's 2-vCPU VMs at 1.13 µs,
/// against 0.014 µs for a write to a writable page (`cargo test --release -p
/// farmem-runtime --lib write_fault_cost -- --ignored --nocapture`).
pub(crate) const WP_FAULT_S: f64 = 1.2e-6;

/// The share of wall time those write faults may cost the program.
const WRITE_FAULT_SHARE: f64 = 0.002;

/// Pages one scan call walks at most: each call holds the mmap read lock
/// for its walk, which the program's mmap and munmap wait behind.
const PAGES_PER_CALL: u64 = 1 << 15;

/// The tracker's state between ticks.
pub(crate) struct WriteTracker {
    buf: Vec<PageRegion>,
    /// Program time the write faults of earlier scans are estimated to have
    /// cost, less the allowance earned since, in seconds.
    debt: f64,
    /// Pages seen written, over all scans.
    pub seen: u64,
}

impl WriteTracker {
    /// A tracker with nothing charged yet.
    pub fn new() -> Self {
        WriteTracker { buf: vec![PageRegion::default(); 256], debt: 0.0, seen: 0 }
    }

    /// Whether this tick's aging pass may write-protect, after `wall` seconds
    /// since the last tick; `stall_goal` lowers the share in stall mode,
    /// where these faults are part of what the program feels.
    pub fn due(&mut self, wall: f64, stall_goal: Option<f64>) -> bool {
        let share = stall_goal.map_or(WRITE_FAULT_SHARE, |g| WRITE_FAULT_SHARE.min(g * 0.25));
        // Credit is not banked beyond a few ticks: a quiet spell must not pay
        // for a burst of scans later.
        self.debt = (self.debt - share * wall).max(-share * wall * 4.0);
        self.debt <= 0.0
    }

    /// Scans pages `[first, end)` of an armed `region`: each resident page
    /// written since it was last protected (or never protected) is stamped
    /// seen at tick `now`, protected again, and charged as the write fault
    /// it may cost. Returns the pages found written.
    pub fn scan(&mut self, pagemap: &PageMap, region: &Region, first: usize, end: usize, now: u32) -> io::Result<u64> {
        let options =
            ScanOptions { max_pages: PAGES_PER_CALL, ..ScanOptions::matching(Categories::PRESENT | Categories::WRITTEN).write_protecting() };
        let mut found = 0;
        let start = region.start();
        pagemap.for_each_region(region.page_addr(first), region.page_addr(end), &options, &mut self.buf, |r| {
            // The program may mremap the region during the walk: pages that
            // no longer fall inside it are counted, not stamped.
            let from = (r.start.saturating_sub(start) / PAGE_SIZE as u64) as usize;
            for i in from..(from + r.pages() as usize).min(region.pages()) {
                if region.states.get(i) == State::Resident {
                    region.ages.set_seen(i, now);
                }
            }
            found += r.pages();
        })?;
        self.seen += found;
        self.debt += found as f64 * WP_FAULT_S;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Mapping;
    use crate::uffd::{feature, mode, Userfaultfd};

    #[test]
    fn scans_are_spaced_by_what_their_write_faults_cost() {
        let mut t = WriteTracker::new();
        assert!(t.due(1.0, None));
        // 19.9 ms of write faults, at 0.2% of a second each tick, is paid off
        // in 10 ticks.
        t.debt = 0.0199;
        let waited = (1..100).find(|_| t.due(1.0, None)).unwrap();
        assert_eq!(waited, 10);
        // A stall target of 0.1% allows a quarter of that: 0.025% a tick.
        t.debt = 0.99e-3;
        let waited = (1..100).find(|_| t.due(1.0, Some(0.001))).unwrap();
        assert_eq!(waited, 4);
        // Idle ticks bank at most four ticks of credit.
        for _ in 0..50 {
            t.due(1.0, None);
        }
        assert!((t.debt + 0.008).abs() < 1e-12, "{}", t.debt);
    }

    /// What a write to a write-protected page costs, against a write to one
    /// that is not: the figure behind [`WP_FAULT_S`].
    #[test]
    #[ignore = "a measurement; prints figures"]
    fn write_fault_cost() {
        const PAGES: usize = 1 << 16;
        let wp = feature::WP_ASYNC | feature::WP_UNPOPULATED;
        let uffd = Userfaultfd::open(wp, wp).unwrap();
        let pm = PageMap::open().unwrap();
        let m = Mapping::anonymous(PAGES * PAGE_SIZE).unwrap();
        // SAFETY: advice on a mapping we own; it changes no contents.
        unsafe { libc::madvise(m.addr().cast(), m.len(), libc::MADV_NOHUGEPAGE) };
        let write_all = |v: u8| {
            let t = std::time::Instant::now();
            for p in 0..PAGES {
                // SAFETY: the byte lies inside the mapping, which is ours and writable.
                unsafe { std::ptr::write_volatile(m.addr().add(p * PAGE_SIZE), v) };
            }
            t.elapsed().as_secs_f64() / PAGES as f64
        };
        write_all(1);
        uffd.register(m.addr() as u64, m.len() as u64, mode::WP).unwrap();
        let options = ScanOptions::matching(Categories::PRESENT | Categories::WRITTEN).write_protecting();
        let mut buf = vec![PageRegion::default(); 64];
        for round in 0..3 {
            let t = std::time::Instant::now();
            let mut n = 0;
            pm.for_each_region(m.addr() as u64, m.addr() as u64 + m.len() as u64, &options, &mut buf, |r| n += r.pages()).unwrap();
            let scan = t.elapsed().as_secs_f64() / PAGES as f64;
            let protected = write_all(2 + round);
            let plain = write_all(9);
            println!(
                "round {round}: scan {:.3} µs/page ({n} pages written); write to a protected page {:.3} µs, to a writable one {:.3} µs",
                scan * 1e6,
                protected * 1e6,
                plain * 1e6
            );
        }
        uffd.unregister(m.addr() as u64, m.len() as u64).unwrap();
    }
}
