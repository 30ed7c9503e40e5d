#![allow(clippy::unwrap_used)]
//! Engine tests: an encoder and a decoder wired back to back through the real frame codec.

use super::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, ChunkerConfig};
use strait_codec::CompressConfig;
use strait_store::{Store, StoreConfig};
use strait_wire::{Frame, FrameDecoder};

pub(super) const KEY: [u8; 32] = [7; 32];

pub(super) struct Side {
    _dir: tempfile::TempDir,
    pub(super) store: Arc<Store>,
}

pub(super) fn side() -> Side {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(StoreConfig::new(dir.path(), 64 << 20, KEY)).unwrap());
    Side { _dir: dir, store }
}

pub(super) fn small_chunks() -> ChunkerConfig {
    ChunkerConfig::new(1024, 4096, 16384).unwrap()
}

pub(super) fn data(seed: u64, len: usize) -> Vec<u8> {
    // Half text-like (compressible), half random.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let words = [
        "tensor", "shard", "label", "text", "{\"id\":", "0.125", "\n",
    ];
    let mut v = Vec::with_capacity(len);
    while v.len() < len / 2 {
        v.extend_from_slice(words[rng.gen_range(0..words.len())].as_bytes());
    }
    while v.len() < len {
        v.push(rng.gen());
    }
    v
}

/// The sending settings [`transfer`] uses (small chunks, zstd-3, a 1 MiB window).
fn transfer_config(dedup: bool) -> EncoderConfig {
    EncoderConfig {
        chunker: small_chunks(),
        dedup,
        compress: CompressConfig {
            level: Some(3),
            tensor: true,
        },
        window: 1 << 20,
        delta: DeltaConfig::default(),
        format_cuts: true,
    }
}

/// Runs `input` through encoder → frames → decoder, answering wants, and returns what the
/// decoder delivered.
fn transfer(
    input: &[u8],
    tx: &Side,
    rx: &Side,
    dedup: bool,
    tx_stats: &Arc<RouteStats>,
    rx_stats: &Arc<RouteStats>,
    tamper: impl FnMut(&mut Frame),
) -> Result<Vec<u8>, Error> {
    transfer_with(input, tx, rx, dedup, tx_stats, rx_stats, None, tamper).map(|(out, _)| out)
}

/// Delta wiring for [`transfer_with`]: the sender's index, its counters and the receiver's.
struct DeltaSetup {
    index: Arc<SketchIndex>,
    /// The receiving process's index (its chain resolves compact base names).
    rx_index: Option<Arc<SketchIndex>>,
    tx: Arc<DeltaStats>,
    rx: Arc<DeltaStats>,
    hints: Vec<strait_chunk::ChunkId>,
    peer_name: &'static str,
}

/// Like [`transfer`], optionally with delta compression; also returns the frame bytes the
/// encoder produced (the WAN payload).
#[allow(clippy::too_many_arguments)]
fn transfer_with(
    input: &[u8],
    tx: &Side,
    rx: &Side,
    dedup: bool,
    tx_stats: &Arc<RouteStats>,
    rx_stats: &Arc<RouteStats>,
    delta: Option<&DeltaSetup>,
    tamper: impl FnMut(&mut Frame),
) -> Result<(Vec<u8>, usize), Error> {
    transfer_parts(&[input], tx, rx, dedup, tx_stats, rx_stats, delta, tamper)
}

/// [`transfer_with`] of `parts` in order, the sender flushing between them (the client paused).
#[allow(clippy::too_many_arguments)]
fn transfer_parts(
    parts: &[&[u8]],
    tx: &Side,
    rx: &Side,
    dedup: bool,
    tx_stats: &Arc<RouteStats>,
    rx_stats: &Arc<RouteStats>,
    delta: Option<&DeltaSetup>,
    mut tamper: impl FnMut(&mut Frame),
) -> Result<(Vec<u8>, usize), Error> {
    let hasher = ChunkHasher::new(KEY);
    let tx_peer = tx
        .store
        .peer_slot(delta.map_or("rx", |d| d.peer_name))
        .unwrap();
    let rx_peer = rx.store.peer_slot("tx").unwrap();
    let cfg = transfer_config(dedup);
    let mut enc = FlowEncoder::new(
        cfg,
        hasher.clone(),
        tx.store.clone(),
        tx_peer,
        tx_stats.clone(),
    );
    let mut dec = FlowDecoder::new(hasher, rx.store.clone(), rx_peer, 1 << 20, rx_stats.clone());
    if let Some(d) = delta {
        enc = enc.with_delta(d.index.clone(), d.tx.clone());
        enc.add_base_hints(&d.hints);
        dec = dec.with_delta(d.rx_index.clone(), d.rx.clone());
    }
    let mut out = Vec::new();
    let mut wire = BytesMut::new();
    for (i, input) in parts.iter().enumerate() {
        if i > 0 {
            enc.flush(&mut wire);
        }
        for piece in input.chunks(3000) {
            enc.push(piece, &mut wire);
        }
    }
    enc.finish(&mut wire);
    let mut wan = wire.len();
    let mut fd = FrameDecoder::new();
    let mut rounds = 0;
    while !wire.is_empty() {
        rounds += 1;
        assert!(rounds < 10, "wants never converged");
        fd.extend(&wire);
        wire.clear();
        // Like the transport: wants go out after each frame, supplies come back later.
        let mut wants = Vec::new();
        while let Some((mut f, _)) = fd.next_frame().unwrap() {
            tamper(&mut f);
            dec.on_frame(f, &mut wants)?;
            while let Some(b) = dec.pop_ready() {
                out.extend_from_slice(&b);
            }
            dec.take_wants(&mut wants)?;
            if let Some(Frame::Ack(n)) = dec.take_ack() {
                enc.on_ack(n)?;
            }
            if !wants.is_empty() {
                let before = wire.len();
                enc.on_want(&std::mem::take(&mut wants))?;
                while enc.poll_supply(&mut wire) {}
                wan += wire.len() - before;
            }
        }
    }
    assert!(dec.is_done(), "decoder not done");
    assert!(enc.all_acked(), "encoder has unacked items");
    Ok((out, wan))
}

