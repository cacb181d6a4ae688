//! A cache with a cold tail: objects of mixed sizes loaded at start, of
//! which a share is never read again, the rest read with Zipf 0.99.
//!
//! Objects are 64 B to 64 KiB (log-uniform), laid out one after another in
//! the order they were loaded, as an allocator fills a cache's heap; each
//! is cold with the same chance whatever its size, so hot and cold objects
//! share pages wherever they are small. Every object carries its id, its
//! version and a checksum of its body, and every read checks all three. The
//! pages only cold objects touch are the memory a policy should find: the
//! share of them out of RAM is the run's measure of it.

use farmem_runtime::mem::Mapping;

use super::{Rng, Zipf, PAGE};

/// The smallest and largest object.
const MIN_OBJECT: usize = 64;
const MAX_OBJECT: usize = 64 << 10;
/// id, version and checksum.
const HEADER: usize = 24;
/// Objects start at multiples of this, as a malloc's would.
const ALIGN: usize = 16;

/// One object: where it is and how long.
#[derive(Clone, Copy, Debug)]
struct Object {
    at: usize,
    len: u32,
    version: u32,
}

/// The cache.
pub(crate) struct ColdTail {
    map: Mapping,
    objects: Vec<Object>,
    /// The hot objects, in a random order: Zipf rank `r` reads `hot[r]`.
    hot: Vec<u32>,
    zipf: Zipf,
    /// Per page of the heap: whether only cold objects touch it.
    cold_only: Vec<bool>,
    /// Bytes of cold objects.
    cold_bytes: u64,
    /// Bytes of all objects.
    used: u64,
}

fn body_sum(b: &[u8]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for w in b.chunks(8) {
        let mut x = [0u8; 8];
        x[..w.len()].copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(x)).wrapping_mul(0x100000001b3);
    }
    h
}

