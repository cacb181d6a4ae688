//! Readahead for programs that read evicted memory in order.
//!
//! A fault costs the program a round trip to the fault handlers (on a VM, the
//! wake-up of an idle vCPU is most of it), while bringing one more page back
//! from T1 costs a decompression and a copy. So when the faults of a region
//! come one page after another, the fault handlers bring back the pages ahead
//! of the reader with the one it faulted on, as the kernel's swap readahead
//! does: nothing on a first fault, then a window that doubles with each fault
//! that lands where the last run ended, up to the configured most
//! ([`crate::Config::readahead`]). A few streams are followed at once (a merge
//! reads several runs in turn); a fault that fits none replaces the stream
//! least recently used, and a random reader never gets a window at all.

/// Streams followed at once.
const STREAMS: usize = 8;
/// The first window of a stream that has faulted twice in a row.
const FIRST_WINDOW: usize = 4;

#[derive(Debug, Clone, Copy, Default)]
struct Stream {
    /// The region's first address (0: the slot is free).
    region: usize,
    /// The page the stream's next fault is expected at.
    next: usize,
    /// Pages brought back after the last fault (0: not sequential yet).
    window: usize,
    /// When it last matched, for replacement.
    used: u64,
}

/// The fault handlers' view of who reads in order.
#[derive(Debug)]
pub(crate) struct Readahead {
    streams: [Stream; STREAMS],
    clock: u64,
    max: usize,
}

impl Readahead {
    /// Windows of at most `max` pages; 0 turns readahead off.
    pub fn new(max: usize) -> Self {
        Readahead { streams: [Stream::default(); STREAMS], clock: 0, max }
    }

    /// A fault on page `i` of the region at `region`, served from a tier:
    /// returns the stream's slot and how many pages after `i` to bring back.
    pub fn on_fault(&mut self, region: usize, i: usize) -> (usize, usize) {
        self.clock += 1;
        if self.max == 0 {
            return (0, 0);
        }
        // A run brought back up to `next`; pages after it that were never
        // evicted are read without a fault, so the reader's next fault may
        // come a little further on.
        let hit = self.streams.iter().position(|s| s.region == region && i >= s.next && i <= s.next + s.window.max(1));
        let slot = match hit {
            Some(k) => {
                let s = &mut self.streams[k];
                s.window = if s.window == 0 { FIRST_WINDOW.min(self.max) } else { (s.window * 2).min(self.max) };
                k
            }
            None => {
                let k = (0..STREAMS).min_by_key(|&k| self.streams[k].used).unwrap_or(0);
                self.streams[k] = Stream { region, next: 0, window: 0, used: 0 };
                k
            }
        };
        let s = &mut self.streams[slot];
        s.used = self.clock;
        s.next = i + 1;
        (slot, s.window)
    }

    /// The run brought back after the fault of `slot` ended before page `end`:
    /// the stream's next fault is expected there.
    pub fn ran_to(&mut self, slot: usize, end: usize) {
        if let Some(s) = self.streams.get_mut(slot) {
            s.next = s.next.max(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_in_order_gets_a_window_that_doubles_up_to_the_most() {
        let mut ra = Readahead::new(32);
        let mut i = 100;
        let mut windows = Vec::new();
        for _ in 0..7 {
            let (slot, w) = ra.on_fault(0x1000, i);
            windows.push(w);
            ra.ran_to(slot, i + 1 + w);
            i += 1 + w;
        }
        assert_eq!(windows, [0, 4, 8, 16, 32, 32, 32]);
    }

    #[test]
    fn random_faults_get_no_window_and_two_interleaved_streams_both_do() {
        let mut ra = Readahead::new(32);
        let mut x = 12345u64;
        for _ in 0..1000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let (_, w) = ra.on_fault(0x1000, (x >> 33) as usize % 1_000_000);
            assert_eq!(w, 0, "a random reader never gets readahead");
        }
        let mut ra = Readahead::new(16);
        let (mut a, mut b) = (0usize, 50_000usize);
        let mut last = (0, 0);
        for _ in 0..6 {
            let (sa, wa) = ra.on_fault(0x1000, a);
            ra.ran_to(sa, a + 1 + wa);
            a += 1 + wa;
            let (sb, wb) = ra.on_fault(0x1000, b);
            ra.ran_to(sb, b + 1 + wb);
            b += 1 + wb;
            last = (wa, wb);
        }
        assert_eq!(last, (16, 16), "a merge of two runs reads both ahead");
        // A fault a little past where the run ended (resident pages between) still counts.
        let (_, w) = ra.on_fault(0x1000, a + 3);
        assert_eq!(w, 16);
        // Another region at the same page index is another stream.
        assert_eq!(ra.on_fault(0x9000, a + 20).1, 0);
        assert_eq!(Readahead::new(0).on_fault(0x1000, 1), (0, 0), "0 turns it off");
    }
}
