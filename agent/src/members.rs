//! The processes that joined the agent, and what it last read of each.
//!
//! A process joins by connecting to the agent's socket and sending its
//! [`Hello`]; it is a member while that connection is open, and is dropped
//! (from the budget and the metrics) when it closes: when the process
//! exits. Its statistics come from its own statistics socket, which the
//! hello names.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::Config;
use crate::wire::{Hello, Order};

/// One reading of a member's statistics socket.
#[derive(Clone, Debug)]
pub struct Reading {
    /// When it was read.
    pub at: Instant,
    /// The snapshot, as the shim writes it (`farmem stat --json`).
    pub snap: Value,
}

impl Reading {
    /// A numeric field of the snapshot (0 when absent).
    pub fn f(&self, key: &str) -> f64 {
        self.snap.get(key).and_then(Value::as_f64).unwrap_or(0.0)
    }

    /// The heap as it would be without farmem: resident, and what its tiers hold.
    pub fn need(&self) -> u64 {
        (self.f("resident_bytes") + self.f("tier_bytes_stored")) as u64
    }
}

/// A process that joined.
pub struct Member {
    /// What it said of itself.
    pub hello: Hello,
    /// The index of its rule in the configuration, if one matches.
    pub rule: Option<usize>,
    /// The last limit sent to it (`None`: none sent yet).
    pub sent: Option<Option<u64>>,
    /// The reading before `last`, for rates.
    pub prev: Option<Reading>,
    /// The last reading of its statistics.
    pub last: Option<Reading>,
    /// Its stall over its target, smoothed over ticks (see [`crate::budget`]).
    pub pressure: f64,
    /// Its share of the budget at the last tick.
    pub share: Option<u64>,
    /// Ticks in a row it was calm (see [`crate::budget::CALM_UNDER`]).
    pub calm: u32,
    to: Sink,
    /// Which connection: a process that joined again replaces its entry,
    /// and the old connection's end must not remove the new one.
    conn: u64,
}

/// How orders reach a member.
enum Sink {
    /// It joined: its connection to the agent.
    Joined(UnixStream),
    /// It was adopted: a line sent to its statistics socket.
    Stats(PathBuf),
}

impl Member {
    /// Sends `order`; false if the process is gone.
    pub fn send(&mut self, order: Order) -> bool {
        match &mut self.to {
            Sink::Joined(s) => s.write_all(order.line().as_bytes()).is_ok(),
            Sink::Stats(path) => {
                let Ok(mut s) = UnixStream::connect(&*path) else { return false };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                // The line first; the snapshot the socket answers with is read and dropped.
                let ok = s.write_all(order.line().as_bytes()).is_ok();
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                ok
            }
        }
    }

    /// Whether it joined (rather than being adopted).
    pub fn joined(&self) -> bool {
        matches!(self.to, Sink::Joined(_))
    }
}

/// Every member, by pid.
#[derive(Default)]
pub struct Members(Mutex<HashMap<u32, Member>>);

impl Members {
    /// The members, locked.
    pub fn lock(&self) -> MutexGuard<'_, HashMap<u32, Member>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads one snapshot from a statistics socket.
pub fn read_stats(path: &Path) -> Option<Value> {
    let mut s = UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// What a process under farmem that did not join says of itself, read
/// from /proc: its hello as it would have sent it.
fn hello_of(pid: u32, stats: &Path) -> Option<Hello> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_owned();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_default();
    let cgroup = crate::wire::cgroup_of(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default());
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let label = environ.split(|b| *b == 0).find_map(|v| v.strip_prefix(b"FARMEM_LABEL=")).map(|v| String::from_utf8_lossy(v).into_owned());
    Some(Hello { pid, comm, exe, cgroup, label, stats: stats.display().to_string() })
}

/// Adopts the processes under farmem that serve a statistics socket, did
/// not join, and match a rule of `config`; drops adopted ones that are gone.
pub fn adopt(members: &Members, config: &Config) {
    let mut m = members.lock();
    m.retain(|pid, x| x.joined() || (Path::new(&x.hello.stats).exists() && Path::new(&format!("/proc/{pid}")).exists()));
    // SAFETY: getuid has no preconditions.
    for dir in crate::wire::socket_dirs(unsafe { libc::getuid() }) {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.strip_suffix(".sock")).and_then(|p| p.parse::<u32>().ok()) else { continue };
            if m.contains_key(&pid) {
                continue;
            }
            let Some(hello) = hello_of(pid, &e.path()) else { continue };
            let Some(rule) = config.rule_for(&hello) else { continue };
            tracing::info!("adopted: pid {pid} ({}) through {}, rule {}", hello.comm, e.path().display(), config.rules[rule].name);
            let to = Sink::Stats(e.path());
            m.insert(pid, Member { hello, rule: Some(rule), sent: None, prev: None, last: None, pressure: 0.0, share: None, calm: 0, to, conn: u64::MAX });
        }
    }
}

/// Listens for processes joining on `path` (a stale socket there is
/// replaced; mode 0600, so only this user's processes join).
pub fn listen(path: &Path, members: Arc<Members>, config: Arc<RwLock<Config>>) -> std::io::Result<()> {
    if UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("another agent serves {}", path.display())));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let path: PathBuf = path.to_owned();
    std::thread::Builder::new().name("farmem-agent-join".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (members, config) = (Arc::clone(&members), Arc::clone(&config));
            let _ = std::thread::Builder::new().name("farmem-agent-member".into()).spawn(move || serve(conn, &members, &config));
        }
        tracing::warn!("agent socket {} stopped accepting", path.display());
    })?;
    Ok(())
}

/// One member's connection: its hello, then nothing until it closes.
fn serve(conn: UnixStream, members: &Members, config: &RwLock<Config>) {
    let Ok(to) = conn.try_clone() else { return };
    let mut lines = BufReader::new(conn);
    let mut first = String::new();
    if lines.read_line(&mut first).is_err() {
        return;
    }
    let hello: Hello = match serde_json::from_str(first.trim()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("a process sent a hello the agent does not understand ({e}): {}", first.trim());
            return;
        }
    };
    static CONNS: AtomicU64 = AtomicU64::new(0);
    let id = CONNS.fetch_add(1, Ordering::Relaxed);
    let pid = hello.pid;
    let rule = config.read().unwrap_or_else(|e| e.into_inner()).rule_for(&hello);
    tracing::info!("joined: pid {pid} ({}, cgroup {}, label {:?}), rule {rule:?}", hello.comm, hello.cgroup, hello.label);
    members.lock().insert(pid, Member { hello, rule, sent: None, prev: None, last: None, pressure: 0.0, share: None, calm: 0, to: Sink::Joined(to), conn: id });
    // Nothing more comes from the process; the read ends when it exits.
    let mut rest = Vec::new();
    let _ = lines.read_to_end(&mut rest);
    let mut m = members.lock();
    if m.get(&pid).is_some_and(|x| x.conn == id) {
        m.remove(&pid);
        tracing::info!("left: pid {pid}");
    }
}
