//! The tier for byte-addressable far memory (CXL, DAX): pages kept raw or
//! compressed in a shared mapping of a file or device the user names.
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
//! - **Raw pages** (`mmap:PATH:SIZE`, [`MmapForm::Raw`]). The region is cut
//!   into 4096-byte slots handed out from a free stack, itself in a mapping
//!   of the tier's own (never on the Rust heap). A store copies the page into
//!   a slot; a load is one `memcpy` back.
//! - **Compressed pages** (`mmap:PATH:SIZE:lz4`, `:zstd`, `:zstd:LEVEL`;
//!   [`MmapConfig::form`]). Pages are compressed with T1's codec and packed in
//!   size classes of 64 KiB slabs inside the region (module `packed`); pages
//!   of one repeated word take no region space. A load decodes straight from
//!   the region: no I/O call either. A region holds up to 16 pages per 4 KiB.
//! - **Full.** When no slot (or no object of the class and no free slab) is
//!   left, a store fails with [`TierError::Full`] and changes nothing;
//!   nothing is ever dropped to make room.
//! - **NUMA** ([`MmapConfig::numa_node`], `numa=N` in the spec). The mapping
//!   is bound to node N with `mbind(MPOL_BIND)` right after it is made,
//!   before anything touches it (and before a file's blocks are reserved), so
//!   memory of a memfd or a tmpfs file such as `/dev/shm/farmem` comes from
//!   that node: the way to use CXL memory that shows up as a CPU-less node.
//!   A node that does not exist, or has no memory, is refused at open with
//!   [`TierError::BadBacking`] naming it. (A `/dev/dax` device is the node's
//!   memory already, and a disk file's page cache ignores the binding.)
//! - **Handles.** A handle is a slot (or entry) number (32 bits) and its
//!   24-bit generation, bumped on each remove: a removed handle loads as
//!   [`TierError::UnknownHandle`], never as the page that reused its slot, and a
//!   second remove of it is ignored instead of freeing the slot twice.
//! - **Giving memory back.** On a memfd, `remove` punches a hole
//!   (`FALLOC_FL_PUNCH_HOLE`) over a raw page's slot, or over a compressed
//!   tier's slab once its last object is gone, so freed pages go back to the
//!   kernel (one call per page or slab; `remove` is off the fault path).
//!   Regular files keep their reserved blocks, for the SIGBUS reason above; a
//!   device's memory is the device's.
//! - **Concurrency.** `load` takes no lock and allocates nothing: one atomic
//!   read of the slot's state (two words for a compressed entry) and the copy
//!   or the decode. `store` and `remove` hold a mutex only to pick or give
//!   back a slot, object or entry, never across a copy, a compression or a
//!   syscall.
//! - **Statistics.** [`TierStats`] with load and store latency percentiles;
//!   for compressed pages `bytes_used` is the slabs in use plus the entry
//!   table and slab metadata kept in RAM, and `capacity().used_bytes` the
//!   region's slabs alone.
//! - **Not here.** No checksum on stored pages: the medium is memory, as for
//!   T1. No compaction of compressed slabs: objects never move, and a class
//!   fills its part-used slabs before it takes a new one.

mod numa;
mod packed;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::Mutex;
use std::time::Instant;

use memmap2::{MmapOptions, MmapRaw};

use crate::latency::OpLatency;
use crate::mem::Mapping;
use crate::{Capacity, Codec, Handle, MmapForm, Page, PageClass, SpillTier, Tier, TierError, TierStats, PAGE_SIZE};
use packed::Packed;

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

/// How an [`MmapTier`] keeps pages, beyond the file or device it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapConfig {
    /// The most the tier may hold, in bytes of the region: a positive
    /// multiple of 4096 (a device may cut it to its size).
    pub limit_bytes: u64,
    /// Raw 4096-byte slots (the default), or compressed with lz4 or zstd.
    pub form: MmapForm,
    /// Binds the mapping to this NUMA node before first touch. Default none.
    pub numa_node: Option<u32>,
}

impl MmapConfig {
    /// Raw pages, no NUMA binding, up to `limit_bytes`.
    pub fn new(limit_bytes: u64) -> Self {
        MmapConfig { limit_bytes, form: MmapForm::Raw, numa_node: None }
    }

    /// This config with pages stored in `form`.
    pub fn with_form(self, form: MmapForm) -> Self {
        MmapConfig { form, ..self }
    }

    /// This config with the mapping bound to NUMA node `node`.
    pub fn on_node(self, node: u32) -> Self {
        MmapConfig { numa_node: Some(node), ..self }
    }
}

