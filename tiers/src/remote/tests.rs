//! The remote tier against real servers started on loopback: byte-exact
//! round trips from four threads, a server killed mid-run, an expired key,
//! a damaged value, what an encrypted page shows on the server, and keys
//! deleted at close and at exit (or left to expire after a crash).

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::Codec;

/// A server, or `None` (and a line saying so) where the program is not installed.
fn server(protocol: RemoteProtocol) -> Option<LocalServer> {
    match LocalServer::start(protocol) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: {} is not installed (bash .ci/run installs it)", protocol.scheme());
            None
        }
        Err(e) => panic!("starting {}: {e}", protocol.scheme()),
    }
}

/// `redis-cli -p PORT ARGS...`, its output.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Keys on the server: DBSIZE, or memcached's curr_items.
fn keys_on(server: &LocalServer) -> u64 {
    match server.protocol {
        RemoteProtocol::Redis => cli(server.port, &["DBSIZE"]).parse().unwrap(),
        RemoteProtocol::Memcached => {
            let mut c = Conn::open(server.protocol, "127.0.0.1", server.port, Duration::from_secs(2)).unwrap();
            c.command(&["stats"]);
            c.send().unwrap();
            let lines = c.text_reply().unwrap().unwrap();
            lines.iter().find_map(|l| l.strip_prefix("STAT curr_items ")).unwrap().parse().unwrap()
        }
    }
}

/// Page `i` of a test: text-like (compresses) for most, noise for every fifth.
fn page(i: u64) -> Page {
    let mut p = [0u8; PAGE_SIZE];
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for (k, b) in p.iter_mut().enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = if i % 5 == 0 { x as u8 } else { b"page of farmem, "[(k + (x % 3) as usize) % 16] };
    }
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

fn round_trips_under_four_threads(protocol: RemoteProtocol) {
    let Some(server) = server(protocol) else { return };
    let tier = Arc::new(RemoteTier::open(RemoteConfig { batch_pages: 64, ..server.config() }).unwrap());
    const EACH: u64 = 600;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let tier = Arc::clone(&tier);
            std::thread::spawn(move || {
                let mut handles = Vec::new();
                for i in t * EACH..(t + 1) * EACH {
                    let h = tier.store(&page(i), PageClass::DEFAULT).unwrap();
                    // Some loads at once: held in RAM, or already sent.
                    if i % 7 == 0 {
                        let mut back = [0u8; PAGE_SIZE];
                        tier.load(h, &mut back).unwrap();
                        assert!(back == page(i), "page {i} read back at once");
                    }
                    handles.push((i, h));
                }
                tier.flush().unwrap();
                for &(i, h) in &handles {
                    let mut back = [0u8; PAGE_SIZE];
                    tier.load(h, &mut back).unwrap();
                    assert!(back == page(i), "page {i} from the server");
                }
                // One round trip for many pages.
                let (idx, hs): (Vec<u64>, Vec<Handle>) = handles[..32].iter().copied().unzip();
                let mut out = vec![[0u8; PAGE_SIZE]; 32];
                let mut ok = 0;
                tier.load_many(&hs, &mut out, &mut |_, r| {
                    r.unwrap();
                    ok += 1;
                });
                assert_eq!(ok, 32);
                for (k, i) in idx.iter().enumerate() {
                    assert!(out[k] == page(*i), "page {i} of a batch");
                }
                // Half the pages come back for good: their keys go.
                for &(_, h) in handles.iter().step_by(2) {
                    tier.remove(h);
                }
                handles
            })
        })
        .collect();
    let all: Vec<Vec<(u64, Handle)>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    tier.flush().unwrap();
    let s = tier.remote_stats();
    eprintln!("{}: {s:?}", protocol.scheme());
    assert_eq!(s.stored_pages, 2 * EACH, "{s:?}");
    assert!(s.batches < 4 * EACH / 4, "pages went out in batches: {s:?}");
    assert_eq!(keys_on(&server), 2 * EACH, "the server holds exactly the live pages");
    assert_eq!(tier.stats().pages, 2 * EACH);
    for &(i, h) in all.iter().flatten().skip(1).step_by(2) {
        let mut back = [0u8; PAGE_SIZE];
        tier.load(h, &mut back).unwrap();
        assert!(back == page(i), "page {i} after the removes");
    }
    // Many pages, one round trip (a prefetch of pages demoted together).
    let batch: Vec<(u64, Handle)> = all.iter().flatten().skip(1).step_by(2).take(48).copied().collect();
    let hs: Vec<Handle> = batch.iter().map(|b| b.1).collect();
    let mut out = vec![[0u8; PAGE_SIZE]; hs.len()];
    let trips = tier.remote_stats().load_round_trips;
    tier.load_many(&hs, &mut out, &mut |k, r| r.unwrap_or_else(|e| panic!("page {}: {e}", batch[k].0)));
    assert_eq!(tier.remote_stats().load_round_trips - trips, 1, "48 pages in one round trip");
    for (k, (i, _)) in batch.iter().enumerate() {
        assert!(out[k] == page(*i), "page {i} of the batch");
    }
    drop(tier);
    assert_eq!(keys_on(&server), 0, "every key is deleted when the tier closes");
}

