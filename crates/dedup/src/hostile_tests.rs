#![allow(clippy::unwrap_used)]
//! A hostile peer against one engine (issue 14): amplified wants, floods of unknown ids, runs
//! that name one chunk many times, chunks longer than the peer announced, previews that do not
//! match, and the process budget.

use super::tests::{data, lone_decoder, rs, side, small_chunks, Side, KEY};
use super::*;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use strait_chunk::{ChunkHasher, ChunkerConfig};
use strait_codec::CompressConfig;
use strait_wire::{BaseRef, ChunkRef, Frame, RunItem, WireId};

fn encoder(s: &Side, chunker: ChunkerConfig, window: u64) -> FlowEncoder {
    let cfg = EncoderConfig {
        chunker,
        dedup: true,
        compress: CompressConfig {
            level: Some(1),
            tensor: false,
        },
        window,
        delta: DeltaConfig::default(),
        format_cuts: false,
    };
    let peer = s.store.peer_slot("rx").unwrap();
    FlowEncoder::new(cfg, ChunkHasher::new(KEY), s.store.clone(), peer, rs())
}

fn frames(b: &[u8]) -> Vec<Frame> {
    let (f, rest) = strait_wire::decode_all(b).unwrap();
    assert_eq!(rest, 0);
    f
}

/// Ids and lengths of the literals in `frames`.
fn literals(frames: &[Frame]) -> Vec<(WireId, u32)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Literal { id, len, .. } => Some((*id, *len)),
            _ => None,
        })
        .collect()
}

/// An encoder holding 2 MiB of random chunks (each near the 256 KiB max) and the largest one.
fn holding_large_chunks(tx: &Side) -> (FlowEncoder, WireId, u32) {
    let chunker = ChunkerConfig::new(64 << 10, 128 << 10, 256 << 10).unwrap();
    let mut enc = encoder(tx, chunker, 64 << 20);
    let mut wire = BytesMut::new();
    enc.push(&data(7, 2 << 20)[1 << 20..], &mut wire);
    enc.finish(&mut wire);
    let lits = literals(&frames(&wire));
    let (id, len) = *lits.iter().max_by_key(|(_, l)| *l).unwrap();
    assert!(len >= 128 << 10, "largest chunk only {len} bytes");
    (enc, id, len)
}

#[test]
fn a_want_repeating_one_held_chunk_4096_times_is_reset_after_queueing_one_supply() {
    let tx = side();
    let (mut enc, id, len) = holding_large_chunks(&tx);
    // A 131 KB want naming it 4,096 times: one supply queued, the third naming is refused.
    let e = enc
        .on_want(&vec![id; strait_wire::MAX_REFS_PER_FRAME])
        .unwrap_err();
    assert!(matches!(e, Error::RepeatedWant { wants: 3, .. }), "{e}");
    let mut out = BytesMut::new();
    let mut polls = 0;
    while enc.poll_supply(&mut out) {
        polls += 1;
    }
    assert_eq!(polls, 1);
    let supplies = frames(&out);
    assert!(
        matches!(&supplies[..], [Frame::Supply { id: s, len: l, .. }] if *s == id && *l == len)
    );
    assert!(
        out.len() < len as usize + 128,
        "{} bytes for one chunk",
        out.len()
    );
}

