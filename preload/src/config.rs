//! The shim's configuration, read from the environment once at start-up.
//!
//! | variable | accepts |
//! | --- | --- |
//! | `FARMEM_LIMIT` | a size (`512M`, `2G`): keep the resident heap under it |
//! | `FARMEM_STALL` | a percentage (`0.1%`): reclaim while stalls stay under it |
//! | `FARMEM_MIN` | a size: never reclaim below it |
//! | `FARMEM_TIERS` | a tier spec (`lz4+zstd:1`, the default; `lz4`, `zstd:3`, `lz4,mmap:PATH:SIZE`, `lz4+zstd:1,file:DIR:SIZE`, `lz4,redis://HOST:PORT`, `lz4,memcached://HOST:PORT`) |
//! | `FARMEM_AGENT` | a path: the node agent's socket (`farmem agent`); once its runtime runs, the process joins the agent, which sets its limit from the node's budget; if the agent goes away the process keeps its last limit and tries to join again every 2 s |
//! | `FARMEM_LABEL` | a word the agent's `label` rules match |
//! | `FARMEM_LOG` | a tracing filter (`info`, `farmem_runtime=debug`); logs go to stderr |
//! | `FARMEM_STATS` | a path: final statistics are written there as JSON at exit, by the process that owns the variable (see `FARMEM_STATS_PID`) |
//! | `FARMEM_STATS_PID` | set by the shim, not by hand: the pid that owns `FARMEM_STATS`. The first process under the shim that finds `FARMEM_STATS` without it claims the file and sets it; only that pid writes the file, whatever image it execs into (exec keeps the pid), never a child it forks or spawns |
//! | `FARMEM_START_AT` | a size: the runtime starts once the farmem arenas have mapped this much for the program, or at its first mmap farmem registers (8M, or half the limit if that is less; `0`: at the first extent) |
//! | `FARMEM_MMAP_MIN` | a size: the smallest `mmap` brought under farmem (1M) |
//! | `FARMEM_PREFETCH` | pages (0 to 64): brought back beside each fault from a spill tier, if they were demoted with it (0) |
//! | `FARMEM_READAHEAD` | pages (0 to 64): the most brought back ahead of a program that faults in order, from any tier (32; 0 turns it off) |
//! | `FARMEM_FAULT_HANDLERS` | threads (0 to 64) serving faults: 0 (the default) is one per CPU the program may run on, each pinned to its CPU; 1 is one unpinned handler |
//! | `FARMEM_FAULT` | who serves a fault: `thread` (the fault handler threads, the default) or `signal` (the faulting thread, in its SIGBUS handler; in-memory tiers only, and see the README's "Signal mode" for what it covers) |
//! | `FARMEM_WRITE_TRACKING` | `on` or `off`: see written pages through PAGEMAP_SCAN and async write-protect, where the kernel has both (on) |
//! | `FARMEM_VERIFY` | `on` or `off`: keep a checksum of every page out of RAM, and abort with one line naming the page if one comes back different (off; for tests and bug hunts) |
//! | `FARMEM_EVICT_EVERY` | testing aid: a duration (`100ms`, `2s`); evict everything that often |
//!
//! An empty variable counts as unset. A bad value is a [`ConfigError`]: the
//! shim prints it on one line and leaves the program without farmem.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use farmem_runtime::policy::{parse_size, parse_stall, parse_switch, PolicyConfig};
use farmem_tiers::TierSpec;

/// What the environment asks of the shim.
#[derive(Debug, Clone, Default)]
pub struct ShimConfig {
    /// Limit, stall target and floor for the runtime's policy.
    pub policy: PolicyConfig,
    /// The tiers, nearest first.
    pub tiers: TierSpec,
    /// The tracing filter, if logging was asked for.
    pub log: Option<String>,
    /// Where to write the final statistics.
    pub stats_path: Option<PathBuf>,
    /// The pid `FARMEM_STATS_PID` names: the process the statistics file
    /// belongs to (None: no process claimed it yet; Some(0): not a pid, so
    /// no process owns it).
    pub stats_owner: Option<u32>,
    /// The smallest anonymous mapping registered by the mmap hook.
    pub mmap_min: usize,
    /// The heap (bytes of extents) the runtime starts for.
    pub start_at: u64,
    /// Testing aid: evict every registered page this often.
    pub evict_every: Option<Duration>,
    /// Pages brought back beside each fault from a spill tier.
    pub prefetch: usize,
    /// The largest readahead window in pages (None: the runtime's default).
    pub readahead: Option<usize>,
    /// Verification mode: a checksum of every page out of RAM, compared when it comes back.
    pub verify: bool,
    /// Fault handler threads (None: one per CPU, pinned).
    pub fault_handlers: Option<usize>,
    /// Who serves a fault (`FARMEM_FAULT`).
    pub fault_mode: farmem_runtime::FaultMode,
    /// The node agent's socket to join (`FARMEM_AGENT`).
    pub agent: Option<PathBuf>,
    /// What the agent's `label` rules match (`FARMEM_LABEL`).
    pub label: Option<String>,
}

