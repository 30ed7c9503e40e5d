//! Chunk encoder: probe, pick a codec, compress with reused zstd contexts.

use crate::planes::split_planes;
use crate::probe::{probe, sample_ranges, Probe, SAMPLE_LEN};
use crate::{CodecId, CompressConfig, Error, MAX_KEPT_PERMILLE, MIN_COMPRESS_LEN};

/// Below this sample entropy (bits/byte) order-0 coding alone predicts ≥ 6 % savings: run zstd.
const ZSTD_WORTH_BITS: f32 = 7.5;
/// A byte plane at or above this entropy is stored raw without a zstd attempt.
const RAW_PLANE_BITS: f32 = 7.6;
/// Byte grouping must beat the interleaved entropy by this many bits/byte (~4 % of 8 bits):
/// on data that is not float-like, grouping destroys the long matches zstd lives on.
const GROUP_MARGIN_BITS: f32 = 0.35;
/// Float arrays have at least one mantissa plane that looks random; requiring one keeps text
/// and periodic records (whose planes are all low-entropy) on plain zstd, which finds the long
/// matches that grouping would break.
const MANTISSA_PLANE_BITS: f32 = 7.0;
/// Width 4 is chosen over width 2 only when it wins by this much (bf16 data looks equally
/// good at width 4, and width 2 has half the planes to manage).
const WIDTH4_MARGIN_BITS: f32 = 0.1;
/// The LZ probe (zstd on the sample, run only on high-entropy samples) must save this many
/// thousandths for the whole chunk to be compressed.
const LZ_PROBE_KEPT_PERMILLE: usize = 940;

/// Header of a byte-grouped payload: a flags byte (bit j: plane j is zstd), then one u32 LE
/// payload length per plane, then the plane payloads, then the `len % width` tail bytes raw.
pub(crate) const fn group_header_len(width: usize) -> usize {
    1 + 4 * width
}

/// Largest payload worth sending instead of `len` raw bytes.
fn max_kept(len: usize) -> usize {
    len * MAX_KEPT_PERMILLE / 1000
}

/// What the probe decided.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    Zstd,
    LzProbe,
    Group { width: usize, raw_planes: u8 },
}

fn plan(p: &Probe, tensor: bool) -> Plan {
    if tensor {
        let h2 = p.mean_two();
        let h4 = p.mean_four();
        let (width, h, planes): (usize, f32, &[f32]) = if h4 + WIDTH4_MARGIN_BITS < h2 {
            (4, h4, &p.four)
        } else {
            (2, h2, &p.two)
        };
        let has_mantissa = planes.iter().any(|&pe| pe >= MANTISSA_PLANE_BITS);
        if has_mantissa && h + GROUP_MARGIN_BITS <= p.all && h < ZSTD_WORTH_BITS {
            let mut raw_planes = 0u8;
            for (j, &pe) in planes.iter().enumerate() {
                if pe >= RAW_PLANE_BITS {
                    raw_planes |= 1 << j;
                }
            }
            return Plan::Group { width, raw_planes };
        }
    }
    if p.all < ZSTD_WORTH_BITS {
        Plan::Zstd
    } else {
        Plan::LzProbe
    }
}

/// Decision counters of one [`Encoder`], for metrics and for tests that prove CPU is not wasted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncoderStats {
    /// Chunks passed to [`Encoder::encode`].
    pub chunks: u64,
    /// Chunks sent Raw because the probe judged them incompressible (no zstd on the chunk).
    pub raw_by_probe: u64,
    /// Whole-chunk compression attempts (plain zstd or byte-grouped).
    pub attempts: u64,
    /// Attempts whose result was not small enough, so the chunk went Raw anyway.
    pub attempts_rejected: u64,
}

/// Compression contexts (with their buffers) kept per thread between [`Encoder::encode`] calls.
/// An encoder holds its context only during a call: a thousand flows then share the runtime's
/// few threads' contexts instead of holding ~1-2 MiB each (a zstd level-3 context for 256 KiB
/// chunks, plus the plane context and scratch buffers).
pub const POOLED_ENCODERS_PER_THREAD: usize = 4;

/// What an encoder borrows from its thread for the length of one call.
struct Pooled {
    level: i32,
    cctx: zstd::bulk::Compressor<'static>,
    plane_cctx: Option<zstd::bulk::Compressor<'static>>,
    scratch: Vec<u8>,
    planes: Vec<u8>,
}

