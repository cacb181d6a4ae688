//! The errors a tier reports to the runtime.

use std::path::PathBuf;

use crate::Handle;

/// Why a tier could not store or load a page.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// The tier is at its size limit; nothing was stored.
    #[error("tier {tier} is full ({limit_bytes} bytes)")]
    Full {
        /// The tier's name.
        tier: &'static str,
        /// The limit it reached.
        limit_bytes: u64,
    },
    /// The page compressed to more than the tier's threshold and its rule is to refuse it.
    #[error("page compresses to {compressed} bytes, above the threshold of {threshold}")]
    Incompressible {
        /// The compressed size.
        compressed: usize,
        /// The largest size the tier accepts.
        threshold: usize,
    },
    /// The handle names nothing this tier holds.
    #[error("handle {0:?} names no stored page")]
    UnknownHandle(Handle),
    /// The stored bytes did not decode to a page.
    #[error("stored page {handle:?} is corrupt: {reason}")]
    Corrupt {
        /// The page that failed.
        handle: Handle,
        /// What the decoder said.
        reason: String,
    },
    /// The operating system refused memory or I/O.
    #[error("{op} failed: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file or device a tier was told to keep its pages in cannot be used.
    #[error("{tier} tier: cannot use {}: {reason}", path.display())]
    BadBacking {
        /// The tier's name.
        tier: &'static str,
        /// The path as the user gave it.
        path: PathBuf,
        /// What is wrong with it, and what would be accepted.
        reason: String,
    },
    /// The spec asks for something this build cannot do yet.
    #[error("not available: {what}")]
    Unsupported {
        /// What, and what to write instead.
        what: &'static str,
    },
    /// A tier was asked for a size it cannot have.
    #[error("{tier} tier: a size of {limit_bytes} bytes is not accepted: give a positive multiple of 4096")]
    BadLimit {
        /// The tier's name.
        tier: &'static str,
        /// The size asked for.
        limit_bytes: u64,
    },
    /// Reading or writing a spill file failed; nothing wrong was returned.
    #[error("{op} of {len} bytes at offset {offset} of {} (handle {handle:?}) failed: {source}", path.display())]
    SpillIo {
        /// What was being done ("reading a page", "writing segment 3").
        op: &'static str,
        /// The spill file (an unlinked file: its directory and how it was made).
        path: PathBuf,
        /// The byte offset in the file.
        offset: u64,
        /// How many bytes.
        len: usize,
        /// The page being loaded, if the I/O was for one.
        handle: Option<Handle>,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A page read back from a spill file failed its checksum or its
    /// authentication tag; its bytes were not returned.
    #[error("page {handle:?} at offset {offset} of {} fails its check: {reason}", path.display())]
    SpillCorrupt {
        /// The spill file.
        path: PathBuf,
        /// The byte offset of the page's record in the file.
        offset: u64,
        /// The page.
        handle: Handle,
        /// What did not match.
        reason: String,
    },
    /// A remote tier's store could not give a page back, or gave bytes that
    /// fail their check; nothing wrong was returned.
    #[error("{op} on {server}{} failed: {reason}", key.as_ref().map(|k| format!(" (key {k})")).unwrap_or_default())]
    Remote {
        /// What was being done ("loading a page").
        op: &'static str,
        /// The store, as `redis://HOST:PORT`.
        server: String,
        /// The page's key there, when the error is about one page.
        key: Option<String>,
        /// What went wrong: the I/O error, the server's reply, or the check that failed.
        reason: String,
    },
    /// A fault was injected for testing (see `FailingTier` in the runtime's tests).
    #[error("injected failure")]
    Injected,
}
