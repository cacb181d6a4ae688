//! Sharing one node budget among the managed processes.
//!
//! Each process *needs* its heap as it would be without farmem (what is
//! resident and what its tiers hold), within its rule's bounds. When the
//! needs fit, everyone gets theirs. When they do not, two things decide:
//!
//! - **Priority**, for a start and for ties. A process new to the budget is
//!   given what a split by priority gives it: everyone gets their `min`
//!   first, never less; what is left goes to the high priority processes
//!   first, then normal, then low, a class taking what it needs if it can or
//!   splitting what is left in proportion to need.
//! - **Cost**, from then on. Priority says what an operator wants kept; it
//!   does not say where memory is cheap to take. A process whose pages are
//!   in use pays for a small share in stall; an idle one pays nothing. Each
//!   process's *pressure* is its stall over its target (the rule's `stall`,
//!   or one by priority: [`default_stall`]). Every tick, a process stalling
//!   past its target takes a tenth of its need or more (up to half, the
//!   further past its target it is) from those at less than half its
//!   pressure, the calmest first; the budget's changes are taken from the
//!   calmest and given to the dearest. Among processes alike in pressure,
//!   low priority gives first and high priority takes first. Senpai and
//!   TMO steer by the same signal, time lost to refaults.
//! - **Priority again, when calm.** A process calm for ten ticks (under
//!   half its target) that holds more than the split by priority gives it
//!   hands a twentieth of its need a tick back to those holding less. A
//!   busy low-priority process so ends up with about what holds it at its
//!   target, and the rest goes where the operator wants it.
//!
//! So the low-priority processes give first while giving costs them no more
//! than it would cost others, and a process never goes below its min, even
//! when the mins alone pass the budget.

use crate::config::Priority;

/// One process's claim on the budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Claim {
    /// Its rule's priority.
    pub priority: Priority,
    /// Its rule's floor.
    pub min: u64,
    /// Its rule's ceiling, if any.
    pub max: Option<u64>,
    /// What it would hold resident without farmem.
    pub need: u64,
    /// Its stall over its target (smoothed over ticks): above 1 it pays for
    /// the memory it lacks more than its rule allows.
    pub pressure: f64,
    /// Its share at the last tick (`None`: new to the budget).
    pub held: Option<u64>,
    /// Ticks in a row its pressure was under [`CALM_UNDER`].
    pub calm: u32,
}

/// The stall a process may see before it takes memory from calmer ones,
/// when its rule names none: high priority 0.5%, normal 1%, low 2%.
pub fn default_stall(p: Priority) -> f64 {
    match p {
        Priority::High => 0.005,
        Priority::Normal => 0.01,
        Priority::Low => 0.02,
    }
}

impl Claim {
    /// The need within the bounds.
    fn bounded(&self) -> u64 {
        self.need.min(self.max.unwrap_or(u64::MAX)).max(self.min)
    }

    /// Pressure in quarters of the target: processes within the same
    /// quarter are alike, and priority decides between them.
    fn band(&self) -> u32 {
        (self.pressure.max(0.0) * 4.0).min(1e6) as u32
    }
}

/// Pressure at which a process takes memory from calmer ones.
const TAKES_AT: f64 = 1.0;

/// Each claim's share of `budget` bytes, in the claims' order.
pub fn share(budget: u64, claims: &[Claim]) -> Vec<u64> {
    let bounds: Vec<u64> = claims.iter().map(Claim::bounded).collect();
    if bounds.iter().sum::<u64>() <= budget {
        return bounds;
    }
    let start = by_priority(budget, claims);
    let mut out: Vec<u64> = claims.iter().zip(&start).zip(&bounds).map(|((c, s), b)| c.held.unwrap_or(*s).clamp(c.min, *b)).collect();
    fit(budget, claims, &bounds, &mut out);
    rebalance(claims, &bounds, &mut out);
    settle(claims, &start, &mut out);
    out
}

