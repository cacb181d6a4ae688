//! T1: pages compressed in memory, packed in size classes, as zram does.
//!
//! - A page of zeros, or of one 8-byte word repeated, is kept as that word in
//!   its handle entry: no slab space at all.
//! - Any other page is compressed with its class's codec (lz4 by default, zstd
//!   selectable per [`PageClass`]). If the result is larger than
//!   `threshold_bytes` (default 75% of a page), the [`Incompressible`] rule
//!   decides: refuse the page (the runtime keeps it in RAM; storing it raw would
//!   save nothing), or store it raw.
//! - Compressed objects live in size classes of 32-byte steps; each class cuts
//!   its objects out of 64 KiB slabs, so the memory used stays close to the sum
//!   of compressed sizes (the tail of a slab and the rounding up to the class
//!   are the only waste). A slab that becomes empty goes back to the kernel.
//! - Every byte the tier holds, slabs and handle table alike, is in two
//!   mappings the tier makes itself, never from the Rust heap: under the
//!   LD_PRELOAD shim the heap may be farmem memory.
//!
//! Loads take no lock: a handle's entry and object do not change while the
//! handle lives, and the runtime never removes a handle while loading it.
//! Stores and removes take their class's lock. Objects are never moved, so
//! after many removes a class can hold partly empty slabs; no compaction is done
//! yet: the overhead in [`TierStats::overhead`] shows how much that costs.
//!
//! Allocation: a zstd context per thread and codec level, made the first time a
//! thread uses zstd; nothing else after construction.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::mem::Mapping;
use crate::{Capacity, Handle, Page, PageClass, Tier, TierError, TierStats, PAGE_SIZE};

/// A compression codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// lz4 (block format): fast both ways; the default.
    Lz4,
    /// zstd at a level (1-19): denser, slower to compress.
    Zstd {
        /// The compression level.
        level: i32,
    },
}

/// What to do with a page that compresses to more than the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Incompressible {
    /// Refuse it ([`TierError::Incompressible`]); it stays in RAM.
    #[default]
    Reject,
    /// Store its 4096 bytes as they are.
    StoreRaw,
}

/// How a [`CompressedTier`] is set up.
#[derive(Clone, Debug)]
pub struct CompressedConfig {
    /// The codec for each page class (index = class); classes beyond the list
    /// use the last entry. Default: `[Lz4]`.
    pub codecs: Vec<Codec>,
    /// The most memory the tier may use, slabs and table, in bytes. Default: 64 GiB.
    pub limit_bytes: u64,
    /// The rule for pages that compress poorly.
    pub incompressible: Incompressible,
    /// The largest compressed size accepted, bytes. Default 3072 (75% of a page).
    pub threshold_bytes: usize,
}

impl Default for CompressedConfig {
    fn default() -> Self {
        CompressedConfig { codecs: vec![Codec::Lz4], limit_bytes: 64 << 30, incompressible: Incompressible::Reject, threshold_bytes: 3072 }
    }
}

impl CompressedConfig {
    /// lz4 for every class.
    pub fn lz4() -> Self {
        Self::default()
    }

    /// zstd at `level` for every class.
    pub fn zstd(level: i32) -> Self {
        CompressedConfig { codecs: vec![Codec::Zstd { level }], ..Self::default() }
    }
}

const STEP: usize = 32;
const SLAB: usize = 64 << 10;
const CLASSES: usize = PAGE_SIZE / STEP; // class c holds objects of (c+1)*STEP bytes
const MAX_HANDLES: usize = 1 << 28;
const NONE: u32 = u32::MAX;

// Entry word 0: kind (bits 0-1), codec (2-3), class (4-11), length (12-24),
// slab byte offset (25-63). Word 1: the fill word, or the next free handle.
const KIND_FREE: u64 = 0;
const KIND_FILL: u64 = 1;
const KIND_OBJECT: u64 = 2;
const CODEC_LZ4: u64 = 0;
const CODEC_ZSTD: u64 = 1;
const CODEC_RAW: u64 = 2;

fn map(len: usize) -> Result<Mapping, TierError> {
    Mapping::anonymous(len).map_err(|source| TierError::Os { op: "reserving tier memory", source })
}

