#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::ops::Range;

use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strait_chunk::{chunk_boundaries, ChunkHasher, ChunkId, Chunker, ChunkerConfig, Error};

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Small sizes so a few hundred KiB give many chunks.
fn small_cfg() -> ChunkerConfig {
    ChunkerConfig::new(1024, 4096, 16384).unwrap()
}

/// Feeds `data` in pieces ending at `splits` (sorted offsets) and collects the cut ranges.
fn stream_boundaries(cfg: ChunkerConfig, data: &[u8], splits: &[usize]) -> Vec<Range<usize>> {
    let mut chunker = Chunker::new(cfg);
    let mut out = Vec::new();
    let mut chunk_start = 0;
    let mut piece_start = 0;
    for &piece_end in splits.iter().chain(std::iter::once(&data.len())) {
        let mut at = piece_start;
        while at < piece_end {
            let before = chunker.pending();
            match chunker.next_boundary(&data[at..piece_end]) {
                Some(n) => {
                    assert!(n >= 1 && n <= piece_end - at);
                    at += n;
                    out.push(chunk_start..at);
                    chunk_start = at;
                    assert_eq!(chunker.pending(), 0);
                }
                None => {
                    assert_eq!(chunker.pending(), before + (piece_end - at));
                    at = piece_end;
                }
            }
        }
        piece_start = piece_end;
    }
    if chunk_start < data.len() {
        assert_eq!(chunker.pending(), data.len() - chunk_start);
        out.push(chunk_start..data.len());
        chunker.reset();
    }
    out
}

fn assert_tiles(ranges: &[Range<usize>], len: usize, cfg: ChunkerConfig) {
    let mut expect_start = 0;
    for (i, r) in ranges.iter().enumerate() {
        assert_eq!(r.start, expect_start);
        let n = r.len();
        assert!(n <= cfg.max(), "chunk {i} has {n} bytes > max");
        if i + 1 < ranges.len() {
            assert!(n >= cfg.min(), "chunk {i} has {n} bytes < min");
        } else {
            assert!(n >= 1);
        }
        expect_start = r.end;
    }
    assert_eq!(expect_start, len);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn streaming_cuts_equal_whole_buffer_cuts_for_any_split(
        seed in any::<u64>(),
        len in 0usize..300_000,
        nsplits in 0usize..64,
        repetitive in any::<bool>(),
    ) {
        let cfg = small_cfg();
        let mut data = random_bytes(seed, len);
        if repetitive {
            // Low-entropy data exercises long runs without cuts (forced max cuts).
            for b in data.iter_mut() { *b &= 0x01; }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xabcd);
        let mut splits: Vec<usize> = (0..nsplits).map(|_| rng.gen_range(0..=len)).collect();
        splits.sort_unstable();
        let whole = chunk_boundaries(cfg, &data);
        assert_tiles(&whole, len, cfg);
        let streamed = stream_boundaries(cfg, &data, &splits);
        prop_assert_eq!(whole, streamed);
    }

    #[test]
    fn single_byte_feeding_gives_the_same_cuts(seed in any::<u64>()) {
        let cfg = ChunkerConfig::new(64, 256, 1024).unwrap();
        let data = random_bytes(seed, 8_000);
        let splits: Vec<usize> = (1..data.len()).collect();
        prop_assert_eq!(chunk_boundaries(cfg, &data), stream_boundaries(cfg, &data, &splits));
    }
}

fn chunk_set(data: &[u8], cfg: ChunkerConfig) -> (Vec<Vec<u8>>, HashSet<Vec<u8>>) {
    let chunks: Vec<Vec<u8>> = chunk_boundaries(cfg, data)
        .into_iter()
        .map(|r| data[r].to_vec())
        .collect();
    let set = chunks.iter().cloned().collect();
    (chunks, set)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn one_edit_in_4_mib_changes_at_most_four_chunks_all_next_to_it(
        seed in any::<u64>(),
        insert in any::<bool>(),
        edit_len in 1usize..2048,
    ) {
        let cfg = ChunkerConfig::default();
        let original = random_bytes(seed, 4 << 20);
        let mut rng = ChaCha8Rng::seed_from_u64(seed.rotate_left(17));
        let at = rng.gen_range(0..original.len() - edit_len);
        let mut edited = original.clone();
        if insert {
            let extra = random_bytes(seed ^ 1, edit_len);
            edited.splice(at..at, extra);
        } else {
            edited.drain(at..at + edit_len);
        }
        let (_, before) = chunk_set(&original, cfg);
        let after: Vec<_> = chunk_boundaries(cfg, &edited);
        let new: Vec<_> = after
            .iter()
            .filter(|r| !before.contains(&edited[(*r).clone()]))
            .collect();
        // The chunk the edit falls in, one more when it spans a cut point, and the chunks after
        // it until the cuts fall in step again: with normalized chunking a chunk that starts
        // elsewhere applies the strict and loose masks at other offsets, so falling in step can
        // take two chunks. CI found a 1458-byte deletion that changed 4 chunks (seed
        // 10716017664711476483, kept in chunking.proptest-regressions, so it is re-run first):
        // the bound of 3 was wrong. The bound is 4, and every new chunk must lie next to the
        // edit — changes stay local.
        prop_assert!(new.len() <= 4, "{} new chunks of {}", new.len(), after.len());
        let (lo, hi) = (at.saturating_sub(cfg.max()), at + edit_len + 3 * cfg.max());
        for r in &new {
            prop_assert!(r.end > lo && r.start < hi, "new chunk {:?} far from the edit at {}", r, at);
        }
        prop_assert!(after.len() >= 40);
    }
}

