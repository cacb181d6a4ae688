//! `farmem run`: runs a program with `libfarmem.so` preloaded and farmem's
//! configuration in its environment, passes signals on to it, and exits with
//! its status (128 + the signal's number when a signal ended it).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::str::FromStr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use farmem_runtime::policy::{parse_size, parse_stall};
use farmem_tiers::TierSpec;

/// The arguments of `farmem run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Keep the program's resident heap under this size (e.g. 512M, 2G).
    #[arg(long, value_parser = checked(parse_size))]
    limit: Option<String>,
    /// Reclaim while stalls stay under this share of time (e.g. 0.1%; 0.1% without a value).
    #[arg(long, num_args = 0..=1, default_missing_value = "0.1%", value_parser = checked(parse_stall))]
    stall: Option<String>,
    /// Never reclaim below this resident size.
    #[arg(long, value_parser = checked(parse_size))]
    min: Option<String>,
    /// The tiers, nearest first: lz4, zstd[:LEVEL], FIRST+SECOND (the default, lz4+zstd:1: zstd for the pages lz4 leaves above 75%) or raw, then spill tiers file:DIR[:SIZE], mmap:PATH:SIZE[:FORM][:numa=N], redis://HOST[:PORT][/PREFIX][?size=SIZE&ttl=N[s|m|h|d]&plain] or memcached://... (pages encrypted unless plain), comma-separated.
    #[arg(long, value_parser = checked(|s: &str| TierSpec::from_str(s).map_err(|e| e.to_string())))]
    tiers: Option<String>,
    /// Pages (0 to 64) brought back beside each fault from a spill tier, if they were demoted with it.
    #[arg(long, value_parser = checked(farmem_runtime::parse_prefetch))]
    prefetch: Option<String>,
    /// The most pages (0 to 64) brought back ahead of a program that faults in order, from any tier (default 32; 0 turns it off).
    #[arg(long, value_parser = checked(farmem_runtime::parse_readahead))]
    readahead: Option<String>,
    /// Fault handler threads: 0 (the default) is one per CPU the program may run on, each pinned to its CPU; 1 is one unpinned handler.
    #[arg(long, value_parser = checked(farmem_runtime::parse_fault_handlers))]
    fault_handlers: Option<String>,
    /// Who serves a fault: thread (the fault handler threads, the default) or signal (the faulting thread, in its SIGBUS handler; in-memory tiers only; see the README's "Signal mode" for what it covers).
    #[arg(long, value_parser = checked(farmem_runtime::parse_fault_mode))]
    fault: Option<String>,
    /// Write the final statistics as JSON to this file when the program exits.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Join the node agent on this socket (`farmem agent`): it sets the limit from the node's budget.
    #[arg(long, value_name = "SOCKET")]
    agent: Option<PathBuf>,
    /// A word the agent's `label` rules match (FARMEM_LABEL).
    #[arg(long)]
    label: Option<String>,
    /// The program and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// A clap value parser that checks a value with `f` and keeps its text, which
/// goes to the program's environment as written.
fn checked<T>(f: impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static) -> impl clap::builder::TypedValueParser<Value = String> {
    move |s: &str| f(s).map(|_| s.to_string())
}

/// Where `libfarmem.so` is: `FARMEM_PRELOAD_LIB`, or beside this executable
/// (`target/release/`), or one folder up (a test binary in `deps/`).
pub fn find_library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("FARMEM_PRELOAD_LIB").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("FARMEM_PRELOAD_LIB={} is not a file", p.display())) };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join("libfarmem.so");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!("libfarmem.so is not beside {}: build it with `cargo build -p farmem-preload --release`, or name it in FARMEM_PRELOAD_LIB", exe.display()))
}

/// The child's pid once it runs; 0 before.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal that came before the child existed.
static PENDING: AtomicI32 = AtomicI32::new(0);

/// The signals passed on to the child.
const FORWARDED: [libc::c_int; 8] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH, libc::SIGCONT];

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // A terminal's ^C or ^\ reaches the whole foreground group, the child
    // included; passing it on would deliver it twice.
    if code == libc::SI_KERNEL && matches!(sig, libc::SIGINT | libc::SIGQUIT | libc::SIGWINCH) {
        return;
    }
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    } else {
        PENDING.store(sig, Ordering::SeqCst);
    }
}

