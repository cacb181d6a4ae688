//! The access sampler: which pages are in use, seen through faults.
//!
//! On a kernel without page_idle, soft-dirty or DAMON for virtual addresses
//! (this project's machines), the accessed bit cannot be read from user space.
//! So each tick the sampler takes a few resident pages out of the page tables
//! into a raw tier of the runtime's own (the bytes stay whole). A page the
//! program uses faults back at the cost of a 4 KiB copy, and its stamp says it
//! was seen; a page left alone is known to have been idle since it went out.
//! The controller reclaims such pages first, by compressing them out of the
//! raw tier; those it does not need go back after a few ticks.
//!
//! Pages are visited by a clock hand over all regions, so every resident page
//! is sampled in turn. Pages seen within the hot window are skipped: sampling
//! them again would only cost faults. The sampling rate follows a CPU budget
//! (the policy thread's own time, plus the fault handlers' time on sampled
//! pages) and, in stall mode, a share of the stall target.

use std::sync::Arc;

use super::ages::GENERATIONS;
use crate::pagestate::State;
use crate::region::Region;
use crate::{Shared, PAGE_SIZE};

/// Pages whose residency is read with one mincore call.
const WINDOW: usize = 512;
/// Fault-thread CPU per sampled page that faults back (wake-up, copy, copy in), estimated.
const SAMPLE_FAULT_CPU_S: f64 = 6e-6;

/// Where the clock hand points: the next address to look at.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Hand {
    addr: u64,
    /// Pages the last walk looked at.
    pub examined: usize,
}

/// Pages picked in one region.
pub(crate) struct Picked {
    pub region: Arc<Region>,
    pub idx: Vec<usize>,
}

/// Walks the hand over every region (at most one lap, and at most `examine`
/// pages), taking pages that are in RAM, in state `Resident`, not marked
/// incompressible, and last seen at least `min_seen_age` ticks ago, until
/// `want` are found; `hand.examined` says how many pages it looked at. The sampler bounds
/// `examine`: when nearly every page is hot, a full lap each tick would cost
/// more than the samples are worth; the hand goes on from there next tick.
pub(crate) fn pick_resident(shared: &Shared, hand: &mut Hand, want: usize, now: u32, min_seen_age: u32, examine: usize) -> Vec<Picked> {
    let mut out = Vec::new();
    if want == 0 {
        return out;
    }
    let regions = shared.regions.all();
    if regions.is_empty() {
        return out;
    }
    let first = regions.partition_point(|r| r.start() + r.len() <= hand.addr) % regions.len();
    // One lap: from the hand to the end of its region, the other regions in
    // address order, then the part of the hand's region before the hand.
    let r0 = &regions[first];
    let at = if r0.contains(hand.addr) { ((hand.addr - r0.start()) / PAGE_SIZE as u64) as usize } else { 0 };
    let mut lap = vec![(first, at, r0.pages())];
    lap.extend((1..regions.len()).map(|k| ((first + k) % regions.len(), 0, regions[(first + k) % regions.len()].pages())));
    if at > 0 {
        lap.push((first, 0, at));
    }
    let mut found = 0;
    let mut examined = 0;
    let mut residency = vec![0u8; WINDOW];
    for (r, from, to) in lap {
        let region = &regions[r];
        let mut idx = Vec::new();
        let mut w = from;
        while w < to && found < want && examined < examine {
            let n = WINDOW.min(to - w);
            examined += n;
            // SAFETY: mincore reads the page tables of `n` pages of the region
            // and writes one byte per page into `residency[..n]`.
            let ok = unsafe { libc::mincore(region.page_addr(w) as *mut libc::c_void, n * PAGE_SIZE, residency.as_mut_ptr()) } == 0;
            let mut end = w + n;
            for (k, &r) in residency[..n].iter().enumerate() {
                if !ok || found == want {
                    break;
                }
                let i = w + k;
                if r & 1 != 0
                    && region.states.get(i) == State::Resident
                    && region.ages.ages(i, now).0 >= min_seen_age
                    && !region.incompressible.is_marked(i)
                {
                    idx.push(i);
                    found += 1;
                    end = i + 1;
                }
            }
            w = if found == want { end } else { w + n };
        }
        hand.addr = region.start() + (w * PAGE_SIZE) as u64;
        if !idx.is_empty() {
            out.push(Picked { region: Arc::clone(region), idx });
        }
        if found == want || examined >= examine {
            break;
        }
    }
    hand.examined = examined;
    out
}