thread_local! {
    static POOL: std::cell::RefCell<Vec<Pooled>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Contexts pooled on the calling thread (for tests of the bound).
pub fn pooled_encoders() -> usize {
    POOL.with(|p| p.borrow().len())
}

/// Encodes chunks. Borrows a zstd compression context from its thread's pool for each call
/// ([`POOLED_ENCODERS_PER_THREAD`]), so an idle encoder holds no context and no buffers.
pub struct Encoder {
    cfg: CompressConfig,
    stats: EncoderStats,
    /// `None` when compression is off or the context could not be created (then every chunk is
    /// Raw: a missing compressor must never stop data from flowing).
    cctx: Option<zstd::bulk::Compressor<'static>>,
    /// Context tuned for byte planes, created on first use.
    plane_cctx: Option<zstd::bulk::Compressor<'static>>,
    /// zstd output before it is known to be worth keeping.
    scratch: Vec<u8>,
    /// Byte planes of the chunk, or the concatenated probe sample.
    planes: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("cfg", &self.cfg)
            .field("zstd", &self.cctx.is_some())
            .finish()
    }
}

impl Encoder {
    /// An encoder for `cfg`.
    pub fn new(cfg: CompressConfig) -> Self {
        Self {
            cfg,
            stats: EncoderStats::default(),
            cctx: None,
            plane_cctx: None,
            scratch: Vec::new(),
            planes: Vec::new(),
        }
    }

    /// The config this encoder follows.
    pub fn config(&self) -> CompressConfig {
        self.cfg
    }

    /// Decision counters since creation.
    pub fn stats(&self) -> EncoderStats {
        self.stats
    }

