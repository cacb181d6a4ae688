//! A spill tier on a network store people already run: Redis or Valkey
//! (`redis://HOST:PORT[/PREFIX]`), or memcached (`memcached://HOST:PORT`).
//!
//! A stored page becomes the same record the file tier writes (the page
//! compressed with T1's codec, a header naming its handle, crc32c in
//! front), sealed with ChaCha20-Poly1305 under a key drawn when the tier is
//! made and kept only in this process's memory unless the spec says `plain`,
//! and is kept under a key of its own:
//! `PREFIX` `{fm:` *16 random hex digits* `}:` *handle in hex*. The random part
//! is drawn per tier, so two processes never share a key and a restarted
//! process never reads an old one; a handle is never reused, so neither is a
//! key. Every key expires after the spec's `ttl` (an hour by default), and
//! the tier renews the expiry of its live keys every third of it: a process
//! that dies without cleaning up leaves nothing forever.
//!
//! # The parts
//!
//! | module | its job |
//! | --- | --- |
//! | `wire` | one connection, its buffers, and the commands of both protocols, pipelined |
//! | `book` | which pages are where: held in RAM for sending, stored on the server, or removed and to be deleted |
//! | `sender` | the `farmem-remote` thread: sends held records in batches, deletes removed keys, renews expiries, notices the store going down and coming back |
//! | `exit` | deleting every key of the process when it exits |
//! | `config` | [`RemoteConfig`] |
//! | `local` | [`LocalServer`]: a store on loopback, for tests and benchmarks; [`BareClient`]: the store without the tier, for baselines |
//!
//! # How a page flows
//!
//! 1. **Store** (the caller's thread, the runtime's demotion or eviction):
//!    the record is built and *held* in RAM, and the store returns. No
//!    network on this path: the caller is never held up by the store.
//! 2. **Send** (`sender`): held records go out up to `batch_pages` at a
//!    time as one pipelined write (SETs with an expiry), and their replies
//!    are read back in one go. A record stays held, served from RAM, until
//!    the server has said it took it; only then is the page *stored*.
//! 3. **Load**: a held page is decoded from RAM; a stored one is one GET, one
//!    round trip, on a connection from the tier's pool. [`Tier::load_many`]
//!    (prefetch of pages demoted together) pipelines its GETs: one round
//!    trip for all of them. The record's crc32c, the handle in its header,
//!    and the tag when encrypted, are checked before a byte is given out.
//! 4. **Remove**: a held page is dropped; a stored page's key joins the
//!    *dead* list, deleted by the sender in batches (one `DEL` of many keys
//!    for Redis).
//!
//! # Failures
//!
//! - **The store is down or slow.** A send, a load or a renewal that fails
//!   marks the tier down, with one log line; stores are then refused with
//!   [`TierError::Full`], so demotion stops and pages stay in the nearer
//!   tiers (the runtime's rule for a full tier). Stores are refused too while
//!   `held_bytes` of records wait for a slow store. The sender pings every
//!   second and logs one line when the store answers again.
//! - **A page cannot be read back** (the server lost it, the key expired or
//!   was evicted, the bytes fail their check, no connection): the load fails
//!   with [`TierError::Remote`], naming the key and why, and the runtime
//!   poisons that page alone: SIGBUS on access, never wrong bytes.
//! - At start the tier warns if the server may evict keys on its own
//!   (Redis `maxmemory` with a policy other than `noeviction`; memcached
//!   without `-M`): an evicted key is a lost page.
//!
//! # Redis Cluster
//!
//! The braces in the key are a hash tag: every key of one tier hashes to one
//! slot, so a tier's pages live on one node, each batch is one pipeline to
//! it, and the tiers of many processes (each its own random run id) spread
//! over the nodes. At open a GET of a key never used finds the node (it
//! answers, or redirects with `MOVED`); a `MOVED` later (the slot resharded,
//! a failover) moves the tier to the new node, its pooled connections
//! closed; while the slot migrates, an `ASK` sends that one key's command
//! to the importing node after `ASKING`. The spec names any node of the
//! cluster.
//!
//! # Limits
//!
//! No TLS, no AUTH (a server that wants a password refuses the first ping,
//! and the tier is not made). Loads block the faulting thread for a round
//! trip, so the tier takes thread mode only
//! ([`Tier::loads_in_signal_handler`] is false).
//!
//! # Example
//!
//! ```no_run
//! use farmem_tiers::{PageClass, RemoteConfig, RemoteTier, Tier, PAGE_SIZE};
//!
//! let tier = RemoteTier::open(RemoteConfig::redis("127.0.0.1", 6379)).unwrap();
//! let mut page = [0u8; PAGE_SIZE];
//! page[..13].copy_from_slice(b"hello, remote");
//! let handle = tier.store(&page, PageClass::DEFAULT).unwrap();
//! tier.flush().unwrap(); // now on the server
//! let mut back = [0u8; PAGE_SIZE];
//! tier.load(handle, &mut back).unwrap(); // one GET
//! assert_eq!(back, page);
//! tier.remove(handle); // its key is deleted by the sender
//! ```

