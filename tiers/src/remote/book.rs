//! Where each page of the tier is: *held* (its record in RAM, waiting for
//! the server or on its way), *stored* (the server said it took it), or
//! removed and its key *dead* (to be deleted). One mutex guards it all; no
//! one holds it across network I/O.
//!
//! A page moves from held to stored in one step under the lock, when its
//! SET is answered, so a load finds it in one place or the other. A page
//! removed while its SET is in flight stays held, marked removed, until the
//! reply comes: then its key, now on the server, is dead.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Dead keys that wake the sender at once.
pub(super) const DEAD_BATCH: usize = 1024;

/// A record waiting for the server.
struct Held {
    rec: Arc<[u8]>,
    /// Sent; its reply not read yet.
    flying: bool,
    /// Removed while flying: its key goes dead when the reply comes.
    removed: bool,
}

/// What the tier knows of a handle.
pub(super) enum Found {
    /// Its record, in RAM.
    Held(Arc<[u8]>),
    /// On the server.
    Stored,
    /// Nothing.
    Nothing,
}

/// The pages of the tier and what the sender has to do.
#[derive(Default)]
pub(super) struct Book {
    held: HashMap<u64, Held>,
    /// Held handles in store order, not sent yet (removed ones are skipped when met).
    pub(super) queue: VecDeque<u64>,
    /// Handles on the server, and their record lengths.
    pub(super) stored: HashMap<u64, u32>,
    /// Keys of removed pages the server still has.
    pub(super) dead: Vec<u64>,
    /// Bytes of held records.
    pub(super) held_bytes: usize,
    /// Bytes of stored records.
    pub(super) stored_bytes: u64,
    /// Records sent whose replies are not read yet.
    pub(super) flying: usize,
    /// Dead keys taken by the sender and not yet deleted.
    pub(super) deleting: usize,
    /// Flushes waiting: the sender sends part batches at once.
    pub(super) flushes: usize,
    /// The tier is closing: the sender deletes every key and stops.
    pub(super) closing: bool,
    /// The sender has deleted every key and stopped.
    pub(super) closed: bool,
}

impl Book {
    /// Records held in RAM (removed ones waiting for their reply included).
    pub(super) fn held_pages(&self) -> u64 {
        self.held.len() as u64
    }

    /// Pages the tier holds, held or stored.
    pub(super) fn pages(&self) -> u64 {
        (self.held.values().filter(|h| !h.removed).count() + self.stored.len()) as u64
    }

    /// Holds `rec` as the record of `handle`, unless that would pass
    /// `limit` bytes in all or `held_max` bytes held; returns how many
    /// records wait to be sent, or `None` when refused.
    pub(super) fn hold(&mut self, handle: u64, rec: &[u8], limit: u64, held_max: usize) -> Option<usize> {
        let n = rec.len();
        if self.held_bytes + n > held_max || self.stored_bytes + (self.held_bytes + n) as u64 > limit {
            return None;
        }
        self.held.insert(handle, Held { rec: Arc::from(rec), flying: false, removed: false });
        self.queue.push_back(handle);
        self.held_bytes += n;
        Some(self.queue.len())
    }

    /// Where `handle`'s page is.
    pub(super) fn find(&self, handle: u64) -> Found {
        match self.held.get(&handle) {
            Some(h) if !h.removed => Found::Held(Arc::clone(&h.rec)),
            Some(_) => Found::Nothing,
            None if self.stored.contains_key(&handle) => Found::Stored,
            None => Found::Nothing,
        }
    }

    /// Forgets `handle`'s page; returns how many keys are dead now.
    pub(super) fn remove(&mut self, handle: u64) -> usize {
        if let Some(h) = self.held.get_mut(&handle) {
            if h.flying {
                h.removed = true;
            } else {
                self.held_bytes -= h.rec.len();
                self.held.remove(&handle);
            }
        } else if let Some(len) = self.stored.remove(&handle) {
            self.stored_bytes -= len as u64;
            self.dead.push(handle);
        }
        self.dead.len()
    }

