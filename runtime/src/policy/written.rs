//! Written-page tracking: PAGEMAP_SCAN with async write-protect.
//!
//! Where the kernel has both (Linux 6.7+), regions are registered for
//! write-protect as well as for missing faults, with `UFFD_FEATURE_WP_ASYNC`.
//! A scan reports the pages in RAM written since the last one and protects
//! them again in the same walk; the next write to such a page is resolved by
//! the kernel itself, with no message to the fault handlers, and marks the page
//! written. So a page the program writes is seen in use at the next scan
//! without a fault and without a copy, and the sampler leaves it alone.
//! Reads are not seen: the sampler's faults still find those.
//!
//! The price is paid by the program: the first write to a page after each
//! scan is a minor fault in the kernel ([`WP_FAULT_S`]). Each page a scan
//! reports and protects may cost one such fault later, so each tick earns an
//! allowance (a share of wall time), and the tick's scan reports and protects
//! no more pages than the allowance can pay for. Pages already protected and
//! not written since cost nothing to pass over. The scan goes on from where
//! the last one stopped, over every region in turn; the first lap over a
//! large heap is slow (every page in RAM is unprotected then: at 0.2%, about
//! 2.6 minutes for each GiB in RAM), later laps find only what was written.
//!
//! Only pages in RAM are matched. A scan that matched holes would leave a
//! uffd-wp marker in each, and the fault engine's UFFDIO_ZEROPAGE and
//! UFFDIO_POISON refuse a marker (EEXIST), as UFFDIO_MOVE does (EFAULT).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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

/// A tick's scan walks at most this many pages for each page it may report:
/// passing over protected pages is cheap but not free (a walk over a 4 GiB
/// heap that finds nothing costs some 10 ms), and the policy thread's CPU
/// has its own budget. At 16, limit mode's 1,666 pages a tick walk 26,656.
const WALK_PER_REPORTED: u64 = 16;

/// The tracker's state between ticks.
pub(crate) struct WriteTracker {
    buf: Vec<PageRegion>,
    /// Where the next scan starts.
    hand: u64,
    /// Seconds of write faults the allowance has earned and scans have not
    /// spent yet, at most a few ticks' worth.
    credit: f64,
    /// Pages seen written, over all scans.
    pub seen: u64,
}

impl WriteTracker {
    /// A tracker with no credit yet.
    pub fn new() -> Self {
        WriteTracker { buf: vec![PageRegion::default(); 256], hand: 0, credit: 0.0, seen: 0 }
    }

    /// Earns the allowance of a tick `wall` seconds long, and returns how many
    /// pages the tick's scan may report. `stall_goal` lowers the share in
    /// stall mode, where these faults are part of what the program feels.
    pub fn earn(&mut self, wall: f64, stall_goal: Option<f64>) -> u64 {
        let share = stall_goal.map_or(WRITE_FAULT_SHARE, |g| WRITE_FAULT_SHARE.min(g * 0.25));
        // Credit is not banked beyond a few ticks: a quiet spell must not pay
        // for a burst of faults later.
        self.credit = (self.credit + share * wall).min(share * wall * 4.0);
        self.budget()
    }

    fn budget(&self) -> u64 {
        (self.credit / WP_FAULT_S).max(0.0) as u64
    }

    /// Scans the armed `regions` (in address order) from the hand on, at most
    /// one lap, until the credit is spent: each page in RAM written since it
    /// was last protected (or never protected) is stamped seen at tick `now`
    /// and protected again. Returns the pages found written.
    pub fn track(&mut self, pagemap: &PageMap, regions: &[Arc<Region>], now: u32) -> u64 {
        let mut left = self.budget();
        if left == 0 || regions.is_empty() {
            return 0;
        }
        let first = regions.partition_point(|r| r.start() + r.len() <= self.hand) % regions.len();
        let mut walk = left.saturating_mul(WALK_PER_REPORTED);
        let hand = self.hand;
        let mut found = 0;
        for k in 0..=regions.len() {
            let region = &regions[(first + k) % regions.len()];
            let (start, end) = (region.start(), region.start() + region.len());
            // The lap ends with the part of the first region before the hand.
            let (from, to) = match k {
                0 => (hand.clamp(start, end), end),
                _ if k == regions.len() => (start, hand.clamp(start, end)),
                _ => (start, end),
            };
            if !region.armed.load(Ordering::Relaxed) || region.closed.load(Ordering::Relaxed) || from >= to {
                continue;
            }
            match self.scan_range(pagemap, region, from, to, now, &mut left, &mut walk) {
                Ok((n, at)) => {
                    found += n;
                    self.hand = at;
                }
                Err(e) => tracing::debug!("write tracking over region {start:#x} failed: {e}"),
            }
            if left == 0 || walk == 0 {
                break;
            }
        }
        self.seen += found;
        self.credit -= found as f64 * WP_FAULT_S;
        found
    }

