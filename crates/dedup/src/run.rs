//! Delta runs: consecutive near-duplicate (and unchanged) chunks coded as one
//! [`strait_wire::Frame::DeltaRun`] — one zstd frame over the run, a compact base reference per
//! chunk, and one digest of the run's ids instead of a 32-byte id per chunk.
//!
//! Why: coding every changed chunk in a frame of its own costs a frame header, a 32-byte id,
//! 36 bytes per base and a zstd frame with fresh entropy tables per chunk — more than the edits
//! themselves on scattered-edit data. Within a run the bases follow one another in the order they
//! crossed before, so a base is usually "the next one" (one byte), and zstd codes each edit as a
//! few literals between two long matches at a repeated offset.
//!
//! Integrity: the receiver hashes every rebuilt chunk itself (keyed BLAKE3) and delivers the run
//! only if [`run_digest`] of those ids equals the frame's digest. Otherwise it wants the digest;
//! the sender, which holds every chunk of the run until acknowledged, supplies each of them in
//! order, flagged [`RUN_SUPPLY_FLAG`], and the receiver verifies each supply against its id and
//! the ids against the digest again.

use bytes::Bytes;
use strait_chunk::ChunkHasher;
use strait_wire::{RunItem, WireId};

/// The sender closes a run at this many items.
pub const RUN_MAX_ITEMS: usize = 128;
/// The sender closes a run before its `Delta` items' bytes exceed this.
pub const RUN_MAX_DELTA_BYTES: usize = 8 << 20;
/// The sender closes a run before its distinct bases' bytes exceed this.
pub const RUN_MAX_PREFIX_BYTES: usize = 8 << 20;
/// The sender closes a run before its chunks' bytes (`Same` items included) exceed this: the
/// default flow window's half, so runs are as long as before at default settings and a larger
/// window does not make them larger.
pub const RUN_MAX_LOGICAL_BYTES: u64 = 32 << 20;
/// Most bytes a receiver rebuilds from one run's payload (twice the sender's bound).
pub const MAX_RUN_DECODED_BYTES: usize = 2 * RUN_MAX_DELTA_BYTES;
/// Most bytes of chunks one run may stand for at the receiver, `Same` items included, each
/// counted every time it is named (twice the sender's bound): checked while the run is rebuilt,
/// before anything more is loaded, so a run naming one large chunk many times is refused after
/// a single load.
pub const MAX_RUN_LOGICAL_BYTES: u64 = 2 * RUN_MAX_LOGICAL_BYTES;
/// Most base bytes a receiver loads as one run's prefix (twice the sender's bound).
pub const MAX_RUN_PREFIX_BYTES: usize = 2 * RUN_MAX_PREFIX_BYTES;
/// A `Delta` item whose base is named `Next(n)` with 2 ≤ n ≤ this also puts the n − 1 chunks it
/// skips into the prefix, just before its base: when the new version lost a chunk boundary (a
/// deletion) the chunk covers two old chunks, and the skipped one is the other half. Both sides
/// derive them from their chains, so they cost no bytes on the wire.
pub const RUN_GAP_STEPS: u8 = 4;
/// Codec byte flag of a `Supply` that answers a `Want` of a run digest (not of a chunk id).
pub const RUN_SUPPLY_FLAG: u8 = 0x40;

/// Domain separation: a run digest never equals the id of a chunk with the same bytes.
const DIGEST_CONTEXT: &[u8] = b"strait delta-run digest v1\0";

/// The digest a run frame carries: keyed BLAKE3 over a context string and the ordered ids.
pub fn run_digest<'a>(hasher: &ChunkHasher, ids: impl IntoIterator<Item = &'a WireId>) -> WireId {
    let mut buf = Vec::with_capacity(DIGEST_CONTEXT.len() + 32 * RUN_MAX_ITEMS);
    buf.extend_from_slice(DIGEST_CONTEXT);
    for id in ids {
        buf.extend_from_slice(id);
    }
    hasher.id(&buf).0
}

/// One chunk of the run being built by an encoder.
pub(crate) struct Planned {
    pub id: WireId,
    pub item: RunItem,
    pub base: WireId,
    /// `Delta` items: the chunk and its base's bytes.
    pub delta: Option<(Bytes, Bytes)>,
    /// `Delta` items named `Next(2..=RUN_GAP_STEPS)`: the skipped chunks, in chain order.
    pub gaps: Vec<(WireId, Bytes)>,
    /// What the chunk would have cost on its own (a literal, or a reference).
    pub alone_cost: usize,
}

/// The run an encoder is building.
#[derive(Default)]
pub(crate) struct Building {
    pub items: Vec<Planned>,
    pub delta_bytes: usize,
    pub prefix_bytes: usize,
    pub logical_bytes: u64,
    /// The flow's last chunk id before the run (its stream-order predecessor).
    pub chain_prev: Option<WireId>,
}

impl Building {
    /// Whether `id` is already in the run's prefix.
    pub fn in_prefix(&self, id: &WireId) -> bool {
        self.items
            .iter()
            .any(|p| p.delta.is_some() && (p.base == *id || p.gaps.iter().any(|(g, _)| g == id)))
    }
}

/// A run the encoder sent and holds until acknowledged.
#[derive(Clone, Copy)]
pub(crate) struct SentRun {
    pub digest: WireId,
    /// Sequence number (count of items sent before it) of the run's first item.
    pub first: u64,
    pub count: usize,
}
