//! FastCDC-2020 content-defined chunking.
//!
//! Cut rule (Xia et al., "The Design of Fast Content-Defined Chunking", TPDS 2020): a gear hash
//! `h = (h << 1) + GEAR[byte]` rolls over the chunk, starting from zero at chunk offset `min`
//! (the first `min` bytes are skipped unread: no cut can fall there). The chunk ends after the
//! first byte whose hash has all bits of the mask clear, using the harder `mask_s` (log2(avg)+1
//! bits) before offset `avg` and the easier `mask_l` (log2(avg)-1 bits) after it ("normalized
//! chunking", level 1), and at `max` bytes at the latest.
//!
//! The gear hash only remembers the last 64 bytes (each byte is shifted out after 64 steps), so
//! a cut point depends on a short window of content and survives edits elsewhere.
//!
//! Speed: the scan loop rolls two bytes per step with a pre-shifted table (`GEAR_LS`) the way
//! the paper does, and adds the two table entries together before the shift-add so the
//! loop-carried dependency is one `lea`-style operation per two bytes.

use std::ops::Range;

use crate::Error;

/// Default minimum chunk length.
pub const DEFAULT_MIN: usize = 16 * 1024;
/// Default average (target) chunk length.
pub const DEFAULT_AVG: usize = 64 * 1024;
/// Default maximum chunk length.
pub const DEFAULT_MAX: usize = 256 * 1024;

/// Largest `max` a config may ask for: bounds the memory a peer must buffer per chunk.
pub const MAX_CHUNK_LEN: usize = 16 * 1024 * 1024;
/// Smallest `min`: the gear window is 64 bytes, shorter chunks would cut on too little content.
pub const MIN_MIN: usize = 64;
/// Smallest `avg` (a power of two).
pub const MIN_AVG: usize = 256;
/// Largest `avg` (a power of two).
pub const MAX_AVG: usize = 4 * 1024 * 1024;

/// Normalization level: mask_s has `log2(avg) + NC` bits, mask_l `log2(avg) - NC`.
const NORMALIZATION: u32 = 1;

/// Chunk size parameters. Both ends of a tunnel must agree on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerConfig {
    min: usize,
    avg: usize,
    max: usize,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self {
            min: DEFAULT_MIN,
            avg: DEFAULT_AVG,
            max: DEFAULT_MAX,
        }
    }
}

impl ChunkerConfig {
    /// Validates `min < avg < max`, `avg` a power of two in [`MIN_AVG`, `MAX_AVG`],
    /// `min >= MIN_MIN` and `max <= MAX_CHUNK_LEN`.
    pub fn new(min: usize, avg: usize, max: usize) -> Result<Self, Error> {
        let bad = |reason| {
            Err(Error::InvalidConfig {
                min,
                avg,
                max,
                reason,
            })
        };
        if min < MIN_MIN {
            return bad("min must be at least 64 bytes");
        }
        if !avg.is_power_of_two() {
            return bad("avg must be a power of two");
        }
        if !(MIN_AVG..=MAX_AVG).contains(&avg) {
            return bad("avg must be between 256 bytes and 4 MiB");
        }
        if !(min < avg && avg < max) {
            return bad("sizes must satisfy min < avg < max");
        }
        if max > MAX_CHUNK_LEN {
            return bad("max must be at most 16 MiB");
        }
        Ok(Self { min, avg, max })
    }

    /// Minimum chunk length (every chunk but the last of a stream is at least this long).
    pub fn min(&self) -> usize {
        self.min
    }

    /// Average (target) chunk length.
    pub fn avg(&self) -> usize {
        self.avg
    }

    /// Maximum chunk length.
    pub fn max(&self) -> usize {
        self.max
    }

    fn masks(&self) -> (u64, u64) {
        let bits = self.avg.trailing_zeros();
        (
            spread_mask(bits + NORMALIZATION),
            spread_mask(bits - NORMALIZATION),
        )
    }
}

/// A mask with `n` one bits spread evenly over bits 14..=62.
///
/// High bits of a gear hash depend on more bytes than low bits (bit k sees the last k+1 bytes),
/// so spreading the mask widens the effective window, as FastCDC recommends. Bit 63 stays clear
/// so that `mask << 1` loses nothing (the two-byte loop tests the shifted mask).
const fn spread_mask(n: u32) -> u64 {
    const TOP: u32 = 62;
    const SPAN: u32 = 48;
    if n == 0 {
        return 0;
    }
    if n == 1 {
        return 1 << TOP;
    }
    let mut mask = 0u64;
    let mut i = 0;
    while i < n {
        mask |= 1 << (TOP - i * SPAN / (n - 1));
        i += 1;
    }
    mask
}

/// SplitMix64 step: a fixed, documented generator for the gear table, so the table is
/// reproducible from this file alone.
const fn splitmix64(state: u64) -> (u64, u64) {
    let state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (state, z ^ (z >> 31))
}

/// Seed of the gear table. Changing it (or the generator) moves every cut point: peers running
/// different tables share no chunks.
const GEAR_SEED: u64 = 0x5354_5241_4954_4344; // "STRAITCD"

const fn gear_table(shift: u32) -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state = GEAR_SEED;
    let mut i = 0;
    while i < 256 {
        let (next, value) = splitmix64(state);
        state = next;
        table[i] = value << shift;
        i += 1;
    }
    table
}

static GEAR: [u64; 256] = gear_table(0);
static GEAR_LS: [u64; 256] = gear_table(1);