/// A variable the shim cannot use, with what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not accepted: {reason}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// Its value as found (lossy UTF-8).
    pub value: String,
    /// Why, and what it accepts.
    pub reason: String,
}

/// The default `FARMEM_MMAP_MIN`.
pub const DEFAULT_MMAP_MIN: usize = 1 << 20;
/// The default `FARMEM_START_AT`: the heap a runtime starts for.
pub const DEFAULT_START_AT: u64 = 8 << 20;

/// The variable that says which process owns `FARMEM_STATS`.
pub const STATS_OWNER_VAR: &str = "FARMEM_STATS_PID";

impl ShimConfig {
    /// Reads the configuration through `get` (the environment in the shim).
    pub fn read(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Self, ConfigError> {
        let var = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match get(name) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v.into_string().map(Some).map_err(|v| ConfigError {
                    var: name,
                    value: v.to_string_lossy().into_owned(),
                    reason: "not valid UTF-8".into(),
                }),
            }
        };
        let parse = |name: &'static str, f: &dyn Fn(&str) -> Result<u64, String>| -> Result<Option<u64>, ConfigError> {
            var(name)?.map(|v| f(&v).map_err(|reason| ConfigError { var: name, value: v, reason })).transpose()
        };
        let mut c = ShimConfig { mmap_min: DEFAULT_MMAP_MIN, start_at: DEFAULT_START_AT, ..Default::default() };
        c.policy.limit = parse("FARMEM_LIMIT", &parse_size)?;
        c.policy.min = parse("FARMEM_MIN", &parse_size)?.unwrap_or(0);
        if let Some(v) = var("FARMEM_STALL")? {
            c.policy.stall = Some(parse_stall(&v).map_err(|reason| ConfigError { var: "FARMEM_STALL", value: v, reason })?);
        }
        if let Some(v) = var("FARMEM_TIERS")? {
            c.tiers = TierSpec::from_str(&v).map_err(|e| ConfigError { var: "FARMEM_TIERS", value: v, reason: e.to_string() })?;
        }
        c.log = var("FARMEM_LOG")?;
        c.agent = var("FARMEM_AGENT")?.map(PathBuf::from);
        c.label = var("FARMEM_LABEL")?;
        c.stats_path = var("FARMEM_STATS")?.map(PathBuf::from);
        // Not checked as configuration: a value that is no pid only means that
        // no process of this tree writes the file (never that two do).
        c.stats_owner = get(STATS_OWNER_VAR).filter(|v| !v.is_empty()).map(|v| v.to_str().and_then(|v| v.trim().parse().ok()).unwrap_or(0));
        // 0 (at the first extent) is a start size, though not a size of memory.
        if let Some(s) = parse("FARMEM_START_AT", &|v| if v.trim() == "0" { Ok(0) } else { parse_size(v) })? {
            c.start_at = s;
        }
        if let Some(m) = parse("FARMEM_MMAP_MIN", &parse_size)? {
            c.mmap_min = m.min(usize::MAX as u64) as usize;
        }
        if let Some(v) = var("FARMEM_PREFETCH")? {
            c.prefetch = farmem_runtime::parse_prefetch(&v).map_err(|reason| ConfigError { var: "FARMEM_PREFETCH", value: v, reason })?;
        }
        if let Some(v) = var("FARMEM_READAHEAD")? {
            c.readahead = Some(farmem_runtime::parse_readahead(&v).map_err(|reason| ConfigError { var: "FARMEM_READAHEAD", value: v, reason })?);
        }
        if let Some(v) = var("FARMEM_FAULT_HANDLERS")? {
            c.fault_handlers = Some(farmem_runtime::parse_fault_handlers(&v).map_err(|reason| ConfigError { var: "FARMEM_FAULT_HANDLERS", value: v, reason })?);
        }
        if let Some(v) = var("FARMEM_FAULT")? {
            c.fault_mode = farmem_runtime::parse_fault_mode(&v).map_err(|reason| ConfigError { var: "FARMEM_FAULT", value: v, reason })?;
        }
        if let Some(v) = var("FARMEM_WRITE_TRACKING")? {
            c.policy.write_tracking = parse_switch(&v).map_err(|reason| ConfigError { var: "FARMEM_WRITE_TRACKING", value: v, reason })?;
        }
        if let Some(v) = var("FARMEM_VERIFY")? {
            c.verify = parse_switch(&v).map_err(|reason| ConfigError { var: "FARMEM_VERIFY", value: v, reason })?;
        }
        if let Some(v) = var("FARMEM_EVICT_EVERY")? {
            c.evict_every = Some(parse_duration(&v).map_err(|reason| ConfigError { var: "FARMEM_EVICT_EVERY", value: v, reason })?);
        }
        Ok(c)
    }

    /// Whether process `pid` writes the statistics file: it claims an
    /// unclaimed one (the caller then sets [`STATS_OWNER_VAR`]), and keeps
    /// one its pid owns (it is that process, exec'd into a new image).
    pub fn owns_stats(&self, pid: u32) -> bool {
        self.stats_path.is_some() && self.stats_owner.is_none_or(|owner| owner == pid)
    }

    /// Reads the process's environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(|k| std::env::var_os(k))
    }
}

