//! Hard rule 2: the runtime's own memory never lives in registered memory.
//!
//! This test program's global allocator serves every allocation from one big
//! arena, except those made inside the runtime's scope, which go to the system
//! allocator, as the LD_PRELOAD shim and the jemalloc hook do. The test
//! registers the whole arena, so the program's heap is under farmem, evicts it
//! all, and keeps allocating and checking data. If any object the fault thread
//! touches lived in the arena, the fault thread would fault on itself and hang:
//! the work runs in a child process with a deadline, so a hang fails the test.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use farmem_runtime::{in_runtime, Runtime};

const ARENA: usize = 512 << 20;

struct Arena {
    base: AtomicUsize,
    next: AtomicUsize,
}

// SAFETY: alloc hands out disjoint, aligned ranges of one arena (a bump
// allocator: frees of arena memory are ignored), or defers to System.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if in_runtime() {
            // SAFETY: forwarding the caller's layout.
            return unsafe { System.alloc(layout) };
        }
        let base = self.arena();
        let align = layout.align().max(16);
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = (base + cur).next_multiple_of(align) - base;
            let end = start + layout.size();
            if end > ARENA {
                return std::ptr::null_mut();
            }
            match self.next.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => cur = now,
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let base = self.base.load(Ordering::Acquire);
        if base != 0 && (ptr as usize) >= base && (ptr as usize) < base + ARENA {
            return;
        }
        // SAFETY: not arena memory, so System gave it out with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

impl Arena {
    fn arena(&self) -> usize {
        let b = self.base.load(Ordering::Acquire);
        if b != 0 {
            return b;
        }
        // SAFETY: a fresh anonymous mapping for the arena.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ARENA,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        } as usize;
        assert_ne!(p, libc::MAP_FAILED as usize);
        match self.base.compare_exchange(0, p, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => p,
            Err(other) => {
                // SAFETY: unmapping the mapping this call made and lost the race with.
                unsafe { libc::munmap(p as *mut libc::c_void, ARENA) };
                other
            }
        }
    }
}

#[global_allocator]
static HEAP: Arena = Arena { base: AtomicUsize::new(0), next: AtomicUsize::new(0) };

const CHILD_ENV: &str = "FARMEM_TEST_ARENA_CHILD";

fn program_with_its_heap_under_farmem() {
    let rt = Runtime::builder().batch_pages(128).build().unwrap();
    let base_addr = HEAP.arena();
    let base = base_addr as *mut u8;
    rt.register(base, ARENA).unwrap();
    // The program's data: a map of strings and vectors, all in the arena.
    let mut data: BTreeMap<u64, (String, Vec<u64>)> = BTreeMap::new();
    for k in 0..20_000u64 {
        data.insert(k, (format!("value number {k} of the program"), (0..64).map(|x| x * k).collect()));
    }
    for round in 0..3 {
        let r = rt.evict(base, ARENA).unwrap();
        let out = rt.stats().evicted_pages;
        assert!(out > 1000, "round {round}: only {out} pages out of RAM; {r:?}");
        // Use the heap from two threads while a third evicts it again.
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..3 {
                    rt.evict(base_addr as *mut u8, ARENA).unwrap();
                }
            });
            for t in 0..2u64 {
                let data = &data;
                s.spawn(move || {
                    for k in (t..20_000).step_by(2) {
                        let (text, v) = &data[&k];
                        assert_eq!(text, &format!("value number {k} of the program"));
                        assert_eq!(v[63], 63 * k);
                    }
                });
            }
        });
        for k in 0..2_000u64 {
            data.insert(100_000 + round * 10_000 + k, (k.to_string(), vec![k; 8]));
        }
    }
    let s = rt.stats();
    assert!(s.faults_from_tier > 1000, "{s:?}");
    println!("ARENA OK: {} faults from the tier", s.faults_from_tier);
}

#[test]
fn the_runtime_survives_its_host_heap_being_registered() {
    if std::env::var_os(CHILD_ENV).is_some() {
        program_with_its_heap_under_farmem();
        return;
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "the_runtime_survives_its_host_heap_being_registered", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the program hung with its heap under farmem: the runtime faulted on its own memory");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success() && out.contains("ARENA OK"), "status {status:?}, output:\n{out}");
}
