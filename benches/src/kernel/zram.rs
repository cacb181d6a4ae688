//! zram0 itself: the lock that serialises its users, its compressor, its
//! configuration (undone on drop) and its counters.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{read, write};
use crate::BaselineError;

/// zram0's directory in sysfs.
pub const ZRAM_SYS: &str = "/sys/block/zram0";
/// zram0's block device.
pub const ZRAM_DEV: &str = "/dev/zram0";
const LOCK_PATHS: [&str; 2] = ["/run/farmem-bench-zram0.lock", "/tmp/farmem-bench-zram0.lock"];

pub(super) fn zram_file(name: &str) -> String {
    format!("{ZRAM_SYS}/{name}")
}

/// Err(ZramBusy) unless zram0 is unconfigured and not a swap device.
pub(super) fn zram_is_free() -> Result<(), BaselineError> {
    let swaps = read("/proc/swaps")?;
    if swaps.lines().any(|l| l.split_whitespace().next() == Some(ZRAM_DEV)) {
        return Err(BaselineError::ZramBusy("it is an active swap device in /proc/swaps".into()));
    }
    let disksize = read(zram_file("disksize"))?;
    if disksize.trim() != "0" {
        return Err(BaselineError::ZramBusy(format!("{} is {}, not 0", zram_file("disksize"), disksize.trim())));
    }
    Ok(())
}

/// Exclusive use of zram0, swap and zswap among farmem-bench runs: an
/// advisory `flock`, released on drop. Do not take it twice in one thread:
/// the second waits for the first.
pub struct ZramLock {
    _file: File,
}

impl ZramLock {
    /// Waits up to five minutes for other farmem-bench runs to finish.
    pub fn acquire() -> Result<Self, BaselineError> {
        let mut last = None;
        for path in LOCK_PATHS {
            match fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).custom_flags(libc::O_CLOEXEC).open(path) {
                Ok(file) => {
                    let t0 = Instant::now();
                    loop {
                        // SAFETY: flock on a descriptor this function owns.
                        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                            return Ok(ZramLock { _file: file });
                        }
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || t0.elapsed() > Duration::from_secs(300) {
                            return Err(BaselineError::Os { what: format!("locking {path} (another farmem-bench run holds it?)"), source: e });
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(e) => last = Some(BaselineError::Os { what: format!("opening {path}"), source: e }),
            }
        }
        Err(last.expect("at least one lock path"))
    }
}

/// The compressor zram0 uses now (the bracketed one in comp_algorithm).
pub(super) fn current_algorithm() -> Result<String, BaselineError> {
    let s = read(zram_file("comp_algorithm"))?;
    s.split_whitespace()
        .find(|a| a.starts_with('['))
        .map(|a| a.trim_matches(|c| c == '[' || c == ']').to_string())
        .ok_or(BaselineError::Parse { path: zram_file("comp_algorithm"), value: s })
}

/// Selects `algorithm` if zram offers it; otherwise leaves the kernel's default.
fn set_algorithm(algorithm: &str) -> Result<(), BaselineError> {
    let offered = read(zram_file("comp_algorithm"))?;
    if offered.split_whitespace().any(|a| a.trim_matches(|c| c == '[' || c == ']') == algorithm) {
        write(zram_file("comp_algorithm"), algorithm)?;
    }
    Ok(())
}

/// Resets zram0, retrying while the device is still busy after a swapoff.
fn reset_zram() -> Result<(), BaselineError> {
    let mut r = Ok(());
    for _ in 0..50 {
        r = write(zram_file("reset"), "1");
        if r.is_ok() {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    r
}

/// zram0 configured: reset and its compressor put back on drop. Holds the lock.
pub(super) struct ZramConfigured {
    old_algorithm: String,
    _lock: ZramLock,
}

impl ZramConfigured {
    /// Takes the lock, checks zram0 is free, selects `algorithm`, sets `disksize`.
    pub(super) fn new(algorithm: &str, disksize: u64) -> Result<Self, BaselineError> {
        let lock = ZramLock::acquire()?;
        zram_is_free()?;
        let g = ZramConfigured { old_algorithm: current_algorithm()?, _lock: lock };
        set_algorithm(algorithm)?;
        write(zram_file("disksize"), &disksize.to_string())?;
        Ok(g)
    }
}

impl Drop for ZramConfigured {
    fn drop(&mut self) {
        if let Err(e) = reset_zram() {
            eprintln!("warning: could not reset zram0: {e}");
            return;
        }
        if current_algorithm().is_ok_and(|a| a != self.old_algorithm) {
            if let Err(e) = write(zram_file("comp_algorithm"), &self.old_algorithm) {
                eprintln!("warning: could not put zram0's compressor back: {e}");
            }
        }
    }
}

/// zram's own counters, from `mm_stat`.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct ZramCounters {
    /// Uncompressed bytes stored (same-filled pages included).
    pub orig_bytes: u64,
    /// Compressed bytes.
    pub compr_bytes: u64,
    /// Memory zram uses, allocator overhead included.
    pub mem_used_bytes: u64,
    /// Pages stored as one repeated word (zero pages among them), using no memory.
    pub same_pages: u64,
    /// Pages that did not compress and are stored whole.
    pub huge_pages: u64,
}

impl ZramCounters {
    /// Uncompressed bytes per byte of memory zram uses (0 when empty).
    pub fn ratio(&self) -> f64 {
        if self.mem_used_bytes > 0 {
            self.orig_bytes as f64 / self.mem_used_bytes as f64
        } else {
            0.0
        }
    }
}

/// Reads zram0's `mm_stat`.
pub fn zram_counters() -> Result<ZramCounters, BaselineError> {
    let path = zram_file("mm_stat");
    let s = read(&path)?;
    let v: Vec<u64> = s.split_whitespace().map_while(|x| x.parse().ok()).collect();
    if v.len() < 3 {
        return Err(BaselineError::Parse { path, value: s });
    }
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Ok(ZramCounters { orig_bytes: v[0], compr_bytes: v[1], mem_used_bytes: v[2], same_pages: at(5), huge_pages: at(7) })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn mm_stat_parses_and_errors_read_as_sentences() {
        if Path::new(ZRAM_SYS).exists() {
            zram_counters().unwrap();
        }
        assert_eq!(BaselineError::NotRoot.to_string(), "the kernel baseline needs root: it configures /dev/zram0, swap and a memory cgroup");
        let c = ZramCounters { orig_bytes: 300, mem_used_bytes: 100, ..ZramCounters::default() };
        assert_eq!(c.ratio(), 3.0);
        assert_eq!(ZramCounters::default().ratio(), 0.0);
    }
}
