//! Deleting every key of the process when it exits.
//!
//! The cleanup runs from `.fini_array`: after `main` returns or `exit` is
//! called, after the program's own `atexit` handlers and C++ static
//! destructors (which may still read evicted pages), and in the LD_PRELOAD
//! shim after the program's libraries' destructors too, as the shim is
//! loaded first. A process killed by a signal or ending with `_exit` skips
//! it: its keys expire after the ttl.

use std::sync::{Arc, Mutex, Weak};

use super::Shared;

static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// Lists a tier for the cleanup at exit.
pub(super) fn register(s: &Arc<Shared>) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(s));
}

#[used]
#[link_section = ".fini_array"]
static AT_EXIT: extern "C" fn() = at_exit;

extern "C" fn at_exit() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for s in live.iter().filter_map(Weak::upgrade) {
        s.close();
    }
}
