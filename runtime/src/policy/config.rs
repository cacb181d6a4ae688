//! What the policy is asked to do, and the strings users write to ask it.
//!
//! The same grammar serves the command line (`--limit 2G --stall 0.1%`) and
//! the environment (`FARMEM_LIMIT=2G FARMEM_STALL=0.1%`), so both parse here.

use std::time::Duration;

/// How the controller decides how much to reclaim.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    /// Keep the resident heap under this many bytes (like memory.high).
    pub limit: Option<u64>,
    /// Reclaim while the share of wall time the program's threads spend blocked
    /// in farmem faults stays under this fraction (0.001 is 0.1%).
    pub stall: Option<f64>,
    /// Never reclaim below this many resident bytes (like memory.min).
    pub min: u64,
    /// How often the controller measures and acts.
    pub tick: Duration,
    /// CPU the access sampler may spend, as a fraction of one core per 10 GiB
    /// of registered memory (0.02 is 2%).
    pub sampling_cpu: f64,
    /// Pages that stay in a tier this long move to the next configured tier
    /// (T1 to a spill tier), when there is one.
    pub demote_after: Duration,
    /// See written pages through PAGEMAP_SCAN and async write-protect, where
    /// the kernel has both (Linux 6.7+): a page the program writes is seen in
    /// use without a fault (see the `written` module).
    pub write_tracking: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig { limit: None, stall: None, min: 0, tick: Duration::from_secs(1), sampling_cpu: 0.02, demote_after: Duration::from_secs(60), write_tracking: true }
    }
}

impl PolicyConfig {
    /// The demotion age in ticks (at least one).
    pub fn demote_ticks(&self) -> u32 {
        (self.demote_after.as_secs_f64() / self.tick.as_secs_f64().max(1e-3)).ceil().clamp(1.0, super::ages::MAX_AGE as f64 - 1.0) as u32
    }

    /// Whether the controller has anything to do (a limit or a stall target).
    pub fn reclaims(&self) -> bool {
        self.limit.is_some() || self.stall.is_some()
    }
}

/// Parses a switch: `on`, `off`, `1`, `0`, `yes`, `no`, `true` or `false`.
pub fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "1" | "yes" | "true" => Ok(true),
        "off" | "0" | "no" | "false" => Ok(false),
        _ => Err("write on or off".into()),
    }
}

/// The default stall target of `--stall` without a value: 0.1%.
pub const DEFAULT_STALL: f64 = 0.001;

/// Parses a byte size: a number with an optional K, M, G or T (powers of 1024;
/// `B` or `iB` may follow the letter): `4096`, `512M`, `2G`, `1.5GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower.strip_suffix("ib").or_else(|| lower.strip_suffix('b')).unwrap_or(&lower);
    let (num, mult) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 1u64 << 10),
        Some('m') => (&body[..body.len() - 1], 1 << 20),
        Some('g') => (&body[..body.len() - 1], 1 << 30),
        Some('t') => (&body[..body.len() - 1], 1 << 40),
        _ => (body, 1),
    };
    let what = || format!("'{t}' is not a size: write a number with K, M, G or T, e.g. 512M or 2G");
    let num = num.trim();
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(what());
    }
    let v: f64 = num.parse().map_err(|_| what())?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("'{t}' is not a size: it must be more than zero"));
    }
    let bytes = v * mult as f64;
    if bytes >= u64::MAX as f64 {
        return Err(format!("'{t}' is too large"));
    }
    Ok(bytes as u64)
}

/// Parses a stall target: a percentage (`0.1%`) or a fraction (`0.001`), more
/// than 0 and less than 100%.
pub fn parse_stall(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let what = || format!("'{t}' is not a stall target: write a percentage such as 0.1% (or a fraction such as 0.001)");
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map_err(|_| what())? / 100.0,
        None => t.parse::<f64>().map_err(|_| what())?,
    };
    if !(v.is_finite() && v > 0.0 && v < 1.0) {
        return Err(format!("'{t}' is not a stall target: it must be more than 0% and less than 100%"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64kb"), Ok(64 << 10));
        for bad in ["lots", "-1G", "0", "", "G", "1e3", "2 X", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn stall_targets() {
        assert_eq!(parse_stall("0.1%"), Ok(0.001));
        assert_eq!(parse_stall("0.001"), Ok(0.001));
        assert_eq!(parse_stall(" 5 % "), Ok(0.05));
        for bad in ["0", "0%", "100%", "1", "-1%", "fast", "%"] {
            assert!(parse_stall(bad).is_err(), "{bad:?} parsed");
        }
    }
}
