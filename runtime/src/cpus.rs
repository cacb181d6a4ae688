//! The CPUs the process may run on, and pinning a fault handler to one of them.

use std::io;

/// The CPUs the calling thread may run on (its affinity mask), in order.
pub fn allowed() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads one bit of a valid set, for an index below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> io::Result<()> {
    set_allowed(&[cpu])
}

/// Lets the calling thread run on `cpus` only (each below CPU_SETSIZE, as
/// [`allowed`] returns them).
pub fn set_allowed(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in `allowed`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: CPU_SET writes one bit of a valid set, for an index below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: sched_setaffinity reads size_of::<cpu_set_t>() bytes from `set`.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time a thread of this process has used, from its pthread handle.
pub(crate) fn thread_cpu_time(thread: libc::pthread_t) -> io::Result<std::time::Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `thread` is a live thread of this process (its JoinHandle is held).
    let r = unsafe { libc::pthread_getcpuclockid(thread, &mut clock) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calling_thread_may_run_somewhere_and_can_be_pinned_there() {
        let cpus = allowed().unwrap();
        assert!(!cpus.is_empty());
        let last = *cpus.last().unwrap();
        std::thread::spawn(move || {
            pin(last).unwrap();
            assert_eq!(allowed().unwrap(), vec![last]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_spinning_thread_shows_cpu_time() {
        use std::os::unix::thread::JoinHandleExt;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            while t0.elapsed() < std::time::Duration::from_millis(30) {
                std::hint::spin_loop();
            }
            rx.recv().unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(60));
        let used = thread_cpu_time(t.as_pthread_t()).unwrap();
        tx.send(()).unwrap();
        t.join().unwrap();
        assert!(used >= std::time::Duration::from_millis(10), "{used:?}");
    }
}
