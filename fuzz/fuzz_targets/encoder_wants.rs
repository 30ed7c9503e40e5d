//! A hostile receiver against one encoder: the encoder sends a seeded stream (with exact and
//! near repeats, so references, deltas and runs are held), then the input drives `Want` frames
//! (ids from the held ones, run digests, unknown ids, repeats), acks of any count and
//! `poll_supply` calls. Invariants: no panic; every `Supply` names an id the flow sent and
//! carries exactly that chunk's bytes (it verifies against the id); one `poll_supply` writes at
//! most one frame; a chunk is supplied at most `MAX_VERIFY_ATTEMPTS` times until an ack moves
//! (more wants are an error); `held_bytes` stays within the window plus one read and one chunk,
//! the pending-supply accounting and the encoder's buffers.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, ChunkId, ChunkerConfig};
use strait_codec::{CodecId, CompressConfig};
use strait_dedup::run::RUN_SUPPLY_FLAG;
use strait_dedup::{
    DeltaConfig, DeltaStats, EncoderConfig, FlowEncoder, SketchIndex, MAX_VERIFY_ATTEMPTS,
    MIN_SLOT_BYTES, NO_STORE_FLAG, PREVIEW_FLAG,
};
use strait_fuzz::Input;
use strait_store::Store;
use strait_wire::{Frame, WireId};

const KEY: [u8; 32] = [11; 32];
const MIN_CHUNK: usize = 256;
const AVG_CHUNK: usize = 1024;
const MAX_CHUNK: usize = 4096;
/// The flow window: the stream is pushed until it is full, so held items fill it.
const WINDOW: u64 = 64 << 10;
/// Client bytes per push (a pump read).
const PUSH: usize = 4096;
/// Longest seeded stream.
const MAX_STREAM: usize = 96 << 10;
/// The encoder's buffers besides held items: partial chunk, compression scratch, pending
/// references, one delta run's prefix, payload and output.
const ENC_BUFFERS: u64 =
    (4 * MAX_CHUNK + 3 * strait_dedup::run::RUN_MAX_ITEMS * MAX_CHUNK + 64 * 1024) as u64;
const MAX_OPS: usize = 256;

/// The seeded client stream: random and text-like pieces, then exact and near repeats of them.
fn stream(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut v = Vec::with_capacity(len + PUSH);
    while v.len() < len {
        let n = 512 + (next() % 8192) as usize;
        match next() % 4 {
            0 => v.extend((0..n).map(|_| next() as u8)),
            1 => {
                let words: [&[u8]; 4] = [b"tensor ", b"shard ", b"{\"id\": ", b"0.125\n"];
                while v.len() < len && n > 0 {
                    v.extend_from_slice(words[(next() % 4) as usize]);
                    if next() % 64 == 0 {
                        break;
                    }
                }
            }
            k if !v.is_empty() => {
                let from = (next() % v.len() as u64) as usize;
                let mut piece = v[from..(from + n).min(v.len())].to_vec();
                if k == 3 {
                    for _ in 0..1 + next() % 3 {
                        let i = (next() % piece.len() as u64) as usize;
                        piece[i] ^= 0x5a;
                    }
                }
                v.extend_from_slice(&piece);
            }
            _ => {}
        }
    }
    v.truncate(len);
    v
}

