//! Memory farmem maps for itself (tiers, page tables, staging), never taken from
//! the Rust heap, which may be farmem memory itself.

use std::io;

/// An anonymous private mapping owned by farmem, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    addr: *mut u8,
    len: usize,
}

// SAFETY: a Mapping is plain memory; who may touch which bytes is decided by
// the structures built on it (atomics, or exclusive ownership protocols).
unsafe impl Send for Mapping {}
// SAFETY: as above; the Mapping itself is never mutated after creation.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of zeroed, lazily allocated memory.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("mmap of {len} bytes failed: {}", io::Error::last_os_error()),
            ));
        }
        Ok(Mapping { addr: addr.cast(), len })
    }

    /// The first byte.
    pub fn addr(&self) -> *mut u8 {
        self.addr
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (it never is; for clippy's sake).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives the pages of `[offset, offset+len)` back to the kernel; they read as zeros after.
    pub fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        assert!(offset + len <= self.len, "discard {offset}+{len} beyond mapping of {}", self.len);
        // SAFETY: the range lies inside this mapping, which its owner controls.
        let r = unsafe { libc::madvise(self.addr.add(offset).cast(), len, libc::MADV_DONTNEED) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Which pages of `[offset, offset+pages*4096)` are present, one byte a page
    /// (bit 0 set when resident), written into `out`.
    pub fn residency(&self, offset: usize, out: &mut [u8]) -> io::Result<()> {
        let len = out.len() * crate::PAGE_SIZE;
        assert!(offset + len <= self.len, "mincore {offset}+{len} beyond mapping of {}", self.len);
        // SAFETY: the range lies inside this mapping; `out` has one byte per page.
        let r = unsafe { libc::mincore(self.addr.add(offset).cast(), len, out.as_mut_ptr()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `anonymous` with this length and is
        // not used after drop.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}
