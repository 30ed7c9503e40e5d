//! Seeded synthetic data for tests and benchmarks: model-weight-like floats, JSONL text and
//! random bytes. Dependency-free so benches and other crates' tests can share it.

/// SplitMix64: small, fast and good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Weight-like standard deviation.
pub const WEIGHT_STD: f64 = 0.02;

/// `len` random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

fn normal_f32s(seed: u64, count: usize) -> impl Iterator<Item = f32> {
    let mut rng = Rng::new(seed);
    (0..count).map(move |_| (rng.normal() * WEIGHT_STD) as f32)
}

/// `count` fp32 weights ~ N(0, 0.02²), little-endian.
pub fn fp32_weights(seed: u64, count: usize) -> Vec<u8> {
    normal_f32s(seed, count)
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

/// f32 → bf16 with round-to-nearest-even (NaN not produced by the generator).
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// `count` bf16 weights ~ N(0, 0.02²), little-endian.
pub fn bf16_weights(seed: u64, count: usize) -> Vec<u8> {
    normal_f32s(seed, count)
        .flat_map(|x| f32_to_bf16(x).to_le_bytes())
        .collect()
}

/// f32 → IEEE half with round-to-nearest (ties away), subnormals kept, overflow to infinity.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let a = x.abs();
    if a >= 65520.0 {
        return sign | 0x7C00;
    }
    if a < 6.103_515_6e-5 {
        // Subnormal: units of 2^-24.
        let m = (a * 16_777_216.0).round() as u16;
        return sign | m;
    }
    let exp = ((bits >> 23) & 0xFF) as i32 - 127 + 15;
    let mant = bits & 0x7F_FFFF;
    let mut h = ((exp as u32) << 10) | (mant >> 13);
    if mant & 0x1000 != 0 {
        h += 1; // carries into the exponent correctly
    }
    sign | h as u16
}

/// `count` fp16 weights ~ N(0, 0.02²), little-endian.
pub fn fp16_weights(seed: u64, count: usize) -> Vec<u8> {
    normal_f32s(seed, count)
        .flat_map(|x| f32_to_f16(x).to_le_bytes())
        .collect()
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "token",
    "answer",
    "question",
    "please",
    "explain",
    "data",
    "network",
    "latency",
    "gradient",
    "weights",
    "prompt",
    "user",
    "assistant",
    "system",
    "cluster",
    "training",
    "inference",
    "batch",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "with",
    "on",
    "that",
    "this",
    "throughput",
    "loss",
    "epoch",
    "checkpoint",
    "shard",
    "vector",
    "embedding",
];

/// About `len` bytes of chat-style JSONL (cut to exactly `len`).
pub fn jsonl_text(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 512);
    let mut id = rng.below(1_000_000);
    while out.len() < len {
        let role = ["user", "assistant", "system"][rng.below(3)];
        out.extend_from_slice(
            format!(
                "{{\"id\":{id},\"role\":\"{role}\",\"score\":{:.4},\"content\":\"",
                rng.unit()
            )
            .as_bytes(),
        );
        for w in 0..(4 + rng.below(40)) {
            if w > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
        }
        out.extend_from_slice(b"\"}\n");
        id += 1 + rng.below(3);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions_match_known_values() {
        assert_eq!(f32_to_f16(1.0), 0x3C00);
        assert_eq!(f32_to_f16(-2.0), 0xC000);
        assert_eq!(f32_to_f16(0.0), 0);
        assert_eq!(f32_to_f16(5.960_464_5e-8), 1);
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        assert_eq!(f32_to_bf16(-0.5), 0xBF00);
    }

    #[test]
    fn weights_have_the_requested_spread() {
        let w = fp32_weights(1, 10_000);
        let xs: Vec<f32> = w
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let var = xs.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            (var.sqrt() - WEIGHT_STD).abs() < 0.002,
            "std {}",
            var.sqrt()
        );
    }
}
