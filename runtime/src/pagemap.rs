//! The PAGEMAP_SCAN ioctl on /proc/self/pagemap (Linux 6.7+): a thin, safe
//! wrapper for the access sampler.
//!
//! One ioctl walks the page tables of a range and reports runs of pages by
//! category (present, written since write-protected, zero page, ...), merged
//! into `[start, end)` regions, where a read(2) of pagemap costs 8 bytes a
//! page. With [`ScanOptions::write_protect`] it also write-protects
//! what it reports, in the same walk: on a range registered with a userfaultfd
//! in WP mode with `UFFD_FEATURE_WP_ASYNC` (and, for anonymous memory,
//! `UFFD_FEATURE_WP_UNPOPULATED`), the next write to such a page is resolved by
//! the kernel without a message, and marks the page WRITTEN again. That gives
//! written-page sampling with no soft-dirty and no faults to serve.
//!
//! Debian's headers here are older than the kernel, so the ioctl number and the
//! structures of `<linux/fs.h>` are defined in this module.
//!
//! Kernel behaviour worth knowing (seen on 6.18):
//! - WRITTEN means "the pte is not uffd-wp", so outside a WP-async range every
//!   present page (and the zero page) reads as WRITTEN.
//! - Holes inside a mapping are reported too, with only the mapping's own
//!   categories (WPALLOWED, SOFT_DIRTY): an inverted PRESENT finds them. In a
//!   WP-async range a hole is WRITTEN until the first write-protecting scan,
//!   which therefore reports never-touched pages once.
//! - That scan leaves a uffd-wp marker in each hole, a swap-format pte: such a
//!   hole then reads as SWAPPED, though nothing is in swap. Test SWAPPED in a
//!   WP-async range together with something else before trusting it.
//! - Reading a write-protected hole maps the zero page (PRESENT | PFNZERO) and
//!   is not a write; the first write is reported WRITTEN like any other.
//! - The kernel turns on WP_UNPOPULATED with WP_ASYNC by itself; asking for
//!   both, as the tests do, states the dependence.
//! - The file is bound to the address space it was opened in: after fork a
//!   child's [`PageMap`] still scans its parent, so the child must open its own.
//! - Each call holds the mmap read lock for its walk; `max_pages` bounds it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct pm_scan_arg`.
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// A set of page categories (`PAGE_IS_*`), as matched and reported by a scan.
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Categories(u64);

impl Categories {
    /// No category.
    pub const NONE: Categories = Categories(0);
    /// The page is in a range with async write-protect (uffd WP + WP_ASYNC).
    pub const WPALLOWED: Categories = Categories(1 << 0);
    /// The page's pte is not write-protected: written since the last
    /// write-protecting scan, or never protected at all.
    pub const WRITTEN: Categories = Categories(1 << 1);
    /// The page is file-backed (not anonymous).
    pub const FILE: Categories = Categories(1 << 2);
    /// The page is in RAM.
    pub const PRESENT: Categories = Categories(1 << 3);
    /// The page is in swap.
    pub const SWAPPED: Categories = Categories(1 << 4);
    /// The pte maps the shared zero page (read, never written).
    pub const PFNZERO: Categories = Categories(1 << 5);
    /// The page is part of a THP or hugetlb page.
    pub const HUGE: Categories = Categories(1 << 6);
    /// The pte (or its mapping) is soft-dirty.
    pub const SOFT_DIRTY: Categories = Categories(1 << 7);
    /// The page is a guard region (`MADV_GUARD_INSTALL`). Linux 6.15+ only:
    /// it is not in [`Categories::ALL`], because older kernels refuse the bit.
    pub const GUARD: Categories = Categories(1 << 8);
    /// Every category of the first PAGEMAP_SCAN kernel (6.7); the kernel
    /// refuses bits it does not know with EINVAL.
    pub const ALL: Categories = Categories(0xff);

