//! A Redis or memcached server of its own on loopback, for tests and
//! benchmarks: started on a free port, stopped by its PID when dropped.
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
use std::time::{Duration, Instant};

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
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
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

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
    }
}
