//! Taking pages out of RAM: claim, move out, store, and hand refused pages back.
//!
//! A batch of pages is claimed in its region's page table, moved out of the
//! program's page tables into the runtime's staging area with UFFDIO_MOVE (so a
//! thread that touches a page from then on faults and waits, and no write can
//! slip in between the copy and the unmapping), stored in a tier from staging,
//! and only then marked `Evicted`. A fault during the batch is served from
//! staging. Pages a tier refuses go back through the fault handlers, the only
//! threads that install pages.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use farmem_tiers::{Handle, Page, PageClass, TierError};

use crate::fault::{AlignedPage, Request};
use crate::mem::Mapping;
use crate::pagestate::State;
use crate::region::Region;
use crate::verify::Step;
use crate::{Shared, PAGE_SIZE};

/// What one eviction call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EvictReport {
    /// Pages now held only by a tier.
    pub evicted: u64,
    /// Pages that were not in RAM (never touched, or already evicted).
    pub absent: u64,
    /// Pages the kernel would not move (shared with a forked child, pinned), or
    /// that a thread was faulting in: they stay in RAM.
    pub busy: u64,
    /// Pages a tier refused as incompressible: put back, they stay in RAM.
    pub rejected: u64,
    /// Pages put back because every tier was full.
    pub full: u64,
    /// Pages the program dropped or faulted back while they were being evicted.
    pub raced: u64,
}

impl EvictReport {
    pub(crate) fn add(&mut self, o: &EvictReport) {
        self.evicted += o.evicted;
        self.absent += o.absent;
        self.busy += o.busy;
        self.rejected += o.rejected;
        self.full += o.full;
        self.raced += o.raced;
    }
}

/// The runtime's staging area: where pages wait between leaving the program's
/// page tables and reaching a tier. Registered (write-protect mode, never
/// write-protected) with a userfaultfd of its own, because UFFDIO_MOVE needs its
/// destination registered and that fd has no events to report.
pub(crate) struct Staging {
    map: Mapping,
    pages: usize,
    /// Per slot: some page's state (`Staged`/`Restoring`) names this slot, so its
    /// bytes must stay. Set when a page is staged, cleared by whoever moves the
    /// page out of those states; the evictor waits for all of a batch's slots
    /// to clear before the area is reused.
    referenced: Box<[AtomicBool]>,
    /// One batch at a time uses the area.
    pub lock: Mutex<()>,
}

impl Staging {
    pub fn new(pages: usize) -> io::Result<Self> {
        Ok(Staging {
            map: Mapping::anonymous(pages * PAGE_SIZE)?,
            pages,
            referenced: (0..pages).map(|_| AtomicBool::new(false)).collect(),
            lock: Mutex::new(()),
        })
    }

    /// The page that named `slot` has left `Staged`/`Restoring`.
    pub fn release(&self, slot: u64) {
        self.referenced[slot as usize].store(false, Ordering::Release);
    }

    pub fn base(&self) -> u64 {
        self.map.addr() as u64
    }

    pub fn len(&self) -> u64 {
        (self.pages * PAGE_SIZE) as u64
    }

    pub fn slot_addr(&self, slot: u64) -> *const u8 {
        assert!((slot as usize) < self.pages, "staging slot {slot} beyond {}", self.pages);
        // SAFETY: the slot lies inside the mapping.
        unsafe { self.map.addr().add(slot as usize * PAGE_SIZE) }
    }

    /// Whether staging slot `slot` holds a page: the only sure sign that a
    /// move reached it, whatever the ioctl reported.
    fn holds(&self, slot: usize) -> bool {
        crate::is_present(self.slot_addr(slot as u64) as u64)
    }

    fn page(&self, slot: usize) -> &Page {
        // SAFETY: the slot lies inside the mapping and holds a moved-in page that
        // nobody writes while the evictor reads it (the fault handlers only read).
        unsafe { &*(self.slot_addr(slot as u64) as *const Page) }
    }
}

