//! Making the tiers a [`TierSpec`] names, nearest first.

use std::sync::Arc;

use crate::file::FileTier;
use crate::{CompressedConfig, CompressedTier, FirstTier, MmapTier, RawTier, SpillTier, Tier, TierError, TierSpec};

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
            FirstTier::Compressed(codec) => {
                Arc::new(CompressedTier::new(CompressedConfig { codecs: vec![codec], ..CompressedConfig::default() }).map_err(err(self.first.to_string()))?)
            }
            FirstTier::Raw => Arc::new(RawTier::new(CompressedConfig::default_limit_bytes()).map_err(err("raw".into()))?),
        });
        for s in &self.spill {
            tiers.push(match s {
                SpillTier::Mmap { .. } => Arc::new(MmapTier::from_spill(s).map_err(err(s.to_string()))?),
                SpillTier::File { .. } => Arc::new(FileTier::from_spill(s).map_err(err(s.to_string()))?),
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
}
