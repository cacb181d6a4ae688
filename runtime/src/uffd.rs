//! The userfaultfd kernel interface: a thin, safe wrapper over the ioctls.
//!
//! Debian's headers here are older than the kernel, so the ioctl numbers, feature
//! bits and structures of `<linux/userfaultfd.h>` up to UFFDIO_MOVE and
//! UFFDIO_POISON (Linux 6.8) are defined in this module. Every call returns
//! `io::Result`; the resolving ioctls report how many bytes they did before an
//! error, because the kernel does partial work on ranges.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The UFFD API version the kernel speaks.
const UFFD_API: u64 = 0xAA;
const UFFDIO: u64 = 0xAA;

const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}

const UFFDIO_API: u64 = iowr(0x3F, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: u64 = ior(0x01, std::mem::size_of::<UffdioRange>());
const UFFDIO_WAKE: u64 = ior(0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = iowr(0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = iowr(0x04, std::mem::size_of::<UffdioZeropage>());
const UFFDIO_MOVE: u64 = iowr(0x05, std::mem::size_of::<UffdioMove>());
const UFFDIO_POISON: u64 = iowr(0x08, std::mem::size_of::<UffdioPoison>());
/// `_IO(0xAA, 0x00)` on /dev/userfaultfd.
const USERFAULTFD_IOC_NEW: u64 = UFFDIO << 8;

/// Feature bits of UFFDIO_API (`UFFD_FEATURE_*`).
pub mod feature {
    /// Write-protect faults are reported with a flag.
    pub const PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    /// fork() hands a new userfaultfd for the child.
    pub const EVENT_FORK: u64 = 1 << 1;
    /// mremap() of a registered range is reported.
    pub const EVENT_REMAP: u64 = 1 << 2;
    /// madvise(DONTNEED/REMOVE/FREE) of a registered range is reported.
    pub const EVENT_REMOVE: u64 = 1 << 3;
    /// munmap() of a registered range is reported.
    pub const EVENT_UNMAP: u64 = 1 << 6;
    /// Faults raise SIGBUS in the faulting thread instead of a message.
    pub const SIGBUS: u64 = 1 << 7;
    /// Fault messages carry the faulting thread's id.
    pub const THREAD_ID: u64 = 1 << 8;
    /// Fault addresses are exact rather than page-aligned.
    pub const EXACT_ADDRESS: u64 = 1 << 11;
    /// Write-protect works on unpopulated anonymous ranges.
    pub const WP_UNPOPULATED: u64 = 1 << 13;
    /// UFFDIO_POISON.
    pub const POISON: u64 = 1 << 14;
    /// Asynchronous write-protect (for PAGEMAP_SCAN).
    pub const WP_ASYNC: u64 = 1 << 15;
    /// UFFDIO_MOVE.
    pub const MOVE: u64 = 1 << 16;
}

/// Registration modes (`UFFDIO_REGISTER_MODE_*`).
pub mod mode {
    /// Faults on missing pages.
    pub const MISSING: u64 = 1 << 0;
    /// Faults on write-protected pages.
    pub const WP: u64 = 1 << 1;
}

const COPY_MODE_DONTWAKE: u64 = 1 << 0;
const MOVE_MODE_ALLOW_SRC_HOLES: u64 = 1 << 1;

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}
#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}
#[repr(C)]
struct UffdioMove {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    moved: i64,
}
#[repr(C)]
struct UffdioPoison {
    range: UffdioRange,
    mode: u64,
    updated: i64,
}
/// `struct uffd_msg`: 32 bytes, an event byte and a 24-byte union.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawMsg {
    event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    arg: [u64; 3],
}
const MSG_SIZE: usize = std::mem::size_of::<RawMsg>();
const _: () = assert!(MSG_SIZE == 32);

/// One message read from a userfaultfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A thread touched a missing (or write-protected) page of a registered range.
    Fault {
        /// The faulting address (page-aligned unless EXACT_ADDRESS was asked for).
        addr: u64,
        /// The access was a write.
        write: bool,
        /// The page was write-protected, not missing.
        wp: bool,
    },
    /// The process forked; the child's registered ranges report to `uffd`.
    Fork {
        /// The new userfaultfd of the child, now open in this process.
        uffd: RawFd,
    },
    /// A registered range moved with mremap.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length moved.
        len: u64,
    },
    /// `madvise(DONTNEED/REMOVE/FREE)` dropped the pages of `[start, end)`.
    Remove {
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
    },
    /// `munmap` removed `[start, end)`.
    Unmap {
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
    },
    /// A message type this module does not know.
    Unknown(u8),
}

