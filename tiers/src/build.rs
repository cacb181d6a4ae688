//! Making the tiers a [`TierSpec`] names, nearest first.

use std::sync::Arc;

use crate::file::FileTier;
use crate::{CompressedConfig, RemoteTier, CompressedTier, FirstTier, MmapTier, RawTier, SpillTier, Tier, TierError, TierSpec};

/// A tier of the spec could not be made; names the tier as the spec wrote it.
#[derive(Debug, thiserror::Error)]
#[error("the tier {tier} could not be made: {source}")]
pub struct BuildError {
    /// The tier, as the spec writes it.
    pub tier: String,
    /// Why.
    #[source]
    pub source: TierError,
}

impl TierSpec {
    /// Makes every tier the spec names, T1 first. Nothing is half-made: on an
    /// error the tiers made so far are dropped (a spill file with them).
    ///
    /// ```
    /// let tiers = "zstd:3".parse::<farmem_tiers::TierSpec>().unwrap().build().unwrap();
    /// assert_eq!(tiers.len(), 1);
    /// ```
    pub fn build(&self) -> Result<Vec<Arc<dyn Tier>>, BuildError> {
        let mut tiers: Vec<Arc<dyn Tier>> = Vec::new();
        let err = |tier: String| move |source| BuildError { tier, source };
        tiers.push(match self.first {
            FirstTier::Compressed { codec, fallback } => Arc::new(
                CompressedTier::new(CompressedConfig { codecs: vec![codec], fallback, ..CompressedConfig::default() }).map_err(err(self.first.to_string()))?,
            ),
            FirstTier::Raw => Arc::new(RawTier::new(CompressedConfig::default_limit_bytes()).map_err(err("raw".into()))?),
        });
        for s in &self.spill {
            tiers.push(match s {
                SpillTier::Mmap { .. } => Arc::new(MmapTier::from_spill(s).map_err(err(s.to_string()))?),
                SpillTier::File { .. } => Arc::new(FileTier::from_spill(s).map_err(err(s.to_string()))?),
                SpillTier::Remote(_) => Arc::new(RemoteTier::from_spill(s, self.first.codec()).map_err(err(s.to_string()))?),
            });
        }
        Ok(tiers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_t1_and_a_file_tier_and_names_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("farmem-build-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec: TierSpec = format!("lz4,file:{}:64M", dir.display()).parse().unwrap();
        let tiers = spec.build().unwrap();
        assert_eq!(tiers.len(), 2);
        assert_eq!(tiers[1].capacity().limit_bytes, 64 << 20);
        drop(tiers);
        let bad: TierSpec = "lz4,file:/nonexistent-farmem-dir:64M".parse().unwrap();
        let e = bad.build().err().expect("a missing directory is refused");
        assert!(e.to_string().contains("file:/nonexistent-farmem-dir"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn t1_gets_the_second_codec_the_spec_names() {
        let t1 = |spec: &str| spec.parse::<TierSpec>().unwrap().build().unwrap().remove(0);
        assert_eq!(t1("lz4").name(), "lz4");
        assert_eq!(t1("lz4+zstd:1").name(), "lz4+zstd");
        assert_eq!(t1("file:/tmp:4M").name(), "lz4+zstd", "the default T1 has the fallback");
        assert_eq!(t1("zstd:3").name(), "zstd");
        assert_eq!(t1("zstd:1+zstd:19").name(), "zstd+zstd");
        // The fallback is used: lz4 refuses this page (a 36-letter alphabet,
        // no repeats), lz4+zstd:1 keeps it.
        let mut page = [0u8; crate::PAGE_SIZE];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for b in page.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize];
        }
        assert!(matches!(t1("lz4").store(&page, crate::PageClass::DEFAULT), Err(TierError::Incompressible { .. })));
        let t = t1("lz4+zstd:1");
        t.store(&page, crate::PageClass::DEFAULT).unwrap();
        assert_eq!((t.stats().fallback_stores, t.stats().rejected_incompressible), (1, 0));
    }
}