fn install_forwarding() {
    for sig in FORWARDED {
        // SAFETY: a zeroed sigaction with a valid SA_SIGINFO handler and an empty mask.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Runs `farmem run`; the exit code is the child's.
pub fn run(args: RunArgs) -> ExitCode {
    let lib = match find_library() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("farmem run: {e}");
            return ExitCode::from(127);
        }
    };
    let mut preload = OsString::from(lib.as_os_str());
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        preload.push(" ");
        preload.push(old);
    }
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).env("LD_PRELOAD", preload);
    for (var, value) in [("FARMEM_LIMIT", &args.limit), ("FARMEM_STALL", &args.stall), ("FARMEM_MIN", &args.min), ("FARMEM_TIERS", &args.tiers), ("FARMEM_PREFETCH", &args.prefetch), ("FARMEM_READAHEAD", &args.readahead), ("FARMEM_FAULT_HANDLERS", &args.fault_handlers), ("FARMEM_FAULT", &args.fault)] {
        if let Some(v) = value {
            cmd.env(var, v);
        }
    }
    if let Some(a) = &args.agent {
        cmd.env("FARMEM_AGENT", std::path::absolute(a).unwrap_or_else(|_| a.clone()));
    }
    if let Some(l) = &args.label {
        cmd.env("FARMEM_LABEL", l);
    }
    let stats_path = args.stats.as_ref().map(|p| {
        // The program may change directory before it exits.
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
        // A file left by an earlier run must not pass for this run's.
        let _ = std::fs::remove_file(&abs);
        // The shim of the first process under it claims the file (see
        // FARMEM_STATS_PID in preload/src/config.rs); an owner inherited
        // from an enclosing `farmem run` is not this run's.
        cmd.env("FARMEM_STATS", &abs).env_remove("FARMEM_STATS_PID");
        abs
    });
    install_forwarding();
    // The child starts with the signal mask and dispositions of a plain
    // start (exec resets caught signals to their defaults).
    // SAFETY: the closure only calls async-signal-safe sigprocmask.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("farmem run: cannot run {}: {e}", args.command[0].to_string_lossy());
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
        }
    };
    let pid = child.id() as libc::pid_t;
    CHILD.store(pid, Ordering::SeqCst);
    let pending = PENDING.swap(0, Ordering::SeqCst);
    if pending != 0 {
        // SAFETY: kill with a valid pid and signal number.
        unsafe { libc::kill(pid, pending) };
    }
    let last = stats_path.as_ref().map(|_| watch(pid as u32));
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status of our own child into `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            eprintln!("farmem run: waiting for {pid}: {}", std::io::Error::last_os_error());
            return ExitCode::from(1);
        }
    }
    if let (Some(path), Some(last)) = (&stats_path, &last) {
        if !path.exists() {
            write_last(path, last, status);
        }
    }
    if libc::WIFSIGNALED(status) {
        ExitCode::from((128 + libc::WTERMSIG(status)) as u8)
    } else {
        ExitCode::from(libc::WEXITSTATUS(status) as u8)
    }
}

/// The program's latest statistics, read from its socket every 250 ms, with
/// when they were read: what `farmem run` writes if the program dies before
/// it can write its own (a signal, a crash).
type Last = Arc<Mutex<Option<(Instant, serde_json::Value)>>>;

/// Starts reading `pid`'s statistics in the background until it is gone.
///
/// The pid may exec into other programs (a launcher script execs python):
/// each image serves its own statistics on the pid's socket once its
/// runtime runs. A snapshot whose executable is no longer the process's is
/// a former image's, and is forgotten, so that a program killed before it
/// served anything is not given its launcher's statistics.
fn watch(pid: u32) -> Last {
    let last: Last = Arc::default();
    let keep = Arc::clone(&last);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(250));
        match crate::stat::read_snapshot(pid) {
            Ok(v) => *keep.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v)),
            // Gone: the last snapshot stays.
            Err(_) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => return,
            // Not serving yet, or farmem is off in it, or it exec'd: try again.
            Err(_) => {
                let mut last = keep.lock().unwrap_or_else(|e| e.into_inner());
                if last.as_ref().is_some_and(|(_, v)| exec_since(pid, v)) {
                    *last = None;
                }
            }
        }
    });
    last
}

/// Whether `pid` runs another executable than the one that served `snapshot`
/// (false when that cannot be told: a process on its way out has no exe).
fn exec_since(pid: u32, snapshot: &serde_json::Value) -> bool {
    let strip = |p: &str| p.strip_suffix(" (deleted)").unwrap_or(p).to_string();
    let (Some(served), Ok(now)) = (snapshot.get("exe").and_then(|e| e.as_str()), std::fs::read_link(format!("/proc/{pid}/exe"))) else { return false };
    strip(served) != strip(&now.to_string_lossy())
}

/// Writes the last statistics read from the program, marked as such, for a
/// program that ended without writing its own (`status` from waitpid).
fn write_last(path: &Path, last: &Last, status: libc::c_int) {
    let how = if libc::WIFSIGNALED(status) {
        serde_json::json!({ "signal": libc::WTERMSIG(status) })
    } else {
        serde_json::json!({ "exit_code": libc::WEXITSTATUS(status) })
    };
    let text = match &*last.lock().unwrap_or_else(|e| e.into_inner()) {
        Some((at, v)) => {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.insert("incomplete".into(), serde_json::json!(true));
                o.insert("ended".into(), how);
                o.insert("snapshot_age_seconds".into(), serde_json::json!(at.elapsed().as_secs_f64()));
            }
            v
        }
        // farmem was off in the program, or it ended before its socket served.
        None => {
            eprintln!(
                "farmem run: --stats: no statistics in {}: the program wrote none (farmem was off in it, or it ended through _exit or a signal before farmem's runtime started)",
                path.display()
            );
            return;
        }
    };
    if let Err(e) = std::fs::write(path, format!("{text}\n")) {
        eprintln!("farmem run: --stats: cannot write {}: {e}", path.display());
    } else {
        eprintln!("farmem run: the program ended without writing its statistics; {} holds the last ones read, marked incomplete", path.display());
    }
}
