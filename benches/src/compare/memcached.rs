//! The memcached workload, driven from the harness over loopback through a
//! text-protocol client of its own (memtier_benchmark is not packaged in
//! Debian): load keys of mixed compressibility, then several connections
//! doing Zipf(0.99) gets and sets for the timed part, every get's bytes
//! compared with what was last set, then every key read back. The server is
//! the measured process.
//!
//! Each connection owns the keys congruent to its index modulo
//! [`CONNECTIONS`], so it alone writes them and always knows which version a
//! get must return; its Zipf ranks are drawn over its own share, so the
//! hottest keys are spread over the connections rather than fought over.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::CompareError;
use crate::heap;
use crate::kernel;
use crate::policy::{Rng, Zipf};
use crate::stats::{histogram, LatencySummary};

/// Bytes of every value, as in the redis workload.
pub const VALUE_BYTES: usize = 1024;
/// Client connections in the timed part (a thread each).
pub const CONNECTIONS: usize = 4;
/// The Zipf exponent of the key choice, as kv-zipf's.
pub const THETA: f64 = 0.99;
/// Sets sent before their replies are read, in the load.
const LOAD_BATCH: u64 = 256;
/// Keys of one multi-get in the final read-back.
const VERIFY_BATCH: u64 = 100;
/// The bytes of a value that say which key and version it is.
const HEADER: usize = 16;

/// Keys are `key:` and twelve digits, as in the redis workload.
pub fn key(k: u64) -> String {
    format!("key:{k:012}")
}

/// Version `version` of the value of key `k`: `len` bytes (16 to a page) cut
/// from a [`heap::fill_page`] page (zero, text, record or random, so
/// compressibility matches the other workloads), whose kind and bytes change
/// with the version, so a stale copy never passes for the new one; the key
/// and the version in the first 16 bytes.
pub fn value(k: u64, version: u64, len: usize) -> Vec<u8> {
    let mut page = [0u8; heap::PAGE];
    heap::fill_page(&mut page, 11, (k ^ version.rotate_right(20)) as usize);
    let mut v = page[..len.clamp(HEADER, heap::PAGE)].to_vec();
    v[..8].copy_from_slice(&k.to_le_bytes());
    v[8..HEADER].copy_from_slice(&version.to_le_bytes());
    v
}

/// The key and version a value's header claims (for saying what came back).
fn header(v: &[u8]) -> Option<(u64, u64)> {
    let k = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let ver = u64::from_le_bytes(v.get(8..HEADER)?.try_into().ok()?);
    Some((k, ver))
}

/// MiB to give memcached (`-m`) for `keys` values of `len` bytes: well above
/// than the items take, because the check counts a miss as a failure, so
/// memcached must never evict. `-m` is a cap, not a reservation: the slack
/// costs no resident memory.
pub fn memory_mib(keys: u64, len: usize) -> u64 {
    // An item is a 48-byte header, 8 of CAS, the key, the value and its
    // "\r\n", rounded up to a slab class that may be 25% larger.
    let item = (56 + 17 + len as u64 + 2) * 5 / 4;
    ((keys * item * 11 / 10) >> 20) + 64
}

/// The arguments that start memcached on `port` of 127.0.0.1 only, with
/// `mib` MiB for items: `-M` makes a full cache refuse a set (a loud
/// SERVER_ERROR) instead of evicting (a silent miss later), `-A` lets the
/// harness shut it down over the protocol, and `-u root` is how memcached
/// agrees to run as root.
pub fn server_args(port: u16, mib: u64, root: bool) -> Vec<String> {
    let mut a: Vec<String> = ["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0", "-m", &mib.to_string(), "-t", "2", "-c", "1024", "-M", "-A"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if root {
        a.extend(["-u".to_string(), "root".to_string()]);
    }
    a
}

/// One item of a get's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The key.
    pub key: String,
    /// The client flags.
    pub flags: u32,
    /// The value.
    pub data: Vec<u8>,
}