/// Which slots are free; guarded by the raw layout's mutex, the numbers themselves in `free_stack`.
struct Alloc {
    /// Slots below this have been handed out at least once.
    next: u64,
    /// How many slot numbers `free_stack` holds.
    free_len: usize,
}

/// Raw pages: one 4096-byte slot each.
struct RawSlots {
    slots: u64,
    /// One `AtomicU32` per slot: `generation << 1 | live`.
    states: Mapping,
    /// One `u32` per slot: the free slot numbers, a stack of `Alloc::free_len`.
    free_stack: Mapping,
    alloc: Mutex<Alloc>,
    pages: AtomicU64,
}

/// How the region is laid out.
// One per tier, never moved about: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Layout {
    Raw(RawSlots),
    Packed(Packed),
}

/// Pages stored raw or compressed in a shared mapping of a DAX/CXL device, a
/// file or a memfd.
pub struct MmapTier {
    map: MmapRaw,
    file: File,
    path: PathBuf,
    backing: Backing,
    layout: Layout,
    numa_node: Option<u32>,
    stores: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    latency: OpLatency,
}

impl MmapTier {
    /// Maps `path` and keeps up to `limit_bytes` of pages in it, raw: a regular
    /// file (made if missing, mode 0600, sized to the limit) or a character
    /// device such as `/dev/dax0.0` (the smaller of its size and the limit).
    pub fn open(path: impl AsRef<Path>, limit_bytes: u64) -> Result<Self, TierError> {
        Self::open_with(path, MmapConfig::new(limit_bytes))
    }

    /// As [`MmapTier::open`], with pages stored and the mapping bound as
    /// `config` says.
    pub fn open_with(path: impl AsRef<Path>, config: MmapConfig) -> Result<Self, TierError> {
        let path = path.as_ref();
        let len = check_limit(config.limit_bytes)?;
        let bad = |reason: String| TierError::BadBacking { tier: NAME, path: path.to_owned(), reason };
        // Before anything is created or opened: a refused node leaves nothing behind.
        if let Some(reason) = config.numa_node.and_then(numa::check_node) {
            return Err(bad(reason));
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Err(bad("it is a directory; give a /dev/dax device, or a file (on a DAX file system) to use or create".into())),
            Ok(m) if m.file_type().is_char_device() => {
                // Writing pages into any other device (/dev/mem, a tty) would
                // do harm: only DAX devices, and /dev/zero for tests.
                if !is_dax_or_zero(m.rdev()) {
                    return Err(bad("it is a character device but not a DAX device (its /sys/dev/char/MAJ:MIN/subsystem is not dax)".into()));
                }
                let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
                let len = device_len(m.rdev(), len).map_err(bad)?;
                Self::with_file(file, path, Backing::Device, len, config)
            }
            Ok(m) if m.is_file() => {
                // A file with data is somebody's: never overwrite it. (A file
                // farmem made is unlinked at once, so none is left by a crash.)
                if m.len() > 0 {
                    return Err(bad(format!("it exists and holds {} bytes; farmem never overwrites a file: name a new or empty file", m.len())));
                }
                let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
                Self::sized_file(file, path, Backing::OldFile, len, config)
            }
            Ok(_) => Err(bad("it is neither a regular file nor a character device (a block device is not byte-addressable through mmap)".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let file =
                    OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path).map_err(|e| bad(format!("cannot create it: {e}")))?;
                // Gone with the process, crash or not; the open file keeps the data.
                std::fs::remove_file(path).map_err(|e| bad(format!("cannot unlink it after creating it: {e}")))?;
                Self::sized_file(file, path, Backing::NewFile, len, config)
            }
            Err(e) => Err(bad(format!("cannot look at it: {e}"))),
        }
    }

    /// Keeps up to `limit_bytes` of pages raw in an anonymous memfd
    /// (`MFD_CLOEXEC`): the tier's code path with ordinary memory, for tests
    /// and for hosts with no CXL or DAX memory.
    pub fn from_memfd(limit_bytes: u64) -> Result<Self, TierError> {
        Self::memfd_with(MmapConfig::new(limit_bytes))
    }