mod book;
mod config;
mod exit;
mod local;
mod sender;
mod wire;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use config::RemoteConfig;
pub use local::{free_port, BareClient, LocalCluster, LocalServer};

use crate::file::crypt::Sealer;
use crate::file::record::{self, MAX_RECORD, RECORD_BUF};
use crate::latency::OpLatency;
use crate::{Capacity, Handle, Page, PageClass, RemoteProtocol, SpillTier, Tier, TierError, TierStats, PAGE_SIZE};
use book::Book;
use wire::{Conn, Key, Redirect, Status, Value};

/// Connections kept for loads; more may be open at once, the rest are closed after use.
const POOL: usize = 8;

/// The remote spill tier.
pub struct RemoteTier {
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
}

/// Counters beyond [`TierStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Pages whose records wait in RAM for the server.
    pub held_pages: u64,
    /// Pages the server holds.
    pub stored_pages: u64,
    /// Bytes of records the server holds (values only, not its own overhead).
    pub stored_bytes: u64,
    /// Batches sent (each one round trip).
    pub batches: u64,
    /// Records sent.
    pub pages_sent: u64,
    /// Loads served from records still held in RAM.
    pub held_loads: u64,
    /// Round trips of loads (one per `load`, one per `load_many` batch).
    pub load_round_trips: u64,
    /// Keys deleted (pages removed, and at close).
    pub keys_deleted: u64,
    /// Expiries renewed.
    pub renewed: u64,
    /// Keys found missing on renewal or load: pages the server lost.
    pub lost: u64,
    /// Times the store went down (sends, loads or renewals failed).
    pub down_events: u64,
    /// Whether the store counts as down now.
    pub down: bool,
}

#[derive(Default)]
struct Counters {
    stores: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    batches: AtomicU64,
    pages_sent: AtomicU64,
    held_loads: AtomicU64,
    load_round_trips: AtomicU64,
    keys_deleted: AtomicU64,
    renewed: AtomicU64,
    lost: AtomicU64,
    down_events: AtomicU64,
}

/// The tier's state, shared with its sender thread.
struct Shared {
    config: RemoteConfig,
    /// `redis://HOST:PORT`, for messages.
    server: String,
    /// What every key starts with: the prefix, `fm:`, the run id, `:`.
    base: Vec<u8>,
    sealer: Option<Sealer>,
    /// The next handle; handles are never reused, so neither are keys.
    next: AtomicU64,
    book: Mutex<Book>,
    /// Wakes the sender: a batch is ready, keys are dead, the tier closes.
    work: Condvar,
    /// Wakes flushes and the close: the sender finished a round.
    progress: Condvar,
    pool: Mutex<Vec<Conn>>,
    /// The node that serves the tier's keys: the server the spec names, or
    /// the Redis Cluster node its slot lives on.
    node: Mutex<(String, u16)>,
    /// Counts the node's changes; connections carry the epoch they were made in.
    epoch: AtomicU64,
    /// The store failed a send, load or renewal; cleared by a ping that works.
    down: AtomicBool,
    /// An outage was logged; cleared, with a line, by the next batch the store takes.
    warned: AtomicBool,
    owner_pid: u32,
    counters: Counters,
    latency: OpLatency,
}