#[test]
fn repeat_transfer_sends_only_references() {
    let (tx, rx) = (side(), side());
    let input = data(1, 400_000);
    let s1 = Arc::new(RouteStats::default());
    let r1 = Arc::new(RouteStats::default());
    assert_eq!(
        transfer(&input, &tx, &rx, true, &s1, &r1, |_| {}).unwrap(),
        input
    );
    let s2 = Arc::new(RouteStats::default());
    let r2 = Arc::new(RouteStats::default());
    assert_eq!(
        transfer(&input, &tx, &rx, true, &s2, &r2, |_| {}).unwrap(),
        input
    );
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(s2.literal_chunks.load(Relaxed), 0);
    assert_eq!(s2.dedup_saved_bytes.load(Relaxed), input.len() as u64);
    assert_eq!(r2.misses.load(Relaxed), 0);
    assert_eq!(r2.logical_bytes.load(Relaxed), input.len() as u64);
}

#[test]
fn wiped_receiver_store_misses_and_recovers_byte_exact() {
    let (tx, rx) = (side(), side());
    let input = data(2, 300_000);
    let s = Arc::new(RouteStats::default());
    transfer(
        &input,
        &tx,
        &rx,
        true,
        &s,
        &Arc::new(RouteStats::default()),
        |_| {},
    )
    .unwrap();
    let fresh = side();
    let r = Arc::new(RouteStats::default());
    assert_eq!(
        transfer(
            &input,
            &tx,
            &fresh,
            true,
            &Arc::new(RouteStats::default()),
            &r,
            |_| {}
        )
        .unwrap(),
        input
    );
    use std::sync::atomic::Ordering::Relaxed;
    assert!(r.misses.load(Relaxed) > 0);
}

/// A repeat's references are queued as ids and read from the store when delivered, so a
/// receiver whose client is slow holds a few bytes per reference, not the chunks; a chunk the
/// store lost between the reference and its delivery is wanted then, and the flow still ends
/// byte-exact.
#[test]
fn references_are_read_when_delivered_and_a_chunk_lost_meanwhile_is_wanted_then() {
    let (tx, rx) = (side(), side());
    let input = data(9, 600_000);
    let stats = || Arc::new(RouteStats::default());
    transfer(&input, &tx, &rx, true, &stats(), &stats(), |_| {}).unwrap();
    let hasher = ChunkHasher::new(KEY);
    // As `transfer` chunks it, so the repeat crosses as references.
    let cfg = transfer_config(true);
    let tx_peer = tx.store.peer_slot("rx").unwrap();
    let rx_peer = rx.store.peer_slot("tx").unwrap();
    let mut enc = FlowEncoder::new(cfg, hasher.clone(), tx.store.clone(), tx_peer, stats());
    let rx_stats = stats();
    let mut dec = FlowDecoder::new(hasher, rx.store.clone(), rx_peer, 1 << 20, rx_stats.clone());
    let mut wire = BytesMut::new();
    enc.push(&input, &mut wire);
    enc.finish(&mut wire);
    // Every frame arrives before the client takes a byte.
    let mut fd = FrameDecoder::new();
    fd.extend(&wire);
    let mut refs = Vec::new();
    let mut wants = Vec::new();
    while let Some((f, _)) = fd.next_frame().unwrap() {
        if let Frame::Refs(r) = &f {
            refs.extend(r.iter().map(|r| r.id));
        }
        dec.on_frame(f, &mut wants).unwrap();
    }
    assert!(
        wants.is_empty(),
        "the receiver lacked a chunk of the repeat"
    );
    assert!(refs.len() > 20, "{} references", refs.len());
    let slot_bytes = refs.len() as u64 * MIN_SLOT_BYTES;
    assert!(
        dec.held_bytes() <= slot_bytes,
        "{} references hold {} B, not {slot_bytes} (their chunks were read on arrival)",
        refs.len(),
        dec.held_bytes()
    );
    // The store loses one referenced chunk before it is delivered.
    let lost = refs[refs.len() / 2];
    rx.store.forget_peer(&lost, rx_peer);
    let mut out = Vec::new();
    while let Some(b) = dec.pop_ready() {
        out.extend_from_slice(&b);
    }
    dec.take_wants(&mut wants).unwrap();
    assert_eq!(wants, vec![lost], "the lost chunk was not wanted");
    assert!(out.len() < input.len(), "delivered past the lost chunk");
    enc.on_want(&std::mem::take(&mut wants)).unwrap();
    let mut supply = BytesMut::new();
    while enc.poll_supply(&mut supply) {}
    fd.extend(&supply);
    while let Some((f, _)) = fd.next_frame().unwrap() {
        dec.on_frame(f, &mut wants).unwrap();
    }
    while let Some(b) = dec.pop_ready() {
        out.extend_from_slice(&b);
    }
    dec.take_wants(&mut wants).unwrap();
    assert!(wants.is_empty());
    assert!(out == input, "the repeat differs");
    assert!(dec.is_done());
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(rx_stats.misses.load(Relaxed), 1);
}

