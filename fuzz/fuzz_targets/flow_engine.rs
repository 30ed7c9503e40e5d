//! The flow engine fed both directions at once, reproducibly. Per input: two sides A and B, each
//! with a fresh in-memory store and sketch index (same dedup key), an encoder A→B with B's
//! decoder, and an encoder B→A with A's decoder. Every frame an encoder writes crosses as bytes
//! through `FrameDecoder`. The input is a program of byte-coded operations: push client bytes
//! (seeded data, with repeats and near-duplicates of either side's earlier bytes so references,
//! deltas, runs and previews happen), flush, finish, deliver frames, deliver wants and acks,
//! poll supplies, and faults.
//!
//! Faults come in two kinds:
//! - *Detectable* ones the engine promises to catch: a flipped byte in a chunk's payload or id
//!   (Literal, Supply, Delta, DeltaRun, Refs), a wrong reference length, a dropped or repeated
//!   Supply / Want / Ack, an Ack of any count. The receiver must error or want; a byte it
//!   delivers must still be the sender's byte.
//! - *Undetectable* ones: a dropped or repeated ordered data frame, or a flipped byte anywhere
//!   else in a frame (its type, codec flags, a `Part`'s range). The stream carries no sequence
//!   numbers and its flags are not authenticated (QUIC delivers it reliably and in order), so a
//!   peer doing that is lying about content and the receiver cannot know; for that direction
//!   only "no panic, bounded memory" is checked from then on.
//!
//! Invariants: no panic; every byte a decoder delivers equals the byte pushed at that position
//! on the other side; decoder `held_bytes` ≤ 2 × window + max chunk; encoder `held_bytes` ≤ its
//! window plus one read and one chunk, the pending-supply accounting and its buffers; with no
//! fault at all, no error, and after both ends finish and everything is delivered, each side
//! received exactly what the other pushed and every item was acknowledged.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::sync::Arc;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, ChunkerConfig};
use strait_codec::CompressConfig;
use strait_dedup::{
    DeltaConfig, DeltaStats, EncoderConfig, FlowDecoder, FlowEncoder, SketchIndex, MIN_SLOT_BYTES,
};
use strait_fuzz::Input;
use strait_store::Store;
use strait_wire::{Frame, FrameDecoder, WireId, MAX_REFS_PER_FRAME};

const KEY: [u8; 32] = [9; 32];
/// Small chunks, so a few KB of input make many chunks (and repeats find them).
const MIN_CHUNK: usize = 256;
const AVG_CHUNK: usize = 1024;
const MAX_CHUNK: usize = 4096;
/// Each direction's flow window: small, so backpressure and the decoder bound are reached.
const WINDOW: u64 = 64 << 10;
/// Most client bytes one push hands the encoder (a pump read).
const MAX_PUSH: usize = 16 << 10;
/// The encoder's buffers besides held items: the partial chunk (grown by doubling), the
/// compression scratch, pending references, and one delta run's prefix, payload and output
/// (at most `RUN_MAX_ITEMS` chunks each).
const ENC_BUFFERS: u64 =
    (4 * MAX_CHUNK + 3 * strait_dedup::run::RUN_MAX_ITEMS * MAX_CHUNK + 64 * 1024) as u64;
/// Operations run per input at most (each does bounded work).
const MAX_OPS: usize = 512;
/// Rounds of the final drain (a clean flow converges in a few).
const DRAIN_ROUNDS: usize = 64;

/// A tiny seeded generator (xorshift64*): the client data of one side.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One sending direction: an encoder on one side, the decoder on the other, the frames between.
struct Dir {
    enc: FlowEncoder,
    dec: FlowDecoder,
    /// Frames written by the encoder (data and supplies), not yet delivered.
    data: VecDeque<Frame>,
    /// Wants and acks written by the decoder, not yet delivered to the encoder.
    ctl: VecDeque<Frame>,
    /// Every client byte pushed into the encoder.
    pushed: Vec<u8>,
    /// Bytes the decoder delivered so far (all equal to `pushed[..delivered]` unless `lied`).
    delivered: usize,
    /// An error ended the flow direction.
    dead: bool,
    /// An undetectable fault was injected: content checks are off for this direction.
    lied: bool,
    /// Items acknowledged so far (what the encoder was told last).
    acked: u64,
}

