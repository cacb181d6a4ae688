//! What a [`FileTier`](super::FileTier) is set up with, and which settings
//! it refuses before it makes anything on disk.

use std::path::PathBuf;
use std::time::Duration;

use super::{BLOCK, NAME};
use crate::{Codec, SpillTier, TierError};

/// How a [`FileTier`](super::FileTier) is set up.
#[derive(Clone, Debug, PartialEq)]
pub struct FileConfig {
    /// The directory the spill file is made in.
    pub dir: PathBuf,
    /// The most the file may hold, in bytes (a multiple of 4096, at least two segments).
    pub limit_bytes: u64,
    /// Bytes of one segment: a multiple of 4096, 8 KiB to 8 MiB; cut to half
    /// the limit if larger. Default 1 MiB.
    pub segment_bytes: usize,
    /// The codec of stored pages. Default lz4. Pages that do not compress are
    /// stored raw.
    pub codec: Codec,
    /// Encrypt stored pages with a per-process random key. Default off.
    pub encrypt: bool,
    /// Sealed segments with less than this share live are compacted. Default 0.5.
    pub compact_below: f64,
    /// Try O_DIRECT. Default on; off forces buffered I/O.
    pub direct_io: bool,
    /// Try O_TMPFILE. Default on; off goes straight to create-and-unlink.
    pub tmpfile: bool,
    /// How often the background compaction thread looks for segments to
    /// compact. Default 100 ms; `None` starts no thread (compaction then
    /// runs only when called, or when a store finds the tier full).
    pub compact_interval: Option<Duration>,
}

impl FileConfig {
    /// The defaults, with a file in `dir` of at most `limit_bytes`.
    pub fn new(dir: impl Into<PathBuf>, limit_bytes: u64) -> Self {
        FileConfig {
            dir: dir.into(),
            limit_bytes,
            segment_bytes: 1 << 20,
            codec: Codec::Lz4,
            encrypt: false,
            compact_below: 0.5,
            direct_io: true,
            tmpfile: true,
            compact_interval: Some(Duration::from_millis(100)),
        }
    }

    /// The config of a `file:DIR:SIZE` spec part; `None` for another kind.
    pub fn from_spill(spill: &SpillTier) -> Option<Self> {
        match spill {
            SpillTier::File { dir, size_bytes } => Some(Self::new(dir.clone(), *size_bytes)),
            SpillTier::Mmap { .. } | SpillTier::Remote(_) => None,
        }
    }

    /// This config with encryption on.
    pub fn encrypted(self) -> Self {
        FileConfig { encrypt: true, ..self }
    }
}

impl FileConfig {
    /// The error of a setting or directory this config names; the directory
    /// is in it, as the user knows the tier by it.
    pub(super) fn bad(&self, reason: String) -> TierError {
        TierError::BadBacking { tier: NAME, path: self.dir.clone(), reason }
    }

    /// Checks the settings (not the directory) and returns the segment size
    /// and count they give.
    pub(super) fn geometry(&self) -> Result<(u64, u32), TierError> {
        let limit = self.limit_bytes;
        let segment_bytes = (self.segment_bytes.clamp(8 << 10, 8 << 20) as u64).min(limit / 2 / BLOCK * BLOCK);
        if !(self.segment_bytes as u64).is_multiple_of(BLOCK) {
            return Err(self.bad(format!("segment_bytes {} is not a multiple of 4096", self.segment_bytes)));
        }
        // Two segments of 8 KiB at least: one to fill, one kept for compaction.
        if limit == 0 || !limit.is_multiple_of(BLOCK) || segment_bytes < 8 << 10 {
            return Err(TierError::BadLimit { tier: NAME, limit_bytes: limit });
        }
        let count = (limit / segment_bytes).min(1 << 24) as u32;
        if !(0.0..=1.0).contains(&self.compact_below) {
            return Err(self.bad(format!("compact_below {} is not a share between 0 and 1", self.compact_below)));
        }
        Ok((segment_bytes, count))
    }
}
