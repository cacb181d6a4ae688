//! What the node says about its memory: `/proc/meminfo` and the pressure
//! stall information of `/proc/pressure/memory` (PSI), and the auto
//! budget they steer.

/// A reading of the node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeMemory {
    /// `MemTotal`, bytes.
    pub total: u64,
    /// `MemAvailable`, bytes.
    pub available: u64,
    /// PSI `some avg10` as a share of time (0.01 is 1%); `None` without PSI.
    pub pressure: Option<f64>,
}

/// Reads the node now.
pub fn read() -> NodeMemory {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()).map_or(0, |kb| kb << 10)
    };
    NodeMemory { total: field("MemTotal:"), available: field("MemAvailable:"), pressure: std::fs::read_to_string("/proc/pressure/memory").ok().and_then(|t| some_avg10(&t)) }
}

/// `some avg10=X` of a PSI file's text, as a share.
pub fn some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let v = line.split_whitespace().find_map(|w| w.strip_prefix("avg10="))?;
    v.parse::<f64>().ok().map(|p| p / 100.0)
}

/// The auto budget: at most what the processes hold plus what the node has
/// available, less the reserve; lowered by 5% a tick while pressure is
/// above the target, raised by 2% a tick (towards that ceiling) while it is
/// under half of it.
#[derive(Clone, Debug, Default)]
pub struct AutoBudget {
    current: Option<u64>,
}

impl AutoBudget {
    /// The budget for this tick, given what the managed processes hold now.
    pub fn next(&mut self, node: &NodeMemory, held: u64, reserve: u64, target: f64) -> u64 {
        let ceiling = (held + node.available).saturating_sub(reserve);
        let mut b = self.current.unwrap_or(ceiling).min(ceiling);
        match node.pressure {
            Some(p) if p > target => b -= b / 20,
            Some(p) if p < target / 2.0 => b = (b + b / 50 + (16 << 20)).min(ceiling),
            None => b = ceiling,
            _ => {}
        }
        self.current = Some(b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_and_meminfo_read_and_the_auto_budget_follows_pressure() {
        assert_eq!(some_avg10("some avg10=1.50 avg60=0.20 avg300=0.00 total=100\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"), Some(0.015));
        assert_eq!(some_avg10("full avg10=1.0"), None);
        let here = read();
        assert!(here.total > 0 && here.available > 0 && here.available <= here.total, "{here:?}");
        let g = 1u64 << 30;
        let mut a = AutoBudget::default();
        let calm = NodeMemory { total: 8 * g, available: 4 * g, pressure: Some(0.0) };
        assert_eq!(a.next(&calm, 2 * g, g, 0.01), 5 * g, "the ceiling: held + available - reserve");
        let hot = NodeMemory { pressure: Some(0.05), ..calm };
        assert_eq!(a.next(&hot, 2 * g, g, 0.01), 5 * g - 5 * g / 20);
        let after = a.next(&calm, 2 * g, g, 0.01);
        assert!(after > 5 * g - 5 * g / 20 && after <= 5 * g);
    }
}
