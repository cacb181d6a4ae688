//! The kernel's own answer: zram as swap plus a memory cgroup limit.
//!
//! [`measure_zram_swapin`] sets up /dev/zram0 as swap ([`ZramSwap`]), makes a
//! memory cgroup with the limit ([`MemCgroup`]), forks a child, moves it into
//! the cgroup, and lets it fill a heap (pushing most of it out to zram) and
//! time random reads, each read of a swapped-out page being a swap-in. The
//! child writes its samples into a shared buffer and allocates nothing; the
//! parent summarises them.
//!
//! # Restoring the machine
//!
//! Everything changed is undone before the functions here return, whatever
//! happens:
//! - the guards undo on drop: [`ZramSwap`] turns the swap off, resets zram0
//!   (which frees its memory and sets its disksize back to 0), puts back the
//!   compressor zram0 had and `vm.swappiness`; [`MemCgroup`] moves any task
//!   out and removes the cgroup;
//! - the workload runs in a child process, so a crash, an OOM kill or a wrong
//!   byte in it only ends the child, and the parent tears down;
//! - while [`measure_zram_swapin`] or [`zram_ratio`] runs, SIGINT and SIGTERM
//!   are caught (the previous handlers are put back afterwards): the child is
//!   killed, the guards dropped, and [`BaselineError::Interrupted`] returned,
//!   so a Ctrl-C leaves the machine as it was. The caller should then exit.
//!
//! Only SIGKILL of the parent (or a power cut) can leave zram0 configured;
//! [`kernel_available`] then reports zram0 as busy, and `swapoff /dev/zram0;
//! echo 1 > /sys/block/zram0/reset` clears it. Runs in one machine are
//! serialised by an advisory lock (`/run/farmem-bench-zram0.lock`).
//!
//! # Where things are
//!
//! - `zram`: zram0 itself: its lock ([`ZramLock`]), compressor, reset and
//!   counters ([`zram_counters`]);
//! - `swap`: zram0 as swap ([`ZramSwap`]) and the swapon/swapoff calls and
//!   swap header also used for zswap's swap file;
//! - `cgroup`: the memory cgroup ([`MemCgroup`], [`memory_cgroup_root`]);
//! - `signals`: SIGINT/SIGTERM while a run lasts ([`SignalCatcher`],
//!   [`interrupted`]);
//! - `child`: the forked, measured child and the buffer it shares with the
//!   parent;
//! - `swapin`: [`measure_zram_swapin`] and the workload its child runs;
//! - `ratio`: [`zram_ratio`], zram's ratio on given pages.

mod cgroup;
mod child;
mod contain;
mod ratio;
mod signals;
mod swap;
mod swapin;
mod zram;

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Once;

use crate::BaselineError;
use zram::zram_is_free;

pub use cgroup::{memory_cgroup_root, CgroupRoot, MemCgroup, CGROUP_PREFIX};
pub use contain::run_in_cgroup;
pub use ratio::{zram_ratio, ZramRatio};
pub use signals::{interrupted, SignalCatcher};
pub use swap::{swap_off, swap_on, write_swap_header, ZramSwap, SWAP_PRIORITY, ZSWAP_ENABLED};
pub use swapin::{measure_zram_swapin, ZramRun, ZramRunConfig};
pub use zram::{zram_counters, ZramCounters, ZramLock, ZRAM_DEV, ZRAM_SYS};

fn os(what: String) -> impl FnOnce(io::Error) -> BaselineError {
    move |source| BaselineError::Os { what, source }
}

fn last_os(what: impl Into<String>) -> BaselineError {
    BaselineError::Os { what: what.into(), source: io::Error::last_os_error() }
}

fn write(path: impl AsRef<Path>, value: &str) -> Result<(), BaselineError> {
    let path = path.as_ref();
    fs::write(path, value).map_err(os(format!("writing '{value}' to {}", path.display())))
}

fn read(path: impl AsRef<Path>) -> Result<String, BaselineError> {
    let path = path.as_ref();
    fs::read_to_string(path).map_err(os(format!("reading {}", path.display())))
}

/// Whether the kernel baseline can run here: root, a zram device (after one
/// `modprobe zram` if needed), a memory cgroup controller, and zram0 not in
/// use by anyone. The error is one sentence saying what is missing.
pub fn kernel_available() -> Result<(), BaselineError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BaselineError::NotRoot);
    }
    if !Path::new(ZRAM_SYS).exists() {
        static MODPROBE: Once = Once::new();
        MODPROBE.call_once(|| {
            let _ = std::process::Command::new("modprobe")
                .arg("zram")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        });
        if !Path::new(ZRAM_SYS).exists() {
            return Err(BaselineError::NoZram { path: ZRAM_SYS.into() });
        }
    }
    if !Path::new(ZRAM_DEV).exists() {
        return Err(BaselineError::NoZram { path: ZRAM_DEV.into() });
    }
    memory_cgroup_root()?;
    zram_is_free()
}

/// Held by the tests that change zram, swap, zswap or cgroups: a test that
/// compares the machine's state before and after must not see another's.
#[cfg(test)]
pub(crate) static MACHINE_TEST: std::sync::Mutex<()> = std::sync::Mutex::new(());
