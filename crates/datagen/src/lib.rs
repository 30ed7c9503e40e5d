//! Seeded generators of realistic AI data in real formats, for `strait demo`, tests and the
//! benchmark harness: JSONL text datasets, incompressible JPEG-like image shards, safetensors
//! checkpoints of bf16 weights and their next versions, dataset v2 edits.
//!
//! Pure functions of their seed: the same seed gives the same bytes on every machine.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const WORDS: &[&str] = &[
    "the",
    "model",
    "training",
    "data",
    "gradient",
    "tensor",
    "token",
    "layer",
    "attention",
    "weights",
    "batch",
    "epoch",
    "loss",
    "shard",
    "dataset",
    "checkpoint",
    "inference",
    "prompt",
    "embedding",
    "vector",
    "optimizer",
    "learning",
    "rate",
    "schedule",
    "sample",
    "label",
    "image",
    "caption",
    "sequence",
    "transformer",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "for",
    "with",
    "on",
    "that",
];

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// One JSONL record (with trailing newline) with id `id`.
pub fn jsonl_record(r: &mut impl Rng, id: u64) -> String {
    let n = r.gen_range(20..120);
    let mut text = String::with_capacity(n * 7);
    for i in 0..n {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[r.gen_range(0..WORDS.len())]);
    }
    format!(
        "{{\"id\":{id},\"text\":\"{text}\",\"label\":{},\"score\":{:.4},\"source\":\"crawl-{:04}\"}}\n",
        r.gen_range(0..10),
        r.gen::<f64>(),
        r.gen_range(0..2000)
    )
}

/// A JSONL text dataset of about `bytes` bytes (whole records).
pub fn jsonl(seed: u64, bytes: usize) -> Vec<u8> {
    let mut r = rng(seed);
    let mut out = Vec::with_capacity(bytes + 1024);
    let mut id = 0;
    while out.len() < bytes {
        out.extend_from_slice(jsonl_record(&mut r, id).as_bytes());
        id += 1;
    }
    out
}

/// Edits `fraction` of the records of a JSONL dataset (the `score` field changes), keeping the
/// rest byte-identical: a dataset version N+1 with scattered small edits.
pub fn jsonl_edit(seed: u64, data: &[u8], fraction: f64) -> Vec<u8> {
    let mut r = rng(seed ^ 0x5eed);
    let mut out = Vec::with_capacity(data.len());
    for line in data.split_inclusive(|b| *b == b'\n') {
        if r.gen_bool(fraction.clamp(0.0, 1.0)) {
            let s = String::from_utf8_lossy(line);
            if let Some(pos) = s.find("\"score\":") {
                let end = s[pos..].find(',').map(|e| pos + e).unwrap_or(s.len());
                let edited = format!("{}\"score\":{:.4}{}", &s[..pos], r.gen::<f64>(), &s[end..]);
                out.extend_from_slice(edited.as_bytes());
                continue;
            }
        }
        out.extend_from_slice(line);
    }
    out
}

