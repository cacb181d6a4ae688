//! The `farmem-remote` thread: the only one that writes to the store. It
//! sends held records in batches, deletes dead keys, renews the expiry of
//! live ones every third of the ttl, pings a store that went down until it
//! answers, and deletes every key when the tier closes.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::book::DEAD_BATCH;
use super::wire::{Conn, Redirect, Status};
use super::Shared;

/// How often a store that went down is pinged.
const RETRY: Duration = Duration::from_secs(1);
/// Keys per pipelined renewal or deletion at close.
const KEY_CHUNK: usize = 1000;

/// The thread's body; returns when the tier has closed.
pub(super) fn run(s: &Shared) {
    let mut conn: Option<Conn> = None;
    let renew_every = Duration::from_millis(s.config.ttl_ms() / 3);
    let mut next_renew = Instant::now() + renew_every;
    loop {
        let mut b = s.lock_book();
        loop {
            let now = Instant::now();
            if b.closing || s.down.load(Ordering::Acquire) || now >= next_renew || b.urgent(s.config.batch_pages) {
                break;
            }
            if !b.queue.is_empty() || !b.dead.is_empty() {
                // A part batch: it gets `linger` to fill, then goes as it is.
                b = s.work.wait_timeout(b, s.config.linger).unwrap_or_else(|e| e.into_inner()).0;
                break;
            }
            b = s.work.wait_timeout(b, next_renew - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        if b.closing {
            let mut keys: Vec<u64> = b.stored.keys().copied().collect();
            keys.append(&mut b.dead);
            drop(b);
            if s.down.load(Ordering::Acquire) {
                // Not worth holding the exit up for connect timeouts: they expire.
                tracing::warn!("{}: the store is down at close; its {} keys expire within {} s", s.server, keys.len(), s.config.spec.ttl_secs);
            } else {
                delete_all(s, &mut conn, &keys);
            }
            s.lock_book().closed = true;
            s.progress.notify_all();
            return;
        }
        if s.down.load(Ordering::Acquire) {
            let b = s.work.wait_timeout(b, RETRY).unwrap_or_else(|e| e.into_inner()).0;
            if b.closing {
                continue;
            }
            drop(b);
            if ping(s, &mut conn) {
                s.down.store(false, Ordering::Release);
            }
            s.progress.notify_all();
            continue;
        }
        let batch = b.take_batch(s.config.batch_pages);
        let n = b.dead.len().min(4 * DEAD_BATCH);
        let dead: Vec<u64> = b.dead.drain(..n).collect();
        b.deleting = dead.len();
        drop(b);
        if !batch.is_empty() || !dead.is_empty() {
            send(s, &mut conn, &batch, &dead);
        }
        if Instant::now() >= next_renew {
            renew(s, &mut conn);
            next_renew = Instant::now() + renew_every;
        }
        s.progress.notify_all();
    }
}

/// The sender's connection, opened if it has none.
/// A connection to a node the tier no longer uses (a MOVED) is replaced.
fn connect<'c>(s: &Shared, conn: &'c mut Option<Conn>) -> Result<&'c mut Conn, String> {
    if conn.as_ref().is_some_and(|c| c.epoch != s.epoch.load(Ordering::Acquire)) {
        *conn = None;
    }
    if conn.is_none() {
        *conn = Some(s.open_conn().map_err(|e| format!("cannot connect: {e}"))?);
    }
    Ok(conn.as_mut().expect("just opened"))
}

fn ping(s: &Shared, conn: &mut Option<Conn>) -> bool {
    let ok = (|| -> Result<bool, String> {
        let c = connect(s, conn)?;
        c.ping();
        c.send().map_err(|e| e.to_string())?;
        Ok(c.status().map_err(|e| e.to_string())? == Status::Done)
    })();
    if !matches!(ok, Ok(true)) {
        *conn = None;
        return false;
    }
    true
}

