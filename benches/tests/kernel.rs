//! The kernel baselines: their figures are sane, and the machine is restored
//! afterwards, on success, on failure and on Ctrl-C.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use farmem_bench::first_touch::measure_first_touch;
use farmem_bench::kernel::{kernel_available, measure_zram_swapin, memory_cgroup_root, zram_ratio, ZramRunConfig, CGROUP_PREFIX};
use farmem_bench::BaselineError;

/// The tests here that use zram0 run one at a time, so each sees only its own changes.
static ZRAM0: Mutex<()> = Mutex::new(());

fn zram0() -> std::sync::MutexGuard<'static, ()> {
    ZRAM0.lock().unwrap_or_else(|e| e.into_inner())
}

/// The settings a run changes and must put back.
#[derive(Debug, PartialEq)]
struct MachineState {
    swappiness: String,
    comp_algorithm: String,
    zswap: String,
}

fn machine_state() -> MachineState {
    MachineState {
        swappiness: std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap(),
        comp_algorithm: std::fs::read_to_string("/sys/block/zram0/comp_algorithm").unwrap(),
        zswap: std::fs::read_to_string("/sys/module/zswap/parameters/enabled").unwrap_or_default(),
    }
}

/// No zram swap, zram0 unconfigured, no cgroup of process `pid`, settings as `before`.
fn assert_restored(pid: u32, before: &MachineState) {
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
    assert!(!swaps.lines().any(|l| l.starts_with("/dev/zram0")), "zram0 is still a swap device:\n{swaps}");
    let disksize = std::fs::read_to_string("/sys/block/zram0/disksize").unwrap();
    assert_eq!(disksize.trim(), "0", "zram0 is still configured");
    let cg = memory_cgroup_root().unwrap().path.join(format!("{CGROUP_PREFIX}{pid}"));
    assert!(!cg.exists(), "cgroup {} is left behind", cg.display());
    assert_eq!(&machine_state(), before);
}

#[test]
fn first_touch_faults_are_timed_one_by_one() {
    let ft = measure_first_touch(20_000).unwrap();
    assert_eq!(ft.count, 20_000);
    assert!(ft.p50_us > 0.0 && ft.p50_us < 1000.0, "{ft:?}");
    assert!(ft.p99_us >= ft.p50_us && ft.max_us >= ft.p999_us, "{ft:?}");
    assert!(ft.per_s > 0.0, "{ft:?}");
}

#[test]
fn a_short_zram_run_swaps_reads_back_right_and_restores_the_machine() {
    let _one = zram0();
    if let Err(e) = kernel_available() {
        println!("skipped: {e}");
        return;
    }
    let before = machine_state();
    let cfg = ZramRunConfig { heap_bytes: 256 << 20, limit_bytes: 64 << 20, accesses: 20_000, ..ZramRunConfig::default() };
    let run = measure_zram_swapin(&cfg).unwrap();
    println!("{}", serde_json::to_string(&run).unwrap());
    assert!(run.swapped_out_pages > 10_000, "{run:?}");
    assert!(run.swapped_in_pages > 0, "{run:?}");
    assert!(run.ratio > 1.5, "zram ratio {:.2}", run.ratio);
    assert!(run.zram_orig_bytes > 100 << 20 && run.zram_mem_used_bytes < run.zram_orig_bytes, "{run:?}");
    assert_eq!(run.latency.count, 20_000);
    assert!(run.latency.p50_us > 0.0 && run.latency.p99_us >= run.latency.p50_us);
    assert!(run.accesses_per_s > 1000.0, "{run:?}");
    assert_eq!(run.algorithm, "lz4");
    assert_restored(std::process::id(), &before);
}

#[test]
fn zram_ratio_measures_the_given_pages_and_restores_zram() {
    let _one = zram0();
    if let Err(e) = kernel_available() {
        println!("skipped: {e}");
        return;
    }
    let before = machine_state();
    let mut pages = vec![0u8; 32 << 20];
    farmem_bench::heap::fill(&mut pages, 1);
    for algorithm in ["lzo-rle", "lz4"] {
        let r = zram_ratio(&pages, algorithm).unwrap();
        println!("zram {algorithm} on heap::fill pages: {r:?}");
        assert_eq!(r.algorithm, algorithm);
        assert!(r.ratio > 1.5 && r.ratio < 6.0, "{r:?}");
        assert_eq!(r.counters.orig_bytes, 32 << 20, "{r:?}");
        assert!(r.counters.same_pages > 1000, "{r:?}");
        assert_restored(std::process::id(), &before);
    }
    // Incompressible pages: no better than 1.
    let mut random = vec![0u8; 4 << 20];
    let mut x = 88172645463325252u64;
    for c in random.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_ne_bytes());
    }
    let r = zram_ratio(&random, "lz4").unwrap();
    assert!(r.ratio <= 1.01, "{r:?}");
    assert_restored(std::process::id(), &before);
}

/// Which helper this test binary is run as, by the tests below.
const HELPER_ENV: &str = "FARMEM_BENCH_TEST_HELPER";