    /// Appends the payload of `chunk` to `out` and returns the codec used.
    ///
    /// Raw payloads are exactly `chunk`; a compressed payload is only chosen when it is at most
    /// [`MAX_KEPT_PERMILLE`]‰ of the chunk. Chunks longer than [`crate::MAX_CHUNK_LEN`] are
    /// encoded, but no [`crate::Decoder`] accepts them: the chunker never produces them.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> CodecId {
        self.stats.chunks += 1;
        if chunk.len() < MIN_COMPRESS_LEN || self.cfg.level.is_none() {
            out.extend_from_slice(chunk);
            return CodecId::Raw;
        }
        self.checkout();
        let codec = self.encode_borrowed(chunk, out);
        self.checkin();
        codec
    }

    /// Takes a context for this encoder's level from the thread's pool (or makes one).
    fn checkout(&mut self) {
        let Some(level) = self.cfg.level else {
            return;
        };
        if self.cctx.is_some() {
            return;
        }
        let pooled = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let i = p.iter().position(|c| c.level == level)?;
            Some(p.swap_remove(i))
        });
        match pooled {
            Some(c) => {
                self.cctx = Some(c.cctx);
                self.plane_cctx = c.plane_cctx;
                self.scratch = c.scratch;
                self.planes = c.planes;
            }
            // A context that cannot be made leaves `cctx` empty: the chunk goes Raw.
            None => self.cctx = zstd::bulk::Compressor::new(level).ok(),
        }
    }

    /// Gives the context and buffers back to the thread's pool (dropped when it is full).
    fn checkin(&mut self) {
        let (Some(level), Some(cctx)) = (self.cfg.level, self.cctx.take()) else {
            return;
        };
        let c = Pooled {
            level,
            cctx,
            plane_cctx: self.plane_cctx.take(),
            scratch: std::mem::take(&mut self.scratch),
            planes: std::mem::take(&mut self.planes),
        };
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOLED_ENCODERS_PER_THREAD {
                p.push(c);
            }
        });
    }

    /// [`Encoder::encode`] with the context checked out.
    fn encode_borrowed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> CodecId {
        if self.cctx.is_none() {
            out.extend_from_slice(chunk);
            return CodecId::Raw;
        }
        let p = probe(chunk, self.cfg.tensor);
        let plan = match plan(&p, self.cfg.tensor) {
            Plan::LzProbe if !self.sample_compresses(chunk) => None,
            Plan::LzProbe => Some(Plan::Zstd),
            other => Some(other),
        };
        let codec = match plan {
            None => {
                self.stats.raw_by_probe += 1;
                None
            }
            Some(plan) => {
                self.stats.attempts += 1;
                let codec = match plan {
                    Plan::Group { width, raw_planes } => {
                        self.try_group(chunk, width, raw_planes, out)
                    }
                    Plan::Zstd | Plan::LzProbe => self.try_zstd(chunk, out),
                };
                if codec.is_none() {
                    self.stats.attempts_rejected += 1;
                }
                codec
            }
        };
        codec.unwrap_or_else(|| {
            out.extend_from_slice(chunk);
            CodecId::Raw
        })
    }

    /// Encodes `chunk` with exactly `codec` (no probe, no Raw fallback). For tests, benchmarks
    /// and tools; the payload may be larger than the chunk.
    pub fn encode_as(
        &mut self,
        codec: CodecId,
        chunk: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let level = self.cfg.level.unwrap_or(crate::DEFAULT_LEVEL);
        if self.cctx.is_none() {
            self.cctx = Some(zstd::bulk::Compressor::new(level).map_err(|e| zstd_err(codec, e))?);
        }
        match codec {
            CodecId::Raw => {
                out.extend_from_slice(chunk);
                Ok(())
            }
            CodecId::Zstd => {
                let bound = zstd::zstd_safe::compress_bound(chunk.len());
                let n = self
                    .compress_into_scratch(chunk, bound)
                    .map_err(|e| zstd_err(codec, e))?;
                out.extend_from_slice(&self.scratch[..n]);
                Ok(())
            }
            CodecId::ByteGroup2Zstd | CodecId::ByteGroup4Zstd => {
                let width = codec.group_width().unwrap_or(2);
                self.write_group(chunk, width, 0, usize::MAX, out)
                    .map_err(|e| zstd_err(codec, e))
            }
        }
    }

    /// Compresses `src` with the main context into `self.scratch[..n]` and returns `n`.
    fn compress_into_scratch(&mut self, src: &[u8], limit: usize) -> std::io::Result<usize> {
        let cctx = self
            .cctx
            .as_mut()
            .ok_or_else(|| std::io::Error::other("compression is off"))?;
        compress_limited(cctx, src, limit, &mut self.scratch)
    }

    /// Compresses a byte plane with the plane context into `self.scratch[..n]`.
    fn compress_plane(&mut self, src: &[u8], limit: usize) -> std::io::Result<usize> {
        if self.plane_cctx.is_none() {
            self.plane_cctx = Some(plane_compressor()?);
        }
        let cctx = self
            .plane_cctx
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no plane context"))?;
        compress_limited(cctx, src, limit, &mut self.scratch)
    }

    fn try_zstd(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Option<CodecId> {
        let limit = max_kept(chunk.len());
        let n = self.compress_into_scratch(chunk, limit).ok()?;
        out.extend_from_slice(&self.scratch[..n]);
        Some(CodecId::Zstd)
    }

    /// zstd on the concatenated sample windows: catches long repeats in data whose byte
    /// histogram looks random. Skipped when the sample is the whole chunk.
    fn sample_compresses(&mut self, chunk: &[u8]) -> bool {
        if chunk.len() <= SAMPLE_LEN {
            return true;
        }
        let mut sample = std::mem::take(&mut self.planes);
        sample.clear();
        for r in sample_ranges(chunk.len()) {
            sample.extend_from_slice(&chunk[r]);
        }
        let limit = sample.len() * LZ_PROBE_KEPT_PERMILLE / 1000;
        let ok = self.compress_into_scratch(&sample, limit).is_ok();
        self.planes = sample;
        ok
    }

    fn try_group(
        &mut self,
        chunk: &[u8],
        width: usize,
        raw_planes: u8,
        out: &mut Vec<u8>,
    ) -> Option<CodecId> {
        let start = out.len();
        let limit = max_kept(chunk.len());
        match self.write_group(chunk, width, raw_planes, limit, out) {
            Ok(()) if out.len() - start <= limit => Some(if width == 4 {
                CodecId::ByteGroup4Zstd
            } else {
                CodecId::ByteGroup2Zstd
            }),
            _ => {
                out.truncate(start);
                None
            }
        }
    }

    /// Writes a byte-grouped payload. Planes flagged in `raw_planes` are stored raw; others are
    /// compressed and kept only if they shrink below [`MAX_KEPT_PERMILLE`]‰. Fails once the
    /// payload would exceed `limit`.
    fn write_group(
        &mut self,
        chunk: &[u8],
        width: usize,
        raw_planes: u8,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let start = out.len();
        let n = chunk.len() / width;
        let mut planes = std::mem::take(&mut self.planes);
        split_planes(width, chunk, &mut planes);
        out.push(0);
        out.resize(start + group_header_len(width), 0);
        let mut flags = 0u8;
        let mut result = Ok(());
        for j in 0..width {
            let plane = &planes[j * n..(j + 1) * n];
            let compressed = if raw_planes & (1 << j) == 0 {
                self.compress_plane(plane, max_kept(n)).ok()
            } else {
                None
            };
            let stored = match compressed {
                Some(c) => {
                    flags |= 1 << j;
                    out.extend_from_slice(&self.scratch[..c]);
                    c
                }
                None => {
                    out.extend_from_slice(plane);
                    n
                }
            };
            let at = start + 1 + 4 * j;
            // Plane lengths are at most MAX_CHUNK_LEN in practice; saturate rather than wrap.
            let stored32 = u32::try_from(stored).unwrap_or(u32::MAX);
            out[at..at + 4].copy_from_slice(&stored32.to_le_bytes());
            if out.len() - start > limit {
                result = Err(std::io::Error::other("byte-grouped payload over limit"));
                break;
            }
        }
        self.planes = planes;
        result?;
        out[start] = flags;
        out.extend_from_slice(&chunk[n * width..]);
        Ok(())
    }
}