/// Sends `batch`'s records and deletes `dead`'s keys in one round trip,
/// then books what the server took. On a broken connection nothing is
/// booked as sent (a SET that did arrive is sent again later: same key,
/// same bytes) and the store counts as down.
fn send(s: &Shared, conn: &mut Option<Conn>, batch: &[(u64, std::sync::Arc<[u8]>)], dead: &[u64]) {
    let ttl = s.config.ttl_ms();
    let mut moved = None;
    let result = (|| -> Result<(Vec<Status>, Option<String>), String> {
        let c = connect(s, conn)?;
        for (h, rec) in batch {
            c.set(&s.key(*h), rec, ttl);
        }
        let del_replies = c.delete(dead.iter().map(|h| s.key(*h)));
        c.send().map_err(|e| format!("sending {} pages: {e}", batch.len()))?;
        let mut statuses = Vec::with_capacity(batch.len());
        for _ in batch {
            statuses.push(c.status().map_err(|e| format!("reading the reply to a SET: {e}"))?);
        }
        // A key already gone (expired) is deleted as far as the tier cares;
        // a refused delete (a redirect, TRYAGAIN in a migration) is tried again.
        let mut del_refused = None;
        for _ in 0..del_replies {
            if let Status::Refused(m) = c.status().map_err(|e| format!("reading the reply to a delete: {e}"))? {
                del_refused = Some(m);
            }
        }
        Ok((statuses, del_refused))
    })();
    let c = &s.counters;
    let mut b = s.lock_book();
    b.deleting = 0;
    match result {
        Ok((statuses, del_refused)) => {
            let mut refused = None;
            let mut took = 0;
            let mut asked = Vec::new();
            for ((h, _), st) in batch.iter().zip(&statuses) {
                if *st == Status::Done {
                    b.sent(*h);
                    took += 1;
                }
            }
            let host = s.node_host();
            for ((h, rec), st) in batch.iter().zip(&statuses).rev() {
                let Status::Refused(m) = st else { continue };
                match Redirect::of(m, &host) {
                    // Sent again, to the slot's node, in the next round.
                    Some(Redirect::Moved(h2, p2)) => {
                        b.unsent(*h);
                        moved = Some((h2, p2));
                    }
                    Some(Redirect::Ask(h2, p2)) => asked.push((*h, rec.clone(), h2, p2)),
                    None => {
                        b.unsent(*h);
                        refused = Some(m.clone());
                    }
                }
            }
            if let Some(m) = &del_refused {
                b.dead.extend_from_slice(dead);
                if let Some(Redirect::Moved(h2, p2)) = Redirect::of(m, &host) {
                    moved = Some((h2, p2));
                }
            }
            drop(b);
            if let Some((h2, p2)) = &moved {
                s.follow(h2, *p2);
            }
            if !asked.is_empty() {
                took += send_asked(s, &asked);
            }
            c.batches.fetch_add(1, Ordering::Relaxed);
            c.pages_sent.fetch_add(took, Ordering::Relaxed);
            if del_refused.is_none() {
                c.keys_deleted.fetch_add(dead.len() as u64, Ordering::Relaxed);
            }
            match refused {
                Some(m) => s.mark_down(&format_args!("the server refused a page: {m}")),
                None if !batch.is_empty() && s.warned.swap(false, Ordering::AcqRel) => tracing::warn!("{}: the store answers again and takes pages", s.server),
                None => {}
            }
        }
        Err(e) => {
            for (h, _) in batch.iter().rev() {
                b.unsent(*h);
            }
            b.dead.extend_from_slice(dead);
            drop(b);
            *conn = None;
            s.mark_down(&e);
        }
    }
}

/// Sends the records an ASK redirect named (new keys of a slot being
/// migrated) to the node it named, each after `ASKING`; books what it took
/// as sent and the rest as unsent. Returns how many it took.
fn send_asked(s: &Shared, asked: &[(u64, std::sync::Arc<[u8]>, String, u16)]) -> u64 {
    let ttl = s.config.ttl_ms();
    let (host, port) = (&asked[0].2, asked[0].3);
    let result = (|| -> Result<Vec<Status>, String> {
        let mut c = s.ask_conn(host, port).map_err(|e| format!("cannot connect to {host}:{port} (ASK redirect): {e}"))?;
        for (h, rec, _, _) in asked {
            c.set(&s.key(*h), rec, ttl);
        }
        c.send().map_err(|e| e.to_string())?;
        asked.iter().map(|_| c.status().map_err(|e| e.to_string())).collect()
    })();
    let mut b = s.lock_book();
    let mut took = 0;
    for (k, (h, ..)) in asked.iter().enumerate().rev() {
        match result.as_ref().map(|st| &st[k]) {
            Ok(Status::Done) => {
                b.sent(*h);
                took += 1;
            }
            _ => b.unsent(*h),
        }
    }
    if let Err(e) = result {
        tracing::debug!("{}: {e}", s.server);
    }
    took
}

