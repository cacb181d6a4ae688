//! The `farmem` command: a demonstration, and the benchmarks.

mod demo;
mod run;
mod stat;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// farmem: far memory for unmodified Linux processes.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fill a realistic heap, evict it all into the compressed tier, read it back
    /// from two threads in random order, and check every byte.
    Demo {
        /// Heap size (e.g. 512M, 2G).
        #[arg(long, default_value = "2G", value_parser = farmem_runtime::policy::parse_size)]
        size: u64,
        /// Threads reading the heap back.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Codec of the compressed tier: lz4, or zstd[:LEVEL].
        #[arg(long, default_value = "lz4")]
        codec: String,
    },
    /// Run a program with its heap under farmem (LD_PRELOAD of libfarmem.so):
    /// farmem run [--limit SIZE] [--stall PCT] [--min SIZE] [--tiers SPEC] [--stats PATH] -- CMD ARGS...
    Run(run::RunArgs),
    /// A live summary of a process running under farmem: resident memory,
    /// tiers, faults per second, stall; without a PID, one line for every
    /// process under farmem (those the agent manages among them).
    Stat(stat::StatArgs),
    /// The node agent: processes started with `farmem run --agent SOCKET`
    /// join it, and it sets each one's limit from one node budget by the
    /// rules of its TOML config; Prometheus metrics on /metrics.
    Agent {
        /// The TOML config (rules and the node budget); re-read when it changes.
        #[arg(long)]
        config: std::path::PathBuf,
        /// The socket processes join on.
        #[arg(long, default_value = farmem_agent::DEFAULT_SOCKET)]
        socket: std::path::PathBuf,
        /// Where to serve /metrics (`none` for nowhere).
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics: String,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Fault-back latency for lz4 and zstd beside the engine's floor, a
    /// first-touch fault and the kernel's zram swap-in, in one run.
    Fault {
        /// Heap size for the fault walks and the kernel run.
        #[arg(long, default_value = "1G", value_parser = farmem_runtime::policy::parse_size)]
        size: u64,
        /// Faults to time per run.
        #[arg(long, default_value_t = 200_000)]
        accesses: u64,
        /// Write the figures as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Skip the kernel zram run (it needs root, zram and a memory cgroup).
        #[arg(long)]
        no_kernel: bool,
        /// How long the fault handlers spins before sleeping, in microseconds
        /// (the runtime's default is 0; 50 shows the latency a spare core buys).
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
        /// Fault handler threads: 0 (the runtime's default) is one per CPU,
        /// each pinned to its CPU; 1 is one unpinned handler.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=farmem_runtime::MAX_FAULT_HANDLERS as u64))]
        fault_handlers: u64,
        /// Who serves a fault: thread (the fault handler threads, the
        /// default) or signal (the faulting thread, in its SIGBUS handler).
        #[arg(long, default_value = "thread", value_parser = farmem_runtime::parse_fault_mode)]
        fault: farmem_runtime::FaultMode,
        /// A second tier to measure beside T1: mmap:PATH (a /dev/dax device,
        /// or a new or empty file), mmap:memfd, or file:DIR (the io_uring
        /// spill file, beside bare O_DIRECT reads of it and the rate of
        /// demotion into it), or redis://HOST:PORT / memcached://HOST:PORT
        /// (the remote tier, beside bare 4 KiB GETs from the same server and
        /// the rate of demotion into it). May be given more than once.
        #[arg(long = "tier", value_name = "SPEC")]
        tiers: Vec<farmem_bench::fault::SpillBench>,
    },
    /// A Zipf key-value workload run for a fixed time without farmem, then
    /// under the limit mode and the stall mode: resident memory, throughput,
    /// stall and sampling cost, with a plot.
    Policy {
        /// Bytes of values (default 4G; 64M with --quick).
        #[arg(long, value_parser = farmem_runtime::policy::parse_size)]
        size: Option<u64>,
        /// How long each mode runs (seconds, or e.g. 60s, 2m; default 60s, 8s with --quick).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// The Zipf exponent of the key distribution.
        #[arg(long, default_value_t = 0.99)]
        theta: f64,
        /// The limit mode's limit (default: half of --size).
        #[arg(long, value_parser = farmem_runtime::policy::parse_size)]
        limit: Option<u64>,
        /// The stall mode's target (e.g. 0.1%).
        #[arg(long, default_value = "0.1%", value_parser = farmem_runtime::policy::parse_stall)]
        stall: f64,
        /// Track written pages with PAGEMAP_SCAN and async write-protect (on or off).
        #[arg(long, default_value = "on", action = clap::ArgAction::Set, value_parser = farmem_runtime::policy::parse_switch)]
        write_tracking: bool,
        /// Write the figures as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write resident memory and throughput over time as SVG to this file.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// kv-zipf (1 KiB values, every page warm) or cold-tail (objects of
        /// 64 B to 64 KiB, --cold-share of them never read after loading).
        #[arg(long, default_value = "kv-zipf", value_parser = ["kv-zipf", "cold-tail"])]
        workload: String,
        /// cold-tail: the share of the objects never read after loading.
        #[arg(long, default_value_t = 0.6)]
        cold_share: f64,
        /// A short run for tests: 64 MiB and 8 s a mode, unless --size or --duration say otherwise.
        #[arg(long)]
        quick: bool,
    },
    /// One workload, or your own program (--command), run plain, under
    /// farmem (--limit, --stall) and under the kernel's zram and zswap with
    /// the same memory budget, one after another: throughput, latency, resident memory, tiers, swap, CPU; a
    /// JSON file a run, a Markdown table and SVG plots.
    Compare {
        /// kv-zipf, kv-uniform, redis, memcached, scan, or alloc (threads
        /// allocating and freeing mixed sizes: malloc's own cost, with the
        /// system's stock jemalloc as a variant beside plain).
        #[arg(long, required_unless_present = "command", conflicts_with = "command")]
        workload: Option<farmem_bench::compare::Workload>,
        /// Your own program instead of a workload, as one string split like
        /// sh would (no shell runs): e.g. --command 'sqlite3 /tmp/t.db'. Its
        /// exit status and the sha256 of its stdout (and of --output-file)
        /// must be the plain run's; WRONG OUTPUT fails the comparison.
        #[arg(long)]
        command: Option<farmem_bench::compare::command::CommandLine>,
        /// --command: a file to give the program as its standard input.
        #[arg(long, requires = "command")]
        stdin: Option<PathBuf>,
        /// --command: a file the program writes, compared by sha256 with the
        /// plain run's (removed before each run). May be given more than once.
        #[arg(long = "output-file", requires = "command")]
        output_files: Vec<PathBuf>,
        /// --command: rounds of all variants, taking turns (the summary gives
        /// medians and the spread).
        #[arg(long, default_value_t = 1, requires = "command")]
        rounds: usize,
        /// --command: keep one CPU busy beside every run (races show under load).
        #[arg(long, requires = "command")]
        busy: bool,
        /// --workload redis: load the server from this file of commands (as
        /// `redis-cli --pipe` takes them; timed and set beside the kernel's),
        /// then GET over its keys; the digest must be plain's.
        #[arg(long = "redis-load")]
        redis_load: Option<PathBuf>,
        /// --command: the longest a run may take (default: 20 times the first
        /// plain run, plus 2 minutes).
        #[arg(long, value_parser = parse_duration, requires = "command")]
        timeout: Option<std::time::Duration>,
        /// Memory budget: a share of the plain run's peak resident set (50%)
        /// or a size (512M). May be given more than once.
        #[arg(long = "budget", required = true)]
        budgets: Vec<farmem_bench::compare::Budget>,
        /// How long the timed part of kv-*, memcached and scan runs (default 60s; 4s with --quick).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// Output directory (default ./compare-YYYYMMDD-HHMMSS).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Small data and short runs (256 MiB; redis and memcached 64 MiB; alloc 32 MiB): under a minute.
        #[arg(long)]
        quick: bool,
        /// Bytes of data (default 4G; redis and memcached 1G; alloc 256M of live objects).
        #[arg(long, value_parser = farmem_runtime::policy::parse_size)]
        size: Option<u64>,
        /// Run only these variants beside plain: jemalloc (the system's,
        /// preloaded; by default only for alloc), farmem-limit, farmem-stall,
        /// farmem-signal (the limit, faults served in signal mode; only when
        /// named), kernel-zram, kernel-zswap. May be given more than once.
        #[arg(long = "variant")]
        variants: Vec<farmem_bench::compare::Variant>,
    },
    /// A workload process of `farmem bench compare` (kv-zipf, kv-uniform, scan, alloc).
    #[command(hide = true)]
    Workload {
        /// The workload.
        kind: farmem_bench::compare::Workload,
        /// Bytes of data.
        #[arg(long, value_parser = farmem_runtime::policy::parse_size)]
        size: u64,
        /// How long the timed part runs.
        #[arg(long, value_parser = parse_duration)]
        duration: std::time::Duration,
    },
    /// Run a command, and everything it starts, under the kernel's answer to
    /// one budget: a memory cgroup of --limit bytes with zram (lz4) swap;
    /// the machine is put back after. Root only.
    KernelCgroup {
        /// The memory cgroup's limit (e.g. 300M).
        #[arg(long, value_parser = farmem_runtime::policy::parse_size)]
        limit: u64,
        /// The zram swap device's size.
        #[arg(long, default_value = "4G", value_parser = farmem_runtime::policy::parse_size)]
        swap: u64,
        /// The command and its arguments (after `--`).
        #[arg(trailing_var_arg = true, required = true, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },
}

/// Parses a duration: seconds, optionally with s, m or h.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1.0),
        Some('m') => (&t[..t.len() - 1], 60.0),
        Some('h') => (&t[..t.len() - 1], 3600.0),
        _ => (t, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(std::time::Duration::from_secs_f64(v * mult)),
        _ => Err(format!("'{t}' is not a duration: write seconds, e.g. 60s or 2m")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The agent is a daemon: it says who joined and left unless told otherwise.
    let default_log = if matches!(cli.command, Command::Agent { .. }) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FARMEM_LOG").unwrap_or_else(|_| default_log.into()))
        .with_writer(std::io::stderr)
        .init();
    let r = match cli.command {
        Command::Demo { size, threads, codec } => demo::run(size, threads, &codec),
        Command::Run(args) => return run::run(args),
        Command::Stat(args) => stat::run(args),
        Command::Agent { config, socket, metrics } => (|| {
            let metrics = if metrics == "none" { None } else { Some(metrics.parse().map_err(|e| format!("--metrics {metrics}: not ADDR:PORT ({e}), or none"))?) };
            farmem_agent::run(farmem_agent::AgentOptions { config, socket, metrics, tick: std::time::Duration::from_secs(1) }).map_err(|e| e.to_string())
        })(),
        Command::Bench { which: Bench::Fault { size, accesses, json, no_kernel, spin_us, fault_handlers, fault, tiers } } => {
            farmem_bench::fault::run(&farmem_bench::fault::FaultBenchConfig {
                size: size as usize,
                accesses: accesses as usize,
                json,
                kernel: !no_kernel,
                service: farmem_bench::farmem_runs::Service { spin: std::time::Duration::from_micros(spin_us), fault_handlers: fault_handlers as usize, fault_mode: fault },
                spill: tiers,
            })
        }
        Command::Bench { which: Bench::Policy { size, duration, theta, limit, stall, write_tracking, json, plot, workload, cold_share, quick } } => {
            use farmem_bench::policy::{PolicyBenchConfig, PolicyWorkload};
            let size = size.unwrap_or(if quick { 64 << 20 } else { 4 << 30 });
            let duration = duration.unwrap_or(std::time::Duration::from_secs(if quick { 8 } else { 60 }));
            let workload = if workload == "cold-tail" { PolicyWorkload::ColdTail { cold_share } } else { PolicyWorkload::KvZipf };
            if !(0.0..1.0).contains(&cold_share) {
                Err(format!("--cold-share {cold_share}: a share from 0 up to (not including) 1"))
            } else {
                farmem_bench::policy::run(&PolicyBenchConfig { size, duration, theta, limit, stall, write_tracking, json, plot, workload })
            }
        }
        Command::Bench { which: Bench::Compare { workload, command, stdin, output_files, rounds, busy, timeout, redis_load, budgets, duration, out, quick, size, variants } } => {
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}")).and_then(|farmem| {
                let duration = duration.unwrap_or(std::time::Duration::from_secs(if quick { 4 } else { 60 }));
                let command = command.map(|c| farmem_bench::compare::command::CommandSpec { argv: c.0, stdin, output_files, rounds, busy, timeout });
                let workload = workload.unwrap_or(farmem_bench::compare::Workload::Command);
                let cfg = farmem_bench::compare::CompareConfig { workload, budgets, duration, out, quick, size, variants, farmem, command, redis_load };
                farmem_bench::compare::run(&cfg).map_err(|e| e.to_string())
            })
        }
        Command::Bench { which: Bench::Workload { kind, size, duration } } => farmem_bench::compare::run_workload(kind, size, duration).map_err(|e| e.to_string()),
        Command::Bench { which: Bench::KernelCgroup { limit, swap, command } } => match farmem_bench::kernel::run_in_cgroup(limit, swap, &command) {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("{} ended with {status}", command[0].to_string_lossy())),
            Err(e) => Err(e.to_string()),
        },
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("farmem: {e}");
            ExitCode::FAILURE
        }
    }
}
