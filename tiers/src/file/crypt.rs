//! Optional encryption of stored pages: ChaCha20-Poly1305 with a key drawn
//! from the kernel's random source when the tier is made and never written
//! anywhere, so a spill file is unreadable once the process is gone.
//!
//! The nonce is the record's store sequence number (unique in the process,
//! kept in the record header, so a record can be moved by compaction without
//! re-encryption); the rest of the header is authenticated data, so a record
//! cannot be passed off as another handle's.

use std::io;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};

/// Bytes of the authentication tag appended to each encrypted payload.
pub(crate) const TAG_BYTES: usize = 16;

/// The process's page cipher.
pub(crate) struct Sealer(ChaCha20Poly1305);

impl Sealer {
    /// A cipher with a fresh random key.
    pub(crate) fn random() -> io::Result<Self> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| io::Error::other(format!("getrandom for the spill key: {e}")))?;
        let sealer = Sealer(ChaCha20Poly1305::new(Key::from_slice(&key)));
        key.fill(0);
        Ok(sealer)
    }

    fn nonce(seq: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&seq.to_le_bytes());
        n.into()
    }

    /// Encrypts `buf` in place and returns its tag.
    pub(crate) fn seal(&self, seq: u64, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_BYTES] {
        // The only failure is a payload beyond 256 GiB.
        self.0.encrypt_in_place_detached(&Self::nonce(seq), aad, buf).expect("a page fits ChaCha20-Poly1305").into()
    }

    /// Decrypts `buf` in place if `tag` authenticates it with `aad`.
    pub(crate) fn open(&self, seq: u64, aad: &[u8], buf: &mut [u8], tag: &[u8]) -> bool {
        self.0.decrypt_in_place_detached(&Self::nonce(seq), aad, buf, Tag::from_slice(tag)).is_ok()
    }
}
