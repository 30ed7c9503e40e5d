//! Dedup of two versions of a checkpoint (and of a tar shard) with plain content-defined cuts vs
//! cuts also aligned at tensor / member boundaries (`strait_classify::cuts`). Prints a table.
//!
//! `cargo bench -p strait-benches --bench format_cuts`
#![allow(clippy::unwrap_used)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use strait_chunk::{Chunker, ChunkerConfig};

/// Chunk ranges of `data` in 256 KiB reads, optionally cutting at format boundaries — the same
/// loop the encoder runs.
fn chunks(data: &[u8], aligned: bool) -> Vec<std::ops::Range<usize>> {
    let mut ch = Chunker::new(ChunkerConfig::default());
    let mut cuts = strait_classify::cuts::FormatCuts::new();
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut pos = 0usize;
    for read in data.chunks(256 << 10) {
        if aligned {
            cuts.observe(read);
        }
        let mut rest = read;
        while !rest.is_empty() {
            let to_cut = if aligned {
                cuts.next_cut_after(pos as u64)
                    .map(|c| (c - pos as u64) as usize)
                    .filter(|d| *d <= rest.len())
            } else {
                None
            };
            let slice = &rest[..to_cut.unwrap_or(rest.len())];
            match ch.next_boundary(slice) {
                Some(n) => {
                    pos += n;
                    out.push(start..pos);
                    start = pos;
                    rest = &rest[n..];
                }
                None => {
                    pos += slice.len();
                    rest = &rest[slice.len()..];
                    if to_cut.is_some() && pos > start {
                        // Reached a record boundary: cut here and restart content-defined cuts.
                        out.push(start..pos);
                        start = pos;
                        ch.reset();
                    }
                }
            }
        }
    }
    if start < data.len() {
        out.push(start..data.len());
    }
    out
}

fn dedup_fraction(v1: &[u8], v2: &[u8], aligned: bool) -> (f64, usize) {
    let h = |d: &[u8]| *blake3::hash(d).as_bytes();
    let known: HashSet<[u8; 32]> = chunks(v1, aligned).into_iter().map(|r| h(&v1[r])).collect();
    let c2 = chunks(v2, aligned);
    let n = c2.len();
    let dup: usize = c2
        .into_iter()
        .filter(|r| known.contains(&h(&v2[r.clone()])))
        .map(|r| r.len())
        .sum();
    (dup as f64 / v2.len() as f64, n)
}

fn checkpoint(seed: u64, version: u32) -> Vec<u8> {
    // Tensors of varied sizes like a transformer: many small (norms, biases), some large.
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let sizes: Vec<usize> = (0..240)
        .map(|i| {
            if i % 4 == 0 {
                64 * r.gen_range(16..64)
            } else {
                64 * r.gen_range(512..4096)
            }
        })
        .collect();
    let seeds = strait_datagen::checkpoint_seeds(seed, sizes.len(), version, 0.2);
    // safetensors_bf16 takes one element count; build by hand for varied sizes.
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (i, n) in sizes.iter().enumerate() {
        header.insert(
            format!("layer.{i}"),
            serde_json::json!({"dtype":"BF16","shape":[n],"data_offsets":[off, off + 2 * n]}),
        );
        off += 2 * n;
    }
    let h = serde_json::Value::Object(header).to_string().into_bytes();
    let mut f = (h.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(&h);
    for (n, s) in sizes.iter().zip(&seeds) {
        f.extend_from_slice(&strait_datagen::bf16_tensor(*s, *n));
    }
    f
}

fn tar_shard(seed: u64, version: u32) -> Vec<u8> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..400 {
        let size = r.gen_range(2_000..200_000);
        let mut content = strait_datagen::jsonl(seed * 1000 + i, size);
        if version > 0 && ChaCha8Rng::seed_from_u64(seed ^ i ^ 0xfeed).gen_bool(0.3) {
            content = strait_datagen::jsonl_edit(seed + i, &content, 0.05);
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("{i:06}.jsonl"), &content[..])
            .unwrap();
    }
    b.into_inner().unwrap()
}

fn main() {
    println!("| workload | size | cuts | chunks (v2) | dedup of v2 against v1 |");
    println!("|---|---|---|---|---|");
    for (name, v1, v2) in [
        (
            "safetensors bf16, 240 tensors, 20% changed",
            checkpoint(7, 0),
            checkpoint(7, 1),
        ),
        (
            "tar of 400 JSONL files, 30% edited",
            tar_shard(9, 0),
            tar_shard(9, 1),
        ),
    ] {
        for aligned in [false, true] {
            let (f, n) = dedup_fraction(&v1, &v2, aligned);
            println!(
                "| {name} | {:.0} MiB | {} | {n} | {:.1}% |",
                v2.len() as f64 / (1 << 20) as f64,
                if aligned {
                    "content-defined + format-aligned"
                } else {
                    "content-defined"
                },
                100.0 * f
            );
        }
    }
}
