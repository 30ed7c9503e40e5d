//! Chunking and chunk-id throughput: FastCDC over random data, keyed BLAKE3 at 64 KiB chunks.
//!
//! `cargo bench -p strait-benches --bench chunking`

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use strait_chunk::{chunk_boundaries, ChunkHasher, Chunker, ChunkerConfig};
use strait_codec::testdata::random_bytes;

const MIB: usize = 1024 * 1024;

fn cdc(c: &mut Criterion) {
    let data = random_bytes(1, 64 * MIB);
    let cfg = ChunkerConfig::default();
    let mut g = c.benchmark_group("cdc");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("fastcdc_16k_64k_256k_random_64MiB", |b| {
        b.iter(|| chunk_boundaries(cfg, black_box(&data)).len())
    });
    // Streaming in 16 KiB reads, as a proxy would see socket reads.
    g.bench_function("fastcdc_streaming_16KiB_reads_random_64MiB", |b| {
        b.iter(|| {
            let mut chunker = Chunker::new(cfg);
            let mut cuts = 0usize;
            for read in black_box(&data).chunks(16 * 1024) {
                let mut at = 0;
                while let Some(n) = chunker.next_boundary(&read[at..]) {
                    at += n;
                    cuts += 1;
                }
            }
            cuts
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let data = random_bytes(2, 16 * MIB);
    let hasher = ChunkHasher::new([7; 32]);
    let mut g = c.benchmark_group("blake3_keyed");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for chunk in [64 * 1024, 16 * 1024] {
        g.bench_function(format!("{}KiB_chunks", chunk / 1024), |b| {
            b.iter(|| {
                let mut x = 0u8;
                for piece in black_box(&data).chunks(chunk) {
                    x ^= hasher.id(piece).0[0];
                }
                x
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = cdc, hashing
}
criterion_main!(benches);
