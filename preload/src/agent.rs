//! Joining the node agent (`FARMEM_AGENT=SOCKET`): once the runtime runs,
//! a thread of the shim connects to the agent, says who the process is,
//! and applies each limit the agent sends: in place when the policy already
//! holds one (`Runtime::set_limit`), else by starting the policy with it
//! (the stall target and floor from the environment stay). When the agent
//! goes away the last limit stays, and the thread tries to join again
//! every 2 s. The protocol is `farmem_agent::wire`. An agent that adopts
//! a process already under farmem sends the same orders through its
//! statistics socket instead ([`order`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use farmem_agent::wire::{cgroup_of, Hello, Order};
use farmem_runtime::policy::PolicyConfig;
use farmem_runtime::{Runtime, RuntimeScope};

/// The limit the agent last set, for the statistics (0: it set none yet;
/// [`LIFTED`]: it lifted the limit).
static LIMIT_NOW: AtomicU64 = AtomicU64::new(0);

/// The runtime and the policy from the environment, for orders that come
/// through the statistics socket.
static CONTROL: std::sync::OnceLock<(&'static Runtime, PolicyConfig)> = std::sync::OnceLock::new();

/// Makes the runtime take orders from an agent through the statistics socket.
pub(crate) fn control(rt: &'static Runtime, base: PolicyConfig) {
    let _ = CONTROL.set((rt, base));
}

/// An order line from the statistics socket (an agent that adopted this process).
pub(crate) fn order(line: &str) {
    let Some((rt, base)) = CONTROL.get() else { return };
    match Order::parse(line) {
        Some(Order::Limit(limit)) => apply(rt, limit, base),
        None => tracing::debug!("the statistics socket got {line:?}, which this shim does not know"),
    }
}

/// The limit in force now, if any: the agent's last, else the environment's.
pub(crate) fn limit(configured: Option<u64>) -> Option<u64> {
    match LIMIT_NOW.load(Ordering::Relaxed) {
        0 => configured,
        LIFTED => None,
        n => Some(n),
    }
}

/// [`LIMIT_NOW`] once the agent lifted the limit.
const LIFTED: u64 = u64::MAX;

/// Starts the thread that joins the agent at `socket`.
pub(crate) fn join(rt: &'static Runtime, socket: PathBuf, stats: PathBuf, label: Option<String>, base: PolicyConfig) {
    let _ = std::thread::Builder::new().name("farmem-agent".into()).spawn(move || {
        let _scope = RuntimeScope::enter();
        let hello = hello(&stats, label);
        let mut said = false;
        loop {
            match UnixStream::connect(&socket) {
                Ok(s) => {
                    said = false;
                    serve(rt, s, &hello, &base);
                    tracing::info!("the agent at {} went away; the limit stays, joining again every 2 s", socket.display());
                }
                Err(e) if !said => {
                    said = true;
                    tracing::warn!("cannot join the agent at {}: {e}; trying every 2 s", socket.display());
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
}

fn hello(stats: &Path, label: Option<String>) -> Hello {
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default().trim().to_owned();
    let exe = std::fs::read_link("/proc/self/exe").ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_default();
    let cgroup = cgroup_of(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    Hello { pid: std::process::id(), comm, exe, cgroup, label, stats: stats.display().to_string() }
}

/// Says hello, then applies each order until the agent closes the connection.
fn serve(rt: &Runtime, s: UnixStream, hello: &Hello, base: &PolicyConfig) {
    let Ok(mut out) = s.try_clone() else { return };
    let Ok(mut line) = serde_json::to_string(hello) else { return };
    line.push('\n');
    if out.write_all(line.as_bytes()).is_err() {
        return;
    }
    tracing::info!("joined the agent");
    for order in BufReader::new(s).lines() {
        let Ok(order) = order else { return };
        match Order::parse(&order) {
            Some(Order::Limit(limit)) => apply(rt, limit, base),
            None => tracing::debug!("the agent sent {order:?}, which this shim does not know"),
        }
    }
}

fn apply(rt: &Runtime, limit: Option<u64>, base: &PolicyConfig) {
    let p = PolicyConfig { limit, ..base.clone() };
    // A new limit for a policy already holding one is set in place: the
    // ages and samples it gathered stay. Otherwise the policy starts anew.
    let r = if limit.is_some_and(|b| rt.set_limit(b)) {
        Ok(())
    } else if p.reclaims() {
        rt.start_policy(p)
    } else {
        Ok(rt.stop_policy())
    };
    match r {
        Ok(()) => {
            LIMIT_NOW.store(limit.unwrap_or(LIFTED), Ordering::Relaxed);
            tracing::info!("the agent set the limit to {limit:?}");
        }
        Err(e) => tracing::warn!("the agent's limit {limit:?} could not be applied: {e}"),
    }
}