impl Dir {
    fn new(
        from: &Arc<Store>,
        from_idx: &Arc<SketchIndex>,
        to: &Arc<Store>,
        to_idx: &Arc<SketchIndex>,
        to_name: &str,
        from_name: &str,
    ) -> Dir {
        let cfg = EncoderConfig {
            chunker: ChunkerConfig::new(MIN_CHUNK, AVG_CHUNK, MAX_CHUNK).unwrap(),
            dedup: true,
            compress: CompressConfig {
                level: Some(1),
                tensor: true,
            },
            window: WINDOW,
            delta: DeltaConfig::default(),
            format_cuts: true,
        };
        let hasher = ChunkHasher::new(KEY);
        let enc = FlowEncoder::new(
            cfg,
            hasher.clone(),
            from.clone(),
            from.peer_slot(to_name).unwrap(),
            Arc::new(RouteStats::default()),
        )
        .with_delta(from_idx.clone(), Arc::new(DeltaStats::default()));
        let dec = FlowDecoder::new(
            hasher,
            to.clone(),
            to.peer_slot(from_name).unwrap(),
            WINDOW,
            Arc::new(RouteStats::default()),
        )
        .with_peer_max_chunk(MAX_CHUNK as u32)
        .with_delta(Some(to_idx.clone()), Arc::new(DeltaStats::default()));
        Dir {
            enc,
            dec,
            data: VecDeque::new(),
            ctl: VecDeque::new(),
            pushed: Vec::new(),
            delivered: 0,
            dead: false,
            lied: false,
            acked: 0,
        }
    }

    /// The encoder's bound: window, plus one read and one chunk past it, the pending-supply
    /// accounting (a queued supply, a want entry and a run entry per held item at most), buffers.
    fn enc_bound(&self) -> u64 {
        let held_items = self.enc.sent_items().saturating_sub(self.acked);
        WINDOW
            + (MAX_PUSH + MAX_CHUNK) as u64
            + (MAX_PUSH / MIN_CHUNK + 2) as u64 * MIN_SLOT_BYTES
            + 3 * held_items * MIN_SLOT_BYTES
            + ENC_BUFFERS
    }

    fn check_enc(&self) {
        if !self.dead {
            let (held, bound) = (self.enc.held_bytes(), self.enc_bound());
            assert!(held <= bound, "encoder holds {held} bytes, bound {bound}");
        }
    }

    /// Delivers the next data frame to the decoder, then pops what it made ready.
    fn deliver_data(&mut self, clean: bool) {
        let Some(f) = self.data.pop_front() else {
            return;
        };
        if self.dead {
            return;
        }
        let mut wants = Vec::new();
        match self.dec.on_frame(f, &mut wants) {
            Ok(()) => {}
            Err(e) => {
                assert!(!clean, "error in a fault-free run: {e}");
                self.dead = true;
                return;
            }
        }
        let held = self.dec.held_bytes();
        let bound = 2 * WINDOW + MAX_CHUNK as u64;
        assert!(held <= bound, "decoder holds {held} bytes, bound {bound}");
        while let Some(b) = self.dec.pop_ready() {
            if !self.lied {
                let end = self.delivered + b.len();
                assert!(
                    end <= self.pushed.len(),
                    "delivered {end} bytes, only {} pushed",
                    self.pushed.len()
                );
                assert!(
                    self.pushed[self.delivered..end] == b[..],
                    "wrong bytes delivered at {}..{end}",
                    self.delivered
                );
            }
            self.delivered += b.len();
        }
        for ids in wants.chunks(MAX_REFS_PER_FRAME) {
            send(&mut self.ctl, &Frame::Want(ids.to_vec()));
        }
        if let Some(ack) = self.dec.take_ack() {
            send(&mut self.ctl, &ack);
        }
    }

    /// Delivers the next want or ack to the encoder.
    fn deliver_ctl(&mut self, clean: bool) {
        let Some(f) = self.ctl.pop_front() else {
            return;
        };
        if self.dead {
            return;
        }
        let r = match f {
            Frame::Want(ids) => self.enc.on_want(&ids),
            Frame::Ack(n) => {
                let r = self.enc.on_ack(n);
                if r.is_ok() {
                    self.acked = self.acked.max(n);
                }
                r
            }
            other => {
                // Only a fault turns a control frame into another kind.
                assert!(!clean, "decoder wrote {other:?} as control");
                self.dead = true;
                return;
            }
        };
        if let Err(e) = r {
            assert!(!clean, "error in a fault-free run: {e}");
            self.dead = true;
        }
        self.check_enc();
    }

    fn poll_supply(&mut self) -> bool {
        if self.dead {
            return false;
        }
        let mut out = BytesMut::new();
        let more = self.enc.poll_supply(&mut out);
        let frames = parse(&out);
        assert!(
            frames.len() <= 1,
            "{} frames from one poll_supply",
            frames.len()
        );
        self.data.extend(frames);
        self.check_enc();
        more
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.dead || self.enc.is_ended() || self.enc.window_full() {
            return;
        }
        let mut out = BytesMut::new();
        self.enc.push(bytes, &mut out);
        self.pushed.extend_from_slice(bytes);
        self.data.extend(parse(&out));
        self.check_enc();
    }