/// The order processes give in: calmest first, then low priority first,
/// then the most above its min.
fn giving_order(claims: &[Claim], out: &[u64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..claims.len()).collect();
    order.sort_by_key(|&i| (claims[i].band(), claims[i].priority, std::cmp::Reverse(out[i] - claims[i].min)));
    order
}

/// Takes what the shares hold past `budget` from the calmest, or gives
/// what is left of it to the dearest.
fn fit(budget: u64, claims: &[Claim], bounds: &[u64], out: &mut [u64]) {
    let total: u64 = out.iter().sum();
    let order = giving_order(claims, out);
    if total > budget {
        let mut over = total - budget;
        for &i in &order {
            let g = over.min(out[i] - claims[i].min);
            out[i] -= g;
            over -= g;
        }
    } else {
        let mut room = budget - total;
        for &i in order.iter().rev() {
            let g = room.min(bounds[i] - out[i]);
            out[i] += g;
            room -= g;
        }
    }
}

/// Moves memory from calm processes to those stalling past their target:
/// each takes a tenth of its need a tick at twice its target, more the
/// more it is past it, up to half its need a tick at ten times. A
/// process whose pages are all in use and that was squeezed while idle
/// loses its rate until it has them back, so the climb must be quick.
fn rebalance(claims: &[Claim], bounds: &[u64], out: &mut [u64]) {
    let mut takers: Vec<usize> = (0..claims.len()).filter(|&i| claims[i].pressure > TAKES_AT && out[i] < bounds[i]).collect();
    takers.sort_by(|&a, &b| claims[b].pressure.total_cmp(&claims[a].pressure).then(claims[b].priority.cmp(&claims[a].priority)));
    for r in takers {
        let step = (claims[r].pressure / 20.0).clamp(0.1, 0.5);
        let mut want = ((bounds[r] as f64 * step) as u64).max(1 << 20).min(bounds[r] - out[r]);
        for d in giving_order(claims, out) {
            if want == 0 {
                break;
            }
            if d == r || claims[d].pressure >= claims[r].pressure / 2.0 {
                continue;
            }
            let g = want.min(out[d] - claims[d].min);
            out[d] -= g;
            out[r] += g;
            want -= g;
        }
    }
}

/// Pressure under which a process is calm.
pub const CALM_UNDER: f64 = 0.5;

/// Calm ticks in a row before what a process holds past the split by
/// priority drifts back. A process that reads its heap at random stalls
/// hard at any cut (a fault costs 40 reads), so a burst's end is not yet a
/// sign its pages went cold: a short calm would hand them back and take
/// them again every few ticks.
pub const SETTLE_AFTER: u32 = 10;

/// Gives back, from calm processes holding more than the split by priority
/// gives them, a twentieth of their need a tick to those holding less
/// (high priority first): what the operator's priorities ask for, where
/// it costs nobody their target. A process that took memory it still
/// needs stalls again before it gets calm, so it keeps about what holds it
/// at its target.
fn settle(claims: &[Claim], start: &[u64], out: &mut [u64]) {
    let mut short: Vec<usize> = (0..claims.len()).filter(|&i| out[i] < start[i]).collect();
    short.sort_by_key(|&i| std::cmp::Reverse(claims[i].priority));
    for d in 0..claims.len() {
        if claims[d].calm < SETTLE_AFTER || out[d] <= start[d] {
            continue;
        }
        let mut give = (claims[d].bounded() / 20).max(1 << 20).min(out[d] - start[d]);
        for &r in &short {
            let g = give.min(start[r].saturating_sub(out[r]));
            out[r] += g;
            out[d] -= g;
            give -= g;
        }
    }
}

