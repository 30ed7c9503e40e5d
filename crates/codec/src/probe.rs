//! Cheap compressibility probe: order-0 byte entropy of a small sample, overall and per byte
//! plane.
//!
//! A histogram over ~4 KiB costs a few microseconds where a zstd attempt on a 64 KiB random
//! chunk costs ~50-100 µs, so random-looking chunks skip zstd entirely. The per-plane
//! histograms come from the same pass and reveal float arrays: their sign/exponent plane has far
//! lower entropy than the whole.

use std::ops::Range;
use std::sync::OnceLock;

/// Bytes per sample window. Windows start at multiples of 4 so plane phases match the chunk's.
pub(crate) const SAMPLE_WINDOW: usize = 1024;
/// Windows per sample, spread over the chunk.
pub(crate) const SAMPLE_WINDOWS: usize = 4;
/// Total sample length; chunks up to this long are sampled whole.
pub(crate) const SAMPLE_LEN: usize = SAMPLE_WINDOW * SAMPLE_WINDOWS;

/// Sample windows of a chunk of `len` bytes.
pub(crate) fn sample_ranges(len: usize) -> impl Iterator<Item = Range<usize>> {
    let whole = len <= SAMPLE_LEN;
    let count = if whole { 1 } else { SAMPLE_WINDOWS };
    (0..count).map(move |k| {
        if whole {
            0..len
        } else {
            let start = (k * (len - SAMPLE_WINDOW) / (SAMPLE_WINDOWS - 1)) & !3;
            start..start + SAMPLE_WINDOW
        }
    })
}

/// Estimated order-0 entropies in bits per byte (0..=8).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probe {
    /// Whole sample.
    pub all: f32,
    /// Planes by position mod 2.
    pub two: [f32; 2],
    /// Planes by position mod 4.
    pub four: [f32; 4],
}

impl Probe {
    pub fn mean_two(&self) -> f32 {
        (self.two[0] + self.two[1]) / 2.0
    }

    pub fn mean_four(&self) -> f32 {
        self.four.iter().sum::<f32>() / 4.0
    }
}

/// `c * log2(c)` for every count a sample histogram can hold.
fn clogc_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=SAMPLE_LEN)
            .map(|c| {
                let c = c as f64;
                if c == 0.0 {
                    0.0
                } else {
                    (c * c.log2()) as f32
                }
            })
            .collect()
    })
}

/// Entropy in bits/byte of a histogram with `n` samples, with the Miller–Madow correction so
/// that small planes (1 KiB) do not look less random than the whole sample (4 KiB).
fn entropy(hist: &[u32; 256], table: &[f32]) -> f32 {
    let mut n = 0u32;
    let mut sum = 0.0f32;
    let mut nonzero = 0u32;
    for &c in hist {
        n += c;
        nonzero += u32::from(c != 0);
        sum += table.get(c as usize).copied().unwrap_or(0.0);
    }
    if n == 0 {
        return 0.0;
    }
    let n = n as f32;
    let h = n.log2() - sum / n;
    let correction = (nonzero.saturating_sub(1)) as f32 / (2.0 * n * std::f32::consts::LN_2);
    (h + correction).min(8.0)
}

fn add(a: &[u32; 256], b: &[u32; 256]) -> [u32; 256] {
    let mut out = [0u32; 256];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
    out
}

/// Histograms the sample windows of `chunk`. Plane entropies are only computed when `planes`.
pub(crate) fn probe(chunk: &[u8], planes: bool) -> Probe {
    let mut hist = [[0u32; 256]; 4];
    for r in sample_ranges(chunk.len()) {
        let window = &chunk[r];
        let mut quads = window.chunks_exact(4);
        for q in &mut quads {
            hist[0][usize::from(q[0])] += 1;
            hist[1][usize::from(q[1])] += 1;
            hist[2][usize::from(q[2])] += 1;
            hist[3][usize::from(q[3])] += 1;
        }
        for (j, &b) in quads.remainder().iter().enumerate() {
            hist[j][usize::from(b)] += 1;
        }
    }
    let table = clogc_table();
    let even = add(&hist[0], &hist[2]);
    let odd = add(&hist[1], &hist[3]);
    let all = entropy(&add(&even, &odd), table);
    if !planes {
        return Probe {
            all,
            two: [all; 2],
            four: [all; 4],
        };
    }
    Probe {
        all,
        two: [entropy(&even, table), entropy(&odd, table)],
        four: [
            entropy(&hist[0], table),
            entropy(&hist[1], table),
            entropy(&hist[2], table),
            entropy(&hist[3], table),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_windows_are_aligned_and_inside_the_chunk() {
        for len in [0, 1, 4096, 4097, 65_536, 65_539, 1 << 20] {
            let mut total = 0;
            for r in sample_ranges(len) {
                assert!(r.end <= len);
                assert_eq!(r.start % 4, 0);
                total += r.len();
            }
            assert_eq!(total, len.min(SAMPLE_LEN));
        }
    }

    #[test]
    fn entropy_of_constant_and_uniform_data() {
        let zeros = vec![0u8; 4096];
        assert!(probe(&zeros, true).all < 0.01);
        let ramp: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let p = probe(&ramp, true);
        assert!(p.all > 7.9, "{p:?}");
        // Each mod-4 plane sees only 64 distinct values: 6 bits.
        assert!((p.four[0] - 6.0).abs() < 0.2, "{p:?}");
    }
}