    /// Scans `[from, to)` of `region`, reporting at most `left` pages and
    /// walking at most `walk` (each less what it uses); returns the pages
    /// found and where the walk stopped.
    #[allow(clippy::too_many_arguments)]
    fn scan_range(&mut self, pagemap: &PageMap, region: &Region, from: u64, to: u64, now: u32, left: &mut u64, walk: &mut u64) -> io::Result<(u64, u64)> {
        let start = region.start();
        let mut found = 0;
        let mut at = from;
        while at < to && *left > 0 && *walk > 0 {
            // A mapping in the range without async write-protect (one the
            // program made where it had unmapped part of the region) is
            // passed over, not an error that would stop the hand there.
            let options = ScanOptions {
                max_pages: (*left).min(PAGES_PER_CALL),
                write_protect: true,
                ..ScanOptions::matching(Categories::PRESENT | Categories::WRITTEN)
            };
            let end = to.min(at.saturating_add((*walk).min(PAGES_PER_CALL) * PAGE_SIZE as u64));
            let scan = pagemap.scan(at, end, &options, &mut self.buf)?;
            for r in &self.buf[..scan.regions] {
                // The program may mremap the region during the walk: pages
                // that no longer fall inside it are counted, not stamped.
                let first = (r.start.saturating_sub(start) / PAGE_SIZE as u64) as usize;
                for i in first..(first + r.pages() as usize).min(region.pages()) {
                    if region.states.get(i) == State::Resident {
                        region.ages.set_seen(i, now);
                        region.incompressible.clear(i);
                    }
                }
                found += r.pages();
                *left = left.saturating_sub(r.pages());
            }
            if scan.walk_end <= at {
                break;
            }
            *walk = walk.saturating_sub((scan.walk_end - at) / PAGE_SIZE as u64);
            at = scan.walk_end;
        }
        Ok((found, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Mapping;
    use crate::uffd::{feature, mode, Userfaultfd};

    #[test]
    fn the_allowance_is_earned_per_tick_and_banked_for_at_most_four() {
        let mut t = WriteTracker::new();
        // 0.2% of one second pays for 1,666 faults of 1.2 µs.
        assert_eq!(t.earn(1.0, None), 1666);
        for _ in 0..10 {
            t.earn(1.0, None);
        }
        assert_eq!(t.budget(), 6666);
        // A stall target of 0.1% allows a quarter of that: 0.025% a tick.
        let mut t = WriteTracker::new();
        assert_eq!(t.earn(1.0, Some(0.001)), 208);
    }

    /// A region of `pages` written pages, its first `protectable` registered
    /// for async write-protect, with the userfaultfd and pagemap to track it.
    fn tracked_region(pages: usize, protectable: usize) -> (Userfaultfd, PageMap, Mapping, Arc<Region>) {
        let wp = feature::WP_ASYNC | feature::WP_UNPOPULATED;
        let uffd = Userfaultfd::open(wp, wp).unwrap();
        let (m, region) = written_region(pages);
        uffd.register(m.addr() as u64, (protectable * PAGE_SIZE) as u64, mode::WP).unwrap();
        (uffd, PageMap::open().unwrap(), m, region)
    }

    fn written_region(pages: usize) -> (Mapping, Arc<Region>) {
        let m = Mapping::anonymous(pages * PAGE_SIZE).unwrap();
        // SAFETY: advice on a mapping we own; it changes no contents.
        unsafe { libc::madvise(m.addr().cast(), m.len(), libc::MADV_NOHUGEPAGE) };
        for p in 0..pages {
            // SAFETY: the page lies inside the mapping, which is ours and writable.
            unsafe { std::ptr::write_volatile(m.addr().add(p * PAGE_SIZE), 1) };
        }
        let region = Arc::new(Region::new(m.addr() as u64, m.len() as u64, 0, false).unwrap());
        region.armed.store(true, Ordering::Relaxed);
        (m, region)
    }

    #[test]
    fn each_scan_reports_what_its_credit_pays_for_and_goes_on_from_there() {
        let (uffd, pm, m, region) = tracked_region(256, 256);
        let regions = [Arc::clone(&region)];
        let page = |i: u64| m.addr() as u64 + i * PAGE_SIZE as u64;
        let write = |i: usize| {
            // SAFETY: the page lies inside the mapping, which is ours and writable.
            unsafe { std::ptr::write_volatile(m.addr().add(i * PAGE_SIZE), 2) }
        };
        let mut t = WriteTracker::new();
        // Credit for ten pages: the first ten are reported, protected and stamped.
        t.credit = 10.5 * WP_FAULT_S;
        assert_eq!(t.track(&pm, &regions, 7), 10);
        assert_eq!(region.ages.ages(9, 7).0, 0);
        assert_eq!(region.ages.ages(10, 7).0, 7);
        assert_eq!(t.hand, page(10));
        // Then the other 246; the lap passes over the ten protected pages for
        // free, and ends where it began.
        t.credit = 300.5 * WP_FAULT_S;
        assert_eq!(t.track(&pm, &regions, 8), 246);
        assert_eq!(t.hand, page(10));
        // Credit for eight pages walks at most 128: a page written behind the
        // hand is out of reach this tick...
        write(3);
        t.credit = 8.5 * WP_FAULT_S;
        assert_eq!(t.track(&pm, &regions, 9), 0);
        assert_eq!(t.hand, page(138));
        // ...and found by the next, past the end of the region and round.
        t.credit = 8.5 * WP_FAULT_S;
        assert_eq!(t.track(&pm, &regions, 10), 1);
        assert_eq!(region.ages.ages(3, 10).0, 0);
        assert_eq!(t.seen, 257);
        uffd.unregister(m.addr() as u64, m.len() as u64).unwrap();
    }

    #[test]
    fn a_part_without_async_write_protect_is_passed_over() {
        // Only the first half is registered: the second is a mapping of its own, as
        // if the program had unmapped part of the region and mapped again there.
        let (uffd, pm, m, region) = tracked_region(64, 32);
        let mut t = WriteTracker::new();
        t.credit = 100.5 * WP_FAULT_S;
        assert_eq!(t.track(&pm, &[Arc::clone(&region)], 1), 32);
        assert_eq!(region.ages.ages(40, 1).0, 1, "not stamped");
        uffd.unregister(m.addr() as u64, 32 * PAGE_SIZE as u64).unwrap();
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
