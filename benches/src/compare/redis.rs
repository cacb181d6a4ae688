//! The redis workload, driven from the harness over loopback: load keys of
//! mixed compressibility through a small RESP client of our own, take
//! `DEBUG DIGEST`, run `redis-benchmark` (random GETs over the keys, a
//! bounded request count), read back a sample of values byte for byte, and
//! take the digest again. The server is the measured process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::CompareError;
use crate::heap;
use crate::policy::Rng;

/// Keys are `key:` and twelve digits, as redis-benchmark's `__rand_int__` makes them.
fn key(k: u64) -> String {
    format!("key:{k:012}")
}

/// The value of key `k`: `len` bytes (at most a page) cut from a
/// [`heap::fill_page`] page (zero, text, record or random), `k` in the first 8.
pub fn value(k: u64, len: usize) -> Vec<u8> {
    let mut page = [0u8; heap::PAGE];
    heap::fill_page(&mut page, 11, k as usize);
    let mut v = page[..len.min(heap::PAGE)].to_vec();
    let n = v.len().min(8);
    v[..n].copy_from_slice(&k.to_le_bytes()[..n]);
    v
}

/// A free loopback port for a server this harness starts: outside the
/// ephemeral range, so no client connection of a concurrent run takes it
/// before the server binds it (see [`farmem_tiers::remote::free_port`]).
pub fn free_port() -> Result<u16, CompareError> {
    farmem_tiers::remote::free_port().map_err(|source| CompareError::Io { what: "finding a free loopback port".into(), source })
}

/// The arguments that start redis-server on `port` of 127.0.0.1 only, with
/// no persistence, in `dir`.
pub fn server_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", &dir.to_string_lossy(), "--protected-mode", "yes", "--enable-debug-command", "local"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// What `redis-cli --pipe` said of a load.
#[derive(Debug, Clone, PartialEq)]
pub struct Piped {
    /// Replies the server sent.
    pub replies: u64,
    /// Of them, errors.
    pub errors: u64,
}

/// Reads `redis-cli --pipe`'s last line: `errors: 0, replies: 685715`.
pub fn parse_pipe(out: &str) -> Option<Piped> {
    let line = out.lines().rev().find(|l| l.contains("errors:") && l.contains("replies:"))?;
    let num = |key: &str| -> Option<u64> { line.split(key).nth(1)?.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok() };
    Some(Piped { errors: num("errors:")?, replies: num("replies:")? })
}

/// Streams the commands of `file` (inline or RESP, as `redis-cli --pipe`
/// takes them) into the server on `port`, all of them, with `redis-cli
/// --pipe`, and waits for the last reply; killed at `deadline`
/// ([`CompareError::TooSlow`]). An error reply fails the load.
pub fn pipe(port: u16, file: &std::path::Path, deadline: Instant) -> Result<Piped, CompareError> {
    let input = std::fs::File::open(file).map_err(|source| CompareError::Io { what: format!("opening --redis-load {}", file.display()), source })?;
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--pipe"])
        .stdin(input)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| CompareError::Io { what: "running redis-cli --pipe (apt-get install redis-tools)".into(), source })?;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CompareError::TooSlow(format!("the load of {} had not finished by the run's time limit", file.display())));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(source) => return Err(CompareError::Io { what: "waiting for redis-cli --pipe".into(), source }),
        }
        crate::kernel::interrupted()?;
    }
    let out = child.wait_with_output().map_err(|source| CompareError::Io { what: "reading redis-cli --pipe's output".into(), source })?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let p = parse_pipe(&text).ok_or_else(|| proto(format!("redis-cli --pipe ({}) printed no count of replies: {}", out.status, text.trim())))?;
    if p.errors > 0 || !out.status.success() {
        return Err(proto(format!("the load of {} had {} error replies of {} ({})", file.display(), p.errors, p.replies, out.status)));
    }
    Ok(p)
}

/// A reply of the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// +OK and the like.
    Status(String),
    /// -ERR ...
    Error(String),
    /// :N
    Int(i64),
    /// $N bytes, or None for $-1.
    Bulk(Option<Vec<u8>>),
}

/// One RESP connection to the server.
pub struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

/// Encodes one command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn proto(what: String) -> CompareError {
    CompareError::Redis(what)
}