/// Per-slab bookkeeping, in the slab-metadata array (also tier-owned memory).
#[repr(C)]
#[derive(Clone, Copy)]
struct SlabMeta {
    used: u32,
    free_head: u32,
    bump: u32,
    next: u32,
    prev: u32,
    class: u32,
}

struct ClassState {
    /// Slabs of this class with a free object, as a list through `SlabMeta`.
    partial: u32,
}

struct SlabPool {
    next_unused: u32,
    free: u32,
    in_use: u64,
}

struct HandlePool {
    next_unused: u64,
    free: u64,
}

/// The compressed in-memory tier.
pub struct CompressedTier {
    config: CompressedConfig,
    slabs: Mapping,
    slab_meta: Mapping,
    table: Mapping,
    max_slabs: u32,
    classes: [Mutex<ClassState>; CLASSES],
    pool: Mutex<SlabPool>,
    handles: Mutex<HandlePool>,
    pages: AtomicU64,
    zero_pages: AtomicU64,
    same_pages: AtomicU64,
    rejected: AtomicU64,
    bytes_compressed: AtomicU64,
    stores: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
}

// SAFETY: all shared mutable state is behind the class/pool/handle mutexes or in
// atomics; objects and entries are written before their handle is published
// and only read while it lives.
unsafe impl Send for CompressedTier {}
// SAFETY: as above.
unsafe impl Sync for CompressedTier {}

thread_local! {
    static ZSTD_C: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn fill_word(page: &Page) -> Option<u64> {
    let first = u64::from_ne_bytes(page[..8].try_into().expect("8 bytes"));
    page.chunks_exact(8).all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == first).then_some(first)
}

impl CompressedTier {
    /// A tier with `config`; reserves address space for its limit.
    pub fn new(config: CompressedConfig) -> Result<Self, TierError> {
        if config.codecs.is_empty() {
            return Err(TierError::Os { op: "configuring the compressed tier", source: std::io::Error::other("no codec given") });
        }
        let limit = config.limit_bytes.max(SLAB as u64);
        let max_slabs = (limit / SLAB as u64).min(u32::MAX as u64 - 1) as u32;
        Ok(CompressedTier {
            slabs: map(max_slabs as usize * SLAB)?,
            slab_meta: map(max_slabs as usize * std::mem::size_of::<SlabMeta>())?,
            table: map(MAX_HANDLES * 16)?,
            max_slabs,
            classes: std::array::from_fn(|_| Mutex::new(ClassState { partial: NONE })),
            pool: Mutex::new(SlabPool { next_unused: 0, free: NONE, in_use: 0 }),
            handles: Mutex::new(HandlePool { next_unused: 0, free: NONE as u64 }),
            pages: AtomicU64::new(0),
            zero_pages: AtomicU64::new(0),
            same_pages: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            bytes_compressed: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            load_errors: AtomicU64::new(0),
            config,
        })
    }

    fn entry(&self, h: u64) -> &[AtomicU64; 2] {
        assert!((h as usize) < MAX_HANDLES, "handle {h} beyond the table");
        // SAFETY: the table holds MAX_HANDLES zeroed 16-byte entries, 8-aligned,
        // alive as long as self; AtomicU64 has u64's layout.
        unsafe { &*(self.table.addr() as *const [AtomicU64; 2]).add(h as usize) }
    }

    fn meta(&self, slab: u32) -> *mut SlabMeta {
        assert!(slab < self.max_slabs, "slab {slab} beyond {}", self.max_slabs);
        // SAFETY: the array has one SlabMeta per slab.
        unsafe { (self.slab_meta.addr() as *mut SlabMeta).add(slab as usize) }
    }

    fn object(&self, offset: u64) -> *mut u8 {
        // SAFETY: offsets come from slots inside slabs inside the mapping.
        unsafe { self.slabs.addr().add(offset as usize) }
    }

    fn codec_for(&self, class: PageClass) -> Codec {
        let c = &self.config.codecs;
        c[(class.0 as usize).min(c.len() - 1)]
    }

