//! Lazily registered regions: no farmem fault until farmem first takes a page
//! out; then everything as for an eagerly registered region.

mod common;

use common::{checksum, fill, settled, verify, Heap, PAGE};
use farmem_runtime::Runtime;

#[test]
fn a_lazy_region_costs_no_fault_until_it_is_first_evicted_and_then_keeps_its_bytes() {
    const PAGES: usize = 4096;
    let heap = Heap::new(PAGES * PAGE);
    // One fault a page (readahead has a test of its own).
    let rt = Runtime::builder().readahead(0).build().unwrap();
    rt.register_lazy(heap.ptr, heap.len).unwrap();
    let sums = fill(&heap, |i| i as u64 + 11);
    // First touches went to the kernel, not to farmem's fault thread.
    assert_eq!(rt.stats().faults(), 0);
    assert_eq!(rt.stats().regions, 1);
    let r = rt.evict(heap.ptr, heap.len).unwrap();
    // A quarter of the pages are random: the compressed tier refuses them.
    assert_eq!(r.evicted + r.rejected, PAGES as u64, "{r:?}");
    assert!(r.evicted >= PAGES as u64 / 2, "{r:?}");
    verify(&heap, &sums);
    let s = settled(&rt, |s| s.faults_from_tier == r.evicted);
    assert_eq!(s.faults_from_tier, r.evicted);
    // Armed now: a drop by the program is seen, and the page reads as zeros.
    rt.evict(heap.ptr, heap.len).unwrap();
    // SAFETY: the range is the test's own mapping.
    assert_eq!(unsafe { libc::madvise(heap.ptr.cast(), PAGE, libc::MADV_DONTNEED) }, 0);
    assert!(heap.page(0).iter().all(|&b| b == 0), "a dropped page must not come back");
    assert_eq!(checksum(heap.page(1)), sums[1]);
    rt.unregister(heap.ptr).unwrap();
}

#[test]
fn a_lazy_region_never_armed_unregisters_cleanly() {
    let heap = Heap::new(64 * PAGE);
    let rt = Runtime::builder().build().unwrap();
    rt.register_lazy(heap.ptr, heap.len).unwrap();
    heap.bytes().fill(3);
    rt.unregister(heap.ptr).unwrap();
    assert_eq!(rt.stats().regions, 0);
    assert!(heap.bytes().iter().all(|&b| b == 3));
}

#[test]
fn under_a_limit_a_lazy_region_is_armed_at_once_so_a_fill_reaches_the_fault_thread() {
    const PAGES: usize = 2048;
    let heap = Heap::new(PAGES * PAGE);
    let rt = Runtime::builder().build().unwrap();
    rt.start_policy(farmem_runtime::policy::PolicyConfig { limit: Some(1 << 30), ..Default::default() }).unwrap();
    // The policy publishes its limit as it starts.
    std::thread::sleep(std::time::Duration::from_millis(50));
    rt.register_lazy(heap.ptr, heap.len).unwrap();
    let sums = fill(&heap, |i| i as u64 + 5);
    let s = rt.stats();
    assert!(s.faults_zero_filled > 0, "first touches under a limit must be counted by the fault thread: {s:?}");
    rt.stop_policy();
    verify(&heap, &sums);
    rt.unregister(heap.ptr).unwrap();
}
