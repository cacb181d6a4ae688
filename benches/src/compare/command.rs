//! `farmem bench compare --command 'CMD …'`: what farmem does to the user's
//! own program.
//!
//! The command runs plain, then under `farmem run` (`--limit BUDGET`,
//! `--stall 0.1%`) and under the kernel's zram and zswap with a memory cgroup
//! of BUDGET, the same way the built-in workloads do ([`super::Plan`]). Every
//! run's stdout is hashed (sha256) as it streams, and so is each file named by
//! `--output-file` once the run has ended; a run whose exit status or hashes
//! differ from the plain run's is reported as WRONG OUTPUT and makes the
//! comparison fail. With `--rounds N` the variants take turns, round after
//! round, so a slow minute of a noisy machine falls on all of them alike; the
//! summary gives each variant's median wall time and the spread.
//!
//! The output files are removed before each run: a run that writes nothing
//! must not be judged by an earlier run's file.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::probe::Sampler;
use super::{cpu, describe, oom_killed, refusal, report, Budget, CompareConfig, CompareError, KernelSetup, Plan, RunRecord, Variant, Workload, VARIANTS};
use crate::kernel::SignalCatcher;

/// What `--command` runs and how it is judged.
#[derive(Debug, Clone, Default)]
pub struct CommandSpec {
    /// The program and its arguments (split like a shell would, no shell run).
    pub argv: Vec<OsString>,
    /// A file given to the program as its standard input (else /dev/null).
    pub stdin: Option<PathBuf>,
    /// Files the program writes, compared by sha256 with the plain run's.
    pub output_files: Vec<PathBuf>,
    /// Rounds of all variants, interleaved.
    pub rounds: usize,
    /// Keep a CPU busy beside each run (races show under CPU load).
    pub busy: bool,
    /// The longest a run may take (default: plain's first run × 20 + 2 min).
    pub timeout: Option<Duration>,
}

/// Splits a `--command` string into words the way sh would (quotes and
/// backslashes), without running a shell: the program started is the one
/// measured.
pub fn parse_command(s: &str) -> Result<Vec<OsString>, String> {
    let words = shlex::split(s).ok_or_else(|| format!("cannot split '{s}' into words: an unclosed quote?"))?;
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(words.into_iter().map(OsString::from).collect())
}

/// A `--command` string split into words ([`parse_command`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(pub Vec<OsString>);

impl std::str::FromStr for CommandLine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_command(s).map(CommandLine)
    }
}

/// What a run printed and wrote, as hashes.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CommandOutput {
    /// How the program ended: "exited with status 0", "was killed by signal 11".
    pub exit: String,
    /// sha256 of everything it wrote to stdout.
    pub stdout_sha256: String,
    /// Bytes it wrote to stdout.
    pub stdout_bytes: u64,
    /// The first bytes of stdout (for the report when outputs differ).
    pub stdout_head: String,
    /// Each `--output-file`: its path and sha256, or "missing".
    pub files: Vec<(String, String)>,
}

impl CommandOutput {
    /// Why this output is not `reference`'s, or None when it is.
    pub fn differs_from(&self, reference: &CommandOutput) -> Option<String> {
        if self.exit != reference.exit {
            return Some(format!("the program {} where plain {}", self.exit, reference.exit));
        }
        if self.stdout_sha256 != reference.stdout_sha256 {
            return Some(format!(
                "stdout differs: {} bytes, sha256 {}…, where plain printed {} bytes, sha256 {}…",
                self.stdout_bytes,
                &self.stdout_sha256[..16.min(self.stdout_sha256.len())],
                reference.stdout_bytes,
                &reference.stdout_sha256[..16.min(reference.stdout_sha256.len())]
            ));
        }
        for ((path, mine), (_, theirs)) in self.files.iter().zip(&reference.files) {
            if mine != theirs {
                return Some(format!("{path} differs: sha256 {mine} where plain wrote {theirs}"));
            }
        }
        None
    }
}

/// sha256 of a file, hex.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the stdout reader found: sha256, bytes, the first bytes.
type Streamed = std::io::Result<(String, u64, Vec<u8>)>;