impl RemoteTier {
    /// Connects to the store, checks that it answers, and starts the sender.
    /// Fails, naming the server, if it cannot be reached.
    pub fn open(config: RemoteConfig) -> Result<Self, TierError> {
        let spec = &config.spec;
        let server = spec.server();
        let fail = |op: &'static str, reason: String| TierError::Remote { op, server: server.clone(), key: None, reason };
        if spec.size_bytes == 0 || !spec.size_bytes.is_multiple_of(PAGE_SIZE as u64) {
            return Err(TierError::BadLimit { tier: spec.protocol.scheme(), limit_bytes: spec.size_bytes });
        }
        // Keys hold the prefix and 36 bytes of the tier's own; memcached
        // takes 250 bytes of printable ASCII without spaces at most.
        if spec.prefix.len() > 200 || !spec.prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(fail("setting up", format!("the key prefix {:?} must be printable ASCII without spaces, 200 bytes at most", spec.prefix)));
        }
        if config.batch_pages == 0 || config.held_bytes < 2 * MAX_RECORD {
            return Err(fail("setting up", format!("batch_pages {} and held_bytes {} must allow one batch of one page", config.batch_pages, config.held_bytes)));
        }
        let connect = |host: &str, port: u16| -> Result<Conn, TierError> {
            let mut conn = Conn::open(spec.protocol, host, port, config.timeout).map_err(|e| fail("connecting", format!("{host}:{port}: {e}")))?;
            conn.ping();
            conn.send().map_err(|e| fail("pinging", e.to_string()))?;
            match conn.status().map_err(|e| fail("pinging", e.to_string()))? {
                Status::Done => Ok(conn),
                other => Err(fail("pinging", format!("the server answered {other:?}"))),
            }
        };
        let mut conn = connect(&spec.host, spec.port)?;
        let mut run = [0u8; 8];
        getrandom::getrandom(&mut run).map_err(|e| fail("drawing the run id", e.to_string()))?;
        // The braces are a Redis Cluster hash tag: all of the tier's keys
        // share one slot, so they live on one node, a batch is one
        // pipeline to it, and other processes' tiers spread over the nodes.
        let base = format!("{}{{fm:{:016x}}}:", spec.prefix, u64::from_le_bytes(run)).into_bytes();
        let mut node = (spec.host.clone(), spec.port);
        if spec.protocol == RemoteProtocol::Redis {
            // Which node serves the tier's slot: a GET of a key never used
            // (handle 0) is answered, or redirected with MOVED.
            for _ in 0..4 {
                conn.get(&Key::new(&base, 0));
                conn.send().map_err(|e| fail("probing", e.to_string()))?;
                match conn.value(&mut [0u8; 64]).map_err(|e| fail("probing", e.to_string()))? {
                    Value::Refused(m) => match Redirect::of(&m, &node.0) {
                        Some(Redirect::Moved(h, p)) => {
                            conn = connect(&h, p)?;
                            node = (h, p);
                        }
                        _ => return Err(fail("probing", format!("the server refused a GET: {m}"))),
                    },
                    _ => break,
                }
            }
        }
        warn_if_it_evicts(&mut conn, &server, spec.protocol);
        let sealer = if spec.plain { None } else { Some(Sealer::random().map_err(|e| fail("drawing the page key", e.to_string()))?) };
        let served_by = if (node.0.as_str(), node.1) != (spec.host.as_str(), spec.port) { format!(" (cluster node {}:{} serves its keys)", node.0, node.1) } else { String::new() };
        tracing::info!(
            "{} tier: {server}{served_by}, keys {}*, {} MiB at most, keys expire after {} s unless renewed, {}",
            spec.protocol.scheme(),
            String::from_utf8_lossy(&base),
            spec.size_bytes >> 20,
            spec.ttl_secs,
            if sealer.is_some() { "encrypted" } else { "NOT encrypted (plain)" }
        );
        let shared = Arc::new(Shared {
            server,
            base,
            sealer,
            next: AtomicU64::new(1),
            book: Mutex::new(Book::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
            pool: Mutex::new(vec![conn]),
            node: Mutex::new(node),
            epoch: AtomicU64::new(0),
            down: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            owner_pid: std::process::id(),
            counters: Counters::default(),
            latency: OpLatency::default(),
            config,
        });
        let s = Arc::clone(&shared);
        let sender = crate::threads::spawn(c"farmem-remote", move || sender::run(&s)).map_err(|e| TierError::Os { op: "starting the remote tier's sender thread", source: e })?;
        exit::register(&shared);
        Ok(RemoteTier { shared, sender: Some(sender) })
    }

