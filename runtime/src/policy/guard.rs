//! What limit mode tells the user when it cannot do its job, and what it does then.
//!
//! Two things go wrong under a limit, and both used to go wrong in silence:
//!
//! - **The limit cannot be held.** Reclaim passed every page and found none
//!   more it could take: the rest is incompressible with no spill tier, the
//!   tiers are full, or (while thrashing, below) the rest is in use. The
//!   fault thread's throttle, which makes faults wait so that reclaim can
//!   catch up, would then only slow the program for nothing: it is lifted
//!   (`Shared::reclaim_short`) until a reclaim takes what it was asked, and one
//!   line says so. Reclaim is retried every [`SHORT_RETRY`], not at each check.
//! - **Thrashing.** Faults that bring pages back outnumber evictions by
//!   [`THRASH_RATIO`] or more for [`THRASH_SECS`]: the pages reclaim takes are
//!   in use and come straight back. One line says so; until it settles,
//!   reclaim takes only pages unseen for `GENERATIONS[1]` ticks or more.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::Shared;

/// Faults back per eviction that count as thrashing.
pub const THRASH_RATIO: u64 = 10;
/// How long the ratio must hold (in seconds of ticks) before the guard acts.
pub const THRASH_SECS: f64 = 3.0;
/// Faults back in a tick below which a tick never counts as thrashing.
const THRASH_MIN_FAULTS: u64 = 1000;
/// Calm ticks in a row that end a thrash.
const CALM_TICKS: u32 = 3;
/// While the limit cannot be held, how often reclaim tries again.
pub const SHORT_RETRY: Duration = Duration::from_millis(100);
/// The least time between two lines about the limit (a program that hovers
/// at the edge goes in and out of holding it many times a second).
const SAY_EVERY: Duration = Duration::from_secs(30);

/// The guard's state between ticks.
#[derive(Debug)]
pub(crate) struct Guard {
    last_back: u64,
    last_evicted: u64,
    over_secs: f64,
    calm: u32,
    thrashing_since: Option<Instant>,
    /// When the current episode of a limit that cannot be held began.
    short_since: Option<Instant>,
    last_short_try: Option<Instant>,
    /// When a line about the limit was last written.
    last_said: Option<Instant>,
}

impl Guard {
    /// A guard that starts counting from the runtime's counters now.
    pub fn new(shared: &Shared) -> Self {
        Guard {
            last_back: faults_back(shared),
            last_evicted: shared.counters.pages_evicted.load(Relaxed),
            over_secs: 0.0,
            calm: 0,
            thrashing_since: None,
            short_since: None,
            last_short_try: None,
            last_said: None,
        }
    }

    /// Whether reclaim is restricted to pages unseen for a while.
    pub fn thrashing(&self) -> bool {
        self.thrashing_since.is_some()
    }

    /// One tick of `wall` seconds: counts faults back against evictions and
    /// enters or leaves the thrashing state, saying so.
    pub fn tick(&mut self, shared: &Shared, wall: f64, resident: u64, limit: Option<u64>) {
        self.observe(faults_back(shared), shared.counters.pages_evicted.load(Relaxed), wall, resident, limit);
    }

    /// [`Guard::tick`] on the counters' values: faults back and pages evicted since start.
    fn observe(&mut self, back: u64, evicted: u64, wall: f64, resident: u64, limit: Option<u64>) {
        let (d_back, d_evicted) = (back.saturating_sub(self.last_back), evicted.saturating_sub(self.last_evicted));
        (self.last_back, self.last_evicted) = (back, evicted);
        let over = d_back >= THRASH_MIN_FAULTS && d_back >= THRASH_RATIO * d_evicted.max(1);
        if over {
            self.over_secs += wall;
            self.calm = 0;
        } else {
            self.calm += 1;
            if self.calm >= CALM_TICKS {
                self.over_secs = 0.0;
                if let Some(t) = self.thrashing_since.take() {
                    tracing::warn!("farmem: thrashing over after {:.0} s; reclaim takes the pages unseen longest again, down to the newest", t.elapsed().as_secs_f64());
                }
            }
        }
        if over && self.thrashing_since.is_none() && self.over_secs >= THRASH_SECS {
            self.thrashing_since = Some(Instant::now());
            tracing::warn!(
                "farmem: thrashing: {d_back} faults brought pages back against {d_evicted} evictions in the last {wall:.1} s \
                 (resident {} MiB{}): the pages reclaim takes are in use. Reclaim now takes only pages unseen for {} ticks or more, \
                 and the program may run over its limit until this settles",
                resident >> 20,
                limit.map_or(String::new(), |l| format!(", limit {} MiB", l >> 20)),
                super::GENERATIONS[1],
            );
        }
    }

