//! `farmem bench compare --workload kv-zipf --budget 50% --quick`, end to
//! end: every variant runs (the kernel ones skipped, with a reason, when not
//! root), and the JSON, Markdown and SVG outputs exist with their keys. And
//! `--workload memcached`: plain, farmem-limit and kernel-zram, every value
//! checked by the harness's client, farmem evicting and faulting back.
//!
//! Needs libfarmem.so beside the farmem binary (`cargo build --workspace
//! --release --all-targets` builds it).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The farmem binary, with libfarmem.so beside it.
fn farmem() -> PathBuf {
    let farmem = PathBuf::from(env!("CARGO_BIN_EXE_farmem"));
    assert!(farmem.with_file_name("libfarmem.so").is_file(), "build libfarmem.so first: cargo build -p farmem-preload --release");
    farmem
}

/// The JSON file of one run, `dir/STEM.json`.
fn run_json(dir: &std::path::Path, stem: &str) -> Value {
    let p = dir.join(format!("{stem}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

#[test]
fn quick_kv_zipf_comparison_writes_json_markdown_and_svg() {
    let farmem = farmem();
    let out = std::env::temp_dir().join(format!("farmem-compare-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let t0 = Instant::now();
    let run = Command::new(&farmem).args(["bench", "compare", "--workload", "kv-zipf", "--budget", "50%", "--quick", "--out"]).arg(&out).output().unwrap();
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare failed ({}):\n{stdout}\n{stderr}", run.status);
    // Under a minute on an idle machine; other builds share its two cores.
    assert!(took < Duration::from_secs(180), "--quick took {took:?}");

    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(stdout.contains("| variant | budget | throughput"), "the table is printed:\n{stdout}");
    for v in ["plain", "farmem-stall", "farmem-limit", "kernel-zram", "kernel-zswap"] {
        assert!(md.lines().any(|l| l.starts_with(&format!("| {v} |"))), "no row for {v}:\n{md}");
    }
    let svg = std::fs::read_to_string(out.join("resident.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{svg}");

    let runs: Vec<Value> = ["plain", "farmem-stall", "farmem-limit-50pct", "kernel-zram-50pct", "kernel-zswap-50pct"]
        .iter()
        .map(|stem| {
            run_json(&out, &format!("kv-zipf-{stem}"))
        })
        .collect();
    for r in &runs {
        for k in ["workload", "variant", "status", "throughput", "p50_us", "p99_us", "p999_us", "wall_s", "cpu_user_s", "cpu_sys_s", "memory", "samples", "checked"] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
        let status = r["status"].as_str().unwrap();
        match r["variant"].as_str().unwrap() {
            "plain" | "farmem-stall" | "farmem-limit" => assert_eq!(status, "ok", "{r}"),
            // Skipped when not root; OOM-killed or thrashing past the time
            // limit is the kernel's own result at a tight budget.
            _ => assert!(["ok", "skipped", "oom-killed", "timed-out", "not-comparable"].contains(&status), "{r}"),
        }
        if status == "skipped" {
            println!("{} skipped: {}", r["variant"], r["reason"]);
        }
        if status == "ok" {
            assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["checked"].as_u64().unwrap() > 0, "{r}");
            assert!(r["memory"]["peak_rss_bytes"].as_u64().unwrap() > 0, "{r}");
            assert!(r["samples"].as_array().unwrap().len() >= 2, "{r}");
        }
    }
    let limit = &runs[2];
    assert_eq!(limit["budget"], "50%");
    assert!(limit["budget_bytes"].as_u64().unwrap() * 3 < runs[0]["memory"]["peak_rss_bytes"].as_u64().unwrap() * 2);
    assert!(limit["farmem_stats"]["pages_evicted"].as_u64().unwrap() > 0, "farmem evicted nothing under the limit: {}", limit["farmem_stats"]);
    let _ = std::fs::remove_dir_all(&out);
}

fn have(tool: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(tool).is_file())
}

/// memcached under a farmem limit of half its plain peak, in both fault
/// modes: the harness's own client compares every get, and every key at the
/// end, with the bytes it set, so a passing run with pages evicted and
/// faulted back means farmem returned memcached's items byte for byte.
#[test]
fn quick_memcached_comparison_checks_every_value_under_a_farmem_limit() {
    if !have("memcached") {
        eprintln!("SKIPPED: memcached missing (apt-get install memcached; .ci/run installs it)");
        return;
    }
    let farmem = farmem();
    let out = std::env::temp_dir().join(format!("farmem-compare-memcached-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let t0 = Instant::now();
    let run = Command::new(&farmem)
        .args(["bench", "compare", "--workload", "memcached", "--budget", "50%", "--quick", "--duration", "3s"])
        .args(["--variant", "farmem-limit", "--variant", "farmem-signal", "--variant", "kernel-zram", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare failed ({}):\n{stdout}\n{stderr}", run.status);
    assert!(took < Duration::from_secs(120), "--quick took {took:?}");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for v in ["plain", "farmem-limit", "farmem-signal", "kernel-zram"] {
        assert!(md.lines().any(|l| l.starts_with(&format!("| {v} |"))), "no row for {v}:\n{md}");
    }

    let read = |stem: &str| run_json(&out, &format!("memcached-{stem}"));
    let (plain, limit, signal, zram) = (read("plain"), read("farmem-limit-50pct"), read("farmem-signal-50pct"), read("kernel-zram-50pct"));
    for r in [&plain, &limit, &signal] {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["workload"], "memcached");
        assert_eq!(r["unit"], "op");
        let rep = &r["workload_report"];
        let keys = rep["keys"].as_u64().unwrap();
        assert!(keys >= 50_000, "64 MiB of 1 KiB values: {rep}");
        assert!(r["throughput"].as_f64().unwrap() > 0.0 && rep["ops"].as_u64().unwrap() > 0, "{r}");
        let (p50, p99, p999) = (r["p50_us"].as_f64().unwrap(), r["p99_us"].as_f64().unwrap(), r["p999_us"].as_f64().unwrap());
        assert!(p50 > 0.0 && p99 >= p50 && p999 >= p99, "{r}");
        // Every get of the timed part and every key at the end.
        assert_eq!(r["checked"].as_u64().unwrap(), rep["gets"].as_u64().unwrap() + keys, "{rep}");
        assert_eq!(rep["server"]["curr_items"].as_u64(), Some(keys), "{rep}");
        assert_eq!(rep["server"]["evictions"].as_u64(), Some(0), "{rep}");
        assert_eq!(rep["server"]["get_misses"].as_u64(), Some(0), "{rep}");
        assert!(r["memory"]["peak_rss_bytes"].as_u64().unwrap() > 0 && r["samples"].as_array().unwrap().len() >= 2, "{r}");
    }
    assert!(plain["memory"]["peak_rss_bytes"].as_u64().unwrap() > 64 << 20, "memcached holds the data: {}", plain["memory"]);
    // memcached's worker threads share locks and condition variables in
    // its heap: in signal mode their futex words must stay in RAM for the waits.
    for (r, mode) in [(&limit, "thread"), (&signal, "signal")] {
        let stats = &r["farmem_stats"];
        assert_eq!(stats["fault_mode"], mode, "{stats}");
        assert!(stats["pages_evicted"].as_u64().unwrap() > 0, "farmem evicted nothing under the limit ({mode} mode): {stats}");
        assert!(stats["pages_faulted"].as_u64().unwrap() > 0, "no evicted page was read back, so none was checked ({mode} mode): {stats}");
    }
    // Skipped when not root; OOM-killed or thrashing past the time limit is
    // the kernel's own result at a tight budget.
    assert!(["ok", "skipped", "oom-killed", "timed-out"].contains(&zram["status"].as_str().unwrap()), "{zram}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Numbers in a fixed shuffled order, one a line: `sort -n`'s input.
fn numbers(path: &std::path::Path, n: u64) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut s = String::new();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s += &format!("{}\n", x % 1_000_000_007);
    }
    std::fs::write(path, s).unwrap();
}

/// `--command`: coreutils sort, its stdin from a file and its output in a
/// file, plain, under a farmem limit of half its peak and under kernel-zram,
/// two rounds taking turns. Every run's stdout and output file must hash to
/// the plain run's, farmem must have evicted and faulted pages back, and the
/// summary gives each variant's rounds.
#[test]
fn a_real_program_is_compared_by_the_sha256_of_what_it_prints_and_writes() {
    let farmem = farmem();
    let dir = std::env::temp_dir().join(format!("farmem-compare-command-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (input, sorted, out) = (dir.join("in.txt"), dir.join("sorted.txt"), dir.join("out"));
    numbers(&input, 400_000);
    let run = Command::new(&farmem)
        .args(["bench", "compare", "--command"])
        .arg(format!("sort -n -o {}", sorted.display()))
        .arg("--stdin")
        .arg(&input)
        .arg("--output-file")
        .arg(&sorted)
        .args(["--budget", "50%", "--rounds", "2", "--variant", "farmem-limit", "--variant", "kernel-zram", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare failed ({}):\n{stdout}\n{stderr}", run.status);
    assert!(stdout.contains("| plain | - | 2/2 |") && stdout.contains("| farmem-limit | 50% | 2/2 |"), "both rounds right:\n{stdout}");
    let read = |stem: &str| run_json(&out, &format!("command-{stem}"));
    let plain = read("plain-r1");
    let sorted_sha = plain["output"]["files"][0][1].as_str().unwrap().to_string();
    assert_eq!(sorted_sha.len(), 64, "{plain}");
    for stem in ["plain-r2", "farmem-limit-50pct-r1", "farmem-limit-50pct-r2"] {
        let r = read(stem);
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["output"]["files"][0][1], sorted_sha.as_str(), "{stem}");
        assert_eq!(r["output"]["exit"], "exited with status 0", "{stem}");
    }
    let limit = read("farmem-limit-50pct-r1");
    let stats = &limit["farmem_stats"];
    assert!(stats["pages_evicted"].as_u64().unwrap() > 0 && stats["pages_faulted"].as_u64().unwrap() > 0, "farmem moved nothing under the limit: {stats}");
    assert!(limit["budget_bytes"].as_u64().unwrap() * 3 < plain["memory"]["peak_rss_bytes"].as_u64().unwrap() * 2, "{limit}");
    let zram = read("kernel-zram-50pct-r1");
    assert!(["ok", "skipped", "oom-killed", "timed-out"].contains(&zram["status"].as_str().unwrap()), "{zram}");
    let summary: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.len(), 3, "{summary:?}");
    assert_eq!((summary[1]["variant"].as_str(), summary[1]["right"].as_u64()), (Some("farmem-limit"), Some(2)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A program whose output differs under farmem (it prints LD_PRELOAD, which
/// only `farmem run` sets) is reported as WRONG OUTPUT, and the comparison
/// exits non-zero.
#[test]
fn a_run_that_prints_something_else_than_plain_fails_the_comparison() {
    let farmem = farmem();
    let out = std::env::temp_dir().join(format!("farmem-compare-wrong-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(&farmem)
        .args(["bench", "compare", "--command", "sh -c 'printenv LD_PRELOAD; exit 0'", "--budget", "64M", "--variant", "farmem-limit", "--out"])
        .arg(&out)
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "a wrong output must fail the comparison:\n{stdout}\n{stderr}");
    assert!(stderr.contains("WRONG OUTPUT"), "{stderr}");
    assert!(stdout.contains("| farmem-limit | 64M | 0/1 (wrong-output) |"), "{stdout}");
    let r = run_json(&out, "command-farmem-limit-64M-r1");
    assert_eq!(r["status"], "wrong-output", "{r}");
    assert!(r["output"]["stdout_head"].as_str().unwrap().contains("libfarmem.so"), "{r}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `--workload redis --redis-load FILE`: the server is loaded from a file of
/// inline commands through `redis-cli --pipe`, and the load is timed and set
/// beside the kernel's at the same budget; the digest after the load and the
/// GETs must be the plain run's.
#[test]
fn a_redis_load_from_a_file_is_timed_and_its_digest_compared() {
    if !have("redis-server") || !have("redis-cli") || !have("redis-benchmark") {
        eprintln!("SKIPPED: redis missing (apt-get install redis-server redis-tools; .ci/run installs them)");
        return;
    }
    let farmem = farmem();
    let dir = std::env::temp_dir().join(format!("farmem-compare-redis-load-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // As the reproduction's load: random alphanumeric values of 100 to 900
    // bytes, and APPENDs to older keys.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut load = String::new();
    for i in 0..40_000u64 {
        let len = 100 + next() % 800;
        let v: String = (0..len).map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789"[(next() % 36) as usize] as char).collect();
        load += &format!("SET key:{i} {v}\r\n");
        if i % 7 == 0 {
            load += &format!("APPEND key:{} {}\r\n", i / 2, &v[..50]);
        }
    }
    let file = dir.join("load.txt");
    std::fs::write(&file, load).unwrap();
    let out = dir.join("out");
    let run = Command::new(&farmem)
        .args(["bench", "compare", "--workload", "redis", "--redis-load"])
        .arg(&file)
        .args(["--quick", "--budget", "50%", "--variant", "farmem-limit", "--variant", "kernel-zram", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare failed ({}):\n{stdout}\n{stderr}", run.status);
    assert!(stdout.contains("Load at 50%: farmem-limit"), "the load is set beside the kernel's:\n{stdout}");
    let read = |stem: &str| run_json(&out, &format!("redis-{stem}"));
    let (plain, limit) = (read("plain"), read("farmem-limit-50pct"));
    for r in [&plain, &limit] {
        assert_eq!(r["status"], "ok", "{r}");
        assert!(r["load_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["workload_report"]["keys"], 40_000, "DBSIZE after the load: {r}");
        assert_eq!(r["checked"], 40_000 + 40_000 / 7 + 1, "a reply for every command: {r}");
    }
    assert_eq!(limit["digest"], plain["digest"]);
    assert!(limit["farmem_stats"]["pages_evicted"].as_u64().unwrap() > 0, "{}", limit["farmem_stats"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quick_alloc_comparison_puts_farmem_beside_the_system_jemalloc() {
    let farmem = farmem();
    let out = std::env::temp_dir().join(format!("farmem-compare-alloc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(&farmem)
        .args(["bench", "compare", "--workload", "alloc", "--quick", "--duration", "2s", "--budget", "50%", "--variant", "jemalloc", "--variant", "farmem-stall", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "compare failed ({}):\n{stdout}\n{}", run.status, String::from_utf8_lossy(&run.stderr));
    for stem in ["plain", "jemalloc", "farmem-stall"] {
        let r = run_json(&out, &format!("alloc-{stem}"));
        if stem == "jemalloc" && r["status"] == "skipped" {
            // .ci/run installs it (libjemalloc-dev brings libjemalloc2).
            println!("jemalloc skipped: {}", r["reason"]);
            continue;
        }
        assert_eq!(r["status"], "ok", "{r}");
        assert!(r["throughput"].as_f64().unwrap() > 0.0 && r["checked"].as_u64().unwrap() > r["throughput"].as_f64().unwrap() as u64, "every operation checks a block: {r}");
        if stem == "farmem-stall" {
            // The program's heap was farmem's: its arenas' extents were registered.
            assert!(r["farmem_stats"]["registered_bytes"].as_u64().unwrap() > 0, "{}", r["farmem_stats"]);
        }
    }
    if run_json(&out, "alloc-jemalloc")["status"] == "ok" {
        assert!(stdout.contains("farmem-stall against the system's jemalloc: throughput "), "{stdout}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
