#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| r.gen()).collect()
}

fn edit(seed: u64, data: &[u8], edits: usize) -> Vec<u8> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut v = data.to_vec();
    for _ in 0..edits {
        let at = r.gen_range(0..v.len());
        match r.gen_range(0..3) {
            0 => v[at] ^= 1 + r.gen::<u8>() % 255,
            1 => v.insert(at, r.gen()),
            _ => {
                v.remove(at);
            }
        }
    }
    v
}

#[test]
fn short_chunks_get_no_sketch() {
    assert!(sketch(&random(1, MIN_SKETCH_LEN - 1)).is_none());
    assert!(sketch(&random(1, MIN_SKETCH_LEN)).is_some());
}

#[test]
fn a_few_edits_keep_most_super_features() {
    let mut kept = 0;
    for seed in 0..50 {
        let a = random(seed, 64 * 1024);
        let b = edit(seed + 1000, &a, 3);
        kept += sketch(&a).unwrap().shared(&sketch(&b).unwrap());
    }
    // 50 chunks × 4 super-features; three random edits each rarely touch a sampled window.
    assert!(kept >= 180, "kept {kept} of 200 super-features");
}

#[test]
fn unrelated_chunks_share_no_super_feature() {
    let sketches: Vec<Sketch> = (0..200)
        .map(|s| sketch(&random(s, 20_000)).unwrap())
        .collect();
    for (i, a) in sketches.iter().enumerate() {
        for b in &sketches[i + 1..] {
            assert_eq!(a.shared(b), 0);
        }
    }
}

#[test]
fn index_finds_the_edited_original_and_stays_bounded() {
    let idx = SketchIndex::new(MIN_INDEX_BYTES);
    let cap = idx.stats().capacity as usize;
    let base = random(7, 50_000);
    let base_id = [7u8; 32];
    idx.insert(&base_id, sketch(&base).unwrap());
    let near = edit(8, &base, 2);
    let c = idx.candidates(&sketch(&near).unwrap(), 2, 4, &[0; 32]);
    assert_eq!(c.first().map(|c| c.0), Some(base_id));
    // Overfill: the oldest entries go, the entry count never exceeds the bound.
    for i in 0..(cap as u64 + 50) {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&i.to_le_bytes());
        id[31] = 1;
        idx.insert(&id, Sketch([i, i + 1, i + 2, i + 3]));
    }
    let st = idx.stats();
    assert_eq!(st.entries as usize, cap);
    assert!(st.evictions >= 51);
    assert!(!idx.contains(&base_id));
    assert!(idx
        .candidates(&sketch(&near).unwrap(), 1, 4, &[0; 32])
        .is_empty());
}

#[test]
fn index_never_returns_the_excluded_id() {
    let idx = SketchIndex::new(MIN_INDEX_BYTES);
    let s = Sketch([1, 2, 3, 4]);
    idx.insert(&[1; 32], s);
    assert!(idx.candidates(&s, 1, 4, &[1; 32]).is_empty());
    assert_eq!(idx.candidates(&s, 4, 4, &[2; 32]).len(), 1);
}

#[test]
fn delta_against_a_near_duplicate_is_small_and_exact() {
    let base = random(3, 64 * 1024);
    let data = edit(4, &base, 5);
    let mut enc = DeltaEncoder::new(3);
    let mut payload = Vec::new();
    enc.encode(&base, &data, &mut payload).unwrap();
    assert!(payload.len() < 400, "delta is {} bytes", payload.len());
    let mut out = Vec::new();
    DeltaDecoder::new()
        .decode(&base, &payload, data.len(), &mut out)
        .unwrap();
    assert_eq!(out, data);
}

#[test]
fn delta_with_wrong_length_or_base_is_rejected_or_differs() {
    let base = random(5, 30_000);
    let data = edit(6, &base, 5);
    let mut payload = Vec::new();
    DeltaEncoder::new(3)
        .encode(&base, &data, &mut payload)
        .unwrap();
    let mut out = Vec::new();
    let mut dec = DeltaDecoder::new();
    assert!(dec
        .decode(&base, &payload, data.len() - 1, &mut out)
        .is_err());
    assert!(dec
        .decode(&base, &payload, data.len() + 1, &mut out)
        .is_err());
    // Another base: zstd either fails or produces other bytes (the caller's hash check decides).
    let other = random(99, 30_000);
    if dec.decode(&other, &payload, data.len(), &mut out).is_ok() {
        assert_ne!(out, data);
    }
    assert!(matches!(
        dec.decode(&base, &payload, MAX_OUTPUT_LEN_FOR_TEST + 1, &mut out),
        Err(Error::OutputTooLong { .. })
    ));
}

const MAX_OUTPUT_LEN_FOR_TEST: usize = 16 * 1024 * 1024;

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]
    #[test]
    fn delta_roundtrips_for_random_chunks_and_edits(seed in any::<u64>(), len in 1usize..100_000, edits in 0usize..50, two in any::<bool>()) {
        let base = random(seed, len);
        let data = if base.len() > 1 { edit(seed ^ 1, &base, edits) } else { base.clone() };
        let prefix = if two { [random(seed ^ 2, 5000), base].concat() } else { base };
        let mut payload = Vec::new();
        DeltaEncoder::new(3).encode(&prefix, &data, &mut payload).unwrap();
        let mut out = Vec::new();
        DeltaDecoder::new().decode(&prefix, &payload, data.len(), &mut out).unwrap();
        prop_assert_eq!(out, data);
    }

    #[test]
    fn delta_decoder_never_panics_on_garbage(payload in proptest::collection::vec(any::<u8>(), 0..2000), len in 0usize..100_000) {
        let mut out = Vec::new();
        let _ = DeltaDecoder::new().decode(b"some prefix bytes", &payload, len, &mut out);
        prop_assert!(out.len() <= len + 1);
    }
}

fn cid(i: u32) -> [u8; 32] {
    let mut a = [0u8; 32];
    a[..4].copy_from_slice(&i.to_le_bytes());
    a[31] = 0xa5;
    a
}

#[test]
fn chain_follows_stream_order_per_peer_and_stays_bounded() {
    let idx = SketchIndex::new(MIN_INDEX_BYTES);
    let mut prev = None;
    for i in 0..10 {
        idx.record_chain(1, prev.as_ref(), &cid(i));
        prev = Some(cid(i));
    }
    assert_eq!(idx.successor(1, &cid(2), 1), Some(cid(3)));
    assert_eq!(idx.successor(1, &cid(2), 4), Some(cid(6)));
    assert_eq!(idx.chain_distance(1, &cid(2), &cid(7)), Some(5));
    assert_eq!(idx.resolve_prefix(1, id_prefix(&cid(4))), Some(cid(4)));
    // Another peer saw none of it.
    assert_eq!(idx.successor(2, &cid(2), 1), None);
    assert_eq!(idx.resolve_prefix(2, id_prefix(&cid(4))), None);
    assert_eq!(idx.successor(1, &cid(2), MAX_CHAIN_STEPS + 1), None);
    // Far more chunks than the bound: the oldest are forgotten, the count stays capped.
    let cap = idx.stats().capacity;
    for i in 10..(cap as u32 * 3) {
        idx.record_chain(1, prev.as_ref(), &cid(i));
        prev = Some(cid(i));
    }
    let s = idx.stats();
    assert!(s.chain_entries <= cap, "{} > {cap}", s.chain_entries);
    assert_eq!(idx.successor(1, &cid(2), 1), None);
    let last = cap as u32 * 3 - 1;
    assert_eq!(idx.successor(1, &cid(last - 1), 1), Some(cid(last)));
}