#[test]
fn a_wanted_chunk_is_supplied_once_per_want_and_marked_again_only_at_the_ack() {
    let tx = side();
    let (mut enc, id, _) = holding_large_chunks(&tx);
    let peer = tx.store.peer_slot("rx").unwrap();
    assert!(tx.store.peer_has(&id, peer));
    enc.on_want(&[id]).unwrap();
    assert!(enc.poll_supply(&mut BytesMut::new()));
    assert!(!enc.poll_supply(&mut BytesMut::new()));
    // Not referenced again until the peer acknowledged the supplied copy.
    assert!(!tx.store.peer_has(&id, peer));
    // One re-want (a failed verification) is answered; the next is a protocol error.
    enc.on_want(&[id]).unwrap();
    assert!(enc.poll_supply(&mut BytesMut::new()));
    assert!(!enc.poll_supply(&mut BytesMut::new()));
    let e = enc.on_want(&[id]).unwrap_err();
    assert!(matches!(e, Error::RepeatedWant { wants: 3, .. }), "{e}");
    // A duplicate of a supply still queued counts too.
    let (mut enc2, id2, _) = holding_large_chunks(&side());
    enc2.on_want(&[id2]).unwrap();
    enc2.on_want(&[id2]).unwrap();
    assert!(matches!(
        enc2.on_want(&[id2]),
        Err(Error::RepeatedWant { wants: 3, .. })
    ));
    assert!(enc2.poll_supply(&mut BytesMut::new()));
    assert!(!enc2.poll_supply(&mut BytesMut::new()));
    // Acknowledged: marked for the peer again, exactly then.
    assert!(!tx.store.peer_has(&id, peer));
    enc.on_ack(enc.sent_items()).unwrap();
    assert!(tx.store.peer_has(&id, peer));
    assert!(matches!(enc.on_want(&[id]), Err(Error::UnknownWant(_))));
}

#[test]
fn supplies_are_emitted_one_chunk_per_poll_and_counted_while_queued() {
    let tx = side();
    let mut enc = encoder(&tx, small_chunks(), 1 << 20);
    let mut wire = BytesMut::new();
    enc.push(&data(8, 200_000), &mut wire);
    enc.finish(&mut wire);
    let lits = literals(&frames(&wire));
    assert!(lits.len() > 10);
    let before = enc.held_bytes();
    let ids: Vec<WireId> = lits.iter().map(|(id, _)| *id).collect();
    enc.on_want(&ids).unwrap();
    assert_eq!(
        enc.held_bytes() - before,
        // A queued supply and its want entry.
        2 * ids.len() as u64 * MIN_SLOT_BYTES
    );
    for (id, len) in &lits {
        let mut out = BytesMut::new();
        assert!(enc.has_supply());
        assert!(enc.poll_supply(&mut out));
        let f = frames(&out);
        assert_eq!(f.len(), 1);
        assert!(matches!(&f[0], Frame::Supply { id: s, len: l, .. } if s == id && l == len));
    }
    assert!(!enc.has_supply());
    assert!(!enc.poll_supply(&mut BytesMut::new()));
}

/// A `Refs` frame of `MAX_REFS_PER_FRAME` distinct unknown one-byte chunks, numbered on from `n`.
fn unknown_refs(tag: u8, n: &mut u32) -> Frame {
    Frame::Refs(
        (0..strait_wire::MAX_REFS_PER_FRAME)
            .map(|_| {
                *n += 1;
                let mut id = [tag; 32];
                id[..4].copy_from_slice(&n.to_be_bytes());
                ChunkRef { id, len: 1 }
            })
            .collect(),
    )
}

#[test]
fn a_refs_flood_of_unknown_ids_costs_constant_work_per_id() {
    let rx = side();
    // The default flow window: 119 frames of 4,096 one-byte unknown ids fit its bound.
    let window = 64 << 20;
    let peer = rx.store.peer_slot("tx").unwrap();
    let mut dec = FlowDecoder::new(ChunkHasher::new(KEY), rx.store.clone(), peer, window, rs())
        .with_peer_max_chunk(256 << 10);
    let per_frame = strait_wire::MAX_REFS_PER_FRAME;
    let frames = 119;
    let mut wanted = 0;
    let mut n: u32 = 0;
    for _ in 0..frames {
        let mut wants = Vec::new();
        dec.on_frame(unknown_refs(0, &mut n), &mut wants).unwrap();
        wanted += wants.len();
    }
    let ids = frames * per_frame;
    assert_eq!(wanted, ids);
    // Each one-byte slot counts a whole slot.
    assert_eq!(dec.held_bytes(), ids as u64 * MIN_SLOT_BYTES);
    // Linear: a constant number of slot and index visits per id, however long the queue.
    assert!(dec.visits <= 2 * ids as u64, "{} visits", dec.visits);
    // Supplying the last id fills its slot without scanning the queue.
    let visits = dec.visits;
    let last = ChunkHasher::new(KEY).id(b"z").0;
    let mut wants = Vec::new();
    dec.on_frame(Frame::Refs(vec![ChunkRef { id: last, len: 1 }]), &mut wants)
        .unwrap();
    dec.on_frame(
        Frame::Supply {
            id: last,
            codec: 0,
            len: 1,
            payload: Bytes::from_static(b"z"),
        },
        &mut wants,
    )
    .unwrap();
    assert!(dec.visits - visits <= 4, "{} visits", dec.visits - visits);
    // With a smaller window the flood ends with the window error, counted honestly.
    let mut dec = FlowDecoder::new(ChunkHasher::new(KEY), rx.store.clone(), peer, 1 << 20, rs())
        .with_peer_max_chunk(16 << 10);
    let limit = (2u64 << 20) + (16 << 10);
    let mut n: u32 = 0;
    let err = (0..frames)
        .find_map(|_| dec.on_frame(unknown_refs(1, &mut n), &mut Vec::new()).err())
        .unwrap();
    assert!(
        matches!(err, Error::WindowExceeded { limit: l, .. } if l == limit),
        "{err}"
    );
    assert_eq!(
        u64::from(n),
        (limit / MIN_SLOT_BYTES).div_ceil(per_frame as u64) * per_frame as u64
    );
}

