//! `libfarmem.so`, the LD_PRELOAD shim (issue 4): not written yet. The crate
//! exists so the workspace has its final shape; loading it does nothing.
