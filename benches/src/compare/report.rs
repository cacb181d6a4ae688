//! The outputs of `farmem bench compare`: one JSON file a run, a Markdown
//! table of all runs, and the SVG plots.

use std::path::Path;

use super::{CompareError, RunRecord};
use crate::plot;

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / (1u64 << 20) as f64)
}

fn us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The Markdown table comparing the runs: one row a run, skipped and failed
/// runs saying why.
pub fn markdown(title: &str, runs: &[RunRecord]) -> String {
    let mut s = format!("## {title}\n\n");
    s += "| variant | budget | throughput | p50 µs | p99 µs | p99.9 µs | peak RSS MiB | avg RSS MiB | avg footprint MiB | peak tiers MiB | peak swap MiB | zram/zswap MiB | CPU s | wall s | load s | status |\n";
    s += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for r in runs {
        let budget = match (&r.budget, r.budget_bytes) {
            (Some(b), Some(bytes)) => format!("{b} ({} MiB)", mib(bytes)),
            (Some(b), None) => b.clone(),
            _ => "-".into(),
        };
        if r.status != "ok" {
            s += &format!("| {} | {budget} | | | | | | | | | | | | | | {}: {} |\n", r.variant, r.status, r.reason.as_deref().unwrap_or("").replace('|', "/"));
            continue;
        }
        let m = &r.memory;
        s += &format!(
            "| {} | {budget} | {:.0} {}/s | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | ok |\n",
            r.variant,
            r.throughput,
            r.unit,
            us(r.p50_us),
            us(r.p99_us),
            us(r.p999_us),
            mib(m.peak_rss_bytes),
            mib(m.avg_rss_bytes),
            mib(m.avg_footprint_bytes),
            mib(m.peak_tier_bytes),
            mib(m.peak_swap_bytes),
            mib(m.peak_zram_bytes.max(m.peak_zswap_bytes)),
            r.cpu_user_s + r.cpu_sys_s,
            r.wall_s,
            r.load_s.map_or("-".into(), |l| format!("{l:.1}")),
        );
    }
    // The load beside the kernel's at each budget: the phase a limit that
    // cannot keep up with a growing program shows first.
    for r in runs.iter().filter(|r| r.status == "ok" && r.variant == "farmem-limit") {
        let (Some(load), Some(b)) = (r.load_s, r.budget.as_deref()) else { continue };
        let kernel = runs.iter().find(|k| k.variant == "kernel-zram" && k.budget.as_deref() == Some(b));
        s += &match kernel {
            Some(k) if k.status == "ok" && k.load_s.is_some() => {
                let kl = k.load_s.unwrap_or(0.0);
                format!("\nLoad at {b}: farmem-limit {load:.1} s, kernel-zram {kl:.1} s ({:.2}x).\n", load / kl.max(1e-9))
            }
            Some(k) => format!("\nLoad at {b}: farmem-limit {load:.1} s; kernel-zram {}.\n", k.status),
            None => format!("\nLoad at {b}: farmem-limit {load:.1} s.\n"),
        };
    }
    // Against the allocator farmem's malloc is built on, when it ran.
    if let Some(je) = runs.iter().find(|r| r.status == "ok" && r.variant == "jemalloc" && r.throughput > 0.0) {
        for r in runs.iter().filter(|r| r.status == "ok" && r.variant.starts_with("farmem-")) {
            let budget = r.budget.as_deref().map_or(String::new(), |b| format!(" at {b}"));
            s += &format!(
                "\n{}{budget} against the system's jemalloc: throughput {:.2}x, peak RSS {:.2}x.\n",
                r.variant,
                r.throughput / je.throughput,
                r.memory.peak_rss_bytes as f64 / je.memory.peak_rss_bytes.max(1) as f64
            );
        }
    }
    s += "\nRSS is the measured process's resident set (farmem's compressed tier lives inside it); footprint adds the pool the kernel keeps outside the process (zram or zswap); CPU is user + system of the whole run (for farmem, `farmem run` and the program).\n";
    s
}

