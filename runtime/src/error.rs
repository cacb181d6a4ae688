//! Errors of the runtime's public API.

use std::io;

use crate::uffd::OpenError;

/// What went wrong in a runtime call, with the address, size or path involved.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// userfaultfd could not be opened or lacks what farmem needs.
    #[error(transparent)]
    Userfaultfd(#[from] OpenError),
    /// A range was not page-aligned.
    #[error("range {addr:#x}+{len:#x} is not page-aligned (pages are 4096 bytes)")]
    NotAligned {
        /// Start of the range.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// The kernel refused to register a range.
    #[error("cannot register {addr:#x}+{len:#x} with userfaultfd: {source} (the range must be private anonymous memory, mapped and writable)")]
    Register {
        /// Start of the range.
        addr: u64,
        /// Its length.
        len: u64,
        /// What the kernel said.
        source: io::Error,
    },
    /// A range overlaps one already registered.
    #[error("range {addr:#x}+{len:#x} overlaps a registered region")]
    Overlap {
        /// Start of the range.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// A range is not inside one registered region.
    #[error("range {addr:#x}+{len:#x} is not inside a registered region")]
    NotRegistered {
        /// Start of the range.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// The runtime was built without any tier.
    #[error("the runtime needs at least one tier")]
    NoTier,
    /// A system call the runtime needs failed.
    #[error("{op} failed: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// The fault handlers have stopped.
    #[error("the fault handlers have stopped")]
    Stopped,
    /// Called in a forked child: the runtime belongs to the parent.
    #[error("this farmem runtime belongs to the parent process; a forked child runs without it (its memory is complete)")]
    Forked,
}
