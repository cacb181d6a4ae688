//! The tier for byte-addressable far memory (CXL, DAX): pages kept raw in a
//! shared mapping of a file or device the user names.
//!
//! - **Backings.** [`MmapTier::open`] takes a `/dev/daxX.Y` character device
//!   (any other character device but /dev/zero is refused)
//!   (mapped as it is, its size read from `/sys/dev/char/MAJ:MIN/size` and its
//!   alignment from `.../align` when the kernel has them), or a regular file, for
//!   instance on a DAX file system. [`MmapTier::from_memfd`] uses an anonymous
//!   memfd, for tests and for hosts without such memory. A directory, any other
//!   kind of file, a path that cannot be opened and a size that is 0 or not a
//!   multiple of 4096 are refused with [`TierError::BadBacking`] or
//!   [`TierError::BadLimit`], naming the path or the size.
//! - **Regular files hold heap contents** (design rule 6). One that did not
//!   exist is created with mode 0600 and unlinked at once, so it is gone when
//!   the process is, even after a crash. An existing file is used only if it is
//!   empty (farmem never overwrites data); it is sized to the limit and emptied
//!   again when the tier is dropped. Its blocks are
//!   reserved up front with `fallocate`: a store writes through the mapping,
//!   where a full file system could only answer with SIGBUS, so running out of
//!   space must happen at `open`, where it is an error. A file system without
//!   `fallocate` is refused for the same reason. A device keeps what was
//!   written to it after the process ends; nothing zeroes 64 GiB on exit.
//! - **Slots.** The region is cut into 4096-byte slots handed out from a free
//!   stack, itself in a mapping of the tier's own (never on the Rust heap). A
//!   store copies the page into a slot; a load is one `memcpy` back, no I/O call.
//!   When every slot is in use a store fails with [`TierError::Full`] and changes
//!   nothing; nothing is ever dropped to make room.
//! - **Handles.** A handle is a slot number (32 bits) and the slot's 24-bit
//!   generation, bumped on each remove: a removed handle loads as
//!   [`TierError::UnknownHandle`], never as the page that reused its slot, and a
//!   second remove of it is ignored instead of freeing the slot twice.
//! - **Giving memory back.** On a memfd, `remove` punches a hole over the slot
//!   (`FALLOC_FL_PUNCH_HOLE`, one call per page; batching would save syscalls
//!   but `remove` is off the fault path), so freed pages go back to the kernel.
//!   Regular files keep their reserved blocks, for the SIGBUS reason above; a
//!   device's memory is the device's.
//! - **Concurrency.** `load` takes no lock and allocates nothing: one atomic
//!   read of the slot's generation and the copy. `store` and `remove` hold a
//!   mutex only to pop or push a slot number, never across a copy or a syscall.
//! - **Not here.** No checksum on stored pages: the medium is memory, as for T1.
//!   No NUMA binding (`mbind` of the mapping to the CXL node): a DAX device is
//!   already the node's memory, and for a file the kernel's placement applies.
//!   Pages are stored raw only: the spec's `mmap:...:lz4` form is for the
//!   runtime to build from a compressing tier, not a mode of this one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::Mutex;

use memmap2::{MmapOptions, MmapRaw};

use crate::mem::Mapping;
use crate::{Capacity, Handle, Page, PageClass, Tier, TierError, TierStats, PAGE_SIZE};

const NAME: &str = "mmap";
const SLOT_BITS: u32 = 32;
const GEN_BITS: u32 = Handle::BITS - SLOT_BITS;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// What the mapping is of; decides what `remove` and `drop` do to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backing {
    /// An anonymous memfd: freed slots are punched out.
    Memfd,
    /// A regular file we created and unlinked: it goes with the process.
    NewFile,
    /// A regular file that was there before: emptied again on drop.
    OldFile,
    /// A character device (`/dev/dax`): used as it is.
    Device,
}

/// Which slots are free; guarded by the tier's mutex, the numbers themselves in `free_stack`.
struct Alloc {
    /// Slots below this have been handed out at least once.
    next: u64,
    /// How many slot numbers `free_stack` holds.
    free_len: usize,
}

