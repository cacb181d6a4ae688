//! How much memory to keep resident: the limit, stall and floor modes.
//!
//! The stall mode follows Meta's Senpai: while the program's threads spend less
//! than the target share of wall time waiting for farmem to bring pages back,
//! take a little more memory away each tick, growing the step slowly; once they
//! wait longer than that, stop at once and let the refaults raise the resident
//! set. The limit mode is a cap, like cgroup memory.high: above it, reclaim down
//! to a little under it. The floor (like memory.min) bounds both from below.

use super::PolicyConfig;

/// The smallest and largest step of the stall mode, as shares of the resident
/// set per tick. The smallest is Senpai's: once only warm pages are left, each
/// cut brings refaults, and a small cut keeps their stall near the target.
const STEP_MIN: f64 = 0.0005;
const STEP_MAX: f64 = 0.05;
/// How much the step grows per tick spent under the stall target.
const STEP_GROWTH: f64 = 1.5;
/// Above the limit, reclaim to this share of it, so the cap is not crossed again at once.
const LIMIT_HEADROOM: f64 = 0.98;
/// Ticks without any cut after a tick over the stall target: the refaults of
/// the last cut take a moment to show.
const COOLDOWN: u32 = 2;

/// The controller's memory between ticks.
#[derive(Debug, Clone)]
pub struct Controller {
    limit: Option<u64>,
    stall: Option<f64>,
    min: u64,
    step: f64,
    cooldown: u32,
    target: Option<u64>,
}

impl Controller {
    /// A controller for `config`'s modes.
    pub fn new(config: &PolicyConfig) -> Self {
        Controller { limit: config.limit, stall: config.stall, min: config.min, step: STEP_MIN, cooldown: 0, target: None }
    }

    /// A new limit for limit mode, from the next tick on.
    pub fn set_limit(&mut self, bytes: u64) {
        self.limit = Some(bytes);
    }

    /// The target of the last tick, if one was set.
    pub fn target(&self) -> Option<u64> {
        self.target
    }

    /// One tick: given the resident bytes now and the share of the last tick's
    /// wall time spent stalled, the resident bytes to reclaim down to
    /// (`u64::MAX` when nothing asks for reclaim).
    pub fn tick(&mut self, resident: u64, stall: f64) -> u64 {
        let mut target = u64::MAX;
        if let Some(goal) = self.stall {
            if stall < goal && self.cooldown > 0 {
                self.cooldown -= 1;
                target = resident;
            } else if stall < goal {
                let cut = resident as f64 * self.step * (1.0 - stall / goal);
                target = resident.saturating_sub(cut as u64);
                self.step = (self.step * STEP_GROWTH).min(STEP_MAX);
            } else {
                // Back off: no reclaim, and the refaults that follow are let in.
                let room = resident as f64 * (0.02 * stall / goal).min(0.1);
                target = resident.saturating_add(room as u64);
                self.step = STEP_MIN;
                self.cooldown = COOLDOWN;
            }
        }
        if let Some(limit) = self.limit {
            target = target.min(self.limit_target(resident, limit));
        }
        if target != u64::MAX {
            target = target.max(self.min);
        }
        self.target = (target != u64::MAX).then_some(target);
        target
    }

    /// Between ticks, the limit alone: what to reclaim down to now (`u64::MAX` if nothing).
    pub fn check_limit(&self, resident: u64) -> u64 {
        match self.limit {
            Some(limit) => self.limit_target(resident, limit).max(self.min),
            None => u64::MAX,
        }
    }

    fn limit_target(&self, resident: u64, limit: u64) -> u64 {
        if resident > limit {
            (limit as f64 * LIMIT_HEADROOM) as u64
        } else {
            u64::MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stall_mode(goal: f64) -> Controller {
        Controller::new(&PolicyConfig { stall: Some(goal), ..PolicyConfig::default() })
    }

    #[test]
    fn under_the_stall_target_the_step_grows_then_stops_growing() {
        let mut c = stall_mode(0.001);
        let r = 1_000_000_000u64;
        let mut cuts = Vec::new();
        for _ in 0..16 {
            cuts.push(r - c.tick(r, 0.0));
        }
        assert_eq!(cuts[0], (r as f64 * STEP_MIN) as u64);
        assert!(cuts.windows(2).all(|w| w[1] >= w[0]), "{cuts:?}");
        assert_eq!(*cuts.last().unwrap(), (r as f64 * STEP_MAX) as u64);
    }

    #[test]
    fn over_the_stall_target_reclaim_stops_at_once_and_the_step_resets() {
        let mut c = stall_mode(0.001);
        let r = 1 << 30;
        for _ in 0..8 {
            c.tick(r, 0.0);
        }
        assert!(c.tick(r, 0.002) > r, "must not reclaim while over the target");
        for _ in 0..COOLDOWN {
            assert_eq!(c.tick(r, 0.0), r, "no cut while cooling down");
        }
        assert_eq!(r - c.tick(r, 0.0), (r as f64 * STEP_MIN) as u64);
    }

    #[test]
    fn near_the_target_the_cut_shrinks() {
        let mut a = stall_mode(0.001);
        let mut b = stall_mode(0.001);
        let r = 1 << 30;
        assert!(r - a.tick(r, 0.0009) < r - b.tick(r, 0.0001));
    }

    #[test]
    fn the_limit_caps_with_headroom_and_the_floor_wins() {
        let mut c = Controller::new(&PolicyConfig { limit: Some(1000 << 20), min: 0, ..PolicyConfig::default() });
        assert_eq!(c.tick(900 << 20, 0.0), u64::MAX);
        assert_eq!(c.tick(1100 << 20, 0.0), (1000u64 << 20) * 98 / 100);
        assert_eq!(c.check_limit(1001 << 20), (1000u64 << 20) * 98 / 100);
        let mut f = Controller::new(&PolicyConfig { limit: Some(100 << 20), min: 500 << 20, ..PolicyConfig::default() });
        assert_eq!(f.tick(600 << 20, 0.0), 500 << 20);
        let mut s = Controller::new(&PolicyConfig { stall: Some(0.001), min: 900 << 20, ..PolicyConfig::default() });
        assert_eq!(s.tick(900 << 20, 0.0), 900 << 20);
    }

    #[test]
    fn limit_and_stall_together_take_the_lower_target() {
        let mut c = Controller::new(&PolicyConfig { limit: Some(500 << 20), stall: Some(0.001), ..PolicyConfig::default() });
        assert_eq!(c.tick(1 << 30, 0.01), (500u64 << 20) * 98 / 100);
    }
}
