//! The tier configuration a user writes in one string, the same in a command
//! line flag and in an environment variable, parsed into a [`TierSpec`].
//!
//! The string is a comma-separated list of tiers, nearest first:
//!
//! - `lz4` | `zstd` | `zstd:LEVEL` (LEVEL 1 to 19, `zstd` alone is level 3) |
//!   `FIRST+SECOND` | `raw`: how the in-memory first tier (T1) keeps pages.
//!   `FIRST+SECOND` is two different codecs of those three forms, e.g.
//!   `lz4+zstd:1`: pages are compressed with FIRST, and a page FIRST leaves
//!   above T1's threshold (75% of a page) is compressed again with SECOND
//!   before T1 refuses it (lz4 is fast, but has no entropy coding, so text
//!   of a small alphabet without repeats needs zstd). `raw`: as they are, and
//!   with no second codec. At most one, and only as the first part; without
//!   one T1 uses `lz4+zstd:1`.
//! - `file:DIR[:SIZE]`: a spill file in the directory DIR, SIZE bytes at most
//!   (4G when not given: a spill tier is never unlimited).
//! - `mmap:PATH:SIZE[:FORM][:numa=N]`: CXL or DAX memory mapped from PATH (a
//!   `/dev/dax` device, a file, or a file on tmpfs such as `/dev/shm/farmem`),
//!   SIZE required. FORM is how pages are stored there: `raw` (the default),
//!   `lz4`, `zstd` (level 3) or `zstd:LEVEL` (1 to 19), compressed with T1's
//!   codec. `numa=N` binds the mapping to NUMA node N (`mbind`, MPOL_BIND)
//!   before first touch, for CXL memory that shows up as a CPU-less node.
//!   FORM and `numa=N` may come in either order, each at most once.
//! - `redis://HOST[:PORT][/PREFIX][?OPTIONS]` and `memcached://HOST[:PORT][/PREFIX][?OPTIONS]`:
//!   a network store (Redis or Valkey, memcached) that keeps pages under
//!   keys of this process's own. PORT defaults to 6379 and 11211, HOST is a
//!   name, an IPv4 address or `[IPv6]`. PREFIX starts every key (letters,
//!   digits and `_-.:{}`). OPTIONS, joined by `&`: `size=SIZE` (the most the
//!   tier may hold there, 4G when not given), `ttl=N[s|m|h|d]` (the expiry
//!   of every key, kept fresh while the process runs, so a crashed process's
//!   pages go away on their own: 10s to 30d, 1h when not given) and `plain`
//!   (send pages unencrypted; without it they are sealed with
//!   ChaCha20-Poly1305 under a key only this process has).
//!
//! SIZE is a whole number with an optional unit K, M, G or T (powers of 1024),
//! and must come to a positive multiple of 4096 bytes. Paths must be absolute,
//! and cannot contain `:` or `,` (the separators). Spaces around a part are
//! ignored. For example `lz4,file:/var/tmp/farmem:16G`,
//! `zstd:1,mmap:/mnt/pmem/f:8G:raw,file:/var/tmp:100G` or
//! `lz4,mmap:/dev/shm/farmem:64G:lz4:numa=1`.
//!
//! This only parses: the runtime builds the tiers. [`TierSpec`]'s `Display`
//! prints the canonical form (codec always first, file sizes always given,
//! sizes in the largest exact unit, mmap's `:raw` left out, zstd's level
//! always given, `numa=N` last), which parses back
//! to the same value. A [`SpecError`] is one line naming the part that is wrong
//! and what is accepted there.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::compressed::DEFAULT_FALLBACK;
use crate::{Codec, PAGE_SIZE};

/// A spill file's size when the spec gives none.
pub const DEFAULT_FILE_BYTES: u64 = 4 << 30;

/// The zstd levels a spec accepts.
const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

/// NUMA nodes a spec can name (a node mask's width).
const MAX_NUMA_NODES: u32 = 1024;

/// Every kind of part, for error messages.
const ACCEPTED: &str =
    "lz4, zstd, zstd:LEVEL, FIRST+SECOND (e.g. lz4+zstd:1), raw, file:DIR[:SIZE], mmap:PATH:SIZE[:FORM][:numa=N], redis://HOST[:PORT][/PREFIX][?OPTIONS], memcached://HOST[:PORT][/PREFIX][?OPTIONS]";

/// The remote parts' grammar, for error messages.
const REMOTE_FORM: &str = "redis://HOST[:PORT][/PREFIX][?size=SIZE&ttl=N[s|m|h|d]&plain] (or memcached://...), e.g. redis://10.0.0.7:6379/web1?size=64G";

/// Expiry a remote key gets when the spec gives none, in seconds.
pub const DEFAULT_REMOTE_TTL_SECS: u64 = 3600;

/// The expiries a spec accepts, in seconds: long enough for the tier to
/// keep them fresh, short enough for memcached (which reads more than 30
/// days as a date).
const REMOTE_TTL_SECS: std::ops::RangeInclusive<u64> = 10..=30 * 86400;

/// The T1 codec part's grammar, for error messages.
const CODECS: &str = "lz4, zstd, zstd:LEVEL (LEVEL 1 to 19), FIRST+SECOND of two different of those (e.g. lz4+zstd:1) and raw";

/// The mmap part's grammar, for error messages.
const MMAP_FORM: &str = "mmap:PATH:SIZE[:FORM][:numa=N], FORM raw, lz4, zstd or zstd:LEVEL, e.g. mmap:/dev/dax0.0:64G:lz4";