#[test]
fn redis_pages_come_back_byte_for_byte_under_four_threads() {
    round_trips_under_four_threads(RemoteProtocol::Redis);
}

#[test]
fn memcached_pages_come_back_byte_for_byte_under_four_threads() {
    round_trips_under_four_threads(RemoteProtocol::Memcached);
}

#[test]
fn a_killed_server_fails_only_its_pages_and_stops_stores_until_it_answers() {
    let Some(mut server) = server(RemoteProtocol::Redis) else { return };
    // A long linger: pages stored after the flush stay held in RAM.
    let tier = RemoteTier::open(RemoteConfig { linger: Duration::from_secs(30), batch_pages: 1 << 20, timeout: Duration::from_millis(500), ..server.config() }).unwrap();
    let sent: Vec<Handle> = (0..50).map(|i| tier.store(&page(i), PageClass::DEFAULT).unwrap()).collect();
    tier.flush().unwrap();
    let held: Vec<Handle> = (50..60).map(|i| tier.store(&page(i), PageClass::DEFAULT).unwrap()).collect();
    server.kill();
    let mut back = [0u8; PAGE_SIZE];
    for (i, h) in sent.iter().enumerate() {
        let e = tier.load(*h, &mut back).expect_err("a page on a dead server cannot come back");
        let msg = e.to_string();
        assert!(msg.contains(&tier.key_of(*h)) && msg.contains("127.0.0.1"), "page {i}: {msg}");
    }
    for (i, h) in held.iter().enumerate() {
        tier.load(*h, &mut back).unwrap();
        assert!(back == page(50 + i as u64), "held page {i}");
    }
    assert!(tier.remote_stats().down);
    assert!(matches!(tier.store(&page(99), PageClass::DEFAULT), Err(TierError::Full { .. })), "stores are refused while the store is down");
    // Back, empty: the tier takes pages again; the lost ones stay lost.
    server.restart().unwrap();
    let t0 = std::time::Instant::now();
    while tier.remote_stats().down {
        assert!(t0.elapsed() < Duration::from_secs(10), "the tier never saw the server come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let h = tier.store(&page(100), PageClass::DEFAULT).unwrap();
    tier.flush().unwrap();
    tier.load(h, &mut back).unwrap();
    assert!(back == page(100));
    for (i, h) in held.iter().enumerate() {
        tier.load(*h, &mut back).unwrap();
        assert!(back == page(50 + i as u64), "held page {i}, sent after the restart");
    }
    let e = tier.load(sent[0], &mut back).unwrap_err().to_string();
    assert!(e.contains("the key is gone"), "{e}");
    assert_eq!(tier.remote_stats().down_events, 1, "one outage");
}

#[test]
fn an_expired_key_or_a_damaged_value_fails_the_load() {
    let Some(server) = server(RemoteProtocol::Redis) else { return };
    for plain in [false, true] {
        let mut config = server.config();
        config.spec.plain = plain;
        config.spec.ttl_secs = 600;
        let tier = RemoteTier::open(config).unwrap();
        let hs: Vec<Handle> = (0..4).map(|i| tier.store(&page(i), PageClass::DEFAULT).unwrap()).collect();
        tier.flush().unwrap();
        let key = |h| tier.key_of(h);
        // Every key carries the expiry.
        let ttl: i64 = cli(server.port, &["PTTL", &key(hs[0])]).parse().unwrap();
        assert!(ttl > 590_000 && ttl <= 600_000, "PTTL {ttl}");
        assert_eq!(cli(server.port, &["PEXPIRE", &key(hs[1]), "1"]), "1");
        std::thread::sleep(Duration::from_millis(20));
        // One byte changed in the header, one in the payload.
        cli(server.port, &["SETRANGE", &key(hs[2]), "5", "Z"]);
        cli(server.port, &["SETRANGE", &key(hs[3]), "40", "Z"]);
        let mut back = [0u8; PAGE_SIZE];
        tier.load(hs[0], &mut back).unwrap();
        assert!(back == page(0));
        let gone = tier.load(hs[1], &mut back).unwrap_err().to_string();
        assert!(gone.contains("the key is gone"), "{gone}");
        for h in &hs[2..] {
            let bad = tier.load(*h, &mut back).unwrap_err().to_string();
            assert!(bad.contains("checking a page") && bad.contains("crc32c mismatch"), "plain {plain}: {bad}");
        }
        assert_eq!(tier.stats().load_errors, 3);
    }
}

#[test]
fn an_encrypted_page_shows_nothing_on_the_server() {
    let Some(server) = server(RemoteProtocol::Redis) else { return };
    let marker = b"FARMEM-CLEAR-TEXT-MARKER";
    let mut p = [0u8; PAGE_SIZE];
    for (k, chunk) in p.chunks_mut(64).enumerate() {
        chunk[..marker.len()].copy_from_slice(marker);
        chunk[marker.len()..marker.len() + 8].copy_from_slice(&(k as u64).to_le_bytes());
    }
    // Every value on the server, as `redis-cli --scan` and GET list them.
    let dump = |base: &str| -> Vec<u8> {
        let keys = cli(server.port, &["--scan", "--pattern", &format!("{base}*")]);
        let mut all = Vec::new();
        for k in keys.lines() {
            let out = Command::new("redis-cli").args(["-p", &server.port.to_string(), "--no-raw", "GET", k]).output().unwrap();
            all.extend_from_slice(&out.stdout);
        }
        all
    };
    for plain in [true, false] {
        let mut config = server.config();
        config.spec.plain = plain;
        let tier = RemoteTier::open(config).unwrap();
        for _ in 0..3 {
            tier.store(&p, PageClass::DEFAULT).unwrap();
        }
        tier.flush().unwrap();
        let all = dump(&tier.key_base());
        assert!(!all.is_empty());
        let seen = all.windows(marker.len()).any(|w| w == marker);
        // The plain tier is the control: the marker shows through lz4.
        assert_eq!(seen, plain, "plain {plain}: the marker is {} on the server", if seen { "visible" } else { "not visible" });
    }
}

const EXIT_CHILD: &str = "FARMEM_REMOTE_EXIT_CHILD";

/// In a child: pages stored and flushed, the tier never dropped, then an
/// ordinary exit (the keys must go) or `_exit` as after a crash (they must
/// stay, with their expiry).
#[test]
fn keys_go_at_exit_and_expire_after_a_crash() {
    if let Ok(arg) = std::env::var(EXIT_CHILD) {
        let (port, how) = arg.split_once(':').unwrap();
        let mut config = RemoteConfig::redis("127.0.0.1", port.parse().unwrap());
        config.spec.ttl_secs = 300;
        let tier = RemoteTier::open(config).unwrap();
        for i in 0..100 {
            tier.store(&page(i), PageClass::DEFAULT).unwrap();
        }
        tier.flush().unwrap();
        std::mem::forget(tier);
        if how == "crash" {
            // SAFETY: _exit ends the process at once; nothing runs after it.
            unsafe { libc::_exit(0) };
        }
        std::process::exit(0);
    }
    let Some(server) = server(RemoteProtocol::Redis) else { return };
    for how in ["exit", "crash"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "remote::tests::keys_go_at_exit_and_expire_after_a_crash", "--nocapture", "--test-threads=1"])
            .env(EXIT_CHILD, format!("{}:{how}", server.port))
            .output()
            .unwrap();
        assert!(out.status.success(), "{how}: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
        let keys = cli(server.port, &["--scan", "--pattern", "*"]);
        let n = keys.lines().count();
        if how == "exit" {
            assert_eq!(n, 0, "keys left after an ordinary exit: {keys}");
        } else {
            assert_eq!(n, 100, "a crashed process's keys stay until they expire");
            for k in keys.lines() {
                let ttl: i64 = cli(server.port, &["PTTL", k]).parse().unwrap();
                assert!(ttl > 0 && ttl <= 300_000, "{k}: PTTL {ttl}");
            }
        }
    }
}

#[test]
fn a_server_that_does_not_answer_is_named_at_open() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = RemoteTier::open(RemoteConfig::redis("127.0.0.1", port)).unwrap_err().to_string();
    // Another test's server may have taken the port meanwhile: then it is the ping that fails.
    assert!(e.contains(&format!("redis://127.0.0.1:{port}")) && (e.contains("connecting") || e.contains("pinging")), "{e}");
}