/// Hashes a stream on a thread of its own (a full pipe would stop the
/// program); the result arrives on the channel at end of file.
fn hash_stream(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Streamed> {
    const HEAD: usize = 2048;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut h = Sha256::new();
        let (mut total, mut head) = (0u64, Vec::new());
        let mut buf = vec![0u8; 1 << 16];
        let r = loop {
            match r.read(&mut buf) {
                Ok(0) => break Ok((hex(&h.finalize()), total, head)),
                Ok(n) => {
                    h.update(&buf[..n]);
                    total += n as u64;
                    if head.len() < HEAD {
                        head.extend_from_slice(&buf[..n.min(HEAD - head.len())]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let _ = tx.send(r);
    });
    rx
}

/// A CPU kept busy while it lives.
struct Busy {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Busy {
    fn start() -> Busy {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut x = 0u64;
            while !flag.load(Ordering::Relaxed) {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
        });
        Busy { stop, thread: Some(thread) }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Plan<'_> {
    fn spec(&self) -> &CommandSpec {
        self.cfg.command.as_ref().expect("a command plan has a command")
    }

    /// How long this run may take.
    fn command_time_limit(&self, plain_wall: Option<f64>) -> Duration {
        self.spec().timeout.unwrap_or_else(|| match plain_wall {
            Some(w) => Duration::from_secs_f64(w * 20.0 + 120.0),
            // The plain run sets the scale for the others.
            None => Duration::from_secs(4 * 3600),
        })
    }

    /// Runs the user's command under this plan's variant: its stdout hashed as
    /// it streams, its files hashed after it ends.
    pub(super) fn run_command(&self, setup: &KernelSetup, rec: &mut RunRecord, plain_wall: Option<f64>) -> Result<(), CompareError> {
        let spec = self.spec();
        for f in &spec.output_files {
            match std::fs::remove_file(f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(CompareError::Io { what: format!("removing the output file {} before the run", f.display()), source: e })
                }
                _ => {}
            }
        }
        let mut cmd = self.command(&spec.argv, setup)?;
        if let Some(p) = &spec.stdin {
            let f = File::open(p).map_err(|source| CompareError::Io { what: format!("opening --stdin {}", p.display()), source })?;
            cmd.stdin(f);
        }
        let limit = self.command_time_limit(plain_wall);
        let t0 = Instant::now();
        let mut started = self.start(cmd)?;
        let stdout = started.stdout.take().ok_or_else(|| CompareError::Child("has no stdout pipe".into()))?;
        let hashed = hash_stream(stdout);
        let sampler = Sampler::start(started.measured, t0, self.sources(setup), self.label.clone());
        let waited = started.wait(limit);
        if matches!(waited, Err(CompareError::Child(_))) {
            started.kill();
            rec.samples = sampler.finish();
            let m = format!("the program did not finish within {limit:?} under {} and was killed", self.variant.name());
            // The kernel thrashing past the limit is its result at this budget;
            // farmem or plain doing so is a failure.
            return Err(if setup.cgroup().is_some() { CompareError::TooSlow(format!("{m} (thrashing)")) } else { CompareError::Child(m) });
        }
        rec.samples = sampler.finish();
        let (st, ru) = waited?;
        rec.wall_s = t0.elapsed().as_secs_f64();
        (rec.cpu_user_s, rec.cpu_sys_s) = cpu(&ru);
        // ru_maxrss (KiB) is the largest of the process tree: it catches a
        // peak between two samples of a short run.
        let maxrss = ru.ru_maxrss.max(0) as u64 * 1024;
        if oom_killed(setup, st) {
            return Err(CompareError::OomKilled(format!("{} MiB was not enough with {}", self.budget.map_or(0, |(_, b)| b >> 20), self.variant.name())));
        }
        let (sha, bytes, head) = match hashed.recv_timeout(Duration::from_secs(10)) {
            Ok(r) => r.map_err(|source| CompareError::Io { what: "reading the program's stdout".into(), source })?,
            Err(_) => return Err(CompareError::Child("exited, but its stdout stayed open 10 s later (a process it started holds it)".into())),
        };
        let files = spec
            .output_files
            .iter()
            .map(|f| (f.display().to_string(), sha256_file(f).unwrap_or_else(|e| format!("missing ({e})"))))
            .collect();
        rec.output = Some(CommandOutput { exit: describe(st), stdout_sha256: sha, stdout_bytes: bytes, stdout_head: String::from_utf8_lossy(&head).into_owned(), files });
        rec.peak_rss_rusage_bytes = Some(maxrss);
        rec.unit = "run".into();
        Ok(())
    }
}

/// One row of the summary: a variant at a budget over its rounds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct VariantSummary {
    /// The variant.
    pub variant: String,
    /// The budget label, if any.
    pub budget: Option<String>,
    /// Rounds run.
    pub runs: usize,
    /// Rounds whose output was the plain run's.
    pub right: usize,
    /// Rounds that ended otherwise: wrong output, failed, OOM-killed, timed out.
    pub other: Vec<String>,
    /// Median, smallest and largest wall seconds of the rounds that finished right.
    pub wall_s: Option<(f64, f64, f64)>,
    /// Median peak resident set, bytes.
    pub peak_rss_bytes: u64,
    /// Median average footprint (resident + zram/zswap pool), bytes.
    pub avg_footprint_bytes: u64,
    /// farmem: median peak resident heap (what the limit holds), bytes.
    pub heap_peak_bytes: Option<u64>,
    /// farmem: median faults.
    pub faults: Option<u64>,
    /// farmem: median share of faults served from staging (pages the evictor had just taken).
    pub staging_share: Option<f64>,
    /// farmem: median seconds threads waited in faults.
    pub stall_s: Option<f64>,
    /// farmem: median CPU seconds the fault handlers used.
    pub handler_cpu_s: Option<f64>,
}

fn median_f(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn median_u(v: Vec<u64>) -> Option<u64> {
    median_f(v.into_iter().map(|x| x as f64).collect()).map(|m| m as u64)
}

/// Summarises the rounds of each variant and budget, in the order first seen.
pub fn summarise(runs: &[RunRecord]) -> Vec<VariantSummary> {
    let mut keys: Vec<(String, Option<String>)> = Vec::new();
    for r in runs {
        let k = (r.variant.clone(), r.budget.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(variant, budget)| {
            let mine: Vec<&RunRecord> = runs.iter().filter(|r| r.variant == variant && r.budget == budget && r.status != "skipped").collect();
            let ok: Vec<&&RunRecord> = mine.iter().filter(|r| r.status == "ok").collect();
            let stat = |key: &str| -> Vec<f64> { ok.iter().filter_map(|r| r.farmem_stats.as_ref()?.get(key)?.as_f64()).collect() };
            let walls: Vec<f64> = ok.iter().map(|r| r.wall_s).collect();
            let shares: Vec<f64> = ok
                .iter()
                .filter_map(|r| {
                    let s = r.farmem_stats.as_ref()?;
                    let f = s.get("faults")?.as_f64()?;
                    Some(if f > 0.0 { s.get("faults_from_staging")?.as_f64()? / f } else { 0.0 })
                })
                .collect();
            VariantSummary {
                runs: mine.len(),
                right: ok.len(),
                other: mine.iter().filter(|r| r.status != "ok").map(|r| r.status.clone()).collect(),
                wall_s: median_f(walls.clone()).map(|m| (m, walls.iter().copied().fold(f64::MAX, f64::min), walls.iter().copied().fold(0.0, f64::max))),
                peak_rss_bytes: median_u(ok.iter().map(|r| r.memory.peak_rss_bytes).collect()).unwrap_or(0),
                avg_footprint_bytes: median_u(ok.iter().map(|r| r.memory.avg_footprint_bytes).collect()).unwrap_or(0),
                heap_peak_bytes: median_f(stat("heap_peak_resident_bytes")).map(|m| m as u64),
                faults: median_f(stat("faults")).map(|m| m as u64),
                staging_share: median_f(shares),
                stall_s: median_f(stat("stall_seconds")),
                handler_cpu_s: median_f(stat("fault_handler_cpu_seconds")),
                variant,
                budget,
            }
        })
        .collect()
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / (1u64 << 20) as f64)
}

/// The Markdown report: the summary (medians, spread, wall time against the
/// kernel's at the same budget), then one row a run.
pub fn markdown(title: &str, runs: &[RunRecord], rounds: usize) -> String {
    let sums = summarise(runs);
    let mut s = format!("## {title}\n\n");
    s += &format!("### Summary over {rounds} round{}\n\n", if rounds == 1 { "" } else { "s" });
    s += "| variant | budget | output right | wall s (median, min–max) | vs kernel-zram | peak RSS MiB | avg footprint MiB | heap peak MiB | faults | from staging | stall s | handler CPU s |\n";
    s += "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for v in &sums {
        let kernel = sums.iter().find(|k| k.variant == "kernel-zram" && k.budget == v.budget && v.budget.is_some() && v.variant != "kernel-zram").and_then(|k| k.wall_s);
        let right = if v.runs == 0 {
            "skipped".to_string()
        } else if v.other.is_empty() {
            format!("{}/{}", v.right, v.runs)
        } else {
            format!("{}/{} ({})", v.right, v.runs, v.other.join(", "))
        };
        let wall = v.wall_s.map_or("-".into(), |(m, lo, hi)| if v.right > 1 { format!("{m:.2} ({lo:.2}–{hi:.2})") } else { format!("{m:.2}") });
        let vs = match (v.wall_s, kernel) {
            (Some((m, ..)), Some((k, ..))) if k > 0.0 => format!("{:.2}x", m / k),
            _ => "-".into(),
        };
        let opt_u = |x: Option<u64>| x.map_or("-".into(), |x| x.to_string());
        s += &format!(
            "| {} | {} | {right} | {wall} | {vs} | {} | {} | {} | {} | {} | {} | {} |\n",
            v.variant,
            v.budget.as_deref().unwrap_or("-"),
            if v.right > 0 { mib(v.peak_rss_bytes) } else { "-".into() },
            if v.right > 0 { mib(v.avg_footprint_bytes) } else { "-".into() },
            v.heap_peak_bytes.map_or("-".into(), mib),
            opt_u(v.faults),
            v.staging_share.map_or("-".into(), |x| format!("{:.1}%", x * 100.0)),
            v.stall_s.map_or("-".into(), |x| format!("{x:.1}")),
            v.handler_cpu_s.map_or("-".into(), |x| format!("{x:.1}")),
        );
    }
    s += "\n### Runs\n\n| round | variant | budget | wall s | peak RSS MiB | status |\n|---:|---|---|---:|---:|---|\n";
    for r in runs {
        let status = if r.status == "ok" { "output right".to_string() } else { format!("{}: {}", r.status, r.reason.as_deref().unwrap_or("").replace('|', "/")) };
        let done = r.status == "ok";
        s += &format!(
            "| {} | {} | {} | {} | {} | {status} |\n",
            r.round.unwrap_or(1),
            r.variant,
            r.budget.as_deref().unwrap_or("-"),
            if done { format!("{:.2}", r.wall_s) } else { "-".into() },
            if done { mib(r.memory.peak_rss_bytes) } else { "-".into() },
        );
    }
    s += "\nOutput right: the exit status, the sha256 of stdout and of each --output-file are the plain run's. Peak RSS is the larger of the sampled resident set and the process tree's ru_maxrss; footprint adds the pool the kernel keeps outside the process (zram or zswap); heap peak is what farmem's limit holds (its statistics); from staging is the share of faults served by pages the evictor had only just taken; handler CPU is what farmem's fault handler threads used, all together.\n";
    s
}

/// Runs `--command`: every variant, round after round; prints the report and
/// writes it with a JSON file a run. Err when interrupted, when the plain run
/// failed or printed differently from round to round, or when any other run
/// failed or printed something else than plain (WRONG OUTPUT).
pub fn run(cfg: &CompareConfig) -> Result<(), CompareError> {
    let spec = cfg.command.as_ref().ok_or(CompareError::Invalid { what: "--command", value: "none given".into() })?;
    if cfg.budgets.is_empty() {
        return Err(CompareError::Invalid { what: "--budget", value: "none given: write e.g. --budget 40% or --budget 195M".into() });
    }
    if spec.rounds == 0 {
        return Err(CompareError::Invalid { what: "--rounds", value: "0: at least one round".into() });
    }
    let program = Path::new(&spec.argv[0]);
    let found = if program.components().count() > 1 {
        program.is_file()
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(program).is_file())
    };
    if !found {
        return Err(CompareError::Invalid { what: "--command", value: format!("{} is not a file and not on PATH", program.display()) });
    }
    if let Some(p) = &spec.stdin {
        File::open(p).map_err(|source| CompareError::Io { what: format!("opening --stdin {}", p.display()), source })?;
    }
    let dir = cfg.out.clone().unwrap_or_else(super::default_out);
    std::fs::create_dir_all(&dir).map_err(|source| CompareError::Io { what: format!("creating {}", dir.display()), source })?;
    let _signals = SignalCatcher::new();
    let _busy = spec.busy.then(Busy::start);
    let variants: Vec<Variant> = VARIANTS.into_iter().filter(|v| *v == Variant::Plain || (cfg.variants.is_empty() && v.by_default(Workload::Command)) || cfg.variants.contains(v)).collect();
    let plan_list: Vec<(Variant, Option<Budget>)> =
        variants.iter().flat_map(|&v| if v.budgeted() { cfg.budgets.iter().map(|&b| (v, Some(b))).collect::<Vec<_>>() } else { vec![(v, None)] }).collect();
    let total = plan_list.len() * spec.rounds;
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut reference: Option<CommandOutput> = None;
    let (mut plain_peak, mut plain_wall) = (0u64, None);
    let mut n = 0;
    let name = spec.argv[0].to_string_lossy().into_owned();
    for round in 1..=spec.rounds {
        for &(v, b) in &plan_list {
            n += 1;
            let budget = b.map(|b| (b, b.bytes(plain_peak)));
            let label = format!(
                "[{n}/{total}] round {round}: {name} {}{}",
                v.name(),
                budget.map_or(String::new(), |(b, bytes)| format!(" {} ({} MiB)", b.label(), bytes >> 20))
            );
            let plan = Plan { cfg, dir: &dir, variant: v, budget, swap_bytes: plain_peak * 2 + (64 << 20), label: label.clone(), round: Some(round) };
            let mut rec = if let Some(why) = refusal(v, Workload::Command) {
                if round == 1 {
                    eprintln!("{label}: skipped: {why}");
                }
                RunRecord { status: "skipped".into(), reason: Some(why), ..plan.record() }
            } else {
                eprintln!("{label}: running");
                plan.outcome(plan.run_with(|setup, rec| plan.run_command(setup, rec, plain_wall)))?
            };
            if rec.status == "ok" {
                let out = rec.output.clone().unwrap_or_default();
                match &reference {
                    None => {
                        reference = Some(out);
                        plain_peak = rec.memory.peak_rss_bytes;
                        plain_wall = Some(rec.wall_s);
                    }
                    Some(reference) => {
                        if let Some(why) = out.differs_from(reference) {
                            rec.status = if v == Variant::Plain { "failed".into() } else { "wrong-output".into() };
                            rec.reason = Some(if v == Variant::Plain {
                                format!("the plain run's output differs from round 1's, so the command is not deterministic and its outputs cannot be compared: {why}")
                            } else {
                                format!("WRONG OUTPUT: {why}")
                            });
                            eprintln!("{label}: {}", rec.reason.as_deref().unwrap_or(""));
                        }
                    }
                }
            }
            report::write(&dir, &format!("{}.json", plan.file_stem()), &serde_json::to_string_pretty(&rec).unwrap_or_default())?;
            if v == Variant::Plain && round == 1 && rec.status != "ok" {
                return Err(CompareError::Workload(format!("the plain run failed, so there is nothing to compare against: {}", rec.reason.unwrap_or_default())));
            }
            runs.push(rec);
        }
    }
    let title = format!(
        "farmem bench compare --command: {}, plain peak RSS {} MiB, {:.1} s{}",
        spec.argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
        plain_peak >> 20,
        plain_wall.unwrap_or(0.0),
        if spec.busy { ", a CPU kept busy beside each run" } else { "" }
    );
    let md = markdown(&title, &runs, spec.rounds);
    report::write(&dir, "summary.md", &md)?;
    let sums = summarise(&runs);
    report::write(&dir, "summary.json", &serde_json::to_string_pretty(&sums).unwrap_or_default())?;
    let first: Vec<RunRecord> = runs.iter().filter(|r| r.round == Some(1)).cloned().collect();
    report::write(&dir, "resident.svg", &report::resident_svg(&first))?;
    println!("{md}");
    println!("outputs in {}", dir.display());
    let wrong = runs.iter().filter(|r| r.status == "wrong-output").count();
    let failed = runs.iter().filter(|r| r.status == "failed").count();
    if wrong > 0 {
        eprintln!("WRONG OUTPUT in {wrong} of {} runs", runs.len());
    }
    if wrong + failed > 0 {
        return Err(CompareError::RunsFailed { failed: wrong + failed, runs: runs.len(), dir: dir.display().to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(exit: &str, sha: &str, files: &[(&str, &str)]) -> CommandOutput {
        CommandOutput {
            exit: exit.into(),
            stdout_sha256: sha.into(),
            stdout_bytes: 3,
            stdout_head: String::new(),
            files: files.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        }
    }

    #[test]
    fn commands_split_like_a_shell_and_outputs_are_judged_by_exit_stdout_and_files() {
        assert_eq!(parse_command("sqlite3 '/tmp/my db' -cmd \"x y\"").unwrap(), ["sqlite3", "/tmp/my db", "-cmd", "x y"].map(OsString::from));
        assert!(parse_command("xz 'open").is_err());
        assert!(parse_command("  ").is_err());

        let plain = out("exited with status 0", "aa", &[("f", "11")]);
        assert_eq!(plain.differs_from(&plain), None);
        assert!(out("was killed by signal 11", "aa", &[("f", "11")]).differs_from(&plain).unwrap().contains("signal 11"));
        assert!(out("exited with status 0", "bb", &[("f", "11")]).differs_from(&plain).unwrap().contains("stdout differs"));
        assert!(out("exited with status 0", "aa", &[("f", "missing (x)")]).differs_from(&plain).unwrap().contains("f differs"));
    }

    #[test]
    fn streams_and_files_hash_to_sha256() {
        let rx = hash_stream(std::io::Cursor::new(b"abc".to_vec()));
        let (sha, n, head) = rx.recv().unwrap().unwrap();
        assert_eq!(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!((n, head.as_slice()), (3, &b"abc"[..]));
        let p = std::env::temp_dir().join(format!("farmem-sha-{}", std::process::id()));
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), sha);
        std::fs::remove_file(&p).unwrap();
        assert!(sha256_file(&p).is_err());
    }

    #[test]
    fn the_summary_gives_medians_spread_and_the_rounds_that_went_wrong() {
        let run = |variant: &str, status: &str, wall: f64, staging: u64| RunRecord {
            variant: variant.into(),
            budget: (variant != "plain").then(|| "40%".into()),
            status: status.into(),
            wall_s: wall,
            farmem_stats: variant.starts_with("farmem").then(|| serde_json::json!({"faults": 100, "faults_from_staging": staging, "stall_seconds": 1.0, "fault_handler_cpu_seconds": 0.5})),
            ..RunRecord::default()
        };
        let runs = vec![
            run("plain", "ok", 1.0, 0),
            run("farmem-limit", "ok", 3.0, 10),
            run("kernel-zram", "ok", 2.0, 0),
            run("plain", "ok", 1.2, 0),
            run("farmem-limit", "wrong-output", 9.0, 0),
            run("kernel-zram", "ok", 4.0, 0),
            run("plain", "ok", 1.1, 0),
            run("farmem-limit", "ok", 5.0, 30),
            run("kernel-zram", "oom-killed", 0.0, 0),
        ];
        let s = summarise(&runs);
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].right, s[0].runs), (3, 3));
        assert_eq!(s[0].wall_s, Some((1.1, 1.0, 1.2)));
        assert_eq!((s[1].right, s[1].other.clone()), (2, vec!["wrong-output".to_string()]));
        assert_eq!(s[1].wall_s, Some((4.0, 3.0, 5.0)), "the wrong round is not timed");
        assert_eq!(s[1].staging_share, Some(0.2));
        assert_eq!(s[1].handler_cpu_s, Some(0.5));
        assert_eq!(s[2].wall_s, Some((3.0, 2.0, 4.0)));
        let md = markdown("t", &runs, 3);
        assert!(md.contains("| farmem-limit | 40% | 2/3 (wrong-output) | 4.00 (3.00–5.00) | 1.33x |"), "{md}");
        assert!(md.contains("| kernel-zram | 40% | 2/3 (oom-killed) |"), "{md}");
    }
}