    /// As [`MmapTier::from_memfd`], with pages stored and the mapping bound as
    /// `config` says (a memfd's pages are allocated on the bound node).
    pub fn memfd_with(config: MmapConfig) -> Result<Self, TierError> {
        let len = check_limit(config.limit_bytes)?;
        let path = PathBuf::from("memfd:farmem-mmap");
        if let Some(reason) = config.numa_node.and_then(numa::check_node) {
            return Err(TierError::BadBacking { tier: NAME, path, reason });
        }
        // SAFETY: the name is a NUL-terminated literal; the call has no other inputs.
        let fd = unsafe { libc::memfd_create(c"farmem-mmap".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(TierError::BadBacking { tier: NAME, path, reason: format!("memfd_create failed: {}", io::Error::last_os_error()) });
        }
        // SAFETY: fd was just returned by memfd_create and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64).map_err(|e| TierError::BadBacking {
            tier: NAME,
            path: path.clone(),
            reason: format!("cannot size it to {len} bytes: {e}"),
        })?;
        Self::with_file(file, &path, Backing::Memfd, len, config)
    }

    /// The tier of an `mmap:PATH:SIZE[...]` spec part; other kinds are refused.
    pub fn from_spill(spill: &SpillTier) -> Result<Self, TierError> {
        match spill {
            SpillTier::Mmap { path, size_bytes, form, numa } => Self::open_with(path, MmapConfig { limit_bytes: *size_bytes, form: *form, numa_node: *numa }),
            SpillTier::File { .. } | SpillTier::Remote(_) => {
                Err(TierError::BadBacking { tier: NAME, path: PathBuf::from(spill.to_string()), reason: "not an mmap:PATH:SIZE tier".into() })
            }
        }
    }

    /// Sizes a regular file to `len`; its blocks are reserved once it is mapped.
    fn sized_file(file: File, path: &Path, backing: Backing, len: usize, config: MmapConfig) -> Result<Self, TierError> {
        let bad = |reason: String| TierError::BadBacking { tier: NAME, path: path.to_owned(), reason };
        file.set_len(len as u64).map_err(|e| bad(format!("cannot size it to {len} bytes: {e}")))?;
        Self::with_file(file, path, backing, len, config)
    }

    fn with_file(file: File, path: &Path, backing: Backing, len: usize, config: MmapConfig) -> Result<Self, TierError> {
        let r = Self::map_file(&file, path, backing, len, config);
        if r.is_err() && backing == Backing::OldFile {
            // Somebody's empty file: leave it empty, as it was.
            let _ = file.set_len(0);
        }
        let (map, layout) = r?;
        Ok(MmapTier {
            map,
            file,
            path: path.to_owned(),
            backing,
            layout,
            numa_node: config.numa_node,
            stores: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            load_errors: AtomicU64::new(0),
            latency: OpLatency::default(),
        })
    }

    /// Maps the file, binds the mapping, reserves a regular file's blocks and
    /// sets up the layout, in that order.
    fn map_file(file: &File, path: &Path, backing: Backing, len: usize, config: MmapConfig) -> Result<(MmapRaw, Layout), TierError> {
        let bad = |reason: String| TierError::BadBacking { tier: NAME, path: path.to_owned(), reason };
        let map = MmapOptions::new().len(len).map_raw(file).map_err(|e| bad(format!("cannot map {len} bytes of it: {e}")))?;
        if let Some(node) = config.numa_node {
            // Before any touch, and before fallocate, which on tmpfs allocates
            // the pages by the policy the file keeps for the range.
            numa::bind(map.as_mut_ptr(), len, node).map_err(|e| bad(format!("cannot bind its mapping to NUMA node {node} (mbind MPOL_BIND): {e}")))?;
        }
        if matches!(backing, Backing::NewFile | Backing::OldFile) {
            // SAFETY: a valid open descriptor and a range inside the file.
            let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
            if r < 0 {
                // A sparse file could answer a store with SIGBUS when its file
                // system fills up, taking the process down: refuse it here instead.
                let e = io::Error::last_os_error();
                return Err(bad(format!(
                    "cannot reserve {len} bytes for it (fallocate): {e}; use a file system that supports fallocate, or a /dev/dax device"
                )));
            }
        }
        let os = |op| move |source| TierError::Os { op, source };
        let layout = match config.form {
            MmapForm::Raw => {
                let slots = (len / PAGE_SIZE) as u64;
                Layout::Raw(RawSlots {
                    slots,
                    states: Mapping::anonymous(slots as usize * 4).map_err(os("mapping the mmap tier's slot states"))?,
                    free_stack: Mapping::anonymous(slots as usize * 4).map_err(os("mapping the mmap tier's free list"))?,
                    alloc: Mutex::new(Alloc { next: 0, free_len: 0 }),
                    pages: AtomicU64::new(0),
                })
            }
            MmapForm::Lz4 => Layout::Packed(Packed::new(len, Codec::Lz4).map_err(os("mapping the mmap tier's entry table"))?),
            MmapForm::Zstd { level } => Layout::Packed(Packed::new(len, Codec::Zstd { level }).map_err(os("mapping the mmap tier's entry table"))?),
        };
        Ok((map, layout))
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

    /// How pages are stored.
    pub fn form(&self) -> MmapForm {
        match &self.layout {
            Layout::Raw(_) => MmapForm::Raw,
            Layout::Packed(p) => match p.codec() {
                Codec::Lz4 => MmapForm::Lz4,
                Codec::Zstd { level } => MmapForm::Zstd { level },
            },
        }
    }

    /// The NUMA node the mapping is bound to, if any.
    pub fn numa_node(&self) -> Option<u32> {
        self.numa_node
    }

    /// Punches `[offset, offset+len)` out of a memfd, giving its memory back;
    /// does nothing to other backings.
    fn punch(&self, offset: usize, len: usize) {
        if self.backing == Backing::Memfd {
            // A failure only leaves the memory in use; the slot is still correct.
            // SAFETY: a valid descriptor and a page-aligned range inside the file.
            unsafe {
                libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset as libc::off_t, len as libc::off_t)
            };
        }
    }

    fn slot_ptr(&self, slot: u64) -> *mut u8 {
        // SAFETY: callers pass a slot of the raw layout (< slots), so the page
        // lies inside the mapping.
        unsafe { self.map.as_mut_ptr().add(slot as usize * PAGE_SIZE) }
    }
}

