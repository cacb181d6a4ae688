//! The `farmem` command: a demonstration, and the benchmarks.

mod demo;
mod size;

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
        #[arg(long, default_value = "2G", value_parser = size::parse)]
        size: u64,
        /// Threads reading the heap back.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Codec of the compressed tier: lz4, or zstd[:LEVEL].
        #[arg(long, default_value = "lz4")]
        codec: String,
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
        #[arg(long, default_value = "1G", value_parser = size::parse)]
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
        /// How long the fault thread spins before sleeping, in microseconds.
        #[arg(long, default_value_t = 50)]
        spin_us: u64,
        /// A second tier to measure beside T1: mmap:PATH (a /dev/dax device,
        /// or a new or empty file) or mmap:memfd. May be given more than once.
        #[arg(long = "tier", value_name = "SPEC")]
        tiers: Vec<farmem_bench::fault::SpillBench>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FARMEM_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Demo { size, threads, codec } => demo::run(size, threads, &codec),
        Command::Bench { which: Bench::Fault { size, accesses, json, no_kernel, spin_us, tiers } } => {
            farmem_bench::fault::run(&farmem_bench::fault::FaultBenchConfig {
                size: size as usize,
                accesses: accesses as usize,
                json,
                kernel: !no_kernel,
                spin: std::time::Duration::from_micros(spin_us),
                spill: tiers,
            })
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("farmem: {e}");
            ExitCode::FAILURE
        }
    }
}
