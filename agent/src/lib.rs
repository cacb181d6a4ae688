//! farmem's node agent: many processes under farmem on one machine, each
//! one's limit set from one node budget, Prometheus metrics for all.
//!
//! Processes join by being started with `farmem run --agent SOCKET` (or
//! `FARMEM_AGENT=SOCKET` in the environment of the shim): once its runtime
//! runs, the shim connects to the agent's socket and says who it is
//! ([`wire::Hello`]). With `adopt = true` in the config, processes already
//! under farmem that match a rule are managed too, through their statistics
//! sockets. Nothing is attached to a process that is not under farmem.
//! Every tick (1 s) the agent reads each member's statistics socket,
//! matches it to a rule of its configuration ([`config`]), shares the node
//! budget (RAM: the members' RSS) among them by priority and by what memory
//! costs each in stall ([`budget`]), and sends each its new limit, which
//! the shim's limit mode then holds. If the agent dies,
//! each process keeps its last limit and runs on.
//!
//! | module | its job |
//! | --- | --- |
//! | `wire` | the join protocol (the only module the shim links) |
//! | `config` | the TOML rules, and one-line errors naming line and field |
//! | `budget` | sharing the budget: mins, then priority to start, stall from then on |
//! | `node` | `/proc/meminfo`, PSI, and the auto budget they steer |
//! | `members` | the join socket and the processes that joined |
//! | `metrics` | the `/metrics` endpoint |
//!
//! ```no_run
//! let opts = farmem_agent::AgentOptions::new("/etc/farmem/agent.toml".into());
//! farmem_agent::run(opts).unwrap(); // runs until killed
//! ```

pub mod wire;

#[cfg(feature = "daemon")]
pub mod budget;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod members;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod node;

#[cfg(feature = "daemon")]
pub use daemon::*;

