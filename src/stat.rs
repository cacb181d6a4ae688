//! `farmem stat PID`: a live summary of a process running under the shim,
//! read twice from its statistics socket to turn counters into rates.
//! `farmem stat` alone: one line for every process under farmem that this
//! user can see (those a node agent manages among them).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// The arguments of `farmem stat`.
#[derive(clap::Args, Debug)]
pub struct StatArgs {
    /// The process to look at; without it, every process under farmem.
    pid: Option<u32>,
    /// Seconds between the two readings the rates come from.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print the raw JSON of the second reading instead of the summary.
    #[arg(long)]
    json: bool,
}

/// Where the shim of `pid` (run by `uid`) serves its socket, most likely first.
fn candidates(pid: u32, uid: u32) -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from(format!("/run/farmem/{pid}.sock"))];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        v.push(PathBuf::from(x).join(format!("farmem/{pid}.sock")));
    }
    v.push(PathBuf::from(format!("/run/user/{uid}/farmem/{pid}.sock")));
    v.push(PathBuf::from(format!("/tmp/farmem-{uid}/{pid}.sock")));
    v
}

/// Reads one snapshot from the process's socket.
pub fn read_snapshot(pid: u32) -> Result<Value, String> {
    let uid = std::fs::metadata(format!("/proc/{pid}")).map_err(|e| format!("no process {pid}: {e}"))?.uid();
    let tried = candidates(pid, uid);
    for path in &tried {
        if let Ok(mut s) = UnixStream::connect(path) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut text = String::new();
            s.read_to_string(&mut text).map_err(|e| format!("reading {}: {e}", path.display()))?;
            return serde_json::from_str(&text).map_err(|e| format!("{}: not farmem statistics: {e}", path.display()));
        }
    }
    Err(format!(
        "process {pid} serves no farmem statistics (is it running under farmem run? has its heap reached the size farmem starts its runtime at, FARMEM_START_AT?); tried {}",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    ))
}

fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1 << 20) as f64)
}

/// The pids of every statistics socket in the directories this user's
/// shims serve them from.
fn every_pid() -> Vec<u32> {
    // SAFETY: getuid has no preconditions.
    let mut pids: Vec<u32> = farmem_agent::wire::socket_dirs(unsafe { libc::getuid() })
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".sock")?.parse().ok())
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// `farmem stat` without a pid: a line a process, rates over `interval`.
fn run_all(interval: f64, json: bool) -> Result<(), String> {
    let pids = every_pid();
    let first: Vec<(u32, Value)> = pids.iter().filter_map(|p| read_snapshot(*p).ok().map(|v| (*p, v))).collect();
    std::thread::sleep(Duration::from_secs_f64(interval.clamp(0.05, 60.0)));
    if json {
        let all: Vec<Value> = first.iter().filter_map(|(p, _)| read_snapshot(*p).ok()).collect();
        println!("{}", Value::Array(all));
        return Ok(());
    }
    println!("{:>8} {:<16} {:>12} {:>12} {:>12} {:>7} {:>10} {:>9}", "pid", "command", "resident", "limit", "out of RAM", "ratio", "faults/s", "stall %");
    for (pid, a) in &first {
        let Ok(b) = read_snapshot(*pid) else { continue };
        let dt = (f(&b, "uptime_seconds") - f(a, "uptime_seconds")).max(1e-9);
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let tiers: Vec<&Value> = b.get("tiers").and_then(Value::as_array).into_iter().flatten().filter(|t| t.get("name").and_then(Value::as_str) != Some("sampled")).collect();
        let (held, used) = tiers.iter().fold((0.0, 0.0), |(h, u), t| (h + f(t, "bytes_in"), u + f(t, "bytes_used")));
        println!(
            "{pid:>8} {:<16} {:>12} {:>12} {:>12} {:>7.2} {:>10.0} {:>9.3}",
            comm.trim(),
            mib(f(&b, "resident_bytes")),
            b.get("limit_bytes").and_then(Value::as_f64).map_or("-".into(), mib),
            mib(held),
            if used > 0.0 { held / used } else { 0.0 },
            (f(&b, "faults") - f(a, "faults")) / dt,
            (f(&b, "stall_seconds") - f(a, "stall_seconds")) / dt * 100.0
        );
    }
    if first.is_empty() {
        println!("no process under farmem serves statistics here");
    }
    Ok(())
}

/// Runs `farmem stat`.
pub fn run(args: StatArgs) -> Result<(), String> {
    let Some(pid) = args.pid else { return run_all(args.interval, args.json) };
    let a = read_snapshot(pid)?;
    std::thread::sleep(Duration::from_secs_f64(args.interval.clamp(0.05, 60.0)));
    let b = read_snapshot(pid)?;
    if args.json {
        println!("{b}");
        return Ok(());
    }
    let dt = (f(&b, "uptime_seconds") - f(&a, "uptime_seconds")).max(1e-9);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    println!("pid {pid} ({}), up {:.1} s", comm.trim(), f(&b, "uptime_seconds"));
    let limit = b.get("limit_bytes").and_then(Value::as_f64).map_or(String::new(), |l| format!(", limit {}", mib(l)));
    println!(
        "resident   {} of {} registered in {} regions{limit}; process RSS {}",
        mib(f(&b, "resident_bytes")),
        mib(f(&b, "registered_bytes")),
        f(&b, "regions"),
        mib(f(&b, "rss_bytes"))
    );
    println!("evicted    {} pages now, {} since start", f(&b, "evicted_pages"), f(&b, "pages_evicted"));
    for t in b.get("tiers").and_then(Value::as_array).into_iter().flatten() {
        // T1's second codec, when it has one and has been used.
        let n = f(t, "fallback_stores");
        let fallback = if n > 0.0 { format!(", {n:.0} stores by the second codec") } else { String::new() };
        println!(
            "tier {:<8} {} held in {}, ratio {:.2}{fallback}",
            t.get("name").and_then(Value::as_str).unwrap_or("?"),
            mib(f(t, "bytes_in")),
            mib(f(t, "bytes_used")),
            f(t, "ratio")
        );
    }
    let rate = |k: &str| (f(&b, k) - f(&a, k)) / dt;
    // Faults served from staging are pages the evictor had only just taken
    // out: a high share means it takes pages in use.
    println!(
        "faults/s   {:.0} from tiers, {:.0} from staging (just evicted), {:.0} zero-filled",
        rate("faults_from_tier"),
        rate("faults_from_staging"),
        rate("faults_zero_filled")
    );
    println!("stall      {:.3} % of the last {:.1} s", (f(&b, "stall_seconds") - f(&a, "stall_seconds")) / dt * 100.0, dt);
    Ok(())
}