/// A receiver acknowledges by bytes as well as by items: a slow client taking maximal chunks
/// would otherwise leave its sender without an `Ack` for sixteen of them (a minute at 64 KiB/s).
#[test]
fn the_receiver_acknowledges_every_ack_bytes_delivered_even_with_fewer_items() {
    let rx = side();
    let hasher = ChunkHasher::new(KEY);
    let peer = rx.store.peer_slot("tx").unwrap();
    let mut dec = FlowDecoder::new(
        hasher.clone(),
        rx.store.clone(),
        peer,
        64 << 20,
        Arc::new(RouteStats::default()),
    );
    let chunk_len = 200_000;
    for seed in 0..6 {
        let chunk = data(100 + seed, chunk_len);
        dec.on_frame(
            Frame::Literal {
                id: hasher.id(&chunk).0,
                codec: 0,
                len: chunk.len() as u32,
                payload: chunk.into(),
            },
            &mut Vec::new(),
        )
        .unwrap();
    }
    let mut acks = Vec::new();
    for popped in 1..=4u64 {
        assert!(dec.pop_ready().is_some());
        if let Some(Frame::Ack(n)) = dec.take_ack() {
            acks.push((popped, n));
        }
    }
    // 200 KB items: the second pop passes ACK_BYTES (256 KiB), the fourth again; the queue is
    // never empty and far fewer than ACK_EVERY items were delivered.
    let len = chunk_len as u64;
    assert!(ACK_EVERY > 4 && 2 * len > ACK_BYTES && len < ACK_BYTES);
    assert_eq!(acks, vec![(2, 2), (4, 4)]);
}

#[test]
fn corrupted_literal_is_re_requested_never_delivered() {
    let (tx, rx) = (side(), side());
    let input = data(3, 100_000);
    let r = Arc::new(RouteStats::default());
    let mut flipped = 0;
    let out = transfer(
        &input,
        &tx,
        &rx,
        true,
        &Arc::new(RouteStats::default()),
        &r,
        |f| {
            if let Frame::Literal { payload, codec, .. } = f {
                if flipped < 3 && *codec & 0x7f == 0 {
                    let mut p = payload.to_vec();
                    p[0] ^= 1;
                    *payload = p.into();
                    flipped += 1;
                }
            }
        },
    )
    .unwrap();
    assert_eq!(out, input);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(r.verify_failures.load(Relaxed), flipped);
}

