//! Sharing one node budget among the managed processes.
//!
//! Each process *needs* its heap as it would be without farmem (what is
//! resident and what its tiers hold), within its rule's bounds. Everyone
//! gets their `min` first, never less; what is left goes to the high
//! priority processes first, then normal, then low: a class takes what it
//! needs if it can, or splits what is left in proportion to need. So the
//! low-priority processes give first, and a process never goes below its
//! min, even when the mins alone pass the budget.

use crate::config::Priority;

/// One process's claim on the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Its rule's priority.
    pub priority: Priority,
    /// Its rule's floor.
    pub min: u64,
    /// Its rule's ceiling, if any.
    pub max: Option<u64>,
    /// What it would hold resident without farmem.
    pub need: u64,
}

impl Claim {
    /// The need within the bounds.
    fn bounded(&self) -> u64 {
        self.need.min(self.max.unwrap_or(u64::MAX)).max(self.min)
    }
}

/// Each claim's share of `budget` bytes, in the claims' order.
pub fn share(budget: u64, claims: &[Claim]) -> Vec<u64> {
    let mut out: Vec<u64> = claims.iter().map(|c| c.min).collect();
    let mut left = budget.saturating_sub(out.iter().sum());
    for class in [Priority::High, Priority::Normal, Priority::Low] {
        let members: Vec<usize> = (0..claims.len()).filter(|&i| claims[i].priority == class).collect();
        let want: u64 = members.iter().map(|&i| claims[i].bounded() - out[i]).sum();
        if want <= left {
            for &i in &members {
                out[i] = claims[i].bounded();
            }
            left -= want;
            continue;
        }
        // Not enough for the whole class: in proportion to what each lacks.
        for &i in &members {
            let lacks = claims[i].bounded() - out[i];
            out[i] += (lacks as u128 * left as u128 / want.max(1) as u128) as u64;
        }
        // Lower classes keep their mins only.
        break;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn claim(priority: Priority, min: u64, need: u64) -> Claim {
        Claim { priority, min, max: None, need }
    }

    #[test]
    fn low_priority_gives_first_and_nobody_goes_below_min() {
        let claims = [claim(Priority::High, 0, 150 * M), claim(Priority::Normal, 0, 100 * M), claim(Priority::Low, 32 * M, 200 * M)];
        // Room for all.
        assert_eq!(share(500 * M, &claims), [150 * M, 100 * M, 200 * M]);
        // 300M: high and normal whole, low what is left above its min.
        assert_eq!(share(300 * M, &claims), [150 * M, 100 * M, 50 * M]);
        // 200M: low at its min, normal squeezed, high whole.
        assert_eq!(share(200 * M, &claims), [150 * M, 18 * M, 32 * M]);
        // Less than the mins: the mins anyway.
        assert_eq!(share(10 * M, &claims), [0, 0, 32 * M]);
        let total: u64 = share(300 * M, &claims).iter().sum();
        assert!(total <= 300 * M);
    }

    #[test]
    fn a_class_short_of_room_splits_by_need_and_max_caps_a_need() {
        let claims = [claim(Priority::Normal, 0, 300 * M), claim(Priority::Normal, 0, 100 * M), Claim { max: Some(50 * M), ..claim(Priority::High, 0, 400 * M) }];
        assert_eq!(share(250 * M, &claims), [150 * M, 50 * M, 50 * M]);
        assert_eq!(share(0, &[]), Vec::<u64>::new());
    }
}
