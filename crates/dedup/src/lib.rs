//! The dedup engine: turns one direction of a flow into tunnel frames (chunk, hash, reference or
//! compressed literal) and back (expand, verify, deliver). Sans-IO: no sockets, no clock; the
//! transport's pump feeds bytes and frames in and writes what comes out.
//!
//! ```text
//!  client bytes -> FlowEncoder::push -> Literal / Refs frames ----WAN---> FlowDecoder::on_frame
//!                        ^                                                  |  verify every chunk
//!                        |  on_want (Supply) / on_ack  <--- Want / Ack -----+  against its id
//!                                                                           v
//!                                                                 pop_ready -> client bytes
//! ```
//!
//! Invariants:
//! - A chunk is delivered only after its bytes hashed to its id (keyed BLAKE3), whether they came
//!   as a literal, from the store (which verifies on read) or as a supply.
//! - The sender keeps every chunk it sent (literal or reference) until the receiver acknowledged
//!   delivering it, so every `Want` can be answered. Those bytes are bounded by the flow window.
//! - A reference is sent only for a chunk whose store entry lists this peer (it was sent to or
//!   received from this peer); the receiver expands a reference only from an entry listing the
//!   sending peer. A hash is not a capability.
//! - A delta's bases obey the same rule: the sender uses a base only if its store entry lists
//!   this peer, and reads it with that peer's slot; the receiver reads bases only from entries
//!   listing the sending peer. A missing base makes the chunk a miss (`Want` → `Supply` of the
//!   whole chunk from the sender's unacknowledged queue); rebuilt bytes are verified like any
//!   other chunk.
//! - With delta on, near-duplicate chunks (and the known chunks between them) cross as delta
//!   runs ([`run`]): bases named by position in the order chunks crossed with this peer (a hint
//!   from the shared index's chain, resolved only among chunks exchanged with this peer and read
//!   through its store slot). The receiver hashes every rebuilt chunk and delivers nothing of a
//!   run unless the digest of those ids matches; otherwise it wants the digest and the sender,
//!   which holds the run's chunks until acknowledged, supplies each of them.
//!
//! Hostile-peer invariants (issue 14):
//! - Wants are answered at their cause: every wanted id must name a held item, is queued once
//!   however often a `Want` repeats it, and is supplied at most once until that item is
//!   acknowledged ([`MAX_VERIFY_ATTEMPTS`] times in all for a receiver re-asking after a failed
//!   verification, then [`Error::RepeatedWant`]). Supplies are emitted one chunk per
//!   [`FlowEncoder::poll_supply`], never into one buffer sized by the want. The store's peer
//!   marks change at most once per held item: forgotten when supplied, marked again only once
//!   the peer acknowledged the supplied copy.
//! - Every entry either side holds (receive-queue slot, held item, queued supply, want) counts
//!   its bytes, at least [`MIN_SLOT_BYTES`] ([`FlowDecoder::held_bytes`],
//!   [`FlowEncoder::held_bytes`]); the receiver's bound, twice the window plus the peer's max
//!   chunk, applies to that count, and exceeding it is [`Error::WindowExceeded`].
//! - Waiting slots are found through maps keyed by chunk id or run digest, never by scanning the
//!   queue: any frame costs work linear in its own size.
//! - A chunk the peer sends is at most the `max_chunk` it announced at connect
//!   ([`FlowDecoder::with_peer_max_chunk`]), on every path: literal, supply, delta, part,
//!   reference, run item.
//! - A delta run loads each chunk it names once; every item's bytes, `Same` items included,
//!   count against [`run::MAX_RUN_LOGICAL_BYTES`] and the room left in the queue before more is
//!   loaded; supplies collected for a failed run count in the queue.
//! - A chunk completing previews is checked against the previewed bytes even when a previewed
//!   `Part` was lost: the check waits for the part's supply, and the chunk's bytes after the
//!   previews are delivered only once it passed.
//! - Both halves charge what they hold to a process-wide [`Budget`] and release it on drop; an
//!   exhausted budget stops the encoder reading its client once the flow holds more than one
//!   maximal chunk (backpressure, never failure); a decoder charges but never blocks.

pub mod budget;
mod decoder;
pub mod delta;
mod encoder;
pub mod run;

pub use budget::{floor_permits, Budget, Charge, Floor, DEFAULT_FLOW_BUDGET};
pub use decoder::FlowDecoder;
pub use delta::{DeltaConfig, DeltaStats, SketchIndex};
pub use encoder::{EncoderConfig, FlowEncoder};