    fn new_handle(&self, w0: u64, w1: u64) -> Result<u64, TierError> {
        let mut hp = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        let h = if hp.free != NONE as u64 {
            let h = hp.free;
            hp.free = self.entry(h)[1].load(Relaxed);
            h
        } else {
            if hp.next_unused as usize >= MAX_HANDLES {
                return Err(TierError::Full { tier: "compressed", limit_bytes: self.config.limit_bytes });
            }
            hp.next_unused += 1;
            hp.next_unused - 1
        };
        let e = self.entry(h);
        e[1].store(w1, Relaxed);
        e[0].store(w0, std::sync::atomic::Ordering::Release);
        Ok(h)
    }

    fn free_handle(&self, h: u64) {
        let mut hp = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        let e = self.entry(h);
        e[0].store(KIND_FREE, Relaxed);
        e[1].store(hp.free, Relaxed);
        hp.free = h;
    }

    /// Takes a free object slot of `class`; returns its byte offset in the slab area.
    fn alloc_object(&self, class: usize, cs: &mut ClassState) -> Result<u64, TierError> {
        let size = (class + 1) * STEP;
        let per_slab = (SLAB / size) as u32;
        if cs.partial == NONE {
            let slab = self.alloc_slab()?;
            // SAFETY: a fresh slab's metadata is ours under the class lock.
            unsafe { *self.meta(slab) = SlabMeta { used: 0, free_head: NONE, bump: 0, next: NONE, prev: NONE, class: class as u32 } };
            cs.partial = slab;
        }
        let slab = cs.partial;
        // SAFETY: slabs on this class's list are changed only under its lock, held by the caller.
        let m = unsafe { &mut *self.meta(slab) };
        let slot = if m.free_head != NONE {
            let s = m.free_head;
            let at = self.object(slab as u64 * SLAB as u64 + s as u64 * size as u64);
            // SAFETY: a free slot holds the index of the next free slot in its first 4 bytes.
            m.free_head = unsafe { (at as *const u32).read_unaligned() };
            s
        } else {
            m.bump += 1;
            m.bump - 1
        };
        m.used += 1;
        if m.used == per_slab {
            // Full: off the partial list.
            cs.partial = m.next;
            if m.next != NONE {
                // SAFETY: as above.
                unsafe { (*self.meta(m.next)).prev = NONE };
            }
            m.next = NONE;
            m.prev = NONE;
        }
        Ok(slab as u64 * SLAB as u64 + slot as u64 * size as u64)
    }

    fn free_object(&self, class: usize, offset: u64, cs: &mut ClassState) {
        let size = (class + 1) * STEP;
        let per_slab = (SLAB / size) as u32;
        let slab = (offset / SLAB as u64) as u32;
        let slot = ((offset % SLAB as u64) / size as u64) as u32;
        // SAFETY: under the class lock; the slab belongs to this class.
        let m = unsafe { &mut *self.meta(slab) };
        let was_full = m.used == per_slab;
        // SAFETY: the slot is free now; its first 4 bytes link the free list.
        unsafe { (self.object(offset) as *mut u32).write_unaligned(m.free_head) };
        m.free_head = slot;
        m.used -= 1;
        if m.used == 0 {
            self.unlink(slab, cs);
            self.free_slab(slab);
        } else if was_full {
            m.prev = NONE;
            m.next = cs.partial;
            if cs.partial != NONE {
                // SAFETY: as above.
                unsafe { (*self.meta(cs.partial)).prev = slab };
            }
            cs.partial = slab;
        }
    }

    fn unlink(&self, slab: u32, cs: &mut ClassState) {
        // SAFETY: under the class lock.
        let m = unsafe { &mut *self.meta(slab) };
        if m.prev != NONE {
            // SAFETY: as above.
            unsafe { (*self.meta(m.prev)).next = m.next };
        } else if cs.partial == slab {
            cs.partial = m.next;
        }
        if m.next != NONE {
            // SAFETY: as above.
            unsafe { (*self.meta(m.next)).prev = m.prev };
        }
        m.next = NONE;
        m.prev = NONE;
    }

    fn alloc_slab(&self) -> Result<u32, TierError> {
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let slab = if p.free != NONE {
            let s = p.free;
            // SAFETY: free slabs link through their metadata's `next`.
            p.free = unsafe { (*self.meta(s)).next };
            s
        } else if p.next_unused < self.max_slabs {
            p.next_unused += 1;
            p.next_unused - 1
        } else {
            return Err(TierError::Full { tier: "compressed", limit_bytes: self.config.limit_bytes });
        };
        p.in_use += 1;
        Ok(slab)
    }