#[test]
fn a_run_naming_one_chunk_many_times_loads_it_once_and_counts_every_naming() {
    let rx = side();
    let hasher = ChunkHasher::new(KEY);
    let chunk = data(9, 16 << 10);
    let id = hasher.id(&chunk).0;
    let peer = rx.store.peer_slot("tx").unwrap();
    rx.store.put(&id, &chunk, peer).unwrap();
    let run = |n: usize| Frame::DeltaRun {
        digest: run::run_digest(&hasher, std::iter::repeat_n(&id, n)),
        items: vec![RunItem::Same(BaseRef::Id(id)); n],
        payload: Bytes::new(),
    };
    // 64 namings of 16 KiB fit a 1 MiB window's bound: loaded (and hashed) once, delivered 64
    // times.
    let mut dec = lone_decoder(&rx).with_peer_max_chunk(16 << 10);
    let hits = rx.store.stats().hits;
    dec.on_frame(run(64), &mut Vec::new()).unwrap();
    assert_eq!(rx.store.stats().hits - hits, 1);
    let mut out = Vec::new();
    while let Some(b) = dec.pop_ready() {
        assert_eq!(&b[..], &chunk[..]);
        out.push(b);
    }
    assert_eq!(out.len(), 64);
    // 256 namings exceed the bound (2 MiB + a chunk): refused before the digest is checked,
    // after one load.
    let mut dec = lone_decoder(&rx).with_peer_max_chunk(16 << 10);
    let hits = rx.store.stats().hits;
    let e = dec.on_frame(run(256), &mut Vec::new()).unwrap_err();
    assert!(matches!(e, Error::WindowExceeded { .. }), "{e}");
    assert_eq!(rx.store.stats().hits - hits, 1);
    assert!(dec.pop_ready().is_none());
}

#[test]
fn supplies_collected_for_a_failed_run_count_in_the_queue() {
    let rx = side();
    let mut dec = lone_decoder(&rx);
    let mut wants = Vec::new();
    let items = vec![RunItem::Same(BaseRef::Id([3; 32])); 4];
    dec.on_frame(
        Frame::DeltaRun {
            digest: [2; 32],
            items,
            payload: Bytes::new(),
        },
        &mut wants,
    )
    .unwrap();
    assert_eq!(wants, vec![[2; 32]]);
    assert_eq!(dec.held_bytes(), 4 * MIN_SLOT_BYTES);
    let hasher = ChunkHasher::new(KEY);
    let piece = data(10, 5000);
    dec.on_frame(
        Frame::Supply {
            id: hasher.id(&piece).0,
            codec: run::RUN_SUPPLY_FLAG,
            len: piece.len() as u32,
            payload: piece.clone().into(),
        },
        &mut wants,
    )
    .unwrap();
    assert_eq!(dec.held_bytes(), 4 * MIN_SLOT_BYTES + piece.len() as u64);
}

