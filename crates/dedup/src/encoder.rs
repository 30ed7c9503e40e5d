//! The sending half: client bytes → frames.

use crate::budget::{Budget, Charge};
use crate::delta::{DeltaConfig, DeltaStats, MAX_BASE_HINTS, MIN_SHARED_SUPER_FEATURES};
use crate::run::{
    run_digest, Building, Planned, SentRun, RUN_GAP_STEPS, RUN_MAX_DELTA_BYTES, RUN_MAX_ITEMS,
    RUN_MAX_LOGICAL_BYTES, RUN_MAX_PREFIX_BYTES,
};
use crate::{entry_bytes, Error, MIN_SLOT_BYTES, NO_STORE_FLAG, PREVIEW_FLAG, REF_BATCH};
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, ChunkId, Chunker, ChunkerConfig};
use strait_codec::CompressConfig;
use strait_sketch::{id_prefix, sketch, DeltaEncoder, Sketch, SketchIndex};
use strait_store::{PeerSlot, Store};
use strait_wire::{BaseRef, ChunkRef, Frame, RunItem, WireId, BASE_PREFIX_LEN, MAX_NEXT_STEPS};

/// Settings of one sending direction.
#[derive(Debug, Clone, Copy)]
pub struct EncoderConfig {
    /// Chunk sizes.
    pub chunker: ChunkerConfig,
    /// Send known chunks as references (and store what is sent).
    pub dedup: bool,
    /// Literal compression.
    pub compress: CompressConfig,
    /// Most unacknowledged bytes held (the pump stops reading its client beyond it).
    pub window: u64,
    /// Delta compression of near-duplicate chunks.
    pub delta: DeltaConfig,
    /// Also cut chunks at record boundaries of recognised formats (safetensors tensors, tar
    /// members), which keeps unchanged records deduplicable across versions.
    pub format_cuts: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            chunker: ChunkerConfig::default(),
            dedup: true,
            compress: CompressConfig::default(),
            window: 64 * 1024 * 1024,
            delta: DeltaConfig::default(),
            format_cuts: true,
        }
    }
}

mod supply;

/// A chunk held until acknowledged; `bases` are the bases it was delta-coded against.
struct Held {
    id: WireId,
    data: Bytes,
    bases: Option<Box<[WireId]>>,
    /// `forget_peer` was called for it (a supply of it was emitted): at most once.
    forgotten: bool,
    /// A supply of it was emitted: once acknowledged, the peer stored it (`mark_peer`).
    mark_on_ack: bool,
}

/// The held items with one id.
struct HeldId {
    count: u32,
    /// Sequence number of the newest.
    last: u64,
}

/// The near-duplicate side of an encoder.
struct Delta {
    index: Arc<SketchIndex>,
    stats: Arc<DeltaStats>,
    coder: DeltaEncoder,
    hints: Vec<(WireId, Sketch)>,
    prefix: Vec<u8>,
    payload: Vec<u8>,
    output: Vec<u8>,
    /// The open run, if any: while it is open every chunk joins it or closes it.
    run: Option<Building>,
}

/// A chunk chosen for a run's `Delta` item.
struct DeltaPlan {
    base: WireId,
    base_data: Bytes,
    literal_cost: usize,
}

/// Encodes one direction of one flow.
pub struct FlowEncoder {
    cfg: EncoderConfig,
    chunker: Chunker,
    cuts: Option<strait_classify::cuts::FormatCuts>,
    pos: u64,
    hasher: ChunkHasher,
    store: Arc<Store>,
    peer: PeerSlot,
    codec: strait_codec::Encoder,
    partial: Vec<u8>,
    refs: Vec<ChunkRef>,
    unacked: VecDeque<Held>,
    delta: Option<Delta>,
    /// Stream order is recorded here (sender and receiver record the same streams).
    chain: Option<Arc<SketchIndex>>,
    /// Last chunk id emitted (stream order), for the chain.
    prev_id: Option<WireId>,
    /// The last chunk's identity for `BaseRef::Next`: a reference's or literal's own id, a
    /// delta item's base.
    identity: Option<WireId>,
    runs: VecDeque<SentRun>,
    /// Runs held, by digest: the newest with that digest and how many are held.
    run_index: HashMap<WireId, (SentRun, u32)>,
    /// Held items by id (wants are answered in O(1)).
    held_index: HashMap<WireId, HeldId>,
    /// Wants being answered, by id or run digest.
    wanted: HashMap<WireId, supply::Wanted>,
    /// Supplies queued by [`FlowEncoder::on_want`], emitted by [`FlowEncoder::poll_supply`].
    supplies: VecDeque<supply::Pending>,
    unacked_bytes: u64,
    /// Held items counted honestly: at least [`MIN_SLOT_BYTES`] each.
    held_cost: u64,
    /// What [`FlowEncoder::held_bytes`] charged to the process budget.
    charge: Charge,
    sent_items: u64,
    acked_items: u64,
    scratch: Vec<u8>,
    stats: Arc<RouteStats>,
    ended: bool,
    /// Ids of the chunks sent, in order, while recording ([`FlowEncoder::record_sent_ids`]).
    sent_ids: Option<Vec<ChunkId>>,
    /// Bytes at the start of `partial` already sent as previews: the client paused mid-chunk
    /// and [`FlowEncoder::flush`] sent them without cutting the chunk there.
    previewed: usize,
}