/// Incompressible JPEG-like image shard of `bytes` bytes: real JPEG markers around
/// entropy-coded-looking random bytes.
pub fn jpeg_like(seed: u64, bytes: usize) -> Vec<u8> {
    let mut r = rng(seed);
    let mut out = Vec::with_capacity(bytes);
    out.extend_from_slice(&[
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0,
    ]);
    while out.len() + 2 < bytes {
        let b: u8 = r.gen();
        // Entropy-coded data never holds a bare 0xFF.
        out.push(if b == 0xFF { 0xFE } else { b });
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out.truncate(bytes.max(22));
    out
}

fn bf16(x: f32) -> [u8; 2] {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    (rounded as u16).to_le_bytes()
}

fn normal(r: &mut impl Rng) -> f32 {
    // Box-Muller.
    let u1: f32 = r.gen_range(f32::EPSILON..1.0);
    let u2: f32 = r.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Tensor contents: bf16 weights ~ N(0, 0.02), generated from `seed`.
pub fn bf16_tensor(seed: u64, elements: usize) -> Vec<u8> {
    let mut r = rng(seed);
    let mut out = Vec::with_capacity(elements * 2);
    for _ in 0..elements {
        out.extend_from_slice(&bf16(normal(&mut r) * 0.02));
    }
    out
}

/// A safetensors checkpoint: `tensors` bf16 tensors of `elements` each. Tensor `i`'s contents
/// come from seed `seeds[i]`, so a next version changes exactly the tensors whose seed changes.
pub fn safetensors_bf16(seeds: &[u64], elements: usize) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (i, _) in seeds.iter().enumerate() {
        let len = elements * 2;
        header.insert(
            format!("model.layers.{i}.weight"),
            serde_json::json!({"dtype": "BF16", "shape": [elements / 64, 64], "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for s in seeds {
        out.extend_from_slice(&bf16_tensor(*s, elements));
    }
    out
}

/// Seeds for a checkpoint of `n` tensors, version `version`: each version changes
/// `changed_fraction` of the tensors relative to the previous one.
pub fn checkpoint_seeds(seed: u64, n: usize, version: u32, changed_fraction: f64) -> Vec<u64> {
    let mut seeds: Vec<u64> = (0..n as u64)
        .map(|i| seed.wrapping_mul(1_000_003).wrapping_add(i))
        .collect();
    for v in 1..=version {
        let mut r = rng(seed ^ (v as u64) << 32);
        for s in seeds.iter_mut() {
            if r.gen_bool(changed_fraction) {
                *s = r.gen();
            }
        }
    }
    seeds
}

/// The demo's mixed sample dataset: (name, bytes) files totalling about `total` bytes:
/// 40% JSONL text, 35% bf16 safetensors, 25% JPEG-like images.
pub fn sample_dataset(seed: u64, total: usize) -> Vec<(String, Vec<u8>)> {
    let text = total * 40 / 100;
    let tensors = total * 35 / 100;
    let images = total - text - tensors;
    let elements = 1 << 20;
    let n = (tensors / (elements * 2)).max(1);
    let mut files = vec![
        ("train-00000.jsonl".to_string(), jsonl(seed, text)),
        (
            "model.safetensors".to_string(),
            safetensors_bf16(&checkpoint_seeds(seed, n, 0, 0.0), elements),
        ),
    ];
    let shard = 8 << 20;
    let mut left = images;
    let mut i = 0;
    while left > 0 {
        let sz = left.min(shard);
        files.push((
            format!("images-{i:05}.jpg"),
            jpeg_like(seed.wrapping_add(100 + i as u64), sz),
        ));
        left -= sz;
        i += 1;
    }
    files
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_deterministic_and_sized() {
        assert_eq!(jsonl(1, 10_000), jsonl(1, 10_000));
        assert_ne!(jsonl(1, 10_000), jsonl(2, 10_000));
        assert!(jsonl(1, 10_000).len() >= 10_000);
        let j = jpeg_like(3, 5000);
        assert_eq!(j.len(), 5000);
        assert_eq!(&j[..3], &[0xFF, 0xD8, 0xFF]);
    }

    #[test]
    fn safetensors_header_is_valid_json_with_offsets() {
        let f = safetensors_bf16(&[1, 2, 3], 1024);
        let hl = u64::from_le_bytes(f[..8].try_into().unwrap()) as usize;
        let h: serde_json::Value = serde_json::from_slice(&f[8..8 + hl]).unwrap();
        assert_eq!(h["model.layers.2.weight"]["data_offsets"][1], 3 * 2048);
        assert_eq!(f.len(), 8 + hl + 3 * 2048);
    }

    #[test]
    fn next_checkpoint_changes_about_the_requested_fraction() {
        let a = checkpoint_seeds(9, 1000, 0, 0.2);
        let b = checkpoint_seeds(9, 1000, 1, 0.2);
        let changed = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!((150..250).contains(&changed), "{changed}");
    }

    #[test]
    fn jsonl_edit_changes_only_some_records() {
        let a = jsonl(5, 200_000);
        let b = jsonl_edit(5, &a, 0.01);
        let la: Vec<_> = a.split(|x| *x == b'\n').collect();
        let lb: Vec<_> = b.split(|x| *x == b'\n').collect();
        assert_eq!(la.len(), lb.len());
        let diff = la.iter().zip(&lb).filter(|(x, y)| x != y).count();
        assert!(diff > 0 && diff < la.len() / 20, "{diff} of {}", la.len());
    }
}
