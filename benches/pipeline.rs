//! Whole data-path pipelines, per core: the encoder (chunk + hash + sketch + zstd + store +
//! frame) on cold and warm data, and the decoder (frame + decode + verify + store) — next to the
//! primitives measured alone in the same run, so BENCHMARKS.md can state the pipeline speed as a
//! fraction of the bound its parts set.
//!
//! The encoder runs with the product's defaults (what `strait_transport` builds for a route with
//! no overrides): zstd level 3, delta on (so every new chunk is sketched and looked up in a
//! sketch index, and record-aligned format cuts are off). A second configuration, zstd-1 with
//! delta off, is the one earlier versions of this bench measured.
//!
//! The harness drives the encoder the way the transport's pump does: 64 KiB client reads, the
//! frame buffer written out (here: counted) and cleared after every read, and the receiver's
//! acknowledgements applied one read later (so every chunk is held until acknowledged, as the
//! miss path needs, and freed then, as in a running flow).
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, kernel time of its own
//! store writes included): the issue asks for MB/s per core, and on a shared machine wall time
//! also counts the time other processes held the core, which skews a ratio between benches run
//! seconds apart.
//!
//! `cargo bench -p strait-benches --bench pipeline`
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, ChunkerConfig};
use strait_codec::CompressConfig;
use strait_dedup::{DeltaConfig, DeltaStats, EncoderConfig, FlowDecoder, FlowEncoder, SketchIndex};
use strait_store::{PeerSlot, Store, StoreConfig};
use strait_wire::FrameDecoder;

const KEY: [u8; 32] = [3; 32];
const SIZE: usize = 32 << 20;
/// The transport's client read size (`strait_transport::flow::READ_BUF`).
const READ: usize = 64 << 10;