impl Event {
    fn from_raw(m: &RawMsg) -> Event {
        match m.event {
            UFFD_EVENT_PAGEFAULT => Event::Fault {
                addr: m.arg[1],
                write: m.arg[0] & UFFD_PAGEFAULT_FLAG_WRITE != 0,
                wp: m.arg[0] & UFFD_PAGEFAULT_FLAG_WP != 0,
            },
            UFFD_EVENT_FORK => Event::Fork { uffd: m.arg[0] as u32 as RawFd },
            UFFD_EVENT_REMAP => Event::Remap { from: m.arg[0], to: m.arg[1], len: m.arg[2] },
            UFFD_EVENT_REMOVE => Event::Remove { start: m.arg[0], end: m.arg[1] },
            UFFD_EVENT_UNMAP => Event::Unmap { start: m.arg[0], end: m.arg[1] },
            other => Event::Unknown(other),
        }
    }
}

/// Why a userfaultfd could not be opened, with what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Neither the syscall nor /dev/userfaultfd is usable.
    #[error(
        "userfaultfd is not permitted ({syscall}; /dev/userfaultfd: {dev}): run as root, \
         or grant CAP_SYS_PTRACE, or set the sysctl vm.unprivileged_userfaultfd=1, \
         or give the user read/write access to /dev/userfaultfd"
    )]
    NotPermitted {
        /// What the syscall said.
        syscall: io::Error,
        /// What the device said.
        dev: io::Error,
    },
    /// The kernel has no userfaultfd at all.
    #[error("this kernel has no userfaultfd (CONFIG_USERFAULTFD): {0}; farmem needs Linux 4.11 or later built with it")]
    Missing(io::Error),
    /// UFFDIO_API failed.
    #[error("UFFDIO_API handshake failed: {0}")]
    Handshake(io::Error),
    /// The kernel lacks features farmem cannot work without.
    #[error("the kernel's userfaultfd lacks required features {missing:#x} (has {available:#x}); farmem needs Linux 6.8 or later for UFFDIO_MOVE and UFFDIO_POISON")]
    MissingFeatures {
        /// Required bits the kernel did not offer.
        missing: u64,
        /// The bits it offered.
        available: u64,
    },
}

/// An open, handshaken userfaultfd.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    features: u64,
}

/// What a resolving ioctl did on a range before it stopped.
#[derive(Debug)]
pub struct Partial {
    /// Bytes done before the error.
    pub done: u64,
    /// The error that stopped it.
    pub error: io::Error,
}

impl Userfaultfd {
    /// Opens a userfaultfd (the syscall first, /dev/userfaultfd second), non-blocking
    /// and close-on-exec, user-mode faults only, and asks for `wanted` features.
    /// Features in `required` that the kernel lacks are an error; the others in
    /// `wanted` are granted if available (see [`Userfaultfd::features`]).
    pub fn open(wanted: u64, required: u64) -> Result<Self, OpenError> {
        let fd = Self::open_raw()?;
        // First handshake with no features to learn what the kernel offers; the API
        // ioctl may be done only once per fd, so a second fd asks for the subset.
        let available = Self::handshake(&fd, 0).map_err(OpenError::Handshake)?;
        let missing = required & !available;
        if missing != 0 {
            return Err(OpenError::MissingFeatures { missing, available });
        }
        let fd = Self::open_raw()?;
        let asked = wanted & available;
        Self::handshake(&fd, asked).map_err(OpenError::Handshake)?;
        Ok(Userfaultfd { fd, features: asked })
    }

    /// The features the kernel reports, without keeping a userfaultfd open.
    pub fn probe() -> Result<u64, OpenError> {
        let fd = Self::open_raw()?;
        Self::handshake(&fd, 0).map_err(OpenError::Handshake)
    }

    fn open_raw() -> Result<OwnedFd, OpenError> {
        const UFFD_USER_MODE_ONLY: libc::c_int = 1;
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // A full userfaultfd first: with UFFD_USER_MODE_ONLY, the kernel's own
        // accesses to a missing page (read(2) into an evicted buffer, write(2)
        // from one) fail with EFAULT instead of waiting for the fault handlers,
        // which breaks a program whose heap is under farmem (the LD_PRELOAD shim).
        // SAFETY: userfaultfd(2) takes only flags and returns a new fd or -1.
        let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if r >= 0 {
            // SAFETY: the syscall returned a fresh fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let full = io::Error::last_os_error();
        if full.raw_os_error() == Some(libc::ENOSYS) {
            return Err(OpenError::Missing(full));
        }
        if let Ok(fd) = Self::open_dev(flags) {
            return Ok(fd);
        }
        // SAFETY: as above.
        let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY) };
        if r >= 0 {
            // SAFETY: the syscall returned a fresh fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let syscall = io::Error::last_os_error();
        match Self::open_dev(flags) {
            Ok(fd) => Ok(fd),
            Err(dev) => Err(OpenError::NotPermitted { syscall, dev }),
        }
    }