impl Conn {
    /// Connects to 127.0.0.1:`port`, retrying for up to `wait` while the server starts.
    pub fn connect(port: u16, wait: Duration) -> Result<Conn, CompareError> {
        let t0 = Instant::now();
        loop {
            match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let w = s.try_clone().map_err(|source| CompareError::Io { what: format!("cloning the connection to port {port}"), source })?;
                    let mut c = Conn { r: BufReader::new(s), w };
                    // Loading a dataset answers -LOADING: wait for a real PONG.
                    if matches!(c.call(&[b"PING"]), Ok(Reply::Status(ref p)) if p == "PONG") {
                        return Ok(c);
                    }
                }
                Err(e) if t0.elapsed() > wait => return Err(CompareError::Io { what: format!("connecting to redis on 127.0.0.1:{port}"), source: e }),
                Err(_) => {}
            }
            if t0.elapsed() > wait {
                return Err(proto(format!("redis on 127.0.0.1:{port} did not answer PING within {wait:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reads one reply.
    pub fn read_reply(&mut self) -> Result<Reply, CompareError> {
        let io = |source| CompareError::Io { what: "reading a reply from redis".into(), source };
        let mut line = String::new();
        if self.r.read_line(&mut line).map_err(io)? == 0 {
            return Err(proto("redis closed the connection".into()));
        }
        let body = line.trim_end_matches(['\r', '\n']);
        let (tag, rest) = body.split_at(body.len().min(1));
        match tag {
            "+" => Ok(Reply::Status(rest.into())),
            "-" => Ok(Reply::Error(rest.into())),
            ":" => rest.parse().map(Reply::Int).map_err(|_| proto(format!("bad integer reply {body:?}"))),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| proto(format!("bad bulk length {body:?}")))?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.r.read_exact(&mut buf).map_err(io)?;
                buf.truncate(n as usize);
                Ok(Reply::Bulk(Some(buf)))
            }
            _ => Err(proto(format!("unexpected reply {body:?}"))),
        }
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, CompareError> {
        let mut out = Vec::new();
        encode(args, &mut out);
        self.w.write_all(&out).map_err(|source| CompareError::Io { what: "writing to redis".into(), source })?;
        self.read_reply()
    }

    /// SETs keys `0..keys` to [`value`]s of `len` bytes, pipelined.
    pub fn load(&mut self, keys: u64, len: usize) -> Result<(), CompareError> {
        const BATCH: u64 = 512;
        let mut start = 0;
        while start < keys {
            let end = (start + BATCH).min(keys);
            let mut out = Vec::with_capacity((end - start) as usize * (len + 64));
            for k in start..end {
                encode(&[b"SET", key(k).as_bytes(), &value(k, len)], &mut out);
            }
            self.w.write_all(&out).map_err(|source| CompareError::Io { what: "writing SETs to redis".into(), source })?;
            for k in start..end {
                match self.read_reply()? {
                    Reply::Status(s) if s == "OK" => {}
                    r => return Err(proto(format!("SET {} answered {r:?}", key(k)))),
                }
            }
            start = end;
        }
        Ok(())
    }

    /// GETs `samples` random keys of `0..keys` and compares each value with
    /// [`value`]; returns how many were checked.
    pub fn verify(&mut self, keys: u64, len: usize, samples: u64, seed: u64) -> Result<u64, CompareError> {
        let mut rng = Rng(seed | 1);
        for _ in 0..samples {
            let k = rng.next() % keys;
            match self.call(&[b"GET", key(k).as_bytes()])? {
                Reply::Bulk(Some(v)) if v == value(k, len) => {}
                Reply::Bulk(Some(v)) => {
                    let at = v.iter().zip(value(k, len)).position(|(a, b)| *a != b).unwrap_or(v.len().min(len));
                    return Err(CompareError::WrongBytes(format!("redis: GET {} returned {} bytes differing from what was SET at byte {at}", key(k), v.len())));
                }
                r => return Err(CompareError::WrongBytes(format!("redis: GET {} answered {r:?}", key(k)))),
            }
        }
        Ok(samples)
    }

    /// `DEBUG DIGEST`: a hash of the whole dataset.
    pub fn digest(&mut self) -> Result<String, CompareError> {
        match self.call(&[b"DEBUG", b"DIGEST"])? {
            Reply::Status(s) => Ok(s),
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            r => Err(proto(format!("DEBUG DIGEST answered {r:?}"))),
        }
    }

    /// `SHUTDOWN NOSAVE` (the connection closes without a reply).
    pub fn shutdown(mut self) {
        let _ = self.call(&[b"SHUTDOWN", b"NOSAVE"]);
    }
}

/// What redis-benchmark reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchmarkOutput {
    /// Requests per second.
    pub rps: f64,
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds (from the percentile distribution).
    pub p999_us: f64,
}

/// Parses redis-benchmark's (7.x) full output: "throughput summary: N
/// requests per second", the "latency summary (msec)" table (avg min p50 p95
/// p99 max) and the first line of the "Latency by percentile distribution" at
/// or above 99.9%.
pub fn parse_benchmark(text: &str) -> Result<BenchmarkOutput, CompareError> {
    let text = text.replace('\r', "\n");
    let bad = |what: &str| proto(format!("redis-benchmark's output has no {what}"));
    let rps: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("throughput summary:")?.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| bad("throughput summary"))?;
    let mut lines = text.lines().skip_while(|l| !l.contains("latency summary (msec)"));
    let header: Vec<&str> = lines.nth(1).ok_or_else(|| bad("latency summary"))?.split_whitespace().collect();
    let values: Vec<f64> = lines.next().ok_or_else(|| bad("latency summary values"))?.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let col = |name: &str| header.iter().position(|h| *h == name).and_then(|i| values.get(i)).map(|ms| ms * 1000.0).ok_or_else(|| bad(name));
    let p999_us = text
        .lines()
        .skip_while(|l| !l.starts_with("Latency by percentile distribution"))
        .find_map(|l| {
            let (pct, rest) = l.split_once("% <= ")?;
            let pct: f64 = pct.trim().parse().ok()?;
            let ms: f64 = rest.split_whitespace().next()?.parse().ok()?;
            (pct >= 99.9).then_some(ms * 1000.0)
        })
        .ok_or_else(|| bad("percentile distribution reaching 99.9%"))?;
    Ok(BenchmarkOutput { rps, p50_us: col("p50")?, p99_us: col("p99")?, p999_us })
}

/// Runs redis-benchmark: `requests` GETs of random keys of `0..keys` from 8
/// clients on 127.0.0.1:`port`.
pub fn benchmark(port: u16, keys: u64, requests: u64) -> Result<BenchmarkOutput, CompareError> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "8", "-n", &requests.to_string(), "-r", &keys.to_string(), "GET", "key:__rand_int__"])
        .output()
        .map_err(|source| CompareError::Io { what: "running redis-benchmark (apt-get install redis-tools)".into(), source })?;
    if !out.status.success() {
        return Err(proto(format!("redis-benchmark failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    parse_benchmark(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "GET key:__rand_int__: rps=0.0 (overall: 0.0) avg_msec=-nan (overall: -nan)\r\n====== GET key:__rand_int__ ======\n  2000 requests completed in 0.07 seconds\n\nLatency by percentile distribution:\n0.000% <= 0.151 milliseconds (cumulative count 1)\n50.000% <= 1.047 milliseconds (cumulative count 1010)\n99.805% <= 7.639 milliseconds (cumulative count 1997)\n99.902% <= 7.735 milliseconds (cumulative count 1999)\n100.000% <= 7.903 milliseconds (cumulative count 2000)\n\nCumulative distribution of latencies:\n99.350% <= 7.103 milliseconds (cumulative count 1987)\n\nSummary:\n  throughput summary: 29411.76 requests per second\n  latency summary (msec):\n          avg       min       p50       p95       p99       max\n        1.202     0.144     1.047     1.927     6.719     7.903\n";

    #[test]
    fn redis_cli_pipe_output_parses() {
        let out = "All data transferred. Waiting for the last reply...\nLast reply received from server.\nerrors: 2, replies: 685715\n";
        assert_eq!(parse_pipe(out), Some(Piped { errors: 2, replies: 685715 }));
        assert_eq!(parse_pipe("Error writing to the server: Connection reset by peer"), None);
    }

    #[test]
    fn redis_benchmark_output_parses() {
        let b = parse_benchmark(OUTPUT).unwrap();
        assert_eq!(b.rps, 29411.76);
        assert!((b.p50_us - 1047.0).abs() < 1e-6 && (b.p99_us - 6719.0).abs() < 1e-6 && (b.p999_us - 7735.0).abs() < 1e-6, "{b:?}");
        assert!(parse_benchmark("nothing useful").is_err());
    }

    #[test]
    fn values_differ_by_key_and_commands_encode_as_resp() {
        assert_eq!(key(42), "key:000000000042");
        assert_eq!(value(3, 100).len(), 100);
        assert_ne!(value(3, 100), value(4, 100));
        assert_eq!(value(3, 100), value(3, 100));
        let mut out = Vec::new();
        encode(&[b"GET", b"k"], &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