/// Compresses `src` into `scratch[..n]`, failing if the result exceeds `limit` bytes (zstd
/// stops as soon as the destination is full, which also bounds wasted work).
fn compress_limited(
    cctx: &mut zstd::bulk::Compressor<'static>,
    src: &[u8],
    limit: usize,
    scratch: &mut Vec<u8>,
) -> std::io::Result<usize> {
    // Vec's WriteBuf writes from index 0 up to the capacity, so write into a slice view of
    // exactly `limit` bytes; the buffer only grows (no zeroing on every call).
    if scratch.len() < limit {
        scratch.resize(limit, 0);
    }
    cctx.compress_to_buffer(src, &mut scratch[..limit])
}

/// Context for exponent-like byte planes. Their value is in order-0 (Huffman) coding; matches
/// are short and many, so match finding costs time and even loses ratio. Level 1 with the
/// longest minimum match and a tiny hash table measured (bf16 sign/exponent plane, 32 KiB):
/// default level 1 ×2.64 at 290 MB/s, these settings ×2.93 at 820 MB/s.
fn plane_compressor() -> std::io::Result<zstd::bulk::Compressor<'static>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(1)?;
    c.set_parameter(CParameter::MinMatch(7))?;
    c.set_parameter(CParameter::HashLog(6))?;
    c.set_parameter(CParameter::ChainLog(6))?;
    Ok(c)
}

fn zstd_err(codec: CodecId, e: std::io::Error) -> Error {
    Error::Zstd {
        codec,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_probe_plans_lz_probe_and_text_plans_zstd() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let random: Vec<u8> = (0..65_536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(plan(&probe(&random, true), true), Plan::LzProbe);
        let text = b"{\"role\":\"user\",\"content\":\"hello there\"}\n".repeat(2000);
        assert_eq!(plan(&probe(&text, true), true), Plan::Zstd);
        let jsonl = crate::testdata::jsonl_text(1, 65_536);
        assert_eq!(plan(&probe(&jsonl, true), true), Plan::Zstd);
        let bf16 = crate::testdata::bf16_weights(1, 32_768);
        assert!(matches!(
            plan(&probe(&bf16, true), true),
            Plan::Group {
                width: 2,
                raw_planes: 1
            }
        ));
        let fp32 = crate::testdata::fp32_weights(1, 16_384);
        assert!(matches!(
            plan(&probe(&fp32, true), true),
            Plan::Group { width: 4, .. }
        ));
        assert_eq!(plan(&probe(&bf16, false), false), Plan::Zstd);
    }

    #[test]
    fn encoder_and_decoder_are_send() {
        fn is_send<T: Send>() {}
        is_send::<Encoder>();
        is_send::<crate::Decoder>();
    }
}