#[test]
fn default_chunks_on_random_data_average_near_the_target() {
    let cfg = ChunkerConfig::default();
    let data = random_bytes(7, 16 << 20);
    let ranges = chunk_boundaries(cfg, &data);
    assert_tiles(&ranges, data.len(), cfg);
    let mean = data.len() / ranges.len();
    assert!(
        (48 * 1024..=96 * 1024).contains(&mean),
        "mean chunk {mean} bytes over {} chunks",
        ranges.len()
    );
    let forced = ranges[..ranges.len() - 1]
        .iter()
        .filter(|r| r.len() == cfg.max())
        .count();
    assert!(forced * 100 <= ranges.len(), "{forced} chunks hit max");
}

#[test]
fn reset_starts_a_fresh_chunk_like_a_new_stream() {
    let cfg = small_cfg();
    let data = random_bytes(11, 200_000);
    let mut chunker = Chunker::new(cfg);
    // Feed part of a chunk, then force a cut (e.g. a flush timeout).
    assert_eq!(chunker.next_boundary(&data[..500]), None);
    assert_eq!(chunker.pending(), 500);
    chunker.reset();
    assert_eq!(chunker.pending(), 0);
    let rest = &data[500..];
    let mut at = 0;
    let mut ends = Vec::new();
    while let Some(n) = chunker.next_boundary(&rest[at..]) {
        at += n;
        ends.push(at);
    }
    let want: Vec<usize> = chunk_boundaries(cfg, rest)
        .into_iter()
        .map(|r| r.end)
        .collect();
    assert_eq!(ends, want[..want.len() - 1]);
}

#[test]
fn constant_input_is_cut_at_max() {
    let cfg = small_cfg();
    let data = vec![0u8; 100_000];
    let ranges = chunk_boundaries(cfg, &data);
    assert!(ranges[..ranges.len() - 1]
        .iter()
        .all(|r| r.len() == cfg.max()));
}

#[test]
fn empty_and_short_inputs_make_at_most_one_chunk() {
    let cfg = ChunkerConfig::default();
    assert!(chunk_boundaries(cfg, &[]).is_empty());
    assert_eq!(chunk_boundaries(cfg, &[1, 2, 3]), vec![0..3]);
    let mut c = Chunker::new(cfg);
    assert_eq!(c.next_boundary(&[]), None);
    assert_eq!(c.pending(), 0);
}

/// Pins the cut points: a change here breaks chunk sharing with peers running older builds.
#[test]
fn cut_points_are_pinned_for_a_seeded_buffer() {
    let data = random_bytes(42, 1 << 20);
    let ends: Vec<usize> = chunk_boundaries(ChunkerConfig::default(), &data)
        .into_iter()
        .map(|r| r.end)
        .collect();
    assert_eq!(ends, PINNED_ENDS);
}

const PINNED_ENDS: &[usize] = &[
    88868, 227713, 266453, 372657, 513478, 533625, 577043, 663899, 748753, 903736, 969422, 1048576,
];

#[test]
fn config_rejects_inconsistent_sizes_and_names_them() {
    let cases = [
        (32, 256, 1024),
        (1024, 3000, 8192),
        (4096, 4096, 8192),
        (1024, 4096, 4096),
        (1024, 8 << 20, 32 << 20),
        (1 << 20, 2 << 20, 17 << 20),
    ];
    for (min, avg, max) in cases {
        let err = ChunkerConfig::new(min, avg, max).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("min={min} avg={avg} max={max}")),
            "{msg}"
        );
    }
    assert_eq!(
        ChunkerConfig::new(16 * 1024, 64 * 1024, 256 * 1024).unwrap(),
        ChunkerConfig::default()
    );
}

#[test]
fn ids_depend_on_key_and_content() {
    let a = ChunkHasher::new([1; 32]);
    let b = ChunkHasher::new([2; 32]);
    let data = random_bytes(3, 5000);
    let id = a.id(&data);
    assert_eq!(id, a.id(&data));
    assert_ne!(id, b.id(&data));
    assert!(a.verify(&id, &data));
    assert!(!b.verify(&id, &data));
    let mut flipped = data.clone();
    flipped[4999] ^= 1;
    assert!(!a.verify(&id, &flipped));
    assert_eq!(
        id.0,
        *blake3::keyed_hash(&[1; 32], &data).as_bytes(),
        "ids are plain keyed BLAKE3"
    );
}

#[test]
fn id_hex_and_slice_round_trip_and_reject_bad_input() {
    let id = ChunkHasher::new([9; 32]).id(b"hello");
    let hex = id.to_hex();
    assert_eq!(hex.len(), 64);
    assert_eq!(ChunkId::from_hex(&hex).unwrap(), id);
    assert_eq!(ChunkId::from_hex(&hex.to_uppercase()).unwrap(), id);
    assert_eq!(format!("{id}"), &hex[..16]);
    assert_eq!(format!("{id:?}"), format!("ChunkId({})", &hex[..16]));
    assert_eq!(ChunkId::from_slice(&id.0).unwrap(), id);
    assert_eq!(
        ChunkId::from_slice(&[0; 31]).unwrap_err(),
        Error::IdLength { len: 31 }
    );
    assert!(ChunkId::from_hex(&hex[..63]).is_err());
    assert!(ChunkId::from_hex(&format!("{}g", &hex[..63])).is_err());
    assert!(!format!("{:?}", ChunkHasher::new([7; 32])).contains('7'));
}
