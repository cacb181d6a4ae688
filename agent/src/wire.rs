//! The join protocol between a process under farmem and the agent, over
//! the agent's Unix socket: one line of JSON from the process (its
//! [`Hello`]), then lines from the agent, each a new limit for its
//! resident heap (`limit 268435456`, or `limit none`). The process keeps
//! the last limit it was given if the agent goes away, and tries to join
//! again every few seconds.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The directories a shim run by `uid` serves its statistics socket
/// (`PID.sock`) from, in the order it tries them: `/run/farmem` for root,
/// `$XDG_RUNTIME_DIR/farmem`, `/tmp/farmem-UID`. Readers (the agent,
/// `farmem stat`) look in the same places.
pub fn socket_dirs(uid: u32) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if uid == 0 {
        dirs.push(PathBuf::from("/run/farmem"));
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        dirs.push(Path::new(&x).join("farmem"));
    }
    dirs.push(PathBuf::from(format!("/tmp/farmem-{uid}")));
    dirs
}

/// What a process says of itself when it joins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Its process id.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub comm: String,
    /// The file name of its executable.
    pub exe: String,
    /// Its cgroup path (the v2 path, or the v1 memory controller's).
    pub cgroup: String,
    /// `FARMEM_LABEL`, if set: what a rule's `label` matches.
    pub label: Option<String>,
    /// Its statistics socket, which the agent reads.
    pub stats: String,
}

/// A message from the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Keep the resident heap under this many bytes (`None`: no limit).
    Limit(Option<u64>),
}

impl Order {
    /// The line that carries it, newline included.
    pub fn line(&self) -> String {
        match self {
            Order::Limit(Some(b)) => format!("limit {b}\n"),
            Order::Limit(None) => "limit none\n".into(),
        }
    }

    /// Parses a line (without its newline); `None` for one it does not know
    /// (a newer agent's), which the process ignores.
    pub fn parse(line: &str) -> Option<Order> {
        match line.trim().split_once(' ')? {
            ("limit", "none") => Some(Order::Limit(None)),
            ("limit", n) => n.parse().ok().map(|b| Order::Limit(Some(b))),
            _ => None,
        }
    }
}

/// The process's cgroup path from `/proc/self/cgroup`'s text: the unified
/// hierarchy's (`0::/path`), else the v1 memory controller's.
pub fn cgroup_of(text: &str) -> String {
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if id == "0" && controllers.is_empty() {
            return path.to_owned();
        }
        if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_owned());
        }
    }
    v1.unwrap_or_else(|| "/".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_round_trip_and_unknown_lines_are_ignored() {
        for o in [Order::Limit(Some(1 << 30)), Order::Limit(None)] {
            assert_eq!(Order::parse(&o.line()), Some(o));
        }
        assert_eq!(Order::parse("stall 0.1%"), None);
        assert_eq!(Order::parse("limit lots"), None);
        assert_eq!(cgroup_of("0::/system.slice/redis.service\n"), "/system.slice/redis.service");
        assert_eq!(cgroup_of("12:cpu,cpuacct:/a\n11:memory:/batch/job1\n"), "/batch/job1");
        assert_eq!(cgroup_of(""), "/");
    }
}