/// Resident memory over time: one panel a budget, each holding the plain
/// run, the stall run and that budget's variants.
pub fn resident_svg(runs: &[RunRecord]) -> String {
    let mut budgets: Vec<&str> = Vec::new();
    for b in runs.iter().filter_map(|r| r.budget.as_deref()) {
        if !budgets.contains(&b) {
            budgets.push(b);
        }
    }
    if budgets.is_empty() {
        budgets.push("-");
    }
    let panels: Vec<plot::Panel> = budgets
        .iter()
        .map(|b| plot::Panel {
            title: format!("{}: resident MiB at budget {b}", runs.first().map_or("", |r| r.workload.as_str())),
            x_unit: "s".into(),
            series: runs
                .iter()
                .filter(|r| r.status == "ok" && r.budget.as_deref().is_none_or(|x| x == *b))
                .map(|r| plot::Series { label: r.variant.clone(), points: r.samples.iter().map(|s| (s.t, (s.rss_bytes >> 20) as f64)).collect() })
                .collect(),
        })
        .collect();
    plot::svg(&panels)
}

/// Throughput against the budget (percent of the plain run's peak), one line a variant.
pub fn throughput_svg(runs: &[RunRecord], plain_peak: u64) -> String {
    let mut variants: Vec<&str> = runs.iter().filter(|r| r.budget_bytes.is_some()).map(|r| r.variant.as_str()).collect();
    variants.sort();
    variants.dedup();
    let series = variants
        .iter()
        .map(|v| {
            let mut points: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| r.variant == *v && r.status == "ok")
                .filter_map(|r| Some((r.budget_bytes? as f64 / plain_peak.max(1) as f64 * 100.0, r.throughput)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            plot::Series { label: v.to_string(), points }
        })
        .collect();
    let unit = runs.first().map_or("op", |r| r.unit.as_str());
    plot::svg(&[plot::Panel { title: format!("throughput ({unit}/s) against the budget"), x_unit: "% of plain peak RSS".into(), series }])
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) -> Result<(), CompareError> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|source| CompareError::Io { what: format!("writing {}", path.display()), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::probe::{MemorySummary, Sample};

    fn record(variant: &str, budget: Option<(&str, u64)>, throughput: f64) -> RunRecord {
        RunRecord {
            workload: "kv-zipf".into(),
            variant: variant.into(),
            budget: budget.map(|b| b.0.into()),
            budget_bytes: budget.map(|b| b.1),
            status: "ok".into(),
            throughput,
            unit: "op".into(),
            p50_us: 1.25,
            p99_us: 30.0,
            p999_us: 250.0,
            memory: MemorySummary { peak_rss_bytes: 512 << 20, avg_rss_bytes: 256 << 20, avg_footprint_bytes: 300 << 20, ..MemorySummary::default() },
            samples: vec![Sample { t: 0.0, rss_bytes: 1 << 20, ..Sample::default() }, Sample { t: 1.0, rss_bytes: 9 << 20, ..Sample::default() }],
            ..RunRecord::default()
        }
    }

    #[test]
    fn the_table_has_a_row_a_run_and_says_why_a_run_was_skipped() {
        let mut skipped = record("kernel-zram", Some(("50%", 256 << 20)), 0.0);
        skipped.status = "skipped".into();
        skipped.reason = Some("the kernel baseline needs root | really".into());
        let runs = vec![record("plain", None, 1e6), record("farmem-limit", Some(("50%", 256 << 20)), 5e5), skipped];
        let md = markdown("kv-zipf", &runs);
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 4, "header and three runs:\n{md}");
        assert!(rows[1].starts_with("| plain | - | 1000000 op/s | 1.2 | 30.0 | 250 | 512 | 256 | 300 |"), "{}", rows[1]);
        assert!(rows[2].contains("| 50% (256 MiB) |") && rows[2].ends_with("| ok |"), "{}", rows[2]);
        assert!(rows[3].contains("skipped: the kernel baseline needs root / really"), "{}", rows[3]);
        assert!(rows.iter().all(|r| r.matches('|').count() == 17), "every row has every column:\n{md}");
    }

    #[test]
    fn plots_hold_a_line_a_variant() {
        let runs = vec![record("plain", None, 1e6), record("farmem-limit", Some(("50%", 256 << 20)), 5e5), record("farmem-limit", Some(("30%", 150 << 20)), 4e5), record("kernel-zram", Some(("50%", 256 << 20)), 3e5)];
        let r = resident_svg(&runs);
        assert_eq!(r.matches("<polyline").count(), 3 + 2, "50%: plain, limit, zram; 30%: plain, limit");
        let t = throughput_svg(&runs, 512 << 20);
        assert_eq!(t.matches("<polyline").count(), 2);
        assert!(t.contains("% of plain peak RSS"));
    }
}
