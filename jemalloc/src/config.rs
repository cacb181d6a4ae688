//! What [`install`](crate::install) is asked to do, written as a string in the
//! grammar of the command line and the environment.
//!
//! `key=value` pairs separated by white space or `;`:
//!
//! | key | accepts | like |
//! | --- | --- | --- |
//! | `limit` | a size (`512M`, `2G`): keep the resident heap under it | `--limit`, `FARMEM_LIMIT` |
//! | `stall` | a percentage (`0.1%`); bare `stall` means 0.1% | `--stall`, `FARMEM_STALL` |
//! | `min` | a size: never reclaim below it | `--min`, `FARMEM_MIN` |
//! | `tiers` | a tier spec (`lz4+zstd:1`, the default; `lz4`, `zstd:3`, `lz4,file:DIR:SIZE`) | `--tiers`, `FARMEM_TIERS` |
//! | `write_tracking` | `on` or `off`: see written pages through PAGEMAP_SCAN and async write-protect where the kernel has both (on) | `FARMEM_WRITE_TRACKING` |
//! | `arenas` | 1 to 8: how many farmem arenas (default: one per CPU) | |
//! | `verify` | `on` or `off`: keep a checksum of every page out of RAM and abort on a page that comes back different (off; for tests and bug hunts) | `FARMEM_VERIFY` |
//!
//! The empty string is all defaults: farmem arenas and an `lz4+zstd:1` tier, but no
//! reclaim (neither a limit nor a stall target).

use std::str::FromStr;

use farmem_runtime::policy::{parse_size, parse_stall, parse_switch, PolicyConfig, DEFAULT_STALL};
use farmem_tiers::TierSpec;

use crate::route::MAX_ARENAS;

/// The configuration of a linked farmem.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Limit, stall target and floor for the reclaim policy.
    pub policy: PolicyConfig,
    /// The tiers, nearest first.
    pub tiers: TierSpec,
    /// How many farmem arenas; `None` is one per CPU, up to 8.
    pub arenas: Option<usize>,
    /// Pages brought back beside each fault from a spill tier (0: none).
    pub prefetch: usize,
    /// The largest readahead window in pages (None: the runtime's default, 32; 0: off).
    pub readahead: Option<usize>,
    /// Verification mode: see `farmem_runtime::Config::verify`.
    pub verify: bool,
    /// Fault handler threads (None: one per CPU, pinned; see `farmem_runtime::Config::fault_handlers`).
    pub fault_handlers: Option<usize>,
}

impl Config {
    /// How the runtime serves faults, from this config.
    pub fn fault_options(&self) -> crate::FaultOptions {
        crate::FaultOptions { prefetch: self.prefetch, readahead: self.readahead, fault_handlers: self.fault_handlers, verify: self.verify, fault_mode: farmem_runtime::FaultMode::Thread }
    }
}

/// A key or value `Config::from_str` cannot use, with what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("farmem config: {key}={value:?} is not accepted: {reason}")]
pub struct ConfigError {
    /// The key as written.
    pub key: String,
    /// Its value as written.
    pub value: String,
    /// Why, and what it accepts.
    pub reason: String,
}

impl FromStr for Config {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let mut c = Config::default();
        for item in s.split(|ch: char| ch.is_whitespace() || ch == ';').filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let err = |reason: String| ConfigError { key: key.into(), value: value.into(), reason };
            match key.trim_start_matches("--") {
                "limit" => c.policy.limit = Some(parse_size(value).map_err(err)?),
                "min" => c.policy.min = parse_size(value).map_err(err)?,
                "stall" if value.is_empty() => c.policy.stall = Some(DEFAULT_STALL),
                "stall" => c.policy.stall = Some(parse_stall(value).map_err(err)?),
                "tiers" => c.tiers = TierSpec::from_str(value).map_err(|e| err(e.to_string()))?,
                "arenas" => match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_ARENAS).contains(&n) => c.arenas = Some(n),
                    _ => return Err(err(format!("write a number of arenas from 1 to {MAX_ARENAS}"))),
                },
                "prefetch" => c.prefetch = farmem_runtime::parse_prefetch(value).map_err(err)?,
                "readahead" => c.readahead = Some(farmem_runtime::parse_readahead(value).map_err(err)?),
                "fault_handlers" => c.fault_handlers = Some(farmem_runtime::parse_fault_handlers(value).map_err(err)?),
                "write_tracking" => c.policy.write_tracking = parse_switch(value).map_err(err)?,
                "verify" => c.verify = parse_switch(value).map_err(err)?,
                _ => return Err(err(
                    "unknown key: write limit=SIZE, stall=PCT, min=SIZE, tiers=SPEC, arenas=N, prefetch=PAGES, readahead=PAGES, fault_handlers=N, write_tracking=on|off or verify=on|off, separated by spaces".into(),
                )),
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_strings() {
        let c: Config = "limit=64M stall=1%;min=8M  tiers=zstd:3 arenas=2 prefetch=8 readahead=0 fault_handlers=1 write_tracking=off verify=on".parse().unwrap();
        assert_eq!(c.fault_handlers, Some(1));
        assert_eq!(c.prefetch, 8);
        assert_eq!(c.readahead, Some(0));
        assert!(c.verify);
        assert!(!c.policy.write_tracking);
        assert_eq!(c.policy.limit, Some(64 << 20));
        assert_eq!(c.policy.stall, Some(0.01));
        assert_eq!(c.policy.min, 8 << 20);
        assert_eq!(c.tiers.to_string(), "zstd:3");
        assert_eq!(c.arenas, Some(2));
        assert_eq!("".parse::<Config>().unwrap(), Config::default());
        assert_eq!("--stall".parse::<Config>().unwrap().policy.stall, Some(DEFAULT_STALL));
    }

    #[test]
    fn bad_strings_name_the_key_on_one_line() {
        for (s, key) in [("limit=lots", "limit"), ("stall=fast", "stall"), ("tiers=gzip", "tiers"), ("arenas=9", "arenas"), ("prefetch=65", "prefetch"), ("prefetch=some", "prefetch"), ("readahead=99", "readahead"), ("fault_handlers=65", "fault_handlers"), ("fault_handlers=all", "fault_handlers"), ("write_tracking=maybe", "write_tracking"), ("verify=maybe", "verify"), ("colour=blue", "colour"), ("limit", "limit")] {
            let e = s.parse::<Config>().unwrap_err();
            assert_eq!(e.key, key);
            let line = e.to_string();
            assert!(line.starts_with(&format!("farmem config: {key}=")) && !line.contains('\n'), "{line}");
        }
    }
}