/// Codec byte flag: the sender will never reference this chunk, so the receiver need not store it.
pub const NO_STORE_FLAG: u8 = 0x80;
/// Codec byte flag of a `Literal` that previews the start of a chunk the client paused in (see
/// [`FlowEncoder::flush`]): delivered at once, never stored; the next item is that chunk and
/// the receiver delivers only its bytes after the previews.
pub const PREVIEW_FLAG: u8 = 0x20;
/// References are emitted once this many are pending (or at the next literal or flush).
pub const REF_BATCH: usize = 64;
/// The receiver acknowledges at least every this many delivered items.
pub const ACK_EVERY: u64 = 16;
/// ... and at least every this many delivered bytes: sixteen maximal chunks are 4 MiB, a minute
/// of a 64 KiB/s client, during which the sender would hold them all and hear nothing (a
/// thousand-flow soak's references all crossed at once and waited that long for an `Ack`).
pub const ACK_BYTES: u64 = 256 << 10;
/// Times a chunk may fail verification before the flow is reset; also the most times the
/// sender supplies one id before the peer acknowledges it.
pub const MAX_VERIFY_ATTEMPTS: u8 = 2;
/// Least bytes any held entry counts (a queue slot, a held item, a queued supply, a want): a
/// receive-queue slot is 88 bytes and the index entry of one waiting for an id 64 more plus its
/// 8-byte sequence number (measured with `size_of`, allocator overhead aside), so an entry
/// holding one byte of data still costs this much memory. Encoder and decoder count alike, so a
/// conforming sender's window never overfills the receiver's bound.
pub const MIN_SLOT_BYTES: u64 = 192;

/// What an entry holding `len` bytes of data counts: its bytes, at least [`MIN_SLOT_BYTES`].
pub(crate) fn entry_bytes(len: usize) -> u64 {
    (len as u64).max(MIN_SLOT_BYTES)
}

/// Errors of the engine; every one ends the flow with a reset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer asked for a chunk this flow never sent or already saw acknowledged.
    #[error("peer wanted chunk {0} which this flow is not holding")]
    UnknownWant(String),
    /// A chunk does not start with the bytes its previews delivered (or is shorter).
    #[error("chunk {0} does not start with the bytes previewed for it")]
    PreviewMismatch(String),
    /// The peer wanted one item again and again before acknowledging its supply.
    #[error(
        "peer wanted {id} {wants} times before acknowledging it (limit {MAX_VERIFY_ATTEMPTS})"
    )]
    RepeatedWant {
        /// Chunk id or run digest (hex prefix).
        id: String,
        /// Wants counted, this one included.
        wants: u8,
    },
    /// The peer supplied a chunk nobody asked for.
    #[error("peer supplied chunk {0} which was not requested")]
    UnrequestedSupply(String),
    /// A chunk failed verification again after being re-requested.
    #[error("chunk {id} failed verification {attempts} times; refusing to deliver it")]
    Corrupt {
        /// Chunk id (hex prefix).
        id: String,
        /// Attempts made.
        attempts: u8,
    },
    /// The peer acknowledged more items than were sent.
    #[error("peer acknowledged {acked} items but only {sent} were sent")]
    BadAck {
        /// Acked count.
        acked: u64,
        /// Sent count.
        sent: u64,
    },
    /// The peer sent more undelivered data than the flow window allows.
    #[error("peer exceeded the flow window: {queued} bytes queued, limit {limit}")]
    WindowExceeded {
        /// Bytes queued.
        queued: u64,
        /// Limit.
        limit: u64,
    },
    /// Data arrived after the peer ended its direction.
    #[error("peer sent data after ending its direction")]
    DataAfterEnd,
    /// A frame that does not belong to a data direction.
    #[error("unexpected frame on a data direction: {0}")]
    Unexpected(&'static str),
    /// A codec byte or payload is invalid.
    #[error("chunk {id}: {source}")]
    Codec {
        /// Chunk id.
        id: String,
        /// Codec error.
        source: strait_codec::Error,
    },
    /// A delta frame names a payload codec this side does not know.
    #[error("chunk {id}: unknown delta codec {codec}")]
    DeltaCodec {
        /// Chunk id.
        id: String,
        /// The codec byte.
        codec: u8,
    },
    /// A reference length disagrees with the chunk found.
    #[error("chunk length {len} exceeds limit {max}")]
    TooLong {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
}

pub(crate) fn short(id: &[u8; 32]) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
