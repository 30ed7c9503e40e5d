//! The delta codec: one zstd frame of the chunk, compressed with the concatenated base chunks
//! as a raw-content prefix (`ZSTD_CCtx_refPrefix`), so every run the chunk shares with a base
//! becomes a match into the prefix.

use crate::Error;
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

/// Largest delta output (matches the chunk length caps elsewhere).
pub const MAX_OUTPUT_LEN: usize = 16 * 1024 * 1024;
/// Largest total prefix (all bases of one chunk).
pub const MAX_PREFIX_LEN: usize = 4 * MAX_OUTPUT_LEN;
/// Largest zstd window a delta frame may declare (prefix + output must fit in it).
pub const MAX_WINDOW_LOG: u32 = 27;
const MIN_WINDOW_LOG: u32 = 10;
/// Prefix + data size from which long-distance matching is on: over a many-chunk prefix (a
/// delta run) level 3's hash tables keep too few prefix positions to find every base region.
pub const LDM_FROM: usize = 1 << 20;

fn window_log(total: usize) -> u32 {
    let mut log = MIN_WINDOW_LOG;
    while log < MAX_WINDOW_LOG && (1usize << log) < total {
        log += 1;
    }
    log
}

fn zerr(code: usize) -> Error {
    Error::Zstd {
        reason: zstd::zstd_safe::get_error_name(code),
    }
}

/// Encodes chunks against bases. Holds nothing between calls: a prefix is single-use in zstd and
/// borrowed for one call only.
#[derive(Debug, Clone, Copy)]
pub struct DeltaEncoder {
    level: i32,
}

impl DeltaEncoder {
    /// An encoder at zstd `level`.
    pub fn new(level: i32) -> Self {
        DeltaEncoder { level }
    }

    /// Replaces `out` with the delta of `data` against `prefix` (the bases, concatenated).
    pub fn encode(&mut self, prefix: &[u8], data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(Error::PrefixTooLong {
                len: prefix.len(),
                max: MAX_PREFIX_LEN,
            });
        }
        if data.len() > MAX_OUTPUT_LEN {
            return Err(Error::OutputTooLong {
                len: data.len(),
                max: MAX_OUTPUT_LEN,
            });
        }
        // A fresh context per call: `ref_prefix` ties the context's lifetime to the borrowed
        // prefix, so a long-lived context cannot hold it without unsafe code.
        let mut cctx = CCtx::try_create().ok_or(Error::Zstd {
            reason: "cannot allocate a compression context",
        })?;
        cctx.set_parameter(CParameter::CompressionLevel(self.level))
            .map_err(zerr)?;
        cctx.set_parameter(CParameter::WindowLog(window_log(prefix.len() + data.len())))
            .map_err(zerr)?;
        if prefix.len() + data.len() >= LDM_FROM {
            cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
                .map_err(zerr)?;
        }
        cctx.set_parameter(CParameter::ContentSizeFlag(false))
            .map_err(zerr)?;
        cctx.set_parameter(CParameter::ChecksumFlag(false))
            .map_err(zerr)?;
        cctx.ref_prefix(prefix).map_err(zerr)?;
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        cctx.compress2(out, data).map_err(zerr)?;
        Ok(())
    }
}

/// Decodes deltas. Treats the payload and the announced length as hostile: never writes more
/// than `len` bytes (itself capped at [`MAX_OUTPUT_LEN`]) and rejects any other output length.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeltaDecoder;

impl DeltaDecoder {
    /// A decoder.
    pub fn new() -> Self {
        DeltaDecoder
    }

    /// Replaces `out` with the chunk rebuilt from `prefix` (the bases, concatenated, in the order
    /// the frame lists them) and `payload`; it must be exactly `len` bytes.
    pub fn decode(
        &mut self,
        prefix: &[u8],
        payload: &[u8],
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if len > MAX_OUTPUT_LEN {
            return Err(Error::OutputTooLong {
                len,
                max: MAX_OUTPUT_LEN,
            });
        }
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(Error::PrefixTooLong {
                len: prefix.len(),
                max: MAX_PREFIX_LEN,
            });
        }
        let mut dctx = DCtx::try_create().ok_or(Error::Zstd {
            reason: "cannot allocate a decompression context",
        })?;
        dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
            .map_err(zerr)?;
        dctx.ref_prefix(prefix).map_err(zerr)?;
        out.clear();
        // One spare byte: a payload that decodes to more than `len` fills it (or errors with
        // "destination too small"), either way a rejection, never a write past the cap.
        out.reserve_exact(len + 1);
        let n = dctx.decompress(out, payload).map_err(zerr)?;
        if n != len || out.len() != len {
            return Err(Error::LengthMismatch {
                expected: len,
                actual: out.len(),
            });
        }
        Ok(())
    }
}
