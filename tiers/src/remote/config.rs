//! What a [`RemoteTier`](super::RemoteTier) is set up with.

use std::time::Duration;

use crate::{Codec, RemoteProtocol, RemoteSpec, SpillTier};

/// How a [`RemoteTier`](super::RemoteTier) is set up.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteConfig {
    /// The store, its protocol, host and port, key prefix, size, expiry and
    /// whether pages go out unencrypted: what a spec part says.
    pub spec: RemoteSpec,
    /// The codec of stored pages (T1's). Pages that do not compress go raw.
    pub codec: Codec,
    /// Most pages sent in one round trip. Default 256 (1 MiB before compression).
    pub batch_pages: usize,
    /// Most bytes of records kept in RAM while they wait for the store to
    /// take them; past it, stores are refused (the store is slow), so pages
    /// stay in the nearer tiers. Default 32 MiB.
    pub held_bytes: usize,
    /// How long a connect, a write or a reply may take before the store
    /// counts as down. Default 2 s.
    pub timeout: Duration,
    /// How long the sender waits for a batch to fill before it sends a part
    /// one. Default 2 ms.
    pub linger: Duration,
}

impl RemoteConfig {
    /// The defaults, for a store as a spec part names it.
    pub fn new(spec: RemoteSpec) -> Self {
        RemoteConfig { spec, codec: Codec::Lz4, batch_pages: 256, held_bytes: 32 << 20, timeout: Duration::from_secs(2), linger: Duration::from_millis(2) }
    }

    /// A Redis server on `host:port`, 4 GiB at most, encrypted, keys
    /// expiring after an hour (renewed while the tier lives).
    pub fn redis(host: &str, port: u16) -> Self {
        Self::new(RemoteSpec {
            protocol: RemoteProtocol::Redis,
            host: host.into(),
            port,
            prefix: String::new(),
            size_bytes: crate::spec::DEFAULT_FILE_BYTES,
            ttl_secs: crate::spec::DEFAULT_REMOTE_TTL_SECS,
            plain: false,
        })
    }

    /// The same for a memcached server.
    pub fn memcached(host: &str, port: u16) -> Self {
        let mut c = Self::redis(host, port);
        c.spec.protocol = RemoteProtocol::Memcached;
        c
    }

    /// The config of a `redis://` or `memcached://` spec part; `None` for another kind.
    pub fn from_spill(spill: &SpillTier) -> Option<Self> {
        match spill {
            SpillTier::Remote(r) => Some(Self::new(r.clone())),
            _ => None,
        }
    }

    /// The key expiry in milliseconds.
    pub(super) fn ttl_ms(&self) -> u64 {
        self.spec.ttl_secs * 1000
    }
}
