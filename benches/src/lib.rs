//! farmem's benchmark harness: farmem's runs and, in the same run, the
//! machine's own baselines (a first-touch fault, the kernel's zram swap).
//!
//! ```no_run
//! let ft = farmem_bench::first_touch::measure_first_touch(10_000).unwrap();
//! println!("first-touch fault p50 {:.1} us", ft.p50_us);
//! ```

pub mod farmem_runs;
pub mod fault;
pub mod first_touch;
pub mod heap;
pub mod kernel;
pub mod stats;

/// Why a baseline could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The machine cannot run it (privilege, device, controller); says which.
    #[error("{0}")]
    Unavailable(String),
    /// A system call or file failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done, with the path.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The measured child process failed.
    #[error("{0}")]
    Child(String),
    /// SIGINT or SIGTERM arrived; the machine was restored.
    #[error("interrupted; zram, swap and the cgroup were restored")]
    Interrupted,
}
