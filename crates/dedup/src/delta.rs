//! Delta settings and counters shared by encoders and decoders.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
pub use strait_sketch::{IndexStats, Restored, SketchIndex, SnapshotError, DEFAULT_INDEX_BYTES};

/// Default `max_bases`: with delta runs every chunk has one base (the run's other bases are in
/// its prefix too); this bounds how many candidates are considered (twice this many).
pub const DEFAULT_MAX_BASES: u8 = 2;
/// Super-features a candidate from the shared index must share with the chunk. One shared
/// super-feature is often structure (JSON keys) that every chunk of a file has; two make a
/// near-duplicate likely, so the zstd attempt is rarely wasted.
pub const MIN_SHARED_SUPER_FEATURES: usize = 2;
/// Most base hints an encoder holds ([`crate::FlowEncoder::add_base_hints`]).
pub const MAX_BASE_HINTS: usize = 8192;

/// Delta compression settings of one sending direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaConfig {
    /// Send near-duplicates as deltas against chunks the peer holds. Needs `dedup` on and an
    /// index attached with [`crate::FlowEncoder::with_delta`].
    pub enabled: bool,
    /// Candidate bases considered per chunk: twice this (1..=[`strait_wire::MAX_DELTA_BASES`];
    /// clamped). Each chunk of a delta run names one base; the run's other bases are in its
    /// zstd prefix as well.
    pub max_bases: u8,
    /// Memory bound of the process's sketch index, used when building it with
    /// [`SketchIndex::new`] (the index is shared by all flows; encoders do not read this).
    pub index_bytes: u64,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        DeltaConfig {
            enabled: true,
            max_bases: DEFAULT_MAX_BASES,
            index_bytes: DEFAULT_INDEX_BYTES,
        }
    }
}

/// Delta counters of one route and direction (register them next to `RouteStats`).
#[derive(Debug, Default)]
pub struct DeltaStats {
    /// Chunks sent (sender) or received (receiver) as deltas.
    pub delta_chunks: AtomicU64,
    /// Sender: bytes the delta frames saved compared with the compressed literal frames they
    /// replaced (dedup and compression savings are counted separately, in `RouteStats`).
    pub delta_saved_bytes: AtomicU64,
    /// Sender: delta attempts (chunks with a usable candidate base).
    pub attempts: AtomicU64,
    /// Sender: attempts whose delta was not smaller than the literal (the literal was sent).
    pub rejected: AtomicU64,
    /// Receiver: deltas whose base was missing here (recovered through `Want`/`Supply`).
    pub base_misses: AtomicU64,
    /// Delta runs sent (sender) or received (receiver); each carries one or more deltas.
    pub runs: AtomicU64,
    /// Receiver: runs that failed verification as a whole (a wrong or missing base, a corrupt
    /// payload) and were re-requested.
    pub run_failures: AtomicU64,
}

impl DeltaStats {
    /// Adds `n` to a counter.
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
}
