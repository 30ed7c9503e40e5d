//! Codec throughput and ratios: zstd on JSONL, the encoder's probe on random data versus a
//! plain zstd-1 attempt, byte-grouped tensor codecs versus plain zstd. Ratios are printed to
//! stdout (criterion measures time only).
//!
//! `cargo bench -p strait-benches --bench codec`

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use strait_codec::testdata::{bf16_weights, fp16_weights, fp32_weights, jsonl_text, random_bytes};
use strait_codec::{split_planes, CodecId, CompressConfig, Decoder, Encoder};

const MIB: usize = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Plain zstd of every 64 KiB chunk with one reused context; returns total compressed bytes.
fn zstd_chunks(
    cctx: &mut zstd::bulk::Compressor<'static>,
    data: &[u8],
    dst: &mut Vec<u8>,
) -> usize {
    let mut total = 0;
    for chunk in data.chunks(CHUNK) {
        dst.clear();
        dst.reserve(zstd::zstd_safe::compress_bound(chunk.len()));
        total += cctx.compress_to_buffer(chunk, dst).unwrap_or(chunk.len());
    }
    total
}

/// The encoder over every 64 KiB chunk; returns total payload bytes.
fn encode_chunks(enc: &mut Encoder, data: &[u8], out: &mut Vec<u8>) -> usize {
    let mut total = 0;
    for chunk in data.chunks(CHUNK) {
        out.clear();
        enc.encode(chunk, out);
        total += out.len();
    }
    total
}

/// Alternative layout measured for comparison: planes concatenated, one zstd call per chunk.
fn planes_concat_zstd(
    cctx: &mut zstd::bulk::Compressor<'static>,
    width: usize,
    data: &[u8],
    planes: &mut Vec<u8>,
    dst: &mut Vec<u8>,
) -> usize {
    let mut total = 0;
    for chunk in data.chunks(CHUNK) {
        split_planes(width, chunk, planes);
        dst.clear();
        dst.reserve(zstd::zstd_safe::compress_bound(planes.len()));
        total += cctx
            .compress_to_buffer(&planes[..], dst)
            .unwrap_or(planes.len());
    }
    total
}

fn cctx(level: i32) -> zstd::bulk::Compressor<'static> {
    match zstd::bulk::Compressor::new(level) {
        Ok(c) => c,
        Err(e) => panic!("zstd context: {e}"),
    }
}

fn ratio(input: usize, output: usize) -> f64 {
    input as f64 / output.max(1) as f64
}

fn text(c: &mut Criterion) {
    let data = jsonl_text(1, 4 * MIB);
    let mut g = c.benchmark_group("zstd_jsonl_64KiB_chunks");
    g.throughput(Throughput::Bytes(data.len() as u64));
    let mut dst = Vec::new();
    for level in [1, 3] {
        let mut z = cctx(level);
        let n = zstd_chunks(&mut z, &data, &mut dst);
        println!("ratio jsonl zstd-{level}: x{:.2}", ratio(data.len(), n));
        g.bench_function(format!("zstd{level}"), |b| {
            b.iter(|| zstd_chunks(&mut z, black_box(&data), &mut dst))
        });
    }
    let mut enc = Encoder::new(CompressConfig {
        level: Some(3),
        tensor: true,
    });
    let mut out = Vec::new();
    let n = encode_chunks(&mut enc, &data, &mut out);
    println!(
        "ratio jsonl encoder(level 3, tensor): x{:.2}",
        ratio(data.len(), n)
    );
    g.bench_function("encoder_level3", |b| {
        b.iter(|| encode_chunks(&mut enc, black_box(&data), &mut out))
    });
    g.finish();
}

fn random(c: &mut Criterion) {
    let data = random_bytes(2, 4 * MIB);
    let mut g = c.benchmark_group("random_64KiB_chunks");
    g.throughput(Throughput::Bytes(data.len() as u64));
    let mut enc = Encoder::new(CompressConfig {
        level: Some(1),
        tensor: true,
    });
    let mut out = Vec::new();
    let n = encode_chunks(&mut enc, &data, &mut out);
    println!("random: encoder payload {} of {} bytes", n, data.len());
    g.bench_function("encoder_probe_skip", |b| {
        b.iter(|| encode_chunks(&mut enc, black_box(&data), &mut out))
    });
    let mut z = cctx(1);
    let mut dst = Vec::new();
    g.bench_function("plain_zstd1_attempt", |b| {
        b.iter(|| zstd_chunks(&mut z, black_box(&data), &mut dst))
    });
    g.finish();
}

fn tensors(c: &mut Criterion) {
    let cases = [
        ("bf16", bf16_weights(3, 2 * MIB), 2),
        ("fp16", fp16_weights(4, 2 * MIB), 2),
        ("fp32", fp32_weights(5, MIB), 4),
    ];
    for (name, data, width) in cases {
        let mut g = c.benchmark_group(format!("tensor_{name}_64KiB_chunks"));
        g.throughput(Throughput::Bytes(data.len() as u64));
        let mut out = Vec::new();
        let mut dst = Vec::new();
        let mut planes = Vec::new();
        for level in [1, 3] {
            let mut enc = Encoder::new(CompressConfig {
                level: Some(level),
                tensor: true,
            });
            let n = encode_chunks(&mut enc, &data, &mut out);
            let mut z = cctx(level);
            let plain = zstd_chunks(&mut z, &data, &mut dst);
            let concat = planes_concat_zstd(&mut z, width, &data, &mut planes, &mut dst);
            println!(
                "ratio {name} level {level}: encoder x{:.3}  plain zstd x{:.3}  planes-concatenated zstd x{:.3}",
                ratio(data.len(), n),
                ratio(data.len(), plain),
                ratio(data.len(), concat)
            );
            g.bench_function(format!("encoder_tensor_level{level}"), |b| {
                b.iter(|| encode_chunks(&mut enc, black_box(&data), &mut out))
            });
            g.bench_function(format!("plain_zstd{level}"), |b| {
                b.iter(|| zstd_chunks(&mut z, black_box(&data), &mut dst))
            });
            if level == 1 {
                g.bench_function("planes_concatenated_zstd1", |b| {
                    b.iter(|| {
                        planes_concat_zstd(&mut z, width, black_box(&data), &mut planes, &mut dst)
                    })
                });
            }
        }
        g.finish();
    }
}

fn decode(c: &mut Criterion) {
    let mut enc = Encoder::new(CompressConfig {
        level: Some(3),
        tensor: true,
    });
    let mut g = c.benchmark_group("decode_64KiB_chunks");
    for (name, data) in [
        ("jsonl", jsonl_text(6, 4 * MIB)),
        ("bf16", bf16_weights(7, 2 * MIB)),
    ] {
        let mut encoded: Vec<(CodecId, Vec<u8>, usize)> = Vec::new();
        for chunk in data.chunks(CHUNK) {
            let mut p = Vec::new();
            let codec = enc.encode(chunk, &mut p);
            encoded.push((codec, p, chunk.len()));
        }
        g.throughput(Throughput::Bytes(data.len() as u64));
        let mut dec = Decoder::new();
        let mut out = Vec::with_capacity(CHUNK);
        g.bench_function(name, |b| {
            b.iter(|| {
                for (codec, p, len) in &encoded {
                    out.clear();
                    if dec.decode(*codec, p, *len, &mut out).is_err() {
                        panic!("decode failed");
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = text, random, tensors, decode
}
criterion_main!(benches);