#[test]
fn chunks_longer_than_the_peer_announced_are_refused_on_every_path() {
    let rx = side();
    let hasher = ChunkHasher::new(KEY);
    let max = 4096u32;
    // 5,000 zero bytes: a literal of a few dozen bytes of zstd.
    let big = vec![0u8; 5000];
    let id = hasher.id(&big).0;
    let mut payload = Vec::new();
    let codec = strait_codec::Encoder::new(CompressConfig {
        level: Some(3),
        tensor: false,
    })
    .encode(&big, &mut payload);
    assert!(payload.len() < 1000);
    let codec = u8::from(codec);
    let peer = rx.store.peer_slot("tx").unwrap();
    rx.store.put(&id, &big, peer).unwrap();
    let literal = Frame::Literal {
        id,
        codec,
        len: big.len() as u32,
        payload: payload.clone().into(),
    };
    let cases: Vec<(&str, Vec<Frame>)> = vec![
        ("literal", vec![literal.clone()]),
        (
            "reference",
            vec![Frame::Refs(vec![ChunkRef {
                id,
                len: big.len() as u32,
            }])],
        ),
        (
            "part",
            vec![Frame::Part {
                id,
                len: big.len() as u32,
                from: 0,
                to: 10,
            }],
        ),
        (
            "delta",
            vec![Frame::Delta {
                id,
                codec: strait_wire::DELTA_ZSTD_PREFIX,
                len: big.len() as u32,
                bases: vec![],
                payload: payload.clone().into(),
            }],
        ),
        (
            "run item",
            vec![Frame::DeltaRun {
                digest: [5; 32],
                items: vec![RunItem::Same(BaseRef::Id(id))],
                payload: Bytes::new(),
            }],
        ),
        (
            "run supply",
            vec![
                Frame::DeltaRun {
                    digest: [6; 32],
                    items: vec![RunItem::Same(BaseRef::Id([7; 32]))],
                    payload: Bytes::new(),
                },
                Frame::Supply {
                    id,
                    codec: codec | run::RUN_SUPPLY_FLAG,
                    len: big.len() as u32,
                    payload: payload.clone().into(),
                },
            ],
        ),
    ];
    for (what, frames) in cases {
        let mut dec = lone_decoder(&rx).with_peer_max_chunk(max);
        let mut wants = Vec::new();
        let e = frames
            .into_iter()
            .find_map(|f| dec.on_frame(f, &mut wants).err())
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(
            matches!(
                e,
                Error::TooLong {
                    len: 5000,
                    max: 4096
                }
            ),
            "{what}: {e}"
        );
        assert!(dec.pop_ready().is_none(), "{what}: delivered");
    }
    // Within the announced max it is accepted.
    let mut dec = lone_decoder(&rx).with_peer_max_chunk(8192);
    dec.on_frame(literal, &mut Vec::new()).unwrap();
    assert_eq!(&dec.pop_ready().unwrap()[..], &big[..]);
}

/// A receiver lacking chunk `p` gets a `Part` of it, then `next` (a chunk it holds, named by
/// reference), then `p`'s supply.
fn lost_part_then(
    rx: &Side,
    p: &[u8],
    next: &[u8],
    previewed: u32,
) -> (Result<(), Error>, Vec<u8>) {
    let hasher = ChunkHasher::new(KEY);
    let (pid, nid) = (hasher.id(p).0, hasher.id(next).0);
    let peer = rx.store.peer_slot("tx").unwrap();
    rx.store.put(&nid, next, peer).unwrap();
    let mut dec = lone_decoder(rx);
    let mut wants = Vec::new();
    let mut out = Vec::new();
    let frames = [
        Frame::Part {
            id: pid,
            len: p.len() as u32,
            from: 0,
            to: previewed,
        },
        Frame::Refs(vec![ChunkRef {
            id: nid,
            len: next.len() as u32,
        }]),
        Frame::Supply {
            id: pid,
            codec: 0,
            len: p.len() as u32,
            payload: Bytes::copy_from_slice(p),
        },
    ];
    for f in frames {
        if let Err(e) = dec.on_frame(f, &mut wants) {
            return (Err(e), out);
        }
        while let Some(b) = dec.pop_ready() {
            out.extend_from_slice(&b);
        }
    }
    assert_eq!(wants, vec![pid]);
    (Ok(()), out)
}

