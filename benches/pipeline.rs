//! Whole data-path pipelines, per core: the encoder (chunk + hash + store lookup + zstd + frame)
//! on cold and warm data, and the decoder (frame + decode + verify + store) — next to the
//! primitives measured alone in the same run, so BENCHMARKS.md can state the pipeline speed as a
//! fraction of the bound its parts set.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, ChunkerConfig};
use strait_codec::CompressConfig;
use strait_dedup::{EncoderConfig, FlowDecoder, FlowEncoder};
use strait_store::{Store, StoreConfig};
use strait_wire::FrameDecoder;

const KEY: [u8; 32] = [3; 32];
const SIZE: usize = 32 << 20;

fn store(dir: &tempfile::TempDir) -> Arc<Store> {
    Arc::new(Store::open(StoreConfig::new(dir.path(), 8 << 30, KEY)).unwrap())
}

fn enc_cfg() -> EncoderConfig {
    EncoderConfig {
        chunker: ChunkerConfig::default(),
        dedup: true,
        compress: CompressConfig {
            level: Some(1),
            tensor: true,
        },
        window: u64::MAX,
        ..Default::default()
    }
}

fn encode_all(enc: &mut FlowEncoder, data: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(data.len() + 4096);
    for piece in data.chunks(256 << 10) {
        enc.push(piece, &mut out);
    }
    enc.finish(&mut out);
    out
}

fn pipeline(c: &mut Criterion) {
    let text = strait_datagen::jsonl(1, SIZE);
    let text = &text[..SIZE];
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(SIZE as u64));

    // Primitives alone, same input.
    g.bench_function("parts/chunk", |b| {
        b.iter(|| strait_chunk::chunk_boundaries(ChunkerConfig::default(), text).len())
    });
    let ranges = strait_chunk::chunk_boundaries(ChunkerConfig::default(), text);
    let hasher = ChunkHasher::new(KEY);
    g.bench_function("parts/hash", |b| {
        b.iter(|| {
            ranges
                .iter()
                .map(|r| hasher.id(&text[r.clone()]).0[0] as u64)
                .sum::<u64>()
        })
    });
    g.bench_function("parts/zstd1", |b| {
        let mut e = strait_codec::Encoder::new(CompressConfig {
            level: Some(1),
            tensor: true,
        });
        let mut out = Vec::new();
        b.iter(|| {
            let mut n = 0;
            for r in &ranges {
                out.clear();
                e.encode(&text[r.clone()], &mut out);
                n += out.len();
            }
            n
        })
    });

    // Cold encode: a fresh store every iteration (every chunk is a literal and is stored).
    // Setup (store creation) is untimed, and the store and its directory are returned so that
    // deleting them happens outside the measurement too.
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let p = s.peer_slot("peer").unwrap();
        (dir, s, p)
    };
    g.bench_function("encode/cold_text", |b| {
        b.iter_with_setup(fresh, |(dir, s, p)| {
            let mut enc = FlowEncoder::new(
                enc_cfg(),
                hasher.clone(),
                s.clone(),
                p,
                Arc::new(RouteStats::default()),
            );
            (encode_all(&mut enc, text).len(), s, dir)
        })
    });

    // Cold encode without the store (dedup off): isolates the store's share of the cost.
    g.bench_function("encode/cold_text_no_store", |b| {
        b.iter_with_setup(fresh, |(dir, s, p)| {
            let cfg = EncoderConfig {
                dedup: false,
                ..enc_cfg()
            };
            let mut enc = FlowEncoder::new(
                cfg,
                hasher.clone(),
                s.clone(),
                p,
                Arc::new(RouteStats::default()),
            );
            (encode_all(&mut enc, text).len(), s, dir)
        })
    });

    // Warm encode: every chunk already known to the peer: references only.
    let warm_dir = tempfile::tempdir().unwrap();
    let warm = store(&warm_dir);
    let wp = warm.peer_slot("peer").unwrap();
    let cold_frames = {
        let mut enc = FlowEncoder::new(
            enc_cfg(),
            hasher.clone(),
            warm.clone(),
            wp,
            Arc::new(RouteStats::default()),
        );
        encode_all(&mut enc, text)
    };
    g.bench_function("encode/warm_text", |b| {
        b.iter(|| {
            let mut enc = FlowEncoder::new(
                enc_cfg(),
                hasher.clone(),
                warm.clone(),
                wp,
                Arc::new(RouteStats::default()),
            );
            encode_all(&mut enc, text).len()
        })
    });
    let warm_frames = {
        let mut enc = FlowEncoder::new(
            enc_cfg(),
            hasher.clone(),
            warm.clone(),
            wp,
            Arc::new(RouteStats::default()),
        );
        encode_all(&mut enc, text)
    };

    // Decode: literals into a fresh store (cold), and references expanded from a store that
    // holds them (warm), verified chunk by chunk.
    let decode = |frames: &BytesMut, s: Arc<Store>| {
        let p = s.peer_slot("peer").unwrap();
        let mut dec = FlowDecoder::new(
            hasher.clone(),
            s,
            p,
            u64::MAX / 4,
            Arc::new(RouteStats::default()),
        );
        let mut fd = FrameDecoder::new();
        fd.extend(frames);
        let mut wants = Vec::new();
        let mut n = 0;
        while let Some((f, _)) = fd.next_frame().unwrap() {
            dec.on_frame(f, &mut wants).unwrap();
            while let Some(b) = dec.pop_ready() {
                n += b.len();
            }
        }
        assert!(wants.is_empty());
        n
    };
    g.bench_function("decode/cold_text", |b| {
        b.iter_with_setup(fresh, |(dir, s, _)| {
            (decode(&cold_frames, s.clone()), s, dir)
        })
    });
    let rx_dir = tempfile::tempdir().unwrap();
    let rx = store(&rx_dir);
    assert_eq!(decode(&cold_frames, rx.clone()), SIZE);
    g.bench_function("decode/warm_text", |b| {
        b.iter(|| decode(&warm_frames, rx.clone()))
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
