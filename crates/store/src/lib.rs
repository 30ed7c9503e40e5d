//! Persistent, embedded chunk store with per-peer isolation.
//!
//! Owns: the on-disk log of chunks under one directory, the in-memory index
//! over it, the persisted peer table, eviction, and crash recovery.
//! Never does: networking, chunking, compression, or anything async. It never
//! serves bytes it has not just verified against their keyed BLAKE3 id, and
//! never panics on anything it reads from disk.
//!
//! ```text
//!  tokio task ──put/get/mark──▶ Store (one Mutex: index + segment table)
//!                                 │ pwrite (append)        │ pread (one record,
//!                                 ▼                        ▼  outside the lock)
//!   <dir>/seg-000001.dat  seg-000002.dat … seg-N.dat (head)   peers.tbl   LOCK
//! ```
//!
//! # Layout
//! * **Segments** `seg-NNNNNN.dat`: append-only logs of records (see
//!   [`record`] for the byte layout). Only the newest ("head") segment is
//!   written; it is rolled when the next record would take it past
//!   `segment_bytes`. A chunk record carries the chunk and its peer set; a
//!   peer-set record (56 bytes, no payload) carries the complete new set after
//!   `put`/`mark_peer`/`forget_peer` changed it. Replaying the log in order
//!   rebuilds every entry's latest location and peer set.
//! * **`peers.tbl`**: peer name → slot, replaced atomically (temp file, fsync,
//!   rename, fsync dir). Slots are bits in every record's peer mask, so a
//!   slot must never be reassigned: if the table is missing or damaged while
//!   segments exist, the store cannot tell whose bits are whose and deletes the
//!   segments (a cache reset: misses, never a cross-peer leak).
//! * **`LOCK`**: `flock`ed for the life of the `Store`; a second opener fails.
//!
//! # Recovery (kill -9, power loss)
//! `open` scans every segment's headers in order. Each header has a CRC-32; a
//! scan stops at the first header that fails it or whose payload runs past the
//! end of the file. In the head segment that tail is truncated (a torn append);
//! in older segments the rest is left as dead space until evicted. Payloads are
//! not checksummed at scan time: every `get` re-hashes the bytes it read with
//! the keyed BLAKE3 and a mismatch drops the entry (`corrupt_dropped`). The
//! record boundaries come only from a chain of valid headers from offset 0, so
//! chunk bytes that happen to look like a record are never parsed as one.
//!
//! # Faults (I/O errors, a full disk, a slow disk)
//! Every file operation goes through one internal interface (`vfs`): on disk,
//! or in a [`MemoryDir`] ([`Store::open_in_memory`], [`StoreOptions::memory`]:
//! same records, eviction, verification and recovery, for fuzzing and
//! deterministic engine tests), optionally behind a [`Faults`] hook
//! ([`StoreOptions::with_faults`], [`FaultSwitch`]) that tests use to inject
//! `EIO`, `ENOSPC`, torn writes and delays.
//! * A failed **write** is an error to the caller and never reaches the
//!   index. Its partial bytes are cut; if the cut fails too they stay as dead
//!   space and the next append starts a new segment, so nothing is chained
//!   after a torn record and the next open's scan stops at it.
//! * A failed **read** in `get` is a miss (`read_errors`, `misses`), never
//!   bytes; the entry is kept, as the error may be transient.
//! * A **full disk** (`ENOSPC`/`EDQUOT`): the first one of an episode cuts the
//!   partial record, frees the oldest segment (rolling the head first when it
//!   is the only one) and retries the write once (`no_space_evictions`). If it
//!   still fails, it and every later write fail cleanly, without evicting more,
//!   until a write succeeds again; reads keep working throughout. So a store
//!   on a disk smaller than `max_bytes` behaves as a cache bounded by the disk.
//! * A failed **fsync** is returned by [`Store::flush`]; a failed background
//!   fsync of a rolled segment is logged (it costs misses after power loss).
//! * A failed **open** (of the directory, lock, peer table or a segment) is an
//!   error naming the file. Damage found at open is counted
//!   (`damaged_segments`), never silently skipped.
//!
//! # Durability
//! The head segment is fsynced when it is rolled (by a background thread, so
//! the lock is not held across it; one at a time) and on [`Store::flush`]; new
//! files are made durable with a directory fsync. Other writes sit in the OS
//! page cache, so power loss can lose the most recent entries or peer-set
//! changes. That only costs misses: a lost peer bit means a chunk is sent
//! again; a peer bit that comes back after `forget_peer` was lost leads to one
//! more reference the peer misses, which the protocol already handles.
//!
//! # Eviction: segment-granular, generational second chance
//! The store is bounded by the bytes of its segment files (`max_bytes`, dead
//! records included). Before an append that would exceed it, the oldest
//! segment is deleted and its still-live entries leave the index. On a `get`
//! hit of an entry whose segment lies in the older half of the budget (the
//! segments that are followed by at least `max_bytes / 2` of newer data), the
//! record is copied forward to the head. So a chunk survives as long as it is
//! hit at least once per half-store of writes, and each hot chunk costs at most
//! one extra write per half-store written: a CLOCK-like approximation of LRU
//! with no per-entry clock and no random writes. Entries that are re-`put` do
//! not count as hits (the sender already has the bytes to send).
//!
//! # Memory
//! The index is a `HashMap<[u8; 16], Entry>` keyed by the first 128 bits of
//! the id (the full id is checked against the record on every `get`, so a
//! prefix collision costs a miss, never wrong bytes) with a 20-byte packed
//! `Entry` (`peers u64, seg u32, off u32, len u32`): 36 bytes per bucket plus
//! one control byte. hashbrown keeps its load between 7/16 and 7/8, so the
//! index costs 42–85 bytes per chunk; measured at every 1k entries from 1k
//! to 20k: min 43, mean 63, max 81 (`StoreStats::index_bytes` reports the live
//! figure). With 64 KiB
//! chunks that is about 1 MB of RAM per GiB of store.
//!
//! # Bounds
//! [`MAX_CHUNK_BYTES`] per record, [`MAX_PEERS`] peers, [`MAX_SEGMENTS`] open
//! segment files, segment size between [`MIN_SEGMENT_BYTES`] and
//! [`MAX_SEGMENT_BYTES`] and at most `max_bytes / 4`, `max_bytes` at most
//! [`MAX_STORE_BYTES`].
//!
//! Unix only (`pread`/`pwrite`, `flock`).

