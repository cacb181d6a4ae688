//! The live statistics socket `farmem stat PID` reads.
//!
//! A Unix stream socket `PID.sock` in a directory only the process's user can
//! enter (`/run/farmem` for root, else `$XDG_RUNTIME_DIR/farmem`, else
//! `/tmp/farmem-UID`), mode 0600. Each connection gets one JSON snapshot (see
//! [`crate::report`]) and is closed. A client that sends a line first is a
//! node agent that adopted this process: the line is an order of
//! `farmem_agent::wire` (`limit BYTES`). The socket is removed at exit.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

pub use farmem_agent::wire::socket_dirs;

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No candidate directory could be made private to this user.
    #[error("no private directory for the statistics socket (tried {tried}): {source}")]
    NoDir {
        /// The directories tried.
        tried: String,
        /// The last failure.
        source: io::Error,
    },
    /// Binding the socket failed.
    #[error("binding {path}: {source}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

/// Makes `dir` (0700) or checks that it is this user's and closed to others.
fn private_dir(dir: &Path, uid: u32) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(dir)?;
            if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{} is not a private directory of uid {uid}", dir.display())));
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Removes the sockets of processes that are gone (killed before their exit
/// handlers could remove them).
fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_suffix(".sock")).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Binds `PID.sock` in the first usable directory.
pub fn bind(pid: u32) -> Result<(UnixListener, PathBuf), ServerError> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let dirs = socket_dirs(uid);
    let mut last = io::Error::other("no directory");
    for dir in &dirs {
        if let Err(e) = private_dir(dir, uid) {
            last = e;
            continue;
        }
        sweep(dir);
        let path = dir.join(format!("{pid}.sock"));
        // A stale socket of an earlier process with this pid.
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).map_err(|source| ServerError::Bind { path: path.clone(), source })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|source| ServerError::Bind { path: path.clone(), source })?;
        return Ok((l, path));
    }
    Err(ServerError::NoDir { tried: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "), source: last })
}

/// Answers each connection with `snapshot()`, forever. A client that sent
/// a line first (a node agent managing this process: `limit BYTES`) has it
/// passed to `order` after its snapshot; a plain reader gets its snapshot
/// and end of file at once.
pub fn serve(listener: UnixListener, snapshot: impl Fn() -> String, order: impl Fn(&str)) {
    for conn in listener.incoming() {
        match conn {
            Ok(mut c) => {
                let _ = c.write_all(snapshot().as_bytes());
                let _ = c.shutdown(std::net::Shutdown::Write);
                // A reader closes its end at our end of file, which ends this
                // read at once; an agent's line is already there.
                let _ = c.set_read_timeout(Some(std::time::Duration::from_millis(200)));
                let mut line = String::new();
                // An order is one short line; more is not one.
                if io::BufRead::read_line(&mut io::BufReader::new(io::Read::take(&mut c, 256)), &mut line).is_ok() && !line.trim().is_empty() {
                    order(line.trim());
                }
            }
            Err(e) => {
                tracing::debug!("statistics socket: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
