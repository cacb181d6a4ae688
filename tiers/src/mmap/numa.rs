//! Binding an mmap tier's mapping to one NUMA node (`mbind`, `MPOL_BIND`).
//!
//! CXL memory often shows up as a NUMA node without CPUs. Memory from a
//! memfd or a tmpfs file (`/dev/shm`) is allocated when first touched, on the
//! node the mapping's policy names; binding the mapping before the first
//! touch puts every page of the tier on that node. (A `/dev/dax` device is
//! already the node's memory, and the page cache of a file on a disk file
//! system ignores a mapping's policy: binding is harmless there, and does
//! nothing.) The policy of a shared memfd or tmpfs mapping is kept by the
//! file, so the `fallocate` that reserves a file's pages must come after it.

use std::io;
use std::path::Path;

/// `MPOL_BIND` from `<linux/mempolicy.h>`: allocate only on the given nodes.
const MPOL_BIND: libc::c_int = 2;
/// `MPOL_F_ADDR`: `get_mempolicy` reports the policy of an address.
#[cfg(test)]
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;
/// Nodes a mask can name (the kernel's largest `MAX_NUMNODES`).
pub(crate) const MAX_NODES: u32 = 1024;
const MASK_WORDS: usize = MAX_NODES as usize / 64;

/// The sysfs directory of NUMA nodes.
const NODES: &str = "/sys/devices/system/node";

/// Why a node cannot be bound to, for the tier's error message; `None` if it
/// exists and has memory as far as sysfs tells.
pub(crate) fn check_node(node: u32) -> Option<String> {
    if node >= MAX_NODES {
        return Some(format!("NUMA node {node} is beyond the {MAX_NODES} nodes a mask can name"));
    }
    if !Path::new(NODES).exists() {
        return Some(format!("cannot bind to NUMA node {node}: this kernel has no NUMA support ({NODES} is missing); leave numa= out"));
    }
    let list = |name: &str| std::fs::read_to_string(format!("{NODES}/{name}")).map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".into());
    if !Path::new(&format!("{NODES}/node{node}")).exists() {
        return Some(format!(
            "NUMA node {node} does not exist (online nodes: {}); give numa=N with a node that has memory, or leave numa= out",
            list("online")
        ));
    }
    let with_memory = list("has_memory");
    if parse_list(&with_memory).is_some_and(|nodes| !nodes.contains(&node)) {
        return Some(format!("NUMA node {node} has no memory (nodes with memory: {with_memory}); give numa=N with one of those"));
    }
    None
}

/// Parses a sysfs node list such as `0-2,4`.
fn parse_list(s: &str) -> Option<Vec<u32>> {
    let mut nodes = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => nodes.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
            None => nodes.push(part.parse().ok()?),
        }
    }
    Some(nodes)
}

/// Binds `[addr, addr+len)` to `node` with `MPOL_BIND`. Pages already
/// present are left where they are; call it before the first touch.
pub(crate) fn bind(addr: *mut u8, len: usize, node: u32) -> io::Result<()> {
    if node >= MAX_NODES {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut mask = [0 as libc::c_ulong; MASK_WORDS];
    mask[node as usize / 64] |= 1 << (node % 64);
    // SAFETY: mbind only changes the memory policy of the range, which the
    // caller owns (a mapping it just made); the mask holds MAX_NODES bits and
    // maxnode is one more than that, as the kernel's interface counts.
    let r = unsafe { libc::syscall(libc::SYS_mbind, addr, len, MPOL_BIND, mask.as_ptr(), MAX_NODES as libc::c_ulong + 1, 0 as libc::c_uint) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The policy mode of the page at `addr` and the first 64 nodes of its mask.
#[cfg(test)]
pub(crate) fn policy_of(addr: *mut u8) -> io::Result<(libc::c_int, u64)> {
    let mut mode: libc::c_int = -1;
    let mut mask = [0 as libc::c_ulong; MASK_WORDS];
    // SAFETY: get_mempolicy writes one int and a mask of MAX_NODES bits, both
    // ours; with MPOL_F_ADDR it only reads the policy of `addr`.
    let r = unsafe { libc::syscall(libc::SYS_get_mempolicy, &mut mode, mask.as_mut_ptr(), MAX_NODES as libc::c_ulong + 1, addr, MPOL_F_ADDR) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((mode, mask[0]))
}

/// The mode [`policy_of`] reports for a bound range.
#[cfg(test)]
pub(crate) const MPOL_BIND_MODE: libc::c_int = MPOL_BIND;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_parse() {
        assert_eq!(parse_list("0"), Some(vec![0]));
        assert_eq!(parse_list("0-2,4"), Some(vec![0, 1, 2, 4]));
        assert_eq!(parse_list(""), Some(vec![]));
        assert_eq!(parse_list("x"), None);
    }

    #[test]
    fn node_0_is_there_and_others_are_named() {
        assert_eq!(check_node(0), None, "this machine has node 0 with memory");
        let msg = check_node(MAX_NODES - 1).expect("no machine here has 1024 nodes");
        assert!(msg.contains("NUMA node 1023 does not exist") && msg.contains("online nodes: "), "{msg}");
        assert!(check_node(MAX_NODES).unwrap().contains("beyond"));
    }
}
