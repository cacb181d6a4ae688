//! Making the spill file: unnamed from the start (O_TMPFILE), or created and
//! unlinked at once where the file system refuses O_TMPFILE, mode 0600 either
//! way (design rule 6); then O_DIRECT if the file system takes it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::mem::Mapping;

/// An open, unlinked spill file.
pub(super) struct SpillFile {
    pub(super) file: File,
    /// For messages: the directory and how the file was made.
    pub(super) path: PathBuf,
    /// Whether reads and writes bypass the page cache.
    pub(super) direct: bool,
}

/// Makes the spill file in `dir`. `tmpfile` false skips O_TMPFILE (for file
/// systems that misreport it, and tests); `direct` false skips O_DIRECT.
pub(super) fn create(dir: &Path, tmpfile: bool, direct: bool) -> io::Result<SpillFile> {
    let cdir = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
    let base = libc::O_RDWR | libc::O_CLOEXEC;
    let mut made = None;
    if tmpfile {
        match open(&cdir, base | libc::O_TMPFILE) {
            Ok(file) => made = Some((file, dir.join("(unnamed O_TMPFILE spill file)"))),
            // EOPNOTSUPP: the file system has no O_TMPFILE; EISDIR: the
            // kernel predates it; EINVAL: some FUSE file systems.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
                tracing::info!("file tier: {} refuses O_TMPFILE ({e}); creating a named file and unlinking it at once", dir.display());
            }
            Err(e) => return Err(e),
        }
    }
    let (file, path) = match made {
        Some(made) => made,
        None => create_unlinked(dir, base)?,
    };
    let direct = direct && try_direct(&file);
    Ok(SpillFile { file, path, direct })
}

fn open(path: &CString, flags: i32) -> io::Result<File> {
    // SAFETY: a NUL-terminated path; the mode applies to a created file.
    let fd = unsafe { libc::open(path.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Creates a new file of a fresh name (O_EXCL, 0600) and unlinks it before
/// anything is written to it.
fn create_unlinked(dir: &Path, base: i32) -> io::Result<(File, PathBuf)> {
    static SERIAL: AtomicU32 = AtomicU32::new(0);
    loop {
        let name = dir.join(format!(".farmem-spill-{}-{}", std::process::id(), SERIAL.fetch_add(1, Relaxed)));
        let cname = CString::new(name.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
        match open(&cname, base | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW) {
            Ok(file) => {
                std::fs::remove_file(&name)?;
                let mut shown = name.into_os_string();
                shown.push(" (unlinked)");
                return Ok((file, shown.into()));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Turns O_DIRECT on for `file` if a 4 KiB aligned write and read back work
/// with it; otherwise leaves buffered I/O and says so.
fn try_direct(file: &File) -> bool {
    let fd = file.as_raw_fd();
    let probe = || -> io::Result<()> {
        set_direct(fd, true)?;
        // An aligned block of our own (design rule 2), written where segment 0
        // will be written anyway.
        let block = Mapping::anonymous(4096)?;
        // SAFETY: the mapping holds 4096 bytes and outlives the calls.
        let w = unsafe { libc::pwrite(fd, block.addr().cast(), 4096, 0) };
        if w != 4096 {
            return Err(if w < 0 { io::Error::last_os_error() } else { io::Error::other(format!("short write of {w} bytes")) });
        }
        // SAFETY: as above.
        let r = unsafe { libc::pread(fd, block.addr().cast(), 4096, 0) };
        if r != 4096 {
            return Err(if r < 0 { io::Error::last_os_error() } else { io::Error::other(format!("short read of {r} bytes")) });
        }
        Ok(())
    };
    match probe() {
        Ok(()) => true,
        Err(e) => {
            tracing::info!("file tier: O_DIRECT does not work on the spill file ({e}); using buffered I/O");
            let _ = set_direct(fd, false);
            false
        }
    }
}

fn set_direct(fd: i32, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL touch only its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