/// Where evicted pages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The configured tiers, first with room first: the page is reclaimed.
    Tiers,
    /// The sampler's raw tier: the page is out of the page tables so that a use
    /// of it shows, but kept whole, so that a fault costs only a copy.
    Sample,
    /// The configured tiers after this one (demotion: T1 to T2).
    After(u8),
}

/// Evicts the pages of `region` whose indices `pages` lists (ascending runs
/// are moved with one call each).
pub(crate) fn evict_pages(shared: &Shared, region: &Arc<Region>, pages: &[usize], target: Target) -> io::Result<EvictReport> {
    let staging = &shared.staging;
    let _area = staging.lock.lock().unwrap_or_else(|e| e.into_inner());
    shared.evict_quiet_since_us.store(0, Ordering::Relaxed);
    let mut total = EvictReport::default();
    let mut result = Ok(());
    for batch in pages.chunks(staging.pages) {
        match evict_batch(shared, region, batch, target) {
            Ok(r) => total.add(&r),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    shared.evict_quiet_since_us.store(shared.now_us(), Ordering::Relaxed);
    result.map(|()| total)
}

/// Evicts one batch; page `idx[k]` goes through staging slot `k`.
fn evict_batch(shared: &Shared, region: &Arc<Region>, idx: &[usize], target: Target) -> io::Result<EvictReport> {
    let staging = &shared.staging;
    let n = idx.len();
    let mut report = EvictReport::default();
    let mut claimed = vec![false; n];
    let mut refused: Vec<usize> = Vec::new();
    let now = shared.tick.load(Ordering::Relaxed);
    {
        let _batch = region.evict_lock.lock().unwrap_or_else(|e| e.into_inner());
        if region.closed.load(Ordering::Acquire) {
            return Ok(report);
        }
        if !region.armed.load(Ordering::Acquire) {
            // A lazily registered region: from now on the kernel reports its
            // faults and what the program does to it.
            if let Err(e) = shared.uffd.register(region.start(), region.len(), shared.register_mode()) {
                tracing::warn!("cannot arm region {:#x}+{:#x} with userfaultfd: {e}; its pages stay in RAM", region.start(), region.len());
                report.busy += idx.len() as u64;
                return Ok(report);
            }
            region.armed.store(true, Ordering::Release);
        }
        // Only pages in the page tables are claimed. A page a thread is
        // faulting for is not, and must not be: claiming it again and again
        // would keep the fault handlers retrying that thread's fault forever.
        // States are read before residency: a `Dropping` page seen out of the
        // page tables after its drop was recorded has been zapped (only the
        // fault thread puts pages back, and it ends `Dropping` first).
        let before: Vec<State> = idx.iter().map(|&i| region.states.get(i)).collect();
        let present = present_pages(region, idx)?;
        for (k, c) in claimed.iter_mut().enumerate() {
            let i = idx[k];
            match before[k] {
                State::Resident if !present[k] => report.absent += 1,
                State::Resident if claim(region, i) => {
                    if let Some(sums) = &region.sums {
                        sums.note(i, Step::Claim);
                    }
                    *c = true
                }
                State::Evicted { .. } | State::Poisoned => report.absent += 1,
                dropping @ State::Dropping { .. } if !present[k] => {
                    region.states.transition(i, dropping, State::Resident);
                    report.absent += 1;
                }
                _ => report.busy += 1,
            }
        }
        move_out(shared, region, idx, &mut claimed, &mut report);
        let mut resident = vec![0u8; n];
        if let Err(e) = staging.map.residency(0, &mut resident) {
            // Cannot happen on the runtime's own mapping; were it to, every
            // slot is taken as holding its page: a hole copied back is a page
            // of zeros, which is what the program would have read.
            tracing::error!("reading the staging area's residency failed: {e}");
            resident.fill(1);
        }
        for k in 0..n {
            if !claimed[k] {
                continue;
            }
            let i = idx[k];
            if resident[k] & 1 == 0 {
                // A hole: never touched, or dropped by the program.
                if let Some(sums) = &region.sums {
                    sums.note(i, Step::Hole);
                }
                unclaim_moved(region, i);
                report.absent += 1;
                claimed[k] = false;
                continue;
            }
            staging.referenced[k].store(true, Ordering::Release);
            // Recorded before the page is `Staged`: from then on the fault
            // thread may copy it back and check it.
            if let Some(sums) = &region.sums {
                sums.hold(i, staging.page(k));
            }
            if !region.states.transition(i, State::Claimed, State::Staged { slot: k as u64 }) {
                // Dropped by the program while claimed: the bytes moved out
                // are the ones it dropped (its faults waited meanwhile).
                if let Some(sums) = &region.sums {
                    sums.dropped(i);
                }
                unclaim_moved(region, i);
                staging.release(k as u64);
                report.raced += 1;
                claimed[k] = false;
            }
        }
        for k in 0..n {
            if !claimed[k] {
                continue;
            }
            let i = idx[k];
            let staged = State::Staged { slot: k as u64 };
            match store(shared, staging.page(k), target) {
                Ok((tier, handle)) => {
                    if region.states.transition(i, staged, State::Evicted { tier, handle: handle.raw() }) {
                        staging.release(k as u64);
                        region.ages.set_out(i, now);
                        region.evicted.fetch_add(1, Ordering::Relaxed);
                        report.evicted += 1;
                    } else {
                        // Faulted back from staging or dropped meanwhile; whoever
                        // did it releases the slot.
                        shared.tiers[tier as usize].remove(handle);
                        report.raced += 1;
                    }
                }
                Err(e) => {
                    match e {
                        TierError::Incompressible { .. } => {
                            // Marked, so that reclaim does not try it again
                            // until its bytes may have changed.
                            region.incompressible.mark(i);
                            report.rejected += 1;
                        }
                        TierError::Full { .. } => report.full += 1,
                        ref other => tracing::warn!("storing page {:#x} failed: {other}; it stays in RAM", region.page_addr(i)),
                    }
                    refused.push(i);
                }
            }
        }
    }
    // Put refused pages back through the fault handlers, then wait until no page
    // of this batch needs staging any more before the area is reused.
    for &i in &refused {
        shared.requests.push(Request::Restore { region: Arc::clone(region), page: i });
    }
    for slot in &staging.referenced[..n] {
        while slot.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
    }
    shared.counters.pages_evicted.fetch_add(report.evicted, Ordering::Relaxed);
    // Into the sampler's tier a page still counts as resident memory.
    if target != Target::Sample {
        shared.resident_est.fetch_sub(report.evicted as i64, Ordering::Relaxed);
    }
    shared.counters.evict_skipped_busy.fetch_add(report.busy, Ordering::Relaxed);
    shared.counters.evict_rejected.fetch_add(report.rejected, Ordering::Relaxed);
    shared.counters.evict_tier_full.fetch_add(report.full, Ordering::Relaxed);
    staging.map.discard(0, n * PAGE_SIZE)?;
    Ok(report)
}

/// Claims resident page `i` of `region` for eviction, unless a system call
/// in flight has it pinned (signal mode; see the `pins` module): the claim
/// is made first and the pins read after it.
fn claim(region: &Region, i: usize) -> bool {
    if !region.states.transition(i, State::Resident, State::Claimed) {
        return false;
    }
    if crate::pins::pinned(region.page_addr(i)) {
        region.states.transition(i, State::Claimed, State::Resident);
        return false;
    }
    true
}

/// Ends the evictor's claim on page `i` of `region`, which is out of the
/// page tables now (moved to staging, or a hole), its copy not kept: the
/// page is `Resident` (a hole) whether or not the program dropped it
/// meanwhile. True if nobody dropped it.
fn unclaim_moved(region: &Region, i: usize) -> bool {
    if region.states.transition(i, State::Claimed, State::Resident) {
        return true;
    }
    end_dropped_claim(region, i, |_| State::Resident);
    false
}

/// Ends the evictor's claim on page `i` of `region`, which never left the
/// page tables: `Resident` again, or `Dropping` if the program dropped it
/// meanwhile (its dropped bytes may be in RAM until the kernel zaps them).
/// True if nobody dropped it.
fn unclaim_unmoved(region: &Region, i: usize) -> bool {
    if let Some(sums) = &region.sums {
        sums.note(i, Step::Unmoved);
    }
    if region.states.transition(i, State::Claimed, State::Resident) {
        return true;
    }
    end_dropped_claim(region, i, |drop| State::Dropping { drop });
    false
}

/// Ends a claim the program's drop turned into `ClaimedDropped`. The fault
/// thread may still renumber the drop (another drop of the same page), but
/// only the evictor leaves the state, so the loop ends.
fn end_dropped_claim(region: &Region, i: usize, to: impl Fn(u64) -> State) {
    loop {
        match region.states.get(i) {
            s @ State::ClaimedDropped { drop } => {
                if region.states.transition(i, s, to(drop)) {
                    return;
                }
            }
            s => unreachable!("page {:#x} is {s:?} while the evictor holds its claim", region.page_addr(i)),
        }
    }
}

/// Moves each run of claimed pages into staging (slot k for page idx[k]); a run
/// is consecutive slots holding consecutive pages. Pages the kernel will not
/// move are unclaimed.
fn move_out(shared: &Shared, region: &Region, idx: &[usize], claimed: &mut [bool], report: &mut EvictReport) {
    let mut busy = Vec::new();
    move_runs(shared, region, idx, claimed, &mut busy, report);
    // Pages shared with a forked child (even one that has exited) are not
    // exclusive, and the kernel will not move them. Let it break the sharing
    // as a write would, without changing a byte, then move them once more.
    for k in busy {
        let i = idx[k];
        claimed[k] = false;
        if !unclaim_unmoved(region, i) {
            // Dropped by the program meanwhile.
            report.raced += 1;
            continue;
        }
        // SAFETY: the page lies in a registered region; MADV_POPULATE_WRITE only
        // faults it in writable (a present page keeps its bytes; a page the
        // program dropped meanwhile is zero-filled by the fault handlers, which
        // never wait on this thread for a `Resident` page).
        let r = unsafe { libc::madvise(region.page_addr(i) as *mut libc::c_void, PAGE_SIZE, MADV_POPULATE_WRITE) };
        if r != 0 || !claim(region, i) {
            report.busy += 1;
            continue;
        }
        let dst = shared.staging.base() + (k * PAGE_SIZE) as u64;
        match shared.staging_uffd.move_pages(dst, region.page_addr(i), PAGE_SIZE as u64, false) {
            Ok(()) => claimed[k] = true,
            Err(_) if shared.staging.holds(k) => claimed[k] = true,
            Err(_) => {
                // Pinned, or shared again: it stays in RAM.
                unclaim_unmoved(region, i);
                report.busy += 1;
            }
        }
    }
}

/// `MADV_POPULATE_WRITE` (Linux 5.14).
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Moves runs of claimed pages; pages the kernel calls busy are listed in `busy`
/// (by slot), still claimed.
fn move_runs(shared: &Shared, region: &Region, idx: &[usize], claimed: &mut [bool], busy: &mut Vec<usize>, report: &mut EvictReport) {
    let n = claimed.len();
    let mut k = 0;
    while k < n {
        if !claimed[k] {
            k += 1;
            continue;
        }
        let mut run_end = k + 1;
        while run_end < n && claimed[run_end] && idx[run_end] == idx[run_end - 1] + 1 {
            run_end += 1;
        }
        let mut cur = k;
        while cur < run_end {
            let dst = shared.staging.base() + (cur * PAGE_SIZE) as u64;
            let src = region.page_addr(idx[cur]);
            let len = ((run_end - cur) * PAGE_SIZE) as u64;
            // Holes are not allowed: with UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES the
            // kernel (6.18) can spin over a range whose page table a drop
            // freed, and a fault waiting on this claim would wait with it.
            // Claimed pages were in the page tables, so a hole is rare: a
            // drop since the claim.
            match shared.staging_uffd.move_pages(dst, src, len, false) {
                Ok(()) => break,
                Err(p) => {
                    let stuck = cur + (p.done / PAGE_SIZE as u64) as usize;
                    match p.error.raw_os_error() {
                        Some(libc::EAGAIN) => {
                            cur = stuck;
                            continue;
                        }
                        // A hole (dropped since the claim) where the range is
                        // still mapped: nothing to move there.
                        Some(libc::ENOENT) if stuck < run_end && !shared.staging.holds(stuck) && crate::is_mapped(region.page_addr(idx[stuck])) => {
                            if let Some(sums) = &region.sums {
                                sums.note(idx[stuck], Step::Hole);
                            }
                            unclaim_moved(region, idx[stuck]);
                            report.raced += 1;
                            claimed[stuck] = false;
                            cur = stuck + 1;
                        }
                        // Shared with a forked child, pinned, or a page the kernel
                        // cannot move: it stays where it is.
                        Some(libc::EBUSY) => {
                            // A page reported busy that reached staging all the
                            // same is moved: calling it unmoved would leave a
                            // hole the next fault zero-fills.
                            if stuck < run_end && !shared.staging.holds(stuck) {
                                busy.push(stuck);
                            }
                            cur = stuck + 1;
                        }
                        _ => {
                            // The range is gone (unmapped) or changed: give up the rest.
                            tracing::debug!("move out of {src:#x} stopped: {}", p.error);
                            for (j, c) in claimed.iter_mut().enumerate().take(run_end).skip(stuck) {
                                if *c && shared.staging.holds(j) {
                                    // It reached staging before the error: moved.
                                    continue;
                                }
                                if *c {
                                    if unclaim_unmoved(region, idx[j]) {
                                        report.busy += 1;
                                    } else {
                                        report.raced += 1;
                                    }
                                }
                                *c = false;
                            }
                            break;
                        }
                    }
                }
            }
        }
        k = run_end;
    }
}

/// Whether each page `idx[k]` of `region` is in the page tables, by mincore
/// over each run of consecutive pages.
fn present_pages(region: &Region, idx: &[usize]) -> io::Result<Vec<bool>> {
    let mut present = vec![false; idx.len()];
    let mut bytes = vec![0u8; idx.len()];
    let mut k = 0;
    while k < idx.len() {
        let mut end = k + 1;
        while end < idx.len() && idx[end] == idx[end - 1] + 1 {
            end += 1;
        }
        // SAFETY: mincore reads the page tables of the run and writes one byte
        // per page into `bytes[k..end]`.
        let r = unsafe { libc::mincore(region.page_addr(idx[k]) as *mut libc::c_void, (end - k) * PAGE_SIZE, bytes[k..end].as_mut_ptr()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // Unmapped meanwhile: nothing there to evict.
            if e.raw_os_error() != Some(libc::ENOMEM) {
                return Err(e);
            }
        } else {
            for j in k..end {
                present[j] = bytes[j] & 1 != 0;
            }
        }
        k = end;
    }
    Ok(present)
}

/// Stores a page in the first tier of `target` that takes it.
fn store(shared: &Shared, page: &Page, target: Target) -> Result<(u8, Handle), TierError> {
    let range = match target {
        Target::Tiers => 0..shared.sample_tier as usize,
        Target::Sample => shared.sample_tier as usize..shared.sample_tier as usize + 1,
        Target::After(t) => (t as usize + 1).min(shared.sample_tier as usize)..shared.sample_tier as usize,
    };
    if range.is_empty() {
        return Err(TierError::Full { tier: "next", limit_bytes: 0 });
    }
    let mut last = None;
    for (t, tier) in shared.tiers.iter().enumerate().skip(range.start).take(range.len()) {
        match tier.store(page, PageClass::DEFAULT) {
            Ok(h) => return Ok((t as u8, h)),
            // A full tier, or one whose rule refuses the page: the next may take it.
            Err(e @ (TierError::Full { .. } | TierError::Incompressible { .. })) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one tier"))
}


/// What one demotion call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DemoteReport {
    /// Pages moved to the tiers below.
    pub demoted: u64,
    /// Pages refused by every tier (incompressible, full): from the sample
    /// tier they go back to RAM; from a configured tier they stay where they are.
    pub refused: u64,
    /// Whether the tiers below were full: demotion stopped there.
    pub full: bool,
    /// Pages no longer in the tier when their turn came (faulted back, dropped).
    pub gone: u64,
}

impl DemoteReport {
    pub(crate) fn add(&mut self, o: &DemoteReport) {
        self.demoted += o.demoted;
        self.refused += o.refused;
        self.gone += o.gone;
        self.full |= o.full;
    }
}

/// Ends the claim on an evicted page the program dropped while its copy was
/// moving between tiers: the copy is gone, and the page (out of the page
/// tables all along) is `Resident`, a hole.
fn drop_claimed_copy(region: &Region, i: usize) {
    region.evicted.fetch_sub(1, Ordering::Relaxed);
    if let Some(sums) = &region.sums {
        sums.dropped(i);
    }
    end_dropped_claim(region, i, |_| State::Resident);
}

/// Moves pages of `region` that sit in tier `from_tier` onwards: out of the sample
/// tier into the configured tiers (reclaim of pages already out of RAM: no
/// page-table work), or from a configured tier into the ones after it
/// (demotion, T1 to T2). Each page is `Claimed` while its bytes move, so a
/// fault on it waits and a drop by the program makes the move throw its
/// copies away. Stops at the first page the tiers below have no room for.
pub(crate) fn demote(shared: &Shared, region: &Arc<Region>, idx: &[usize], from_tier: u8) -> DemoteReport {
    let mut report = DemoteReport::default();
    let sample = shared.sample_tier;
    let target = if from_tier == sample { Target::Tiers } else { Target::After(from_tier) };
    let mut buf = Box::new(AlignedPage([0; PAGE_SIZE]));
    // Small batches: a thread faulting on a claimed page waits for the batch.
    for batch in idx.chunks(32) {
        let _batch = region.evict_lock.lock().unwrap_or_else(|e| e.into_inner());
        if region.closed.load(Ordering::Acquire) {
            return report;
        }
        let mut back = Vec::new();
        for &i in batch {
            let s = region.states.get(i);
            let State::Evicted { tier, handle } = s else {
                report.gone += 1;
                continue;
            };
            if tier != from_tier || !region.states.transition(i, s, State::Claimed) {
                report.gone += 1;
                continue;
            }
            if let Some(sums) = &region.sums {
                sums.note(i, Step::Demote);
            }
            let from = &shared.tiers[from_tier as usize];
            let h = Handle::new(handle);
            let stored = match from.load(h, &mut buf.0) {
                Ok(()) => {
                    if let Some(sums) = &region.sums {
                        sums.check(i, &buf.0, region.page_addr(i), from.name());
                    }
                    store(shared, &buf.0, target)
                }
                Err(e) => Err(e),
            };
            match stored {
                Ok((t, h2)) => {
                    if region.states.transition(i, State::Claimed, State::Evicted { tier: t, handle: h2.raw() }) {
                        report.demoted += 1;
                        if from_tier == sample {
                            shared.resident_est.fetch_sub(1, Ordering::Relaxed);
                        }
                    } else {
                        // The program dropped the page meanwhile: both copies go.
                        shared.tiers[t as usize].remove(h2);
                        drop_claimed_copy(region, i);
                        report.gone += 1;
                    }
                    from.remove(h);
                }
                Err(e) => {
                    let full = matches!(e, TierError::Full { .. });
                    if !full && !matches!(e, TierError::Incompressible { .. }) {
                        tracing::warn!("moving page {:#x} out of tier {} failed: {e}; it stays", region.page_addr(i), from.name());
                    }
                    if region.states.transition(i, State::Claimed, s) {
                        if from_tier == sample {
                            back.push(i);
                        }
                        report.refused += 1;
                        if full && from_tier != sample {
                            report.full = true;
                        }
                    } else {
                        from.remove(h);
                        drop_claimed_copy(region, i);
                        report.gone += 1;
                    }
                }
            }
        }
        if !back.is_empty() {
            shared.requests.push(Request::PutBack { region: Arc::clone(region), pages: back, tier: sample });
        }
        if report.full {
            break;
        }
    }
    report
}
