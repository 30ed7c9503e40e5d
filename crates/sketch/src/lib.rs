//! Near-duplicate machinery: resemblance sketches of chunks, a bounded in-memory index from
//! sketch to chunk id, and the delta codec (zstd with base chunks as a raw-content prefix).
//!
//! Owns: how a chunk is summarised ([`sketch`]), which recently seen chunk resembles a new one
//! ([`SketchIndex`]), the order chunks crossed in per peer (its chain, used to name bases in
//! one byte), and how a chunk is coded against base chunks ([`DeltaEncoder`],
//! [`DeltaDecoder`]). Never does: I/O, clocks, stores, or knowledge of peers beyond an opaque
//! slot number keying the chain. Whether a candidate
//! base may be used for a peer (isolation) and whether delta bytes hash to the chunk id
//! (integrity) are decided by the caller (`strait-dedup`); this crate only proposes candidates
//! and turns bytes into bytes.
//!
//! ```text
//!  chunk ─► sketch(): 12 sampled regions (6 anchored at the start, 6 at the end)
//!             (every 2 KiB over the first and the last 10.5 KiB)
//!             feature = max over a region of a per-region transform of 8-byte windows
//!             super-feature k = mix(features 3k..3k+3)              (4 per chunk)
//!        ─► SketchIndex::candidates(): chunks sharing super-features, most shared first
//!        ─► DeltaEncoder::encode(prefix = base bytes, chunk) ─► zstd frame
//! ```
//!
//! Why sampled regions and not a rolling hash over every byte: the encoder must stay within 10 %
//! of its speed on data without near-duplicates, and a second full pass over every byte would
//! cost a third of it. Chunk boundaries are content-defined, so offsets measured from a chunk's
//! start or end are content-aligned; a max over a 256-byte region tolerates small shifts from
//! insertions; anchoring half the regions at the end keeps them aligned after an insertion in
//! the middle. The sketch reads [`REGIONS`] × [`REGION_LEN`] = 3 KiB of a chunk, whatever its
//! size.

mod chain;
mod delta;
mod index;
mod snapshot;

pub use chain::{id_prefix, CHAIN_ENTRY_BYTES, MAX_CHAIN_STEPS};
pub use delta::{DeltaDecoder, DeltaEncoder, MAX_PREFIX_LEN, MAX_WINDOW_LOG};
pub use index::{IndexStats, SketchIndex, DEFAULT_INDEX_BYTES, ENTRY_BYTES, MIN_INDEX_BYTES};
pub use snapshot::{Restored, SnapshotError};

/// Super-features per sketch.
pub const SUPER_FEATURES: usize = 4;
/// Features combined into one super-feature.
pub const FEATURES_PER_SUPER: usize = 3;
/// Sampled regions per chunk (half anchored at the start, half at the end).
pub const REGIONS: usize = SUPER_FEATURES * FEATURES_PER_SUPER;
/// Bytes of one sampled region.
pub const REGION_LEN: usize = 256;
/// Bytes hashed at each position of a region.
pub const WINDOW: usize = 8;
/// Distance between consecutive regions anchored at the same end of a chunk: the sketch samples
/// the first and the last `5 × REGION_STEP + REGION_LEN` bytes (10.5 KiB) of a chunk.
pub const REGION_STEP: usize = 2048;
/// Chunks shorter than this get no sketch (and so are never delta-coded).
pub const MIN_SKETCH_LEN: usize = 2048;

/// A chunk's resemblance sketch: two chunks sharing super-features are likely near-duplicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sketch(pub [u64; SUPER_FEATURES]);

impl Sketch {
    /// Number of super-features two sketches share (position by position).
    pub fn shared(&self, other: &Sketch) -> usize {
        self.0
            .iter()
            .zip(other.0.iter())
            .filter(|(a, b)| a == b)
            .count()
    }
}

/// Odd multipliers, one per region: each region's feature is the max under its own transform,
/// so regions holding the same bytes still give unrelated features.
const TRANSFORMS: [u64; REGIONS] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0x85EB_CA77_C2B2_AE63,
    0x27D4_EB2F_1656_67C5,
    0xD6E8_FEB8_6659_FD93,
    0xA076_1D64_78BD_642F,
    0xE703_7ED1_A0B4_28DB,
    0x8EBC_6AF0_9C88_C6E3,
    0x5899_65CC_7537_4CC3,
    0x1D8E_4E27_C47D_124F,
    0xFF51_AFD7_ED55_8CCD,
];

#[inline]
fn mix(x: u64) -> u64 {
    // splitmix64 finaliser: every input bit reaches every output bit.
    let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn region_feature(region: &[u8], transform: u64) -> u64 {
    let mut best = 0u64;
    for w in region.windows(WINDOW) {
        let mut a = [0u8; WINDOW];
        a.copy_from_slice(w);
        let x = u64::from_le_bytes(a).wrapping_mul(transform);
        // Fold the high bits down so the max is decided by all 8 bytes, not just the last ones.
        let h = x ^ (x >> 29);
        best = best.max(h);
    }
    best
}

/// The sketch of `data`, or `None` when it is shorter than [`MIN_SKETCH_LEN`].
pub fn sketch(data: &[u8]) -> Option<Sketch> {
    let n = data.len();
    if n < MIN_SKETCH_LEN {
        return None;
    }
    let per_side = REGIONS / 2;
    let mut features = [0u64; REGIONS];
    for (i, f) in features.iter_mut().enumerate() {
        // Offsets do not depend on the chunk's length: a chunk whose start (or end) moved still
        // shares the regions anchored at the end (or start) with its old version.
        let start = if i < per_side {
            (i * REGION_STEP).min(n - REGION_LEN)
        } else {
            (n - REGION_LEN).saturating_sub((i - per_side) * REGION_STEP)
        };
        *f = region_feature(&data[start..start + REGION_LEN], TRANSFORMS[i]);
    }
    let mut sf = [0u64; SUPER_FEATURES];
    for (k, s) in sf.iter_mut().enumerate() {
        let mut acc = k as u64;
        for f in &features[k * FEATURES_PER_SUPER..(k + 1) * FEATURES_PER_SUPER] {
            acc = mix(acc ^ *f);
        }
        *s = acc;
    }
    Some(Sketch(sf))
}

/// Errors of the delta codec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The bases together are longer than the codec accepts.
    #[error("delta prefix length {len} exceeds limit {max}")]
    PrefixTooLong {
        /// Total base bytes.
        len: usize,
        /// [`MAX_PREFIX_LEN`].
        max: usize,
    },
    /// The expected output length is over the cap.
    #[error("delta output length {len} exceeds limit {max}")]
    OutputTooLong {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// zstd refused the input or the payload.
    #[error("delta zstd error: {reason}")]
    Zstd {
        /// zstd's message.
        reason: &'static str,
    },
    /// The payload decoded to another length than announced.
    #[error("delta payload decodes to {actual} bytes, expected {expected}")]
    LengthMismatch {
        /// Announced length.
        expected: usize,
        /// Length produced.
        actual: usize,
    },
}

#[cfg(test)]
mod tests;
