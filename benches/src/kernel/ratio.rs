//! zram's compression ratio on given pages, zram0 used as a plain block
//! device rather than as swap.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use serde::Serialize;

use super::signals::{interrupted, SignalCatcher};
use super::zram::{current_algorithm, zram_counters, ZramConfigured, ZramCounters, ZRAM_DEV};
use super::{kernel_available, last_os, os};
use crate::heap;
use crate::BaselineError;

/// The ratio zram gets on exactly the given pages.
#[derive(Debug, Clone, Serialize)]
pub struct ZramRatio {
    /// zram's compressor, as zram reports it.
    pub algorithm: String,
    /// zram's counters after writing the pages.
    pub counters: ZramCounters,
    /// Uncompressed bytes per byte of memory zram used (orig / mem_used_total).
    pub ratio: f64,
}

/// Writes `pages` to /dev/zram0 configured with `algorithm` (the kernel's
/// default if zram lacks it) as a plain block device with O_DIRECT (no swap),
/// reads its counters, and resets it. A partial last page is padded with zeros.
pub fn zram_ratio(pages: &[u8], algorithm: &str) -> Result<ZramRatio, BaselineError> {
    if pages.is_empty() {
        return Err(BaselineError::Invalid { what: "pages", value: "no bytes given".into() });
    }
    kernel_available()?;
    let _signals = SignalCatcher::new();
    let len = pages.len().next_multiple_of(heap::PAGE);
    let _zram = ZramConfigured::new(algorithm, len as u64)?;
    let algorithm = current_algorithm()?;
    let counters = {
        let mut f = fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT | libc::O_CLOEXEC).open(ZRAM_DEV).map_err(os(format!("opening {ZRAM_DEV}")))?;
        // O_DIRECT wants an aligned buffer: copy through one.
        let chunk = 1 << 20;
        let buf = Aligned::new(chunk)?;
        // SAFETY: `buf` maps `chunk` writable bytes and outlives the slice.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.0, chunk) };
        for c in pages.chunks(chunk) {
            interrupted()?;
            dst[..c.len()].copy_from_slice(c);
            let n = c.len().next_multiple_of(heap::PAGE);
            dst[c.len()..n].fill(0);
            f.write_all(&dst[..n]).map_err(os(format!("writing to {ZRAM_DEV}")))?;
        }
        drop(f);
        zram_counters()?
    };
    Ok(ZramRatio { algorithm, ratio: counters.ratio(), counters })
}

/// A page-aligned anonymous mapping, unmapped on drop.
struct Aligned(*mut u8, usize);

impl Aligned {
    fn new(len: usize) -> Result<Self, BaselineError> {
        // SAFETY: a fresh private anonymous mapping, unmapped on drop.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(last_os(format!("mapping a {len}-byte O_DIRECT buffer")));
        }
        Ok(Aligned(p.cast(), len))
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: unmapping what new mapped.
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}
