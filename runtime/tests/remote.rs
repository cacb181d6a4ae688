//! Pages through T1 into a remote tier on a real Redis server (started on
//! loopback) and back: byte-exact from four threads with prefetch, and a
//! server killed mid-run, after which the program goes on and only the pages
//! that lived there end in SIGBUS.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::Arc;

use common::{checksum, Heap};
use farmem_runtime::Runtime;
use farmem_tiers::remote::LocalServer;
use farmem_tiers::{CompressedConfig, CompressedTier, RemoteProtocol, RemoteTier};

fn t1() -> Arc<CompressedTier> {
    Arc::new(CompressedTier::new(CompressedConfig::default()).unwrap())
}

fn redis() -> Option<LocalServer> {
    match LocalServer::start(RemoteProtocol::Redis) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: redis-server is not installed (bash .ci/run installs it)");
            None
        }
        Err(e) => panic!("starting redis-server: {e}"),
    }
}

fn filled(pages: usize) -> (Heap, Vec<u64>) {
    common::filled(pages, |i| i as u64 * 7 + 1)
}

#[test]
fn pages_demoted_to_redis_come_back_byte_for_byte_from_four_threads() {
    let Some(server) = redis() else { return };
    let remote = Arc::new(RemoteTier::open(server.config()).unwrap());
    let rt = Runtime::builder().tier(t1()).tier(remote.clone()).prefetch(8).build().unwrap();
    const PAGES: usize = 8192;
    let (heap, sums) = filled(PAGES);
    rt.register(heap.ptr, heap.len).unwrap();
    let ev = rt.evict(heap.ptr, heap.len).unwrap();
    let d = rt.demote_tier(0).unwrap();
    remote.flush().unwrap();
    let s = rt.stats();
    eprintln!("evicted {}, demoted {} to redis: {:?}", ev.evicted, d.demoted, remote.remote_stats());
    assert_eq!(s.tiers[0].1.pages, 0, "T1 still holds pages after demotion");
    assert_eq!(s.tiers[1].1.pages, ev.evicted, "redis holds every evicted page");
    assert!(ev.evicted as usize > PAGES / 2);
    let heap = Arc::new(heap);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let h = Arc::clone(&heap);
            // Each thread its own interleaved share: faults, and prefetches of neighbours.
            std::thread::spawn(move || (t..PAGES).step_by(4).map(|i| (i, checksum(h.page(i)))).collect::<Vec<_>>())
        })
        .collect();
    for t in threads {
        for (i, sum) in t.join().unwrap() {
            assert_eq!(sum, sums[i], "page {i}");
        }
    }
    let s = common::settled(&rt, |s| s.tiers[1].1.pages == 0);
    assert_eq!(s.tiers[1].1.pages, 0, "pages left in the remote tier: {:?}", s.tiers);
    remote.flush().unwrap();
    let left = Command::new("redis-cli").args(["-p", &server.port.to_string(), "DBSIZE"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "0", "keys of pages that came back are deleted");
    drop(rt);
}

const CHILD: &str = "FARMEM_REMOTE_KILLED_CHILD";

/// In a child process: half the heap demoted to Redis, the other half
/// evicted to T1 only; the server killed; the T1 half read back (it must
/// all be right, and the program goes on), then a page that lived on the
/// server (the access must end in SIGBUS).
#[test]
fn a_killed_server_gives_sigbus_for_its_pages_only() {
    const NAME: &str = "a_killed_server_gives_sigbus_for_its_pages_only";
    if let Ok(arg) = std::env::var(CHILD) {
        let (port, pid) = arg.split_once(':').unwrap();
        let mut config = farmem_tiers::RemoteConfig::redis("127.0.0.1", port.parse().unwrap());
        config.timeout = std::time::Duration::from_millis(500);
        let remote = Arc::new(RemoteTier::open(config).unwrap());
        let rt = Runtime::builder().tier(t1()).tier(remote.clone()).build().unwrap();
        const PAGES: usize = 1024;
        let (heap, sums) = filled(PAGES);
        rt.register(heap.ptr, heap.len).unwrap();
        let half = heap.len / 2;
        rt.evict(heap.ptr, half).unwrap();
        rt.demote_tier(0).unwrap();
        remote.flush().unwrap();
        // SAFETY: the second half of the heap, inside its mapping.
        rt.evict(unsafe { heap.ptr.add(half) }, half).unwrap();
        let s = rt.stats();
        assert!(s.tiers[0].1.pages > 0 && s.tiers[1].1.pages > 0, "{:?}", s.tiers);
        // SAFETY: kill(2) of the server this test's parent started.
        assert_eq!(unsafe { libc::kill(pid.parse().unwrap(), libc::SIGKILL) }, 0);
        for (i, &sum) in sums.iter().enumerate().skip(PAGES / 2) {
            assert_eq!(checksum(heap.page(i)), sum, "page {i} (T1) came back wrong");
        }
        eprintln!("the pages in T1 came back right");
        for (i, &sum) in sums.iter().enumerate().take(PAGES / 2) {
            // A page either comes back right or the access never returns.
            assert_eq!(checksum(heap.page(i)), sum, "page {i} came back wrong");
        }
        // Every page came back right: the server's loss was not seen.
        std::process::exit(3);
    }
    let Some(server) = redis() else { return };
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{}:{}", server.port, server.pid().unwrap()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGBUS), "the child should die of SIGBUS, got {:?}\n{stderr}", out.status);
    assert!(stderr.contains("the pages in T1 came back right"), "the program did not go on after the server died:\n{stderr}");
}
