//! One connection to the store, and the few commands the tier sends in
//! either protocol: store a record with an expiry, fetch one, delete many,
//! renew an expiry, and a ping.
//!
//! Commands are queued into the connection's output buffer and go out
//! together on [`Conn::send`], so a batch of any size is one write and one
//! round trip (pipelining); replies are then read in order, each into the
//! caller's buffer, from a read buffer of the connection's own. Both
//! buffers are made once, with the connection, and reused: after its first
//! batch a connection allocates nothing.
//!
//! | command | Redis (RESP) | memcached (text) |
//! | --- | --- | --- |
//! | store | `SET key value PX ms` → `+OK` | `set key 0 secs len` + data → `STORED` |
//! | fetch | `GET key` → `$len` data, or `$-1` | `get key` → `VALUE key 0 len` data `END`, or `END` |
//! | delete | `DEL k1 k2 ...` → `:n` (one reply) | `delete k` → `DELETED` / `NOT_FOUND` (one each) |
//! | renew | `PEXPIRE key ms` → `:1` / `:0` | `touch key secs` → `TOUCHED` / `NOT_FOUND` |
//! | ping | `PING` → `+PONG` | `version` → `VERSION v` |

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::RemoteProtocol;

/// The read buffer: a reply line or a value is read through it.
const READ_BUF: usize = 64 << 10;

/// A key: the tier's base (prefix and run id) and a page's handle in hex.
pub(super) struct Key {
    bytes: [u8; 256],
    len: usize,
}

impl Key {
    /// `base` followed by `handle` in lower-case hex.
    pub(super) fn new(base: &[u8], handle: u64) -> Key {
        let mut bytes = [0u8; 256];
        bytes[..base.len()].copy_from_slice(base);
        let mut len = base.len();
        let digits = (64 - handle.max(1).leading_zeros()).div_ceil(4);
        for d in (0..digits).rev() {
            bytes[len] = b"0123456789abcdef"[((handle >> (d * 4)) & 0xf) as usize];
            len += 1;
        }
        Key { bytes, len }
    }

    /// The key's bytes.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The key as text, for messages.
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

/// A store or delete reply.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Status {
    /// Done (stored, deleted, renewed).
    Done,
    /// The key was not there (a delete or renew of an expired key).
    Missing,
    /// The server refused the command; its message (out of memory, read-only replica...).
    Refused(String),
}

/// A fetch reply.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Value {
    /// The value, this many bytes of the caller's buffer.
    Got(usize),
    /// No such key (expired, evicted, never there).
    Missing,
    /// A value larger than the caller's buffer (not a record of this tier); it was read and dropped.
    TooLong(usize),
    /// The server refused the command; its message.
    Refused(String),
}

/// Where a Redis Cluster node sends a command for a slot it does not serve.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Redirect {
    /// The slot lives on this node now (`MOVED slot host:port`): go there from now on.
    Moved(String, u16),
    /// The slot is being migrated to this node and the key is there
    /// (`ASK slot host:port`): this command only, sent there after `ASKING`.
    Ask(String, u16),
}

impl Redirect {
    /// The redirect in a refusal's message, if it is one. A node that names
    /// no host (`:port`, `?:port`) means the host already asked: `host`.
    pub(super) fn of(message: &str, host: &str) -> Option<Redirect> {
        let mut words = message.split_whitespace();
        let kind = words.next()?;
        let _slot = words.next()?;
        let (h, p) = words.next()?.rsplit_once(':')?;
        let port = p.parse().ok()?;
        let h = if h.is_empty() || h == "?" { host } else { h.trim_start_matches('[').trim_end_matches(']') };
        match kind {
            "MOVED" => Some(Redirect::Moved(h.to_owned(), port)),
            "ASK" => Some(Redirect::Ask(h.to_owned(), port)),
            _ => None,
        }
    }
}