/// Renews the expiry of every stored key, a chunk per round trip. A key
/// found gone is a page the server lost: counted, and logged once per round.
fn renew(s: &Shared, conn: &mut Option<Conn>) {
    let keys: Vec<u64> = s.lock_book().stored.keys().copied().collect();
    let ttl = s.config.ttl_ms();
    let mut lost = 0u64;
    for chunk in keys.chunks(KEY_CHUNK) {
        let r = (|| -> Result<(), String> {
            let c = connect(s, conn)?;
            for h in chunk {
                c.renew(&s.key(*h), ttl);
            }
            c.send().map_err(|e| format!("renewing expiries: {e}"))?;
            for _ in chunk {
                match c.status().map_err(|e| format!("reading the reply to a renewal: {e}"))? {
                    Status::Done => {
                        s.counters.renewed.fetch_add(1, Ordering::Relaxed);
                    }
                    Status::Missing => lost += 1,
                    // A MOVED is followed; the next round renews on the slot's node.
                    Status::Refused(m) => {
                        s.redirect(&m);
                        tracing::debug!("{}: a renewal was refused: {m}", s.server);
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            *conn = None;
            s.mark_down(&e);
            break;
        }
    }
    if lost > 0 {
        s.counters.lost.fetch_add(lost, Ordering::Relaxed);
        tracing::warn!("{}: {lost} keys were gone when their expiry was renewed (the server evicted or lost them): those pages are lost, SIGBUS on access", s.server);
    }
}

/// Deletes `keys` at close; what cannot be deleted expires on its own.
fn delete_all(s: &Shared, conn: &mut Option<Conn>, keys: &[u64]) {
    let mut left = keys.len();
    for chunk in keys.chunks(KEY_CHUNK) {
        // Ok(Some(message)): the server refused a delete.
        let attempt = |conn: &mut Option<Conn>| -> Result<Option<String>, String> {
            let c = connect(s, conn)?;
            let n = c.delete(chunk.iter().map(|h| s.key(*h)));
            c.send().map_err(|e| e.to_string())?;
            let mut refused = None;
            for _ in 0..n {
                if let Status::Refused(m) = c.status().map_err(|e| e.to_string())? {
                    refused = Some(m);
                }
            }
            Ok(refused)
        };
        let mut r = attempt(conn);
        // A second try after a MOVED, which `redirect` follows.
        if let Ok(Some(m)) = &r {
            if matches!(s.redirect(m), Some(Redirect::Moved(..))) {
                r = attempt(conn);
            }
        }
        let r = match r {
            Ok(Some(m)) => Err(format!("the server refused: {m}")),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!("{}: {left} keys could not be deleted at close ({e}); they expire within {} s", s.server, s.config.spec.ttl_secs);
            return;
        }
        left -= chunk.len();
        s.counters.keys_deleted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

impl Shared {
    /// Has the sender delete every key and stop; waits for it a few timeouts
    /// at most. Does nothing in a forked child (the sender is the parent's).
    pub(super) fn close(&self) {
        if std::process::id() != self.owner_pid {
            return;
        }
        let deadline = Instant::now() + self.config.timeout * 4 + Duration::from_secs(1);
        let mut b = self.lock_book();
        b.closing = true;
        self.work.notify_all();
        while !b.closed {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!("{}: the sender did not finish deleting keys in time; they expire within {} s", self.server, self.config.spec.ttl_secs);
                return;
            }
            b = self.progress.wait_timeout(b, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}