impl ColdTail {
    /// A cache of about `size` bytes of objects, `cold_share` of them (by
    /// chance per object, so about that share of the bytes) never read after loading.
    pub(crate) fn new(size: u64, cold_share: f64, theta: f64) -> Result<ColdTail, String> {
        let size = (size as usize).max(4 * MAX_OBJECT);
        let map = Mapping::anonymous(size).map_err(|e| format!("mapping {} MiB for the cache: {e}", size >> 20))?;
        let mut rng = Rng(0x9E3779B97F4A7C15);
        let (mut objects, mut hot, mut at, mut cold_bytes) = (Vec::new(), Vec::new(), 0usize, 0u64);
        let ratio = (MAX_OBJECT / MIN_OBJECT) as f64;
        loop {
            let len = ((MIN_OBJECT as f64 * ratio.powf(rng.unit())) as usize).clamp(MIN_OBJECT, MAX_OBJECT);
            if at + len > size {
                break;
            }
            if rng.unit() < cold_share {
                cold_bytes += len as u64;
            } else {
                hot.push(objects.len() as u32);
            }
            objects.push(Object { at, len: len as u32, version: 0 });
            at = (at + len).next_multiple_of(ALIGN);
        }
        if hot.is_empty() {
            return Err(format!("a cold share of {cold_share} leaves no hot object to read"));
        }
        // Zipf ranks fall on hot objects anywhere in the heap.
        for i in (1..hot.len()).rev() {
            hot.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let pages = size.div_ceil(PAGE);
        let mut cold_only = vec![true; pages];
        let is_hot: std::collections::HashSet<u32> = hot.iter().copied().collect();
        for (i, o) in objects.iter().enumerate() {
            if is_hot.contains(&(i as u32)) {
                for p in o.at / PAGE..=(o.at + o.len as usize - 1) / PAGE {
                    cold_only[p] = false;
                }
            }
        }
        // The tail past the last object holds nothing: not part of the cold share.
        for p in at.div_ceil(PAGE)..pages {
            cold_only[p] = false;
        }
        let zipf = Zipf::new(hot.len() as u64, theta);
        Ok(ColdTail { map, objects, hot, zipf, cold_only, cold_bytes, used: at as u64 })
    }

    /// The heap the objects live in.
    pub(crate) fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// How many objects, and what the run is.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} MiB of {} objects of 64 B to 64 KiB, {:.0}% of the bytes cold, {:.0}% of the pages only cold objects touch; the rest read with Zipf",
            self.used >> 20,
            self.objects.len(),
            self.cold_bytes as f64 / self.used.max(1) as f64 * 100.0,
            self.cold_pages() as f64 / self.cold_only.len().max(1) as f64 * 100.0
        )
    }

    fn bytes(&self, i: usize) -> &[u8] {
        let o = self.objects[i];
        // SAFETY: every object lies inside the mapping (checked when laid
        // out), and one thread uses the cache.
        unsafe { std::slice::from_raw_parts(self.map.addr().add(o.at), o.len as usize) }
    }

    fn bytes_mut(&mut self, i: usize) -> &mut [u8] {
        let o = self.objects[i];
        // SAFETY: as in `bytes`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.map.addr().add(o.at), o.len as usize) }
    }

    /// Writes object `i` anew: a body of mixed compressibility, its id, version and checksum.
    fn write(&mut self, i: usize) {
        self.objects[i].version = self.objects[i].version.wrapping_add(1);
        let v = self.objects[i].version;
        let obj = self.bytes_mut(i);
        let len = obj.len();
        let mut block = vec![0u8; (len - HEADER).next_multiple_of(PAGE)];
        crate::heap::fill(&mut block, (i as u64).wrapping_mul(31).wrapping_add(v as u64));
        obj[HEADER..].copy_from_slice(&block[..len - HEADER]);
        let sum = body_sum(&obj[HEADER..]);
        obj[..8].copy_from_slice(&(i as u64).to_le_bytes());
        obj[8..16].copy_from_slice(&(v as u64).to_le_bytes());
        obj[16..24].copy_from_slice(&sum.to_le_bytes());
    }

    /// Reads object `i` and checks its id, version and checksum.
    fn read(&self, i: usize) -> Result<(), String> {
        let obj = self.bytes(i);
        let id = u64::from_le_bytes(obj[..8].try_into().unwrap());
        let ver = u64::from_le_bytes(obj[8..16].try_into().unwrap());
        let sum = u64::from_le_bytes(obj[16..24].try_into().unwrap());
        let want = self.objects[i].version as u64;
        if id != i as u64 || ver != want || sum != body_sum(&obj[HEADER..]) {
            let o = self.objects[i];
            return Err(format!("object {i} ({} bytes at offset {:#x}): wrong bytes read back (id {id}, version {ver} of {want})", o.len, o.at));
        }
        Ok(())
    }

    /// Loads every object.
    pub(crate) fn fill(&mut self) {
        for i in 0..self.objects.len() {
            self.write(i);
        }
    }

    /// One operation: a hot object by Zipf rank, read (90%) or written anew.
    pub(crate) fn op(&mut self, rng: &mut Rng) -> Result<(), String> {
        let i = self.hot[self.zipf.next(rng.unit()) as usize] as usize;
        if rng.next().is_multiple_of(10) {
            self.write(i);
            Ok(())
        } else {
            self.read(i)
        }
    }

    /// Reads every object, cold ones included.
    pub(crate) fn check_all(&self) -> Result<(), String> {
        (0..self.objects.len()).try_for_each(|i| self.read(i))
    }

    /// Pages only cold objects touch.
    pub(crate) fn cold_pages(&self) -> usize {
        self.cold_only.iter().filter(|&&c| c).count()
    }

    /// The share of the cold-only pages out of RAM now, from `resident`
    /// (mincore's answer per page of the heap).
    pub(crate) fn cold_out(&self, resident: &[u8]) -> f64 {
        let out = self.cold_only.iter().zip(resident).filter(|(c, r)| **c && **r & 1 == 0).count();
        out as f64 / self.cold_pages().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_mix_sizes_and_shares_and_every_read_checks() {
        let mut c = ColdTail::new(16 << 20, 0.6, 0.99).unwrap();
        c.fill();
        let cold = c.cold_bytes as f64 / c.used as f64;
        assert!((0.5..0.7).contains(&cold), "cold share {cold}");
        let (small, large) = (c.objects.iter().filter(|o| o.len < 512).count(), c.objects.iter().filter(|o| o.len > 16 << 10).count());
        assert!(small > 0 && large > 0, "{small} small, {large} large");
        // Hot and cold share pages: fewer pages are cold-only than the cold bytes would fill.
        let cold_pages = c.cold_pages() as f64 * PAGE as f64 / c.used as f64;
        assert!(cold_pages > 0.2 && cold_pages < cold, "cold-only pages {cold_pages}, cold bytes {cold}");
        let mut r = Rng(5);
        for _ in 0..10_000 {
            c.op(&mut r).unwrap();
        }
        c.check_all().unwrap();
        let i = c.hot[0] as usize;
        c.bytes_mut(i)[HEADER + 3] ^= 1;
        assert!(c.read(i).is_err());
        // Nothing resident reads as all cold pages out; everything resident as none.
        let pages = c.cold_only.len();
        assert_eq!(c.cold_out(&vec![0; pages]), 1.0);
        assert_eq!(c.cold_out(&vec![1; pages]), 0.0);
    }
}
