//! Threads a tier runs of its own (the file tier's compactor).
//!
//! Under the LD_PRELOAD shim or the jemalloc hook, the Rust heap may be memory
//! farmem registers, and a runtime thread must not allocate from it (design
//! rule 2): the runtime marks its threads with a scope its allocator asks
//! about. This crate cannot name that scope (the runtime depends on it, not
//! the other way round), so the runtime gives it as a hook, which every tier
//! thread calls before anything else.

use std::ffi::CStr;
use std::io;
use std::sync::Mutex;
use std::thread::JoinHandle;

static HOOK: Mutex<Option<fn()>> = Mutex::new(None);

/// Sets what every thread a tier starts calls first, on itself, before it
/// allocates: the runtime enters its allocation scope there for the rest of
/// the thread. Applies to threads started after the call.
pub fn set_thread_hook(hook: fn()) {
    *HOOK.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
}

/// Starts a tier thread that runs the hook, takes the kernel name `name` (at
/// most 15 bytes) and runs `body`.
pub(crate) fn spawn(name: &'static CStr, body: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    let hook = *HOOK.lock().unwrap_or_else(|e| e.into_inner());
    // Unnamed for std: std copies a thread's name into an allocation as the
    // thread starts, before the hook could run; the kernel name is set below.
    std::thread::Builder::new().spawn(move || {
        if let Some(hook) = hook {
            hook();
        }
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of which the
        // kernel keeps the first 15 bytes; `name` is one, 'static.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        body()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_has_its_kernel_name() {
        let t = spawn(c"farmem-test", || {
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            assert_eq!(comm.trim_end(), "farmem-test");
        })
        .unwrap();
        t.join().unwrap();
    }
}