#[test]
fn chunk_corrupted_on_every_attempt_resets_the_flow() {
    let (tx, rx) = (side(), side());
    let input = data(4, 50_000);
    let err = transfer(
        &input,
        &tx,
        &rx,
        true,
        &Arc::new(RouteStats::default()),
        &Arc::new(RouteStats::default()),
        |f| {
            if let Frame::Literal { payload, .. } | Frame::Supply { payload, .. } = f {
                let mut p = payload.to_vec();
                let last = p.len() - 1;
                p[last] ^= 0x55;
                *payload = p.into();
            }
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[test]
fn reference_to_a_chunk_never_given_yields_no_data() {
    // The receiver holds the chunk, but only for another peer: a hostile sender that references
    // it must not get it expanded.
    let rx = side();
    let hasher = ChunkHasher::new(KEY);
    let secret = data(5, 5000);
    let id = hasher.id(&secret).0;
    let other = rx.store.peer_slot("other-edge").unwrap();
    rx.store.put(&id, &secret, other).unwrap();
    let hostile = rx.store.peer_slot("hostile-edge").unwrap();
    let stats = Arc::new(RouteStats::default());
    let mut dec = FlowDecoder::new(hasher, rx.store.clone(), hostile, 1 << 20, stats.clone());
    let mut wants = Vec::new();
    dec.on_frame(
        Frame::Refs(vec![strait_wire::ChunkRef { id, len: 5000 }]),
        &mut wants,
    )
    .unwrap();
    assert_eq!(wants, vec![id]);
    assert!(dec.pop_ready().is_none());
    // A supply of wrong bytes under that id is refused, never delivered.
    let mut w2 = Vec::new();
    dec.on_frame(
        Frame::Supply {
            id,
            codec: 0,
            len: 5000,
            payload: vec![0u8; 5000].into(),
        },
        &mut w2,
    )
    .unwrap();
    assert!(dec.pop_ready().is_none());
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.misses.load(Relaxed), 1);
    assert_eq!(stats.logical_bytes.load(Relaxed), 0);
}

#[test]
fn unrequested_supply_and_unknown_want_are_protocol_errors() {
    let s = side();
    let hasher = ChunkHasher::new(KEY);
    let p = s.store.peer_slot("x").unwrap();
    let mut dec = FlowDecoder::new(
        hasher.clone(),
        s.store.clone(),
        p,
        1 << 20,
        Arc::new(RouteStats::default()),
    );
    let err = dec
        .on_frame(
            Frame::Supply {
                id: [1; 32],
                codec: 0,
                len: 1,
                payload: vec![0].into(),
            },
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::UnrequestedSupply(_)));
    let cfg = EncoderConfig {
        chunker: small_chunks(),
        dedup: true,
        compress: CompressConfig {
            level: None,
            tensor: false,
        },
        window: 1 << 20,
        delta: DeltaConfig::default(),
        format_cuts: true,
    };
    let mut enc = FlowEncoder::new(
        cfg,
        hasher,
        s.store.clone(),
        p,
        Arc::new(RouteStats::default()),
    );
    assert!(matches!(
        enc.on_want(&[[2; 32]]).unwrap_err(),
        Error::UnknownWant(_)
    ));
    assert!(matches!(enc.on_ack(1).unwrap_err(), Error::BadAck { .. }));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    /// Random data, random previous history on both sides (some shared chunks, some only on one
    /// side, some evicted at the receiver): the decoder always delivers exactly the input.
    #[test]
    fn roundtrip_is_byte_exact_for_any_store_state(seed in any::<u64>(), len in 1usize..200_000, wipe in any::<bool>(), dedup in any::<bool>(), pauses in proptest::collection::vec(any::<u32>(), 0..6)) {
        let (tx, rx) = (side(), side());
        let base = data(seed, len);
        // History: a transfer of a prefix, then maybe lose the receiver's store.
        let hist = &base[..len / 2];
        transfer(hist, &tx, &rx, dedup, &Arc::new(RouteStats::default()), &Arc::new(RouteStats::default()), |_| {}).unwrap();
        let rx = if wipe { side() } else { rx };
        let mut input = base.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xabc);
        for _ in 0..rng.gen_range(0..5) {
            let at = rng.gen_range(0..=input.len());
            input.insert(at, rng.gen());
        }
        // The client pauses at random places (a pause at the very end previews a whole chunk).
        let mut cuts: Vec<usize> = pauses.iter().map(|p| *p as usize % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let (out, _) = transfer_parts(&split_at(&input, &cuts), &tx, &rx, dedup, &rs(), &rs(), None, |_| {}).unwrap();
        prop_assert_eq!(out, input);
    }
}

/// `data` with `edits` scattered small edits (byte flips, and a few 1-byte insertions and
/// deletions), like a dataset's next version.
fn edited(seed: u64, data: &[u8], edits: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = data.to_vec();
    for i in 0..edits {
        let at = rng.gen_range(0..v.len());
        match i % 8 {
            0 => v.insert(at, rng.gen()),
            1 => {
                v.remove(at);
            }
            _ => v[at] ^= 1 + rng.gen::<u8>() % 255,
        }
    }
    v
}

fn delta_setup(peer_name: &'static str) -> DeltaSetup {
    DeltaSetup {
        index: Arc::new(SketchIndex::new(1 << 20)),
        rx_index: Some(Arc::new(SketchIndex::new(1 << 20))),
        tx: Arc::new(DeltaStats::default()),
        rx: Arc::new(DeltaStats::default()),
        hints: Vec::new(),
        peer_name,
    }
}

pub(super) fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

pub(super) fn rs() -> Arc<RouteStats> {
    Arc::new(RouteStats::default())
}

#[test]
fn near_duplicate_version_crosses_as_deltas_byte_exact() {
    let v1 = data(20, 600_000);
    let v2 = edited(21, &v1, 150);
    // Without delta: the edited chunks cross as literals.
    let (tx, rx) = (side(), side());
    transfer(&v1, &tx, &rx, true, &rs(), &rs(), |_| {}).unwrap();
    let (out, plain_wan) = transfer_with(&v2, &tx, &rx, true, &rs(), &rs(), None, |_| {}).unwrap();
    assert_eq!(out, v2);
    // With delta, from the same starting state.
    let (tx, rx) = (side(), side());
    let d = delta_setup("rx");
    transfer_with(&v1, &tx, &rx, true, &rs(), &rs(), Some(&d), |_| {}).unwrap();
    let ts = rs();
    let (out, delta_wan) =
        transfer_with(&v2, &tx, &rx, true, &ts, &rs(), Some(&d), |_| {}).unwrap();
    assert_eq!(out, v2);
    let sent = load(&d.tx.delta_chunks);
    assert!(sent > 10, "only {sent} deltas");
    assert_eq!(load(&d.rx.delta_chunks), sent);
    assert_eq!(load(&d.rx.base_misses), 0);
    assert!(load(&d.tx.delta_saved_bytes) > 0);
    assert!(
        delta_wan * 3 < plain_wan,
        "delta {delta_wan} vs plain {plain_wan} WAN bytes"
    );
}

#[test]
fn delta_with_a_missing_base_is_recovered_through_the_miss_path() {
    let (tx, rx) = (side(), side());
    let d = delta_setup("rx");
    let v1 = data(22, 300_000);
    transfer_with(&v1, &tx, &rx, true, &rs(), &rs(), Some(&d), |_| {}).unwrap();
    // The receiver loses its store; the sender still believes it holds v1's chunks.
    let fresh = side();
    let v2 = edited(23, &v1, 60);
    let r = rs();
    let (out, _) = transfer_with(&v2, &tx, &fresh, true, &rs(), &r, Some(&d), |_| {}).unwrap();
    assert_eq!(out, v2);
    assert!(load(&d.tx.delta_chunks) > 0);
    // Every run lacked a base here: each failed as a whole and was supplied chunk by chunk.
    assert!(load(&d.rx.base_misses) > 0);
    assert_eq!(load(&d.rx.run_failures), load(&d.rx.runs));
    assert!(load(&r.misses) >= load(&d.rx.base_misses));
}

/// `v` split at `cuts` (sorted, in range): the parts a client that paused there sends.
fn split_at<'a>(v: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut parts = Vec::with_capacity(cuts.len() + 1);
    let mut at = 0;
    for &c in cuts {
        parts.push(&v[at..c]);
        at = c;
    }
    parts.push(&v[at..]);
    parts
}