    /// The tier of a `redis://` or `memcached://` spec part, pages compressed
    /// with `codec`; other kinds are refused.
    pub fn from_spill(spill: &SpillTier, codec: crate::Codec) -> Result<Self, TierError> {
        match RemoteConfig::from_spill(spill) {
            Some(config) => Self::open(RemoteConfig { codec, ..config }),
            None => Err(TierError::Unsupported { what: "a remote tier from a spec part that is not redis:// or memcached://" }),
        }
    }

    /// The configuration the tier was made with.
    pub fn config(&self) -> &RemoteConfig {
        &self.shared.config
    }

    /// The server, as `redis://HOST:PORT`.
    pub fn server(&self) -> &str {
        &self.shared.server
    }

    /// The key the page of `handle` is kept under (for tests and tools).
    pub fn key_of(&self, handle: Handle) -> String {
        Key::new(&self.shared.base, handle.raw()).text()
    }

    /// The node that serves the tier's keys now, as host and port: the
    /// server the spec names, or the Redis Cluster node of the tier's slot.
    pub fn node(&self) -> (String, u16) {
        self.shared.node.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What every key of this tier starts with.
    pub fn key_base(&self) -> String {
        String::from_utf8_lossy(&self.shared.base).into_owned()
    }

    /// Waits until every page stored so far is on the server and every
    /// removed page's key is deleted; fails if the store is down.
    pub fn flush(&self) -> Result<(), TierError> {
        let s = &self.shared;
        let mut b = s.lock_book();
        b.flushes += 1;
        s.work.notify_all();
        let deadline = Instant::now() + s.config.timeout * 4 + Duration::from_secs(1);
        loop {
            if s.down.load(Ordering::Acquire) {
                b.flushes -= 1;
                return Err(TierError::Remote { op: "flushing", server: s.server.clone(), key: None, reason: "the store is down".into() });
            }
            if b.settled() {
                b.flushes -= 1;
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                b.flushes -= 1;
                return Err(TierError::Remote { op: "flushing", server: s.server.clone(), key: None, reason: "the store did not take the pages in time".into() });
            }
            b = s.progress.wait_timeout(b, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Counters beyond [`TierStats`].
    pub fn remote_stats(&self) -> RemoteStats {
        let s = &self.shared;
        let c = &s.counters;
        let b = s.lock_book();
        RemoteStats {
            held_pages: b.held_pages(),
            stored_pages: b.stored.len() as u64,
            stored_bytes: b.stored_bytes,
            batches: c.batches.load(Ordering::Relaxed),
            pages_sent: c.pages_sent.load(Ordering::Relaxed),
            held_loads: c.held_loads.load(Ordering::Relaxed),
            load_round_trips: c.load_round_trips.load(Ordering::Relaxed),
            keys_deleted: c.keys_deleted.load(Ordering::Relaxed),
            renewed: c.renewed.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            down_events: c.down_events.load(Ordering::Relaxed),
            down: s.down.load(Ordering::Relaxed),
        }
    }
}

/// Warns when the server may evict keys by itself: each evicted key is a
/// page lost (SIGBUS on access). Servers that refuse the query are let be.
fn warn_if_it_evicts(conn: &mut Conn, server: &str, protocol: RemoteProtocol) {
    let mut ask = |words: &[&str]| -> Option<Vec<String>> {
        conn.command(words);
        conn.send().ok()?;
        conn.text_reply().ok()?.ok()
    };
    match protocol {
        RemoteProtocol::Redis => {
            let policy = ask(&["CONFIG", "GET", "maxmemory-policy"]).and_then(|w| w.get(1).cloned());
            let limit = ask(&["CONFIG", "GET", "maxmemory"]).and_then(|w| w.get(1).and_then(|v| v.parse::<u64>().ok()));
            if let (Some(policy), Some(limit)) = (policy, limit) {
                if limit > 0 && policy != "noeviction" {
                    tracing::warn!("{server}: maxmemory {limit} with maxmemory-policy {policy}: the server may evict farmem's keys, and each evicted key is a lost page (SIGBUS on access); set maxmemory-policy noeviction");
                }
            }
        }
        RemoteProtocol::Memcached => {
            if let Some(lines) = ask(&["stats", "settings"]) {
                if lines.iter().any(|l| l == "STAT evictions on") {
                    tracing::warn!("{server}: memcached evicts items when its memory is full, and each evicted item is a lost page (SIGBUS on access); start it with -M (and enough -m) for farmem");
                }
            }
        }
    }
}

impl Shared {
    fn lock_book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self) -> &'static str {
        self.config.spec.protocol.scheme()
    }

    fn key(&self, handle: u64) -> Key {
        Key::new(&self.base, handle)
    }

    /// Counts the store down, logging it once per outage.
    fn mark_down(&self, why: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::AcqRel) {
            // The sender starts pinging at once, even from a linger.
            self.work.notify_all();
            self.counters.down_events.fetch_add(1, Ordering::Relaxed);
            if !self.warned.swap(true, Ordering::AcqRel) {
                tracing::warn!("{}: {why}; the store counts as down: pages stay in the nearer tiers until it answers again", self.server);
            }
        }
    }

    /// A connection for a load: one from the pool, or a new one. A forked
    /// child never uses its parent's connections.
    fn take_conn(&self) -> std::io::Result<Conn> {
        if std::process::id() == self.owner_pid {
            let epoch = self.epoch.load(Ordering::Acquire);
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(c) = pool.pop() {
                if c.epoch == epoch {
                    return Ok(c);
                }
            }
        }
        self.open_conn()
    }

    /// A new connection to the node that serves the tier's keys now.
    fn open_conn(&self) -> std::io::Result<Conn> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let (host, port) = self.node.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut c = Conn::open(self.config.spec.protocol, &host, port, self.config.timeout)?;
        c.epoch = epoch;
        Ok(c)
    }