    fn free_slab(&self, slab: u32) {
        // The slab holds no live object: its memory goes back to the kernel.
        let _ = self.slabs.discard(slab as usize * SLAB, SLAB);
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the slab's metadata is no class's any more.
        unsafe { (*self.meta(slab)).next = p.free };
        p.free = slab;
        p.in_use -= 1;
    }

    fn compress(codec: Codec, page: &Page, out: &mut [u8]) -> Result<(usize, u64), TierError> {
        match codec {
            Codec::Lz4 => {
                let n = lz4_flex::block::compress_into(page, out).map_err(|e| TierError::Os { op: "lz4 compress", source: std::io::Error::other(e.to_string()) })?;
                Ok((n, CODEC_LZ4))
            }
            Codec::Zstd { level } => ZSTD_C.with(|c| {
                let mut c = c.borrow_mut();
                if c.as_ref().is_none_or(|(l, _)| *l != level) {
                    let z = zstd::bulk::Compressor::new(level).map_err(|source| TierError::Os { op: "zstd context", source })?;
                    *c = Some((level, z));
                }
                let (_, z) = c.as_mut().expect("just set");
                match z.compress_to_buffer(page, out) {
                    Ok(n) => Ok((n, CODEC_ZSTD)),
                    // Does not fit the buffer: worse than the threshold anyway.
                    Err(_) => Ok((usize::MAX, CODEC_ZSTD)),
                }
            }),
        }
    }
}

impl Tier for CompressedTier {
    fn name(&self) -> &str {
        match self.config.codecs[0] {
            Codec::Lz4 => "lz4",
            Codec::Zstd { .. } => "zstd",
        }
    }

    fn store(&self, page: &Page, class: PageClass) -> Result<Handle, TierError> {
        if let Some(w) = fill_word(page) {
            let h = self.new_handle(KIND_FILL, w)?;
            if w == 0 {
                self.zero_pages.fetch_add(1, Relaxed);
            } else {
                self.same_pages.fetch_add(1, Relaxed);
            }
            self.bytes_compressed.fetch_add(8, Relaxed);
            self.pages.fetch_add(1, Relaxed);
            self.stores.fetch_add(1, Relaxed);
            return Ok(Handle::new(h));
        }
        // lz4 wants room for its worst case, 10% over a page.
        let mut buf = [0u8; lz4_flex::block::get_maximum_output_size(PAGE_SIZE)];
        let limit = self.config.threshold_bytes.min(PAGE_SIZE);
        let (mut len, mut codec) = Self::compress(self.codec_for(class), page, &mut buf)?;
        if len > limit {
            match self.config.incompressible {
                Incompressible::Reject => {
                    self.rejected.fetch_add(1, Relaxed);
                    return Err(TierError::Incompressible { compressed: len.min(PAGE_SIZE + 1), threshold: limit });
                }
                Incompressible::StoreRaw => {
                    buf[..PAGE_SIZE].copy_from_slice(page);
                    len = PAGE_SIZE;
                    codec = CODEC_RAW;
                }
            }
        }
        let class_idx = len.div_ceil(STEP) - 1;
        let offset = {
            let mut cs = self.classes[class_idx].lock().unwrap_or_else(|e| e.into_inner());
            self.alloc_object(class_idx, &mut cs)?
        };
        // SAFETY: the slot is ours (just allocated) and `len` fits its class.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.object(offset), len) };
        let w0 = KIND_OBJECT | (codec << 2) | ((class_idx as u64) << 4) | ((len as u64) << 12) | (offset << 25);
        let h = match self.new_handle(w0, 0) {
            Ok(h) => h,
            Err(e) => {
                let mut cs = self.classes[class_idx].lock().unwrap_or_else(|e| e.into_inner());
                self.free_object(class_idx, offset, &mut cs);
                return Err(e);
            }
        };
        self.bytes_compressed.fetch_add(len as u64, Relaxed);
        self.pages.fetch_add(1, Relaxed);
        self.stores.fetch_add(1, Relaxed);
        Ok(Handle::new(h))
    }