    fn open_dev(flags: libc::c_int) -> io::Result<OwnedFd> {
        let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/userfaultfd")?;
        // SAFETY: USERFAULTFD_IOC_NEW takes the new fd's flags by value.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the ioctl returned a fresh fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    }

    fn handshake(fd: &OwnedFd, features: u64) -> io::Result<u64> {
        let mut api = UffdioApi { api: UFFD_API, features, ioctls: 0 };
        // SAFETY: `api` is a valid uffdio_api the kernel reads and writes.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut api) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(api.features)
    }

    /// The features this fd was granted.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether this fd was granted all of `bits`.
    pub fn has(&self, bits: u64) -> bool {
        self.features & bits == bits
    }

    fn ioctl<T>(&self, req: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: every caller passes the structure that matches `req`, fully
        // initialised; the kernel only touches memory inside it.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg as *mut T) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Registers `[start, start+len)` in `mode` ([`mode::MISSING`], [`mode::WP`]).
    pub fn register(&self, start: u64, len: u64, mode: u64) -> io::Result<()> {
        let mut reg = UffdioRegister { range: UffdioRange { start, len }, mode, ioctls: 0 };
        self.ioctl(UFFDIO_REGISTER, &mut reg)
    }

    /// Unregisters `[start, start+len)`.
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        self.ioctl(UFFDIO_UNREGISTER, &mut range)
    }

    /// Wakes threads waiting on faults in `[start, start+len)`.
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        self.ioctl(UFFDIO_WAKE, &mut range)
    }

    /// Copies `len` bytes from `src` into the missing pages at `dst` and, unless
    /// `wake` is false, wakes the threads waiting on them.
    ///
    /// # Safety
    /// `src..src+len` must be readable memory of this process that no one
    /// writes during the call.
    pub unsafe fn copy(&self, dst: u64, src: *const u8, len: u64, wake: bool) -> Result<(), Partial> {
        let mode = if wake { 0 } else { COPY_MODE_DONTWAKE };
        let mut c = UffdioCopy { dst, src: src as u64, len, mode, copy: 0 };
        self.ioctl(UFFDIO_COPY, &mut c).map_err(|error| Partial { done: c.copy.max(0) as u64, error })
    }

    /// Maps the shared zero page at the missing pages of `[start, start+len)`.
    pub fn zeropage(&self, start: u64, len: u64) -> Result<(), Partial> {
        let mut z = UffdioZeropage { range: UffdioRange { start, len }, mode: 0, zeropage: 0 };
        self.ioctl(UFFDIO_ZEROPAGE, &mut z).map_err(|error| Partial { done: z.zeropage.max(0) as u64, error })
    }

    /// Moves the pages of `[src, src+len)` to the missing pages at `dst` (both
    /// anonymous private; `dst` registered with this fd). Holes in the source are
    /// skipped when `allow_holes`, and leave holes at the destination.
    pub fn move_pages(&self, dst: u64, src: u64, len: u64, allow_holes: bool) -> Result<(), Partial> {
        let mode = if allow_holes { MOVE_MODE_ALLOW_SRC_HOLES } else { 0 };
        let mut m = UffdioMove { dst, src, len, mode, moved: 0 };
        self.ioctl(UFFDIO_MOVE, &mut m).map_err(|error| Partial { done: m.moved.max(0) as u64, error })
    }

    /// Marks `[start, start+len)` poisoned: any access raises SIGBUS.
    pub fn poison(&self, start: u64, len: u64) -> Result<(), Partial> {
        let mut p = UffdioPoison { range: UffdioRange { start, len }, mode: 0, updated: 0 };
        self.ioctl(UFFDIO_POISON, &mut p).map_err(|error| Partial { done: p.updated.max(0) as u64, error })
    }

    /// Reads the pending messages into `out`, without blocking. Returns how many
    /// were read; 0 when none is pending.
    pub fn read_events(&self, out: &mut [Event]) -> io::Result<usize> {
        const BATCH: usize = 64;
        let mut raw = [RawMsg { event: 0, _reserved1: 0, _reserved2: 0, _reserved3: 0, arg: [0; 3] }; BATCH];
        let want = out.len().min(BATCH);
        // SAFETY: `raw` holds `want` messages; read(2) writes at most that many bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), raw.as_mut_ptr().cast(), want * MSG_SIZE) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        let count = n as usize / MSG_SIZE;
        for (o, m) in out.iter_mut().zip(&raw[..count]) {
            *o = Event::from_raw(m);
        }
        Ok(count)
    }