    fn flush(&mut self, finish: bool) {
        if self.dead {
            return;
        }
        let mut out = BytesMut::new();
        if finish {
            self.enc.finish(&mut out);
        } else {
            self.enc.flush(&mut out);
        }
        self.data.extend(parse(&out));
        self.check_enc();
    }

    /// A fault on the next data frame (`ctl` false) or control frame; an undetectable one turns
    /// content checks off for this direction.
    fn fault(&mut self, ctl: bool, kind: u8, at: u16) {
        let q = if ctl { &mut self.ctl } else { &mut self.data };
        let Some(f) = q.pop_front() else {
            return;
        };
        let ordered = !ctl && !matches!(f, Frame::Supply { .. });
        match kind % 4 {
            // Drop.
            0 => self.lied |= ordered,
            // Repeat.
            1 => {
                q.push_front(f.clone());
                q.push_front(f);
                self.lied |= ordered;
            }
            // A detectable corruption of a payload, an id, a length or a count.
            2 => {
                let f = corrupt(f, at);
                q.push_front(f);
            }
            // A flipped byte anywhere in the encoded frame.
            _ => {
                let mut b = BytesMut::new();
                f.encode(&mut b);
                let i = usize::from(at) % b.len();
                b[i] ^= 1 << (at >> 13);
                let mut d = FrameDecoder::new();
                d.extend(&b);
                match d.next_frame() {
                    Ok(Some((g, _))) => {
                        if g != f {
                            self.lied |= !ctl || !matches!(g, Frame::Want(_) | Frame::Ack(_));
                        }
                        q.push_front(g);
                    }
                    // The tunnel's frame layer fails: the connection is gone.
                    _ => self.dead = true,
                }
            }
        }
    }
}

/// A flipped byte in a chunk's payload or id, a reference's length, or an ack's count: what
/// verification (or the sender's bookkeeping) must catch.
fn corrupt(f: Frame, at: u16) -> Frame {
    let flip = |v: &[u8]| -> Vec<u8> {
        let mut v = v.to_vec();
        if !v.is_empty() {
            let i = usize::from(at) % v.len();
            v[i] ^= 1 << (at >> 13);
        }
        v
    };
    let flip_id = |id: &WireId| -> WireId {
        let mut id = *id;
        id[usize::from(at) % 32] ^= 1 << (at >> 13);
        id
    };
    let on_id = at & 0x1000 != 0;
    match f {
        Frame::Literal {
            id,
            codec,
            len,
            payload,
        } if on_id || payload.is_empty() => Frame::Literal {
            id: flip_id(&id),
            codec,
            len,
            payload,
        },
        Frame::Literal {
            id,
            codec,
            len,
            payload,
        } => Frame::Literal {
            id,
            codec,
            len,
            payload: flip(&payload).into(),
        },
        Frame::Supply {
            id,
            codec,
            len,
            payload,
        } if on_id || payload.is_empty() => Frame::Supply {
            id: flip_id(&id),
            codec,
            len,
            payload,
        },
        Frame::Supply {
            id,
            codec,
            len,
            payload,
        } => Frame::Supply {
            id,
            codec,
            len,
            payload: flip(&payload).into(),
        },
        Frame::Delta {
            id,
            codec,
            len,
            bases,
            payload,
        } if on_id || payload.is_empty() => Frame::Delta {
            id: flip_id(&id),
            codec,
            len,
            bases,
            payload,
        },
        Frame::Delta {
            id,
            codec,
            len,
            bases,
            payload,
        } => Frame::Delta {
            id,
            codec,
            len,
            bases,
            payload: flip(&payload).into(),
        },
        Frame::DeltaRun {
            digest,
            items,
            payload,
        } if on_id || payload.is_empty() => Frame::DeltaRun {
            digest: flip_id(&digest),
            items,
            payload,
        },
        Frame::DeltaRun {
            digest,
            items,
            payload,
        } => Frame::DeltaRun {
            digest,
            items,
            payload: flip(&payload).into(),
        },
        Frame::Refs(mut refs) => {
            let i = usize::from(at) % refs.len().max(1);
            if let Some(r) = refs.get_mut(i) {
                if on_id {
                    r.id = flip_id(&r.id);
                } else {
                    r.len ^= 1 << (at >> 12);
                }
            }
            Frame::Refs(refs)
        }
        Frame::Want(mut ids) => {
            let i = usize::from(at) % ids.len().max(1);
            if let Some(id) = ids.get_mut(i) {
                *id = flip_id(id);
            }
            Frame::Want(ids)
        }
        Frame::Ack(n) => Frame::Ack(n ^ (1 << (at % 64))),
        other => other,
    }
}