/// How the in-memory first tier keeps pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstTier {
    /// Compressed (T1, `CompressedTier`): `FIRST` or `FIRST+SECOND` in a spec.
    Compressed {
        /// The codec every page is compressed with first.
        codec: Codec,
        /// The codec a page `codec` leaves above T1's threshold is
        /// compressed with next (never equal to `codec`).
        fallback: Option<Codec>,
    },
    /// As they are (`RawTier`): no compression.
    Raw,
}

impl FirstTier {
    /// The codec a spill tier compresses with: T1's first, or lz4 after raw.
    pub fn codec(&self) -> Codec {
        match self {
            FirstTier::Compressed { codec, .. } => *codec,
            FirstTier::Raw => Codec::Lz4,
        }
    }

    /// T1 with one codec and no fallback.
    pub fn compressed(codec: Codec) -> Self {
        FirstTier::Compressed { codec, fallback: None }
    }
}

impl Default for FirstTier {
    /// `lz4+zstd:1`: lz4's speed on the pages lz4 compresses, zstd for the
    /// ones only entropy coding compresses.
    fn default() -> Self {
        FirstTier::Compressed { codec: Codec::Lz4, fallback: Some(DEFAULT_FALLBACK) }
    }
}

impl fmt::Display for FirstTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirstTier::Compressed { codec, fallback: None } => codec.fmt(f),
            FirstTier::Compressed { codec, fallback: Some(second) } => write!(f, "{codec}+{second}"),
            FirstTier::Raw => f.write_str("raw"),
        }
    }
}

/// How an mmap tier stores pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MmapForm {
    /// 4096 bytes a page; fault-back is a memcpy.
    #[default]
    Raw,
    /// lz4-compressed; fault-back is a decode from memory.
    Lz4,
    /// zstd-compressed at a level (1 to 19 in a spec): denser, slower to decode.
    Zstd {
        /// The compression level.
        level: i32,
    },
}

impl fmt::Display for MmapForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MmapForm::Raw => f.write_str("raw"),
            MmapForm::Lz4 => f.write_str("lz4"),
            MmapForm::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

/// The wire protocol of a remote tier's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteProtocol {
    /// Redis's RESP: Redis, Valkey, KeyDB and what else speaks it.
    Redis,
    /// memcached's text protocol.
    Memcached,
}

impl RemoteProtocol {
    /// The scheme a spec writes it with (`redis`, `memcached`).
    pub fn scheme(self) -> &'static str {
        match self {
            RemoteProtocol::Redis => "redis",
            RemoteProtocol::Memcached => "memcached",
        }
    }

    /// The server's port when the spec gives none.
    pub fn default_port(self) -> u16 {
        match self {
            RemoteProtocol::Redis => 6379,
            RemoteProtocol::Memcached => 11211,
        }
    }
}

/// A network store the spec names (`redis://...`, `memcached://...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSpec {
    /// How to talk to it.
    pub protocol: RemoteProtocol,
    /// Its host name or address (an IPv6 address without brackets).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// What every key starts with, before the process's own random part.
    pub prefix: String,
    /// The most the tier may keep there, in bytes.
    pub size_bytes: u64,
    /// The expiry of every key, in seconds.
    pub ttl_secs: u64,
    /// Whether pages go out unencrypted.
    pub plain: bool,
}

impl RemoteSpec {
    /// The server as messages name it: `redis://HOST:PORT`.
    pub fn server(&self) -> String {
        if self.host.contains(':') {
            format!("{}://[{}]:{}", self.protocol.scheme(), self.host, self.port)
        } else {
            format!("{}://{}:{}", self.protocol.scheme(), self.host, self.port)
        }
    }
}

impl fmt::Display for RemoteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.server())?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        write!(f, "?size={}&ttl={}s", Size(self.size_bytes), self.ttl_secs)?;
        if self.plain {
            f.write_str("&plain")?;
        }
        Ok(())
    }
}

/// A tier after T1, in the order the spec lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpillTier {
    /// A spill file in a directory.
    File {
        /// The directory the file is made in (absolute).
        dir: PathBuf,
        /// The most the file may hold, in bytes.
        size_bytes: u64,
    },
    /// Byte-addressable memory mapped from a device or file.
    Mmap {
        /// The device or file (absolute).
        path: PathBuf,
        /// The most the tier may hold, in bytes.
        size_bytes: u64,
        /// How pages are stored there.
        form: MmapForm,
        /// The NUMA node the mapping is bound to, if any.
        numa: Option<u32>,
    },
    /// A network store (Redis, Valkey, memcached).
    Remote(RemoteSpec),
}

impl fmt::Display for SpillTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpillTier::File { dir, size_bytes } => write!(f, "file:{}:{}", dir.display(), Size(*size_bytes)),
            SpillTier::Mmap { path, size_bytes, form, numa } => {
                write!(f, "mmap:{}:{}", path.display(), Size(*size_bytes))?;
                if *form != MmapForm::Raw {
                    write!(f, ":{form}")?;
                }
                match numa {
                    Some(node) => write!(f, ":numa={node}"),
                    None => Ok(()),
                }
            }
            SpillTier::Remote(r) => r.fmt(f),
        }
    }
}

/// The tiers a user asked for, nearest first.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TierSpec {
    /// How T1 keeps pages (`lz4+zstd:1` unless the spec names a codec).
    pub first: FirstTier,
    /// The tiers after T1, in order.
    pub spill: Vec<SpillTier>,
}

impl fmt::Display for TierSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.first.fmt(f)?;
        for t in &self.spill {
            write!(f, ",{t}")?;
        }
        Ok(())
    }
}

/// A byte count printed in the largest unit that divides it exactly.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [('T', 40), ('G', 30), ('M', 20), ('K', 10)] {
            if self.0 != 0 && self.0.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Why a tier spec was refused: which part, as written, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tier spec part {part} `{text}` : {problem}")]