    const NAMES: [&'static str; 9] = ["WPALLOWED", "WRITTEN", "FILE", "PRESENT", "SWAPPED", "PFNZERO", "HUGE", "SOFT_DIRTY", "GUARD"];

    /// The raw `PAGE_IS_*` bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The set with exactly these bits, unknown ones kept.
    pub const fn from_bits_retain(bits: u64) -> Self {
        Categories(bits)
    }

    /// Whether no category is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every category of `other` is set here.
    pub const fn contains(self, other: Categories) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any category of `other` is set here.
    pub const fn intersects(self, other: Categories) -> bool {
        self.0 & other.0 != 0
    }

    /// Both sets together.
    pub const fn union(self, other: Categories) -> Self {
        Categories(self.0 | other.0)
    }
}

impl std::ops::BitOr for Categories {
    type Output = Categories;
    fn bitor(self, rhs: Categories) -> Categories {
        self.union(rhs)
    }
}

impl std::ops::BitOrAssign for Categories {
    fn bitor_assign(&mut self, rhs: Categories) {
        self.0 |= rhs.0;
    }
}

impl std::ops::BitAnd for Categories {
    type Output = Categories;
    fn bitand(self, rhs: Categories) -> Categories {
        Categories(self.0 & rhs.0)
    }
}

impl std::fmt::Debug for Categories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == 0 {
            return f.write_str("NONE");
        }
        let mut first = true;
        for (bit, name) in Self::NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        let unknown = self.0 & !(Self::ALL.0 | Self::GUARD.0);
        if unknown != 0 {
            if !first {
                f.write_str(" | ")?;
            }
            write!(f, "{unknown:#x}")?;
        }
        Ok(())
    }
}

/// One run of pages reported by a scan (`struct page_region`): the caller's
/// output buffer is an array of these, written by the kernel directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    /// First byte of the run (page-aligned).
    pub start: u64,
    /// One past the last byte of the run.
    pub end: u64,
    /// The run's categories, limited to [`ScanOptions::report`].
    pub categories: Categories,
}

impl PageRegion {
    /// How many pages the run spans.
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / crate::PAGE_SIZE as u64
    }
}

/// What a scan matches and reports.
///
/// A page matches when, after flipping its `inverted` categories, it has all of
/// `required` and, unless `any_of` is empty, at least one of `any_of`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// Categories a page must all have (`category_mask`).
    pub required: Categories,
    /// Categories a page must have at least one of, if not empty (`category_anyof_mask`).
    pub any_of: Categories,
    /// Categories that match when absent rather than present (`category_inverted`).
    pub inverted: Categories,
    /// Categories copied into each [`PageRegion`] (`return_mask`). Adjacent
    /// pages merge into one region only when these agree, so a narrow mask
    /// gives fewer, longer regions.
    pub report: Categories,
    /// At most this many pages reported per call, 0 for no limit; the walk
    /// stops there and [`Scan::walk_end`] says where.
    pub max_pages: u64,
    /// Write-protect the matched WRITTEN pages as they are reported
    /// (`PM_SCAN_WP_MATCHING`). Mappings without async write-protect are
    /// skipped silently, unless `check_wp_async` is set.
    pub write_protect: bool,
    /// Fail with EPERM on any mapping in the range without async
    /// write-protect (`PM_SCAN_CHECK_WPASYNC`), instead of skipping it.
    pub check_wp_async: bool,
}

impl ScanOptions {
    /// Pages with all of `required`, reported with those categories.
    pub fn matching(required: Categories) -> Self {
        ScanOptions { required, report: required, ..Default::default() }
    }

    /// The same options, also reporting `extra` categories.
    pub fn reporting(mut self, extra: Categories) -> Self {
        self.report |= extra;
        self
    }

    /// The same options, write-protecting what they match and failing on a
    /// mapping that cannot be write-protected asynchronously: the sampler's
    /// "take the written pages and reset them" scan.
    pub fn write_protecting(mut self) -> Self {
        self.write_protect = true;
        self.check_wp_async = true;
        self
    }
}

/// What one scan call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Regions written at the start of the output buffer.
    pub regions: usize,
    /// Where the walk stopped: the range's end when it finished, earlier when
    /// the buffer filled or `max_pages` was reached. Scan again from here.
    pub walk_end: u64,
}

/// An open /proc/self/pagemap, for PAGEMAP_SCAN.
#[derive(Debug)]
pub struct PageMap {
    fd: OwnedFd,
}