/// Pages stored raw in a shared mapping of a DAX/CXL device, a file or a memfd.
pub struct MmapTier {
    map: MmapRaw,
    file: File,
    path: PathBuf,
    backing: Backing,
    slots: u64,
    /// One `AtomicU32` per slot: `generation << 1 | live`.
    states: Mapping,
    /// One `u32` per slot: the free slot numbers, a stack of `Alloc::free_len`.
    free_stack: Mapping,
    alloc: Mutex<Alloc>,
    pages: AtomicU64,
    stores: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
}

impl MmapTier {
    /// Maps `path` and keeps up to `limit_bytes` of pages in it: a regular file
    /// (made if missing, mode 0600, sized to the limit) or a character device
    /// such as `/dev/dax0.0` (the smaller of its size and the limit).
    pub fn open(path: impl AsRef<Path>, limit_bytes: u64) -> Result<Self, TierError> {
        let path = path.as_ref();
        let len = check_limit(limit_bytes)?;
        let bad = |reason: String| TierError::BadBacking { tier: NAME, path: path.to_owned(), reason };
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                Err(bad("it is a directory; give a /dev/dax device, or a file (on a DAX file system) to use or create".into()))
            }
            Ok(m) if m.file_type().is_char_device() => {
                // Writing pages into any other device (/dev/mem, a tty) would
                // do harm: only DAX devices, and /dev/zero for tests.
                if !is_dax_or_zero(m.rdev()) {
                    return Err(bad("it is a character device but not a DAX device (its /sys/dev/char/MAJ:MIN/subsystem is not dax)".into()));
                }
                let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
                let len = device_len(m.rdev(), len).map_err(bad)?;
                Self::with_file(file, path, Backing::Device, len)
            }
            Ok(m) if m.is_file() => {
                // A file with data is somebody's: never overwrite it. (A file
                // farmem made is unlinked at once, so none is left by a crash.)
                if m.len() > 0 {
                    return Err(bad(format!(
                        "it exists and holds {} bytes; farmem never overwrites a file: name a new or empty file",
                        m.len()
                    )));
                }
                let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
                Self::sized_file(file, path, Backing::OldFile, len)
            }
            Ok(_) => Err(bad("it is neither a regular file nor a character device (a block device is not byte-addressable through mmap)".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| bad(format!("cannot create it: {e}")))?;
                // Gone with the process, crash or not; the open file keeps the data.
                std::fs::remove_file(path).map_err(|e| bad(format!("cannot unlink it after creating it: {e}")))?;
                Self::sized_file(file, path, Backing::NewFile, len)
            }
            Err(e) => Err(bad(format!("cannot look at it: {e}"))),
        }
    }

    /// Keeps up to `limit_bytes` of pages in an anonymous memfd (`MFD_CLOEXEC`):
    /// the tier's code path with ordinary memory, for tests and for hosts with
    /// no CXL or DAX memory.
    pub fn from_memfd(limit_bytes: u64) -> Result<Self, TierError> {
        let len = check_limit(limit_bytes)?;
        let path = PathBuf::from("memfd:farmem-mmap");
        // SAFETY: the name is a NUL-terminated literal; the call has no other inputs.
        let fd = unsafe { libc::memfd_create(c"farmem-mmap".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(TierError::BadBacking { tier: NAME, path, reason: format!("memfd_create failed: {}", io::Error::last_os_error()) });
        }
        // SAFETY: fd was just returned by memfd_create and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64)
            .map_err(|e| TierError::BadBacking { tier: NAME, path: path.clone(), reason: format!("cannot size it to {len} bytes: {e}") })?;
        Self::with_file(file, &path, Backing::Memfd, len)
    }

    /// Sizes a regular file to `len` and reserves its blocks.
    fn sized_file(file: File, path: &Path, backing: Backing, len: usize) -> Result<Self, TierError> {
        let bad = |reason: String| TierError::BadBacking { tier: NAME, path: path.to_owned(), reason };
        file.set_len(len as u64).map_err(|e| bad(format!("cannot size it to {len} bytes: {e}")))?;
        // SAFETY: a valid open descriptor and a range inside the file.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if r < 0 {
            // A sparse file could answer a store with SIGBUS when its file
            // system fills up, taking the process down: refuse it here instead.
            let e = io::Error::last_os_error();
            return Err(bad(format!("cannot reserve {len} bytes for it (fallocate): {e}; use a file system that supports fallocate, or a /dev/dax device")));
        }
        Self::with_file(file, path, backing, len)
    }

    fn with_file(file: File, path: &Path, backing: Backing, len: usize) -> Result<Self, TierError> {
        let bad = |reason: String| TierError::BadBacking { tier: NAME, path: path.to_owned(), reason };
        let map = MmapOptions::new().len(len).map_raw(&file).map_err(|e| bad(format!("cannot map {len} bytes of it: {e}")))?;
        let slots = (len / PAGE_SIZE) as u64;
        let os = |op| move |source| TierError::Os { op, source };
        let states = Mapping::anonymous(slots as usize * 4).map_err(os("mapping the mmap tier's slot states"))?;
        let free_stack = Mapping::anonymous(slots as usize * 4).map_err(os("mapping the mmap tier's free list"))?;
        Ok(MmapTier {
            map,
            file,
            path: path.to_owned(),
            backing,
            slots,
            states,
            free_stack,
            alloc: Mutex::new(Alloc { next: 0, free_len: 0 }),
            pages: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            load_errors: AtomicU64::new(0),
        })
    }

    /// The path the tier was opened on (`memfd:farmem-mmap` for a memfd).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of storage the backing file holds now (`st_blocks * 512`): shows
    /// holes punched on a memfd and blocks reserved in a file; 0 for a device.
    pub fn allocated_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.blocks() * 512)
    }

    fn state(&self, slot: u64) -> &AtomicU32 {
        debug_assert!(slot < self.slots);
        // SAFETY: slot < slots, the mapping holds `slots` u32s, is page-aligned
        // (so each is 4-aligned), zero-initialised, and lives as long as `self`.
        unsafe { &*self.states.addr().cast::<AtomicU32>().add(slot as usize) }
    }

    fn slot_ptr(&self, slot: u64) -> *mut u8 {
        debug_assert!(slot < self.slots);
        // SAFETY: slot < slots, so the page lies inside the mapping.
        unsafe { self.map.as_mut_ptr().add(slot as usize * PAGE_SIZE) }
    }

    fn take_slot(&self) -> Option<u64> {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        if a.free_len > 0 {
            a.free_len -= 1;
            // SAFETY: free_len < slots entries of u32 lie inside free_stack; the lock is held.
            return Some(unsafe { *self.free_stack.addr().cast::<u32>().add(a.free_len) } as u64);
        }
        if a.next < self.slots {
            a.next += 1;
            return Some(a.next - 1);
        }
        None
    }

    fn give_slot(&self, slot: u64) {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        // A slot is pushed once per live period (the remove CAS), so the stack never
        // holds more than `slots` numbers.
        assert!((a.free_len as u64) < self.slots, "mmap tier free list overflow");
        // SAFETY: free_len < slots, inside free_stack; the lock is held.
        unsafe { *self.free_stack.addr().cast::<u32>().add(a.free_len) = slot as u32 };
        a.free_len += 1;
    }
}

