//! Content-defined chunking (FastCDC-2020 style gear hashing with normalized chunking) and
//! keyed BLAKE3 chunk ids.
//!
//! This crate owns *where* a byte stream is cut and *what a chunk is called*. It is pure: it
//! performs no I/O, reads no clock, allocates only in the [`chunk_boundaries`] convenience, and
//! never decides whether a chunk is sent, stored or compressed.
//!
//! ```text
//!   bytes ──► Chunker::next_boundary ──► cut offsets ──► ChunkHasher::id ──► ChunkId
//!             (streaming, split-invariant)                (keyed BLAKE3)
//! ```
//!
//! Architecture invariant: for a given [`ChunkerConfig`], the cut points depend only on the
//! bytes of the stream, never on how the stream was split into `next_boundary` calls. Both
//! peers of a tunnel must therefore run the same config to share chunks.

mod cdc;
mod id;

pub use cdc::{chunk_boundaries, Chunker, ChunkerConfig, DEFAULT_AVG, DEFAULT_MAX, DEFAULT_MIN};
pub use cdc::{MAX_AVG, MAX_CHUNK_LEN, MIN_AVG, MIN_MIN};
pub use id::{ChunkHasher, ChunkId};

/// Errors of this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The chunker sizes are inconsistent or out of range.
    #[error("chunker config min={min} avg={avg} max={max} is not valid: {reason}")]
    InvalidConfig {
        /// Requested minimum chunk length.
        min: usize,
        /// Requested average chunk length.
        avg: usize,
        /// Requested maximum chunk length.
        max: usize,
        /// Which constraint failed.
        reason: &'static str,
    },
    /// A chunk id was built from a slice of the wrong length.
    #[error("chunk id length {len} is not 32 bytes")]
    IdLength {
        /// Length of the rejected slice.
        len: usize,
    },
    /// A chunk id hex string was malformed.
    #[error("chunk id hex {text:?} is not 64 hex digits")]
    IdHex {
        /// The rejected text, cut to at most 80 characters.
        text: String,
    },
}