impl PageMap {
    /// Opens /proc/self/pagemap. Whether the kernel has PAGEMAP_SCAN is a
    /// separate question: see [`PageMap::supported`].
    pub fn open() -> io::Result<Self> {
        // SAFETY: a NUL-terminated path and flags; returns a new fd or -1.
        let fd = unsafe { libc::open(c"/proc/self/pagemap".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: open returned a fresh fd that nothing else owns.
        Ok(PageMap { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Whether the kernel has PAGEMAP_SCAN, by an empty scan. Kernels before
    /// 6.7 have no ioctl on pagemap (ENOTTY); one whose `pm_scan_arg` has a
    /// different size says EINVAL. Both are `Ok(false)`, for the runtime to
    /// fall back to fault-based sampling.
    pub fn supported(&self) -> io::Result<bool> {
        match self.scan(0, 0, &ScanOptions::default(), &mut []) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Scans `[start, end)` (`start` page-aligned; `end` is rounded up to a
    /// page), writing matching runs into `out` from its start. One call stops
    /// early when `out` fills or `options.max_pages` is reached: loop from
    /// [`Scan::walk_end`], or use [`PageMap::for_each_region`].
    ///
    /// With an empty `out` the scan reports nothing, but still write-protects
    /// when asked: a cheap reset of a whole range.
    pub fn scan(&self, start: u64, end: u64, options: &ScanOptions, out: &mut [PageRegion]) -> io::Result<Scan> {
        if end < start {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut flags = 0;
        if options.write_protect {
            flags |= PM_SCAN_WP_MATCHING;
        }
        if options.check_wp_async {
            flags |= PM_SCAN_CHECK_WPASYNC;
        }
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags,
            start,
            end,
            walk_end: 0,
            // Null with length 0: the kernel's "report nothing" (it accepts a
            // dangling pointer there too, but need not be trusted to).
            vec: if out.is_empty() { 0 } else { out.as_mut_ptr() as u64 },
            vec_len: out.len() as u64,
            max_pages: options.max_pages,
            category_inverted: options.inverted.bits(),
            category_mask: options.required.bits(),
            category_anyof_mask: options.any_of.bits(),
            return_mask: options.report.bits(),
        };
        // SAFETY: `arg` is a fully initialised pm_scan_arg the kernel reads and
        // writes back; through `vec` it writes at most `vec_len` page_region
        // structures, which `PageRegion` matches (repr(C), all u64, any bit
        // pattern valid), into `out`, which we borrow mutably for the call.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Scan { regions: (r as usize).min(out.len()), walk_end: arg.walk_end })
    }

    /// Scans the whole of `[start, end)`, calling `f` for every matching run,
    /// in address order. `buf` is the caller's scratch space for the kernel's
    /// output (any non-zero length; longer means fewer ioctls), so nothing is
    /// allocated. Runs the kernel split across calls (a full buffer, or
    /// `max_pages`, which here bounds each call, not the total) are joined
    /// again, so `f` sees the same regions whatever the buffer's size.
    /// Returns how many regions `f` was given.
    pub fn for_each_region(
        &self,
        start: u64,
        end: u64,
        options: &ScanOptions,
        buf: &mut [PageRegion],
        mut f: impl FnMut(&PageRegion),
    ) -> io::Result<u64> {
        if buf.is_empty() {
            // An empty buffer would make no progress: the walk would end at once.
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut pending: Option<PageRegion> = None;
        let mut given = 0;
        let mut at = start;
        while at < end {
            let scan = self.scan(at, end, options, buf)?;
            for r in &buf[..scan.regions] {
                match &mut pending {
                    Some(p) if p.end == r.start && p.categories == r.categories => p.end = r.end,
                    _ => {
                        if let Some(p) = pending.replace(*r) {
                            f(&p);
                            given += 1;
                        }
                    }
                }
            }
            if scan.walk_end <= at {
                // The kernel reported no progress; looping would spin forever.
                return Err(io::Error::other(format!("PAGEMAP_SCAN made no progress at {at:#x}")));
            }
            at = scan.walk_end;
        }
        if let Some(p) = pending {
            f(&p);
            given += 1;
        }
        Ok(given)
    }
}

impl AsRawFd for PageMap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Mapping;
    use crate::uffd::{feature, mode, Userfaultfd};

    const PAGE: u64 = crate::PAGE_SIZE as u64;

    /// A fresh private anonymous mapping of `pages` pages, with THP off so that
    /// touching one page populates exactly that page.
    fn mapping(pages: u64) -> Mapping {
        let m = Mapping::anonymous((pages * PAGE) as usize).unwrap();
        // SAFETY: advice on a mapping we own; it changes no contents.
        let r = unsafe { libc::madvise(m.addr().cast(), m.len(), libc::MADV_NOHUGEPAGE) };
        assert_eq!(r, 0, "madvise: {}", io::Error::last_os_error());
        m
    }

    fn write_page(m: &Mapping, page: u64) {
        assert!(page * PAGE < m.len() as u64);
        // SAFETY: the page lies inside the mapping, which is ours and writable.
        unsafe { std::ptr::write_volatile(m.addr().add((page * PAGE) as usize), 1) };
    }

    fn read_page(m: &Mapping, page: u64) -> u8 {
        assert!(page * PAGE < m.len() as u64);
        // SAFETY: the page lies inside the mapping, which is ours and readable.
        unsafe { std::ptr::read_volatile(m.addr().add((page * PAGE) as usize)) }
    }

    /// Regions as page-index ranges relative to the mapping, with categories.
    fn pages_of(m: &Mapping, regions: &[PageRegion]) -> Vec<(u64, u64, Categories)> {
        let base = m.addr() as u64;
        regions.iter().map(|r| ((r.start - base) / PAGE, (r.end - base) / PAGE, r.categories)).collect()
    }

    fn scan_all(pm: &PageMap, m: &Mapping, options: &ScanOptions) -> Vec<(u64, u64, Categories)> {
        let base = m.addr() as u64;
        let mut buf = [PageRegion::default(); 64];
        let s = pm.scan(base, base + m.len() as u64, options, &mut buf).unwrap();
        assert_eq!(s.walk_end, base + m.len() as u64, "a 64-region buffer holds the whole answer");
        pages_of(m, &buf[..s.regions])
    }

    #[test]
    fn ioctl_number_and_layout_match_the_kernel_abi() {
        // _IOWR('f', 16, struct pm_scan_arg) with a 96-byte argument, as in
        // <linux/fs.h> since 6.7.
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(std::mem::offset_of!(PmScanArg, walk_end), 32);
        assert_eq!(std::mem::offset_of!(PmScanArg, vec), 40);
        assert_eq!(std::mem::offset_of!(PmScanArg, max_pages), 56);
        assert_eq!(std::mem::offset_of!(PmScanArg, category_inverted), 64);
        assert_eq!(std::mem::offset_of!(PmScanArg, return_mask), 88);
        assert_eq!(std::mem::size_of::<PageRegion>(), 24);
        assert_eq!(std::mem::offset_of!(PageRegion, categories), 16);
        assert_eq!(Categories::SOFT_DIRTY.bits(), 0x80);
        assert_eq!(Categories::PFNZERO.bits(), 0x20);
    }

    #[test]
    fn categories_debug_names_the_bits() {
        assert_eq!(format!("{:?}", Categories::PRESENT | Categories::PFNZERO), "PRESENT | PFNZERO");
        assert_eq!(format!("{:?}", Categories::NONE), "NONE");
        assert_eq!(format!("{:?}", Categories::from_bits_retain(0x302)), "WRITTEN | GUARD | 0x200");
    }

    #[test]
    fn supported_on_this_kernel() {
        let pm = PageMap::open().unwrap();
        assert!(pm.supported().unwrap(), "PAGEMAP_SCAN missing: this machine runs Linux 6.18");
    }

    #[test]
    fn present_scan_reports_exactly_the_written_pages() {
        let pm = PageMap::open().unwrap();
        let m = mapping(64);
        for p in [3, 10, 11, 12, 40] {
            write_page(&m, p);
        }
        let present = Categories::PRESENT;
        assert_eq!(scan_all(&pm, &m, &ScanOptions::matching(present)), vec![(3, 4, present), (10, 13, present), (40, 41, present)]);
        // The holes, by inverting PRESENT: the kernel reports unpopulated ptes too.
        let holes = ScanOptions { required: present, inverted: present, ..Default::default() };
        assert_eq!(
            scan_all(&pm, &m, &holes),
            vec![(0, 3, Categories::NONE), (4, 10, Categories::NONE), (13, 40, Categories::NONE), (41, 64, Categories::NONE)]
        );
    }

    #[test]
    fn read_of_untouched_page_maps_the_zero_page() {
        let pm = PageMap::open().unwrap();
        let m = mapping(16);
        assert_eq!(read_page(&m, 7), 0);
        write_page(&m, 9);
        let opts = ScanOptions::matching(Categories::PRESENT).reporting(Categories::PFNZERO);
        assert_eq!(scan_all(&pm, &m, &opts), vec![(7, 8, Categories::PRESENT | Categories::PFNZERO), (9, 10, Categories::PRESENT)]);
    }

    #[test]
    fn async_write_protect_tracks_written_pages() {
        let wp = feature::WP_ASYNC | feature::WP_UNPOPULATED;
        let uffd = Userfaultfd::open(wp, wp).unwrap();
        let pm = PageMap::open().unwrap();
        let m = mapping(64);
        let base = m.addr() as u64;
        uffd.register(base, m.len() as u64, mode::WP).unwrap();
        for p in 0..64 {
            write_page(&m, p);
        }
        let written = Categories::WRITTEN;
        let take = ScanOptions::matching(written).write_protecting();
        // The reset: everything was written, and is write-protected as reported.
        assert_eq!(scan_all(&pm, &m, &take), vec![(0, 64, written)]);
        write_page(&m, 5);
        write_page(&m, 20);
        // A read of a protected page is not a write.
        assert_eq!(read_page(&m, 30), 1);
        assert_eq!(scan_all(&pm, &m, &take), vec![(5, 6, written), (20, 21, written)]);
        // The last scan protected pages 5 and 20 again.
        assert_eq!(scan_all(&pm, &m, &take), vec![]);
        // The whole range is async-write-protectable, unpopulated or not.
        let allowed = ScanOptions::matching(Categories::WPALLOWED);
        assert_eq!(scan_all(&pm, &m, &allowed), vec![(0, 64, Categories::WPALLOWED)]);
        uffd.unregister(base, m.len() as u64).unwrap();
    }

    /// The runtime's write tracking, on a range registered for both missing
    /// faults and async write-protect: a scan that asks for PRESENT pages
    /// leaves holes alone (no uffd-wp marker), so a page taken out with
    /// UFFDIO_MOVE, a hole filled with UFFDIO_COPY, UFFDIO_ZEROPAGE or
    /// UFFDIO_POISON all behave as on a range without write-protect. (A scan
    /// that matched holes would leave markers there, which ZEROPAGE and POISON
    /// refuse with EEXIST, and MOVE with EFAULT.)
    #[test]
    fn present_written_scan_leaves_holes_fillable_for_the_fault_engine() {
        let wanted = feature::MOVE | feature::POISON | feature::WP_ASYNC | feature::WP_UNPOPULATED;
        let uffd = Userfaultfd::open(wanted, wanted).unwrap();
        let staging_uffd = Userfaultfd::open(feature::MOVE, feature::MOVE).unwrap();
        let pm = PageMap::open().unwrap();
        let m = mapping(16);
        let staging = mapping(1);
        let base = m.addr() as u64;
        // Written before registering: a missing fault here would wait for a handler.
        for p in 0..8 {
            write_page(&m, p);
        }
        uffd.register(base, m.len() as u64, mode::MISSING | mode::WP).unwrap();
        staging_uffd.register(staging.addr() as u64, PAGE, mode::WP).unwrap();
        let take = ScanOptions::matching(Categories::PRESENT | Categories::WRITTEN).write_protecting();
        let pw = Categories::PRESENT | Categories::WRITTEN;
        assert_eq!(scan_all(&pm, &m, &take), vec![(0, 8, pw)]);
        // A write-protected page moves out like any other, and leaves a plain hole.
        staging_uffd.move_pages(staging.addr() as u64, base + 3 * PAGE, PAGE, false).unwrap();
        assert_eq!(read_page(&staging, 0), 1);
        write_page(&m, 6);
        assert_eq!(scan_all(&pm, &m, &take), vec![(6, 7, pw)]);
        // No hole reads as SWAPPED (a marker): not the moved page, not the never-touched ones.
        assert_eq!(scan_all(&pm, &m, &ScanOptions::matching(Categories::SWAPPED)), vec![]);
        // Each way the fault engine fills a hole still works.
        // SAFETY: the staging page is ours and readable for PAGE bytes.
        unsafe { uffd.copy(base + 3 * PAGE, staging.addr(), PAGE, true) }.unwrap();
        uffd.zeropage(base + 9 * PAGE, PAGE).unwrap();
        uffd.poison(base + 10 * PAGE, PAGE).unwrap();
        assert_eq!(read_page(&m, 3), 1);
        assert_eq!(read_page(&m, 9), 0);
        // A page copied in is writable without protection: the next scan sees it as written.
        let present = scan_all(&pm, &m, &take);
        assert!(present.contains(&(3, 4, pw)), "{present:?}");
        uffd.unregister(base, m.len() as u64).unwrap();
    }

    #[test]
    fn write_protecting_scan_refuses_a_range_without_wp_async() {
        let pm = PageMap::open().unwrap();
        let m = mapping(4);
        write_page(&m, 0);
        let base = m.addr() as u64;
        let take = ScanOptions::matching(Categories::WRITTEN).write_protecting();
        let e = pm.scan(base, base + m.len() as u64, &take, &mut [PageRegion::default(); 4]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        // Without the check, such a mapping is skipped silently.
        let lax = ScanOptions { check_wp_async: false, ..take };
        assert_eq!(scan_all(&pm, &m, &lax), vec![]);
    }

    #[test]
    fn for_each_region_loops_on_walk_end() {
        let pm = PageMap::open().unwrap();
        let m = mapping(64);
        for p in [2, 20, 21, 22, 50] {
            write_page(&m, p);
        }
        let base = m.addr() as u64;
        let end = base + m.len() as u64;
        let opts = ScanOptions::matching(Categories::PRESENT);
        let mut one = [PageRegion::default(); 1];
        // One call with one slot stops after the first run...
        let s = pm.scan(base, end, &opts, &mut one).unwrap();
        assert_eq!(s.regions, 1);
        assert_eq!(pages_of(&m, &one), vec![(2, 3, Categories::PRESENT)]);
        assert!(s.walk_end > base && s.walk_end < end, "walk_end {:#x} in ({base:#x}, {end:#x})", s.walk_end);
        // ...and the helper carries on from there to the end.
        let mut seen = Vec::new();
        let n = pm.for_each_region(base, end, &opts, &mut one, |r| seen.push(*r)).unwrap();
        assert_eq!(n, 3);
        let p = Categories::PRESENT;
        assert_eq!(pages_of(&m, &seen), vec![(2, 3, p), (20, 23, p), (50, 51, p)]);
    }

    #[test]
    fn max_pages_splits_a_run_and_the_helper_joins_it() {
        let pm = PageMap::open().unwrap();
        let m = mapping(16);
        for p in 4..9 {
            write_page(&m, p);
        }
        let base = m.addr() as u64;
        let end = base + m.len() as u64;
        let opts = ScanOptions { max_pages: 2, ..ScanOptions::matching(Categories::PRESENT) };
        let mut buf = [PageRegion::default(); 8];
        let s = pm.scan(base, end, &opts, &mut buf).unwrap();
        assert_eq!(pages_of(&m, &buf[..s.regions]), vec![(4, 6, Categories::PRESENT)]);
        assert_eq!(s.walk_end, base + 6 * PAGE);
        let mut seen = Vec::new();
        pm.for_each_region(base, end, &opts, &mut buf, |r| seen.push(*r)).unwrap();
        assert_eq!(pages_of(&m, &seen), vec![(4, 9, Categories::PRESENT)]);
    }

    #[test]
    fn unaligned_start_and_empty_buffer_are_refused() {
        let pm = PageMap::open().unwrap();
        let m = mapping(2);
        let base = m.addr() as u64;
        let opts = ScanOptions::matching(Categories::PRESENT);
        let e = pm.scan(base + 1, base + PAGE, &opts, &mut [PageRegion::default(); 1]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        let e = pm.for_each_region(base, base + PAGE, &opts, &mut [], |_| ()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    }
}