    /// Waits up to `timeout_ms` (-1: forever) for a message or for `wake_fd` to
    /// become readable. Returns (uffd readable, wake_fd readable).
    pub fn poll(&self, wake_fd: RawFd, timeout_ms: i32) -> io::Result<(bool, bool)> {
        let mut fds = [
            libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: wake_fd, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: `fds` is a valid array of two pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok((false, false)) } else { Err(e) };
        }
        Ok((fds[0].revents != 0, fds[1].revents != 0))
    }

    /// Whether a message is pending, without waiting or taking it.
    pub fn pending(&self) -> bool {
        let mut fd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a zero timeout never blocks.
        unsafe { libc::poll(&mut fd, 1, 0) > 0 && fd.revents != 0 }
    }
}

impl AsRawFd for Userfaultfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Mapping;

    const PAGE: u64 = 4096;

    #[test]
    fn ioctl_numbers_match_the_kernel_abi() {
        // Values from <linux/userfaultfd.h> on a 6.8+ kernel.
        assert_eq!(UFFDIO_API, 0xc018aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010aa02);
        assert_eq!(UFFDIO_COPY, 0xc028aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020aa04);
        assert_eq!(UFFDIO_MOVE, 0xc028aa05);
        assert_eq!(UFFDIO_POISON, 0xc020aa08);
    }

    #[test]
    fn probe_reports_move_and_poison() {
        let f = Userfaultfd::probe().expect("userfaultfd available");
        assert!(f & feature::MOVE != 0, "features {f:#x}");
        assert!(f & feature::POISON != 0, "features {f:#x}");
    }

    #[test]
    fn move_takes_a_page_out_and_copy_puts_it_back() {
        let uffd = Userfaultfd::open(feature::MOVE | feature::EVENT_REMOVE, feature::MOVE).unwrap();
        let region = Mapping::anonymous(4 * PAGE as usize).unwrap();
        let staging = Mapping::anonymous(4 * PAGE as usize).unwrap();
        let base = region.addr() as u64;
        // SAFETY: the mapping is 4 pages long and ours.
        unsafe { std::ptr::write_bytes(region.addr(), 0x5a, 2 * PAGE as usize) };
        uffd.register(base, 4 * PAGE, mode::MISSING).unwrap();
        uffd.register(staging.addr() as u64, 4 * PAGE, mode::WP).unwrap();
        // Pages 0,1 present, 2,3 holes: MOVE with holes moves two pages.
        uffd.move_pages(staging.addr() as u64, base, 4 * PAGE, true).unwrap();
        // SAFETY: staging page 1 is present (just moved) and ours.
        assert_eq!(unsafe { *staging.addr().add(PAGE as usize) }, 0x5a);
        // SAFETY: staging page 0 is present.
        unsafe { uffd.copy(base, staging.addr(), PAGE, true) }.unwrap();
        // SAFETY: region page 0 is now present again.
        assert_eq!(unsafe { *region.addr() }, 0x5a);
        let again = unsafe { uffd.copy(base, staging.addr(), PAGE, true) }.unwrap_err();
        assert_eq!(again.error.raw_os_error(), Some(libc::EEXIST));
    }

    #[test]
    fn pending_sees_an_event_until_it_is_read() {
        let uffd = Userfaultfd::open(feature::EVENT_REMOVE, feature::EVENT_REMOVE).unwrap();
        let region = Mapping::anonymous(2 * PAGE as usize).unwrap();
        let base = region.addr() as u64;
        uffd.register(base, 2 * PAGE, mode::MISSING).unwrap();
        assert!(!uffd.pending());
        // The drop waits in the kernel until its REMOVE event is read.
        let dropper = std::thread::spawn(move || {
            // SAFETY: drops the pages of a mapping the test owns and never reads.
            unsafe { libc::madvise(base as *mut libc::c_void, PAGE as usize, libc::MADV_DONTNEED) }
        });
        let t0 = std::time::Instant::now();
        while !uffd.pending() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "the REMOVE event never showed");
            std::thread::yield_now();
        }
        let mut out = [Event::Unknown(0); 4];
        assert_eq!(uffd.read_events(&mut out).unwrap(), 1);
        assert!(matches!(out[0], Event::Remove { start, .. } if start == base), "{:?}", out[0]);
        assert!(!uffd.pending());
        assert_eq!(dropper.join().unwrap(), 0);
    }
}