/// The split by priority alone: mins first, then high, normal and low.
fn by_priority(budget: u64, claims: &[Claim]) -> Vec<u64> {
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
        Claim { priority, min, max: None, need, pressure: 0.0, held: None, calm: 0 }
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

    #[test]
    fn a_stalling_process_takes_from_calm_ones_whatever_their_priority() {
        // The low job stalls at twice its target; the high one is idle.
        let mut claims = [claim(Priority::High, 0, 150 * M), claim(Priority::Low, 32 * M, 200 * M)];
        claims[0].held = Some(150 * M);
        claims[1].held = Some(50 * M);
        claims[1].pressure = 2.0;
        assert_eq!(share(200 * M, &claims), [130 * M, 70 * M], "a tenth of its need a tick, from the idle one");
        claims[1].pressure = 6.0;
        assert_eq!(share(200 * M, &claims), [90 * M, 110 * M], "three tenths at six times its target");
        claims[1].pressure = 50.0;
        assert_eq!(share(200 * M, &claims), [50 * M, 150 * M], "half its need at most");
        claims[1].pressure = 2.0;
        // Between calm and its target it keeps what it took.
        claims[0].held = Some(100 * M);
        claims[1].held = Some(100 * M);
        claims[1].pressure = 0.7;
        assert_eq!(share(200 * M, &claims), [100 * M, 100 * M]);
        // Calm, but not for long: it keeps it.
        claims[1].pressure = 0.2;
        claims[1].calm = SETTLE_AFTER - 1;
        assert_eq!(share(200 * M, &claims), [100 * M, 100 * M]);
        // Calm for long, it gives back a twentieth of its need a tick, down to the split by priority.
        claims[1].calm = SETTLE_AFTER;
        assert_eq!(share(200 * M, &claims), [110 * M, 90 * M]);
        claims[0].held = Some(145 * M);
        claims[1].held = Some(55 * M);
        assert_eq!(share(200 * M, &claims), [150 * M, 50 * M]);
        // Both stalling alike: nothing moves.
        claims[0].pressure = 1.5;
        assert_eq!(share(200 * M, &claims), [150 * M, 50 * M]);
        // The taker is bounded by its need and the giver by its min.
        let mut claims = [Claim { min: 140 * M, ..claim(Priority::High, 0, 150 * M) }, claim(Priority::Low, 0, 60 * M)];
        claims[0].held = Some(145 * M);
        claims[1].held = Some(40 * M);
        claims[1].pressure = 9.0;
        assert_eq!(share(185 * M, &claims), [140 * M, 45 * M]);
        claims[0].held = Some(140 * M);
        claims[1].held = Some(57 * M);
        assert_eq!(share(200 * M, &claims), [140 * M, 60 * M]);
    }

    #[test]
    fn changes_of_budget_come_from_the_calmest_and_go_to_the_dearest() {
        let mut claims = [claim(Priority::High, 0, 100 * M), claim(Priority::Normal, 0, 100 * M), claim(Priority::Low, 0, 100 * M)];
        for c in &mut claims {
            c.held = Some(80 * M);
        }
        // The budget falls by 30M: the calm high one gives before the low
        // one that stalls near its target, and the stalling normal one keeps its share.
        claims[1].pressure = 0.9;
        claims[2].pressure = 0.8;
        assert_eq!(share(210 * M, &claims), [50 * M, 80 * M, 80 * M]);
        // Alike in pressure, low gives first.
        for c in &mut claims {
            c.pressure = 0.6;
        }
        assert_eq!(share(210 * M, &claims), [80 * M, 80 * M, 50 * M]);
        // The budget rises by 30M: the dearest takes it, high priority first among equals.
        claims[1].pressure = 0.9;
        assert_eq!(share(270 * M, &claims), [90 * M, 100 * M, 80 * M]);
        claims[1].pressure = 0.6;
        assert_eq!(share(270 * M, &claims), [100 * M, 90 * M, 80 * M]);
        // Whatever the pressures, the shares stay within the budget and the bounds.
        for p in [0.0, 0.3, 1.2, 5.0, 40.0] {
            claims[0].pressure = p;
            claims[2].pressure = 3.0 - p.min(3.0);
            let s = share(230 * M, &claims);
            assert!(s.iter().sum::<u64>() <= 230 * M && s.iter().all(|&x| x <= 100 * M), "{s:?}");
        }
    }
}