/// Not a test of its own: the body the tests below run in a child process of
/// this test binary. Without the variable it does nothing.
#[test]
fn helper() {
    let Ok(what) = std::env::var(HELPER_ENV) else { return };
    let line = match what.as_str() {
        "long-zram-run" => {
            let cfg = ZramRunConfig { heap_bytes: 256 << 20, limit_bytes: 64 << 20, accesses: 50_000_000, ..ZramRunConfig::default() };
            match measure_zram_swapin(&cfg) {
                Ok(r) => format!("finished: {:?}", r.latency),
                Err(e) => format!("error: {e}"),
            }
        }
        "availability" => match kernel_available() {
            Ok(()) => "available".to_string(),
            Err(e) => format!("error: {e}"),
        },
        other => panic!("unknown helper {other}"),
    };
    println!("helper says: {line}");
}

fn helper_command(what: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "helper", "--nocapture", "--test-threads=1"]).env(HELPER_ENV, what).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Starts a long zram run in a child process, interrupts it with `signal`
/// once its measured process is in the cgroup, and checks it restores the machine.
fn interrupt_a_run(signal: libc::c_int, whole_group: bool) {
    let before = machine_state();
    let mut cmd = helper_command("long-zram-run");
    cmd.process_group(0);
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let procs = memory_cgroup_root().unwrap().path.join(format!("{CGROUP_PREFIX}{pid}")).join("cgroup.procs");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&procs).is_ok_and(|p| !p.trim().is_empty()) {
        assert!(t0.elapsed() < Duration::from_secs(60), "the measured process never joined {}", procs.display());
        std::thread::sleep(Duration::from_millis(5));
    }
    // Let it fill part of its heap, so there is swap to tear down.
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::fs::read_to_string("/proc/swaps").unwrap().contains("/dev/zram0"));
    let target = if whole_group { -(pid as i32) } else { pid as i32 };
    // SAFETY: signalling the process (group) this test started.
    assert_eq!(unsafe { libc::kill(target, signal) }, 0);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("helper says: error: {}", BaselineError::Interrupted)),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_restored(pid, &before);
}

#[test]
fn ctrl_c_during_a_zram_run_restores_the_machine() {
    let _one = zram0();
    if let Err(e) = kernel_available() {
        println!("skipped: {e}");
        return;
    }
    // Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    interrupt_a_run(libc::SIGINT, true);
    // `kill PID`: SIGTERM to the measuring process only.
    interrupt_a_run(libc::SIGTERM, false);
}

#[test]
fn a_user_other_than_root_is_refused_in_one_sentence() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(matches!(kernel_available(), Err(BaselineError::NotRoot)));
        return;
    }
    if !Path::new("/sys/block/zram0").exists() {
        println!("skipped: no zram0, the root check is covered when not root");
        return;
    }
    let out = match helper_command("availability").uid(65534).gid(65534).output() {
        Ok(o) => o,
        Err(e) => {
            println!("skipped: cannot run this test binary as nobody: {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("helper says: error: {}", BaselineError::NotRoot)), "{stdout}");
}

/// The default configuration (1 GiB heap, 256 MiB limit, lz4, 300 000 reads)
/// and zram's ratios on heap::fill pages: `cargo test -p farmem-bench --
/// --ignored --nocapture default_config`.
#[test]
#[ignore = "takes about a minute and is a measurement, not a check"]
fn default_config_measurement() {
    let _one = zram0();
    if let Err(e) = kernel_available() {
        println!("skipped: {e}");
        return;
    }
    let ft = measure_first_touch(200_000).unwrap();
    println!("first touch: p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us, {:.0}/s", ft.p50_us, ft.p99_us, ft.p999_us, ft.per_s);
    let run = measure_zram_swapin(&ZramRunConfig::default()).unwrap();
    let l = &run.latency;
    println!(
        "zram swap-in ({}): p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us, max {:.0} us, {:.0} accesses/s; ratio {:.2}, {:.2} with the {} zero pages kept out of zram (orig {} MiB, compr {} MiB, used {} MiB, same pages {}); swapped out {} in {} pages; fill {:.1} s",
        run.algorithm,
        l.p50_us,
        l.p99_us,
        l.p999_us,
        l.max_us,
        run.accesses_per_s,
        run.ratio,
        run.ratio_with_zero_pages,
        run.zero_pages_in_swap,
        run.zram_orig_bytes >> 20,
        run.zram_compr_bytes >> 20,
        run.zram_mem_used_bytes >> 20,
        run.zram_same_pages,
        run.swapped_out_pages,
        run.swapped_in_pages,
        run.fill_s
    );
    let mut pages = vec![0u8; 256 << 20];
    farmem_bench::heap::fill(&mut pages, 1);
    for algorithm in ["lz4", "lzo-rle"] {
        let r = zram_ratio(&pages, algorithm).unwrap();
        println!("zram {algorithm} on 256 MiB of heap::fill pages: ratio {:.2} (compr-only {:.2})", r.ratio, r.counters.orig_bytes as f64 / r.counters.compr_bytes as f64);
    }
}
