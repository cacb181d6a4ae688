//! The bare mechanism under signal mode, timed one fault at a time: a read of
//! a missing page in a userfaultfd region opened with `UFFD_FEATURE_SIGBUS`
//! raises SIGBUS, a handler installs one fixed page with UFFDIO_COPY, and the
//! read runs again. No runtime, no tier, no decompression: what farmem's
//! signal mode could cost at best on this machine, beside the kernel's own
//! swap-in in the same invocation (its signal delivery and return, and the
//! copy ioctl, are the kernel's, and differ from host to host).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use farmem_runtime::mem::Mapping;
use farmem_runtime::uffd::{feature, mode, Userfaultfd};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::stats::{histogram, LatencySummary};
use crate::BaselineError;

/// The userfaultfd the handler copies through, set only while a measurement runs.
static UFFD: AtomicPtr<Userfaultfd> = AtomicPtr::new(std::ptr::null_mut());
/// The registered range, `[START, END)`.
static START: AtomicU64 = AtomicU64::new(0);
static END: AtomicU64 = AtomicU64::new(0);
/// The SIGBUS action the measurement replaced, for faults that are not its own.
static OLD_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static OLD_SIGINFO: AtomicBool = AtomicBool::new(false);

#[repr(C, align(4096))]
struct Page([u8; 4096]);
/// What every fault installs: a page of non-zero bytes.
static SOURCE: Page = Page([0x5a; 4096]);

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as u64 & !4095;
    let uffd = UFFD.load(Ordering::Acquire);
    if uffd.is_null() || addr < START.load(Ordering::Relaxed) || addr >= END.load(Ordering::Relaxed) {
        // Not this measurement's fault: the action it replaced takes it (a
        // runtime's handler, say), or the default action ends the process
        // when the access runs again, as it would have without this handler.
        match OLD_HANDLER.load(Ordering::Acquire) {
            h if h != libc::SIG_DFL && h != libc::SIG_IGN && OLD_SIGINFO.load(Ordering::Acquire) => {
                // SAFETY: the replaced action was installed as an SA_SIGINFO handler.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { std::mem::transmute(h) };
                f(_sig, info, _ctx);
            }
            // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask; sigaction is async-signal-safe.
            _ => unsafe {
                libc::sigaction(libc::SIGBUS, &std::mem::zeroed(), std::ptr::null_mut());
            },
        }
        return;
    }
    // SAFETY: `uffd` points at the measurement's userfaultfd, which outlives
    // the measured reads; SOURCE is a static page no one writes. An error
    // (EEXIST after a race cannot happen with one thread) leaves the page
    // missing, and the read faults again.
    let _ = unsafe { (*uffd).copy(addr, SOURCE.0.as_ptr(), 4096, false) };
}

/// Puts the SIGBUS action and the handler's statics back on drop.
struct Installed {
    old: libc::sigaction,
}

impl Drop for Installed {
    fn drop(&mut self) {
        UFFD.store(std::ptr::null_mut(), Ordering::Release);
        // SAFETY: restores the action read at install.
        unsafe { libc::sigaction(libc::SIGBUS, &self.old, std::ptr::null_mut()) };
    }
}