impl RawSlots {
    fn state(&self, slot: u64) -> &AtomicU32 {
        debug_assert!(slot < self.slots);
        // SAFETY: slot < slots, the mapping holds `slots` u32s, is page-aligned
        // (so each is 4-aligned), zero-initialised, and lives as long as `self`.
        unsafe { &*self.states.addr().cast::<AtomicU32>().add(slot as usize) }
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
    std::fs::read_link(format!("/sys/dev/char/{major}:{minor}/subsystem")).is_ok_and(|l| l.file_name().is_some_and(|n| n == "dax"))
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
        let start = Instant::now();
        let r = match &self.layout {
            Layout::Raw(raw) => self.store_raw(raw, page),
            Layout::Packed(p) => p.store(self.map.as_mut_ptr(), page),
        };
        if r.is_ok() {
            self.stores.fetch_add(1, Relaxed);
        }
        self.latency.store.record_since(start);
        r
    }

    fn load(&self, handle: Handle, out: &mut Page) -> Result<(), TierError> {
        let start = Instant::now();
        let r = match &self.layout {
            Layout::Raw(raw) => self.load_raw(raw, handle, out),
            Layout::Packed(p) => p.load(self.map.as_ptr(), handle, out, &self.path),
        };
        match r {
            Ok(()) => self.loads.fetch_add(1, Relaxed),
            Err(_) => self.load_errors.fetch_add(1, Relaxed),
        };
        self.latency.load.record_since(start);
        r
    }

    fn remove(&self, handle: Handle) {
        match &self.layout {
            Layout::Raw(raw) => self.remove_raw(raw, handle),
            Layout::Packed(p) => p.remove(self.map.as_mut_ptr(), handle, |offset, len| self.punch(offset, len)),
        }
    }

    fn capacity(&self) -> Capacity {
        match &self.layout {
            Layout::Raw(raw) => Capacity { limit_bytes: raw.slots * PAGE_SIZE as u64, used_bytes: raw.pages.load(Relaxed) * PAGE_SIZE as u64 },
            Layout::Packed(p) => Capacity { limit_bytes: self.map.len() as u64, used_bytes: p.counts.slab_bytes.load(Relaxed) },
        }
    }

    fn stats(&self) -> TierStats {
        let (stores, loads, errors) = (self.stores.load(Relaxed), self.loads.load(Relaxed), self.load_errors.load(Relaxed));
        let stats = match &self.layout {
            Layout::Raw(raw) => TierStats::uncompressed(raw.pages.load(Relaxed), stores, loads, errors),
            Layout::Packed(p) => {
                let c = &p.counts;
                let pages = c.pages.load(Relaxed);
                TierStats {
                    pages,
                    zero_pages: c.zero_pages.load(Relaxed),
                    same_filled_pages: c.same_filled_pages.load(Relaxed),
                    bytes_in: pages * PAGE_SIZE as u64,
                    bytes_compressed: c.bytes_compressed.load(Relaxed),
                    bytes_used: c.slab_bytes.load(Relaxed) + p.metadata_bytes(),
                    stores,
                    loads,
                    load_errors: errors,
                    ..TierStats::default()
                }
            }
        };
        stats.with_latency(&self.latency)
    }
}