#[cfg(feature = "daemon")]
mod daemon {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex, RwLock};
    use std::time::{Duration, Instant, SystemTime};

    use crate::budget::{default_stall, share, Claim, CALM_UNDER};
    use crate::config::{self, Config, NodeBudget, Priority};
    use crate::members::{read_stats, Members, Reading};
    use crate::metrics::{ProcView, View};
    use crate::node::{self, AutoBudget};
    use crate::wire::Order;

    /// The socket processes join on when none is given.
    pub const DEFAULT_SOCKET: &str = "/run/farmem/agent.sock";

    /// How the agent runs.
    #[derive(Clone, Debug)]
    pub struct AgentOptions {
        /// The configuration file (re-read when it changes).
        pub config: PathBuf,
        /// The socket processes join on.
        pub socket: PathBuf,
        /// Where `/metrics` is served, if anywhere.
        pub metrics: Option<SocketAddr>,
        /// How often budgets are set.
        pub tick: Duration,
    }

    impl AgentOptions {
        /// The defaults for a config file: the default socket, metrics on
        /// 127.0.0.1:9464, a tick of one second.
        pub fn new(config: PathBuf) -> Self {
            AgentOptions { config, socket: PathBuf::from(DEFAULT_SOCKET), metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9464))), tick: Duration::from_secs(1) }
        }
    }

    /// Why the agent could not run.
    #[derive(Debug, thiserror::Error)]
    pub enum AgentError {
        /// The configuration file is wrong.
        #[error("{}: {source}", path.display())]
        Config {
            /// The file.
            path: PathBuf,
            /// Its line and field at fault.
            source: config::ConfigError,
        },
        /// The configuration file cannot be read.
        #[error("{}: {source}", path.display())]
        Read {
            /// The file.
            path: PathBuf,
            /// Why.
            source: std::io::Error,
        },
        /// The join socket or the metrics address cannot be served.
        #[error("serving {what}: {source}")]
        Serve {
            /// The socket or address.
            what: String,
            /// Why.
            source: std::io::Error,
        },
    }

    fn load(path: &PathBuf) -> Result<(Config, Option<SystemTime>), AgentError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentError::Read { path: path.clone(), source })?;
        let c = config::parse(&text).map_err(|source| AgentError::Config { path: path.clone(), source })?;
        Ok((c, std::fs::metadata(path).and_then(|m| m.modified()).ok()))
    }

    /// Runs the agent until the process is killed; returns only on a
    /// configuration or socket error at start.
    pub fn run(opts: AgentOptions) -> Result<(), AgentError> {
        let (cfg, mut mtime) = load(&opts.config)?;
        let config = Arc::new(RwLock::new(cfg));
        let members = Arc::new(Members::default());
        if let Some(dir) = opts.socket.parent() {
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new().mode(0o700).recursive(true).create(dir);
        }
        crate::members::listen(&opts.socket, Arc::clone(&members), Arc::clone(&config))
            .map_err(|source| AgentError::Serve { what: opts.socket.display().to_string(), source })?;
        let view = Arc::new(Mutex::new(View::default()));
        if let Some(addr) = opts.metrics {
            let bound = crate::metrics::serve(addr, Arc::clone(&view)).map_err(|source| AgentError::Serve { what: format!("metrics on {addr}"), source })?;
            tracing::info!("metrics on http://{bound}/metrics");
        }
        tracing::info!("agent: joining on {}, config {}", opts.socket.display(), opts.config.display());
        let mut auto = AutoBudget::default();
        loop {
            let t0 = Instant::now();
            // A changed file is read again; a bad one is refused in one line
            // and the running configuration stays.
            let now_mtime = std::fs::metadata(&opts.config).and_then(|m| m.modified()).ok();
            if now_mtime != mtime {
                mtime = now_mtime;
                match load(&opts.config) {
                    Ok((c, _)) => {
                        tracing::info!("{}: read again", opts.config.display());
                        for m in members.lock().values_mut() {
                            m.rule = c.rule_for(&m.hello);
                        }
                        *config.write().unwrap_or_else(|e| e.into_inner()) = c;
                    }
                    Err(e) => tracing::warn!("{e}; the running configuration stays"),
                }
            }
            let cfg = config.read().unwrap_or_else(|e| e.into_inner()).clone();
            if cfg.adopt {
                crate::members::adopt(&members, &cfg);
            }
            tick(&cfg, &members, &view, &mut auto);
            std::thread::sleep(opts.tick.saturating_sub(t0.elapsed()));
        }
    }

    /// The next smoothed pressure from the last one and this tick's stall
    /// against `target`: half each, so one slow tick does not move memory
    /// and a stall that lasts does within two or three.
    pub(crate) fn smooth(pressure: f64, stall: f64, target: f64) -> f64 {
        (pressure + stall / target.max(1e-6)) / 2.0
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn pressure_follows_a_lasting_stall_and_not_one_tick() {
            let one = super::smooth(0.0, 0.04, 0.02);
            assert_eq!(one, 1.0, "one tick at twice the target is not yet past it");
            let two = super::smooth(one, 0.04, 0.02);
            assert!(two > 1.0, "{two}");
            let calm = super::smooth(super::smooth(two, 0.0, 0.02), 0.0, 0.02);
            assert!(calm < 0.5, "{calm}");
        }
    }

    /// The share of time between two readings the process's threads spent
    /// stalled on faults (summed over threads), by the process's own clock.
    fn stall_share(prev: &Reading, last: &Reading) -> f64 {
        let dt = (last.f("uptime_seconds") - prev.f("uptime_seconds")).max(1e-3);
        (last.f("stall_seconds") - prev.f("stall_seconds")).max(0.0) / dt
    }

    /// One round: read every member, share the budget, send limits, update the view.
    fn tick(cfg: &Config, members: &Members, view: &Mutex<View>, auto: &mut AutoBudget) {
        let paths: Vec<(u32, PathBuf)> = members.lock().iter().map(|(pid, m)| (*pid, PathBuf::from(&m.hello.stats))).collect();
        let readings: Vec<(u32, Option<Reading>)> = paths.into_iter().map(|(pid, p)| (pid, read_stats(&p).map(|snap| Reading { at: Instant::now(), snap }))).collect();
        let mut m = members.lock();
        for (pid, r) in readings {
            if let (Some(member), Some(r)) = (m.get_mut(&pid), r) {
                member.prev = member.last.replace(r);
            }
        }
        let pids: Vec<u32> = m.iter().filter(|(_, x)| x.last.is_some()).map(|(p, _)| *p).collect();
        let claims: Vec<Claim> = pids
            .iter()
            .map(|p| {
                let x = m.get_mut(p).expect("listed");
                let rule = x.rule.map(|i| &cfg.rules[i]);
                let last = x.last.as_ref().expect("read");
                let need = last.need();
                let priority = rule.map_or(Priority::Normal, |r| r.priority);
                let stall = x.prev.as_ref().map_or(0.0, |prev| stall_share(prev, last));
                x.pressure = smooth(x.pressure, stall, rule.and_then(|r| r.stall).unwrap_or_else(|| default_stall(priority)));
                x.calm = if x.pressure < CALM_UNDER { x.calm.saturating_add(1) } else { 0 };
                Claim { priority, min: rule.map_or(0, |r| r.min), max: rule.and_then(|r| r.max), need, pressure: x.pressure, held: x.share, calm: x.calm }
            })
            .collect();
        // The budget is RAM: what a process holds beside its resident heap
        // (its compressed tier, the sampler's copies, code, stacks, what the
        // shim does not manage) comes off it before the heaps are shared.
        // That part moves with the limits; the next tick sees where it went.
        let held: u64 = pids.iter().map(|p| m[p].last.as_ref().map_or(0, |r| r.f("rss_bytes") as u64)).sum();
        let beside: u64 = pids.iter().map(|p| m[p].last.as_ref().map_or(0, |r| (r.f("rss_bytes") - r.f("resident_bytes")).max(0.0) as u64)).sum();
        let budget = match cfg.node {
            NodeBudget::Fixed(b) => b,
            NodeBudget::Auto { reserve, pressure } => auto.next(&node::read(), held, reserve, pressure),
        };
        let shares = share(budget.saturating_sub(beside), &claims);
        let mut procs = Vec::new();
        for ((pid, c), s) in pids.iter().zip(&claims).zip(&shares) {
            let x = m.get_mut(pid).expect("listed above");
            x.share = Some(*s);
            let bounded = c.need.min(c.max.unwrap_or(u64::MAX)).max(c.min);
            // Room for all it needs: held at its max only, so it may grow.
            let limit = if *s >= bounded { c.max } else { Some(*s) };
            tracing::trace!("pid {pid} ({}): needs {} MiB, pressure {:.2}, share {} MiB", x.hello.comm, c.need >> 20, c.pressure, s >> 20);
            let changed = match (x.sent, limit) {
                (Some(Some(a)), Some(b)) => a.abs_diff(b) > (a / 100).max(1 << 20),
                (Some(a), b) => a != b,
                (None, _) => true,
            };
            if changed {
                if x.send(Order::Limit(limit)) {
                    tracing::debug!("pid {pid}: limit {limit:?} (needs {}, share {s})", c.need);
                    x.sent = Some(limit);
                }
            }
            let (last, prev) = (x.last.as_ref().expect("read"), x.prev.as_ref());
            let rate = |k: &str| prev.map_or(0.0, |p| (last.f(k) - p.f(k)).max(0.0) / last.at.duration_since(p.at).as_secs_f64().max(1e-3));
            let stall = prev.map_or(0.0, |p| stall_share(p, last));
            let tiers = last
                .snap
                .get("tiers")
                .and_then(|t| t.as_array())
                .map(|ts| {
                    ts.iter()
                        .filter(|t| t.get("name").and_then(|n| n.as_str()) != Some("sampled"))
                        .map(|t| (t["name"].as_str().unwrap_or("?").to_owned(), t["bytes_used"].as_u64().unwrap_or(0), t["bytes_in"].as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            procs.push(ProcView {
                pid: *pid,
                rule: x.rule.map_or("-".into(), |i| cfg.rules[i].name.clone()),
                comm: x.hello.comm.clone(),
                resident: last.f("resident_bytes") as u64,
                rss: last.f("rss_bytes") as u64,
                limit: x.sent.flatten(),
                tiers,
                faults_per_s: rate("faults"),
                stall_share: stall,
                evictions: last.f("pages_evicted") as u64,
                refaults: last.f("faults_from_tier") as u64,
            });
        }
        drop(m);
        procs.sort_by_key(|p| p.pid);
        *view.lock().unwrap_or_else(|e| e.into_inner()) = View { procs, budget };
    }
}
