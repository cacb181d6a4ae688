//! `examples/c_heap.c`, a C program on the system libjemalloc, linked with
//! `libfarmem_jemalloc_c.a`: built with `cc` and run with a heap four times
//! the limit; its output must show eviction, faults, every byte intact, and
//! the purge of freed values dropping farmem's copies.
//!
//! Needs cc and libjemalloc-dev (`.ci/run` installs it); skipped, loudly,
//! without the jemalloc header.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// target/<profile>, where cargo puts the static library.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// The figures of the line that starts with `stage`.
fn figures(out: &str, stage: &str) -> HashMap<String, u64> {
    let line = out.lines().find(|l| l.starts_with(stage)).unwrap_or_else(|| panic!("no {stage} line in:\n{out}"));
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.parse().unwrap())).collect()
}

#[test]
fn c_program_on_system_jemalloc_keeps_every_byte_under_farmem() {
    if !Path::new("/usr/include/jemalloc/jemalloc.h").exists() {
        eprintln!("SKIPPED: no /usr/include/jemalloc/jemalloc.h: install libjemalloc-dev (.ci/run does)");
        return;
    }
    let lib = target_dir().join("libfarmem_jemalloc_c.a");
    assert!(lib.is_file(), "{} is missing: build it with `cargo build -p farmem-jemalloc-capi --release`", lib.display());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bin = std::env::temp_dir().join(format!("farmem-c_heap-{}", std::process::id()));
    let cc = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror"])
        .arg(root.join("examples/c_heap.c"))
        .arg("-I")
        .arg(root.join("include"))
        .arg(&lib)
        .args(["-ljemalloc", "-lpthread", "-ldl", "-lm", "-o"])
        .arg(&bin)
        .output()
        .expect("cc");
    assert!(cc.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&cc.stderr));
    let run = Command::new(&bin).args(["256", "64"]).output().expect("run c_heap");
    let _ = std::fs::remove_file(&bin);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    println!("{out}{}", String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "c_heap failed ({})", run.status);

    let settled = figures(&out, "settled");
    let checked = figures(&out, "checked");
    let purged = figures(&out, "purged");
    assert!(settled["registered_bytes"] >= 256 << 20, "{settled:?}");
    assert!(settled["pages_evicted_total"] > 0, "{settled:?}");
    assert!(checked["faults_from_tier"] > 0, "{checked:?}");
    assert_eq!(checked["pages_poisoned"], 0);
    assert_eq!(figures(&out, "mismatches=")["mismatches"], 0);
    assert_eq!(figures(&out, "mismatches_after_uninstall=")["mismatches_after_uninstall"], 0);
    let dropped = purged["pages_dropped_by_program"] - checked["pages_dropped_by_program"];
    assert!(dropped > 0 && purged["evicted_pages"] < checked["evicted_pages"], "{checked:?}\n{purged:?}");
}