#[test]
fn client_pauses_mid_chunk_change_no_chunk_and_previews_are_delivered_once() {
    let (tx, rx) = (side(), side());
    let d = delta_setup("rx");
    // Random bytes: nothing of a chunk could cross as anything but itself.
    let mut v = vec![0u8; 400_000];
    ChaCha8Rng::seed_from_u64(31).fill(&mut v[..]);
    let (s1, r1) = (rs(), rs());
    // First pass: the client paused five times, mid-chunk.
    let cuts = [20_001, 90_003, 90_500, 200_001, 333_333];
    let (out, wan1) = transfer_parts(
        &split_at(&v, &cuts),
        &tx,
        &rx,
        true,
        &s1,
        &r1,
        Some(&d),
        |_| {},
    )
    .unwrap();
    assert_eq!(out, v);
    assert_eq!(load(&r1.logical_bytes), v.len() as u64);
    // Previewed bytes cross once: the literal that completes a chunk carries only the rest, so
    // the pauses cost one frame header each over the same transfer without pauses.
    let d0 = delta_setup("rx");
    let (_, wan0) = transfer_parts(
        &[&v[..]],
        &side(),
        &side(),
        true,
        &rs(),
        &rs(),
        Some(&d0),
        |_| {},
    )
    .unwrap();
    // A pause costs a preview's frame header (a literal's, or a whole `Part` frame, the
    // larger), and the references pending then go out in a `Refs` frame of their own (type,
    // length and count: at most 8 bytes).
    let mut part = BytesMut::new();
    Frame::Part {
        id: [0; 32],
        len: 2,
        from: 0,
        to: 1,
    }
    .encode(&mut part);
    let per_pause = part.len().max(Frame::literal_overhead()) + 8;
    assert!(
        wan1 <= wan0 + cuts.len() * per_pause,
        "{wan1} WAN bytes with pauses, {wan0} without"
    );
    // Second pass, no pause: every chunk is one the pauses did not change, so all references.
    let (s2, r2) = (rs(), rs());
    let (out, wan2) =
        transfer_parts(&[&v[..]], &tx, &rx, true, &s2, &r2, Some(&d), |_| {}).unwrap();
    assert_eq!(out, v);
    assert_eq!(load(&s2.literal_chunks), 0);
    assert_eq!(load(&r2.dedup_saved_bytes), v.len() as u64);
    // Third pass, pauses elsewhere: each preview is a part of the chunk that came next last
    // time, so everything still crosses by reference.
    let (s3, r3) = (rs(), rs());
    let cuts = [5_000, 150_000, 150_001, 399_999];
    let (out, wan3) = transfer_parts(
        &split_at(&v, &cuts),
        &tx,
        &rx,
        true,
        &s3,
        &r3,
        Some(&d),
        |_| {},
    )
    .unwrap();
    assert_eq!(out, v);
    assert_eq!(load(&s3.literal_chunks), 0);
    assert_eq!(load(&r3.dedup_saved_bytes), v.len() as u64);
    assert_eq!(load(&r3.logical_bytes), v.len() as u64);
    assert!(
        wan3 <= wan2 + cuts.len() * per_pause,
        "{wan3} WAN bytes, {wan2} without pauses"
    );
    // Without the order chunks crossed in (no index), the previewed bytes cross as literals and
    // only those: the rest is still referenced.
    let (s4, r4) = (rs(), rs());
    let (out, wan4) =
        transfer_parts(&split_at(&v, &cuts), &tx, &rx, true, &s4, &r4, None, |_| {}).unwrap();
    assert_eq!(out, v);
    assert_eq!(load(&s4.literal_chunks), 0);
    let previewed = v.len() as u64 - load(&r4.dedup_saved_bytes);
    assert!(previewed > 0 && previewed < 300_000, "{previewed}");
    assert!(
        wan4 <= wan2 + previewed as usize + cuts.len() * per_pause,
        "{wan4} WAN bytes, {previewed} previewed, {wan2} without pauses"
    );
}

#[test]
fn a_chunk_previewed_entirely_before_the_end_is_still_stored_and_acknowledged() {
    let (tx, rx) = (side(), side());
    let v = data(41, 3_000);
    // The client sends everything, pauses (a preview of all of it), then closes.
    let (out, _) =
        transfer_parts(&[&v[..], &[]], &tx, &rx, true, &rs(), &rs(), None, |_| {}).unwrap();
    assert_eq!(out, v);
    // The chunk is in both stores: a repeat is one reference.
    let (s2, r2) = (rs(), rs());
    assert_eq!(transfer(&v, &tx, &rx, true, &s2, &r2, |_| {}).unwrap(), v);
    assert_eq!(load(&s2.literal_chunks), 0);
    assert_eq!(load(&r2.dedup_saved_bytes), v.len() as u64);
}

#[test]
fn a_previewed_chunk_the_receiver_lost_is_supplied_and_only_its_rest_delivered() {
    let tx = side();
    let v = data(42, 200_000);
    let cuts = [1_000, 77_777, 150_000];
    // Without the chain, literal previews; with it, previews are parts of chunks. Either way
    // the receiver's store is new while the sender believes it holds every chunk.
    let d = delta_setup("rx");
    for delta in [None, Some(&d)] {
        transfer_with(&v, &tx, &side(), true, &rs(), &rs(), delta, |_| {}).unwrap();
        let r = rs();
        let parts = split_at(&v, &cuts);
        let (out, _) =
            transfer_parts(&parts, &tx, &side(), true, &rs(), &r, delta, |_| {}).unwrap();
        assert_eq!(out, v);
        assert!(load(&r.misses) > 0);
    }
}

#[test]
fn corrupted_or_inconsistent_previews_end_the_flow_and_deliver_nothing_wrong() {
    let (tx, rx) = (side(), side());
    let mut v = vec![0u8; 100_000];
    ChaCha8Rng::seed_from_u64(43).fill(&mut v[..]);
    let parts = split_at(&v, &[30_000]);
    // A preview whose bytes do not hash to its id.
    let err = transfer_parts(&parts, &tx, &rx, true, &rs(), &rs(), None, |f| {
        if let Frame::Literal { payload, codec, .. } = f {
            if *codec & PREVIEW_FLAG != 0 {
                let mut p = payload.to_vec();
                p[0] ^= 1;
                *payload = p.into();
            }
        }
    })
    .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    // A sender whose chunk does not start with what it previewed: a consistent preview of
    // other bytes (re-hashed), then the real chunk by reference.
    transfer(&v, &tx, &rx, true, &rs(), &rs(), |_| {}).unwrap();
    let hasher = ChunkHasher::new(KEY);
    let err = transfer_parts(&parts, &tx, &rx, true, &rs(), &rs(), None, |f| {
        if let Frame::Literal {
            id, payload, codec, ..
        } = f
        {
            if *codec & PREVIEW_FLAG != 0 {
                let mut p = payload.to_vec();
                p[0] ^= 1;
                *id = hasher.id(&p).0;
                *payload = p.into();
            }
        }
    })
    .unwrap_err();
    assert!(matches!(err, Error::PreviewMismatch(_)), "{err}");
    // Hostile orders: a delta run or the end of the direction right after a preview.
    let mut dec = lone_decoder(&rx);
    let mut wants = Vec::new();
    let p = Bytes::from_static(b"previewed");
    let preview = Frame::Literal {
        id: hasher.id(&p).0,
        codec: PREVIEW_FLAG | NO_STORE_FLAG,
        len: p.len() as u32,
        payload: p,
    };
    dec.on_frame(preview.clone(), &mut wants).unwrap();
    assert_eq!(dec.pop_ready().as_deref(), Some(&b"previewed"[..]));
    assert!(matches!(
        dec.on_frame(Frame::End, &mut wants),
        Err(Error::Unexpected(_))
    ));
    let run = Frame::DeltaRun {
        digest: [0; 32],
        items: vec![strait_wire::RunItem::Same(strait_wire::BaseRef::Id(
            [1; 32],
        ))],
        payload: Bytes::new(),
    };
    assert!(matches!(
        dec.on_frame(run, &mut wants),
        Err(Error::Unexpected(_))
    ));
    // A part must continue the previews, and names a chunk only this peer's entries can give.
    let mut dec = lone_decoder(&rx);
    dec.on_frame(preview, &mut wants).unwrap();
    let part = |from| Frame::Part {
        id: [9; 32],
        len: 100,
        from,
        to: 50,
    };
    assert!(matches!(
        dec.on_frame(part(0), &mut wants),
        Err(Error::Unexpected(_))
    ));
    let mut dec = lone_decoder(&rx);
    wants.clear();
    dec.on_frame(part(0), &mut wants).unwrap();
    assert_eq!(wants, vec![[9; 32]]);
    assert!(dec.pop_ready().is_none());
    // Previews alone never grow past one chunk.
    let big = Bytes::from(vec![0u8; strait_wire::MAX_CHUNK_LEN]);
    let err = dec
        .on_frame(
            Frame::Literal {
                id: hasher.id(&big).0,
                codec: PREVIEW_FLAG | NO_STORE_FLAG,
                len: big.len() as u32,
                payload: big,
            },
            &mut wants,
        )
        .unwrap_err();
    assert!(matches!(err, Error::TooLong { .. }), "{err}");
}