/// Frames an engine half wrote, through the tunnel's frame decoder.
fn parse(b: &[u8]) -> Vec<Frame> {
    strait_wire::decode_all(b)
        .expect("the engine wrote a frame that does not parse")
        .0
}

/// Encodes `f` and decodes it back onto `q`, as the tunnel does.
fn send(q: &mut VecDeque<Frame>, f: &Frame) {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    q.extend(parse(&b));
}

/// Client bytes for one push: fresh, compressible, or a (near-)repeat of either side's stream.
fn client_bytes(rng: &mut Rng, kind: u8, len: usize, own: &[u8], other: &[u8]) -> Vec<u8> {
    match kind % 5 {
        0 => (0..len).map(|_| rng.next() as u8).collect(),
        1 => {
            let words: [&[u8]; 6] = [b"tensor", b"shard", b"{\"id\":", b"0.125", b"\n", b"label"];
            let mut v = Vec::with_capacity(len + 8);
            while v.len() < len {
                v.extend_from_slice(words[(rng.next() % 6) as usize]);
            }
            v.truncate(len);
            v
        }
        k => {
            let src = if k == 4 { other } else { own };
            if src.is_empty() {
                return (0..len).map(|_| rng.next() as u8).collect();
            }
            let from = (rng.next() % src.len() as u64) as usize;
            let mut v = src[from..(from + len).min(src.len())].to_vec();
            if k == 3 {
                // A near-duplicate: a few bytes changed.
                for _ in 0..1 + rng.next() % 4 {
                    if !v.is_empty() {
                        let i = (rng.next() % v.len() as u64) as usize;
                        v[i] = v[i].wrapping_add(1 + rng.next() as u8 % 255);
                    }
                }
            }
            v
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let seed = input.u64() | 1;
    let mut rngs = [Rng(seed), Rng(seed.rotate_left(17) | 1)];
    let stores: Vec<Arc<Store>> = (0..2)
        .map(|_| Arc::new(Store::open_in_memory(16 << 20, KEY).unwrap()))
        .collect();
    let idx: Vec<Arc<SketchIndex>> = (0..2)
        .map(|_| Arc::new(SketchIndex::new(256 << 10)))
        .collect();
    // dirs[0]: A→B; dirs[1]: B→A.
    let mut dirs = [
        Dir::new(&stores[0], &idx[0], &stores[1], &idx[1], "b", "a"),
        Dir::new(&stores[1], &idx[1], &stores[0], &idx[0], "a", "b"),
    ];
    let mut clean = true;
    for _ in 0..MAX_OPS {
        if input.0.is_empty() {
            break;
        }
        let op = input.u8();
        let d = usize::from(op & 1);
        match (op >> 1) % 8 {
            0 | 1 => {
                let kind = input.u8();
                let len = 1 + usize::from(input.u16()) % MAX_PUSH;
                let (own, other) = (&dirs[d].pushed, &dirs[1 - d].pushed);
                let bytes = client_bytes(&mut rngs[d], kind, len, own, other);
                dirs[d].push(&bytes);
            }
            2 => dirs[d].flush(false),
            3 => {
                if input.u8() % 4 == 0 {
                    dirs[d].flush(true);
                }
            }
            4 => {
                for _ in 0..1 + input.u8() % 16 {
                    dirs[d].deliver_data(clean);
                }
            }
            5 => {
                for _ in 0..1 + input.u8() % 8 {
                    dirs[d].deliver_ctl(clean);
                }
            }
            6 => {
                for _ in 0..1 + input.u8() % 8 {
                    if !dirs[d].poll_supply() {
                        break;
                    }
                }
            }
            _ => {
                let (kind, at) = (input.u8(), input.u16());
                clean = false;
                dirs[d].fault(kind & 0x80 != 0, kind, at);
            }
        }
    }
    // Drain: finish both directions and run everything to quiescence.
    for d in dirs.iter_mut() {
        d.flush(true);
    }
    for _ in 0..DRAIN_ROUNDS {
        let mut progress = false;
        for d in dirs.iter_mut() {
            while !d.data.is_empty() {
                d.deliver_data(clean);
                progress = true;
            }
            while !d.ctl.is_empty() {
                d.deliver_ctl(clean);
                progress = true;
            }
            while d.poll_supply() {
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    if clean {
        for d in &dirs {
            assert!(!d.dead);
            assert_eq!(d.delivered, d.pushed.len(), "a fault-free flow lost bytes");
            assert!(d.dec.is_done(), "a fault-free flow did not end");
            assert!(
                d.enc.all_acked(),
                "a fault-free flow left items unacknowledged"
            );
        }
    }
});
