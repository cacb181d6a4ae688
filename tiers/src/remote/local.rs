//! A Redis or memcached server of its own on loopback, for tests and
//! benchmarks: started on a free port, stopped by its PID when dropped; and
//! a bare client of the store, for a benchmark's baseline.
//!
//! ```no_run
//! use farmem_tiers::remote::LocalServer;
//! use farmem_tiers::{RemoteProtocol, RemoteTier};
//!
//! let server = LocalServer::start(RemoteProtocol::Redis).unwrap();
//! let tier = RemoteTier::open(server.config()).unwrap();
//! ```

use std::io;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use super::wire::{Conn, Key, Status, Value};
use super::RemoteConfig;
use crate::RemoteProtocol;

/// A store this process started on 127.0.0.1.
pub struct LocalServer {
    child: Option<Child>,
    /// Its protocol.
    pub protocol: RemoteProtocol,
    /// Its port.
    pub port: u16,
}

impl LocalServer {
    /// Starts `redis-server` or `memcached` on a free port and waits until
    /// it takes connections. The error is `NotFound` when the program is not installed.
    pub fn start(protocol: RemoteProtocol) -> io::Result<LocalServer> {
        let port = free_port()?;
        let mut s = LocalServer { child: None, protocol, port };
        s.restart()?;
        Ok(s)
    }

    /// The program it runs.
    pub fn program(&self) -> &'static str {
        match self.protocol {
            RemoteProtocol::Redis => "redis-server",
            RemoteProtocol::Memcached => "memcached",
        }
    }

    /// A tier config for it, with the defaults.
    pub fn config(&self) -> RemoteConfig {
        match self.protocol {
            RemoteProtocol::Redis => RemoteConfig::redis("127.0.0.1", self.port),
            RemoteProtocol::Memcached => RemoteConfig::memcached("127.0.0.1", self.port),
        }
    }

    /// The server's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL: it keeps nothing) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again, empty, on the same port (after [`LocalServer::kill`]).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let port = self.port.to_string();
        let mut cmd = Command::new(self.program());
        match self.protocol {
            RemoteProtocol::Redis => {
                cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"]);
            }
            RemoteProtocol::Memcached => {
                // -M: refuse rather than evict when full (an evicted item is a lost page).
                cmd.args(["-p", &port, "-l", "127.0.0.1", "-U", "0", "-M", "-m", "2048", "-t", "2"]);
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } == 0 {
                    cmd.args(["-u", "root"]);
                }
            }
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(io::Error::other(format!("{} on port {} exited with {status}: {}", self.program(), self.port, err.trim())));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{} took no connection on port {} within 10 s", self.program(), self.port)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A Redis Cluster of `n` masters on loopback (no replicas), for tests:
/// started, joined with `redis-cli --cluster create`, stopped by PID and its
/// directory removed when dropped.
pub struct LocalCluster {
    nodes: Vec<Child>,
    /// The nodes' ports.
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl LocalCluster {
    /// Starts the nodes, joins them, waits until the cluster serves every slot.
    pub fn start(n: usize) -> io::Result<LocalCluster> {
        let dir = std::env::temp_dir().join(format!("farmem-cluster-{}-{}", std::process::id(), free_port()?));
        std::fs::create_dir_all(&dir)?;
        let mut c = LocalCluster { nodes: Vec::new(), ports: Vec::new(), dir };
        for _ in 0..n {
            let port = free_port()?;
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{port}.conf"), "--cluster-node-timeout", "5000"])
                .current_dir(&c.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            c.nodes.push(child);
            c.ports.push(port);
            wait_for(port, Duration::from_secs(10))?;
        }
        let addrs: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli").arg("--cluster").arg("create").args(&addrs).args(["--cluster-replicas", "0", "--cluster-yes"]).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!("redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout))));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for &port in &c.ports {
            loop {
                if c.cli(port, &["CLUSTER", "INFO"])?.contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("the cluster node on port {port} is not ok within 20 s")));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(c)
    }

    /// `redis-cli -p PORT ARGS...`: its output, trimmed.
    pub fn cli(&self, port: u16, args: &[&str]) -> io::Result<String> {
        let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!("redis-cli -p {port} {args:?}: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until something takes connections on `port`.
fn wait_for(port: u16, within: Duration) -> io::Result<()> {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("nothing took a connection on port {port} within {within:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A loopback port nobody listens on, for a server a test or benchmark
/// starts: below the kernel's ephemeral range (where `bind` to port 0 and
/// every outgoing connection take theirs, so no client socket can take it
/// between this check and the server's bind), and never the same twice in
/// one process, so two servers started at once cannot race for one port.
pub fn free_port() -> io::Result<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 500) as u16 * 20;
    for _ in 0..2000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, "no free port from 20000 to 32000 on 127.0.0.1"))
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client of the store with none of the tier around it (no records, no
/// checks, no pool): the same connection code, for a benchmark's bare
/// round trip beside the tier's.
pub struct BareClient(Conn, u64);

impl BareClient {
    /// Connects to the store `config` names.
    pub fn connect(config: &RemoteConfig) -> io::Result<BareClient> {
        let spec = &config.spec;
        Ok(BareClient(Conn::open(spec.protocol, &spec.host, spec.port, config.timeout)?, config.ttl_ms()))
    }

    /// Stores `value` under `base` followed by `n` in hex, with the config's expiry.
    pub fn set(&mut self, base: &[u8], n: u64, value: &[u8]) -> io::Result<()> {
        self.0.set(&Key::new(base, n), value, self.1);
        self.0.send()?;
        match self.0.status()? {
            Status::Done => Ok(()),
            other => Err(io::Error::other(format!("SET refused: {other:?}"))),
        }
    }

    /// Fetches the value under `base` and `n` into `out`: one round trip.
    /// Returns its length; an error if it is missing.
    pub fn get(&mut self, base: &[u8], n: u64, out: &mut [u8]) -> io::Result<usize> {
        self.0.get(&Key::new(base, n));
        self.0.send()?;
        match self.0.value(out)? {
            Value::Got(len) => Ok(len),
            other => Err(io::Error::other(format!("GET gave {other:?}"))),
        }
    }

    /// Deletes the keys `base` followed by each of `ns`.
    pub fn delete(&mut self, base: &[u8], ns: std::ops::Range<u32>) -> io::Result<()> {
        let replies = self.0.delete(ns.map(|n| Key::new(base, n.into())));
        self.0.send()?;
        for _ in 0..replies {
            self.0.status()?;
        }
        Ok(())
    }
}