/// CPU time consumed by the calling thread (user and system).
struct ThreadCpu;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec` for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, like wall time: reuse its formatting (and throughput units).
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn store(dir: &tempfile::TempDir) -> Arc<Store> {
    Arc::new(Store::open(StoreConfig::new(dir.path(), 8 << 30, KEY)).unwrap())
}

/// One encoder configuration under test.
#[derive(Clone, Copy)]
struct Setup {
    level: i32,
    delta: bool,
}

/// The product default (`dedup.delta = true`, `compression = 3`).
const PRODUCT: Setup = Setup {
    level: strait_codec::DEFAULT_LEVEL,
    delta: true,
};
/// What earlier versions of this bench measured.
const L1_NO_DELTA: Setup = Setup {
    level: 1,
    delta: false,
};

impl Setup {
    fn compress(self) -> CompressConfig {
        CompressConfig {
            level: Some(self.level),
            tensor: true,
        }
    }

    /// Built as `strait_transport::Engine::parts` builds it.
    fn encoder(
        self,
        hasher: &ChunkHasher,
        s: &Arc<Store>,
        p: PeerSlot,
        index: &Arc<SketchIndex>,
    ) -> FlowEncoder {
        let cfg = EncoderConfig {
            chunker: ChunkerConfig::default(),
            dedup: true,
            compress: self.compress(),
            window: 64 << 20,
            delta: DeltaConfig {
                enabled: self.delta,
                ..DeltaConfig::default()
            },
            format_cuts: !self.delta,
        };
        FlowEncoder::new(
            cfg,
            hasher.clone(),
            s.clone(),
            p,
            Arc::new(RouteStats::default()),
        )
        .with_delta(index.clone(), Arc::new(DeltaStats::default()))
    }
}

/// Feeds `data` as the pump does; returns the WAN bytes produced. `keep` collects the frames.
fn pump(
    enc: &mut FlowEncoder,
    data: &[u8],
    out: &mut BytesMut,
    keep: Option<&mut BytesMut>,
) -> usize {
    let mut wan = 0;
    let mut acked = 0;
    let mut keep = keep;
    for piece in data.chunks(READ) {
        let sent_before = enc.sent_items();
        enc.push(piece, out);
        enc.on_ack(acked).unwrap();
        acked = sent_before;
        wan += out.len();
        if let Some(k) = keep.as_deref_mut() {
            k.extend_from_slice(out);
        }
        out.clear();
    }
    enc.finish(out);
    enc.on_ack(enc.sent_items()).unwrap();
    wan += out.len();
    if let Some(k) = keep {
        k.extend_from_slice(out);
    }
    out.clear();
    wan
}

fn parts(
    g: &mut BenchmarkGroup<'_, ThreadCpu>,
    text: &[u8],
    ranges: &[Range<usize>],
    hasher: &ChunkHasher,
) {
    g.bench_function("parts/chunk", |b| {
        b.iter(|| strait_chunk::chunk_boundaries(ChunkerConfig::default(), text).len())
    });
    g.bench_function("parts/hash", |b| {
        b.iter(|| {
            ranges
                .iter()
                .map(|r| hasher.id(&text[r.clone()]).0[0] as u64)
                .sum::<u64>()
        })
    });
    g.bench_function("parts/sketch", |b| {
        b.iter(|| {
            ranges
                .iter()
                .filter_map(|r| strait_sketch::sketch(&text[r.clone()]))
                .count()
        })
    });
    for setup in [PRODUCT, L1_NO_DELTA] {
        g.bench_function(format!("parts/zstd{}", setup.level), |b| {
            // strait's `Encoder`: incompressibility probe included.
            let mut e = strait_codec::Encoder::new(setup.compress());
            let mut out = Vec::new();
            b.iter(|| {
                let mut n = 0;
                for r in ranges {
                    out.clear();
                    e.encode(&text[r.clone()], &mut out);
                    n += out.len();
                }
                n
            })
        });
    }
    // Inserting every chunk into a fresh store (page cache, as in the pipelines). Ids are
    // computed beforehand: hashing is a part of its own.
    let ids: Vec<[u8; 32]> = ranges
        .iter()
        .map(|r| hasher.id(&text[r.clone()]).0)
        .collect();
    g.bench_function("parts/store_put", |b| {
        b.iter_with_setup(fresh, |(dir, s, p)| {
            for (id, r) in ids.iter().zip(ranges) {
                s.put(id, &text[r.clone()], p).unwrap();
            }
            (s, dir)
        })
    });
}

fn new_index() -> Arc<SketchIndex> {
    Arc::new(SketchIndex::new(strait_dedup::delta::DEFAULT_INDEX_BYTES))
}

/// A fresh store (setup is untimed; the store and its directory are returned by the routine so
/// that deleting them happens outside the measurement too).
fn fresh() -> (tempfile::TempDir, Arc<Store>, PeerSlot) {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let p = s.peer_slot("peer").unwrap();
    (dir, s, p)
}

fn pipeline(c: &mut Criterion<ThreadCpu>) {
    let text = strait_datagen::jsonl(1, SIZE);
    let text = &text[..SIZE];
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(SIZE as u64));
    let hasher = ChunkHasher::new(KEY);
    let ranges = strait_chunk::chunk_boundaries(ChunkerConfig::default(), text);

    // Primitives alone, same input.
    parts(&mut g, text, &ranges, &hasher);

    // Cold encode: a fresh store and sketch index every iteration (every chunk is a literal,
    // sketched, stored).
    let mut out = BytesMut::new();
    for (name, setup) in [("product", PRODUCT), ("zstd1_nodelta", L1_NO_DELTA)] {
        g.bench_function(format!("encode/cold_text_{name}"), |b| {
            b.iter_with_setup(fresh, |(dir, s, p)| {
                // Cold means nothing seen before, sketches included.
                let mut enc = setup.encoder(&hasher, &s, p, &new_index());
                (pump(&mut enc, text, &mut out, None), s, dir)
            })
        });
    }

    // The same with no acknowledgement before the end: the encoder holds all 32 MiB (a window
    // that never drains), each chunk in fresh memory.
    g.bench_function("encode/cold_text_product_unacked", |b| {
        b.iter_with_setup(fresh, |(dir, s, p)| {
            let mut enc = PRODUCT.encoder(&hasher, &s, p, &new_index());
            let mut wan = 0;
            for piece in text.chunks(READ) {
                enc.push(piece, &mut out);
                wan += out.len();
                out.clear();
            }
            enc.finish(&mut out);
            wan += out.len();
            out.clear();
            (wan, s, dir)
        })
    });

    // Warm encode: every chunk already known to the peer: references only.
    let warm_dir = tempfile::tempdir().unwrap();
    let warm = store(&warm_dir);
    let wp = warm.peer_slot("peer").unwrap();
    // Shared by the flows of the process, as in the product.
    let warm_index = new_index();
    let mut cold_frames = BytesMut::new();
    pump(
        &mut PRODUCT.encoder(&hasher, &warm, wp, &warm_index),
        text,
        &mut out,
        Some(&mut cold_frames),
    );
    g.bench_function("encode/warm_text_product", |b| {
        b.iter(|| {
            pump(
                &mut PRODUCT.encoder(&hasher, &warm, wp, &warm_index),
                text,
                &mut out,
                None,
            )
        })
    });
    let mut warm_frames = BytesMut::new();
    pump(
        &mut PRODUCT.encoder(&hasher, &warm, wp, &warm_index),
        text,
        &mut out,
        Some(&mut warm_frames),
    );

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

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = pipeline
}
criterion_main!(benches);
