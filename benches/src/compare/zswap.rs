//! The kernel's other answer: zswap, a compressed cache in front of a swap
//! file. [`ZswapSwap`] makes the swap file in a directory of its own, turns
//! it on, enables zswap, and undoes all of it on drop: swap off, file and
//! directory removed, every /sys/module/zswap/parameters/* value put back.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::kernel::{self, ZramLock};
use crate::BaselineError;

/// Why a kernel-zswap run that thrashes past the time limit is reported as
/// not comparable rather than as slow.
pub const NOT_COMPARABLE: &str = "kernel-zswap is not comparable at this budget: zswap's compressed pool is charged to the memory cgroup \
(cgroup v1 has no memory.zswap.max to bound it), so the pool takes the budget from the program's own pages and the run thrashes, \
where zram's pool is outside the group and farmem's compressed tier is outside its limit";

/// zswap's parameters.
pub const ZSWAP_PARAMS: &str = "/sys/module/zswap/parameters";
/// Where the swap file's directory is made: a disk file system (swap files
/// cannot live on tmpfs or overlayfs).
pub const SWAP_DIR_PARENT: &str = "/var/tmp";

/// Whether zswap can be measured here: root, zswap in the kernel, and a
/// memory cgroup controller. The error is one sentence.
pub fn zswap_available() -> Result<(), BaselineError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BaselineError::NotRoot);
    }
    if !Path::new(kernel::ZSWAP_ENABLED).exists() {
        return Err(BaselineError::Invalid { what: "kernel", value: format!("{} is missing: this kernel has no zswap", kernel::ZSWAP_ENABLED) });
    }
    kernel::memory_cgroup_root().map(|_| ())
}

/// The current value of every zswap parameter, by name.
pub fn zswap_params() -> Result<Vec<(String, String)>, BaselineError> {
    let dir = fs::read_dir(ZSWAP_PARAMS).map_err(|source| BaselineError::Os { what: format!("listing {ZSWAP_PARAMS}"), source })?;
    let mut v = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Write-only or unreadable parameters cannot be put back; leave them out.
        if let Ok(value) = fs::read_to_string(e.path()) {
            v.push((name, value.trim().to_string()));
        }
    }
    v.sort();
    Ok(v)
}

fn set_param(name: &str, value: &str) -> Result<(), BaselineError> {
    let path = format!("{ZSWAP_PARAMS}/{name}");
    fs::write(&path, value).map_err(|source| BaselineError::Os { what: format!("writing '{value}' to {path}"), source })
}

/// A swap file with zswap in front of it, for the guard's life.
pub struct ZswapSwap {
    dir: PathBuf,
    file: PathBuf,
    swapped_on: bool,
    old_params: Vec<(String, String)>,
    compressor: String,
    _lock: ZramLock,
}

impl ZswapSwap {
    /// Takes the machine lock, makes a `size`-byte swap file in a fresh
    /// directory under [`SWAP_DIR_PARENT`], turns it on, and enables zswap
    /// with `compressor` (the current one if the kernel refuses it).
    pub fn new(size: u64, compressor: &str) -> Result<Self, BaselineError> {
        zswap_available()?;
        if size < 16 * crate::heap::PAGE as u64 {
            return Err(BaselineError::Invalid { what: "swap file size", value: format!("{size} bytes is below 16 pages") });
        }
        let lock = ZramLock::acquire()?;
        let old_params = zswap_params()?;
        let dir = PathBuf::from(format!("{SWAP_DIR_PARENT}/farmem-bench-zswap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|source| BaselineError::Os { what: format!("creating {}", dir.display()), source })?;
        let file = dir.join("swapfile");
        let mut g = ZswapSwap { dir, file, swapped_on: false, old_params, compressor: String::new(), _lock: lock };
        make_swap_file(&g.file, size)?;
        kernel::write_swap_header(&g.file, size)?;
        kernel::swap_on(&g.file)?;
        g.swapped_on = true;
        // A compressor the kernel lacks is refused with an error: keep its own then.
        let _ = set_param("compressor", compressor);
        // zswap's pool is charged to the memory cgroup: without the shrinker
        // writing cold entries back to the file, a tight limit fills with
        // the pool and the OOM killer ends the program.
        let _ = set_param("shrinker_enabled", "Y");
        set_param("enabled", "Y")?;
        g.compressor = fs::read_to_string(format!("{ZSWAP_PARAMS}/compressor")).unwrap_or_default().trim().to_string();
        Ok(g)
    }

    /// The compressor zswap uses.
    pub fn compressor(&self) -> &str {
        &self.compressor
    }

    /// The swap file.
    pub fn path(&self) -> &Path {
        &self.file
    }
}

/// A file of `size` bytes with every block allocated (swapon refuses holes), mode 0600.
fn make_swap_file(path: &Path, size: u64) -> Result<(), BaselineError> {
    let os = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source: io::Error| BaselineError::Os { what, source }
    };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(os("creating"))?;
    let len = libc::off_t::try_from(size).map_err(|_| BaselineError::Invalid { what: "swap file size", value: format!("{size} bytes") })?;
    // SAFETY: fallocate on a descriptor this function owns.
    if unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, len) } != 0 {
        // Not every file system has fallocate: write zeros instead.
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n]).map_err(os("writing zeros to"))?;
            left -= n as u64;
        }
    }
    f.sync_all().map_err(os("syncing"))
}

impl Drop for ZswapSwap {
    fn drop(&mut self) {
        if self.swapped_on {
            if let Err(e) = kernel::swap_off(&self.file) {
                eprintln!("warning: {e}");
            }
        }
        // "enabled" last, so zswap does not run with a half-restored setting.
        for (name, value) in self.old_params.iter().filter(|(n, _)| n != "enabled").chain(self.old_params.iter().filter(|(n, _)| n == "enabled")) {
            let now = fs::read_to_string(format!("{ZSWAP_PARAMS}/{name}")).unwrap_or_default();
            if now.trim() != value {
                if let Err(e) = set_param(name, value) {
                    eprintln!("warning: could not put zswap's {name} back to {value}: {e}");
                }
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: could not remove {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zswap_set_up_and_torn_down_leaves_the_machine_as_it_was() {
        let _machine = crate::kernel::MACHINE_TEST.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = zswap_available() {
            println!("skipped: {e}");
            return;
        }
        let before = (zswap_params().unwrap(), fs::read_to_string("/proc/swaps").unwrap());
        let path = {
            let g = ZswapSwap::new(32 << 20, "lz4").unwrap();
            assert_eq!(fs::read_to_string(kernel::ZSWAP_ENABLED).unwrap().trim(), "Y");
            assert!(fs::read_to_string("/proc/swaps").unwrap().contains(g.path().to_str().unwrap()), "the swap file is on");
            assert!(!g.compressor().is_empty());
            g.path().to_path_buf()
        };
        assert_eq!((zswap_params().unwrap(), fs::read_to_string("/proc/swaps").unwrap()), before);
        assert!(!path.exists() && !path.parent().unwrap().exists(), "{} is left", path.display());
    }
}