mod files;
mod hints;
mod index;
mod peers;
pub mod record;
mod store;
mod vfs;

use std::path::PathBuf;
use std::sync::Arc;

pub use peers::{decode_peer_table, encode_peer_table, MAX_PEERS, MAX_PEER_NAME_LEN};
pub use record::{
    decode_header, decode_record, encode_header, encode_record, RecordHeader, RecordKind,
    HEADER_LEN, MAX_CHUNK_BYTES, MAX_RECORD_BYTES,
};
pub use store::Store;
pub use vfs::{FaultKind, FaultSwitch, Faults, Injected, IoOp, MemoryDir};

/// A chunk id: keyed BLAKE3 of the chunk bytes.
pub type RawId = [u8; 32];

/// Default segment file size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest segment size (after clamping).
pub const MIN_SEGMENT_BYTES: u64 = 16 * 1024;
/// Largest segment size; record offsets are `u32`.
pub const MAX_SEGMENT_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Segment size is raised so the store spans at most about this many segments
/// (bounds open files and eviction granularity).
pub const SEGMENT_TARGET_COUNT: u64 = 256;
/// Hard bound on segment files kept open; older ones are evicted first.
pub const MAX_SEGMENTS: usize = 512;
/// Smallest accepted `max_bytes`.
pub const MIN_STORE_BYTES: u64 = 4 * MIN_SEGMENT_BYTES;
/// Largest accepted `max_bytes`.
pub const MAX_STORE_BYTES: u64 = SEGMENT_TARGET_COUNT * MAX_SEGMENT_BYTES;

/// Store configuration.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory holding the store; created if missing.
    pub path: PathBuf,
    /// Bound on the bytes of all segment files, between [`MIN_STORE_BYTES`]
    /// and [`MAX_STORE_BYTES`].
    pub max_bytes: u64,
    /// Size at which the head segment is rolled. Clamped to
    /// `[max(MIN_SEGMENT_BYTES, max_bytes / SEGMENT_TARGET_COUNT),
    /// min(MAX_SEGMENT_BYTES, max_bytes / 4)]`; [`DEFAULT_SEGMENT_BYTES`] is a
    /// good value.
    pub segment_bytes: u64,
    /// BLAKE3 key the chunk ids were derived with.
    pub key: [u8; 32],
}

impl StoreConfig {
    /// A config with the default segment size.
    pub fn new(path: impl Into<PathBuf>, max_bytes: u64, key: [u8; 32]) -> Self {
        StoreConfig {
            path: path.into(),
            max_bytes,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            key,
        }
    }
}

/// How a store is opened, beyond its [`StoreConfig`]: on disk (the default)
/// or in a [`MemoryDir`], and with an optional fault-injection hook.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    pub(crate) memory: Option<MemoryDir>,
    pub(crate) faults: Option<Arc<dyn Faults>>,
}

impl StoreOptions {
    /// On disk, in `StoreConfig::path`, with no hook.
    pub fn disk() -> Self {
        StoreOptions::default()
    }

    /// In `dir` instead of on disk; `StoreConfig::path` is then only a label
    /// in errors and logs. Same record format, eviction, verification and
    /// recovery rules as on disk; nothing is durable beyond `dir`'s clones.
    pub fn memory(dir: MemoryDir) -> Self {
        StoreOptions {
            memory: Some(dir),
            faults: None,
        }
    }

