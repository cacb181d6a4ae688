//! The codecs T1 compresses pages with, and the contexts they run in.
//!
//! lz4 needs no context to decode. zstd keeps one compression context per
//! thread (stores run on the reclaim thread), made the first time that
//! thread compresses with zstd. Its decoding contexts are a pool made when a
//! tier that uses zstd is made: a load may run in any thread of the program,
//! inside the SIGBUS handler of the runtime's signal mode, where it must not
//! allocate; so a load takes a free context from the pool and never
//! allocates.

use std::cell::RefCell;
use std::sync::{Mutex, OnceLock};
use std::fmt;
use std::str::FromStr;

use zstd::zstd_safe::CParameter;

use crate::{Page, PAGE_SIZE};

/// A compression codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    /// lz4 (block format, lz4_flex): fast both ways; the default.
    #[default]
    Lz4,
    /// zstd at a level (see `zstd::compression_level_range`, 1-19 are the usual
    /// ones): denser than lz4, slower to compress, about 2-3x slower to decode.
    Zstd {
        /// The compression level.
        level: i32,
    },
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::Lz4 => f.write_str("lz4"),
            Codec::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

/// Why a codec name was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown codec {given:?}: accepted values are lz4, zstd, zstd:LEVEL (LEVEL {min}..={max})")]
pub struct CodecParseError {
    /// What was given.
    pub given: String,
    /// The lowest zstd level accepted.
    pub min: i32,
    /// The highest zstd level accepted.
    pub max: i32,
}

impl FromStr for Codec {
    type Err = CodecParseError;

    /// Parses `lz4`, `zstd` (level 3) or `zstd:LEVEL`, as configuration
    /// variables spell them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let range = zstd::compression_level_range();
        let bad = || CodecParseError { given: s.to_owned(), min: *range.start(), max: *range.end() };
        match s.trim() {
            "lz4" => Ok(Codec::Lz4),
            "zstd" => Ok(Codec::Zstd { level: 3 }),
            other => {
                let level = other.strip_prefix("zstd:").ok_or_else(bad)?.parse::<i32>().map_err(|_| bad())?;
                if range.contains(&level) {
                    Ok(Codec::Zstd { level })
                } else {
                    Err(bad())
                }
            }
        }
    }
}

/// How an object's bytes are to be decoded; kept in its handle entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    Lz4 = 0,
    Zstd = 1,
    /// The page as it was (the incompressible rule said to keep it).
    Raw = 2,
}

impl Encoding {
    /// How an object `codec` compressed is decoded.
    pub(crate) fn of(codec: Codec) -> Self {
        match codec {
            Codec::Lz4 => Encoding::Lz4,
            Codec::Zstd { .. } => Encoding::Zstd,
        }
    }

    pub(crate) fn from_bits(bits: u64) -> Option<Self> {
        match bits {
            0 => Some(Encoding::Lz4),
            1 => Some(Encoding::Zstd),
            2 => Some(Encoding::Raw),
            _ => None,
        }
    }
}

/// Room for the worst case of either codec on one page (lz4's is the larger).
pub(crate) const SCRATCH_BYTES: usize = lz4_flex::block::get_maximum_output_size(PAGE_SIZE);

