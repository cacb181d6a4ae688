//! The memory budget of one tier: slabs, handle table and slab metadata all
//! draw from it, so `limit_bytes` bounds everything the tier holds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bytes in use against a fixed limit.
#[derive(Debug)]
pub(super) struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub(super) fn new(limit: u64) -> Self {
        Budget { limit, used: AtomicU64::new(0) }
    }

    /// Takes `bytes` from the budget, or takes nothing and returns false when
    /// that would pass the limit.
    pub(super) fn charge(&self, bytes: u64) -> bool {
        self.used.fetch_update(Relaxed, Relaxed, |u| u.checked_add(bytes).filter(|&n| n <= self.limit)).is_ok()
    }

    /// Gives back `bytes` taken by [`Budget::charge`].
    pub(super) fn release(&self, bytes: u64) {
        let before = self.used.fetch_sub(bytes, Relaxed);
        debug_assert!(before >= bytes, "released {bytes} bytes of {before} charged");
    }

    pub(super) fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }

    pub(super) fn limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_up_to_the_limit_and_not_beyond() {
        let b = Budget::new(100);
        assert!(b.charge(60));
        assert!(!b.charge(41));
        assert_eq!(b.used(), 60);
        assert!(b.charge(40));
        assert!(!b.charge(1));
        b.release(100);
        assert_eq!(b.used(), 0);
        assert!(!b.charge(u64::MAX));
    }
}