    /// A connection for an ASK redirect: its commands go after `ASKING`; never pooled.
    fn ask_conn(&self, host: &str, port: u16) -> std::io::Result<Conn> {
        let mut c = Conn::open(self.config.spec.protocol, host, port, self.config.timeout)?;
        c.asking();
        c.epoch = u64::MAX;
        Ok(c)
    }

    /// The host of the node in use, for redirects that name none.
    fn node_host(&self) -> String {
        self.node.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Follows a MOVED: the tier's slot is served by `host:port` from now on.
    fn follow(&self, host: &str, port: u16) {
        let mut node = self.node.lock().unwrap_or_else(|e| e.into_inner());
        if (node.0.as_str(), node.1) == (host, port) {
            return;
        }
        *node = (host.to_owned(), port);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        drop(node);
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        tracing::info!("{}: the tier's keys are served by {host}:{port} now (cluster redirect)", self.server);
    }

    /// The redirect in a refusal, following it if it is a MOVED.
    fn redirect(&self, message: &str) -> Option<Redirect> {
        let r = Redirect::of(message, &self.node_host())?;
        if let Redirect::Moved(h, p) = &r {
            self.follow(h, *p);
        }
        Some(r)
    }

    fn give_back(&self, conn: Conn) {
        if std::process::id() != self.owner_pid || conn.epoch != self.epoch.load(Ordering::Acquire) {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL {
            pool.push(conn);
        }
    }

    /// Decodes the record `rec` of `handle` into `out`.
    fn decode(&self, handle: u64, rec: &mut [u8], out: &mut Page) -> Result<(), TierError> {
        let (slot, generation) = split(handle);
        record::decode(rec, slot, generation, self.sealer.as_ref(), out).map_err(|reason| self.load_error(handle, "checking a page", reason))
    }

    fn load_error(&self, handle: u64, op: &'static str, reason: String) -> TierError {
        self.counters.load_errors.fetch_add(1, Ordering::Relaxed);
        TierError::Remote { op, server: self.server.clone(), key: Some(self.key(handle).text()), reason }
    }

    /// Loads the pages of `handles` (each its index in `out` and its
    /// handle) from the server, all GETs in one round trip, calling
    /// `done(index, result)` for each. A broken connection gets one more
    /// try, on a fresh one, for the pages not yet answered (none when the
    /// store already counts as down); then they fail. A key an ASK redirect
    /// names is fetched from there on its own.
    fn fetch(&self, handles: &[(usize, u64)], out: &mut [Page], done: &mut dyn FnMut(usize, Result<(), TierError>)) {
        let mut k = 0;
        let mut last = String::new();
        // A broken connection gets one more try; a MOVED (the tier's slot
        // went to another cluster node) sends the rest there, up to three times.
        let io_tries = if self.down.load(Ordering::Acquire) { 1 } else { 2 };
        let (mut io_failures, mut redirects) = (0, 0);
        while io_failures < io_tries && redirects < 3 {
            if k == handles.len() {
                return;
            }
            let mut conn = match self.take_conn() {
                Ok(c) => c,
                Err(e) => {
                    last = format!("cannot connect: {e}");
                    io_failures += 1;
                    continue;
                }
            };
            for &(_, h) in &handles[k..] {
                conn.get(&self.key(h));
            }
            self.counters.load_round_trips.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = conn.send() {
                last = format!("sending GETs: {e}");
                io_failures += 1;
                continue;
            }
            let mut rec = [0u8; MAX_RECORD];
            let broken = loop {
                let Some(&(i, h)) = handles.get(k) else { break None };
                let r = match conn.value(&mut rec) {
                    Ok(Value::Got(n)) => self.decode(h, &mut rec[..n], &mut out[i]),
                    Ok(Value::Missing) => {
                        self.counters.lost.fetch_add(1, Ordering::Relaxed);
                        Err(self.load_error(h, "loading a page", "the key is gone: it expired, the server evicted it, or the server restarted".into()))
                    }
                    Ok(Value::TooLong(n)) => Err(self.load_error(h, "loading a page", format!("the value is {n} bytes, longer than any record of this tier"))),
                    Ok(Value::Refused(m)) => match self.redirect(&m) {
                        // The rest of the batch goes to where the slot is
                        // (the connection, its replies unread, is dropped).
                        Some(Redirect::Moved(..)) => {
                            redirects += 1;
                            break Some(format!("redirected: {m}"));
                        }
                        // This key alone has moved on in a migration; the
                        // next ones may not have.
                        Some(Redirect::Ask(h2, p2)) => self.fetch_asked(&h2, p2, h, &mut out[i]),
                        None => Err(self.load_error(h, "loading a page", format!("the server refused the GET: {m}"))),
                    },
                    Err(e) => {
                        io_failures += 1;
                        break Some(format!("reading a GET reply: {e}"));
                    }
                };
                done(i, r);
                k += 1;
            };
            match broken {
                None => {
                    self.give_back(conn);
                    return;
                }
                Some(e) => last = e,
            }
        }
        if k < handles.len() {
            self.mark_down(&last);
        }
        for &(i, h) in &handles[k..] {
            done(i, Err(self.load_error(h, "loading a page", last.clone())));
        }
    }
}

impl Shared {
    /// Fetches `handle`'s page from the node an ASK redirect named (its
    /// slot is migrating there), after `ASKING`.
    fn fetch_asked(&self, host: &str, port: u16, handle: u64, out: &mut Page) -> Result<(), TierError> {
        let failed = |reason: String| self.load_error(handle, "loading a page", reason);
        let mut conn = self.ask_conn(host, port).map_err(|e| failed(format!("cannot connect to {host}:{port} (ASK redirect): {e}")))?;
        conn.get(&self.key(handle));
        conn.send().map_err(|e| failed(format!("sending a GET to {host}:{port} (ASK redirect): {e}")))?;
        self.counters.load_round_trips.fetch_add(1, Ordering::Relaxed);
        let mut rec = [0u8; MAX_RECORD];
        match conn.value(&mut rec).map_err(|e| failed(format!("reading a GET reply from {host}:{port} (ASK redirect): {e}")))? {
            Value::Got(n) => self.decode(handle, &mut rec[..n], out),
            Value::Missing => Err(failed(format!("the key is gone: {host}:{port}, where the cluster sent the GET, does not have it"))),
            other => Err(failed(format!("{host}:{port} (ASK redirect) answered {other:?}"))),
        }
    }
}

/// A handle's two halves as a record header names them: the low 32 bits
/// and the next 24.
fn split(handle: u64) -> (u32, u32) {
    (handle as u32, ((handle >> 32) & 0xff_ffff) as u32)
}

impl Drop for RemoteTier {
    /// Deletes every key of the tier on the server (within a few timeouts), then stops the sender.
    fn drop(&mut self) {
        self.shared.close();
        if let Some(t) = self.sender.take() {
            if self.shared.lock_book().closed {
                let _ = t.join();
            }
        }
    }
}

impl Tier for RemoteTier {
    fn name(&self) -> &str {
        self.shared.name()
    }

    /// Holds the page's record for the sender; refused with
    /// [`TierError::Full`] when the tier is at its size, the store is down,
    /// or `held_bytes` wait already (PageClass is not used: one codec).
    fn store(&self, page: &Page, _class: PageClass) -> Result<Handle, TierError> {
        let s = &self.shared;
        let start = Instant::now();
        let full = || TierError::Full { tier: s.name(), limit_bytes: s.config.spec.size_bytes };
        if s.down.load(Ordering::Acquire) {
            s.latency.store.record_since(start);
            return Err(full());
        }
        let h = s.next.fetch_add(1, Ordering::Relaxed);
        let (slot, generation) = split(h);
        let mut rec = [0u8; RECORD_BUF];
        let n = record::encode(page, s.config.codec, slot, generation, h, s.sealer.as_ref(), &mut rec);
        let r = s.lock_book().hold(h, &rec[..n], s.config.spec.size_bytes, s.config.held_bytes);
        let r = match r {
            Some(ready) => {
                if ready >= s.config.batch_pages {
                    s.work.notify_one();
                }
                s.counters.stores.fetch_add(1, Ordering::Relaxed);
                Ok(Handle::new(h))
            }
            None => Err(full()),
        };
        s.latency.store.record_since(start);
        r
    }

    fn load(&self, handle: Handle, out: &mut Page) -> Result<(), TierError> {
        let mut result = Err(TierError::UnknownHandle(handle));
        self.load_many(&[handle], std::slice::from_mut(out), &mut |_, r| result = r);
        result
    }

    /// Held pages from RAM; the rest with all their GETs in one round trip.
    fn load_many(&self, handles: &[Handle], out: &mut [Page], done: &mut dyn FnMut(usize, Result<(), TierError>)) {
        assert_eq!(handles.len(), out.len(), "load_many: {} handles for {} pages", handles.len(), out.len());
        let s = &self.shared;
        let start = Instant::now();
        let mut remote = Vec::with_capacity(handles.len());
        for (i, h) in handles.iter().enumerate() {
            s.counters.loads.fetch_add(1, Ordering::Relaxed);
            let found = s.lock_book().find(h.raw());
            match found {
                book::Found::Held(rec) => {
                    s.counters.held_loads.fetch_add(1, Ordering::Relaxed);
                    let mut copy = [0u8; MAX_RECORD];
                    copy[..rec.len()].copy_from_slice(&rec);
                    done(i, s.decode(h.raw(), &mut copy[..rec.len()], &mut out[i]));
                }
                book::Found::Stored => remote.push((i, h.raw())),
                book::Found::Nothing => done(i, Err(TierError::UnknownHandle(*h))),
            }
        }
        s.fetch(&remote, out, done);
        for _ in handles {
            s.latency.load.record_since(start);
        }
    }

    /// Drops a held page, or lists a stored page's key for deletion.
    fn remove(&self, handle: Handle) {
        let s = &self.shared;
        if s.lock_book().remove(handle.raw()) >= book::DEAD_BATCH {
            s.work.notify_one();
        }
    }

    fn capacity(&self) -> Capacity {
        let b = self.shared.lock_book();
        Capacity { limit_bytes: self.shared.config.spec.size_bytes, used_bytes: b.held_bytes as u64 + b.stored_bytes }
    }

    fn stats(&self) -> TierStats {
        let s = &self.shared;
        let c = &s.counters;
        let b = s.lock_book();
        let pages = b.pages();
        let bytes = b.held_bytes as u64 + b.stored_bytes;
        TierStats {
            pages,
            bytes_in: pages * PAGE_SIZE as u64,
            bytes_compressed: bytes,
            bytes_used: bytes,
            stores: c.stores.load(Ordering::Relaxed),
            loads: c.loads.load(Ordering::Relaxed),
            load_errors: c.load_errors.load(Ordering::Relaxed),
            ..TierStats::default()
        }
        .with_latency(&s.latency)
    }
}

impl std::fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTier").field("server", &self.shared.server).field("keys", &self.key_base()).field("encrypted", &self.shared.sealer.is_some()).finish()
    }
}