/// Parses `250ms`, `2s`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * scale < 1e6 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!("'{t}' is not a duration: write milliseconds or seconds, e.g. 200ms or 2s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<ShimConfig, ConfigError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ShimConfig::read(|k| m.get(k).map(Into::into))
    }

    #[test]
    fn good_values() {
        let c = read(&[("FARMEM_LIMIT", "64M"), ("FARMEM_STALL", "1%"), ("FARMEM_TIERS", "zstd:3"), ("FARMEM_MMAP_MIN", "2M"), ("FARMEM_EVICT_EVERY", "250ms"), ("FARMEM_MIN", ""), ("FARMEM_PREFETCH", "16"), ("FARMEM_READAHEAD", "8"), ("FARMEM_FAULT_HANDLERS", "2"), ("FARMEM_FAULT", "signal"), ("FARMEM_WRITE_TRACKING", "off"), ("FARMEM_VERIFY", "on"), ("FARMEM_START_AT", "0")])
            .unwrap();
        assert_eq!(c.policy.limit, Some(64 << 20));
        assert_eq!(c.policy.stall, Some(0.01));
        assert_eq!(c.policy.min, 0);
        assert_eq!(c.mmap_min, 2 << 20);
        assert_eq!(c.evict_every, Some(Duration::from_millis(250)));
        assert_eq!(c.prefetch, 16);
        assert_eq!(c.readahead, Some(8));
        assert_eq!(c.fault_handlers, Some(2));
        assert_eq!(c.fault_mode, farmem_runtime::FaultMode::Signal);
        assert!(!c.policy.write_tracking);
        assert!(c.verify);
        assert_eq!(c.start_at, 0);
        assert_eq!(read(&[]).unwrap().start_at, 8 << 20);
        assert!(read(&[]).unwrap().policy.write_tracking, "on by default");
        assert_eq!(c.tiers.to_string(), "zstd:3");
        assert_eq!(read(&[]).unwrap().tiers.to_string(), "lz4+zstd:1", "T1 falls back to zstd:1 by default");
        assert_eq!(read(&[("FARMEM_TIERS", "lz4+zstd")]).unwrap().tiers.to_string(), "lz4+zstd:3");
    }

    #[test]
    fn the_statistics_belong_to_one_pid() {
        let unclaimed = read(&[("FARMEM_STATS", "/tmp/s.json")]).unwrap();
        assert_eq!(unclaimed.stats_owner, None);
        assert!(unclaimed.owns_stats(42), "the first process claims the file");
        let mine = read(&[("FARMEM_STATS", "/tmp/s.json"), ("FARMEM_STATS_PID", "42")]).unwrap();
        assert!(mine.owns_stats(42), "an exec'd image keeps its pid");
        assert!(!mine.owns_stats(43), "a child does not write");
        assert!(!read(&[("FARMEM_STATS", "/tmp/s.json"), ("FARMEM_STATS_PID", "soon")]).unwrap().owns_stats(42));
        assert!(!read(&[("FARMEM_STATS_PID", "42")]).unwrap().owns_stats(42), "no file, nothing to write");
        assert!(read(&[("FARMEM_STATS", "/tmp/s.json"), ("FARMEM_STATS_PID", "")]).unwrap().owns_stats(7), "empty counts as unset");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [("FARMEM_LIMIT", "lots"), ("FARMEM_STALL", "fast"), ("FARMEM_TIERS", "gzip"), ("FARMEM_TIERS", "lz4+lz4"), ("FARMEM_TIERS", "raw+zstd"), ("FARMEM_MIN", "-1"), ("FARMEM_EVICT_EVERY", "soon"), ("FARMEM_PREFETCH", "65"), ("FARMEM_READAHEAD", "lots"), ("FARMEM_FAULT_HANDLERS", "65"), ("FARMEM_FAULT", "fast"), ("FARMEM_WRITE_TRACKING", "sometimes"), ("FARMEM_VERIFY", "sometimes"), ("FARMEM_START_AT", "early")] {
            let e = read(&[(k, v)]).unwrap_err();
            assert_eq!(e.var, k);
            let line = e.to_string();
            assert!(line.starts_with(&format!("{k}=\"{v}\"")) && !line.contains('\n'), "{line}");
        }
    }
}