/// Reads `pages` missing pages in random order, each served by the bare
/// SIGBUS handler above, and times each read (the clock is about 25 ns of it).
/// Replaces the process's SIGBUS action for the duration (a SIGBUS not its
/// own goes to the action it replaced): best called while no runtime in
/// signal mode runs.
pub fn measure_signal_floor(pages: usize) -> Result<LatencySummary, BaselineError> {
    if pages == 0 {
        return Err(BaselineError::Invalid { what: "pages", value: "0: there is nothing to fault".into() });
    }
    let len = pages.checked_mul(4096).ok_or(BaselineError::Invalid { what: "pages", value: format!("{pages} pages overflow the address space") })?;
    let os = |what: String, source| BaselineError::Os { what, source };
    let uffd = Box::new(Userfaultfd::open(feature::SIGBUS, feature::SIGBUS).map_err(|e| os("opening a userfaultfd with UFFD_FEATURE_SIGBUS".into(), std::io::Error::other(e.to_string())))?);
    let map = Mapping::anonymous(len).map_err(|e| os(format!("mmap of {len} anonymous bytes"), e))?;
    let base = map.addr();
    // SAFETY: advice on our own mapping; failure only means THP may apply.
    unsafe { libc::madvise(base.cast(), len, libc::MADV_NOHUGEPAGE) };
    uffd.register(base as u64, len as u64, mode::MISSING).map_err(|e| os(format!("registering {len} bytes at {:#x}", base as u64), e))?;
    START.store(base as u64, Ordering::Relaxed);
    END.store(base as u64 + len as u64, Ordering::Relaxed);
    UFFD.store((&*uffd as *const Userfaultfd).cast_mut(), Ordering::Release);
    // SAFETY: zeroed sigactions are valid arguments; the kernel fills `old`.
    let (mut act, mut old): (libc::sigaction, libc::sigaction) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    act.sa_sigaction = on_sigbus as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: reads the current action only.
    if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
        UFFD.store(std::ptr::null_mut(), Ordering::Release);
        return Err(os("reading the SIGBUS action".into(), std::io::Error::last_os_error()));
    }
    OLD_HANDLER.store(old.sa_sigaction, Ordering::Release);
    OLD_SIGINFO.store(old.sa_flags & libc::SA_SIGINFO != 0, Ordering::Release);
    // SAFETY: `on_sigbus` is an SA_SIGINFO handler that lives as long as the program.
    if unsafe { libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) } != 0 {
        UFFD.store(std::ptr::null_mut(), Ordering::Release);
        return Err(os("installing a SIGBUS handler".into(), std::io::Error::last_os_error()));
    }
    let installed = Installed { old };
    let timed = time_page_reads(base, pages, 0x5a, "signal floor");
    drop(installed);
    // The registration goes with the mapping; the fd after it.
    drop(map);
    drop(uffd);
    timed
}

/// Reads one byte of each of `pages` missing pages at `base` in a fixed random
/// order, timing each read (the clock is about 25 ns of it), and checks that
/// each read `expect`, the byte the bare handler installs. `what` names the
/// measurement in errors.
pub(crate) fn time_page_reads(base: *mut u8, pages: usize, expect: u8, what: &'static str) -> Result<LatencySummary, BaselineError> {
    let mut order: Vec<usize> = (0..pages).collect();
    order.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(1));
    let mut h = histogram();
    let (mut total_ns, mut wrong) = (0u64, 0usize);
    let mut out_of_range = None;
    for &i in &order {
        let s = Instant::now();
        // SAFETY: the caller's mapping holds `pages` pages at `base`, and a
        // handler serves each one's fault.
        let v = unsafe { std::ptr::read_volatile(base.add(i * 4096 + 17)) };
        let ns = (s.elapsed().as_nanos() as u64).max(1);
        wrong += usize::from(v != expect);
        total_ns += ns;
        if h.record(ns).is_err() {
            out_of_range = Some(ns);
        }
    }
    if let Some(ns) = out_of_range {
        return Err(BaselineError::Parse { path: format!("{what} samples"), value: format!("{ns} ns is out of the histogram's range") });
    }
    if wrong > 0 {
        return Err(BaselineError::Invalid { what, value: format!("{wrong} of {pages} pages read back something other than the page installed") });
    }
    Ok(LatencySummary::from_ns(&h, total_ns as f64 / 1e9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_served_by_the_bare_handler_and_timed() {
        if Userfaultfd::probe().map_or(true, |f| f & feature::SIGBUS == 0) {
            eprintln!("skipped: no userfaultfd with UFFD_FEATURE_SIGBUS here");
            return;
        }
        let s = measure_signal_floor(500).unwrap();
        assert!(s.p50_us > 0.0 && s.p99_us >= s.p50_us, "{s:?}");
        // The handler is gone: SIGBUS's action is what it was.
        // SAFETY: a zeroed sigaction is a valid buffer for the kernel to fill.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the current action only.
        unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut now) };
        assert_ne!(now.sa_sigaction, on_sigbus as *const () as usize);
    }
}
