//! Realistic heap contents, the same in every run: the pages farmem and the
//! kernel are measured on.
//!
//! Each page's kind is fixed by a hash of (seed, page index): about 15% zero
//! pages, 5% one 8-byte word repeated, 25% text (words, JSON-ish), 30% records
//! (pointer-like words into a heap range, small integers, flags, padding), 15%
//! zero runs between data, 10% random bytes (incompressible).

/// The size of a page.
pub const PAGE: usize = 4096;

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: [&[u8]; 16] = [
    b"user ", b"session ", b"\"id\": ", b"\"name\": \"", b"cold ", b"page ", b"cache ", b"value ",
    b"GET /api/v1/items ", b"200 OK ", b"{\"ts\": 1732", b"\", ", b"true, ", b"null, ", b"memory ", b"key:",
];

/// Fills one page (`page.len() == PAGE`) as page number `index` of a heap made with `seed`.
pub fn fill_page(page: &mut [u8], seed: u64, index: usize) {
    debug_assert_eq!(page.len(), PAGE);
    let h = mix(seed ^ mix(index as u64 + 1));
    let mut r = Rng(h | 1);
    match h % 100 {
        0..=14 => page.fill(0),
        15..=19 => {
            let w = r.next().to_ne_bytes();
            page.chunks_exact_mut(8).for_each(|c| c.copy_from_slice(&w));
        }
        20..=44 => {
            let mut at = 0;
            while at < PAGE {
                let w = WORDS[(r.next() % 16) as usize];
                let n = w.len().min(PAGE - at);
                page[at..at + n].copy_from_slice(&w[..n]);
                at += n;
                if at + 6 < PAGE && r.next().is_multiple_of(4) {
                    let num = (r.next() % 100_000).to_string();
                    let n = num.len().min(PAGE - at);
                    page[at..at + n].copy_from_slice(&num.as_bytes()[..n]);
                    at += n;
                }
            }
        }
        45..=74 => {
            for rec in page.chunks_exact_mut(64) {
                rec.fill(0);
                rec[..8].copy_from_slice(&(0x7f3a_1000_0000u64 + (r.next() % 1_000_000) * 16).to_le_bytes());
                rec[8..16].copy_from_slice(&(0x7f3a_1000_0000u64 + (r.next() % 1_000_000) * 16).to_le_bytes());
                rec[16..20].copy_from_slice(&((r.next() % 5000) as u32).to_le_bytes());
                rec[20..24].copy_from_slice(&((r.next() % 64) as u32).to_le_bytes());
                rec[24] = (r.next() % 3) as u8;
                rec[32..40].copy_from_slice(&(r.next() % 1_000_000_000).to_le_bytes());
            }
        }
        75..=89 => {
            page.fill(0);
            let mut at = (r.next() % 256) as usize;
            while at < PAGE {
                let n = (16 + r.next() % 200) as usize;
                let end = (at + n).min(PAGE);
                for b in &mut page[at..end] {
                    *b = r.next() as u8;
                }
                at = end + (64 + r.next() % 600) as usize;
            }
        }
        _ => page.chunks_exact_mut(8).for_each(|c| c.copy_from_slice(&r.next().to_ne_bytes())),
    }
}

/// Fills `buf` (a whole number of pages) as a heap made with `seed`.
pub fn fill(buf: &mut [u8], seed: u64) {
    fill_at(buf, seed, 0);
}

/// Fills `buf` as the pages that start at page number `first` of the heap made with `seed`.
pub fn fill_at(buf: &mut [u8], seed: u64, first: usize) {
    for (i, p) in buf.chunks_exact_mut(PAGE).enumerate() {
        fill_page(p, seed, first + i);
    }
}

/// An order-sensitive checksum (FNV-1a over 8-byte words, then mixed).
pub fn checksum(buf: &[u8]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    let mut words = buf.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(0x100000001b3);
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    mix(h)
}

/// One checksum per page.
pub fn page_checksums(buf: &[u8]) -> Vec<u64> {
    buf.chunks(PAGE).map(checksum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_heap_and_pages_differ() {
        let mut a = vec![0u8; 64 * PAGE];
        let mut b = vec![0u8; 64 * PAGE];
        fill(&mut a, 7);
        fill(&mut b, 7);
        assert_eq!(a, b);
        let mut c = vec![0u8; 8 * PAGE];
        fill_at(&mut c, 7, 10);
        assert_eq!(&c[..], &a[10 * PAGE..18 * PAGE]);
        fill(&mut b, 8);
        assert_ne!(a, b);
    }

    #[test]
    fn the_mix_is_roughly_as_documented() {
        let mut p = vec![0u8; PAGE];
        let (mut zero, mut same) = (0, 0);
        for i in 0..10_000 {
            fill_page(&mut p, 1, i);
            let first = &p[..8];
            if p.iter().all(|&b| b == 0) {
                zero += 1;
            } else if p.chunks_exact(8).all(|c| c == first) {
                same += 1;
            }
        }
        assert!((1300..1700).contains(&zero), "zero pages {zero}");
        assert!((350..650).contains(&same), "same-filled pages {same}");
    }

    #[test]
    fn a_changed_byte_changes_the_checksum() {
        let mut a = vec![0u8; 4 * PAGE];
        fill(&mut a, 3);
        let s = checksum(&a);
        a[3 * PAGE + 17] ^= 1;
        assert_ne!(checksum(&a), s);
        assert_eq!(page_checksums(&a).len(), 4);
    }
}