/// Most ids [`FlowEncoder::take_sent_ids`] buffers between takes (a caller that forgets to take
/// them loses the oldest, never grows memory).
pub const MAX_SENT_IDS: usize = 1 << 16;

impl FlowEncoder {
    /// An encoder sending to `peer`, storing into `store`, counting into `stats`.
    pub fn new(
        cfg: EncoderConfig,
        hasher: ChunkHasher,
        store: Arc<Store>,
        peer: PeerSlot,
        stats: Arc<RouteStats>,
    ) -> Self {
        FlowEncoder {
            chunker: Chunker::new(cfg.chunker),
            cuts: cfg.format_cuts.then(strait_classify::cuts::FormatCuts::new),
            pos: 0,
            codec: strait_codec::Encoder::new(cfg.compress),
            cfg,
            hasher,
            store,
            peer,
            partial: Vec::new(),
            refs: Vec::new(),
            unacked: VecDeque::new(),
            delta: None,
            chain: None,
            prev_id: None,
            identity: None,
            runs: VecDeque::new(),
            run_index: HashMap::new(),
            held_index: HashMap::new(),
            wanted: HashMap::new(),
            supplies: VecDeque::new(),
            unacked_bytes: 0,
            held_cost: 0,
            charge: Budget::unlimited().charge(),
            sent_items: 0,
            acked_items: 0,
            scratch: Vec::new(),
            stats,
            ended: false,
            sent_ids: None,
            previewed: 0,
        }
    }

    /// Charges what this encoder holds to `budget` (e.g. the process-wide flow budget); when it
    /// is exhausted, [`FlowEncoder::window_full`] holds the client back once this flow holds
    /// more than one maximal chunk.
    pub fn with_budget(mut self, budget: &Budget) -> Self {
        self.charge = budget.charge();
        self.recharge();
        self
    }

    /// Bytes this encoder holds, counted honestly: held items (at least [`MIN_SLOT_BYTES`]
    /// each), queued supplies and wants, and its buffers' capacities.
    pub fn held_bytes(&self) -> u64 {
        let delta = self.delta.as_ref().map_or(0, |d| {
            d.prefix.capacity()
                + d.payload.capacity()
                + d.output.capacity()
                + d.hints.capacity() * std::mem::size_of::<(WireId, Sketch)>()
                + d.run.as_ref().map_or(0, |r| {
                    r.prefix_bytes + r.items.capacity() * std::mem::size_of::<Planned>()
                })
        });
        self.held_cost
            + (self.supplies.len() + self.wanted.len() + self.run_index.len()) as u64
                * MIN_SLOT_BYTES
            + (self.partial.capacity()
                + self.scratch.capacity()
                + self.refs.capacity() * std::mem::size_of::<ChunkRef>()
                + delta) as u64
    }

    fn recharge(&mut self) {
        let n = self.held_bytes();
        self.charge.set(n);
    }

    /// Starts (or stops) recording the id of every chunk sent, for
    /// [`FlowEncoder::take_sent_ids`] (the HTTP layer remembers an object's chunks as hints for
    /// its next version).
    pub fn record_sent_ids(&mut self, on: bool) {
        match (on, self.sent_ids.is_some()) {
            (true, false) => self.sent_ids = Some(Vec::new()),
            (false, true) => self.sent_ids = None,
            _ => {}
        }
    }

    /// Moves the ids recorded since the last call into `out`.
    pub fn take_sent_ids(&mut self, out: &mut Vec<ChunkId>) {
        if let Some(v) = self.sent_ids.as_mut() {
            out.append(v);
        }
    }

    /// Turns on delta compression (when `cfg.delta.enabled` and `cfg.dedup`): near-duplicate
    /// chunks are looked up in `index` (shared by all flows of the process, fed by every chunk
    /// this encoder sends) and counted into `stats`. With `cfg.dedup`, the order chunks cross in
    /// is recorded into `index` even with delta off, so a later flow with delta on can name
    /// bases compactly (the receiver records the same order).
    pub fn with_delta(mut self, index: Arc<SketchIndex>, stats: Arc<DeltaStats>) -> Self {
        if self.cfg.dedup {
            self.chain = Some(index.clone());
        }
        if self.cfg.delta.enabled && self.cfg.dedup {
            let level = self
                .cfg
                .compress
                .level
                .unwrap_or(strait_codec::DEFAULT_LEVEL);
            self.delta = Some(Delta {
                index,
                stats,
                coder: DeltaEncoder::new(level),
                hints: Vec::new(),
                prefix: Vec::new(),
                payload: Vec::new(),
                output: Vec::new(),
                run: None,
            });
        }
        self
    }

