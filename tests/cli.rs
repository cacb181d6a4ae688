//! The `farmem` command end to end, on small sizes.

use std::process::Command;

fn farmem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_farmem"))
}

#[test]
fn demo_checks_every_page_and_reports() {
    let out = farmem().args(["demo", "--size", "64M", "--threads", "2"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all 16384 pages match"), "{stdout}");
    assert!(stdout.contains("compression ratio"), "{stdout}");
    assert!(stdout.contains("fault latency (program)"), "{stdout}");
}

#[test]
fn demo_with_zstd() {
    let out = farmem().args(["demo", "--size", "16M", "--codec", "zstd:3"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("all 4096 pages match"));
}

#[test]
fn a_bad_codec_or_size_is_one_clear_error() {
    let out = farmem().args(["demo", "--codec", "lzma"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("codec 'lzma' is not one of: lz4, zstd, zstd:LEVEL"), "{err}");
    let out = farmem().args(["demo", "--size", "lots"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'lots' is not a size"));
}

#[test]
fn run_takes_a_second_t1_codec_and_names_a_bad_one() {
    let out = farmem().args(["run", "--tiers", "lz4+zstd:1", "--", "true"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (spec, words) in [("lz4+lz4", "the second codec is the first one again"), ("raw+zstd", "takes no second codec"), ("lz4+zstd:99", "LEVEL 1 to 19")] {
        let out = farmem().args(["run", "--tiers", spec, "--", "true"]).output().unwrap();
        assert!(!out.status.success(), "{spec} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("tier spec part 1 `{spec}`")) && err.contains(words), "{spec}: {err}");
    }
}

/// The cold-tail workload of `bench policy`: every object is read back and
/// checked after each mode (the run fails on a wrong byte), and the limit
/// mode takes out the pages only cold objects touch before the others.
#[test]
fn bench_policy_cold_tail_reports_the_cold_share_out_of_ram() {
    let dir = std::env::temp_dir().join(format!("farmem-cli-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("policy.json");
    let out = farmem().args(["bench", "policy", "--workload", "cold-tail", "--quick", "--json"]).arg(&json).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["workload"], "cold-tail");
    let modes = v["modes"].as_array().unwrap();
    let mode = |m: &str| modes.iter().find(|x| x["mode"] == m).unwrap_or_else(|| panic!("no {m} mode in {v}"));
    for m in ["plain", "limit", "stall"] {
        assert!(mode(m)["cold_out_pct"].as_f64().is_some(), "{m}: no cold_out_pct");
    }
    assert_eq!(mode("plain")["cold_out_pct"].as_f64(), Some(0.0));
    // The limit is half the heap and about half the pages are cold-only: a
    // policy blind to age would take out half of them.
    let limit = mode("limit")["cold_out_pct"].as_f64().unwrap();
    assert!(limit > 60.0, "the limit mode took out only {limit:.1}% of the cold-only pages");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_fault_writes_the_named_json_keys() {
    let dir = std::env::temp_dir().join(format!("farmem-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("fault.json");
    let out = farmem()
        .args(["bench", "fault", "--size", "64M", "--accesses", "3000", "--no-kernel", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in ["p50_us", "p99_us", "p999_us", "faults_per_s", "ratio", "floor_p50_us", "first_touch_p50_us"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} missing or not positive in {v}");
    }
    for key in ["kernel_zram_p50_us", "kernel_zram_p99_us"] {
        assert!(v.get(key).is_some(), "{key} missing");
        assert!(v[key].is_null(), "{key} should be null when the kernel run is skipped");
    }
    assert!(v["skipped"][0].as_str().unwrap().contains("--no-kernel"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_fault_in_signal_mode_says_so_and_reads_every_page_back() {
    let dir = std::env::temp_dir().join(format!("farmem-cli-signal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("fault.json");
    let out = farmem()
        .args(["bench", "fault", "--size", "64M", "--accesses", "3000", "--no-kernel", "--fault", "signal", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    // A page read back wrong fails the run (see `farmem_runs::random_faults`).
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["fault_mode"], "signal", "{v}");
    assert!(v["p50_us"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_takes_both_fault_modes_and_refuses_others_naming_them() {
    let out = farmem().args(["run", "--fault", "sigbus", "--", "true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("thread") && err.contains("signal"), "{err}");
    for mode in ["thread", "signal"] {
        let out = farmem().args(["run", "--fault", mode, "--", "true"]).output().unwrap();
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Root with zram and a memory cgroup, and zram0 free: what the kernel run needs.
fn kernel_run_possible() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::path::Path::new("/sys/block/zram0").exists()
        && std::fs::read_to_string("/sys/block/zram0/disksize").is_ok_and(|d| d.trim() == "0")
        && !std::fs::read_to_string("/proc/swaps").unwrap_or_default().contains("/dev/zram0")
}

#[test]
fn ctrl_c_during_the_kernel_run_restores_the_machine() {
    if !kernel_run_possible() {
        println!("skipped: needs root, a free zram0 and a memory cgroup");
        return;
    }
    let child = farmem()
        .args(["bench", "fault", "--size", "256M", "--accesses", "5000000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string("/proc/swaps").unwrap().contains("/dev/zram0") {
        assert!(t0.elapsed().as_secs() < 30, "zram swap never came up");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: signalling the child we started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("interrupted; zram, swap and the cgroup were restored"), "{err}");
    assert!(!std::fs::read_to_string("/proc/swaps").unwrap().contains("/dev/zram0"), "zram0 still swapped on");
    assert_eq!(std::fs::read_to_string("/sys/block/zram0/disksize").unwrap().trim(), "0");
    let cg = format!("farmem-bench-{pid}");
    for root in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"] {
        assert!(!std::path::Path::new(root).join(&cg).exists(), "cgroup {cg} left under {root}");
    }
}

#[test]
fn bench_fault_measures_an_mmap_tier_beside_t1() {
    let dir = std::env::temp_dir().join(format!("farmem-cli-mmap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("fault.json");
    let backing = dir.join("cxl");
    let out = farmem()
        .args(["bench", "fault", "--size", "32M", "--accesses", "2000", "--no-kernel", "--tier", "mmap:memfd", "--tier"])
        .arg(format!("mmap:{}", backing.display()))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in ["spill_p50_us", "spill_p99_us", "spill_over_t1_p50"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} missing or not positive in {v}");
    }
    let labels: Vec<&str> = v["runs"].as_array().unwrap().iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert!(labels.iter().filter(|l| l.starts_with("mmap")).count() == 2, "{labels:?}");
    // The backing file held heap pages: it was unlinked as soon as it was made.
    assert!(!backing.exists(), "the mmap tier's file is still reachable at {}", backing.display());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_fault_measures_the_file_tier_beside_bare_reads_of_its_file() {
    let dir = std::env::temp_dir().join(format!("farmem-cli-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("fault.json");
    let out = farmem()
        .args(["bench", "fault", "--size", "32M", "--accesses", "2000", "--no-kernel", "--tier"])
        .arg(format!("file:{}", dir.display()))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let f = &v["file_tiers"][0];
    for key in ["over_bare_p50", "demote_mb_per_s"] {
        assert!(f[key].as_f64().is_some_and(|x| x > 0.0), "{key} missing or not positive in {f}");
    }
    assert!(f["bare_pread"]["p50_us"].as_f64().is_some_and(|x| x > 0.0), "{f}");
    // T1 holds all but the incompressible pages (those went to the file at once).
    assert!(f["demoted_pages"].as_u64().is_some_and(|n| n > 8192 / 2), "{f}");
    // The spill files were unlinked as soon as they were made.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != "fault.json").collect();
    assert!(left.is_empty(), "spill files left behind: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_fault_refuses_a_tier_it_cannot_measure() {
    for (spec, says) in [
        ("file:relative/dir", "must be absolute"),
        ("mmap:relative/path", "must be absolute"),
        ("tape:/dev/st0", "expected mmap:PATH"),
        ("redis://h:0", "not a number from 1 to 65535"),
    ] {
        let out = farmem().args(["bench", "fault", "--no-kernel", "--tier", spec]).output().unwrap();
        assert!(!out.status.success(), "--tier {spec} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(spec) && err.contains(says), "{err}");
    }
}

/// A Redis server for a test, or `None` (and a line) where it is not installed.
fn redis_server() -> Option<farmem_tiers::remote::LocalServer> {
    match farmem_tiers::remote::LocalServer::start(farmem_tiers::RemoteProtocol::Redis) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: redis-server is not installed (bash .ci/run installs it)");
            None
        }
        Err(e) => panic!("starting redis-server: {e}"),
    }
}

#[test]
fn bench_fault_measures_the_remote_tier_beside_bare_gets_from_its_server() {
    let Some(server) = redis_server() else { return };
    let json = std::env::temp_dir().join(format!("farmem-cli-remote-{}.json", std::process::id()));
    let out = farmem()
        .args(["bench", "fault", "--size", "32M", "--accesses", "2000", "--no-kernel", "--tier"])
        .arg(format!("redis://127.0.0.1:{}", server.port))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in ["spill_p50_us", "remote_get_p50_us", "remote_demote_mb_per_s"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} missing or not positive in {v}");
    }
    let r = &v["remote_tiers"][0];
    assert!(r["over_bare_p50"].as_f64().is_some_and(|x| x > 0.0) && r["encrypted"] == true, "{r}");
    std::fs::remove_file(&json).unwrap();
}

#[test]
fn a_program_runs_under_a_remote_tier_and_without_farmem_when_its_server_is_not_there() {
    let program = "x = bytearray(64 << 20)\nfor i in range(0, len(x), 4096): x[i] = i % 251\nprint(sum(x[::4096]))";
    let want = (0..(64usize << 20)).step_by(4096).map(|i| i % 251).sum::<usize>().to_string();
    let run = |tiers: &str, stats: Option<&std::path::Path>| {
        let mut cmd = farmem();
        cmd.args(["run", "--limit", "32M", "--tiers", tiers]);
        if let Some(s) = stats {
            cmd.arg("--stats").arg(s);
        }
        cmd.args(["--", "python3", "-c", program]).output().unwrap()
    };
    if Command::new("python3").arg("-V").output().is_err() {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    // Nothing listens on port 1: one line, and the program runs as it would without farmem.
    let out = run("lz4,redis://127.0.0.1:1", None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == want, "{:?} {err}", out.status);
    assert!(err.contains("redis://127.0.0.1:1") && err.contains("running without farmem") && err.lines().count() == 1, "{err}");
    let Some(server) = redis_server() else { return };
    let stats = std::env::temp_dir().join(format!("farmem-cli-remote-run-{}.json", std::process::id()));
    let out = run(&format!("lz4,redis://127.0.0.1:{}", server.port), Some(&stats));
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == want, "{:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let names: Vec<&str> = v["tiers"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"redis"), "the run's tiers: {names:?}");
    std::fs::remove_file(&stats).unwrap();
}

#[test]
fn bench_kernel_cgroup_runs_a_command_in_a_memory_cgroup_with_zram_and_puts_the_machine_back() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/sys/block/zram0").exists() {
        eprintln!("skipped: needs root and zram0");
        return;
    }
    let swaps = || std::fs::read_to_string("/proc/swaps").unwrap();
    let before = swaps();
    // 96 MiB written under a 32 MiB limit: it must swap to zram, and read back right.
    let script = "cat /proc/self/cgroup; python3 -c \"x = bytearray(96 << 20)\nfor i in range(0, len(x), 4096): x[i] = i % 251\nprint(sum(x[::4096]))\"";
    let out = farmem().args(["bench", "kernel-cgroup", "--limit", "32M", "--swap", "256M", "--", "sh", "-c", script]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("farmem-bench-"), "the command was not in the group: {stdout}");
    let want: usize = (0..(96usize << 20)).step_by(4096).map(|i| i % 251).sum();
    assert!(stdout.contains(&want.to_string()), "{stdout}");
    assert_eq!(swaps(), before, "the zram swap was left on");
    let bad = farmem().args(["bench", "kernel-cgroup", "--limit", "32M", "--", "false"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("false ended with"), "{}", String::from_utf8_lossy(&bad.stderr));
}
