//! Chunk payload codecs: raw, zstd, and byte-grouped ("tensor") zstd for float arrays.
//!
//! This crate owns how one chunk's bytes become a payload and back. It is pure: no I/O, no
//! clock, no framing (the caller stores the [`CodecId`] and the decoded length next to the
//! payload), no knowledge of flows or peers.
//!
//! ```text
//!  chunk ─► Encoder::encode ─► probe a ~4 KiB sample (byte histograms per plane)
//!                               ├─ looks random ────────────► Raw (no zstd call on the chunk)
//!                               ├─ float-like (tensor on) ──► ByteGroup{2,4}Zstd
//!                               └─ compressible ────────────► Zstd
//!           every compressed result must save ≥ 3 %, else ─► Raw (exactly the chunk bytes)
//! ```
//!
//! Architecture invariant: [`Decoder::decode`] treats the payload, the codec byte and the
//! expected length as hostile. It never allocates more than the expected length (itself capped at
//! [`MAX_CHUNK_LEN`]), rejects any output length other than the expected one, and never panics.

mod decode;
mod encode;
#[doc(hidden)]
pub mod fuzzing;
mod planes;
mod probe;
#[doc(hidden)]
pub mod testdata;

pub use decode::{pooled_decoders, Decoder, POOLED_DECODERS_PER_THREAD};
pub use encode::{pooled_encoders, Encoder, EncoderStats, POOLED_ENCODERS_PER_THREAD};
pub use planes::{merge_planes, split_planes};

/// Largest decoded chunk this crate accepts (matches the chunker's largest `max`).
pub const MAX_CHUNK_LEN: usize = 16 * 1024 * 1024;

/// Default zstd level when compression is on.
pub const DEFAULT_LEVEL: i32 = 3;

/// Chunks shorter than this are always sent raw: framing and probing cost more than they save.
pub const MIN_COMPRESS_LEN: usize = 64;

/// A compressed payload must be at most this many thousandths of the chunk, else Raw is sent.
pub const MAX_KEPT_PERMILLE: usize = 970;

/// How a chunk payload is encoded. The numeric value goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CodecId {
    /// The chunk bytes unchanged.
    Raw = 0,
    /// One zstd frame of the chunk.
    Zstd = 1,
    /// Bytes regrouped into 2 planes by position mod 2 (bf16/fp16), each plane raw or zstd.
    ByteGroup2Zstd = 2,
    /// Bytes regrouped into 4 planes by position mod 4 (fp32), each plane raw or zstd.
    ByteGroup4Zstd = 3,
}

impl CodecId {
    /// Plane count for byte-grouped codecs.
    pub(crate) fn group_width(self) -> Option<usize> {
        match self {
            CodecId::ByteGroup2Zstd => Some(2),
            CodecId::ByteGroup4Zstd => Some(4),
            CodecId::Raw | CodecId::Zstd => None,
        }
    }
}

impl TryFrom<u8> for CodecId {
    type Error = Error;

    fn try_from(value: u8) -> Result<Self, Error> {
        match value {
            0 => Ok(CodecId::Raw),
            1 => Ok(CodecId::Zstd),
            2 => Ok(CodecId::ByteGroup2Zstd),
            3 => Ok(CodecId::ByteGroup4Zstd),
            _ => Err(Error::UnknownCodec { value }),
        }
    }
}

impl From<CodecId> for u8 {
    fn from(c: CodecId) -> u8 {
        c as u8
    }
}

/// What the encoder may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressConfig {
    /// zstd level; `None` turns compression off (every chunk is Raw).
    pub level: Option<i32>,
    /// Allow the byte-grouped codecs for float-like data.
    pub tensor: bool,
}

impl Default for CompressConfig {
    fn default() -> Self {
        Self {
            level: Some(DEFAULT_LEVEL),
            tensor: true,
        }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The codec byte names no known codec.
    #[error("unknown codec id {value}")]
    UnknownCodec {
        /// The rejected byte.
        value: u8,
    },
    /// The announced chunk length exceeds [`MAX_CHUNK_LEN`].
    #[error("chunk length {len} exceeds limit {max}")]
    TooLong {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A raw payload or a decoded output has the wrong length.
    #[error("{codec:?} payload decodes to {actual} bytes, expected {expected}")]
    LengthMismatch {
        /// Codec of the payload.
        codec: CodecId,
        /// Announced length.
        expected: usize,
        /// Length found.
        actual: usize,
    },
    /// zstd rejected the payload (or failed to compress when a codec was forced).
    #[error("{codec:?} payload: zstd error: {reason}")]
    Zstd {
        /// Codec of the payload.
        codec: CodecId,
        /// zstd's message.
        reason: String,
    },
    /// A byte-grouped payload header is inconsistent.
    #[error("{codec:?} payload of {len} bytes is malformed: {reason}")]
    Malformed {
        /// Codec of the payload.
        codec: CodecId,
        /// Payload length.
        len: usize,
        /// What is wrong.
        reason: &'static str,
    },
}
