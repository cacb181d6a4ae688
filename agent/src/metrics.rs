//! The Prometheus endpoint: `GET /metrics` on a loopback address by
//! default, in the OpenMetrics text format that the `prometheus-client`
//! crate writes. Each scrape is encoded from the agent's latest view, so a
//! process that left is gone from the next one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One managed process as the metrics show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcView {
    /// Its pid.
    pub pid: u32,
    /// Its rule's name (`-` when none matched).
    pub rule: String,
    /// Its command name.
    pub comm: String,
    /// Resident heap under farmem, bytes.
    pub resident: u64,
    /// All it holds in RAM (VmRSS: the heap, its compressed tier, the rest), bytes.
    pub rss: u64,
    /// The limit it was given, if any.
    pub limit: Option<u64>,
    /// Per tier: its name, bytes it uses, bytes of pages it holds.
    pub tiers: Vec<(String, u64, u64)>,
    /// Faults per second over the last tick.
    pub faults_per_s: f64,
    /// Share of the last tick its threads spent stalled on faults.
    pub stall_share: f64,
    /// Pages evicted since it started.
    pub evictions: u64,
    /// Faults served from a tier since it started (refaults of evicted pages).
    pub refaults: u64,
}

/// What the agent shows: every process, and the node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// The managed processes.
    pub procs: Vec<ProcView>,
    /// The node budget, bytes.
    pub budget: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Proc {
    pid: u32,
    name: String,
    comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcTier {
    pid: u32,
    name: String,
    comm: String,
    tier: String,
}

/// The text of one scrape of `view`.
pub fn encode_view(view: &View) -> String {
    let mut reg = Registry::with_prefix("farmem");
    let gauge = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<Proc, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        reg.register(name, help, f.clone());
        f
    };
    let resident = gauge(&mut reg, "resident_bytes", "Resident heap bytes under farmem");
    let rss = gauge(&mut reg, "rss_bytes", "Bytes the process holds in RAM (VmRSS), its compressed tier included");
    let limit = gauge(&mut reg, "limit_bytes", "The limit the agent gave the process (absent: none)");
    let ratio = gauge(&mut reg, "compression_ratio", "Bytes of pages held in tiers per byte the tiers use");
    let faults = gauge(&mut reg, "faults_per_second", "Faults per second over the last tick");
    let stall = gauge(&mut reg, "stall_ratio", "Share of the last tick the process's threads spent stalled on faults");
    let tier_used = Family::<ProcTier, Gauge>::default();
    reg.register("tier_bytes", "Bytes each tier of the process uses", tier_used.clone());
    let tier_held = Family::<ProcTier, Gauge>::default();
    reg.register("tier_pages_bytes", "Bytes of pages each tier of the process holds, uncompressed", tier_held.clone());
    let evictions = Family::<Proc, Counter>::default();
    reg.register("evictions", "Pages evicted since the process started", evictions.clone());
    let refaults = Family::<Proc, Counter>::default();
    reg.register("refaults", "Faults served from a tier since the process started", refaults.clone());
    let mut saved = 0u64;
    for p in &view.procs {
        let l = Proc { pid: p.pid, name: p.rule.clone(), comm: p.comm.clone() };
        resident.get_or_create(&l).set(p.resident as f64);
        rss.get_or_create(&l).set(p.rss as f64);
        if let Some(b) = p.limit {
            limit.get_or_create(&l).set(b as f64);
        }
        let (held, used) = p.tiers.iter().fold((0, 0), |(h, u), t| (h + t.2, u + t.1));
        saved += held.saturating_sub(used);
        ratio.get_or_create(&l).set(if used > 0 { held as f64 / used as f64 } else { 0.0 });
        faults.get_or_create(&l).set(p.faults_per_s);
        stall.get_or_create(&l).set(p.stall_share);
        evictions.get_or_create(&l).inc_by(p.evictions);
        refaults.get_or_create(&l).inc_by(p.refaults);
        for (tier, used, held) in &p.tiers {
            let t = ProcTier { pid: p.pid, name: p.rule.clone(), comm: p.comm.clone(), tier: tier.clone() };
            tier_used.get_or_create(&t).set(*used as i64);
            tier_held.get_or_create(&t).set(*held as i64);
        }
    }
    let node = |reg: &mut Registry, name: &str, help: &str, v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        reg.register(name, help, g);
    };
    node(&mut reg, "node_saved_bytes", "Bytes of pages out of RAM across the managed processes, less what their tiers use", saved as i64);
    node(&mut reg, "node_budget_bytes", "The RAM the managed processes share (their RSS)", view.budget as i64);
    node(&mut reg, "node_processes", "Processes the agent manages", view.procs.len() as i64);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String does not fail");
    out
}

/// Serves `GET /metrics` on `addr` from `view`, on a thread of its own.
pub fn serve(addr: SocketAddr, view: Arc<Mutex<View>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("farmem-agent-metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 << 10 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let first = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_owned();
            let (status, kind, body) = if first.starts_with("GET /metrics ") || first == "GET /metrics" {
                let v = view.lock().unwrap_or_else(|e| e.into_inner()).clone();
                ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", encode_view(&v))
            } else {
                ("404 Not Found", "text/plain", "farmem agent: only /metrics is served\n".to_owned())
            };
            let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_encodes_with_the_prefix_and_a_process_that_left_is_gone() {
        let p = ProcView {
            pid: 7,
            rule: "cache".into(),
            comm: "redis-server".into(),
            resident: 100,
            rss: 150,
            limit: Some(200),
            tiers: vec![("lz4".into(), 10, 40)],
            faults_per_s: 1.5,
            stall_share: 0.01,
            evictions: 5,
            refaults: 3,
        };
        let text = encode_view(&View { procs: vec![p.clone()], budget: 1000 });
        for want in [
            "farmem_resident_bytes{pid=\"7\",name=\"cache\",comm=\"redis-server\"} 100",
            "farmem_limit_bytes{",
            "farmem_rss_bytes{pid=\"7\",name=\"cache\",comm=\"redis-server\"} 150",
            "farmem_compression_ratio{pid=\"7\",name=\"cache\",comm=\"redis-server\"} 4",
            "farmem_evictions_total{pid=\"7\",name=\"cache\",comm=\"redis-server\"} 5",
            "farmem_tier_bytes{pid=\"7\",name=\"cache\",comm=\"redis-server\",tier=\"lz4\"} 10",
            "farmem_node_saved_bytes 30",
            "farmem_node_budget_bytes 1000",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        let gone = encode_view(&View { procs: vec![], budget: 1000 });
        assert!(!gone.contains("pid=\"7\""), "{gone}");
    }
}
