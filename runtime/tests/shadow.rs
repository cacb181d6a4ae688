//! Random writes, reads, drops and evictions by several threads over 256 MiB,
//! checked against a shadow copy of what the memory must hold.

mod common;

use std::sync::Arc;

use common::{fill_page, Heap, PAGE};
use farmem_runtime::Runtime;
use proptest::prelude::*;

const REGION: usize = 256 << 20;
const PAGES: usize = REGION / PAGE;
const THREADS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    /// Write `len` bytes of `byte` at `offset` of the thread's `slot`-th page.
    Write { slot: usize, offset: usize, len: usize, byte: u8 },
    /// Read the page and compare it with the shadow.
    Read { slot: usize },
    /// madvise(DONTNEED) the page: it must read as zeros after.
    Drop { slot: usize },
    /// Evict `pages` pages starting at page `first` (any thread's).
    Evict { first: usize, pages: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..PAGES / THREADS;
    prop_oneof![
        4 => (slot.clone(), 0..PAGE, 1..PAGE, any::<u8>()).prop_map(|(slot, offset, len, byte)| Op::Write { slot, offset, len: len.min(PAGE - offset), byte }),
        4 => slot.clone().prop_map(|slot| Op::Read { slot }),
        1 => slot.prop_map(|slot| Op::Drop { slot }),
        2 => (0..PAGES, 1usize..8192).prop_map(|(first, pages)| Op::Evict { first, pages: pages.min(PAGES - first) }),
    ]
}

/// A pointer the threads share; each writes only the pages it owns.
#[derive(Clone, Copy)]
struct Shared(*mut u8);
// SAFETY: threads touch disjoint pages through it (page p belongs to thread p % THREADS).
unsafe impl Send for Shared {}

fn run_case(rt: &Runtime, heap: &Heap, shadow: &mut [u8], ops: &[Vec<Op>]) -> Result<(), TestCaseError> {
    for p in 0..PAGES {
        fill_page(&mut shadow[p * PAGE..(p + 1) * PAGE], p as u64);
    }
    heap.bytes().copy_from_slice(shadow);
    let shadow_ptr = Shared(shadow.as_mut_ptr());
    let heap_ptr = Shared(heap.ptr);
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ops
            .iter()
            .enumerate()
            .map(|(t, ops)| {
                s.spawn(move || {
                    let (sh, hp) = (shadow_ptr, heap_ptr);
                    for (n, op) in ops.iter().enumerate() {
                        match *op {
                            Op::Write { slot, offset, len, byte } => {
                                let at = (slot * THREADS + t) * PAGE + offset;
                                // SAFETY: page slot*THREADS+t belongs to this thread, in both copies.
                                unsafe {
                                    std::ptr::write_bytes(hp.0.add(at), byte, len);
                                    std::ptr::write_bytes(sh.0.add(at), byte, len);
                                }
                            }
                            Op::Read { slot } => {
                                let at = (slot * THREADS + t) * PAGE;
                                // SAFETY: as above.
                                let (a, b) = unsafe {
                                    (std::slice::from_raw_parts(hp.0.add(at), PAGE), std::slice::from_raw_parts(sh.0.add(at), PAGE))
                                };
                                if a != b {
                                    return Err(format!("thread {t} op {n}: page {} differs from its shadow", at / PAGE));
                                }
                            }
                            Op::Drop { slot } => {
                                let at = (slot * THREADS + t) * PAGE;
                                // SAFETY: as above; madvise on a page of the test's mapping.
                                unsafe {
                                    libc::madvise(hp.0.add(at).cast(), PAGE, libc::MADV_DONTNEED);
                                    std::ptr::write_bytes(sh.0.add(at), 0, PAGE);
                                }
                            }
                            Op::Evict { first, pages } => {
                                // SAFETY: the range lies inside the heap.
                                rt.evict(unsafe { hp.0.add(first * PAGE) }, pages * PAGE).map_err(|e| e.to_string())?;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().unwrap().err()).collect()
    });
    prop_assert!(failures.is_empty(), "{failures:?}");
    // Evict everything once more and compare the whole region.
    rt.evict(heap.ptr, REGION).unwrap();
    for p in 0..PAGES {
        let (a, b) = (&heap.bytes()[p * PAGE..(p + 1) * PAGE], &shadow[p * PAGE..(p + 1) * PAGE]);
        if a != b {
            let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
            let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
            let s = rt.stats();
            prop_assert!(
                false,
                "page {p} differs from its shadow at the end: {differing} bytes differ from byte {first}; memory all zero {}, shadow all zero {}; memory[{first}..+8] {:?}, shadow {:?}; faults from tier {}, staging {}, zero-filled {}, deferred {}, dropped {}",
                a.iter().all(|&x| x == 0),
                b.iter().all(|&x| x == 0),
                &a[first..(first + 8).min(PAGE)],
                &b[first..(first + 8).min(PAGE)],
                s.faults_from_tier, s.faults_from_staging, s.faults_zero_filled, s.faults_deferred, s.pages_dropped_by_program
            );
        }
    }
    Ok(())
}

#[test]
fn random_threads_match_their_shadow() {
    let rt = Arc::new(Runtime::builder().build().unwrap());
    let heap = Heap::new(REGION);
    rt.register(heap.ptr, heap.len).unwrap();
    let shadow = std::cell::RefCell::new(vec![0u8; REGION]);
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
    let strategy = proptest::collection::vec(proptest::collection::vec(op(), 50..300), THREADS..=THREADS);
    runner.run(&strategy, |ops| run_case(&rt, &heap, &mut shadow.borrow_mut(), &ops)).unwrap();
    let s = rt.stats();
    assert!(s.faults_from_tier > 10_000, "{s:?}");
    println!(
        "faults from tier {}, from staging {}, zero-filled {}, dropped by program {}",
        s.faults_from_tier, s.faults_from_staging, s.faults_zero_filled, s.pages_dropped_by_program
    );
}