    /// Routes every file operation through `faults` first (tests: I/O
    /// errors, a full disk, a slow disk).
    pub fn with_faults(mut self, faults: Arc<dyn Faults>) -> Self {
        self.faults = Some(faults);
        self
    }
}

/// A peer's slot: its bit in every entry's peer set. Stable across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerSlot(u8);

impl PeerSlot {
    /// The slot number, `0..MAX_PEERS`.
    pub fn index(self) -> u8 {
        self.0
    }

    fn bit(self) -> u64 {
        1u64 << self.0
    }
}

/// Counters and gauges of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes of all segment files (what `max_bytes` bounds).
    pub bytes: u64,
    /// Bytes of the records that index entries point at.
    pub live_bytes: u64,
    /// Chunks in the index.
    pub entries: u64,
    /// Segment files.
    pub segments: u64,
    /// Configured bound.
    pub max_bytes: u64,
    /// `get` calls that returned bytes.
    pub hits: u64,
    /// `get` calls that returned `None`.
    pub misses: u64,
    /// Entries removed by segment eviction.
    pub evictions: u64,
    /// Segments deleted by eviction.
    pub segments_evicted: u64,
    /// Entries dropped because the bytes read back did not match the id.
    pub corrupt_dropped: u64,
    /// Hot entries copied from an old segment to the head on a hit.
    pub copied_forward: u64,
    /// Approximate heap bytes of the index.
    pub index_bytes: u64,
    /// `get` calls whose read failed (counted as misses too; the entry is
    /// kept, the error may be transient).
    pub read_errors: u64,
    /// Writes that failed and were reported to the caller (a `put`,
    /// `mark_peer`, copy-forward or peer-set change that did not persist).
    pub write_errors: u64,
    /// Times a full disk (`ENOSPC`/`EDQUOT`) made the store free a segment
    /// and retry the write.
    pub no_space_evictions: u64,
    /// Segments whose chain of valid record headers broke before the end of
    /// the file when the store was opened (a damaged header or a torn
    /// append); the records after the break were not indexed.
    pub damaged_segments: u64,
}

/// Errors of the chunk store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("store I/O on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process (or `Store`) holds the directory.
    #[error("store directory {path} is locked by another process")]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// `max_bytes` is outside the accepted range.
    #[error("store max_bytes {value} is not valid: must be between {min} and {max}")]
    MaxBytes {
        /// Configured value.
        value: u64,
        /// Lower bound.
        min: u64,
        /// Upper bound.
        max: u64,
    },
    /// A chunk (or a decoded chunk record) is larger than the limit.
    #[error("chunk length {len} exceeds limit {max}")]
    ChunkTooLarge {
        /// Offered length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The peer table already holds [`MAX_PEERS`] names.
    #[error("peer {name:?} does not fit: the store already tracks {max} peers")]
    TooManyPeers {
        /// The refused name.
        name: String,
        /// [`MAX_PEERS`].
        max: usize,
    },
    /// A peer name is empty or too long.
    #[error("peer name length {len} is not valid: must be 1..={max} bytes")]
    PeerName {
        /// Offered length.
        len: usize,
        /// [`MAX_PEER_NAME_LEN`].
        max: usize,
    },
    /// The hints file failed validation (it is not loaded).
    #[error("hints file is invalid: {reason}")]
    HintsInvalid {
        /// What was wrong.
        reason: &'static str,
    },
    /// The peer table file failed validation.
    #[error("peer table is invalid: {reason}")]
    PeerTableInvalid {
        /// What was wrong.
        reason: &'static str,
    },
    /// Segment numbers ran out (after 4 billion rolls).
    #[error("segment number {last} cannot be incremented")]
    SegmentIdsExhausted {
        /// The last segment number.
        last: u32,
    },
    /// A record buffer is shorter than the record it starts.
    #[error("record truncated: need {need} bytes, have {have}")]
    RecordTruncated {
        /// Bytes the record needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A record does not start with the record magic.
    #[error("record magic {found:#010x} is not the store's")]
    BadMagic {
        /// The first four bytes, little-endian.
        found: u32,
    },
    /// A record header's CRC does not match its contents.
    #[error("record header checksum {stored:#010x} does not match computed {computed:#010x}")]
    HeaderChecksum {
        /// CRC in the header.
        stored: u32,
        /// CRC of the header bytes.
        computed: u32,
    },
    /// A record kind byte is not known.
    #[error("record kind {kind} is unknown")]
    UnknownRecordKind {
        /// The kind byte.
        kind: u8,
    },
    /// Reserved header bytes are not zero.
    #[error("record reserved bytes are not zero")]
    ReservedNotZero,
    /// A peer-set record claims a payload.
    #[error("peer-set record payload length {len} is not 0")]
    PeersRecordPayload {
        /// The length field.
        len: u32,
    },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