    fn load(&self, handle: Handle, out: &mut Page) -> Result<(), TierError> {
        let h = handle.raw();
        if h as usize >= MAX_HANDLES {
            return Err(TierError::UnknownHandle(handle));
        }
        let e = self.entry(h);
        let w0 = e[0].load(std::sync::atomic::Ordering::Acquire);
        self.loads.fetch_add(1, Relaxed);
        match w0 & 3 {
            KIND_FILL => {
                let w = e[1].load(Relaxed).to_ne_bytes();
                for c in out.chunks_exact_mut(8) {
                    c.copy_from_slice(&w);
                }
                Ok(())
            }
            KIND_OBJECT => {
                let codec = (w0 >> 2) & 3;
                let len = ((w0 >> 12) & 0x1fff) as usize;
                let offset = w0 >> 25;
                // SAFETY: the object lives while its handle does and is not written meanwhile.
                let src = unsafe { std::slice::from_raw_parts(self.object(offset), len) };
                let r = match codec {
                    CODEC_RAW => {
                        out.copy_from_slice(src);
                        Ok(PAGE_SIZE)
                    }
                    CODEC_LZ4 => lz4_flex::block::decompress_into(src, out).map_err(|e| e.to_string()),
                    _ => ZSTD_D.with(|d| {
                        let mut d = d.borrow_mut();
                        if d.is_none() {
                            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
                        }
                        d.as_mut().expect("just set").decompress_to_buffer(src, &mut out[..]).map_err(|e| e.to_string())
                    }),
                };
                match r {
                    Ok(PAGE_SIZE) => Ok(()),
                    Ok(n) => {
                        self.load_errors.fetch_add(1, Relaxed);
                        Err(TierError::Corrupt { handle, reason: format!("decoded {n} bytes, not a page") })
                    }
                    Err(reason) => {
                        self.load_errors.fetch_add(1, Relaxed);
                        Err(TierError::Corrupt { handle, reason })
                    }
                }
            }
            _ => {
                self.load_errors.fetch_add(1, Relaxed);
                Err(TierError::UnknownHandle(handle))
            }
        }
    }

    fn remove(&self, handle: Handle) {
        let h = handle.raw();
        if h as usize >= MAX_HANDLES {
            return;
        }
        let w0 = self.entry(h)[0].load(std::sync::atomic::Ordering::Acquire);
        match w0 & 3 {
            KIND_FILL => {
                if self.entry(h)[1].load(Relaxed) == 0 {
                    self.zero_pages.fetch_sub(1, Relaxed);
                } else {
                    self.same_pages.fetch_sub(1, Relaxed);
                }
                self.bytes_compressed.fetch_sub(8, Relaxed);
            }
            KIND_OBJECT => {
                let class = ((w0 >> 4) & 0xff) as usize;
                let len = (w0 >> 12) & 0x1fff;
                let offset = w0 >> 25;
                let mut cs = self.classes[class].lock().unwrap_or_else(|e| e.into_inner());
                self.free_object(class, offset, &mut cs);
                self.bytes_compressed.fetch_sub(len, Relaxed);
            }
            _ => return,
        }
        self.pages.fetch_sub(1, Relaxed);
        self.free_handle(h);
    }

    fn capacity(&self) -> Capacity {
        Capacity { limit_bytes: self.config.limit_bytes, used_bytes: self.stats().bytes_used }
    }

    fn stats(&self) -> TierStats {
        let slabs = self.pool.lock().unwrap_or_else(|e| e.into_inner()).in_use;
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner()).next_unused;
        let pages = self.pages.load(Relaxed);
        TierStats {
            pages,
            zero_pages: self.zero_pages.load(Relaxed),
            same_filled_pages: self.same_pages.load(Relaxed),
            rejected_incompressible: self.rejected.load(Relaxed),
            bytes_in: pages * PAGE_SIZE as u64,
            bytes_compressed: self.bytes_compressed.load(Relaxed),
            bytes_used: slabs * SLAB as u64 + (handles * 16).next_multiple_of(PAGE_SIZE as u64),
            stores: self.stores.load(Relaxed),
            loads: self.loads.load(Relaxed),
            load_errors: self.load_errors.load(Relaxed),
        }
    }
}