pub struct SpecError {
    /// The part's position in the list, from 1.
    pub part: usize,
    /// The part as it was written (spaces around it removed).
    pub text: String,
    /// What is wrong with it.
    pub problem: SpecProblem,
}

/// What is wrong with one part of a tier spec; each message says what is accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecProblem {
    /// The part is empty: an empty spec, two commas in a row, or a comma at the end.
    #[error("the part is empty: give a comma-separated list of {ACCEPTED}")]
    Empty,
    /// The part names no kind of tier.
    #[error("unknown tier: accepted are {ACCEPTED}")]
    UnknownKind,
    /// A codec part that does not parse, or a zstd level out of range.
    #[error("accepted codecs are {CODECS}")]
    BadCodec,
    /// What follows `+` in a codec part is not one codec (empty, raw, a
    /// third codec, a zstd level out of range).
    #[error("after `+` comes the codec for pages the first one leaves above T1's threshold: lz4, zstd or zstd:LEVEL (LEVEL 1 to 19), e.g. lz4+zstd:1")]
    BadFallback,
    /// `raw+...`: raw pages are not compressed, so there is nothing to fall back from.
    #[error("raw keeps pages as they are and takes no second codec: give raw alone, or two codecs such as lz4+zstd:1")]
    RawFallback,
    /// The second codec is the first one again.
    #[error("the second codec is the first one again: give a different one, e.g. lz4+zstd:1, or the codec alone")]
    SameFallback,
    /// A codec after another part: it must be the first part, and only one may be given.
    #[error("the T1 codec ({CODECS}) may be given once, as the first part")]
    CodecNotFirst,
    /// The path is missing.
    #[error("the {0} is missing: {1}")]
    MissingPath(&'static str, &'static str),
    /// The path is not absolute.
    #[error("the {0} must be an absolute path")]
    RelativePath(&'static str),
    /// mmap without a size.
    #[error("mmap needs a size: {MMAP_FORM}")]
    MissingSize,
    /// The size does not parse (or overflows 64 bits).
    #[error("size `{0}` is not understood: accepted is a whole number with an optional unit K, M, G or T (powers of 1024), e.g. 16G, 512M, 4096")]
    BadSize(String),
    /// The size is 0 or not a multiple of 4096.
    #[error("size `{given}` is {bytes} bytes: it must be a positive multiple of 4096")]
    SizeNotPages {
        /// The size as written.
        given: String,
        /// What it came to.
        bytes: u64,
    },
    /// A field after mmap's size that is neither a storage form nor `numa=N`.
    #[error(
        "`{0}` is not a way to store pages in mmap nor an mmap option: accepted are raw, lz4, zstd, zstd:LEVEL (LEVEL 1 to 19) and numa=N, as in {MMAP_FORM}"
    )]
    BadMmapForm(String),
    /// A zstd level for mmap that is not a number from 1 to 19.
    #[error("zstd level `{0}` is not accepted: give zstd:LEVEL with LEVEL 1 to 19, or zstd alone for level 3")]
    BadMmapLevel(String),
    /// `numa=` with something other than a node number.
    #[error("`numa={0}` does not name a NUMA node: give numa=N with N a node number from 0 to 1023, as listed in /sys/devices/system/node/online")]
    BadNumaNode(String),
    /// The storage form or the NUMA node given twice.
    #[error("the {0} is given twice: give it at most once, as in {MMAP_FORM}")]
    Repeated(&'static str),
    /// More `:` fields than the kind has.
    #[error("too many `:` fields: accepted is {0} (paths cannot contain `:` or `,`)")]
    TooManyFields(&'static str),
    /// A remote part that does not parse: says which piece, and the grammar.
    #[error("{0}: accepted is {REMOTE_FORM}")]
    BadRemote(String),
}

impl FromStr for TierSpec {
    type Err = SpecError;

    /// Parses a spec such as `zstd:1,mmap:/mnt/pmem/f:8G:raw,file:/var/tmp:100G`.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut spec = TierSpec::default();
        for (i, raw) in s.split(',').enumerate() {
            let text = raw.trim();
            let err = |problem| SpecError { part: i + 1, text: text.to_owned(), problem };
            let (kind, rest) = match text.split_once(':') {
                Some((k, r)) => (k, Some(r)),
                None => (text, None),
            };
            // `lz4+zstd:1` is a codec part: its kind is what comes before `+`.
            let codec_kind = kind.split('+').next().unwrap_or(kind);
            match kind {
                "" if rest.is_none() => return Err(err(SpecProblem::Empty)),
                "file" => spec.spill.push(parse_file(rest.unwrap_or("")).map_err(err)?),
                "mmap" => spec.spill.push(parse_mmap(rest.unwrap_or("")).map_err(err)?),
                "redis" => spec.spill.push(parse_remote(RemoteProtocol::Redis, rest.unwrap_or("")).map_err(err)?),
                "memcached" => spec.spill.push(parse_remote(RemoteProtocol::Memcached, rest.unwrap_or("")).map_err(err)?),
                _ if matches!(codec_kind, "lz4" | "zstd" | "raw") => {
                    if i != 0 {
                        return Err(err(SpecProblem::CodecNotFirst));
                    }
                    spec.first = parse_first(text).map_err(err)?;
                }
                _ => return Err(err(SpecProblem::UnknownKind)),
            }
        }
        Ok(spec)
    }
}

