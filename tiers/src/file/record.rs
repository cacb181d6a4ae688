//! One stored page as it lies in a segment: a 24-byte header and the page
//! compressed (or raw, when it does not compress), optionally encrypted.
//!
//! ```text
//!  0..4   crc32c of bytes 4..end (header rest and payload, as stored)
//!  4..8   slot of the handle
//!  8..11  generation of the handle (24 bits)
//! 11      encoding (bits 0-1: lz4, zstd, raw) | 0x80 when encrypted
//! 12..14  payload length (with the 16-byte tag when encrypted)
//! 14..16  zero
//! 16..24  store sequence number (the nonce when encrypted)
//! ```
//!
//! The header names its handle, so a load checks not only that the bytes are
//! intact but that they are the ones of the page asked for.

use super::crypt::{Sealer, TAG_BYTES};
use crate::compressed::codec::{self, Encoding, SCRATCH_BYTES};
use crate::{Codec, Page, PAGE_SIZE};

/// Bytes of a record header.
pub(crate) const HEADER: usize = 24;
/// The largest record stored: header, a raw page and a tag.
pub(crate) const MAX_RECORD: usize = HEADER + PAGE_SIZE + TAG_BYTES;
/// Room to build a record in: lz4's worst case may pass a page before it is
/// found wanting.
pub(crate) const RECORD_BUF: usize = HEADER + SCRATCH_BYTES + TAG_BYTES;
const ENCRYPTED: u8 = 0x80;

/// Builds the record of `page` for handle (`slot`, `generation`) in `rec`;
/// returns its length.
pub(crate) fn encode(page: &Page, codec: Codec, slot: u32, generation: u32, seq: u64, sealer: Option<&Sealer>, rec: &mut [u8; RECORD_BUF]) -> usize {
    let room: &mut [u8; SCRATCH_BYTES] = (&mut rec[HEADER..HEADER + SCRATCH_BYTES]).try_into().expect("the record buffer has room for the codec's worst case");
    // The T1 codec (a zstd context per thread); a failure to compress is
    // treated as incompressible: the page is stored raw.
    let compressed = codec::compress(codec, page, room).ok().flatten();
    let (encoding, mut len) = match compressed {
        Some(n) if n < PAGE_SIZE => (Encoding::of(codec), n),
        _ => {
            rec[HEADER..HEADER + PAGE_SIZE].copy_from_slice(page);
            (Encoding::Raw, PAGE_SIZE)
        }
    };
    let sealed = sealer.is_some();
    if sealed {
        len += TAG_BYTES;
    }
    rec[4..8].copy_from_slice(&slot.to_le_bytes());
    rec[8..11].copy_from_slice(&generation.to_le_bytes()[..3]);
    rec[11] = encoding as u8 | if sealed { ENCRYPTED } else { 0 };
    rec[12..14].copy_from_slice(&(len as u16).to_le_bytes());
    rec[14..16].fill(0);
    rec[16..24].copy_from_slice(&seq.to_le_bytes());
    if let Some(sealer) = sealer {
        let (head, body) = rec.split_at_mut(HEADER);
        let plain = len - TAG_BYTES;
        let tag = sealer.seal(seq, &head[4..], &mut body[..plain]);
        body[plain..len].copy_from_slice(&tag);
    }
    let crc = crc32c::crc32c(&rec[4..HEADER + len]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
    HEADER + len
}

/// Checks that `rec` is the intact record of handle (`slot`, `generation`)
/// and decodes it into `out`; the error says what did not match. `rec` is
/// decrypted in place.
pub(crate) fn decode(rec: &mut [u8], slot: u32, generation: u32, sealer: Option<&Sealer>, out: &mut Page) -> Result<(), String> {
    check(rec)?;
    let (got_slot, got_gen) = owner(rec);
    if (got_slot, got_gen) != (slot, generation) {
        return Err(format!("the record there is slot {got_slot} generation {got_gen}'s, not slot {slot} generation {generation}'s"));
    }
    let len = rec.len() - HEADER;
    let flags = rec[11];
    if (flags & ENCRYPTED != 0) != sealer.is_some() {
        return Err(format!("encryption flag {:#x} does not match the tier's setting", flags & ENCRYPTED));
    }
    let (head, body) = rec.split_at_mut(HEADER);
    let mut payload = &mut body[..len];
    if let Some(sealer) = sealer {
        if len < TAG_BYTES {
            return Err(format!("encrypted payload of {len} bytes is shorter than its tag"));
        }
        let seq = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
        let (text, tag) = payload.split_at_mut(len - TAG_BYTES);
        if !sealer.open(seq, &head[4..], text, tag) {
            return Err("authentication tag mismatch (tampered or corrupt ciphertext)".into());
        }
        payload = text;
    }
    let encoding = Encoding::from_bits((flags & !ENCRYPTED) as u64).ok_or_else(|| format!("unknown encoding {:#x}", flags & !ENCRYPTED))?;
    codec::decompress(encoding, payload, out)?;
    Ok(())
}

/// Checks `rec`'s length field and checksum.
pub(crate) fn check(rec: &[u8]) -> Result<(), String> {
    if rec.len() < HEADER || rec.len() > MAX_RECORD {
        return Err(format!("record of {} bytes", rec.len()));
    }
    let len = u16::from_le_bytes([rec[12], rec[13]]) as usize;
    let stored = u32::from_le_bytes(rec[..4].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(&rec[4..]);
    if stored != computed {
        return Err(format!("crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}"));
    }
    if HEADER + len != rec.len() {
        return Err(format!("payload length {len} does not match the record's {} bytes", rec.len()));
    }
    Ok(())
}

/// The (slot, generation) a record's header names.
pub(crate) fn owner(rec: &[u8]) -> (u32, u32) {
    let slot = u32::from_le_bytes(rec[4..8].try_into().expect("4 bytes"));
    let generation = u32::from_le_bytes([rec[8], rec[9], rec[10], 0]);
    (slot, generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seed: u8) -> Page {
        let mut p = [0u8; PAGE_SIZE];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i / 64) as u8 ^ seed;
        }
        p
    }

    #[test]
    fn records_round_trip_and_refuse_any_other_handle_or_flipped_bit() {
        let sealer = Sealer::random().unwrap();
        let mut noise = [0u8; PAGE_SIZE];
        getrandom::getrandom(&mut noise).unwrap();
        for (codec, sealer, p) in [
            (Codec::Lz4, None, page(1)),
            (Codec::Zstd { level: 3 }, None, page(2)),
            (Codec::Lz4, None, noise),
            (Codec::Lz4, Some(&sealer), page(3)),
            (Codec::Lz4, Some(&sealer), noise),
        ] {
            let mut rec = [0u8; RECORD_BUF];
            let n = encode(&p, codec, 7, 0xab_cdef, 42, sealer, &mut rec);
            assert!(n <= MAX_RECORD);
            let mut out = [0u8; PAGE_SIZE];
            // Each decode gets a copy: it decrypts in place.
            let decode_copy = |slot, generation, out: &mut Page| {
                let mut copy = rec;
                decode(&mut copy[..n], slot, generation, sealer, out)
            };
            decode_copy(7, 0xab_cdef, &mut out).unwrap();
            assert_eq!(out, p);
            assert!(decode_copy(8, 0xab_cdef, &mut out).unwrap_err().contains("not slot 8"));
            assert!(decode_copy(7, 1, &mut out).is_err());
            for bit in [0, 40, 8 * 100, 8 * n - 1] {
                let mut bad = rec;
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(decode(&mut bad[..n], 7, 0xab_cdef, sealer, &mut out).is_err(), "bit {bit}");
            }
        }
    }
}
