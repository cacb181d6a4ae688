//! The kernel's own answer to one memory budget shared by several
//! processes: a memory cgroup of that size with zram (lz4) swap, which every
//! process a command starts inherits. `farmem bench kernel-cgroup` runs a
//! command so (`scripts/agent-figures` uses it beside the node agent).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};

use super::{kernel_available, BaselineError, MemCgroup, SignalCatcher, ZramSwap};

/// Runs `argv` in a new memory cgroup of `limit` bytes, with `swap` bytes
/// of zram swap (lz4); everything it starts is in the group. The machine
/// is put back (swap off, zram0 reset, the group removed) when it ends,
/// also after SIGINT or SIGTERM, which reach the command too.
pub fn run_in_cgroup(limit: u64, swap: u64, argv: &[OsString]) -> Result<ExitStatus, BaselineError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(BaselineError::Invalid { what: "command", value: "empty".into() });
    };
    kernel_available()?;
    let _signals = SignalCatcher::new();
    let _swap = ZramSwap::new("lz4", swap)?;
    let cg = MemCgroup::new(limit)?;
    let procs = CString::new(cg.path().join("cgroup.procs").as_os_str().as_bytes()).map_err(|e| BaselineError::Invalid { what: "cgroup path", value: e.to_string() })?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: between fork and exec the closure only calls open, getpid,
    // write and close (async-signal-safe) on memory it owns: the child joins
    // the group before the command's first allocation.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut digits = [0u8; 12];
            let mut n = libc::getpid() as u32;
            let mut at = digits.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            let r = libc::write(fd, digits[at..].as_ptr().cast(), digits.len() - at);
            libc::close(fd);
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().map_err(|source| BaselineError::Os { what: format!("running {}", program.to_string_lossy()), source })?;
    if let Some(k) = cg.oom_kills().filter(|k| *k > 0) {
        eprintln!("kernel-cgroup: the OOM killer killed {k} process(es) of the group");
    }
    Ok(status)
}