    /// Candidate bases tried before the shared index: e.g. the chunks of the previous version of
    /// the same URL or object key. Only ids whose store entry lists this peer are kept (so
    /// isolation holds however the caller picked them), at most [`MAX_BASE_HINTS`]; ids without
    /// a sketch in the index are read from the store and sketched. No effect without
    /// [`FlowEncoder::with_delta`].
    pub fn add_base_hints(&mut self, ids: &[ChunkId]) {
        let Some(d) = self.delta.as_mut() else {
            return;
        };
        for ChunkId(id) in ids {
            if d.hints.len() >= MAX_BASE_HINTS {
                break;
            }
            if !self.store.peer_has(id, self.peer) || d.hints.iter().any(|(h, _)| h == id) {
                continue;
            }
            let sk = match d.index.get(id) {
                Some(sk) => Some(sk),
                None => match self.store.get(id, Some(self.peer)) {
                    Ok(Some(b)) => {
                        let sk = sketch(&b);
                        if let Some(sk) = sk {
                            d.index.insert(id, sk);
                        }
                        sk
                    }
                    _ => None,
                },
            };
            if let Some(sk) = sk {
                d.hints.push((*id, sk));
            }
        }
    }

    /// Consumes client bytes, appending frames for every completed chunk to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut BytesMut) {
        if let Some(c) = self.cuts.as_mut() {
            c.observe(data);
        }
        while !data.is_empty() {
            // A record boundary of the stream's format (a tensor, a tar member) inside this data?
            let pos = self.pos;
            let to_cut = self
                .cuts
                .as_mut()
                .and_then(|c| c.next_cut_after(pos))
                .map(|c| c - pos)
                .filter(|d| *d <= data.len() as u64)
                .map(|d| d as usize);
            let slice = &data[..to_cut.unwrap_or(data.len())];
            match self.chunker.next_boundary(slice) {
                Some(n) => {
                    let chunk = if self.partial.is_empty() {
                        Bytes::copy_from_slice(&data[..n])
                    } else {
                        self.partial.extend_from_slice(&data[..n]);
                        self.take_partial()
                    };
                    self.emit_chunk(chunk, out);
                    data = &data[n..];
                    self.pos += n as u64;
                }
                None => {
                    self.partial.extend_from_slice(slice);
                    data = &data[slice.len()..];
                    self.pos += slice.len() as u64;
                    if to_cut.is_some() {
                        // Cut at the record boundary and restart content-defined cuts there, so
                        // an unchanged record keeps its chunks whatever its neighbours did.
                        self.chunker.reset();
                        if !self.partial.is_empty() {
                            let chunk = self.take_partial();
                            self.emit_chunk(chunk, out);
                        }
                    }
                }
            }
        }
        if self.refs.len() >= REF_BATCH {
            self.emit_refs(out);
        }
        self.recharge();
    }

    /// The partial chunk, handed over without a copy. Trimmed to its length first: it grew by
    /// doubling, and a held chunk must not pin up to twice the bytes the window accounts for
    /// (shrinking is in place with common allocators; copying into an exact buffer instead
    /// measured 5 % slower with 16 KiB reads).
    fn take_partial(&mut self) -> Bytes {
        let mut chunk = std::mem::take(&mut self.partial);
        chunk.shrink_to_fit();
        Bytes::from(chunk)
    }

    /// Whether this encoder holds no client byte: no partial chunk, nothing batched, every item
    /// acknowledged. Past the budget, such a flow still reads its client (a small buffer) to
    /// learn whether it has anything to send; one that holds bytes needs a floor to read on.
    pub fn holds_nothing(&self) -> bool {
        self.held_cost == 0 && self.partial.is_empty() && !self.has_unsent_items()
    }

    /// Whether unsent bytes of a partial chunk, pending references or an open delta run wait for
    /// [`FlowEncoder::flush`].
    pub fn has_pending(&self) -> bool {
        self.partial.len() > self.previewed || !self.refs.is_empty() || self.run_open()
    }

    /// Frees the scratch buffers (compression output, delta prefix and payload) while the
    /// flow waits on its window: a thousand flows held back by the budget keep their data, not
    /// a chunk-sized scratch buffer each. They are allocated again on the next chunk.
    pub fn release_buffers(&mut self) {
        self.scratch = Vec::new();
        if self.refs.is_empty() {
            self.refs = Vec::new();
        }
        if let Some(d) = self.delta.as_mut().filter(|d| d.run.is_none()) {
            d.prefix = Vec::new();
            d.payload = Vec::new();
            d.output = Vec::new();
        }
        self.recharge();
    }

    /// Whether items are held back unsent (references batched, a delta run open): the peer
    /// cannot acknowledge them until [`FlowEncoder::flush_items`] or [`FlowEncoder::flush`].
    pub fn has_unsent_items(&self) -> bool {
        !self.refs.is_empty() || self.run_open()
    }

    /// Sends the batched references and the open run, but not the partial chunk: when the
    /// window is full the client is not idle, it is held back, and only acknowledgements of
    /// these items can let it go on.
    pub fn flush_items(&mut self, out: &mut BytesMut) {
        self.close_run(out);
        self.emit_refs(out);
        self.recharge();
    }

    fn run_open(&self) -> bool {
        self.delta.as_ref().is_some_and(|d| d.run.is_some())
    }

    /// The client went idle for the flush delay: sends pending references, the open run and the
    /// bytes of the partial chunk not yet sent, as a preview item (a verified literal the
    /// receiver delivers at once but does not store). The chunk is not cut: its boundary stays
    /// where the content puts it, so a pause never changes which chunks a stream is made of.
    /// When the chunk completes it crosses as usual (a reference, or a literal of the bytes
    /// after the previews), and the receiver delivers only what the previews did not.
    pub fn flush(&mut self, out: &mut BytesMut) {
        self.flush_items(out);
        if self.partial.len() > self.previewed {
            self.emit_preview(out);
            self.recharge();
        }
    }

    /// The client finished sending: the partial chunk is the last one; everything is sent and
    /// the direction ends.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if !self.ended {
            if !self.partial.is_empty() {
                let chunk = self.take_partial();
                self.emit_chunk(chunk, out);
            }
            self.close_run(out);
            self.emit_refs(out);
            Frame::End.encode(out);
            self.ended = true;
        }
        self.recharge();
    }

    /// Sends `partial[previewed..]` as a preview item: a `Part` of the chunk that followed the
    /// previous one when this stream crossed before and the open chunk starts like it (the
    /// receiver holds it: a repeat transfer stays a stream of references however the client
    /// paused), else a literal.
    fn emit_preview(&mut self, out: &mut BytesMut) {
        let (from, to) = (self.previewed, self.partial.len());
        if let Some((id, data)) = self.predicted() {
            // The peer holds us to our max chunk: never name a longer chunk (one it sent us).
            if data.len() >= to
                && data.len() <= self.cfg.chunker.max()
                && data[..to] == self.partial[..to]
            {
                Frame::Part {
                    id,
                    len: data.len() as u32,
                    from: from as u32,
                    to: to as u32,
                }
                .encode(out);
                let n = (to - from) as u64;
                self.stats.logical_bytes.fetch_add(n, Relaxed);
                self.stats.dedup_saved_bytes.fetch_add(n, Relaxed);
                self.previewed = to;
                self.hold(id, data, None);
                return;
            }
        }
        let piece = Bytes::copy_from_slice(&self.partial[self.previewed..]);
        let id = self.hasher.id(&piece).0;
        let len = piece.len();
        self.scratch.clear();
        let codec = self.codec.encode(&piece, &mut self.scratch);
        self.stats.logical_bytes.fetch_add(len as u64, Relaxed);
        self.stats
            .compression_saved_bytes
            .fetch_add(len.saturating_sub(self.scratch.len()) as u64, Relaxed);
        Frame::encode_chunk(
            out,
            false,
            &id,
            u8::from(codec) | PREVIEW_FLAG | NO_STORE_FLAG,
            len as u32,
            &self.scratch,
        );
        self.previewed = self.partial.len();
        self.hold(id, piece, None);
    }

    /// The chunk that followed the last one sent the last time chunks crossed with this peer in
    /// this order, if the peer holds it and this side can read it for the peer.
    fn predicted(&self) -> Option<(WireId, Bytes)> {
        let c = self.chain.as_ref()?;
        let from = self.prev_id.as_ref()?;
        let p = c.successor(self.peer.index(), from, 1)?;
        if !self.store.peer_has(&p, self.peer) {
            return None;
        }
        let data = self.store.get(&p, Some(self.peer)).ok().flatten()?;
        Some((p, data))
    }

    /// A chunk whose first `skip` bytes crossed as previews: a reference when the peer holds it
    /// (the receiver delivers the bytes after `skip`), else a literal of those bytes only (the
    /// receiver prepends the previews and verifies the whole chunk). Never a delta: the
    /// receiver's preview bytes would not be part of what the run rebuilds.
    fn emit_previewed(&mut self, id: WireId, chunk: Bytes, skip: usize, out: &mut BytesMut) {
        let len = chunk.len();
        let rest = len - skip;
        self.stats.logical_bytes.fetch_add(rest as u64, Relaxed);
        if self.cfg.dedup && self.store.peer_has(&id, self.peer) {
            self.refs.push(ChunkRef {
                id,
                len: len as u32,
            });
            self.stats.ref_chunks.fetch_add(1, Relaxed);
            self.stats.dedup_saved_bytes.fetch_add(rest as u64, Relaxed);
        } else {
            self.emit_refs(out);
            self.scratch.clear();
            let codec = self.codec.encode(&chunk[skip..], &mut self.scratch);
            self.stats
                .compression_saved_bytes
                .fetch_add(rest.saturating_sub(self.scratch.len()) as u64, Relaxed);
            self.write_literal(&id, u8::from(codec), rest, out);
            if self.cfg.dedup {
                if let Err(e) = self.store.put(&id, &chunk, self.peer) {
                    tracing::warn!(error = %e, "chunk store write failed");
                }
                if let Some(d) = &self.delta {
                    if let Some(sk) = sketch(&chunk) {
                        d.index.insert(&id, sk);
                    }
                }
            }
        }
        self.identity = Some(id);
        if self.cfg.dedup {
            self.record_chain(&id);
        }
        self.hold(id, chunk, None);
    }

    /// Writes a `Literal` frame of the payload in `self.scratch`, decoding to `len` bytes.
    fn write_literal(&mut self, id: &WireId, codec: u8, len: usize, out: &mut BytesMut) {
        let flag = if self.cfg.dedup { 0 } else { NO_STORE_FLAG };
        Frame::encode_chunk(out, false, id, codec | flag, len as u32, &self.scratch);
        self.stats.literal_chunks.fetch_add(1, Relaxed);
    }

    /// Keeps an item until the peer acknowledges it.
    fn hold(&mut self, id: WireId, data: Bytes, bases: Option<Box<[WireId]>>) {
        let seq = self.sent_items;
        self.unacked_bytes += data.len() as u64;
        self.held_cost += entry_bytes(data.len());
        let e = self.held_index.entry(id).or_insert(HeldId {
            count: 0,
            last: seq,
        });
        e.count += 1;
        e.last = seq;
        self.unacked.push_back(Held {
            id,
            data,
            bases,
            forgotten: false,
            mark_on_ack: false,
        });
        self.sent_items += 1;
    }

    /// Whether `finish` was called.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether to stop reading the client: the window of unacknowledged items (counted at
    /// least [`MIN_SLOT_BYTES`] each) is full, or the budget this encoder charges is exhausted
    /// while it holds any unacknowledged item. The floor that lets every flow progress past
    /// the budget is one item in flight (and the partial chunk after it): a thousand flows
    /// over budget hold about a thousand average chunks, not a thousand windows.
    pub fn window_full(&self) -> bool {
        self.window_full_at(self.charge.budget().is_exhausted())
    }

    /// [`FlowEncoder::window_full`] for a reading of the budget taken once: other flows charge
    /// it concurrently, so a caller deciding several things on it must read it once.
    pub fn window_full_at(&self, budget_exhausted: bool) -> bool {
        self.held_cost >= self.cfg.window || (self.held_cost > 0 && budget_exhausted)
    }

    /// Whether everything sent has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.acked_items == self.sent_items
    }

    /// Items (literals, references, run items) sent so far: what the peer acknowledges.
    pub fn sent_items(&self) -> u64 {
        self.sent_items
    }

    /// Bytes held for possible re-sending.
    pub fn unacked_bytes(&self) -> u64 {
        self.unacked_bytes
    }

    /// The peer delivered `n` items in total.
    pub fn on_ack(&mut self, n: u64) -> Result<(), Error> {
        if n > self.sent_items {
            return Err(Error::BadAck {
                acked: n,
                sent: self.sent_items,
            });
        }
        while self.acked_items < n {
            let seq = self.acked_items;
            if let Some(h) = self.unacked.pop_front() {
                self.unacked_bytes -= h.data.len() as u64;
                self.held_cost -= entry_bytes(h.data.len());
                self.on_item_acked(seq, &h);
            }
            self.acked_items += 1;
        }
        self.recharge();
        Ok(())
    }

    fn emit_refs(&mut self, out: &mut BytesMut) {
        if !self.refs.is_empty() {
            Frame::Refs(std::mem::take(&mut self.refs)).encode(out);
        }
    }

    fn record_chain(&mut self, id: &WireId) {
        if let Some(c) = &self.chain {
            c.record_chain(self.peer.index(), self.prev_id.as_ref(), id);
        }
        self.prev_id = Some(*id);
    }

    /// The most compact name of `base` the receiver can resolve from what it recorded.
    fn base_ref(&self, base: &WireId) -> BaseRef {
        self.base_ref_with(base, true)
    }

    /// The name of a `Delta` item's base and the chunks it skips (see [`RUN_GAP_STEPS`]); a
    /// skipped chunk this side cannot read for the peer rules out naming by position.
    fn delta_base_ref(&self, base: &WireId) -> (BaseRef, Vec<(WireId, Bytes)>) {
        let r = self.base_ref(base);
        let (BaseRef::Next(n), Some(c), Some(from)) = (r, &self.chain, &self.identity) else {
            return (r, Vec::new());
        };
        if !(2..=RUN_GAP_STEPS).contains(&n) {
            return (r, Vec::new());
        }
        let mut gaps = Vec::with_capacity(n as usize - 1);
        for k in 1..n as usize {
            let gap = c
                .successor(self.peer.index(), from, k)
                .filter(|g| self.store.peer_has(g, self.peer))
                .and_then(|g| match self.store.get(&g, Some(self.peer)) {
                    Ok(Some(b)) => Some((g, b)),
                    _ => None,
                });
            match gap {
                Some(g) => gaps.push(g),
                None => return (self.base_ref_with(base, false), Vec::new()),
            }
        }
        (r, gaps)
    }

    fn base_ref_with(&self, base: &WireId, by_position: bool) -> BaseRef {
        let Some(c) = &self.chain else {
            return BaseRef::Id(*base);
        };
        let peer = self.peer.index();
        if let (true, Some(from)) = (by_position, &self.identity) {
            if let Some(n) = c.chain_distance(peer, from, base) {
                if n <= MAX_NEXT_STEPS as usize {
                    return BaseRef::Next(n as u8);
                }
            }
        }
        if c.resolve_prefix(peer, id_prefix(base)) == Some(*base) {
            let mut p = [0u8; BASE_PREFIX_LEN];
            p.copy_from_slice(&base[..BASE_PREFIX_LEN]);
            return BaseRef::Prefix(p);
        }
        BaseRef::Id(*base)
    }

    fn emit_chunk(&mut self, chunk: Bytes, out: &mut BytesMut) {
        let id = self.hasher.id(&chunk).0;
        if let Some(v) = self.sent_ids.as_mut() {
            if v.len() < MAX_SENT_IDS {
                v.push(ChunkId(id));
            }
        }
        let skip = std::mem::take(&mut self.previewed);
        if skip > 0 {
            self.emit_previewed(id, chunk, skip, out);
            return;
        }
        let len = chunk.len();
        self.stats.logical_bytes.fetch_add(len as u64, Relaxed);
        let mut in_run = false;
        let bases = if self.cfg.dedup && self.store.peer_has(&id, self.peer) {
            if let Some(d) = &self.delta {
                // Chunks the peer already holds are bases too; after a restart the index is
                // empty, so learn them again (once: `contains` is a map lookup).
                if !d.index.contains(&id) {
                    if let Some(sk) = sketch(&chunk) {
                        d.index.insert(&id, sk);
                    }
                }
            }
            if self.run_open() {
                // Inside a run a known chunk costs a byte or so instead of a 36-byte reference.
                let item = RunItem::Same(self.base_ref(&id));
                self.push_planned(
                    Planned {
                        id,
                        item,
                        base: id,
                        delta: None,
                        gaps: Vec::new(),
                        alone_cost: ID_REF_COST,
                    },
                    len,
                );
                in_run = true;
            } else {
                self.refs.push(ChunkRef {
                    id,
                    len: len as u32,
                });
            }
            self.stats.ref_chunks.fetch_add(1, Relaxed);
            self.stats.dedup_saved_bytes.fetch_add(len as u64, Relaxed);
            self.identity = Some(id);
            None
        } else {
            self.scratch.clear();
            let codec = self.codec.encode(&chunk, &mut self.scratch);
            self.stats
                .compression_saved_bytes
                .fetch_add(len.saturating_sub(self.scratch.len()) as u64, Relaxed);
            let bases = match self.try_delta(&id, &chunk) {
                Some(plan) => {
                    if !self.run_open() {
                        self.emit_refs(out);
                        if let Some(d) = self.delta.as_mut() {
                            d.run = Some(Building {
                                chain_prev: self.prev_id,
                                ..Building::default()
                            });
                        }
                    }
                    let (base, gaps) = self.delta_base_ref(&plan.base);
                    let item = RunItem::Delta {
                        base,
                        len_diff: len as i32 - plan.base_data.len() as i32,
                    };
                    self.push_planned(
                        Planned {
                            id,
                            item,
                            base: plan.base,
                            delta: Some((chunk.clone(), plan.base_data)),
                            gaps,
                            alone_cost: plan.literal_cost,
                        },
                        len,
                    );
                    in_run = true;
                    self.identity = Some(plan.base);
                    Some(Box::from([plan.base]))
                }
                None => {
                    self.close_run(out);
                    self.emit_refs(out);
                    self.write_literal(&id, u8::from(codec), len, out);
                    self.identity = Some(id);
                    None
                }
            };
            if self.cfg.dedup {
                if let Err(e) = self.store.put(&id, &chunk, self.peer) {
                    // Not fatal: without the entry this chunk is simply never referenced.
                    tracing::warn!(error = %e, "chunk store write failed");
                }
            }
            bases
        };
        if !in_run && self.cfg.dedup {
            // Run items are recorded when the run closes: the receiver can only record them
            // once it has rebuilt them, and base names inside a run must resolve the same way.
            self.record_chain(&id);
        }
        self.hold(id, chunk, bases);
        if self.run_full() {
            self.close_run(out);
        }
    }

    fn push_planned(&mut self, p: Planned, len: usize) {
        let Some(run) = self.delta.as_mut().and_then(|d| d.run.as_mut()) else {
            return;
        };
        if let Some((data, base)) = &p.delta {
            run.delta_bytes += data.len();
            for (g, b) in &p.gaps {
                if !run.in_prefix(g)
                    && !p
                        .gaps
                        .iter()
                        .take_while(|(x, _)| x != g)
                        .any(|(x, _)| x == g)
                {
                    run.prefix_bytes += b.len();
                }
            }
            if !run.in_prefix(&p.base) && !p.gaps.iter().any(|(g, _)| *g == p.base) {
                run.prefix_bytes += base.len();
            }
        }
        run.logical_bytes += len as u64;
        run.items.push(p);
    }

    /// Whether the open run must close now: item or byte bounds, or half the flow window (its
    /// items are unacknowledged but not yet sent; the window must never fill with them alone).
    fn run_full(&self) -> bool {
        let Some(run) = self.delta.as_ref().and_then(|d| d.run.as_ref()) else {
            return false;
        };
        let max_chunk = self.cfg.chunker.max();
        run.items.len() >= RUN_MAX_ITEMS
            || run.delta_bytes + max_chunk > RUN_MAX_DELTA_BYTES
            || run.prefix_bytes + max_chunk > RUN_MAX_PREFIX_BYTES
            || run.logical_bytes + max_chunk as u64 >= self.cfg.window / 2
            || run.logical_bytes + max_chunk as u64 > RUN_MAX_LOGICAL_BYTES
    }

    /// Sends the open run, if any, as one `DeltaRun` frame.
    fn close_run(&mut self, out: &mut BytesMut) {
        let Some(d) = self.delta.as_mut() else {
            return;
        };
        let Some(run) = d.run.take() else {
            return;
        };
        d.prefix.clear();
        d.output.clear();
        let mut used: Vec<&WireId> = Vec::new();
        for p in &run.items {
            if let Some((data, base)) = &p.delta {
                for (g, b) in p.gaps.iter().map(|(g, b)| (g, b)).chain([(&p.base, base)]) {
                    if !used.contains(&g) {
                        used.push(g);
                        d.prefix.extend_from_slice(b);
                    }
                }
                d.output.extend_from_slice(data);
            }
        }
        d.payload.clear();
        if !d.output.is_empty() {
            if let Err(e) = d.coder.encode(&d.prefix, &d.output, &mut d.payload) {
                // Not expected (bounds are checked before); never send what might not decode.
                tracing::warn!(error = %e, "delta run encode failed; sending its chunks alone");
                let n = run.items.len();
                self.send_alone(run.items, out);
                self.chain_run_ids(run.chain_prev, n);
                return;
            }
        }
        let digest = run_digest(&self.hasher, run.items.iter().map(|p| &p.id));
        let items: Vec<RunItem> = run.items.iter().map(|p| p.item).collect();
        Frame::encode_delta_run(out, &digest, &items, &d.payload);
        let frame_len = Frame::delta_run_overhead(&items) + d.payload.len();
        let alone: usize = run.items.iter().map(|p| p.alone_cost).sum();
        let deltas = run.items.iter().filter(|p| p.delta.is_some()).count() as u64;
        DeltaStats::add(&d.stats.delta_chunks, deltas);
        DeltaStats::add(&d.stats.runs, 1);
        DeltaStats::add(
            &d.stats.delta_saved_bytes,
            alone.saturating_sub(frame_len) as u64,
        );
        let n = run.items.len();
        let sent = SentRun {
            digest,
            first: self.sent_items - n as u64,
            count: n,
        };
        self.runs.push_back(sent);
        let e = self.run_index.entry(digest).or_insert((sent, 0));
        *e = (sent, e.1 + 1);
        self.chain_run_ids(run.chain_prev, n);
    }

    /// Records the last `n` items sent (a run just closed) into the chain, after `prev`.
    fn chain_run_ids(&mut self, prev: Option<WireId>, n: usize) {
        if !self.cfg.dedup {
            return;
        }
        self.prev_id = prev;
        let from = self.unacked.len().saturating_sub(n);
        for k in from..self.unacked.len() {
            let id = self.unacked[k].id;
            self.record_chain(&id);
        }
    }

    /// Fallback: the run's chunks as literals and references, in order.
    fn send_alone(&mut self, items: Vec<Planned>, out: &mut BytesMut) {
        for p in items {
            match p.delta {
                Some((data, _)) => {
                    self.scratch.clear();
                    let codec = self.codec.encode(&data, &mut self.scratch);
                    Frame::encode_chunk(
                        out,
                        false,
                        &p.id,
                        u8::from(codec),
                        data.len() as u32,
                        &self.scratch,
                    );
                }
                None => {
                    let len = self
                        .unacked
                        .iter()
                        .rev()
                        .find(|h| h.id == p.id)
                        .map_or(0, |h| h.data.len() as u32);
                    Frame::Refs(vec![ChunkRef { id: p.id, len }]).encode(out);
                }
            }
        }
    }

    /// Picks a base for `chunk` that the peer holds and that makes its delta smaller than the
    /// literal in `self.scratch`: the successor of the previous chunk's base when the sketches
    /// agree (or nothing else resembles it), else the most resembling candidate. Also indexes
    /// the chunk's sketch.
    fn try_delta(&mut self, id: &WireId, chunk: &[u8]) -> Option<DeltaPlan> {
        let predicted = match (&self.chain, &self.identity) {
            (Some(c), Some(from)) => c.successor(self.peer.index(), from, 1),
            _ => None,
        };
        let d = self.delta.as_mut()?;
        if chunk.len() > RUN_MAX_DELTA_BYTES / 2 {
            return None;
        }
        let max_cands =
            (self.cfg.delta.max_bases as usize).clamp(1, strait_wire::MAX_DELTA_BASES) * 2;
        let mut cands: Vec<(WireId, usize)> = Vec::with_capacity(max_cands + 1);
        if let Some(sk) = sketch(chunk) {
            // Hints first (the previous version of the same object), then the shared index.
            for (h, hsk) in &d.hints {
                let n = sk.shared(hsk);
                if n > 0 && h != id {
                    cands.push((*h, n + strait_sketch::SUPER_FEATURES));
                }
            }
            for c in d
                .index
                .candidates(&sk, MIN_SHARED_SUPER_FEATURES, max_cands, id)
            {
                if !cands.iter().any(|(x, _)| *x == c.0) {
                    cands.push(c);
                }
            }
            d.index.insert(id, sk);
            cands.sort_by_key(|c| std::cmp::Reverse(c.1));
        }
        // The predicted base costs one byte to name and usually is the previous version of this
        // very chunk: prefer it when it is a candidate, try it when nothing else is.
        if let Some(p) = predicted.filter(|p| p != id) {
            match cands.iter().position(|(c, _)| *c == p) {
                Some(i) => {
                    let c = cands.remove(i);
                    cands.insert(0, c);
                }
                None if cands.is_empty() => cands.push((p, 0)),
                None => {}
            }
        }
        let mut chosen = None;
        for (cid, _) in cands {
            // Isolation: only a chunk this peer sent or received, read with its slot.
            if !self.store.peer_has(&cid, self.peer) {
                continue;
            }
            if let Ok(Some(b)) = self.store.get(&cid, Some(self.peer)) {
                if b.len() <= RUN_MAX_PREFIX_BYTES / 2 {
                    chosen = Some((cid, b));
                    break;
                }
            }
        }
        let (base, base_data) = chosen?;
        DeltaStats::add(&d.stats.attempts, 1);
        // A trial against this base alone: the run codes it in fewer bytes still (shared
        // tables, repeated offsets), so a delta that beats the literal here is worth it.
        if let Err(e) = d.coder.encode(&base_data, chunk, &mut d.payload) {
            tracing::warn!(error = %e, "delta encode failed");
            return None;
        }
        let literal_cost = Frame::literal_overhead() + self.scratch.len();
        if d.payload.len() + TRIAL_ITEM_COST >= literal_cost {
            DeltaStats::add(&d.stats.rejected, 1);
            return None;
        }
        Some(DeltaPlan {
            base,
            base_data,
            literal_cost,
        })
    }
}

/// What a chunk reference costs in a `Refs` frame (for the savings counter).
const ID_REF_COST: usize = strait_wire::ID_LEN + 4;
/// Frame and naming bytes a run item adds to a trial delta, for the literal comparison.
const TRIAL_ITEM_COST: usize = 4;