    /// Whether a limit check should reclaim now: while the limit cannot be
    /// held, only every [`SHORT_RETRY`] (each try walks every page).
    pub fn may_reclaim(&mut self) -> bool {
        match (self.short_since, self.last_short_try) {
            (Some(_), Some(t)) if t.elapsed() < SHORT_RETRY => false,
            _ => {
                self.last_short_try = Some(Instant::now());
                true
            }
        }
    }

    /// After a reclaim under a limit the program is over: `short` says it
    /// found fewer pages than asked with nothing left it could take.
    pub fn reclaimed(&mut self, shared: &Shared, short: bool, resident: u64, limit: u64, refused: u64) {
        shared.reclaim_short.store(short, Relaxed);
        let say = self.last_said.is_none_or(|t| t.elapsed() >= SAY_EVERY);
        match (short, self.short_since) {
            (true, None) => {
                self.short_since = Some(Instant::now());
                if !say {
                    return;
                }
                self.last_said = Some(Instant::now());
                let why = if self.thrashing() {
                    "what is left was in use in the last ticks (thrashing)".to_string()
                } else {
                    format!("{refused} pages it picked no tier would hold (incompressible, with no spill tier, or the tiers full)")
                };
                tracing::warn!(
                    "farmem: the limit of {} MiB cannot be held now: resident {} MiB, and reclaim found no page it can take: {why}. \
                     The program runs over its limit, not slowed; a spill tier (--tiers ...,file:DIR) would take such pages",
                    limit >> 20,
                    resident >> 20,
                );
            }
            (false, Some(t)) => {
                self.short_since = None;
                if !say {
                    return;
                }
                self.last_said = Some(Instant::now());
                tracing::warn!("farmem: the limit of {} MiB holds again after {:.1} s over it", limit >> 20, t.elapsed().as_secs_f64());
            }
            _ => {}
        }
    }

    /// The program is back under its limit: nothing to reclaim.
    pub fn under_limit(&mut self, shared: &Shared, limit: u64) {
        if self.short_since.is_some() {
            self.reclaimed(shared, false, 0, limit, 0);
        }
    }
}

/// Faults that brought a page back from a tier, from staging or from the sampler.
fn faults_back(shared: &Shared) -> u64 {
    let c = &shared.counters;
    c.faults_from_tier.load(Relaxed) + c.faults_from_staging.load(Relaxed) + c.sample_faults.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard { last_back: 0, last_evicted: 0, over_secs: 0.0, calm: 0, thrashing_since: None, short_since: None, last_short_try: None, last_said: None }
    }

    /// Feeds one-second ticks of (faults back, evictions) and returns the state after each.
    fn run(g: &mut Guard, ticks: &[(u64, u64)]) -> Vec<bool> {
        let (mut back, mut evicted) = (g.last_back, g.last_evicted);
        ticks
            .iter()
            .map(|&(b, e)| {
                (back, evicted) = (back + b, evicted + e);
                g.observe(back, evicted, 1.0, 200 << 20, Some(180 << 20));
                g.thrashing()
            })
            .collect()
    }

    #[test]
    fn thrashing_starts_after_three_seconds_of_tenfold_faults_and_ends_after_three_calm_ticks() {
        let mut g = guard();
        assert_eq!(run(&mut g, &[(50_000, 1000); 4]), [false, false, true, true]);
        // One calm tick does not end it; three in a row do.
        assert_eq!(run(&mut g, &[(5000, 5000), (50_000, 1000), (5000, 5000), (5000, 5000), (5000, 5000)]), [true, true, true, true, false]);
    }

    #[test]
    fn faults_matched_by_evictions_or_too_few_to_matter_are_not_thrashing() {
        let mut g = guard();
        // A working set larger than the limit: every fault is an eviction too.
        assert!(run(&mut g, &[(50_000, 50_000); 10]).iter().all(|t| !t));
        // A few faults and no evictions at all: an idle program.
        assert!(run(&mut g, &[(900, 0); 10]).iter().all(|t| !t));
    }

    #[test]
    fn a_calm_tick_between_bursts_restarts_the_count() {
        let mut g = guard();
        let burst = (50_000, 1000);
        let calm = (1000, 1000);
        assert!(run(&mut g, &[burst, burst, calm, calm, calm, burst, burst]).iter().all(|t| !t));
    }
}