#[test]
fn a_base_only_another_peer_holds_is_never_used() {
    let (tx, rx) = (side(), side());
    let d = delta_setup("other-edge");
    let v1 = data(24, 300_000);
    // v1 went to another edge: the sender's entries list that edge only.
    transfer_with(&v1, &tx, &side(), true, &rs(), &rs(), Some(&d), |_| {}).unwrap();
    assert!(d.index.stats().entries > 0);
    // Same index and store, but this flow is to "rx".
    let d2 = DeltaSetup {
        index: d.index.clone(),
        rx_index: d.rx_index.clone(),
        tx: Arc::new(DeltaStats::default()),
        rx: Arc::new(DeltaStats::default()),
        hints: (0..4).map(|_| strait_chunk::ChunkId([0; 32])).collect(),
        peer_name: "rx",
    };
    let v2 = edited(25, &v1, 60);
    let (out, _) = transfer_with(&v2, &tx, &rx, true, &rs(), &rs(), Some(&d2), |_| {}).unwrap();
    assert_eq!(out, v2);
    assert_eq!(load(&d2.tx.delta_chunks), 0);
    assert_eq!(load(&d2.tx.attempts), 0);
}

#[test]
fn base_hints_find_bases_the_index_no_longer_has() {
    let (tx, rx) = (side(), side());
    let v1 = data(26, 300_000);
    // v1 crossed without a sketch index (e.g. before a restart).
    transfer(&v1, &tx, &rx, true, &rs(), &rs(), |_| {}).unwrap();
    let hasher = ChunkHasher::new(KEY);
    let hints: Vec<_> = strait_chunk::chunk_boundaries(small_chunks(), &v1)
        .into_iter()
        .map(|r| hasher.id(&v1[r]))
        .collect();
    let mut d = delta_setup("rx");
    d.hints = hints;
    let v2 = edited(27, &v1, 60);
    let (out, _) = transfer_with(&v2, &tx, &rx, true, &rs(), &rs(), Some(&d), |_| {}).unwrap();
    assert_eq!(out, v2);
    assert!(load(&d.tx.delta_chunks) > 5, "{}", load(&d.tx.delta_chunks));
}

#[test]
fn corrupted_delta_is_re_requested_never_delivered() {
    let (tx, rx) = (side(), side());
    let d = delta_setup("rx");
    let v1 = data(28, 200_000);
    transfer_with(&v1, &tx, &rx, true, &rs(), &rs(), Some(&d), |_| {}).unwrap();
    let v2 = edited(29, &v1, 40);
    let r = rs();
    let mut flipped = 0;
    let (out, _) = transfer_with(&v2, &tx, &rx, true, &rs(), &r, Some(&d), |f| {
        if let Frame::DeltaRun { payload, .. } = f {
            if flipped < 2 && !payload.is_empty() {
                let mut p = payload.to_vec();
                let last = p.len() - 1;
                p[last] ^= 0x40;
                *payload = p.into();
                flipped += 1;
            }
        }
    })
    .unwrap();
    assert_eq!(out, v2);
    assert!(flipped > 0);
    assert_eq!(load(&r.verify_failures), flipped);
    assert_eq!(load(&d.rx.run_failures), flipped);
}

/// v1 then an edited v2 through a fresh pair with delta on; returns the pair, setup and v2.
fn delta_pair(seed: u64, len: usize, edits: usize) -> (Side, Side, DeltaSetup, Vec<u8>) {
    let (tx, rx) = (side(), side());
    let d = delta_setup("rx");
    let v1 = data(seed, len);
    transfer_with(&v1, &tx, &rx, true, &rs(), &rs(), Some(&d), |_| {}).unwrap();
    let v2 = edited(seed ^ 0x5a, &v1, edits);
    (tx, rx, d, v2)
}

