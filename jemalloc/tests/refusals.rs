//! `install` in a program whose global allocator is not
//! `farmem_jemalloc::Jemalloc` (this test binary keeps Rust's default): it
//! refuses, since the runtime's own allocations could not be kept out of
//! farmem memory; and a bad configuration names its key.

use farmem_jemalloc::InstallError;

#[test]
fn install_refuses_bad_configuration_and_a_foreign_global_allocator() {
    match farmem_jemalloc::install("limit=lots") {
        Err(InstallError::Config(e)) => assert_eq!(e.key, "limit"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("installed with limit=lots"),
    }
    match farmem_jemalloc::install("limit=64M") {
        Err(InstallError::NotGlobalAllocator) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("installed without farmem_jemalloc::Jemalloc as the global allocator"),
    }
    assert!(farmem_jemalloc::runtime().is_none());
}