#[test]
fn after_a_lost_part_the_preview_check_is_deferred_not_skipped() {
    let rx = side();
    let p = data(11, 3000);
    // The next chunk does not start with the previewed bytes: the flow fails when the part's
    // bytes arrive, and nothing of that chunk was delivered.
    let other = data(12, 4000);
    let (r, out) = lost_part_then(&rx, &p, &other, 1000);
    let e = r.unwrap_err();
    assert!(matches!(e, Error::PreviewMismatch(_)), "{e}");
    assert!(out.is_empty(), "{} bytes delivered", out.len());
    // It does: the previewed bytes, then the rest of the chunk, byte-exact.
    let mut same = p[..1000].to_vec();
    same.extend_from_slice(&data(13, 2000));
    let (r, out) = lost_part_then(&side(), &p, &same, 1000);
    r.unwrap();
    assert_eq!(out, same);
}

#[test]
fn a_lost_part_completed_by_a_literal_is_checked_when_both_are_supplied() {
    let rx = side();
    let hasher = ChunkHasher::new(KEY);
    let p = data(14, 3000);
    let other = data(15, 4000);
    let (pid, oid) = (hasher.id(&p).0, hasher.id(&other).0);
    let mut dec = lone_decoder(&rx);
    let mut wants = Vec::new();
    dec.on_frame(
        Frame::Part {
            id: pid,
            len: p.len() as u32,
            from: 0,
            to: 1000,
        },
        &mut wants,
    )
    .unwrap();
    // The literal of the bytes after the previews cannot be verified yet: wanted whole.
    dec.on_frame(
        Frame::Literal {
            id: oid,
            codec: 0,
            len: 3000,
            payload: Bytes::copy_from_slice(&other[1000..]),
        },
        &mut wants,
    )
    .unwrap();
    assert_eq!(wants, vec![pid, oid]);
    let supply = |id, b: &[u8]| Frame::Supply {
        id,
        codec: 0,
        len: b.len() as u32,
        payload: Bytes::copy_from_slice(b),
    };
    dec.on_frame(supply(oid, &other), &mut Vec::new()).unwrap();
    let e = dec.on_frame(supply(pid, &p), &mut Vec::new()).unwrap_err();
    assert!(matches!(e, Error::PreviewMismatch(_)), "{e}");
}

