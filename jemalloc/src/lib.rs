//! farmem for programs that link jemalloc: their heap extents come from
//! memory registered with farmem, without LD_PRELOAD.
//!
//! A Rust program puts [`Jemalloc`] in `#[global_allocator]` (in place of
//! `tikv_jemallocator::Jemalloc`; both use the `_rjem_` jemalloc of
//! tikv-jemalloc-sys 0.6) and calls [`install`] once:
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: farmem_jemalloc::Jemalloc = farmem_jemalloc::Jemalloc;
//!
//! let farmem = farmem_jemalloc::install("limit=256M tiers=zstd:3").expect("farmem");
//! let heap: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; 1 << 20]).collect();
//! // ... cold pages of `heap` leave RAM; touching them brings them back ...
//! println!("{} pages evicted", farmem.stats().pages_evicted_total);
//! farmem.keep(); // or drop it: reclaim stops, evicted pages come back
//! # drop(heap);
//! ```
//!
//! Only allocations made after `install` go to farmem memory. A C program
//! linked against the system libjemalloc uses the C library built from
//! `jemalloc/capi` (`farmem_jemalloc_install`, see `include/farmem_jemalloc.h`).
//!
//! The parts, shared with the LD_PRELOAD shim (`libfarmem.so`):
//! - [`extent`]: jemalloc extent hooks that take an arena's memory from fresh
//!   mappings registered with farmem, for any jemalloc's `mallctl`;
//! - [`route`]: which arena an allocation goes to: program threads to farmem
//!   arenas, the runtime's own allocations to arena 0, which is never hooked;
//! - [`Jemalloc`] and [`PlainJemalloc`]: global allocators over them.
//!
//! Hard rule 2 (the runtime's memory never lives in farmem memory) is kept by
//! [`Jemalloc`] sending every allocation made inside the runtime's scope
//! ([`farmem_runtime::in_runtime`]) to arena 0 without a thread cache; that is
//! why [`install`] refuses to run unless [`Jemalloc`] is the global allocator.

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("farmem-jemalloc supports Linux on x86-64 only");

pub mod config;
pub mod extent;
mod global;
mod install;
pub mod route;
pub mod sys;

pub use config::{Config, ConfigError};
pub use global::{layout_flags, Jemalloc, PlainJemalloc};
pub use install::{bind_current_thread, install_into, runtime, start_runtime, uninstall, FaultOptions, Guard, InstallError, SignalsBlocked, StartError};

/// Installs farmem into this program's jemalloc (the `_rjem_` one of
/// tikv-jemalloc-sys), configured by a string such as `"limit=512M
/// tiers=zstd:3"` (see [`config`]): starts the runtime and its policy and
/// creates the farmem arenas; from then on each thread's allocations come from
/// farmem memory. [`Jemalloc`] must be the `#[global_allocator]`.
pub fn install(config: &str) -> Result<Guard, InstallError> {
    install_config(&config.parse()?)
}

/// [`install`] with a parsed [`Config`].
pub fn install_config(config: &Config) -> Result<Guard, InstallError> {
    // A fresh allocation goes through the global allocator, whichever it is.
    drop(std::hint::black_box(Box::new(0u8)));
    if !global::in_use() {
        return Err(InstallError::NotGlobalAllocator);
    }
    // SAFETY: tikv-jemalloc-sys's mallctl is the jemalloc that Jemalloc, the
    // global allocator (checked above), serves from; it routes in_runtime()
    // allocations to arena 0, which create_arena never hooks.
    unsafe { install_into(config, tikv_jemalloc_sys::mallctl, &global::LINKED) }
}