/// Rolls the gear hash over `data`, testing `mask` after every byte.
///
/// Returns `Some(k)` if the byte `data[k - 1]` completes a cut (the chunk takes `k` bytes of
/// `data`); otherwise updates `hash` and returns `None`.
#[inline(always)]
fn scan(data: &[u8], hash: &mut u64, mask: u64) -> Option<usize> {
    let mask_ls = mask << 1;
    let mut h = *hash;
    let mut pairs = data.chunks_exact(2);
    let mut done = 0usize;
    for pair in &mut pairs {
        let a = GEAR_LS[usize::from(pair[0])];
        let b = GEAR[usize::from(pair[1])];
        // (h << 2) + a is the hash after the first byte, shifted left by one: test it with the
        // shifted mask instead of shifting back.
        h = (h << 2).wrapping_add(a);
        if h & mask_ls == 0 {
            return Some(done + 1);
        }
        h = h.wrapping_add(b);
        if h & mask == 0 {
            return Some(done + 2);
        }
        done += 2;
    }
    if let [last] = pairs.remainder() {
        h = (h << 1).wrapping_add(GEAR[usize::from(*last)]);
        if h & mask == 0 {
            return Some(done + 1);
        }
    }
    *hash = h;
    None
}

/// Streaming FastCDC chunker. Feed consecutive pieces of one stream to [`Chunker::next_boundary`].
#[derive(Clone, Debug)]
pub struct Chunker {
    cfg: ChunkerConfig,
    mask_s: u64,
    mask_l: u64,
    /// Bytes of the current chunk consumed so far.
    pending: usize,
    /// Gear hash over the consumed bytes from offset `min` on.
    hash: u64,
}

impl Chunker {
    /// A chunker at the start of a stream.
    pub fn new(cfg: ChunkerConfig) -> Self {
        let (mask_s, mask_l) = cfg.masks();
        Self {
            cfg,
            mask_s,
            mask_l,
            pending: 0,
            hash: 0,
        }
    }

    /// The config this chunker cuts with.
    pub fn config(&self) -> ChunkerConfig {
        self.cfg
    }

    /// `data` continues the stream right after the bytes previously consumed.
    ///
    /// Returns `Some(n)` (with `1 <= n <= data.len()`): the current chunk ends after `data[..n]`;
    /// the state resets and the next call must continue at `data[n..]`. Returns `None`: all of
    /// `data` belongs to the current chunk and no cut was found yet (state kept).
    pub fn next_boundary(&mut self, data: &[u8]) -> Option<usize> {
        let ChunkerConfig { min, avg, max } = self.cfg;
        let mut pos = 0usize;

        // No cut can fall before `min`: skip those bytes without reading them.
        if self.pending < min {
            let skip = (min - self.pending).min(data.len());
            self.pending += skip;
            pos = skip;
            if self.pending < min {
                return None;
            }
        }

        for (limit, mask) in [(avg, self.mask_s), (max, self.mask_l)] {
            if self.pending >= limit {
                continue;
            }
            let n = (limit - self.pending).min(data.len() - pos);
            let region = &data[pos..pos + n];
            if let Some(k) = scan(region, &mut self.hash, mask) {
                self.reset();
                return Some(pos + k);
            }
            self.pending += n;
            pos += n;
            if self.pending < limit {
                return None;
            }
        }

        // Reached `max` without a content cut: force one.
        self.reset();
        Some(pos)
    }

    /// Forgets the current partial chunk (the caller forced a cut, e.g. at end of stream).
    pub fn reset(&mut self) {
        self.pending = 0;
        self.hash = 0;
    }

    /// Bytes in the current chunk so far.
    pub fn pending(&self) -> usize {
        self.pending
    }
}

/// Chunks a whole buffer. The last range may be shorter than `min`; ranges are contiguous and
/// cover `data` exactly.
pub fn chunk_boundaries(cfg: ChunkerConfig, data: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(data.len() / cfg.avg + 1);
    let mut chunker = Chunker::new(cfg);
    let mut start = 0;
    while start < data.len() {
        match chunker.next_boundary(&data[start..]) {
            Some(n) => {
                out.push(start..start + n);
                start += n;
            }
            None => {
                out.push(start..data.len());
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_have_the_normalized_bit_counts() {
        let (s, l) = ChunkerConfig::default().masks();
        assert_eq!(s.count_ones(), 17);
        assert_eq!(l.count_ones(), 15);
        for n in 1..=24 {
            let m = spread_mask(n);
            assert_eq!(m.count_ones(), n);
            assert_eq!(m >> 63, 0);
        }
    }

    #[test]
    fn gear_tables_are_shifted_copies() {
        for i in 0..256 {
            assert_eq!(GEAR_LS[i], GEAR[i] << 1);
        }
        // The table must not contain duplicates or trivially weak entries.
        let mut sorted = GEAR.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }

    #[test]
    fn two_byte_scan_matches_the_byte_at_a_time_definition() {
        let mask = spread_mask(6);
        let data: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut start = 0;
        while start < data.len() {
            let mut h = 0u64;
            let got = scan(&data[start..], &mut h, mask);
            let mut r = 0u64;
            let mut want = None;
            for (i, &b) in data[start..].iter().enumerate() {
                r = (r << 1).wrapping_add(GEAR[usize::from(b)]);
                if r & mask == 0 {
                    want = Some(i + 1);
                    break;
                }
            }
            assert_eq!(got, want);
            match got {
                Some(k) => start += k,
                None => {
                    assert_eq!(h, r);
                    break;
                }
            }
        }
    }
}
