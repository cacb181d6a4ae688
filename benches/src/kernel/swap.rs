//! Swap: zram0 as a swap device, and the swapon/swapoff calls and swap
//! header that zswap's swap file uses too.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::path::Path;

use super::zram::{current_algorithm, ZramConfigured, ZRAM_DEV};
use super::{last_os, os, read, write};
use crate::heap;
use crate::BaselineError;

/// The priority zram0's swap gets (higher than any swap set up without one).
pub const SWAP_PRIORITY: i32 = 100;
pub(super) const SWAPPINESS: &str = "/proc/sys/vm/swappiness";
/// zswap's on/off switch.
pub const ZSWAP_ENABLED: &str = "/sys/module/zswap/parameters/enabled";
/// `SWAP_FLAG_PREFER` and `SWAP_FLAG_PRIO_MASK` from <sys/swap.h>.
const SWAP_FLAG_PREFER: libc::c_int = 0x8000;
const SWAP_FLAG_PRIO_MASK: libc::c_int = 0x7fff;

/// /dev/zram0 as a swap device. zswap, if enabled, is disabled meanwhile so
/// that swapped pages really go to zram. On drop: swapoff, zram0 reset
/// (disksize back to 0, its memory freed), its former compressor, zswap and
/// `vm.swappiness` put back. Only one exists at a time on a machine (an
/// advisory lock waits for others).
pub struct ZramSwap {
    swapped_on: bool,
    old_swappiness: Option<String>,
    zswap_was_enabled: bool,
    algorithm: String,
    // Dropped after the fields above are handled in Drop: resets zram0.
    _zram: ZramConfigured,
}

impl ZramSwap {
    /// Configures zram0 with `algorithm` (the kernel's default if zram lacks
    /// it) and `disksize` bytes, writes a swap header, and turns the swap on
    /// with priority [`SWAP_PRIORITY`].
    pub fn new(algorithm: &str, disksize: u64) -> Result<Self, BaselineError> {
        if disksize < 16 * heap::PAGE as u64 {
            return Err(BaselineError::Invalid { what: "zram disksize", value: format!("{disksize} bytes is below 16 pages") });
        }
        let zram = ZramConfigured::new(algorithm, disksize)?;
        let mut guard = ZramSwap { swapped_on: false, old_swappiness: None, zswap_was_enabled: false, algorithm: current_algorithm()?, _zram: zram };
        if fs::read_to_string(ZSWAP_ENABLED).is_ok_and(|v| v.trim() == "Y") {
            write(ZSWAP_ENABLED, "N")?;
            guard.zswap_was_enabled = true;
        }
        write_swap_header(Path::new(ZRAM_DEV), disksize)?;
        swap_on(Path::new(ZRAM_DEV))?;
        guard.swapped_on = true;
        Ok(guard)
    }

    /// The compressor zram0 really uses.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// Sets `vm.swappiness` (0..=200) for the life of the guard.
    pub fn set_swappiness(&mut self, value: u32) -> Result<(), BaselineError> {
        if value > 200 {
            return Err(BaselineError::Invalid { what: "swappiness", value: format!("{value} is above 200") });
        }
        if self.old_swappiness.is_none() {
            self.old_swappiness = Some(read(SWAPPINESS)?.trim().to_string());
        }
        write(SWAPPINESS, &value.to_string())
    }
}

impl Drop for ZramSwap {
    fn drop(&mut self) {
        if self.swapped_on {
            if let Err(e) = swap_off(Path::new(ZRAM_DEV)) {
                eprintln!("warning: {e}");
            }
        }
        if self.zswap_was_enabled {
            if let Err(e) = write(ZSWAP_ENABLED, "Y") {
                eprintln!("warning: could not enable zswap again: {e}");
            }
        }
        if let Some(old) = &self.old_swappiness {
            if let Err(e) = write(SWAPPINESS, old) {
                eprintln!("warning: could not put vm.swappiness back to {old}: {e}");
            }
        }
    }
}

/// Turns on swap on `path` (a block device or a swap file with a header)
/// with priority [`SWAP_PRIORITY`].
pub fn swap_on(path: &Path) -> Result<(), BaselineError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| BaselineError::Invalid { what: "swap path", value: format!("{} holds a NUL byte", path.display()) })?;
    // SAFETY: swapon takes a NUL-terminated path and flags.
    if unsafe { libc::swapon(c.as_ptr(), SWAP_FLAG_PREFER | (SWAP_PRIORITY & SWAP_FLAG_PRIO_MASK)) } != 0 {
        return Err(last_os(format!("swapon {}", path.display())));
    }
    Ok(())
}

/// Turns off swap on `path` (the kernel swaps its pages back in first).
pub fn swap_off(path: &Path) -> Result<(), BaselineError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| BaselineError::Invalid { what: "swap path", value: format!("{} holds a NUL byte", path.display()) })?;
    // SAFETY: swapoff takes a NUL-terminated path.
    if unsafe { libc::swapoff(c.as_ptr()) } != 0 {
        return Err(last_os(format!("swapoff {}", path.display())));
    }
    Ok(())
}

/// Writes the swap v1 header for `size` bytes of swap at the start of `path`
/// (a device, or a file already `size` bytes long): version 1, last_page and
/// nr_badpages 0 at offset 1024, "SWAPSPACE2" at the end of page 0.
pub fn write_swap_header(path: &Path, size: u64) -> Result<(), BaselineError> {
    let last_page = u32::try_from(size / heap::PAGE as u64 - 1)
        .map_err(|_| BaselineError::Invalid { what: "swap size", value: format!("{size} bytes is too large for a swap header") })?;
    let mut page = vec![0u8; heap::PAGE];
    page[1024..1028].copy_from_slice(&1u32.to_ne_bytes());
    page[1028..1032].copy_from_slice(&last_page.to_ne_bytes());
    page[1032..1036].copy_from_slice(&0u32.to_ne_bytes());
    page[4086..4096].copy_from_slice(b"SWAPSPACE2");
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(os(format!("opening {}", path.display())))?;
    f.write_all(&page).and_then(|_| f.sync_all()).map_err(os(format!("writing the swap header to {}", path.display())))
}
