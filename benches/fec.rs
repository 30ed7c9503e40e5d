//! Erasure coding cost of the FEC layer: both Reed-Solomon crates, 1200-byte shards, blocks from
//! a small message's (16+4) to the adaptive planner's full blocks at 1 % loss (64+6, 128+8),
//! encode, decode of `m` random losses (the worst a block survives) and decode of one loss (the
//! common case at 1 % loss). Throughput is source bytes per second.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{seq::SliceRandom, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strait_fec::{CoderKind, ErasureCoder};

const SHARD: usize = 1200;

fn shards(k: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..k)
        .map(|_| {
            let mut s = vec![0u8; SHARD];
            rng.fill_bytes(&mut s);
            s
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    for (kind, name) in [
        (CoderKind::ReedSolomonErasure, "rse"),
        (CoderKind::ReedSolomonSimd, "rs-simd"),
    ] {
        for (k, m) in [(16usize, 4usize), (32, 6), (64, 6), (128, 8)] {
            let src = shards(k, 1);
            let refs: Vec<&[u8]> = src.iter().map(Vec::as_slice).collect();
            let mut coder: Box<dyn ErasureCoder> = kind.build();
            let mut repair = vec![Vec::new(); m];

            let mut g = c.benchmark_group(format!("fec/{name}/{k}+{m}"));
            g.throughput(Throughput::Bytes((k * SHARD) as u64));
            g.bench_function("encode", |b| {
                b.iter(|| coder.encode(black_box(&refs), &mut repair).unwrap_or(()))
            });

            // Decode: lose `lost` shards at random, at least one of them a source (otherwise
            // there is nothing to rebuild). A new loss pattern per iteration, chosen outside the
            // timing, so a coder's cache of inverted matrices helps only as often as patterns
            // repeat.
            coder.encode(&refs, &mut repair).unwrap_or(());
            let full: Vec<Option<Vec<u8>>> =
                src.iter().chain(repair.iter()).cloned().map(Some).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(2);
            let mut dec: Box<dyn ErasureCoder> = kind.build();
            for (label, lost) in [("decode", m), ("decode-1-loss", 1)] {
                g.bench_function(label, |b| {
                    b.iter_batched(
                        || {
                            let mut s = full.clone();
                            let mut idx: Vec<usize> = (0..k + m).collect();
                            idx.shuffle(&mut rng);
                            let mut gone = idx[..lost].to_vec();
                            if gone.iter().all(|&i| i >= k) {
                                gone[0] = 0;
                            }
                            for i in gone {
                                s[i] = None;
                            }
                            s
                        },
                        |mut s| {
                            dec.reconstruct(k, &mut s).unwrap_or(());
                            s
                        },
                        BatchSize::SmallInput,
                    )
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