fn parse(b: &[u8]) -> Vec<Frame> {
    strait_wire::decode_all(b)
        .expect("the encoder wrote a frame that does not parse")
        .0
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let seed = input.u64();
    let len = 1 + (usize::from(input.u8()) << 9) % MAX_STREAM;
    let flush_every = usize::from(input.u8() % 8);
    let store = Arc::new(Store::open_in_memory(16 << 20, KEY).unwrap());
    let hasher = ChunkHasher::new(KEY);
    let cfg = EncoderConfig {
        chunker: ChunkerConfig::new(MIN_CHUNK, AVG_CHUNK, MAX_CHUNK).unwrap(),
        dedup: true,
        compress: CompressConfig {
            level: Some(1),
            tensor: false,
        },
        window: WINDOW,
        delta: DeltaConfig::default(),
        format_cuts: false,
    };
    let mut enc = FlowEncoder::new(
        cfg,
        hasher.clone(),
        store.clone(),
        store.peer_slot("peer").unwrap(),
        Arc::new(RouteStats::default()),
    )
    .with_delta(
        Arc::new(SketchIndex::new(256 << 10)),
        Arc::new(DeltaStats::default()),
    );
    enc.record_sent_ids(true);

    // Send the stream as the pump would: a read at a time while the window has room.
    let bytes = stream(seed, len);
    let mut wire = BytesMut::new();
    for (i, piece) in bytes.chunks(PUSH).enumerate() {
        if enc.window_full() {
            break;
        }
        enc.push(piece, &mut wire);
        if flush_every != 0 && i % flush_every == 0 {
            enc.flush(&mut wire);
        }
    }
    enc.finish(&mut wire);
    let frames = parse(&wire);
    let mut sent = Vec::new();
    enc.take_sent_ids(&mut sent);
    let mut ids: Vec<WireId> = sent.iter().map(|ChunkId(id)| *id).collect();
    let mut digests = Vec::new();
    for f in &frames {
        match f {
            Frame::Literal { id, .. } | Frame::Delta { id, .. } | Frame::Part { id, .. } => {
                ids.push(*id)
            }
            Frame::Refs(refs) => ids.extend(refs.iter().map(|r| r.id)),
            Frame::DeltaRun { digest, .. } => digests.push(*digest),
            _ => {}
        }
    }
    let known: HashSet<WireId> = ids.iter().copied().collect();
    let wantable: Vec<WireId> = ids.iter().chain(&digests).copied().collect();

    let bound = |enc: &FlowEncoder, acked: u64| {
        let held_items = enc.sent_items().saturating_sub(acked);
        WINDOW + (PUSH + MAX_CHUNK) as u64 + 3 * held_items * MIN_SLOT_BYTES + ENC_BUFFERS
    };
    let mut acked = 0u64;
    // Chunk supplies per id, and run supplies, since the ack count last moved.
    let mut supplied: HashMap<WireId, u32> = HashMap::new();
    let mut run_supplies = 0u64;
    let mut codec = strait_codec::Decoder::new();
    for _ in 0..MAX_OPS {
        if input.0.is_empty() {
            break;
        }
        let r = match input.u8() % 6 {
            0 => {
                let n = 1 + usize::from(input.u8() % 16);
                let want: Vec<WireId> = (0..n)
                    .filter(|_| !wantable.is_empty())
                    .map(|_| wantable[usize::from(input.u8()) % wantable.len()])
                    .collect();
                enc.on_want(&want)
            }
            1 => {
                let mut id = [0u8; 32];
                id.iter_mut().for_each(|b| *b = input.u8());
                enc.on_want(&[id])
            }
            2 => {
                let n = input.u64();
                enc.on_ack(n).map(|()| n).map(|n| {
                    if n > acked {
                        acked = n;
                        supplied.clear();
                        run_supplies = 0;
                    }
                })
            }
            3 => {
                let n = acked + u64::from(input.u8() % 8);
                enc.on_ack(n).map(|()| {
                    if n > acked {
                        acked = n;
                        supplied.clear();
                        run_supplies = 0;
                    }
                })
            }
            4 => {
                // Every held item named n / held times: each queued once, a third naming (before
                // its ack) fails the flow.
                let n = usize::from(input.u8());
                let want: Vec<WireId> = wantable.iter().copied().cycle().take(n).collect();
                enc.on_want(&want)
            }
            _ => {
                for _ in 0..1 + input.u8() % 16 {
                    let mut out = BytesMut::new();
                    let more = enc.poll_supply(&mut out);
                    let f = parse(&out);
                    assert!(f.len() <= 1, "{} frames from one poll_supply", f.len());
                    assert_eq!(
                        more,
                        f.len() == 1,
                        "poll_supply's result disagrees with its output"
                    );
                    let Some(Frame::Supply {
                        id,
                        codec: c,
                        len,
                        payload,
                    }) = f.into_iter().next()
                    else {
                        if more {
                            panic!("poll_supply wrote something else than a Supply");
                        }
                        break;
                    };
                    assert!(known.contains(&id), "supply of an id never sent");
                    assert!(len as usize <= MAX_CHUNK, "supply of {len} bytes");
                    let cid =
                        CodecId::try_from(c & !(NO_STORE_FLAG | RUN_SUPPLY_FLAG | PREVIEW_FLAG))
                            .expect("supply with an unknown codec");
                    let mut chunk = Vec::new();
                    codec
                        .decode(cid, &payload, len as usize, &mut chunk)
                        .expect("supply payload does not decode");
                    assert!(
                        hasher.verify(&ChunkId(id), &chunk),
                        "supply bytes are not its chunk"
                    );
                    if c & RUN_SUPPLY_FLAG != 0 {
                        run_supplies += 1;
                        let held = enc.sent_items().saturating_sub(acked);
                        assert!(
                            run_supplies <= u64::from(MAX_VERIFY_ATTEMPTS) * held.max(1),
                            "{run_supplies} run supplies for {held} held items"
                        );
                    } else {
                        let n = supplied.entry(id).or_insert(0);
                        *n += 1;
                        assert!(
                            *n <= u32::from(MAX_VERIFY_ATTEMPTS),
                            "chunk supplied {n} times before an ack"
                        );
                    }
                }
                Ok(())
            }
        };
        let held = enc.held_bytes();
        let b = bound(&enc, acked);
        assert!(held <= b, "encoder holds {held} bytes, bound {b}");
        if r.is_err() {
            // Every engine error resets the flow.
            break;
        }
    }
});