/// Parses T1's part: `raw`, `FIRST` or `FIRST+SECOND`.
fn parse_first(text: &str) -> Result<FirstTier, SpecProblem> {
    let (first, second) = match text.split_once('+') {
        Some((a, b)) => (a, Some(b)),
        None => (text, None),
    };
    if first == "raw" {
        return match second {
            None => Ok(FirstTier::Raw),
            Some(_) => Err(SpecProblem::RawFallback),
        };
    }
    let codec = parse_codec(first).ok_or(SpecProblem::BadCodec)?;
    let fallback = match second {
        None => None,
        // A third `+` leaves `zstd+zstd:9` here, which is no codec.
        Some(s) => match parse_codec(s).ok_or(SpecProblem::BadFallback)? {
            same if same == codec => return Err(SpecProblem::SameFallback),
            other => Some(other),
        },
    };
    Ok(FirstTier::Compressed { codec, fallback })
}

/// One codec, `lz4`, `zstd` or `zstd:LEVEL` (LEVEL 1 to 19).
fn parse_codec(text: &str) -> Option<Codec> {
    // Codec's own parser knows the names (and trims spaces, which a spec
    // does not allow inside a part); the spec narrows zstd to the usual levels.
    match text.parse::<Codec>() {
        Ok(Codec::Zstd { level }) if !ZSTD_LEVELS.contains(&level) => None,
        Ok(codec) if text.trim() == text => Some(codec),
        _ => None,
    }
}

fn parse_file(rest: &str) -> Result<SpillTier, SpecProblem> {
    let mut fields = rest.split(':');
    let dir = parse_path(fields.next().unwrap_or(""), "directory", "file:DIR[:SIZE], e.g. file:/var/tmp:16G")?;
    let size_bytes = match fields.next() {
        Some(size) => parse_size(size)?,
        None => DEFAULT_FILE_BYTES,
    };
    if fields.next().is_some() {
        return Err(SpecProblem::TooManyFields("file:DIR[:SIZE]"));
    }
    Ok(SpillTier::File { dir, size_bytes })
}

fn parse_mmap(rest: &str) -> Result<SpillTier, SpecProblem> {
    let mut fields = rest.split(':').peekable();
    let path = parse_path(fields.next().unwrap_or(""), "path", "mmap:PATH:SIZE[:FORM][:numa=N], e.g. mmap:/dev/dax0.0:64G")?;
    let size_bytes = parse_size(fields.next().ok_or(SpecProblem::MissingSize)?)?;
    let (mut form, mut numa) = (None, None);
    while let Some(field) = fields.next() {
        if let Some(node) = field.strip_prefix("numa=") {
            if numa.is_some() {
                return Err(SpecProblem::Repeated("NUMA node (numa=N)"));
            }
            // Digits only: u32::from_str would take a `+`.
            let n = node.parse::<u32>().ok().filter(|n| node.bytes().all(|b| b.is_ascii_digit()) && *n < MAX_NUMA_NODES);
            numa = Some(n.ok_or_else(|| SpecProblem::BadNumaNode(node.to_owned()))?);
            continue;
        }
        let f = match field {
            "raw" => MmapForm::Raw,
            "lz4" => MmapForm::Lz4,
            "zstd" => {
                // `zstd:LEVEL` as for T1: a field after zstd that looks like a number is its level.
                let level = match fields.next_if(|l| l.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+')) {
                    Some(l) => l
                        .parse::<i32>()
                        .ok()
                        .filter(|v| ZSTD_LEVELS.contains(v) && !l.starts_with('+'))
                        .ok_or_else(|| SpecProblem::BadMmapLevel(l.to_owned()))?,
                    None => 3,
                };
                MmapForm::Zstd { level }
            }
            other => return Err(SpecProblem::BadMmapForm(other.to_owned())),
        };
        if form.replace(f).is_some() {
            return Err(SpecProblem::Repeated("storage form (raw, lz4, zstd)"));
        }
    }
    Ok(SpillTier::Mmap { path, size_bytes, form: form.unwrap_or_default(), numa })
}

/// Parses what follows `redis:` or `memcached:`: `//HOST[:PORT][/PREFIX][?OPTIONS]`.
fn parse_remote(protocol: RemoteProtocol, rest: &str) -> Result<SpillTier, SpecProblem> {
    let bad = |what: String| SpecProblem::BadRemote(what);
    let rest = rest.strip_prefix("//").ok_or_else(|| bad(format!("`{}:` is followed by `//`", protocol.scheme())))?;
    let (rest, options) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad(format!("`{authority}` opens `[` without closing it")))?;
        (host, after.strip_prefix(':').map(Some).unwrap_or_else(|| if after.is_empty() { None } else { Some(after) }))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    if !host_ok(host) || (host.contains(':') && !authority.starts_with('[')) {
        return Err(bad(format!("`{host}` is not a host name or address (an IPv6 address goes in brackets, [::1])")));
    }
    let port = match port {
        None => protocol.default_port(),
        Some(p) => p.parse::<u16>().ok().filter(|n| *n > 0 && p.bytes().all(|b| b.is_ascii_digit())).ok_or_else(|| bad(format!("port `{p}` is not a number from 1 to 65535")))?,
    };
    // memcached takes keys of printable ASCII without spaces, 250 bytes at
    // most; the tier adds 36 of its own.
    if prefix.len() > 200 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:{}".contains(&b)) {
        return Err(bad(format!("prefix `{prefix}` may hold only letters, digits and _-.:{{}}, 200 bytes at most")));
    }
    let mut remote = RemoteSpec { protocol, host: host.to_owned(), port, prefix: prefix.to_owned(), size_bytes: DEFAULT_FILE_BYTES, ttl_secs: DEFAULT_REMOTE_TTL_SECS, plain: false };
    let mut seen = Vec::new();
    for opt in options.split('&').filter(|o| !o.is_empty()) {
        let (name, value) = opt.split_once('=').unwrap_or((opt, ""));
        if seen.contains(&name) {
            return Err(bad(format!("option `{name}` is given twice")));
        }
        seen.push(name);
        match (name, value) {
            ("size", v) => remote.size_bytes = parse_size(v)?,
            ("ttl", v) => remote.ttl_secs = parse_ttl(v).ok_or_else(|| bad(format!("ttl `{v}` is not a whole number of s, m, h or d from 10s to 30d")))?,
            ("plain", "") => remote.plain = true,
            _ => return Err(bad(format!("option `{opt}` is not one of size=SIZE, ttl=N[s|m|h|d], plain"))),
        }
    }
    Ok(SpillTier::Remote(remote))
}