/// One connection to the store, with its buffers.
pub(super) struct Conn {
    /// The tier's node epoch when it was opened: a connection to a node the
    /// tier no longer uses (its slot moved) is closed, not reused.
    pub(super) epoch: u64,
    /// Each command goes after `ASKING` (a connection made for an ASK redirect).
    asking: bool,
    stream: TcpStream,
    protocol: RemoteProtocol,
    out: Vec<u8>,
    /// The last reply line read, without its CRLF.
    line: Vec<u8>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Conn {
    /// Connects to `host:port` within `timeout`, which then bounds every read and write.
    pub(super) fn open(protocol: RemoteProtocol, host: &str, port: u16, timeout: Duration) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} resolves to no address"));
        for addr in (host, port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    // Batches are written whole; a lone GET must not wait for Nagle.
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    return Ok(Conn { epoch: 0, asking: false, stream, protocol, out: Vec::with_capacity(64 << 10), line: Vec::with_capacity(256), buf: vec![0; READ_BUF].into_boxed_slice(), start: 0, end: 0 });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Makes every later command go after `ASKING` (Redis Cluster, during
    /// the migration of a slot), and every reply read skip its `+OK`.
    pub(super) fn asking(&mut self) {
        self.asking = true;
    }

    fn ask_first(&mut self) {
        if self.asking {
            self.array(1);
            self.bulk(b"ASKING");
        }
    }

    /// Reads the `+OK` of the `ASKING` before a command, if there is one.
    fn asked(&mut self) -> io::Result<()> {
        if self.asking {
            self.read_line()?;
            if self.line != b"+OK" {
                return Err(protocol_error("+OK to ASKING", &self.line));
            }
        }
        Ok(())
    }

    /// Queues a store of `value` under `key`, expiring after `ttl_ms`.
    pub(super) fn set(&mut self, key: &Key, value: &[u8], ttl_ms: u64) {
        self.ask_first();
        let k = key.as_bytes();
        match self.protocol {
            RemoteProtocol::Redis => {
                let ms = Decimal::new(ttl_ms);
                self.array(5);
                self.bulk(b"SET");
                self.bulk(k);
                self.bulk(value);
                self.bulk(b"PX");
                self.bulk(ms.as_bytes());
            }
            RemoteProtocol::Memcached => {
                let secs = Decimal::new(ttl_ms.div_ceil(1000));
                let len = Decimal::new(value.len() as u64);
                self.raw(&[b"set ", k, b" 0 ", secs.as_bytes(), b" ", len.as_bytes(), b"\r\n", value, b"\r\n"]);
            }
        }
    }

    /// Queues a fetch of `key`.
    pub(super) fn get(&mut self, key: &Key) {
        self.ask_first();
        match self.protocol {
            RemoteProtocol::Redis => {
                self.array(2);
                self.bulk(b"GET");
                self.bulk(key.as_bytes());
            }
            RemoteProtocol::Memcached => self.raw(&[b"get ", key.as_bytes(), b"\r\n"]),
        }
    }

    /// Queues the deletion of `keys`; returns how many replies to read
    /// (Redis: one, giving the count deleted; memcached: one per key).
    pub(super) fn delete(&mut self, keys: impl ExactSizeIterator<Item = Key>) -> usize {
        let n = keys.len();
        if n == 0 {
            return 0;
        }
        self.ask_first();
        match self.protocol {
            RemoteProtocol::Redis => {
                self.array(n + 1);
                self.bulk(b"DEL");
                for k in keys {
                    self.bulk(k.as_bytes());
                }
                1
            }
            RemoteProtocol::Memcached => {
                for k in keys {
                    self.raw(&[b"delete ", k.as_bytes(), b"\r\n"]);
                }
                n
            }
        }
    }

    /// Queues a renewal of `key`'s expiry to `ttl_ms` from now.
    pub(super) fn renew(&mut self, key: &Key, ttl_ms: u64) {
        self.ask_first();
        match self.protocol {
            RemoteProtocol::Redis => {
                let ms = Decimal::new(ttl_ms);
                self.array(3);
                self.bulk(b"PEXPIRE");
                self.bulk(key.as_bytes());
                self.bulk(ms.as_bytes());
            }
            RemoteProtocol::Memcached => {
                let secs = Decimal::new(ttl_ms.div_ceil(1000));
                self.raw(&[b"touch ", key.as_bytes(), b" ", secs.as_bytes(), b"\r\n"]);
            }
        }
    }

    /// Queues a ping (Redis `PING`, memcached `version`).
    pub(super) fn ping(&mut self) {
        match self.protocol {
            RemoteProtocol::Redis => {
                self.array(1);
                self.bulk(b"PING");
            }
            RemoteProtocol::Memcached => self.raw(&[b"version\r\n"]),
        }
    }

    /// Queues a command given as words (setup queries: `CONFIG GET ...`,
    /// `stats settings`), whose reply [`Conn::text_reply`] reads.
    pub(super) fn command(&mut self, words: &[&str]) {
        match self.protocol {
            RemoteProtocol::Redis => {
                self.array(words.len());
                for w in words {
                    self.bulk(w.as_bytes());
                }
            }
            RemoteProtocol::Memcached => {
                self.out.extend_from_slice(words.join(" ").as_bytes());
                self.out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Writes everything queued.
    pub(super) fn send(&mut self) -> io::Result<()> {
        let r = self.stream.write_all(&self.out);
        self.out.clear();
        r
    }

    /// Reads the reply of a store, delete, renew or ping. A Redis integer
    /// reply of 0 (PEXPIRE of a missing key, DEL of nothing) is `Missing`.
    pub(super) fn status(&mut self) -> io::Result<Status> {
        self.asked()?;
        self.read_line()?;
        let line = &self.line[..];
        Ok(match self.protocol {
            RemoteProtocol::Redis => match line.first() {
                Some(b'+') => Status::Done,
                Some(b':') if &line[1..] == b"0" => Status::Missing,
                Some(b':') => Status::Done,
                Some(b'-') => Status::Refused(String::from_utf8_lossy(&line[1..]).into_owned()),
                _ => return Err(protocol_error("a status reply", line)),
            },
            RemoteProtocol::Memcached => match &line[..] {
                b"STORED" | b"DELETED" | b"TOUCHED" => Status::Done,
                b"NOT_FOUND" => Status::Missing,
                l if l.starts_with(b"VERSION ") => Status::Done,
                l if l.starts_with(b"SERVER_ERROR") || l.starts_with(b"CLIENT_ERROR") || l == b"ERROR" || l == b"NOT_STORED" => {
                    Status::Refused(String::from_utf8_lossy(l).into_owned())
                }
                _ => return Err(protocol_error("a status reply", line)),
            },
        })
    }

    /// Reads the reply of a fetch into `out`.
    pub(super) fn value(&mut self, out: &mut [u8]) -> io::Result<Value> {
        self.asked()?;
        self.read_line()?;
        let line = &self.line[..];
        let len = match self.protocol {
            RemoteProtocol::Redis => match line.first() {
                Some(b'$') if &line[1..] == b"-1" => return Ok(Value::Missing),
                Some(b'$') => parse_len(&line[1..]).ok_or_else(|| protocol_error("a bulk length", line))?,
                Some(b'-') => return Ok(Value::Refused(String::from_utf8_lossy(&line[1..]).into_owned())),
                _ => return Err(protocol_error("a value reply", line)),
            },
            RemoteProtocol::Memcached => {
                if line == b"END" {
                    return Ok(Value::Missing);
                }
                if line.starts_with(b"SERVER_ERROR") || line.starts_with(b"CLIENT_ERROR") || line == b"ERROR" {
                    return Ok(Value::Refused(String::from_utf8_lossy(line).into_owned()));
                }
                // VALUE <key> <flags> <bytes>
                let last = line.rsplit(|b| *b == b' ').next().unwrap_or(&[]);
                match (line.starts_with(b"VALUE "), parse_len(last)) {
                    (true, Some(n)) => n,
                    _ => return Err(protocol_error("a VALUE line", line)),
                }
            }
        };
        let got = if len <= out.len() {
            self.exact(&mut out[..len])?;
            Value::Got(len)
        } else {
            self.skip(len)?;
            Value::TooLong(len)
        };
        self.expect_crlf()?;
        if self.protocol == RemoteProtocol::Memcached {
            self.read_line()?;
            if self.line != b"END" {
                return Err(protocol_error("END after a value", &self.line));
            }
        }
        Ok(got)
    }

    /// Reads a reply to [`Conn::command`] as text: Redis's array or bulk
    /// strings as a list, memcached's lines up to `END` (or one line).
    pub(super) fn text_reply(&mut self) -> io::Result<Result<Vec<String>, String>> {
        let mut words = Vec::new();
        match self.protocol {
            RemoteProtocol::Redis => {
                self.read_line()?;
                let line = &self.line[..];
                let n = match line.first() {
                    Some(b'-') => return Ok(Err(String::from_utf8_lossy(&line[1..]).into_owned())),
                    Some(b'*') => parse_len(&line[1..]).ok_or_else(|| protocol_error("an array length", line))?,
                    Some(b'+') => return Ok(Ok(vec![String::from_utf8_lossy(&line[1..]).into_owned()])),
                    _ => return Err(protocol_error("an array reply", line)),
                };
                for _ in 0..n {
                    let mut item = [0u8; 4096];
                    match self.value(&mut item)? {
                        Value::Got(k) => words.push(String::from_utf8_lossy(&item[..k]).into_owned()),
                        _ => words.push(String::new()),
                    }
                }
            }
            RemoteProtocol::Memcached => loop {
                self.read_line()?;
                let line = &self.line[..];
                if line == b"END" {
                    break;
                }
                if line == b"ERROR" || line.starts_with(b"SERVER_ERROR") || line.starts_with(b"CLIENT_ERROR") {
                    return Ok(Err(String::from_utf8_lossy(line).into_owned()));
                }
                words.push(String::from_utf8_lossy(line).into_owned());
            },
        }
        Ok(Ok(words))
    }

    fn array(&mut self, n: usize) {
        let n = Decimal::new(n as u64);
        self.raw(&[b"*", n.as_bytes(), b"\r\n"]);
    }

    fn bulk(&mut self, b: &[u8]) {
        let n = Decimal::new(b.len() as u64);
        self.raw(&[b"$", n.as_bytes(), b"\r\n", b, b"\r\n"]);
    }

    fn raw(&mut self, parts: &[&[u8]]) {
        for p in parts {
            self.out.extend_from_slice(p);
        }
    }

    /// Makes at least one unread byte available.
    fn fill(&mut self) -> io::Result<()> {
        if self.start < self.end {
            return Ok(());
        }
        let n = self.stream.read(&mut self.buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        (self.start, self.end) = (0, n);
        Ok(())
    }

    /// Reads the next reply line into `self.line`, without its CRLF.
    fn read_line(&mut self) -> io::Result<()> {
        self.line.clear();
        loop {
            self.fill()?;
            let avail = &self.buf[self.start..self.end];
            if let Some(p) = avail.iter().position(|b| *b == b'\n') {
                self.line.extend_from_slice(&avail[..p]);
                self.start += p + 1;
                if self.line.pop() != Some(b'\r') {
                    return Err(protocol_error("a line ending in CRLF", &self.line));
                }
                return Ok(());
            }
            self.line.extend_from_slice(avail);
            self.start = self.end;
            if self.line.len() > READ_BUF {
                return Err(protocol_error("a reply line of reasonable length", &self.line[..64]));
            }
        }
    }

    fn exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            self.fill()?;
            let n = (self.end - self.start).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            done += n;
        }
        Ok(())
    }

    fn skip(&mut self, mut n: usize) -> io::Result<()> {
        while n > 0 {
            self.fill()?;
            let k = (self.end - self.start).min(n);
            self.start += k;
            n -= k;
        }
        Ok(())
    }

    fn expect_crlf(&mut self) -> io::Result<()> {
        let mut crlf = [0u8; 2];
        self.exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(protocol_error("CRLF after a value", &crlf));
        }
        Ok(())
    }
}

/// The line's length field, digits only.
fn parse_len(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn protocol_error(expected: &str, got: &[u8]) -> io::Error {
    let shown = String::from_utf8_lossy(&got[..got.len().min(80)]).into_owned();
    io::Error::new(io::ErrorKind::InvalidData, format!("expected {expected} from the server, got `{shown}`"))
}

/// A number in decimal, without allocating.
struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut n: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut start = 20;
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_numbers_are_written_without_allocating() {
        assert_eq!(Key::new(b"fm:ab:", 0x1f).as_bytes(), b"fm:ab:1f");
        assert_eq!(Key::new(b"", 0).as_bytes(), b"0");
        assert_eq!(Key::new(b"p", u64::MAX >> 8).as_bytes(), b"pffffffffffffff");
        for n in [0u64, 7, 10, 3_600_000, u64::MAX] {
            assert_eq!(Decimal::new(n).as_bytes(), n.to_string().as_bytes());
        }
        assert_eq!(parse_len(b"4096"), Some(4096));
        assert_eq!(Redirect::of("MOVED 3999 127.0.0.1:6381", "h"), Some(Redirect::Moved("127.0.0.1".into(), 6381)));
        assert_eq!(Redirect::of("ASK 3999 :7000", "node-a"), Some(Redirect::Ask("node-a".into(), 7000)));
        assert_eq!(Redirect::of("MOVED 1 [::1]:7001", "h"), Some(Redirect::Moved("::1".into(), 7001)));
        assert_eq!(Redirect::of("OOM command not allowed", "h"), None);
        assert_eq!(Redirect::of("MOVED 1 host:notaport", "h"), None);
        for bad in [&b""[..], b"-1", b"+5", b"1x", b"9999999999999"] {
            assert_eq!(parse_len(bad), None, "{bad:?}");
        }
    }
}