impl MmapTier {
    fn store_raw(&self, raw: &RawSlots, page: &Page) -> Result<Handle, TierError> {
        let slot = raw.take_slot().ok_or(TierError::Full { tier: NAME, limit_bytes: raw.slots * PAGE_SIZE as u64 })?;
        let state = raw.state(slot);
        let gen = state.load(Relaxed) >> 1;
        // SAFETY: the slot is free, so no handle names it and no one else reads or
        // writes it until the state below publishes it; `page` is a full page.
        unsafe { std::ptr::copy_nonoverlapping(page.as_ptr(), self.slot_ptr(slot), PAGE_SIZE) };
        state.store(gen << 1 | 1, Release);
        raw.pages.fetch_add(1, Relaxed);
        Ok(handle(slot, gen))
    }

    fn load_raw(&self, raw: &RawSlots, handle: Handle, out: &mut Page) -> Result<(), TierError> {
        let (slot, gen) = split(handle);
        if slot >= raw.slots || raw.state(slot).load(Acquire) != gen << 1 | 1 {
            return Err(TierError::UnknownHandle(handle));
        }
        // SAFETY: the handle is live, so its slot holds the page it was stored with
        // and is not written until the handle is removed, which its owner does not
        // do during a load (the Tier contract).
        unsafe { std::ptr::copy_nonoverlapping(self.slot_ptr(slot), out.as_mut_ptr(), PAGE_SIZE) };
        Ok(())
    }

    fn remove_raw(&self, raw: &RawSlots, handle: Handle) {
        let (slot, gen) = split(handle);
        if slot >= raw.slots {
            return;
        }
        let dead = ((gen + 1) & GEN_MASK) << 1;
        // A stale or repeated remove fails here and must not free the slot again.
        if raw.state(slot).compare_exchange(gen << 1 | 1, dead, AcqRel, Relaxed).is_err() {
            return;
        }
        // Before the slot is free again, or the punch could hit its next page.
        self.punch(slot as usize * PAGE_SIZE, PAGE_SIZE);
        raw.give_slot(slot);
        raw.pages.fetch_sub(1, Relaxed);
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
        f.debug_struct("MmapTier")
            .field("path", &self.path)
            .field("backing", &self.backing)
            .field("form", &self.form())
            .field("numa_node", &self.numa_node)
            .field("limit_bytes", &self.capacity().limit_bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy of the first and last page of the tier's mapping.
    fn policies(t: &MmapTier) -> [(libc::c_int, u64); 2] {
        let last = t.map.len() - PAGE_SIZE;
        // SAFETY: `last` is a page inside the mapping.
        [numa::policy_of(t.map.as_mut_ptr()).unwrap(), numa::policy_of(unsafe { t.map.as_mut_ptr().add(last) }).unwrap()]
    }

    #[test]
    fn numa_0_binds_the_whole_mapping_before_it_is_used() {
        let bound = [(numa::MPOL_BIND_MODE, 1u64); 2];
        let t = MmapTier::memfd_with(MmapConfig::new(1 << 20).with_form(MmapForm::Lz4).on_node(0)).unwrap();
        assert_eq!((policies(&t), t.numa_node()), (bound, Some(0)));
        // A tmpfs file keeps the policy for its range; its pages are reserved after it.
        let path = PathBuf::from(format!("/dev/shm/farmem-numa-{}", std::process::id()));
        let f = MmapTier::open_with(&path, MmapConfig::new(1 << 20).on_node(0)).unwrap();
        assert!(!path.exists(), "created and unlinked");
        assert_eq!(policies(&f), bound);
        // Without numa= the mapping keeps the process's default policy.
        let plain = MmapTier::from_memfd(1 << 20).unwrap();
        assert_eq!(policies(&plain)[0].0, 0, "MPOL_DEFAULT");
        for tier in [&t, &f] {
            let mut page = [0u8; PAGE_SIZE];
            page[..13].copy_from_slice(b"on node zero.");
            let h = tier.store(&page, PageClass::DEFAULT).unwrap();
            let mut out = [0u8; PAGE_SIZE];
            tier.load(h, &mut out).unwrap();
            assert_eq!(out, page);
        }
    }
}
