//! The forked child a run measures: the buffer it shares with the parent,
//! its start once it is in the cgroup, and its end, whether it finishes,
//! fails or is interrupted.

use std::fs;
use std::time::Duration;

use super::cgroup::MemCgroup;
use super::last_os;
use super::signals::interrupted;
use super::zram::{zram_counters, ZramCounters};
use crate::BaselineError;

fn vmstat(key: &str) -> u64 {
    fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

/// Words at the start of the shared buffer, before the samples.
const HDR_STATE: usize = 0;
pub(super) const HDR_WRONG: usize = 1;
pub(super) const HDR_FIRST_WRONG: usize = 2;
pub(super) const HDR_FILL_NS: usize = 3;
pub(super) const HDR_WORDS: usize = 4;
/// Values of the state word.
const STATE_DONE: u64 = 2;

/// An anonymous MAP_SHARED buffer of u64 words, seen by parent and child.
pub(super) struct Shared {
    pub(super) ptr: *mut u64,
    words: usize,
}

impl Shared {
    pub(super) fn new(words: usize) -> Result<Self, BaselineError> {
        let len = words * 8;
        // SAFETY: a fresh shared anonymous mapping, unmapped on drop.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(last_os(format!("mapping a {len}-byte shared sample buffer")));
        }
        // Touch every page here, so the buffer is charged to the parent's
        // cgroup, not the measured one.
        // SAFETY: the mapping is `len` bytes long and writable.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0, len) };
        Ok(Shared { ptr: p as *mut u64, words })
    }

    pub(super) fn get(&self, i: usize) -> u64 {
        assert!(i < self.words);
        // SAFETY: i is inside the mapping; the child may write it concurrently,
        // hence the volatile read of an aligned word.
        unsafe { std::ptr::read_volatile(self.ptr.add(i)) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in new.
        unsafe { libc::munmap(self.ptr.cast(), self.words * 8) };
    }
}

/// A forked child, killed and reaped on drop unless already reaped.
struct ChildProc {
    pid: libc::pid_t,
    reaped: bool,
}

impl ChildProc {
    /// Kills and reaps the child; returns its wait status.
    fn kill_and_reap(&mut self) -> libc::c_int {
        let mut st = 0;
        if !self.reaped {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, &mut st, 0);
            }
            self.reaped = true;
        }
        st
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// What the child body gets: all of it prepared before the fork.
pub(super) struct ChildArgs {
    pub(super) heap_bytes: usize,
    pub(super) accesses: usize,
    pub(super) seed: u64,
    pub(super) shared: *mut u64,
}

/// The child's work; returns an exit code (0: done, results in the buffer).
///
/// # Safety
/// Runs in a freshly forked child: it must not allocate or take locks.
pub(super) type ChildBody = unsafe fn(&ChildArgs) -> i32;

/// What the parent saw at the end of the child's run.
pub(super) struct ChildOutcome {
    pub(super) counters: ZramCounters,
    pub(super) pswpout: u64,
    pub(super) pswpin: u64,
    pub(super) zero_in_swap: u64,
}

/// Forks, moves the child into `cgroup`, releases it to run `body`, and
/// waits; when the child reports done, zram's counters are read while its
/// heap is still swapped out, then it is killed. SIGINT/SIGTERM (caught by
/// the caller's [`SignalCatcher`](super::SignalCatcher)) kill it and return Interrupted.
pub(super) fn run_child(cgroup: &MemCgroup, shared: &Shared, args: &ChildArgs, body: ChildBody) -> Result<ChildOutcome, BaselineError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_os("creating a pipe to start the measured child"));
    }
    let (go_read, go_write) = (fds[0], fds[1]);
    let (pswpout0, pswpin0) = (vmstat("pswpout"), vmstat("pswpin"));
    let (zout0, zin0) = (vmstat("swpout_zero"), vmstat("swpin_zero"));
    // SAFETY: fork; the child runs only `child_main`, which makes system
    // calls, touches memory it maps or the shared buffer, allocates nothing,
    // and ends in _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = last_os("fork");
        // SAFETY: closing the pipe made above.
        unsafe {
            libc::close(go_read);
            libc::close(go_write);
        }
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: in the child, right after fork.
        unsafe { child_main(go_read, go_write, args, body) };
    }
    let mut child = ChildProc { pid, reaped: false };
    // SAFETY: the parent's copy of the read end is not needed.
    unsafe { libc::close(go_read) };
    let started = cgroup.add(pid).and_then(|_| {
        // SAFETY: writes one byte from a local to the pipe's write end.
        let n = unsafe { libc::write(go_write, [1u8].as_ptr().cast(), 1) };
        if n == 1 {
            Ok(())
        } else {
            Err(last_os("starting the measured child"))
        }
    });
    // SAFETY: closing the write end; the child saw its byte or sees EOF.
    unsafe { libc::close(go_write) };
    started?;
    let mut outcome = None;
    loop {
        interrupted()?;
        if outcome.is_none() && shared.get(HDR_STATE) == STATE_DONE {
            let zero_in_swap = vmstat("swpout_zero").saturating_sub(zout0).saturating_sub(vmstat("swpin_zero").saturating_sub(zin0));
            outcome = Some(ChildOutcome {
                counters: zram_counters()?,
                pswpout: vmstat("pswpout").saturating_sub(pswpout0),
                pswpin: vmstat("pswpin").saturating_sub(pswpin0),
                zero_in_swap,
            });
            let st = child.kill_and_reap();
            if libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL {
                break;
            }
            return Err(BaselineError::Child(describe_status(st)));
        }
        let mut st = 0;
        // SAFETY: polling our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            child.reaped = true;
            return Err(BaselineError::Child(describe_status(st)));
        }
        if r < 0 {
            return Err(last_os(format!("waiting for the measured child {pid}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(outcome.expect("set before the loop ends"))
}

/// "exited with status 3 (...)" or "was killed by signal 9 (...)".
fn describe_status(st: libc::c_int) -> String {
    if libc::WIFEXITED(st) {
        let code = libc::WEXITSTATUS(st);
        let why = match code {
            CHILD_NO_START => "it was not started",
            CHILD_NO_HEAP => "it could not map the heap",
            _ => "before finishing its reads",
        };
        format!("exited with status {code} ({why})")
    } else if libc::WIFSIGNALED(st) {
        let sig = libc::WTERMSIG(st);
        let why = if sig == libc::SIGKILL { "SIGKILL: the OOM killer, if the cgroup limit is too small for the process itself" } else { "it crashed or was signalled" };
        format!("was killed by signal {sig} ({why})")
    } else {
        format!("ended with wait status {st:#x}")
    }
}

const CHILD_NO_START: i32 = 2;
pub(super) const CHILD_NO_HEAP: i32 = 3;

/// The forked child: wait to be moved into the cgroup, run the body, report
/// done and wait to be killed.
///
/// # Safety
/// Called only in a freshly forked child; allocates nothing.
unsafe fn child_main(go_read: libc::c_int, go_write: libc::c_int, args: &ChildArgs, body: ChildBody) -> ! {
    // SAFETY: raw system calls on descriptors and memory this child owns; the
    // body's own contract is the same as ours.
    unsafe {
        libc::close(go_write);
        let mut b = 0u8;
        if libc::read(go_read, (&mut b as *mut u8).cast(), 1) != 1 {
            libc::_exit(CHILD_NO_START);
        }
        libc::close(go_read);
        let code = body(args);
        if code != 0 {
            libc::_exit(code);
        }
        std::ptr::write_volatile(args.shared.add(HDR_STATE), STATE_DONE);
        loop {
            libc::pause();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::swap::SWAPPINESS;
    use crate::kernel::zram::{current_algorithm, zram_file};
    use crate::kernel::{kernel_available, memory_cgroup_root, read, write, SignalCatcher, ZramSwap, CGROUP_PREFIX, MACHINE_TEST, ZRAM_DEV, ZSWAP_ENABLED};

    fn machine_state() -> (String, String, String, String) {
        (read(SWAPPINESS).unwrap(), current_algorithm().unwrap(), read("/proc/swaps").unwrap(), fs::read_to_string(ZSWAP_ENABLED).unwrap_or_default())
    }

    fn assert_restored(before: &(String, String, String, String)) {
        assert_eq!(&machine_state(), before, "swappiness, zram0's compressor, zswap or the swaps changed");
        assert_eq!(read(zram_file("disksize")).unwrap().trim(), "0");
        let root = memory_cgroup_root().unwrap();
        assert!(!root.path.join(format!("{CGROUP_PREFIX}{}", std::process::id())).exists(), "the cgroup is left");
    }

    /// Fails the way a broken workload would.
    unsafe fn exits_with_7(_: &ChildArgs) -> i32 {
        7
    }

    /// Crashes the way a buggy workload would.
    unsafe fn aborts(_: &ChildArgs) -> i32 {
        // SAFETY: ends this forked child.
        unsafe { libc::abort() }
    }

    #[test]
    fn the_guards_restore_the_machine_when_the_workload_fails() {
        let _machine = MACHINE_TEST.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = kernel_available() {
            println!("skipped: {e}");
            return;
        }
        // Enable zswap for the test, if this kernel has it, to see the guard
        // turn it off and back on; the setting is put back at the end.
        let zswap_before = fs::read_to_string(ZSWAP_ENABLED).ok();
        struct PutBack(Option<String>);
        impl Drop for PutBack {
            fn drop(&mut self) {
                if let Some(v) = &self.0 {
                    let _ = fs::write(ZSWAP_ENABLED, v.trim());
                }
            }
        }
        let _put_back = PutBack(zswap_before.clone());
        if zswap_before.is_some() {
            write(ZSWAP_ENABLED, "Y").unwrap();
        }
        let before = machine_state();
        for (body, expect) in [(exits_with_7 as ChildBody, "exited with status 7"), (aborts as ChildBody, "killed by signal 6")] {
            let r = (|| {
                let _signals = SignalCatcher::new();
                let mut zram = ZramSwap::new("lz4", 64 << 20)?;
                zram.set_swappiness(100)?;
                assert_eq!(read(SWAPPINESS).unwrap().trim(), "100");
                assert!(read("/proc/swaps").unwrap().contains(ZRAM_DEV));
                if zswap_before.is_some() {
                    assert_eq!(read(ZSWAP_ENABLED).unwrap().trim(), "N", "zswap is on during the run");
                }
                let cgroup = MemCgroup::new(32 << 20)?;
                let shared = Shared::new(HDR_WORDS + 1)?;
                let args = ChildArgs { heap_bytes: 1 << 20, accesses: 1, seed: 1, shared: shared.ptr };
                run_child(&cgroup, &shared, &args, body).map(|_| ())
            })();
            match r {
                Err(BaselineError::Child(m)) => assert!(m.contains(expect), "{m}"),
                other => panic!("expected a child failure, got {other:?}"),
            }
            assert_restored(&before);
        }
    }
}
