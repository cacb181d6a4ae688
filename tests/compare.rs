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

#[test]
fn quick_kv_zipf_comparison_writes_json_markdown_and_svg() {
    let farmem = PathBuf::from(env!("CARGO_BIN_EXE_farmem"));
    assert!(farmem.with_file_name("libfarmem.so").is_file(), "build libfarmem.so first: cargo build -p farmem-preload --release");
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
            let p = out.join(format!("kv-zipf-{stem}.json"));
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
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
            _ => assert!(["ok", "skipped", "oom-killed", "timed-out"].contains(&status), "{r}"),
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

/// memcached under a farmem limit of half its plain peak: the harness's own
/// client compares every get, and every key at the end, with the bytes it
/// set, so a passing run with pages evicted and faulted back means farmem
/// returned memcached's items byte for byte.
#[test]
fn quick_memcached_comparison_checks_every_value_under_a_farmem_limit() {
    if !have("memcached") {
        eprintln!("SKIPPED: memcached missing (apt-get install memcached; .ci/run installs it)");
        return;
    }
    let farmem = PathBuf::from(env!("CARGO_BIN_EXE_farmem"));
    assert!(farmem.with_file_name("libfarmem.so").is_file(), "build libfarmem.so first: cargo build -p farmem-preload --release");
    let out = std::env::temp_dir().join(format!("farmem-compare-memcached-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let t0 = Instant::now();
    let run = Command::new(&farmem)
        .args(["bench", "compare", "--workload", "memcached", "--budget", "50%", "--quick", "--duration", "3s"])
        .args(["--variant", "farmem-limit", "--variant", "kernel-zram", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "compare failed ({}):\n{stdout}\n{stderr}", run.status);
    assert!(took < Duration::from_secs(120), "--quick took {took:?}");
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for v in ["plain", "farmem-limit", "kernel-zram"] {
        assert!(md.lines().any(|l| l.starts_with(&format!("| {v} |"))), "no row for {v}:\n{md}");
    }

    let read = |stem: &str| -> Value {
        let p = out.join(format!("memcached-{stem}.json"));
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
    };
    let (plain, limit, zram) = (read("plain"), read("farmem-limit-50pct"), read("kernel-zram-50pct"));
    for r in [&plain, &limit] {
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
    let stats = &limit["farmem_stats"];
    assert!(stats["pages_evicted"].as_u64().unwrap() > 0, "farmem evicted nothing under the limit: {stats}");
    assert!(stats["pages_faulted"].as_u64().unwrap() > 0, "no evicted page was read back, so none was checked: {stats}");
    // Skipped when not root; OOM-killed or thrashing past the time limit is
    // the kernel's own result at a tight budget.
    assert!(["ok", "skipped", "oom-killed", "timed-out"].contains(&zram["status"].as_str().unwrap()), "{zram}");
    let _ = std::fs::remove_dir_all(&out);
}
