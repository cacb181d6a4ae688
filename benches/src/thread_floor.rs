//! The bare mechanism under thread mode, timed one fault at a time: a read of
//! a missing page in a userfaultfd region blocks in the kernel, a handler
//! thread woken by poll(2) reads the message and installs one fixed page with
//! UFFDIO_COPY (which wakes the reader), and goes back to poll. No runtime, no
//! tier, no page states: what farmem's thread mode could cost at best on this
//! machine, beside the kernel's swap-in in the same invocation.
//!
//! Two arrangements, both with the reader pinned to one CPU:
//! - one handler pinned to the reader's CPU: the reader blocks and its own
//!   CPU runs the handler, with no other CPU woken;
//! - one handler pinned to each CPU the process may run on, all polling the
//!   one userfaultfd (farmem's arrangement): the kernel wakes every poller on
//!   every fault, so the reader's fault also wakes the other CPUs.
//!
//! Their difference is what waking the other handlers costs the faulting
//! thread on this host.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use farmem_runtime::cpus::{allowed, set_allowed};
use farmem_runtime::mem::Mapping;
use farmem_runtime::uffd::{mode, Event, Userfaultfd};

use crate::signal_floor::time_page_reads;
use crate::stats::LatencySummary;
use crate::BaselineError;

#[repr(C, align(4096))]
struct Page([u8; 4096]);
/// What every fault installs: a page of non-zero bytes.
static SOURCE: Page = Page([0x5a; 4096]);

/// Which handlers serve the bare faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handlers {
    /// One handler, pinned to the reader's CPU.
    SameCpu,
    /// One handler pinned to each CPU the process may run on.
    EachCpu,
}

/// Puts the calling thread's affinity back on drop.
struct Pinned(Vec<usize>);

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = set_allowed(&self.0);
    }
}

/// One handler's loop: poll, read, copy with wake, until `stop` is set and
/// its eventfd kicked.
fn serve(uffd: &Userfaultfd, stop_fd: RawFd, stop: &AtomicBool) {
    let mut events = [Event::Unknown(0); 16];
    while !stop.load(Ordering::Acquire) {
        match uffd.poll(stop_fd, -1) {
            Ok((true, _)) => {}
            Ok(_) => continue,
            Err(_) => return,
        }
        let n = uffd.read_events(&mut events).unwrap_or(0);
        for ev in &events[..n] {
            if let Event::Fault { addr, .. } = *ev {
                // SAFETY: SOURCE is a static page no one writes; the
                // destination is a missing page of the registered range.
                // EEXIST (another handler was first) leaves the page in.
                let _ = unsafe { uffd.copy(addr & !4095, SOURCE.0.as_ptr(), 4096, true) };
            }
        }
    }
}

/// Reads `pages` missing pages in random order, each served by bare handler
/// threads arranged as `handlers`, and times each read. The reader is pinned
/// to the CPU it runs on for the duration (its affinity is put back after).
pub fn measure_thread_floor(pages: usize, handlers: Handlers) -> Result<LatencySummary, BaselineError> {
    if pages == 0 {
        return Err(BaselineError::Invalid { what: "pages", value: "0: there is nothing to fault".into() });
    }
    let len = pages.checked_mul(4096).ok_or(BaselineError::Invalid { what: "pages", value: format!("{pages} pages overflow the address space") })?;
    let os = |what: String, source| BaselineError::Os { what, source };
    let cpus = allowed().map_err(|e| os("reading the CPU affinity".into(), e))?;
    // SAFETY: sched_getcpu has no preconditions.
    let here = usize::try_from(unsafe { libc::sched_getcpu() }).ok().filter(|c| cpus.contains(c)).unwrap_or(cpus[0]);
    let uffd = Arc::new(Userfaultfd::open(0, 0).map_err(|e| os("opening a userfaultfd".into(), std::io::Error::other(e.to_string())))?);
    let map = Mapping::anonymous(len).map_err(|e| os(format!("mmap of {len} anonymous bytes"), e))?;
    let base = map.addr();
    // SAFETY: advice on our own mapping; failure only means THP may apply.
    unsafe { libc::madvise(base.cast(), len, libc::MADV_NOHUGEPAGE) };
    uffd.register(base as u64, len as u64, mode::MISSING).map_err(|e| os(format!("registering {len} bytes at {:#x}", base as u64), e))?;
    // SAFETY: eventfd has no preconditions; the fd is closed below.
    let stop_fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if stop_fd < 0 {
        return Err(os("creating an eventfd".into(), std::io::Error::last_os_error()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handler_cpus = match handlers {
        Handlers::SameCpu => vec![here],
        Handlers::EachCpu => cpus.clone(),
    };
    let mut threads = Vec::with_capacity(handler_cpus.len());
    let mut spawned = Ok(());
    for &cpu in &handler_cpus {
        let (uffd, stop) = (Arc::clone(&uffd), Arc::clone(&stop));
        match std::thread::Builder::new().name(format!("bare-fault-{cpu}")).spawn(move || {
            let _ = set_allowed(&[cpu]);
            serve(&uffd, stop_fd, &stop);
        }) {
            Ok(t) => threads.push(t),
            Err(e) => {
                spawned = Err(os(format!("spawning a bare fault handler for CPU {cpu}"), e));
                break;
            }
        }
    }
    let timed = spawned.and_then(|()| {
        let _pinned = set_allowed(&[here]).map(|()| Pinned(cpus.clone()));
        // Let every handler reach its poll before the first fault.
        std::thread::sleep(std::time::Duration::from_millis(20));
        time_page_reads(base, pages, SOURCE.0[0], "thread floor")
    });
    stop.store(true, Ordering::Release);
    let one = 1u64;
    // SAFETY: writes 8 bytes from a u64 to our own eventfd.
    unsafe { libc::write(stop_fd, (&one as *const u64).cast(), 8) };
    for t in threads {
        let _ = t.join();
    }
    // SAFETY: every handler has stopped; nothing else uses the fd.
    unsafe { libc::close(stop_fd) };
    drop(map);
    timed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_served_by_the_bare_handlers_and_timed() {
        if Userfaultfd::probe().is_err() {
            eprintln!("skipped: no userfaultfd here");
            return;
        }
        // On a thread of its own, under a watchdog: a fault no handler
        // serves blocks its reader for good.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let before = allowed().unwrap();
            let runs: Vec<_> = [Handlers::SameCpu, Handlers::EachCpu].into_iter().map(|h| (h, measure_thread_floor(500, h))).collect();
            let _ = tx.send((runs, before, allowed().unwrap()));
        });
        let (runs, before, after) = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the bare handlers served every fault within 60 s");
        for (handlers, s) in runs {
            let s = s.unwrap();
            assert!(s.p50_us > 0.0 && s.p99_us >= s.p50_us, "{handlers:?}: {s:?}");
        }
        // The reader's affinity is what it was.
        assert_eq!(after, before);
    }
}