/// The mapping length for a limit, or the error naming it.
fn check_limit(limit_bytes: u64) -> Result<usize, TierError> {
    if limit_bytes == 0 || !limit_bytes.is_multiple_of(PAGE_SIZE as u64) || limit_bytes > isize::MAX as u64 {
        return Err(TierError::BadLimit { tier: NAME, limit_bytes });
    }
    // Handles have 32 bits for the slot.
    Ok(limit_bytes.min((1u64 << SLOT_BITS) * PAGE_SIZE as u64) as usize)
}

/// How much of a character device to map: the limit, cut to the device's size
/// and alignment when sysfs tells them (device DAX refuses unaligned lengths).
/// Whether the character device `rdev` is a DAX device (by its sysfs
/// subsystem) or /dev/zero (major 1, minor 5).
fn is_dax_or_zero(rdev: u64) -> bool {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    if (major, minor) == (1, 5) {
        return true;
    }
    std::fs::read_link(format!("/sys/dev/char/{major}:{minor}/subsystem"))
        .is_ok_and(|l| l.file_name().is_some_and(|n| n == "dax"))
}

fn device_len(rdev: u64, limit: usize) -> Result<usize, String> {
    let dir = format!("/sys/dev/char/{}:{}", libc::major(rdev), libc::minor(rdev));
    let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let mut len = limit as u64;
    if let Some(size) = read("size") {
        len = len.min(size);
    }
    let align = read("align").filter(|a| a.is_power_of_two() && *a >= PAGE_SIZE as u64).unwrap_or(PAGE_SIZE as u64);
    len -= len % align; // align is a power of two >= 4096, so len stays page-aligned
    if len == 0 {
        return Err(format!("the device is smaller than one {align}-byte unit (size from {dir}/size)"));
    }
    Ok(len as usize)
}

