//! What the kernel offers for seeing the program's accesses, probed once when
//! the policy starts.
//!
//! The sampler's faults work everywhere userfaultfd does; written-page
//! tracking needs PAGEMAP_SCAN and async write-protect (see `written`). Two
//! older interfaces read the accessed or dirty state directly, where a kernel
//! is built with them: idle page tracking (`/sys/kernel/mm/page_idle/bitmap`)
//! and soft-dirty bits (bit 55 of a pagemap entry). This project's kernels
//! have neither, so the policy does not use them; the probe says whether a
//! machine has them, in the policy's statistics and its start-up log line.

use std::io::Read;
use std::os::unix::fs::FileExt;

use crate::mem::Mapping;
use crate::PAGE_SIZE;

/// The access sources a machine offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessSources {
    /// PAGEMAP_SCAN with userfaultfd async write-protect (written pages).
    pub written_pages: bool,
    /// Idle page tracking (accessed bits, by physical frame).
    pub page_idle: bool,
    /// Soft-dirty bits in /proc/self/pagemap.
    pub soft_dirty: bool,
}

impl std::fmt::Display for AccessSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "sampled faults: yes; written pages (PAGEMAP_SCAN + async write-protect): {}; page_idle: {}; soft-dirty: {}",
            yes(self.written_pages),
            yes(self.page_idle),
            yes(self.soft_dirty)
        )
    }
}

/// Probes the machine; `written_pages` is what the runtime found at start-up.
pub fn probe(written_pages: bool) -> AccessSources {
    AccessSources { written_pages, page_idle: page_idle(), soft_dirty: soft_dirty().unwrap_or(false) }
}

/// Whether the idle page bitmap exists and can be read.
fn page_idle() -> bool {
    let mut word = [0u8; 8];
    std::fs::File::open("/sys/kernel/mm/page_idle/bitmap").and_then(|mut f| f.read_exact(&mut word)).is_ok()
}

/// Whether a freshly written page is marked soft-dirty in pagemap: a kernel
/// with soft-dirty marks every new page so. (Clearing the bits would
/// write-protect every page of the process; the probe only reads.)
fn soft_dirty() -> std::io::Result<bool> {
    let page = Mapping::anonymous(PAGE_SIZE)?;
    // SAFETY: the mapping is ours, one writable page long.
    unsafe { std::ptr::write_volatile(page.addr(), 1) };
    let mut entry = [0u8; 8];
    std::fs::File::open("/proc/self/pagemap")?.read_exact_at(&mut entry, (page.addr() as u64 / PAGE_SIZE as u64) * 8)?;
    Ok(u64::from_ne_bytes(entry) & (1 << 55) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pagemap::{Categories, PageMap, PageRegion, ScanOptions};

    /// Each probe agrees with a second way of asking the kernel.
    #[test]
    fn probes_agree_with_the_kernel() {
        let s = probe(true);
        assert_eq!(s.page_idle, std::path::Path::new("/sys/kernel/mm/page_idle/bitmap").exists(), "{s}");
        // PAGEMAP_SCAN reports soft-dirty as a category, from the same bit.
        let pm = PageMap::open().unwrap();
        let page = Mapping::anonymous(PAGE_SIZE).unwrap();
        // SAFETY: the mapping is ours, one writable page long.
        unsafe { std::ptr::write_volatile(page.addr(), 1) };
        let mut out = [PageRegion::default(); 1];
        let at = page.addr() as u64;
        let n = pm.scan(at, at + PAGE_SIZE as u64, &ScanOptions::matching(Categories::SOFT_DIRTY), &mut out).unwrap().regions;
        assert_eq!(s.soft_dirty, n == 1, "{s}");
        assert!(s.to_string().contains("written pages (PAGEMAP_SCAN + async write-protect): yes"));
    }
}