#[test]
fn scattered_edits_cross_as_runs_with_compact_base_names() {
    let (tx, rx, d, v2) = delta_pair(40, 400_000, 60);
    let mut names = [0usize; 3];
    let (out, _) = transfer_with(&v2, &tx, &rx, true, &rs(), &rs(), Some(&d), |f| {
        if let Frame::DeltaRun { items, .. } = f {
            for it in items.iter() {
                match it.base() {
                    strait_wire::BaseRef::Next(_) => names[0] += 1,
                    strait_wire::BaseRef::Prefix(_) => names[1] += 1,
                    strait_wire::BaseRef::Id(_) => names[2] += 1,
                }
            }
        }
    })
    .unwrap();
    assert_eq!(out, v2);
    assert!(load(&d.tx.runs) > 0);
    assert_eq!(load(&d.rx.runs), load(&d.tx.runs));
    assert_eq!(load(&d.rx.run_failures), 0);
    // Bases are named by position almost always (one byte instead of 36).
    assert!(names[0] > 10 * (names[1] + names[2]), "names {names:?}");
}

#[test]
fn a_wrongly_named_base_fails_the_run_digest_and_is_re_requested() {
    let (tx, rx, d, v2) = delta_pair(41, 300_000, 40);
    let r = rs();
    let mut bent = 0;
    let (out, _) = transfer_with(&v2, &tx, &rx, true, &rs(), &r, Some(&d), |f| {
        if let Frame::DeltaRun { items, .. } = f {
            if bent == 0 {
                // Point the first delta item one chunk further along: a base the receiver holds,
                // but the wrong one. The rebuilt bytes must not be delivered.
                for it in items.iter_mut() {
                    if let RunItemMut::Delta(b) = as_mut(it) {
                        *b = match *b {
                            strait_wire::BaseRef::Next(n) if n < 8 => {
                                strait_wire::BaseRef::Next(n + 1)
                            }
                            _ => strait_wire::BaseRef::Id([9; 32]),
                        };
                        bent += 1;
                        break;
                    }
                }
            }
        }
    })
    .unwrap();
    assert_eq!(out, v2);
    assert_eq!(bent, 1);
    assert_eq!(load(&d.rx.run_failures), 1);
}

enum RunItemMut<'a> {
    Delta(&'a mut strait_wire::BaseRef),
    Same,
}

fn as_mut(it: &mut strait_wire::RunItem) -> RunItemMut<'_> {
    match it {
        strait_wire::RunItem::Delta { base, .. } => RunItemMut::Delta(base),
        strait_wire::RunItem::Same(_) => RunItemMut::Same,
    }
}

#[test]
fn a_run_corrupted_on_every_attempt_resets_the_flow() {
    let (tx, rx, d, v2) = delta_pair(42, 200_000, 30);
    let r = transfer_with(&v2, &tx, &rx, true, &rs(), &rs(), Some(&d), |f| match f {
        Frame::DeltaRun { payload, .. } | Frame::Supply { payload, .. } if !payload.is_empty() => {
            let mut p = payload.to_vec();
            p[0] ^= 1;
            *payload = p.into();
        }
        _ => {}
    });
    assert!(matches!(r, Err(Error::Corrupt { .. })), "{:?}", r.err());
}

#[test]
fn a_receiver_without_a_chain_recovers_every_run_through_the_miss_path() {
    let (tx, rx, mut d, v2) = delta_pair(43, 300_000, 40);
    d.rx_index = None;
    let (out, _) = transfer_with(&v2, &tx, &rx, true, &rs(), &rs(), Some(&d), |_| {}).unwrap();
    assert_eq!(out, v2);
    assert!(load(&d.rx.runs) > 0);
    assert_eq!(load(&d.rx.run_failures), load(&d.rx.runs));
}

pub(super) fn lone_decoder(rx: &Side) -> FlowDecoder {
    let peer = rx.store.peer_slot("tx").unwrap();
    FlowDecoder::new(ChunkHasher::new(KEY), rx.store.clone(), peer, 1 << 20, rs()).with_delta(
        Some(Arc::new(SketchIndex::new(1 << 20))),
        Arc::new(DeltaStats::default()),
    )
}

#[test]
fn hostile_runs_are_rejected_with_named_errors_and_never_deliver() {
    let rx = side();
    let hasher = ChunkHasher::new(KEY);
    let base = data(44, 5000);
    let base_id = hasher.id(&base).0;
    let peer = rx.store.peer_slot("tx").unwrap();
    rx.store.put(&base_id, &base, peer).unwrap();
    // A length difference making a chunk longer than any chunk may be.
    let mut dec = lone_decoder(&rx);
    let mut wants = Vec::new();
    let f = Frame::DeltaRun {
        digest: [1; 32],
        items: vec![strait_wire::RunItem::Delta {
            base: strait_wire::BaseRef::Id(base_id),
            len_diff: strait_wire::MAX_CHUNK_LEN as i32,
        }],
        payload: bytes::Bytes::from_static(b"x"),
    };
    let e = dec.on_frame(f, &mut wants).unwrap_err();
    assert!(matches!(e, Error::TooLong { .. }), "{e}");
    assert!(dec.pop_ready().is_none());
    // A run naming a chunk this peer never gave: wanted, nothing delivered; a run supply
    // nobody asked for is a protocol error.
    let mut dec = lone_decoder(&rx);
    let mut wants = Vec::new();
    let f = Frame::DeltaRun {
        digest: [2; 32],
        items: vec![strait_wire::RunItem::Same(strait_wire::BaseRef::Id(
            [3; 32],
        ))],
        payload: bytes::Bytes::new(),
    };
    dec.on_frame(f, &mut wants).unwrap();
    assert_eq!(wants, vec![[2; 32]]);
    assert!(dec.pop_ready().is_none());
    assert!(dec.is_waiting());
    // The supply answering it carries bytes whose ids do not hash to the digest: not delivered.
    let supply = Frame::Supply {
        id: base_id,
        codec: crate::run::RUN_SUPPLY_FLAG,
        len: base.len() as u32,
        payload: base.clone().into(),
    };
    let mut wants = Vec::new();
    dec.on_frame(supply.clone(), &mut wants).unwrap();
    assert!(dec.pop_ready().is_none());
    assert_eq!(wants, vec![[2; 32]]);
    let mut dec = lone_decoder(&rx);
    let e = dec.on_frame(supply, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, Error::UnrequestedSupply(_)), "{e}");
}

