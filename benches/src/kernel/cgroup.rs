//! The memory cgroup the measured child runs under, and where the memory
//! controller is mounted.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{read, write};
use crate::BaselineError;

/// The prefix of the cgroups made here; the pid of the process follows.
pub const CGROUP_PREFIX: &str = "farmem-bench-";

/// Where memory cgroups are made, and with which interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    /// The mount point of the hierarchy with the memory controller.
    pub path: PathBuf,
    /// cgroup v2 (memory.max) rather than v1 (memory.limit_in_bytes).
    pub v2: bool,
}

/// Finds the memory controller: cgroup v2 if a v2 mount offers it, else the
/// v1 memory hierarchy.
pub fn memory_cgroup_root() -> Result<CgroupRoot, BaselineError> {
    let mounts = read("/proc/self/mounts")?;
    let mut v1 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let path = PathBuf::from(f[1].replace("\\040", " "));
        if f[2] == "cgroup2" {
            let has_memory = fs::read_to_string(path.join("cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
            if has_memory {
                return Ok(CgroupRoot { path, v2: true });
            }
        } else if f[2] == "cgroup" && f[3].split(',').any(|o| o == "memory") && v1.is_none() {
            v1 = Some(CgroupRoot { path, v2: false });
        }
    }
    v1.ok_or(BaselineError::NoMemoryCgroup)
}

/// A memory cgroup with a limit (v2 `memory.max` with `memory.swap.max` left
/// at max, or v1 `memory.limit_in_bytes`). On drop its tasks are moved to the
/// root cgroup and it is removed; on v2, the memory controller is disabled
/// again in the root's subtree_control if this guard enabled it.
pub struct MemCgroup {
    dir: PathBuf,
    root: CgroupRoot,
    enabled_memory_v2: bool,
}

impl MemCgroup {
    /// Makes `farmem-bench-<pid>` under the memory controller with `limit` bytes.
    /// Leftover `farmem-bench-*` cgroups of dead processes with no tasks are removed first.
    pub fn new(limit: u64) -> Result<Self, BaselineError> {
        let root = memory_cgroup_root()?;
        remove_stale_cgroups(&root.path);
        let mut enabled_memory_v2 = false;
        if root.v2 {
            let ctl = root.path.join("cgroup.subtree_control");
            if !read(&ctl)?.split_whitespace().any(|c| c == "memory") {
                write(&ctl, "+memory")?;
                enabled_memory_v2 = true;
            }
        }
        let dir = root.path.join(format!("{CGROUP_PREFIX}{}", std::process::id()));
        if let Err(e) = fs::create_dir(&dir) {
            if enabled_memory_v2 {
                let _ = fs::write(root.path.join("cgroup.subtree_control"), "-memory");
            }
            return Err(BaselineError::Os { what: format!("creating {}", dir.display()), source: e });
        }
        let cg = MemCgroup { dir, root, enabled_memory_v2 };
        if cg.root.v2 {
            write(cg.dir.join("memory.max"), &limit.to_string())?;
            let swap_max = cg.dir.join("memory.swap.max");
            if swap_max.exists() {
                write(swap_max, "max")?;
            }
        } else {
            write(cg.dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        }
        Ok(cg)
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether it is a cgroup v2 group.
    pub fn is_v2(&self) -> bool {
        self.root.v2
    }

    /// How many times the OOM killer killed a process of the group, when the
    /// kernel says (`oom_kill` of v2 `memory.events`, v1 `memory.oom_control`).
    pub fn oom_kills(&self) -> Option<u64> {
        let file = if self.root.v2 { "memory.events" } else { "memory.oom_control" };
        let text = fs::read_to_string(self.dir.join(file)).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
    }

    /// Moves process `pid` into the group.
    pub fn add(&self, pid: i32) -> Result<(), BaselineError> {
        write(self.dir.join("cgroup.procs"), &pid.to_string())
    }

    /// Sets the group's own swappiness (v1 `memory.swappiness`; v2 has none and
    /// follows `vm.swappiness`).
    pub fn set_swappiness(&self, value: u32) -> Result<(), BaselineError> {
        if self.root.v2 {
            return Ok(());
        }
        write(self.dir.join("memory.swappiness"), &value.to_string())
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        if let Ok(pids) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in pids.split_whitespace() {
                let _ = fs::write(self.root.path.join("cgroup.procs"), pid);
            }
        }
        let mut removed = false;
        for _ in 0..100 {
            if fs::remove_dir(&self.dir).is_ok() {
                removed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !removed {
            eprintln!("warning: could not remove {}", self.dir.display());
        }
        if self.enabled_memory_v2 {
            let _ = fs::write(self.root.path.join("cgroup.subtree_control"), "-memory");
        }
    }
}

/// Removes `farmem-bench-<pid>` cgroups whose process is gone and which hold no task.
fn remove_stale_cgroups(root: &Path) {
    let Ok(dir) = fs::read_dir(root) else { return };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(CGROUP_PREFIX)).and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        let empty = fs::read_to_string(e.path().join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
        if !alive && empty {
            let _ = fs::remove_dir(e.path());
        }
    }
}