/// Parses `90`, `90s`, `15m`, `2h`, `7d` into seconds within the accepted range.
fn parse_ttl(v: &str) -> Option<u64> {
    let (digits, unit) = match v.as_bytes().last()? {
        b's' => (&v[..v.len() - 1], 1),
        b'm' => (&v[..v.len() - 1], 60),
        b'h' => (&v[..v.len() - 1], 3600),
        b'd' => (&v[..v.len() - 1], 86400),
        _ => (v, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit).filter(|s| REMOTE_TTL_SECS.contains(s))
}

fn parse_path(p: &str, what: &'static str, form: &'static str) -> Result<PathBuf, SpecProblem> {
    if p.is_empty() {
        return Err(SpecProblem::MissingPath(what, form));
    }
    if !p.starts_with('/') {
        return Err(SpecProblem::RelativePath(what));
    }
    Ok(PathBuf::from(p))
}

/// Parses `16G`, `512M`, `1T`, `4096K`, `65536`: binary units, upper or lower case.
fn parse_size(given: &str) -> Result<u64, SpecProblem> {
    let bad = || SpecProblem::BadSize(given.to_owned());
    let (digits, shift) = match given.as_bytes().last() {
        Some(b'K' | b'k') => (&given[..given.len() - 1], 10),
        Some(b'M' | b'm') => (&given[..given.len() - 1], 20),
        Some(b'G' | b'g') => (&given[..given.len() - 1], 30),
        Some(b'T' | b't') => (&given[..given.len() - 1], 40),
        _ => (given, 0),
    };
    // u64::from_str takes a leading `+`; a size is digits only.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if bytes == 0 || !bytes.is_multiple_of(PAGE_SIZE as u64) {
        return Err(SpecProblem::SizeNotPages { given: given.to_owned(), bytes });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: u64 = 1 << 30;

    fn parse(s: &str) -> TierSpec {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn problem(s: &str) -> (usize, SpecProblem, String) {
        let e = s.parse::<TierSpec>().expect_err(s);
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        (e.part, e.problem, msg)
    }

    #[test]
    fn examples_parse() {
        let lz4 = FirstTier::compressed(Codec::Lz4);
        assert_eq!(parse("lz4"), TierSpec { first: lz4, spill: vec![] });
        assert_eq!(parse("zstd:3"), TierSpec { first: FirstTier::compressed(Codec::Zstd { level: 3 }), spill: vec![] });
        assert_eq!(parse("zstd"), parse("zstd:3"));
        assert_eq!(parse("raw").first, FirstTier::Raw);
        assert_eq!(
            parse("lz4,file:/var/tmp/farmem:16G"),
            TierSpec { first: lz4, spill: vec![SpillTier::File { dir: "/var/tmp/farmem".into(), size_bytes: 16 * G }] }
        );
        assert_eq!(
            parse("lz4,mmap:/dev/dax0.0:64G"),
            TierSpec {
                first: lz4,
                spill: vec![SpillTier::Mmap { path: "/dev/dax0.0".into(), size_bytes: 64 * G, form: MmapForm::Raw, numa: None }]
            }
        );
        assert_eq!(
            parse("zstd:1,mmap:/mnt/pmem/f:8G:raw,file:/var/tmp:100G"),
            TierSpec {
                first: FirstTier::compressed(Codec::Zstd { level: 1 }),
                spill: vec![
                    SpillTier::Mmap { path: "/mnt/pmem/f".into(), size_bytes: 8 * G, form: MmapForm::Raw, numa: None },
                    SpillTier::File { dir: "/var/tmp".into(), size_bytes: 100 * G },
                ]
            }
        );
    }

    #[test]
    fn a_second_codec_for_what_the_first_leaves() {
        let first = |s: &str| parse(s).first;
        let zstd = |level| Codec::Zstd { level };
        assert_eq!(first("lz4+zstd:1"), FirstTier::Compressed { codec: Codec::Lz4, fallback: Some(zstd(1)) });
        assert_eq!(first("lz4+zstd"), FirstTier::Compressed { codec: Codec::Lz4, fallback: Some(zstd(3)) });
        assert_eq!(first("zstd:1+zstd:19"), FirstTier::Compressed { codec: zstd(1), fallback: Some(zstd(19)) });
        assert_eq!(first("zstd+lz4"), FirstTier::Compressed { codec: zstd(3), fallback: Some(Codec::Lz4) });
        // Canonical: zstd's level always given; the second codec after the first.
        assert_eq!(parse("lz4+zstd").to_string(), "lz4+zstd:3");
        assert_eq!(parse(" lz4+zstd:1 , file:/a:1G").to_string(), "lz4+zstd:1,file:/a:1G");
        assert_eq!(parse("lz4+zstd:19,mmap:/d:1G:zstd").to_string(), "lz4+zstd:19,mmap:/d:1G:zstd:3");
        // The default is lz4 then zstd level 1, and prints as a spec.
        assert_eq!(FirstTier::default(), first("lz4+zstd:1"));
        assert_eq!(TierSpec::default().to_string(), "lz4+zstd:1");
        assert_eq!(parse("file:/a").first, FirstTier::default());
    }

    #[test]
    fn mmap_forms_and_numa() {
        let mmap = |s: &str| match parse(s).spill.pop() {
            Some(SpillTier::Mmap { form, numa, .. }) => (form, numa),
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(mmap("lz4,mmap:/dev/dax0.0:64G:lz4"), (MmapForm::Lz4, None));
        assert_eq!(mmap("mmap:/d:1G:zstd"), (MmapForm::Zstd { level: 3 }, None));
        assert_eq!(mmap("mmap:/d:1G:zstd:19"), (MmapForm::Zstd { level: 19 }, None));
        assert_eq!(mmap("mmap:/d:1G:numa=0"), (MmapForm::Raw, Some(0)));
        assert_eq!(mmap("mmap:/dev/shm/f:64G:lz4:numa=1"), (MmapForm::Lz4, Some(1)));
        assert_eq!(mmap("mmap:/d:1G:numa=1023:zstd:1"), (MmapForm::Zstd { level: 1 }, Some(1023)));
        assert_eq!(mmap("mmap:/d:1G:raw:numa=2"), (MmapForm::Raw, Some(2)));
        // Canonical: the form (zstd with its level), then numa; raw left out.
        assert_eq!(parse("mmap:/d:1G:numa=1:zstd").to_string(), "lz4+zstd:1,mmap:/d:1G:zstd:3:numa=1");
        assert_eq!(parse("zstd:1,mmap:/d:1G:raw:numa=0").to_string(), "zstd:1,mmap:/d:1G:numa=0");
        assert_eq!(parse("mmap:/d:1G:lz4,file:/a").to_string(), "lz4+zstd:1,mmap:/d:1G:lz4,file:/a:4G");
    }

    #[test]
    fn defaults_units_and_canonical_form() {
        // No codec: T1 is lz4+zstd:1, and the spill tiers may come first.
        assert_eq!(
            parse("file:/var/tmp"),
            TierSpec { first: FirstTier::default(), spill: vec![SpillTier::File { dir: "/var/tmp".into(), size_bytes: 4 * G }] }
        );
        assert_eq!(parse("file:/var/tmp").to_string(), "lz4+zstd:1,file:/var/tmp:4G");
        assert_eq!(parse("mmap:/dev/dax0.0:1T:lz4").to_string(), "lz4+zstd:1,mmap:/dev/dax0.0:1T:lz4");
        assert_eq!(parse("lz4,file:/var/tmp").to_string(), "lz4,file:/var/tmp:4G");
        assert_eq!(parse("zstd:1,mmap:/mnt/pmem/f:8G:raw,file:/var/tmp:100G").to_string(), "zstd:1,mmap:/mnt/pmem/f:8G,file:/var/tmp:100G");
        assert_eq!(parse(" zstd:19 , file:/a:512M ").to_string(), "zstd:19,file:/a:512M");
        for (size, bytes) in [("4096K", 4096u64 << 10), ("512m", 512 << 20), ("1T", 1 << 40), ("8192", 8192), ("4k", 4096), ("12K", 12288)] {
            match &parse(&format!("file:/d:{size}")).spill[0] {
                SpillTier::File { size_bytes, .. } => assert_eq!(*size_bytes, bytes, "{size}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(Size(12288).to_string(), "12K");
        assert_eq!(Size(4096 * 3 + (1 << 30)).to_string(), "1048588K");
        assert_eq!(Size(4096).to_string(), "4K");
        assert_eq!(Size(3 << 40).to_string(), "3T");
    }

    #[test]
    fn remote_stores_their_defaults_and_options() {
        let remote = |s: &str| match parse(s).spill.pop() {
            Some(SpillTier::Remote(r)) => r,
            other => panic!("{s}: {other:?}"),
        };
        let r = remote("lz4,file:/var/tmp:16G,redis://cache-host:6379");
        assert_eq!(
            r,
            RemoteSpec { protocol: RemoteProtocol::Redis, host: "cache-host".into(), port: 6379, prefix: String::new(), size_bytes: 4 * G, ttl_secs: 3600, plain: false }
        );
        assert_eq!(remote("redis://10.0.0.7").port, 6379);
        assert_eq!(remote("memcached://10.0.0.7").port, 11211);
        let r = remote("redis://[::1]:7000/web1:{a}?size=64G&ttl=2h&plain");
        assert_eq!((r.host.as_str(), r.port, r.prefix.as_str(), r.size_bytes, r.ttl_secs, r.plain), ("::1", 7000, "web1:{a}", 64 * G, 7200, true));
        assert_eq!(r.server(), "redis://[::1]:7000");
        assert_eq!(remote("memcached://m/p?ttl=30d").ttl_secs, 30 * 86400);
        assert_eq!(remote("redis://h?ttl=90").ttl_secs, 90);
        assert_eq!(parse("lz4,redis://h").to_string(), "lz4,redis://h:6379?size=4G&ttl=3600s");
        assert_eq!(parse("lz4,memcached://h:1/x?plain&size=1G").to_string(), "lz4,memcached://h:1/x?size=1G&ttl=3600s&plain");
        for bad in [
            "redis:h:6379",
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h:+1",
            "redis://::1",
            "redis://[::1",
            "redis://h/a b",
            "redis://h?ttl=5s",
            "redis://h?ttl=31d",
            "redis://h?ttl=1w",
            "redis://h?size=1G&size=2G",
            "redis://h?tls",
            "redis://h?plain=no",
        ] {
            let (part, p, msg) = problem(bad);
            assert_eq!(part, 1, "{bad}");
            assert!(matches!(p, SpecProblem::BadRemote(_)), "{bad}: {p:?}");
            assert!(msg.contains("redis://HOST[:PORT]"), "{bad}: {msg}");
        }
        assert!(matches!(problem("redis://h?size=12").1, SpecProblem::SizeNotPages { .. }));
    }

    #[test]
    fn the_message_names_the_part_and_what_is_accepted() {
        let (part, p, msg) = problem("lz4,file:var/tmp");
        assert_eq!((part, p), (2, SpecProblem::RelativePath("directory")));
        assert_eq!(msg, "tier spec part 2 `file:var/tmp` : the directory must be an absolute path");
    }

    #[test]
    fn every_error() {
        use SpecProblem::*;
        let cases: &[(&str, usize, SpecProblem, &str)] = &[
            ("", 1, Empty, "comma-separated"),
            ("lz4,", 2, Empty, "file:DIR[:SIZE]"),
            ("lz4,,file:/a", 2, Empty, "mmap:PATH:SIZE"),
            ("swap", 1, UnknownKind, "accepted are lz4, zstd"),
            ("+zstd", 1, UnknownKind, "FIRST+SECOND (e.g. lz4+zstd:1)"),
            ("file+zstd:/a", 1, UnknownKind, "file:DIR[:SIZE]"),
            ("lz4,disk:/a:1G", 2, UnknownKind, "file:DIR[:SIZE]"),
            (":1G", 1, UnknownKind, "accepted"),
            ("lz4:1", 1, BadCodec, "zstd:LEVEL (LEVEL 1 to 19)"),
            ("zstd:0", 1, BadCodec, "1 to 19"),
            ("zstd:20", 1, BadCodec, "1 to 19"),
            ("zstd:-5", 1, BadCodec, "1 to 19"),
            ("zstd:x", 1, BadCodec, "1 to 19"),
            ("zstd:", 1, BadCodec, "1 to 19"),
            ("raw:1", 1, BadCodec, "raw"),
            ("lz5+zstd", 1, UnknownKind, "FIRST+SECOND"),
            ("lz4:1+zstd", 1, BadCodec, "FIRST+SECOND"),
            ("zstd:99+lz4", 1, BadCodec, "1 to 19"),
            ("lz4 +zstd", 1, UnknownKind, "lz4+zstd:1"),
            ("lz4+", 1, BadFallback, "after `+` comes the codec"),
            ("lz4+zstd:99", 1, BadFallback, "LEVEL 1 to 19"),
            ("lz4+zstd:0", 1, BadFallback, "1 to 19"),
            ("lz4+raw", 1, BadFallback, "lz4, zstd or zstd:LEVEL"),
            ("lz4+gzip", 1, BadFallback, "e.g. lz4+zstd:1"),
            ("lz4+zstd+zstd:9", 1, BadFallback, "lz4+zstd:1"),
            ("lz4+ zstd", 1, BadFallback, "after `+`"),
            ("raw+zstd", 1, RawFallback, "takes no second codec"),
            ("raw+", 1, RawFallback, "raw alone"),
            ("lz4+lz4", 1, SameFallback, "the first one again"),
            ("zstd+zstd:3", 1, SameFallback, "a different one"),
            ("lz4,zstd", 2, CodecNotFirst, "once, as the first part"),
            ("file:/a,lz4+zstd:1", 2, CodecNotFirst, "FIRST+SECOND"),
            ("file:/a,lz4", 2, CodecNotFirst, "first part"),
            ("lz4,file:/a,raw", 3, CodecNotFirst, "first part"),
            ("file", 1, MissingPath("directory", "file:DIR[:SIZE], e.g. file:/var/tmp:16G"), "file:DIR[:SIZE]"),
            ("file:", 1, MissingPath("directory", "file:DIR[:SIZE], e.g. file:/var/tmp:16G"), "missing"),
            ("file::4G", 1, MissingPath("directory", "file:DIR[:SIZE], e.g. file:/var/tmp:16G"), "missing"),
            ("mmap", 1, MissingPath("path", "mmap:PATH:SIZE[:FORM][:numa=N], e.g. mmap:/dev/dax0.0:64G"), "mmap:PATH:SIZE"),
            ("file:var/tmp", 1, RelativePath("directory"), "absolute"),
            ("mmap:dev/dax0.0:1G", 1, RelativePath("path"), "absolute"),
            ("mmap:~/f:1G", 1, RelativePath("path"), "absolute"),
            ("mmap:/dev/dax0.0", 1, MissingSize, "mmap needs a size"),
            ("file:/a:", 1, BadSize("".into()), "16G, 512M"),
            ("file:/a:16GB", 1, BadSize("16GB".into()), "K, M, G or T"),
            ("file:/a:G", 1, BadSize("G".into()), "whole number"),
            ("file:/a:+4096", 1, BadSize("+4096".into()), "whole number"),
            ("file:/a:1.5G", 1, BadSize("1.5G".into()), "whole number"),
            ("file:/a:99999999999T", 1, BadSize("99999999999T".into()), "not understood"),
            ("mmap:/d:-1G", 1, BadSize("-1G".into()), "not understood"),
            ("file:/a:0", 1, SizeNotPages { given: "0".into(), bytes: 0 }, "positive multiple of 4096"),
            ("file:/a:0G", 1, SizeNotPages { given: "0G".into(), bytes: 0 }, "positive multiple of 4096"),
            ("file:/a:1000", 1, SizeNotPages { given: "1000".into(), bytes: 1000 }, "1000 bytes"),
            ("mmap:/d:1K", 1, SizeNotPages { given: "1K".into(), bytes: 1024 }, "multiple of 4096"),
            ("mmap:/d:1G:gzip", 1, BadMmapForm("gzip".into()), "accepted are raw, lz4, zstd, zstd:LEVEL (LEVEL 1 to 19) and numa=N"),
            ("mmap:/d:1G:", 1, BadMmapForm("".into()), "raw, lz4, zstd"),
            ("mmap:/d:1G:raw:x", 1, BadMmapForm("x".into()), "mmap:PATH:SIZE[:FORM][:numa=N]"),
            ("mmap:/d:1G:zstd:3:4", 1, BadMmapForm("4".into()), "numa=N"),
            ("mmap:/d:1G:nodes=1", 1, BadMmapForm("nodes=1".into()), "numa=N"),
            ("mmap:/d:1G:zstd:0", 1, BadMmapLevel("0".into()), "LEVEL 1 to 19"),
            ("mmap:/d:1G:zstd:20", 1, BadMmapLevel("20".into()), "1 to 19"),
            ("mmap:/d:1G:zstd:-1", 1, BadMmapLevel("-1".into()), "1 to 19"),
            ("mmap:/d:1G:zstd:+3", 1, BadMmapLevel("+3".into()), "zstd alone for level 3"),
            ("mmap:/d:1G:zstd:3x", 1, BadMmapLevel("3x".into()), "1 to 19"),
            ("mmap:/d:1G:raw:lz4", 1, Repeated("storage form (raw, lz4, zstd)"), "given twice"),
            ("mmap:/d:1G:zstd:lz4", 1, Repeated("storage form (raw, lz4, zstd)"), "storage form"),
            ("mmap:/d:1G:numa=0:lz4:numa=1", 1, Repeated("NUMA node (numa=N)"), "NUMA node (numa=N) is given twice"),
            ("mmap:/d:1G:numa=x", 1, BadNumaNode("x".into()), "0 to 1023"),
            ("mmap:/d:1G:numa=", 1, BadNumaNode("".into()), "`numa=` does not name a NUMA node"),
            ("mmap:/d:1G:numa=1024", 1, BadNumaNode("1024".into()), "/sys/devices/system/node/online"),
            ("mmap:/d:1G:numa=+1", 1, BadNumaNode("+1".into()), "node number"),
            ("mmap:/d:1G:lz4:numa=-1", 1, BadNumaNode("-1".into()), "node number"),
            ("file:/a:1G:x", 1, TooManyFields("file:DIR[:SIZE]"), "cannot contain `:`"),
        ];
        for (spec, part, want, fragment) in cases {
            let (got_part, got, msg) = problem(spec);
            assert_eq!((got_part, &got), (*part, want), "{spec:?}: {msg}");
            assert!(msg.contains(fragment), "{spec:?}: {msg:?} lacks {fragment:?}");
            assert!(msg.starts_with(&format!("tier spec part {part} `{}` : ", spec.split(',').nth(part - 1).unwrap().trim())), "{msg}");
        }
    }

    fn codec() -> impl Strategy<Value = Codec> {
        prop_oneof![Just(Codec::Lz4), (1..=19i32).prop_map(|level| Codec::Zstd { level })]
    }

    fn first_tier() -> impl Strategy<Value = FirstTier> {
        prop_oneof![
            Just(FirstTier::Raw),
            (codec(), proptest::option::of(codec())).prop_map(|(codec, fallback)| FirstTier::Compressed { codec, fallback: fallback.filter(|f| *f != codec) }),
        ]
    }

    fn path() -> impl Strategy<Value = PathBuf> {
        proptest::collection::vec("[a-zA-Z0-9._-]{1,8}", 0..4).prop_map(|segs| PathBuf::from(format!("/{}", segs.join("/"))))
    }

    fn size() -> impl Strategy<Value = u64> {
        (1u64..(1 << 40)).prop_map(|pages| pages * PAGE_SIZE as u64)
    }

    fn spill_tier() -> impl Strategy<Value = SpillTier> {
        prop_oneof![
            (path(), size()).prop_map(|(dir, size_bytes)| SpillTier::File { dir, size_bytes }),
            (
                path(),
                size(),
                prop_oneof![Just(MmapForm::Raw), Just(MmapForm::Lz4), (1..=19i32).prop_map(|level| MmapForm::Zstd { level })],
                proptest::option::of(0..1024u32)
            )
                .prop_map(|(path, size_bytes, form, numa)| SpillTier::Mmap { path, size_bytes, form, numa }),
            (
                prop_oneof![Just(RemoteProtocol::Redis), Just(RemoteProtocol::Memcached)],
                prop_oneof!["[a-z][a-z0-9.-]{0,12}", "::1", "fe80::[0-9a-f]{1,4}"],
                1..=u16::MAX,
                "[a-zA-Z0-9_.:{}-]{0,12}",
                size(),
                10u64..=30 * 86400,
                any::<bool>()
            )
                .prop_map(|(protocol, host, port, prefix, size_bytes, ttl_secs, plain)| SpillTier::Remote(RemoteSpec {
                    protocol,
                    host,
                    port,
                    prefix,
                    size_bytes,
                    ttl_secs,
                    plain
                })),
        ]
    }

    proptest! {
        #[test]
        fn display_parses_back(first in first_tier(), spill in proptest::collection::vec(spill_tier(), 0..4)) {
            let spec = TierSpec { first, spill };
            let text = spec.to_string();
            prop_assert_eq!(text.parse::<TierSpec>(), Ok(spec.clone()), "{}", text);
            // Canonical: printing what was parsed gives the same string.
            prop_assert_eq!(text.parse::<TierSpec>().unwrap().to_string(), text);
        }
    }
}