#[test]
fn encoder_answers_a_run_want_with_every_chunk_in_order_and_rejects_unknown_digests() {
    let (tx, rx, d, v2) = delta_pair(45, 200_000, 30);
    let hasher = ChunkHasher::new(KEY);
    let peer = tx.store.peer_slot("rx").unwrap();
    let cfg = EncoderConfig {
        chunker: small_chunks(),
        window: 1 << 20,
        ..EncoderConfig::default()
    };
    let mut enc = FlowEncoder::new(cfg, hasher.clone(), tx.store.clone(), peer, rs())
        .with_delta(d.index.clone(), d.tx.clone());
    let mut wire = BytesMut::new();
    enc.push(&v2, &mut wire);
    enc.finish(&mut wire);
    let (frames, rest) = strait_wire::decode_all(&wire).unwrap();
    assert_eq!(rest, 0);
    let run = frames.iter().find_map(|f| match f {
        Frame::DeltaRun { digest, items, .. } => Some((*digest, items.len())),
        _ => None,
    });
    let (digest, n) = run.expect("no delta run was sent");
    let mut out = BytesMut::new();
    enc.on_want(&[digest]).unwrap();
    while enc.poll_supply(&mut out) {}
    let (supplies, _) = strait_wire::decode_all(&out).unwrap();
    assert_eq!(supplies.len(), n);
    let ids: Vec<WireIdT> = supplies
        .iter()
        .map(|f| match f {
            Frame::Supply { id, codec, .. } => {
                assert_ne!(codec & crate::run::RUN_SUPPLY_FLAG, 0);
                *id
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(crate::run::run_digest(&hasher, ids.iter()), digest);
    assert!(matches!(
        enc.on_want(&[[0xee; 32]]),
        Err(Error::UnknownWant(_))
    ));
    drop(rx);
}

type WireIdT = strait_wire::WireId;

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]
    /// Random chunks, random edits, random receiver state (kept or wiped): delta transfers
    /// always deliver exactly the input.
    #[test]
    fn delta_roundtrip_is_byte_exact_for_random_edits(seed in any::<u64>(), len in 1usize..150_000, edits in 0usize..80, wipe in any::<bool>(), pauses in proptest::collection::vec(any::<u32>(), 0..4)) {
        let (tx, rx) = (side(), side());
        let d = delta_setup("rx");
        let v1 = data(seed, len);
        transfer_with(&v1, &tx, &rx, true, &rs(), &rs(), Some(&d), |_| {}).unwrap();
        let rx = if wipe { side() } else { rx };
        let v2 = edited(seed ^ 0x77, &v1, edits);
        let mut cuts: Vec<usize> = pauses.iter().map(|p| *p as usize % (v2.len() + 1)).collect();
        cuts.sort_unstable();
        let (out, _) = transfer_parts(&split_at(&v2, &cuts), &tx, &rx, true, &rs(), &rs(), Some(&d), |_| {}).unwrap();
        prop_assert_eq!(out, v2);
    }
}

/// Encodes `input` after `history` was sent, and returns the fraction of `input` that crossed as
/// references.
fn ref_fraction_after(history: &[u8], input: &[u8], format_cuts: bool) -> f64 {
    let (tx, _rx) = (side(), side());
    let peer = tx.store.peer_slot("rx").unwrap();
    let cfg = EncoderConfig {
        chunker: ChunkerConfig::default(),
        dedup: true,
        compress: CompressConfig {
            level: None,
            tensor: false,
        },
        window: u64::MAX,
        delta: DeltaConfig {
            enabled: false,
            ..DeltaConfig::default()
        },
        format_cuts,
    };
    let hasher = ChunkHasher::new(KEY);
    for (data, stats) in [
        (history, Arc::new(RouteStats::default())),
        (input, Arc::new(RouteStats::default())),
    ] {
        let mut enc = FlowEncoder::new(cfg, hasher.clone(), tx.store.clone(), peer, stats.clone());
        let mut out = BytesMut::new();
        for piece in data.chunks(100_000) {
            enc.push(piece, &mut out);
        }
        enc.finish(&mut out);
        if std::ptr::eq(data, input) {
            use std::sync::atomic::Ordering::Relaxed;
            return stats.dedup_saved_bytes.load(Relaxed) as f64 / input.len() as f64;
        }
    }
    unreachable!()
}

#[test]
fn safetensors_tensor_boundaries_keep_unchanged_tensors_deduplicable() {
    // 60 tensors of 96 KiB (not a multiple of the chunk size), 20% of them changed in v2.
    let v1 = strait_datagen::safetensors_bf16(
        &strait_datagen::checkpoint_seeds(5, 60, 0, 0.2),
        48 * 1024,
    );
    let v2 = strait_datagen::safetensors_bf16(
        &strait_datagen::checkpoint_seeds(5, 60, 1, 0.2),
        48 * 1024,
    );
    let changed = strait_datagen::checkpoint_seeds(5, 60, 0, 0.2)
        .iter()
        .zip(strait_datagen::checkpoint_seeds(5, 60, 1, 0.2))
        .filter(|(a, b)| **a != *b)
        .count();
    let unchanged = 1.0 - changed as f64 / 60.0;
    let aligned = ref_fraction_after(&v1, &v2, true);
    let plain = ref_fraction_after(&v1, &v2, false);
    // Aligned cuts reuse nearly every unchanged tensor; plain CDC loses the chunks that straddle
    // a changed neighbour.
    assert!(
        aligned >= unchanged - 0.03,
        "aligned {aligned:.3} vs unchanged share {unchanged:.3}"
    );
    assert!(
        aligned > plain + 0.02,
        "aligned {aligned:.3} not better than plain {plain:.3}"
    );
}