thread_local! {
    static ZSTD_COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// zstd decoding contexts, two per CPU (at least 4, at most 64).
static ZSTD_DECODERS: OnceLock<Box<[Mutex<zstd::bulk::Decompressor<'static>>]>> = OnceLock::new();

/// Makes the pool of zstd decoding contexts, once per process.
pub(crate) fn prepare_zstd_decoders() -> std::io::Result<()> {
    if ZSTD_DECODERS.get().is_some() {
        return Ok(());
    }
    let n = std::thread::available_parallelism().map_or(2, |n| n.get()).saturating_mul(2).clamp(4, 64);
    let pool = (0..n).map(|_| zstd::bulk::Decompressor::new().map(Mutex::new)).collect::<std::io::Result<Vec<_>>>()?;
    let _ = ZSTD_DECODERS.set(pool.into_boxed_slice());
    Ok(())
}

/// Decodes with a free context of the pool: tried without waiting, starting
/// at the calling CPU's own pair, so that a thread interrupted while holding
/// one never has another thread block on it.
fn zstd_decode(src: &[u8], out: &mut Page) -> Result<usize, String> {
    let pool = match ZSTD_DECODERS.get() {
        Some(pool) => pool,
        // A tier that loads only on the runtime's threads (the mmap tier)
        // may make the pool at its first zstd page; T1 made it at its start.
        None => {
            prepare_zstd_decoders().map_err(|e| format!("zstd contexts: {e}"))?;
            ZSTD_DECODERS.get().ok_or("zstd contexts missing")?
        }
    };
    // SAFETY: sched_getcpu has no preconditions (vDSO, no allocation).
    let start = (unsafe { libc::sched_getcpu() }.max(0) as usize * 2) % pool.len();
    loop {
        for k in 0..pool.len() {
            let mut z = match pool[(start + k) % pool.len()].try_lock() {
                Ok(z) => z,
                // A context is reset at each frame: one a panic left is fine.
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => continue,
            };
            return z.decompress_to_buffer(src, &mut out[..]).map_err(|e| format!("zstd: {e}"));
        }
        std::thread::yield_now();
    }
}

/// Compresses `page` into `out`; returns the compressed length, or `None` when
/// the result would not fit `out` (the page is then incompressible anyway).
pub(crate) fn compress(codec: Codec, page: &Page, out: &mut [u8; SCRATCH_BYTES]) -> std::io::Result<Option<usize>> {
    match codec {
        // lz4_flex allocates its 8 KiB hash table on each call: stores run on
        // the reclaim thread, so this is accepted (see the module doc of T1).
        Codec::Lz4 => Ok(lz4_flex::block::compress_into(page, out).ok()),
        Codec::Zstd { level } => ZSTD_COMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (current, z) = match cell.as_mut() {
                Some(slot) => slot,
                None => {
                    let mut z = zstd::bulk::Compressor::new(level)?;
                    // The handle entry knows the size and there is no
                    // dictionary: the frame need not repeat them.
                    z.set_parameter(CParameter::ContentSizeFlag(false))?;
                    z.set_parameter(CParameter::DictIdFlag(false))?;
                    cell.insert((level, z))
                }
            };
            if *current != level {
                z.set_compression_level(level)?;
                *current = level;
            }
            Ok(z.compress_to_buffer(page, &mut out[..]).ok())
        }),
    }
}

/// Decodes `src` into `out`; the error says what the decoder found wrong.
/// Allocation-free except on error.
pub(crate) fn decompress(encoding: Encoding, src: &[u8], out: &mut Page) -> Result<(), String> {
    let n = match encoding {
        Encoding::Raw => {
            if src.len() != PAGE_SIZE {
                return Err(format!("raw object of {} bytes", src.len()));
            }
            out.copy_from_slice(src);
            PAGE_SIZE
        }
        Encoding::Lz4 => lz4_flex::block::decompress_into(src, out).map_err(|e| format!("lz4: {e}"))?,
        Encoding::Zstd => zstd_decode(src, out)?,
    };
    if n != PAGE_SIZE {
        return Err(format!("decoded {n} bytes, not a page"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (s, c) in [("lz4", Codec::Lz4), ("zstd", Codec::Zstd { level: 3 }), ("zstd:9", Codec::Zstd { level: 9 }), ("zstd:-5", Codec::Zstd { level: -5 })] {
            assert_eq!(s.parse::<Codec>(), Ok(c));
        }
        assert_eq!(Codec::Zstd { level: 9 }.to_string().parse::<Codec>(), Ok(Codec::Zstd { level: 9 }));
        for bad in ["", "lz5", "zstd:", "zstd:x", "zstd:1000"] {
            let e = bad.parse::<Codec>().unwrap_err();
            assert_eq!(e.given, bad);
            assert!(e.to_string().contains("lz4, zstd, zstd:LEVEL"), "{e}");
        }
    }

    #[test]
    fn levels_switch_on_one_thread_and_each_decodes() {
        let mut page = [0u8; PAGE_SIZE];
        for (i, b) in page.iter_mut().enumerate() {
            *b = (i % 251) as u8 ^ (i / 97) as u8;
        }
        let mut buf = [0u8; SCRATCH_BYTES];
        let mut out = [0u8; PAGE_SIZE];
        for level in [1, 19, 3, 1] {
            let n = compress(Codec::Zstd { level }, &page, &mut buf).unwrap().unwrap();
            decompress(Encoding::Zstd, &buf[..n], &mut out).unwrap();
            assert_eq!(out, page);
        }
        let n = compress(Codec::Lz4, &page, &mut buf).unwrap().unwrap();
        decompress(Encoding::Lz4, &buf[..n], &mut out).unwrap();
        assert_eq!(out, page);
        // A truncated object is an error, never a short page.
        assert!(decompress(Encoding::Lz4, &buf[..n / 2], &mut out).is_err());
    }
}
