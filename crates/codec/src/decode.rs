//! Chunk decoder for untrusted payloads.

use crate::encode::group_header_len;
use crate::planes::merge_planes;
use crate::{CodecId, Error, MAX_CHUNK_LEN};

/// Decompression contexts (with their plane buffers) kept per thread between
/// [`Decoder::decode`] calls: a decoder holds its context only during a call, so idle flows
/// hold none (see [`crate::POOLED_ENCODERS_PER_THREAD`] for the encoder side).
pub const POOLED_DECODERS_PER_THREAD: usize = 2;

type PooledDecoder = (zstd::bulk::Decompressor<'static>, Vec<u8>);

thread_local! {
    static POOL: std::cell::RefCell<Vec<PooledDecoder>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Decompression contexts pooled on the calling thread (for tests of the bound).
pub fn pooled_decoders() -> usize {
    POOL.with(|p| p.borrow().len())
}

/// Decodes payloads. Borrows a zstd decompression context from its thread's pool for each
/// call ([`POOLED_DECODERS_PER_THREAD`]).
pub struct Decoder {
    /// Created on first use so that `new` cannot fail.
    dctx: Option<zstd::bulk::Decompressor<'static>>,
    /// Decoded byte planes before interleaving.
    planes: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder with no zstd context allocated yet.
    pub fn new() -> Self {
        Self {
            dctx: None,
            planes: Vec::new(),
        }
    }

    /// Appends the decoding of `payload` to `out`.
    ///
    /// Fails (leaving `out` as it was) unless the payload decodes to exactly `expected_len`
    /// bytes, `expected_len <= MAX_CHUNK_LEN`, and the payload has no trailing bytes. At most
    /// `expected_len` bytes are allocated whatever the payload claims.
    pub fn decode(
        &mut self,
        codec: CodecId,
        payload: &[u8],
        expected_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if expected_len > MAX_CHUNK_LEN {
            return Err(Error::TooLong {
                len: expected_len,
                max: MAX_CHUNK_LEN,
            });
        }
        let start = out.len();
        if self.dctx.is_none() && codec != CodecId::Raw {
            if let Some((d, planes)) = POOL.with(|p| p.borrow_mut().pop()) {
                self.dctx = Some(d);
                self.planes = planes;
            }
        }
        let result = self.decode_borrowed(codec, payload, expected_len, out, start);
        if let Some(d) = self.dctx.take() {
            let planes = std::mem::take(&mut self.planes);
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOLED_DECODERS_PER_THREAD {
                    p.push((d, planes));
                }
            });
        }
        result
    }

    /// [`Decoder::decode`] with a context checked out (or made on first use).
    fn decode_borrowed(
        &mut self,
        codec: CodecId,
        payload: &[u8],
        expected_len: usize,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), Error> {
        let result = match codec {
            CodecId::Raw => {
                if payload.len() == expected_len {
                    out.extend_from_slice(payload);
                    Ok(())
                } else {
                    Err(Error::LengthMismatch {
                        codec,
                        expected: expected_len,
                        actual: payload.len(),
                    })
                }
            }
            CodecId::Zstd => {
                out.resize(start + expected_len, 0);
                self.zstd_exact(codec, payload, &mut out[start..])
            }
            CodecId::ByteGroup2Zstd | CodecId::ByteGroup4Zstd => {
                self.group(codec, payload, expected_len, out)
            }
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Decompresses `payload` into all of `dst`, which must be filled exactly.
    fn zstd_exact(&mut self, codec: CodecId, payload: &[u8], dst: &mut [u8]) -> Result<(), Error> {
        let dctx = match &mut self.dctx {
            Some(d) => d,
            None => self
                .dctx
                .insert(zstd::bulk::Decompressor::new().map_err(|e| Error::Zstd {
                    codec,
                    reason: e.to_string(),
                })?),
        };
        let expected = dst.len();
        // A slice destination caps the output: a frame that would expand past it is an error,
        // not an allocation.
        let n = dctx
            .decompress_to_buffer(payload, dst)
            .map_err(|e| Error::Zstd {
                codec,
                reason: e.to_string(),
            })?;
        if n != expected {
            return Err(Error::LengthMismatch {
                codec,
                expected,
                actual: n,
            });
        }
        Ok(())
    }

    fn group(
        &mut self,
        codec: CodecId,
        payload: &[u8],
        expected_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let width = codec.group_width().unwrap_or(2);
        let malformed = |reason| Error::Malformed {
            codec,
            len: payload.len(),
            reason,
        };
        let header_len = group_header_len(width);
        let header = payload
            .get(..header_len)
            .ok_or_else(|| malformed("shorter than its header"))?;
        let flags = header[0];
        if flags >> width != 0 {
            return Err(malformed("flags name a plane that does not exist"));
        }
        let n = expected_len / width;
        let tail_len = expected_len % width;
        let mut lens = [0usize; 4];
        let mut total = header_len + tail_len;
        for (j, len) in lens.iter_mut().enumerate().take(width) {
            let at = 1 + 4 * j;
            let mut b = [0u8; 4];
            b.copy_from_slice(&header[at..at + 4]);
            *len = u32::from_le_bytes(b) as usize;
            if flags & (1 << j) == 0 && *len != n {
                return Err(malformed("raw plane length differs from the element count"));
            }
            total = total.saturating_add(*len);
        }
        if total != payload.len() {
            return Err(malformed(
                "plane lengths do not add up to the payload length",
            ));
        }

        let mut planes = std::mem::take(&mut self.planes);
        planes.clear();
        planes.resize(n * width, 0);
        let mut at = header_len;
        let mut result = Ok(());
        for (j, &len) in lens.iter().enumerate().take(width) {
            let src = &payload[at..at + len];
            let dst = &mut planes[j * n..(j + 1) * n];
            if flags & (1 << j) == 0 {
                dst.copy_from_slice(src);
            } else if let Err(e) = self.zstd_exact(codec, src, dst) {
                result = Err(e);
                break;
            }
            at += len;
        }
        if result.is_ok() {
            merge_planes(width, &planes, out);
            out.extend_from_slice(&payload[at..]);
        }
        self.planes = planes;
        result
    }
}
