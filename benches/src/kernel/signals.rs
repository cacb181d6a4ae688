//! SIGINT and SIGTERM while a run lasts: caught, so that the guards can
//! restore the machine before the caller exits.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::BaselineError;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Err(Interrupted) once SIGINT or SIGTERM came while a [`SignalCatcher`] lived.
pub fn interrupted() -> Result<(), BaselineError> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(BaselineError::Interrupted)
    } else {
        Ok(())
    }
}

/// Catches SIGINT/SIGTERM while alive (see [`interrupted`]), putting the
/// old handlers back after.
pub struct SignalCatcher {
    old: [(libc::c_int, libc::sigaction); 2],
}

impl SignalCatcher {
    /// Installs the handlers and clears an earlier interruption.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        INTERRUPTED.store(false, Ordering::SeqCst);
        // SAFETY: zeroed sigaction structs are valid to fill and pass to sigaction.
        let mut old: [(libc::c_int, libc::sigaction); 2] = unsafe { [(libc::SIGINT, std::mem::zeroed()), (libc::SIGTERM, std::mem::zeroed())] };
        for (sig, prev) in &mut old {
            // SAFETY: installs an async-signal-safe handler (one atomic store);
            // sigemptyset fills a struct we own.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(*sig, &sa, prev);
            }
        }
        SignalCatcher { old }
    }
}

impl Drop for SignalCatcher {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: puts back the handler sigaction returned before.
            unsafe { libc::sigaction(*sig, prev, std::ptr::null_mut()) };
        }
    }
}
