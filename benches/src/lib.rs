//! farmem's benchmark harness: farmem's runs and, in the same run, the
//! machine's own baselines.
//!
//! - [`heap`]: the heap contents every run sees (a deterministic mix of zero,
//!   text, record and random pages) and page checksums;
//! - [`stats`]: latency summaries from histograms of nanoseconds;
//! - [`first_touch`]: the kernel's first-touch anonymous page fault;
//! - [`kernel`]: the kernel's own answer, zram swap under a memory cgroup
//!   limit, and zram's compression ratio on given pages. It needs root and
//!   restores the machine afterwards, on errors and on Ctrl-C too;
//! - [`farmem_runs`], [`fault`]: farmem's side and `farmem bench fault`;
//! - [`policy`]: `farmem bench policy`, a Zipf key-value workload without
//!   farmem and under each policy mode;
//! - [`compare`]: `farmem bench compare`, one workload (kv-zipf, kv-uniform,
//!   redis, memcached, scan) or the user's own command ([`compare::command`],
//!   judged by the sha256 of its outputs) run plain, under farmem and under
//!   the kernel's zram and zswap with the same memory budget, each in a
//!   process of its own;
//! - [`plot`]: the SVG line charts both draw.
//!
//! ```no_run
//! let ft = farmem_bench::first_touch::measure_first_touch(10_000).unwrap();
//! println!("first-touch fault p50 {:.1} us", ft.p50_us);
//! match farmem_bench::kernel::kernel_available() {
//!     Ok(()) => {
//!         let run = farmem_bench::kernel::measure_zram_swapin(&Default::default()).unwrap();
//!         println!("zram swap-in p50 {:.1} us, ratio {:.2}", run.latency.p50_us, run.ratio);
//!     }
//!     Err(e) => println!("skipped: {e}"),
//! }
//! ```

pub mod compare;
pub mod farmem_runs;
pub mod fault;
pub mod first_touch;
pub mod heap;
pub mod kernel;
pub mod plot;
pub mod policy;
pub mod remote;
pub mod signal_floor;
pub mod thread_floor;
pub mod spill;
pub mod stats;

/// Why a baseline could not be measured; each message is one sentence naming
/// the path or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// Not running as root.
    #[error("the kernel baseline needs root: it configures /dev/zram0, swap and a memory cgroup")]
    NotRoot,
    /// No zram device, even after `modprobe zram`.
    #[error("no zram device: {path} is missing and `modprobe zram` did not create it")]
    NoZram {
        /// The path looked for.
        path: String,
    },
    /// No memory cgroup controller is mounted.
    #[error("no memory cgroup: neither a cgroup v2 mount with the memory controller nor a v1 memory hierarchy is mounted (see /proc/self/mounts)")]
    NoMemoryCgroup,
    /// zram0 is already in use by someone else.
    #[error("/dev/zram0 is in use by someone else ({0}); farmem-bench leaves it alone")]
    ZramBusy(String),
    /// A configuration value the measurement cannot use.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// The setting.
        what: &'static str,
        /// Its value and why it is refused.
        value: String,
    },
    /// A system call or file failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done, with the path.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A kernel file held something unexpected.
    #[error("unexpected contents in {path}: {value:?}")]
    Parse {
        /// The file.
        path: String,
        /// What it held.
        value: String,
    },
    /// The measured child process failed; says how.
    #[error("the measured child process {0}")]
    Child(String),
    /// Reads under zram swap returned bytes other than those written.
    #[error("{wrong} of {accesses} reads under zram swap returned bytes other than heap::fill wrote (first at page {first_page})")]
    WrongBytes {
        /// Reads whose page differed.
        wrong: u64,
        /// Reads made.
        accesses: u64,
        /// The first page that differed.
        first_page: u64,
    },
    /// SIGINT or SIGTERM arrived; the machine was restored.
    #[error("interrupted; zram, swap and the cgroup were restored")]
    Interrupted,
}