#[test]
fn zstd_pages_round_trip_too() {
    let Some(server) = server(RemoteProtocol::Redis) else { return };
    let tier = RemoteTier::open(RemoteConfig { codec: Codec::Zstd { level: 3 }, ..server.config() }).unwrap();
    let h = tier.store(&page(3), PageClass::DEFAULT).unwrap();
    tier.flush().unwrap();
    let mut back = [0u8; PAGE_SIZE];
    tier.load(h, &mut back).unwrap();
    assert!(back == page(3));
}

/// Redis Cluster: the tier finds the node of its slot (MOVED at open),
/// stores new pages on the importing node while its slot migrates (ASK),
/// reads pages from either side of the migration, follows the slot when it
/// has moved (MOVED), and deletes its keys at close wherever they are.
#[test]
fn redis_cluster_redirects_are_followed_through_a_slot_migration() {
    let cluster = match LocalCluster::start(3) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: redis-server or redis-cli is not installed (bash .ci/run installs them)");
            return;
        }
        Err(e) => panic!("starting a cluster: {e}"),
    };
    let cli = |port: u16, args: &[&str]| cluster.cli(port, args).unwrap();
    let first = cluster.ports[0];
    // A tier whose slot lives on another node than the one the spec names.
    let tier = (0..30)
        .map(|_| RemoteTier::open(RemoteConfig::redis("127.0.0.1", first)).unwrap())
        .find(|t| t.node().1 != first)
        .expect("30 tiers all had their slot on the first node");
    let src = tier.node().1;
    let dst = *cluster.ports.iter().find(|p| **p != src && **p != first).unwrap();
    let check = |hs: &[(u64, Handle)], what: &str| {
        for &(i, h) in hs {
            let mut back = [0u8; PAGE_SIZE];
            tier.load(h, &mut back).unwrap_or_else(|e| panic!("{what}: page {i}: {e}"));
            assert!(back == page(i), "{what}: page {i}");
        }
    };
    let mut pages: Vec<(u64, Handle)> = (0..200).map(|i| (i, tier.store(&page(i), PageClass::DEFAULT).unwrap())).collect();
    tier.flush().unwrap();
    check(&pages, "before the migration");
    let key0 = tier.key_of(pages[0].1);
    assert_eq!(cli(src, &["EXISTS", &key0]), "1", "the key is on the slot's node");
    // Migrate the slot from src to dst, by hand as redis-cli --cluster reshard does.
    let slot = cli(src, &["CLUSTER", "KEYSLOT", &key0]);
    let (src_id, dst_id) = (cli(src, &["CLUSTER", "MYID"]), cli(dst, &["CLUSTER", "MYID"]));
    cli(dst, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]);
    cli(src, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]);
    // New keys of a migrating slot go to dst (ASK); old ones are still on src.
    let new: Vec<(u64, Handle)> = (200..250).map(|i| (i, tier.store(&page(i), PageClass::DEFAULT).unwrap())).collect();
    tier.flush().unwrap();
    let on_dst = Command::new("redis-cli").args(["-p", &dst.to_string()]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().and_then(|mut c| {
        use std::io::Write;
        let mut input = c.stdin.take().unwrap();
        writeln!(input, "ASKING\nEXISTS {}", tier.key_of(new[0].1))?;
        drop(input);
        c.wait_with_output()
    });
    let on_dst = String::from_utf8_lossy(&on_dst.unwrap().stdout).into_owned();
    assert!(on_dst.lines().last() == Some("1"), "a page stored during the migration is on the importing node: {on_dst}");
    assert!(cli(src, &["EXISTS", &tier.key_of(new[0].1)]).starts_with("ASK "), "src does not have it, and sends the client on");
    check(&pages, "old pages during the migration");
    check(&new, "new pages during the migration (ASK)");
    // Move the old keys, then give the slot to dst everywhere.
    let keys = cli(src, &["CLUSTER", "GETKEYSINSLOT", &slot, "10000"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 200, "the old pages' keys are on src");
    let mut migrate = vec!["MIGRATE", "127.0.0.1", "", "", "0", "5000", "KEYS"];
    let dst_port = dst.to_string();
    migrate[2] = &dst_port;
    migrate.extend(keys.iter().copied());
    assert_eq!(cli(src, &migrate), "OK");
    for &p in &cluster.ports {
        cli(p, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
    }
    pages.extend(new);
    check(&pages, "after the migration (MOVED)");
    assert_eq!(tier.node().1, dst, "the tier follows its slot");
    let later: Vec<(u64, Handle)> = (250..260).map(|i| (i, tier.store(&page(i), PageClass::DEFAULT).unwrap())).collect();
    tier.flush().unwrap();
    check(&later, "stored after the migration");
    assert_eq!(cli(dst, &["EXISTS", &tier.key_of(later[0].1)]), "1");
    let s = tier.remote_stats();
    assert_eq!((s.stored_pages, s.down_events, s.lost), (260, 0, 0), "{s:?}");
    drop(tier);
    let left: u64 = cluster.ports.iter().map(|p| cli(*p, &["DBSIZE"]).parse::<u64>().unwrap()).sum();
    assert_eq!(left, 0, "keys left on the cluster after the tier closed");
}