/// How many pages to sample per tick, and which are too hot to sample: kept
/// within a CPU budget and a stall allowance.
#[derive(Debug, Clone)]
pub(crate) struct Rate {
    /// Pages taken out per tick.
    pub per_tick: usize,
    /// Pages seen within this many ticks are not sampled.
    pub hot_window: u32,
}

/// Pages seen this recently are never sampled: each sample of a hot page is a
/// fault the program waits for.
const MIN_HOT_WINDOW: u32 = GENERATIONS[2];
/// The fewest and most pages sampled per tick.
const MIN_PER_TICK: usize = 8;
const MAX_PER_TICK: usize = 1 << 20;

impl Rate {
    pub fn new() -> Self {
        Rate { per_tick: 4096, hot_window: MIN_HOT_WINDOW }
    }

    /// Takes no more than `max` pages out per tick (never fewer than the floor).
    pub fn cap(&mut self, max: usize) {
        self.per_tick = self.per_tick.min(max).max(MIN_PER_TICK);
    }

    /// Adjusts after a tick in which `sampled` pages went out, `faults` sampled
    /// pages came back, the policy thread spent `cpu_s` seconds, and sampled
    /// faults stalled the program for `stall_s`. `budget_s` is the CPU allowed
    /// per tick; `stall_allowance_s` the stall allowed per tick (infinite
    /// outside stall mode).
    pub fn adjust(&mut self, sampled: u64, faults: u64, cpu_s: f64, stall_s: f64, budget_s: f64, stall_allowance_s: f64) -> f64 {
        let cost = cpu_s + faults as f64 * SAMPLE_FAULT_CPU_S;
        let over = (cost / budget_s.max(1e-9)).max(stall_s / stall_allowance_s.max(1e-12));
        if over > 1.0 {
            self.per_tick = ((self.per_tick as f64 / over.min(4.0)) as usize).max(MIN_PER_TICK);
        } else if over < 0.5 {
            // Grown even when the hand found fewer pages than asked: the
            // rate must recover after a costly stretch (a fill, a first full
            // aging pass), and looking costs little, bounded per wanted page.
            self.per_tick = (self.per_tick * 3 / 2).min(MAX_PER_TICK);
        }
        // Many sampled pages came back: the hand is finding hot pages, so look
        // at pages seen longer ago; few came back: look at younger ones too.
        if sampled > 0 {
            let hit = faults as f64 / sampled as f64;
            if hit > 0.25 {
                self.hot_window = (self.hot_window * 2).min(GENERATIONS[GENERATIONS.len() - 1]);
            } else if hit < 0.05 {
                self.hot_window = (self.hot_window / 2).max(MIN_HOT_WINDOW);
            }
        }
        cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_budget_the_rate_falls_under_it_rises() {
        let mut r = Rate::new();
        let start = r.per_tick;
        r.adjust(start as u64, 0, 0.02, 0.0, 0.01, f64::INFINITY);
        assert!(r.per_tick < start);
        let low = r.per_tick;
        r.adjust(low as u64, 0, 0.001, 0.0, 0.01, f64::INFINITY);
        assert!(r.per_tick > low);
    }

    #[test]
    fn the_rate_recovers_after_a_costly_stretch_even_when_the_hand_found_nothing() {
        let mut r = Rate::new();
        for _ in 0..8 {
            r.adjust(0, 0, 0.05, 0.0, 0.01, f64::INFINITY);
        }
        assert_eq!(r.per_tick, MIN_PER_TICK);
        for _ in 0..4 {
            r.adjust(0, 0, 0.001, 0.0, 0.01, f64::INFINITY);
        }
        assert!(r.per_tick > MIN_PER_TICK * 4, "{}", r.per_tick);
    }

    #[test]
    fn a_cap_lowers_the_rate_but_not_under_its_floor() {
        let mut r = Rate::new();
        r.cap(100);
        assert_eq!(r.per_tick, 100);
        r.cap(0);
        assert_eq!(r.per_tick, MIN_PER_TICK);
    }

    #[test]
    fn stall_from_sampling_counts_against_it() {
        let mut r = Rate::new();
        let start = r.per_tick;
        r.adjust(start as u64, 10, 0.0, 0.002, 1.0, 0.001);
        assert!(r.per_tick < start);
    }

    #[test]
    fn hot_hits_widen_the_hot_window() {
        let mut r = Rate::new();
        let w = r.hot_window;
        r.adjust(100, 50, 0.0, 0.0, 1.0, f64::INFINITY);
        assert!(r.hot_window > w);
        r.adjust(100, 0, 0.0, 0.0, 1.0, f64::INFINITY);
        r.adjust(100, 0, 0.0, 0.0, 1.0, f64::INFINITY);
        assert_eq!(r.hot_window, MIN_HOT_WINDOW);
    }
}