#[test]
fn an_exhausted_budget_holds_the_client_back_at_one_item_in_flight_and_drop_releases_it() {
    let tx = side();
    let budget = Budget::new(64 << 10);
    let mut enc = encoder(&tx, small_chunks(), 64 << 20).with_budget(&budget);
    // Holding nothing, a flow may always read (the floor).
    assert!(!enc.window_full());
    let mut wire = BytesMut::new();
    enc.push(&data(16, 200_000), &mut wire);
    assert!(budget.is_exhausted());
    assert_eq!(budget.used(), enc.held_bytes());
    assert!(
        enc.window_full(),
        "the window is far from full: the budget holds it"
    );
    enc.on_ack(enc.sent_items()).unwrap();
    assert!(!enc.window_full());
    // Past the budget (held by others), one item in flight is the floor: a flow holding one
    // chunk, far less than a max chunk, waits for its acknowledgement.
    let mut others = budget.charge();
    others.set(1 << 20);
    let mut one = encoder(&side(), small_chunks(), 64 << 20).with_budget(&budget);
    assert!(!one.window_full());
    one.push(&data(18, 12_000), &mut BytesMut::new());
    let held = one.unacked_bytes();
    assert!(held > 0 && held < 12_000, "held {held} bytes");
    assert!(one.window_full());
    one.on_ack(one.sent_items()).unwrap();
    assert!(!one.window_full());
    drop((one, others));
    // A decoder charges the same budget, and releases on drop.
    let rx = side();
    let mut dec = lone_decoder(&rx).with_budget(&budget);
    let hasher = ChunkHasher::new(KEY);
    let chunk = data(17, 9000);
    dec.on_frame(
        Frame::Literal {
            id: hasher.id(&chunk).0,
            codec: 0,
            len: chunk.len() as u32,
            payload: chunk.clone().into(),
        },
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(budget.used(), enc.held_bytes() + chunk.len() as u64);
    drop(dec);
    assert_eq!(budget.used(), enc.held_bytes());
    drop(enc);
    assert_eq!(budget.used(), 0);
    // A child budget charges its parent too.
    let child = budget.child(1 << 10);
    let mut c = child.charge();
    c.set(2 << 10);
    assert!(child.is_exhausted() && !budget.is_exhausted());
    assert_eq!(budget.used(), 2 << 10);
    drop(c);
    assert_eq!((budget.used(), child.used()), (0, 0));
}

#[test]
fn a_run_item_whose_base_resolves_to_another_length_is_a_miss_not_an_error() {
    // Found by the flow_engine fuzz target: with both directions running, a base named by
    // prefix or position can resolve to a different chunk at the receiver (each side records
    // its sends and receives in its own order), so base length + len_diff falls outside
    // 1..=max_chunk. The run must be wanted (and supplied), not end the flow.
    let rx = side();
    let hasher = ChunkHasher::new(KEY);
    let base = data(45, 3000);
    let base_id = hasher.id(&base).0;
    let peer = rx.store.peer_slot("tx").unwrap();
    rx.store.put(&base_id, &base, peer).unwrap();
    let index = Arc::new(SketchIndex::new(1 << 20));
    index.record_chain(peer.index(), None, &base_id);
    let decoder = || {
        FlowDecoder::new(ChunkHasher::new(KEY), rx.store.clone(), peer, 1 << 20, rs())
            .with_delta(Some(index.clone()), Arc::new(DeltaStats::default()))
            .with_peer_max_chunk(4096)
    };
    let mut prefix = [0u8; strait_wire::BASE_PREFIX_LEN];
    prefix.copy_from_slice(&base_id[..strait_wire::BASE_PREFIX_LEN]);
    let run = |base: BaseRef, len_diff: i32, digest: WireId| Frame::DeltaRun {
        digest,
        items: vec![RunItem::Delta { base, len_diff }],
        payload: Bytes::from_static(b"x"),
    };
    for len_diff in [-3000i32, -3500, 4000] {
        let mut dec = decoder();
        let mut wants = Vec::new();
        let digest = [len_diff.unsigned_abs() as u8; 32];
        dec.on_frame(run(BaseRef::Prefix(prefix), len_diff, digest), &mut wants)
            .unwrap_or_else(|e| panic!("len_diff {len_diff}: {e}"));
        assert_eq!(wants, vec![digest], "len_diff {len_diff}");
        assert!(dec.pop_ready().is_none());
        // Named by its full id the base is exact: the same length is a protocol error.
        let e = decoder()
            .on_frame(run(BaseRef::Id(base_id), len_diff, digest), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(e, Error::TooLong { max: 4096, .. }), "{e}");
    }
    // A difference no two chunks of the announced size can have is an error however named.
    let e = decoder()
        .on_frame(run(BaseRef::Prefix(prefix), 5000, [9; 32]), &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooLong {
                len: 5000,
                max: 4096
            }
        ),
        "{e}"
    );
}

#[test]
fn a_decoder_awaits_a_supply_from_its_want_until_the_supply_arrives() {
    let rx = side();
    let mut dec = lone_decoder(&rx);
    let hasher = ChunkHasher::new(KEY);
    let chunk = data(19, 5000);
    let id = hasher.id(&chunk).0;
    assert!(!dec.awaits_supply());
    let mut wants = Vec::new();
    dec.on_frame(
        Frame::Refs(vec![ChunkRef {
            id,
            len: chunk.len() as u32,
        }]),
        &mut wants,
    )
    .unwrap();
    assert_eq!(wants, vec![id]);
    // Nothing to deliver, and the pump must read on past the budget to get the supply.
    assert!(dec.awaits_supply());
    assert!(dec.pop_ready().is_none());
    dec.on_frame(
        Frame::Supply {
            id,
            codec: 0,
            len: chunk.len() as u32,
            payload: chunk.clone().into(),
        },
        &mut Vec::new(),
    )
    .unwrap();
    assert!(!dec.awaits_supply());
    assert_eq!(dec.pop_ready().as_deref(), Some(&chunk[..]));
}