/// A reply of the server (text protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// STORED, NOT_STORED, EXISTS, NOT_FOUND, DELETED, TOUCHED, OK.
    Status(String),
    /// The items of a get (VALUE ... END), in the order asked; absent keys left out.
    Values(Vec<Item>),
    /// The `STAT name value` lines of stats, up to END.
    Stats(Vec<(String, String)>),
    /// VERSION x.
    Version(String),
    /// ERROR, CLIENT_ERROR ..., SERVER_ERROR ...: the line as sent.
    Error(String),
}

fn proto(what: String) -> CompareError {
    CompareError::Memcached(what)
}

/// A read or write that failed; one that timed out is the server being too
/// slow (thrashing), which the caller tells apart from a broken one.
fn io(what: &str, source: std::io::Error) -> CompareError {
    if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
        CompareError::TooSlow(format!("memcached did not answer in time while {what}"))
    } else {
        CompareError::Io { what: format!("{what} (memcached)"), source }
    }
}

/// Reads one line, `\r\n` stripped, into `line`.
fn read_line<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> Result<(), CompareError> {
    line.clear();
    if r.read_until(b'\n', line).map_err(|e| io("reading a reply", e))? == 0 {
        return Err(proto("memcached closed the connection".into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(proto(format!("a reply line ended without \\r\\n: {:?}", String::from_utf8_lossy(line))));
    }
    line.truncate(line.len() - 2);
    Ok(())
}

/// Reads one whole reply: a status line, or VALUE blocks or STAT lines up
/// to END.
pub fn read_reply<R: BufRead>(r: &mut R) -> Result<Reply, CompareError> {
    let mut line = Vec::new();
    read_line(r, &mut line)?;
    let text = |l: &[u8]| String::from_utf8_lossy(l).into_owned();
    let first = text(&line);
    if first == "ERROR" || first.starts_with("CLIENT_ERROR") || first.starts_with("SERVER_ERROR") {
        return Ok(Reply::Error(first));
    }
    if let Some(v) = first.strip_prefix("VERSION ") {
        return Ok(Reply::Version(v.into()));
    }
    if ["STORED", "NOT_STORED", "EXISTS", "NOT_FOUND", "DELETED", "TOUCHED", "OK"].contains(&first.as_str()) {
        return Ok(Reply::Status(first));
    }
    if first.starts_with("STAT ") {
        let mut stats = Vec::new();
        let mut l = first;
        while l != "END" {
            let (name, v) = l.strip_prefix("STAT ").and_then(|s| s.split_once(' ')).ok_or_else(|| proto(format!("unexpected line {l:?} in stats")))?;
            stats.push((name.to_string(), v.to_string()));
            read_line(r, &mut line)?;
            l = text(&line);
        }
        return Ok(Reply::Stats(stats));
    }
    let mut items = Vec::new();
    let mut l = first;
    while l != "END" {
        // VALUE <key> <flags> <bytes> [<cas>]
        let f: Vec<&str> = l.split(' ').collect();
        let bad = || proto(format!("unexpected reply line {l:?}"));
        if f.len() < 4 || f[0] != "VALUE" {
            return Err(bad());
        }
        let flags: u32 = f[2].parse().map_err(|_| bad())?;
        let n: usize = f[3].parse().map_err(|_| bad())?;
        let mut data = vec![0u8; n + 2];
        r.read_exact(&mut data).map_err(|e| io("reading a value", e))?;
        if !data.ends_with(b"\r\n") {
            return Err(proto(format!("the {n}-byte value of {} is not followed by \\r\\n", f[1])));
        }
        data.truncate(n);
        items.push(Item { key: f[1].to_string(), flags, data });
        read_line(r, &mut line)?;
        l = text(&line);
    }
    Ok(Reply::Values(items))
}

/// Appends `set KEY 0 0 LEN\r\nDATA\r\n`.
pub fn encode_set(key: &str, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("set {key} 0 0 {}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends `get KEY...\r\n`.
pub fn encode_get<S: AsRef<str>>(keys: &[S], out: &mut Vec<u8>) {
    out.extend_from_slice(b"get");
    for k in keys {
        out.push(b' ');
        out.extend_from_slice(k.as_ref().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// One text-protocol connection to the server.
pub struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    /// Connects to 127.0.0.1:`port`, retrying for up to `wait` while the
    /// server starts; a read or write taking longer than `timeout` fails
    /// (as [`CompareError::TooSlow`]).
    pub fn connect(port: u16, wait: Duration, timeout: Duration) -> Result<Conn, CompareError> {
        let t0 = Instant::now();
        loop {
            match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    s.set_read_timeout(Some(timeout))
                        .and_then(|()| s.set_write_timeout(Some(timeout)))
                        .map_err(|source| CompareError::Io { what: format!("setting timeouts on port {port}"), source })?;
                    let w = s.try_clone().map_err(|source| CompareError::Io { what: format!("cloning the connection to port {port}"), source })?;
                    let mut c = Conn { r: BufReader::with_capacity(64 << 10, s), w };
                    match c.call(b"version\r\n")? {
                        Reply::Version(_) => return Ok(c),
                        r => return Err(proto(format!("version answered {r:?}"))),
                    }
                }
                Err(e) if t0.elapsed() > wait => {
                    return Err(CompareError::Io { what: format!("connecting to memcached on 127.0.0.1:{port} for {wait:?}"), source: e })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), CompareError> {
        self.w.write_all(bytes).map_err(|e| io("writing a request", e))
    }

    /// Sends one encoded request and reads its reply.
    pub fn call(&mut self, request: &[u8]) -> Result<Reply, CompareError> {
        self.send(request)?;
        read_reply(&mut self.r)
    }

    /// `stats`: the server's counters.
    pub fn stats(&mut self) -> Result<Vec<(String, String)>, CompareError> {
        match self.call(b"stats\r\n")? {
            Reply::Stats(s) => Ok(s),
            r => Err(proto(format!("stats answered {r:?}"))),
        }
    }

    /// `shutdown` (the server was started with `-A`; it exits with status 0
    /// and closes the connection without a reply).
    pub fn shutdown(mut self) {
        let _ = self.call(b"shutdown\r\n");
    }
}

/// Fails with [`CompareError::TooSlow`] once `deadline` has passed.
fn in_time(deadline: Instant, what: &str) -> Result<(), CompareError> {
    if Instant::now() > deadline {
        return Err(CompareError::TooSlow(format!("memcached: {what} had not finished by the run's time limit")));
    }
    Ok(())
}

/// What one connection did in the timed part.
struct Timed {
    hist: Histogram<u64>,
    gets: u64,
    sets: u64,
}

/// One connection and the keys it owns (`index`, `index + CONNECTIONS`, ...),
/// with the version it last set of each.
struct Client {
    conn: Conn,
    index: u64,
    versions: Vec<u64>,
}

impl Client {
    /// The key of this client's `local`-th key.
    fn key_of(&self, local: u64) -> u64 {
        local * CONNECTIONS as u64 + self.index
    }

    /// Sets every owned key to version 0, `LOAD_BATCH` sets a write.
    fn load(&mut self, deadline: Instant) -> Result<(), CompareError> {
        let owned = self.versions.len() as u64;
        let mut out = Vec::with_capacity(LOAD_BATCH as usize * (VALUE_BYTES + 48));
        let mut start = 0;
        while start < owned {
            in_time(deadline, "the load")?;
            let end = (start + LOAD_BATCH).min(owned);
            out.clear();
            for l in start..end {
                let k = self.key_of(l);
                encode_set(&key(k), &value(k, 0, VALUE_BYTES), &mut out);
            }
            self.conn.send(&out)?;
            for l in start..end {
                match read_reply(&mut self.conn.r)? {
                    Reply::Status(s) if s == "STORED" => {}
                    r => return Err(proto(format!("set {} answered {r:?} in the load (is -m too small?)", key(self.key_of(l))))),
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Gets and sets until `until`: Zipf ranks over the owned keys, 1 in 10
    /// a set of the next version, every get compared byte for byte.
    fn timed(&mut self, until: Instant, stop: &AtomicBool) -> Result<Timed, CompareError> {
        let zipf = Zipf::new(self.versions.len() as u64, THETA);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (self.index + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut t = Timed { hist: histogram(), gets: 0, sets: 0 };
        let mut out = Vec::with_capacity(VALUE_BYTES + 64);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            kernel::interrupted()?;
            for _ in 0..64 {
                let local = zipf.next(rng.unit());
                let k = self.key_of(local);
                let name = key(k);
                out.clear();
                if rng.next().is_multiple_of(10) {
                    self.versions[local as usize] += 1;
                    encode_set(&name, &value(k, self.versions[local as usize], VALUE_BYTES), &mut out);
                    let s = Instant::now();
                    let r = self.conn.call(&out)?;
                    let _ = t.hist.record((s.elapsed().as_nanos() as u64).max(1));
                    if r != Reply::Status("STORED".into()) {
                        return Err(proto(format!("set {name} answered {r:?}")));
                    }
                    t.sets += 1;
                } else {
                    encode_get(&[&name], &mut out);
                    let s = Instant::now();
                    let r = self.conn.call(&out)?;
                    let _ = t.hist.record((s.elapsed().as_nanos() as u64).max(1));
                    let items = match r {
                        Reply::Values(items) => items,
                        r => return Err(proto(format!("get {name} answered {r:?}"))),
                    };
                    check(&name, k, self.versions[local as usize], items.first())?;
                    if items.len() != 1 {
                        return Err(CompareError::WrongBytes(format!("memcached: get {name} returned {} items", items.len())));
                    }
                    t.gets += 1;
                }
            }
        }
        Ok(t)
    }

    /// Reads every owned key back with multi-gets and compares each with
    /// the version last set; returns how many were checked.
    fn verify(&mut self, deadline: Instant) -> Result<u64, CompareError> {
        let owned = self.versions.len() as u64;
        let mut out = Vec::new();
        let mut start = 0;
        while start < owned {
            in_time(deadline, "the read-back")?;
            let end = (start + VERIFY_BATCH).min(owned);
            let names: Vec<String> = (start..end).map(|l| key(self.key_of(l))).collect();
            out.clear();
            encode_get(&names, &mut out);
            let items = match self.conn.call(&out)? {
                Reply::Values(items) => items,
                r => return Err(proto(format!("get of {} keys answered {r:?}", names.len()))),
            };
            // memcached answers in the order asked and leaves absent keys
            // out, so the first key whose item is not in its place is absent.
            let mut got = items.iter();
            let mut next = got.next();
            for (l, name) in (start..end).zip(&names) {
                let here = next.filter(|i| i.key == *name);
                check(name, self.key_of(l), self.versions[l as usize], here)?;
                next = got.next();
            }
            if let Some(extra) = next {
                return Err(CompareError::WrongBytes(format!("memcached: a get of {} keys returned an extra item {}", names.len(), extra.key)));
            }
            start = end;
        }
        Ok(owned)
    }
}

/// Compares the item a get returned for `name` (key `k`, last set at
/// `version`) with that version's bytes.
fn check(name: &str, k: u64, version: u64, item: Option<&Item>) -> Result<(), CompareError> {
    let Some(item) = item else {
        return Err(CompareError::WrongBytes(format!(
            "memcached: get {name} missed, though version {version} was set (memcached runs with -M and room for every key, so it never evicts)"
        )));
    };
    let want = value(k, version, VALUE_BYTES);
    if item.key != name || item.flags != 0 || item.data != want {
        let at = item.data.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(item.data.len().min(want.len()));
        let claims = header(&item.data).map_or("no header".into(), |(hk, hv)| format!("its header says key {hk} version {hv}"));
        return Err(CompareError::WrongBytes(format!(
            "memcached: get {name} returned {} bytes as {} (flags {}) differing from version {version} (the last set) at byte {at}; {claims}",
            item.data.len(),
            item.key,
            item.flags
        )));
    }
    Ok(())
}

/// What a memcached run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Seconds the load took.
    pub fill_seconds: f64,
    /// Gets and sets in the timed part.
    pub ops: u64,
    /// Gets in the timed part (each checked).
    pub gets: u64,
    /// Sets in the timed part.
    pub sets: u64,
    /// Seconds of the timed part.
    pub seconds: f64,
    /// Latency of one get or set, over all connections.
    pub latency: LatencySummary,
    /// Seconds the final read-back took.
    pub verify_seconds: f64,
    /// Values compared: the gets of the timed part and every key at the end.
    pub checked: u64,
    /// The server's `stats` after the read-back.
    pub stats: Vec<(String, String)>,
}

/// Drives the server on `port`: loads `keys` keys, runs the timed part for
/// `duration` from [`CONNECTIONS`] connections, reads every key back, takes
/// `stats` and shuts the server down. Past `deadline`, or on a request
/// taking longer than `timeout`, fails with [`CompareError::TooSlow`].
pub fn drive(port: u16, keys: u64, duration: Duration, deadline: Instant, timeout: Duration) -> Result<Outcome, CompareError> {
    let mut clients = (0..CONNECTIONS as u64)
        .map(|index| {
            let owned = keys.saturating_sub(index).div_ceil(CONNECTIONS as u64);
            Ok(Client { conn: Conn::connect(port, Duration::from_secs(20), timeout)?, index, versions: vec![0; owned as usize] })
        })
        .collect::<Result<Vec<_>, CompareError>>()?;
    let tf = Instant::now();
    each(&mut clients, |c| c.load(deadline))?;
    let fill_seconds = tf.elapsed().as_secs_f64();
    kernel::interrupted()?;

    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let until = t0 + duration;
    let timed = each(&mut clients, |c| {
        let r = c.timed(until, &stop);
        if r.is_err() {
            // The first failure ends the others too: the run has failed.
            stop.store(true, Ordering::Relaxed);
        }
        r
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    kernel::interrupted()?;

    let tv = Instant::now();
    let verified: u64 = each(&mut clients, |c| c.verify(deadline))?.into_iter().sum();
    let verify_seconds = tv.elapsed().as_secs_f64();
    if verified != keys {
        return Err(proto(format!("read back {verified} keys of {keys}")));
    }

    let mut hist = histogram();
    let (mut gets, mut sets) = (0, 0);
    for t in &timed {
        hist.add(&t.hist).map_err(|e| proto(format!("merging latency histograms: {e}")))?;
        gets += t.gets;
        sets += t.sets;
    }
    let mut first = clients.swap_remove(0);
    let stats = first.conn.stats()?;
    first.conn.shutdown();
    Ok(Outcome {
        fill_seconds,
        ops: gets + sets,
        gets,
        sets,
        seconds,
        latency: LatencySummary::from_ns(&hist, seconds),
        verify_seconds,
        checked: gets + verified,
        stats,
    })
}

/// Runs `f` on every client, a thread each; the first error if any failed.
fn each<T: Send>(clients: &mut [Client], f: impl Fn(&mut Client) -> Result<T, CompareError> + Sync) -> Result<Vec<T>, CompareError> {
    let mut results: Vec<Result<T, CompareError>> = std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = clients.iter_mut().map(|c| s.spawn(move || f(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(proto("a client thread panicked".into())))).collect()
    });
    // A wrong byte says more than the errors it caused in other threads:
    // first, it is the one collect returns.
    if let Some(i) = results.iter().position(|r| matches!(r, Err(CompareError::WrongBytes(_)))) {
        results.swap(0, i);
    }
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::{Child, Command, Stdio};

    /// A loopback memcached of a test, killed by its pid when dropped.
    struct Server(Child, u16);

    impl Server {
        fn start(keys: u64) -> Option<Server> {
            let port = super::super::redis::free_port().unwrap();
            // SAFETY: geteuid has no preconditions.
            let root = unsafe { libc::geteuid() } == 0;
            let child =
                Command::new("memcached").args(server_args(port, memory_mib(keys, VALUE_BYTES), root)).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
            match child {
                Ok(c) => Some(Server(c, port)),
                Err(e) => {
                    println!("skipped: memcached could not start ({e}; apt-get install memcached)");
                    None
                }
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn parse(bytes: &[u8]) -> Result<Reply, CompareError> {
        read_reply(&mut Cursor::new(bytes))
    }

    #[test]
    fn replies_parse() {
        assert_eq!(parse(b"STORED\r\n").unwrap(), Reply::Status("STORED".into()));
        assert_eq!(parse(b"VERSION 1.6.18\r\n").unwrap(), Reply::Version("1.6.18".into()));
        assert_eq!(parse(b"END\r\n").unwrap(), Reply::Values(vec![]), "a miss");
        assert_eq!(parse(b"SERVER_ERROR out of memory storing object\r\n").unwrap(), Reply::Error("SERVER_ERROR out of memory storing object".into()));
        assert_eq!(parse(b"ERROR\r\n").unwrap(), Reply::Error("ERROR".into()));
        // A value holding \r\n and END is read by its length, not by lines.
        let r = parse(b"VALUE key:1 0 9\r\na\r\nEND\r\nb\r\nVALUE key:2 7 0\r\n\r\nEND\r\nSTORED\r\n").unwrap();
        assert_eq!(
            r,
            Reply::Values(vec![Item { key: "key:1".into(), flags: 0, data: b"a\r\nEND\r\nb".to_vec() }, Item { key: "key:2".into(), flags: 7, data: vec![] }])
        );
        let s = parse(b"STAT pid 16200\r\nSTAT version 1.6.18\r\nSTAT evictions 0\r\nEND\r\n").unwrap();
        assert_eq!(s, Reply::Stats(vec![("pid".into(), "16200".into()), ("version".into(), "1.6.18".into()), ("evictions".into(), "0".into())]));
    }

    #[test]
    fn bad_replies_are_errors() {
        for bad in [
            &b"VALUE key:1 0 5\r\nhelloXX\r\nEND\r\n"[..], // data longer than said
            b"VALUE key:1 0 5\r\nhel",                     // cut short
            b"VALUE key:1 x 5\r\nhello\r\nEND\r\n",        // flags not a number
            b"VALUE key:1 0 5\r\nhello\r\n",               // no END
            b"STORED\n",                                   // no \r
            b"WHAT\r\n",
            b"STAT pid\r\nEND\r\n",
            b"",
        ] {
            assert!(parse(bad).is_err(), "{:?} parsed", String::from_utf8_lossy(bad));
        }
        // Two replies back to back are read one at a time, as pipelining needs.
        let mut c = Cursor::new(&b"CLIENT_ERROR bad data chunk\r\nERROR\r\nSTORED\r\n"[..]);
        assert_eq!(read_reply(&mut c).unwrap(), Reply::Error("CLIENT_ERROR bad data chunk".into()));
        assert_eq!(read_reply(&mut c).unwrap(), Reply::Error("ERROR".into()));
        assert_eq!(read_reply(&mut c).unwrap(), Reply::Status("STORED".into()));
    }

    #[test]
    fn requests_encode_as_the_text_protocol() {
        let mut out = Vec::new();
        encode_set("key:000000000001", b"ab\r\n", &mut out);
        encode_get(&["a", "b"], &mut out);
        assert_eq!(out, b"set key:000000000001 0 0 4\r\nab\r\n\r\nget a b\r\n");
    }

    #[test]
    fn values_differ_by_key_and_version_and_name_both() {
        let v = value(42, 3, VALUE_BYTES);
        assert_eq!(v.len(), VALUE_BYTES);
        assert_eq!(v, value(42, 3, VALUE_BYTES));
        assert_eq!(header(&v), Some((42, 3)));
        assert_ne!(v, value(42, 4, VALUE_BYTES));
        assert_ne!(v, value(43, 3, VALUE_BYTES));
        // The body, not only the header, changes with the version (unless
        // both versions drew a zero page).
        let bodies = (0..64u64).filter(|ver| value(42, *ver, VALUE_BYTES)[HEADER..] != value(42, ver + 1, VALUE_BYTES)[HEADER..]).count();
        assert!(bodies > 40, "{bodies}");
        // Mixed compressibility: some values are nearly all zeros, some not.
        let zeros = |v: &[u8]| v.iter().filter(|b| **b == 0).count();
        assert!((0..200).any(|k| zeros(&value(k, 0, VALUE_BYTES)) > 1000) && (0..200).any(|k| zeros(&value(k, 0, VALUE_BYTES)) < 100));
        let item = Item { key: key(42), flags: 0, data: v.clone() };
        assert!(check(&key(42), 42, 3, Some(&item)).is_ok());
        let stale = check(&key(42), 42, 4, Some(&item)).unwrap_err().to_string();
        assert!(stale.starts_with("wrong bytes") && stale.contains("at byte 8") && stale.contains("version 3"), "{stale}");
        assert!(check(&key(42), 42, 3, None).unwrap_err().to_string().contains("missed"));
        assert!(memory_mib(1000, VALUE_BYTES) > 64 && memory_mib(1 << 20, VALUE_BYTES) > 1300);
        assert!(server_args(11211, 100, true).ends_with(&["-u".to_string(), "root".to_string()]));
    }

    #[test]
    fn a_real_server_is_driven_and_shut_down() {
        let Some(mut server) = Server::start(2000) else { return };
        let far = Instant::now() + Duration::from_secs(60);
        let o = drive(server.1, 2000, Duration::from_millis(300), far, Duration::from_secs(20)).unwrap();
        assert!(o.gets > 0 && o.sets > 0 && o.ops == o.gets + o.sets, "{o:?}");
        assert_eq!(o.checked, o.gets + 2000);
        assert!(o.latency.p50_us > 0.0 && o.latency.p999_us >= o.latency.p50_us, "{o:?}");
        assert!(o.stats.contains(&("curr_items".into(), "2000".into())) && o.stats.contains(&("evictions".into(), "0".into())), "{:?}", o.stats);
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = server.0.try_wait().unwrap() {
                break st;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "memcached did not exit after shutdown");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
    }

    #[test]
    fn a_changed_stale_or_missing_value_fails_the_check() {
        let Some(server) = Server::start(2000) else { return };
        let far = Instant::now() + Duration::from_secs(60);
        let conn = || Conn::connect(server.1, Duration::from_secs(10), Duration::from_secs(10)).unwrap();
        let mut c = Client { conn: conn(), index: 1, versions: vec![0; 500] };
        c.load(far).unwrap();
        let t = c.timed(Instant::now() + Duration::from_millis(200), &AtomicBool::new(false)).unwrap();
        assert!(t.gets > 0 && t.sets > 0 && t.hist.len() == t.gets + t.sets);
        assert_eq!(c.verify(far).unwrap(), 500);

        // Behind the client's back: one byte of one value flipped, then an
        // older version, then the key gone.
        let mut other = conn();
        let (l, ver) = (c.versions.iter().position(|v| *v > 0).expect("200 ms of traffic set some key"), 0);
        let k = c.key_of(l as u64);
        let mut set = |data: &[u8]| {
            let mut out = Vec::new();
            encode_set(&key(k), data, &mut out);
            assert_eq!(other.call(&out).unwrap(), Reply::Status("STORED".into()));
        };
        let mut flipped = value(k, c.versions[l], VALUE_BYTES);
        flipped[600] ^= 1;
        set(&flipped);
        let e = c.verify(far).unwrap_err();
        assert!(matches!(e, CompareError::WrongBytes(_)) && e.to_string().contains("at byte 600"), "{e}");
        set(&value(k, ver, VALUE_BYTES));
        let e = c.verify(far).unwrap_err().to_string();
        assert!(e.contains(&format!("header says key {k} version {ver}")), "{e}");
        set(&value(k, c.versions[l], VALUE_BYTES));
        assert_eq!(c.verify(far).unwrap(), 500);
        assert_eq!(other.call(format!("delete {}\r\n", key(k)).as_bytes()).unwrap(), Reply::Status("DELETED".into()));
        let e = c.verify(far).unwrap_err();
        assert!(matches!(e, CompareError::WrongBytes(_)) && e.to_string().contains("missed"), "{e}");
    }
}