fn handle(slot: u64, gen: u32) -> Handle {
    Handle::new((gen as u64) << SLOT_BITS | slot)
}

fn split(h: Handle) -> (u64, u32) {
    (h.raw() & ((1 << SLOT_BITS) - 1), (h.raw() >> SLOT_BITS) as u32)
}

impl Tier for MmapTier {
    fn name(&self) -> &str {
        NAME
    }

    fn store(&self, page: &Page, _class: PageClass) -> Result<Handle, TierError> {
        let slot = self.take_slot().ok_or(TierError::Full { tier: NAME, limit_bytes: self.slots * PAGE_SIZE as u64 })?;
        let state = self.state(slot);
        let gen = state.load(Relaxed) >> 1;
        // SAFETY: the slot is free, so no handle names it and no one else reads or
        // writes it until the state below publishes it; `page` is a full page.
        unsafe { std::ptr::copy_nonoverlapping(page.as_ptr(), self.slot_ptr(slot), PAGE_SIZE) };
        state.store(gen << 1 | 1, Release);
        self.pages.fetch_add(1, Relaxed);
        self.stores.fetch_add(1, Relaxed);
        Ok(handle(slot, gen))
    }

    fn load(&self, handle: Handle, out: &mut Page) -> Result<(), TierError> {
        let (slot, gen) = split(handle);
        if slot >= self.slots || self.state(slot).load(Acquire) != gen << 1 | 1 {
            self.load_errors.fetch_add(1, Relaxed);
            return Err(TierError::UnknownHandle(handle));
        }
        // SAFETY: the handle is live, so its slot holds the page it was stored with
        // and is not written until the handle is removed, which its owner does not
        // do during a load (the Tier contract).
        unsafe { std::ptr::copy_nonoverlapping(self.slot_ptr(slot), out.as_mut_ptr(), PAGE_SIZE) };
        self.loads.fetch_add(1, Relaxed);
        Ok(())
    }

    fn remove(&self, handle: Handle) {
        let (slot, gen) = split(handle);
        if slot >= self.slots {
            return;
        }
        let dead = ((gen + 1) & GEN_MASK) << 1;
        // A stale or repeated remove fails here and must not free the slot again.
        if self.state(slot).compare_exchange(gen << 1 | 1, dead, AcqRel, Relaxed).is_err() {
            return;
        }
        if self.backing == Backing::Memfd {
            // Before the slot is free again, or the punch could hit its next page.
            // A failure only leaves the memory in use; the slot is still correct.
            // SAFETY: a valid descriptor and a page-aligned range inside the file.
            unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    (slot * PAGE_SIZE as u64) as libc::off_t,
                    PAGE_SIZE as libc::off_t,
                )
            };
        }
        self.give_slot(slot);
        self.pages.fetch_sub(1, Relaxed);
    }

    fn capacity(&self) -> Capacity {
        Capacity { limit_bytes: self.slots * PAGE_SIZE as u64, used_bytes: self.pages.load(Relaxed) * PAGE_SIZE as u64 }
    }

    fn stats(&self) -> TierStats {
        TierStats::uncompressed(self.pages.load(Relaxed), self.stores.load(Relaxed), self.loads.load(Relaxed), self.load_errors.load(Relaxed))
    }
}

impl Drop for MmapTier {
    fn drop(&mut self) {
        if self.backing == Backing::OldFile {
            // The file outlives us under its name; the heap contents must not.
            // Nothing reads the mapping any more, so truncating under it is safe.
            let _ = self.file.set_len(0);
        }
    }
}

impl std::fmt::Debug for MmapTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapTier").field("path", &self.path).field("backing", &self.backing).field("slots", &self.slots).finish()
    }
}