    /// Takes up to `n` held records to send, in store order, marking them flying.
    pub(super) fn take_batch(&mut self, n: usize) -> Vec<(u64, Arc<[u8]>)> {
        let mut batch = Vec::with_capacity(n.min(self.queue.len()));
        while batch.len() < n {
            let Some(h) = self.queue.pop_front() else { break };
            if let Some(held) = self.held.get_mut(&h) {
                held.flying = true;
                batch.push((h, Arc::clone(&held.rec)));
            }
        }
        self.flying += batch.len();
        batch
    }

    /// The server took `handle`'s record: it is stored, or dead if removed meanwhile.
    pub(super) fn sent(&mut self, handle: u64) {
        self.flying -= 1;
        let Some(h) = self.held.remove(&handle) else { return };
        self.held_bytes -= h.rec.len();
        if h.removed {
            self.dead.push(handle);
        } else {
            self.stored.insert(handle, h.rec.len() as u32);
            self.stored_bytes += h.rec.len() as u64;
        }
    }

    /// The server did not take `handle`'s record (refused, or no reply):
    /// it goes back to the front of the queue, or away if removed meanwhile.
    /// Called in reverse batch order, so the queue keeps store order.
    pub(super) fn unsent(&mut self, handle: u64) {
        self.flying -= 1;
        let Some(h) = self.held.get_mut(&handle) else { return };
        h.flying = false;
        if h.removed {
            self.held_bytes -= h.rec.len();
            self.held.remove(&handle);
        } else {
            self.queue.push_front(handle);
        }
    }

    /// Whether everything stored is on the server and every dead key deleted.
    pub(super) fn settled(&self) -> bool {
        self.queue.is_empty() && self.flying == 0 && self.dead.is_empty() && self.deleting == 0
    }

    /// Whether the sender has a full batch, or dead keys to delete now.
    pub(super) fn urgent(&self, batch: usize) -> bool {
        self.queue.len() >= batch || self.dead.len() >= DEAD_BATCH || (self.flushes > 0 && !(self.queue.is_empty() && self.dead.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_held_then_stored_and_a_removed_one_ends_dead_or_dropped() {
        let mut b = Book::default();
        assert_eq!(b.hold(1, &[1; 100], 1 << 20, 1 << 20), Some(1));
        assert_eq!(b.hold(2, &[2; 100], 1 << 20, 1 << 20), Some(2));
        assert_eq!(b.hold(3, &[3; 100], 1 << 20, 250), None, "held bytes are bounded");
        assert_eq!(b.hold(3, &[3; 100], 250, 1 << 20), None, "the tier's size is bounded");
        let batch = b.take_batch(8);
        assert_eq!(batch.iter().map(|(h, _)| *h).collect::<Vec<_>>(), [1, 2]);
        assert!(matches!(b.find(1), Found::Held(_)), "a flying page is still served from RAM");
        b.remove(2); // while flying
        assert!(matches!(b.find(2), Found::Nothing));
        b.sent(1);
        b.sent(2);
        assert!(matches!(b.find(1), Found::Stored));
        assert_eq!((b.dead.as_slice(), b.held_bytes, b.stored_bytes, b.pages()), (&[2u64][..], 0, 100, 1));
        assert_eq!(b.remove(1), 2, "a stored page's key goes dead");
        // Not taken: back in order; removed while held: dropped, no key.
        b.hold(4, &[4; 10], 1 << 20, 1 << 20);
        b.hold(5, &[5; 10], 1 << 20, 1 << 20);
        let batch = b.take_batch(8);
        for (h, _) in batch.iter().rev() {
            b.unsent(*h);
        }
        assert_eq!(b.queue, [4, 5]);
        b.remove(4);
        assert_eq!((b.held_bytes, b.pages(), b.flying), (10, 1, 0));
        assert_eq!(b.take_batch(8).len(), 1, "the removed page's queue entry is skipped");
    }
}
