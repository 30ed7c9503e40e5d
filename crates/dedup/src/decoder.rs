//! The receiving half: frames → verified client bytes, in order.

mod preview;
mod queue;
mod runs;

use crate::budget::{Budget, Charge};
use crate::delta::DeltaStats;
use crate::run::RUN_SUPPLY_FLAG;
use crate::{short, Error, ACK_EVERY, NO_STORE_FLAG, PREVIEW_FLAG};
use bytes::Bytes;
use preview::{Deferred, Preview};
use queue::{Check, Slot, Waiter};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, ChunkId};
use strait_codec::CodecId;
use strait_sketch::{id_prefix, sketch, DeltaDecoder, SketchIndex};
use strait_store::{PeerSlot, Store};
use strait_wire::{BaseRef, ChunkRef, Frame, WireId, DELTA_ZSTD_PREFIX, MAX_CHUNK_LEN};

/// A coded chunk as a `Literal` or `Supply` carries it.
struct Coded<'a> {
    id: WireId,
    codec: u8,
    len: u32,
    payload: &'a Bytes,
}

/// Decodes one direction of one flow.
pub struct FlowDecoder {
    hasher: ChunkHasher,
    store: Arc<Store>,
    peer: PeerSlot,
    codec: strait_codec::Decoder,
    queue: VecDeque<Slot>,
    /// Slots popped so far: the sequence number of the queue's front.
    popped: u64,
    /// Bytes held, counted honestly (see [`queue`]).
    queued_bytes: u64,
    max_queue: u64,
    /// The sender's flow window (the queue bound is twice that plus one chunk).
    window: u64,
    /// Longest chunk the peer may send (its `dedup.max_chunk`, exchanged at connect).
    max_chunk: usize,
    /// Slots waiting for a chunk id, by id.
    waiting: HashMap<WireId, Waiter>,
    /// Run slots waiting for their supplies, by digest.
    run_waiting: HashMap<WireId, Waiter>,
    /// Deferred preview checks, and the lost parts (by slot) they wait for.
    checks: HashMap<u64, Deferred>,
    holes: HashMap<u64, (u64, usize)>,
    next_check: u64,
    /// Items delivered (what acknowledgements count).
    delivered: u64,
    last_ack: u64,
    /// Bytes delivered since the last acknowledgement (see [`crate::ACK_BYTES`]).
    unacked_delivered: u64,
    ended: bool,
    stats: Arc<RouteStats>,
    delta_stats: Arc<DeltaStats>,
    index: Option<Arc<SketchIndex>>,
    /// Run digests wanted, in the order the sender will answer them.
    run_wants: VecDeque<WireId>,
    /// Last chunk id in stream order, `None` when unknown (after a failed run).
    prev_id: Option<WireId>,
    /// The identity `BaseRef::Next` steps from (mirrors the encoder's).
    identity: Option<WireId>,
    /// Previews since the last item: the start of the next chunk.
    preview: Preview,
    /// What this decoder holds, charged to the process budget.
    charge: Charge,
    /// Wants found while popping ([`FlowDecoder::take_wants`]) and the error met then.
    late_wants: Vec<WireId>,
    late_error: Option<Error>,
    /// Queue slots and index entries visited (tests count work with it, not time).
    #[cfg(test)]
    pub(crate) visits: u64,
}

impl FlowDecoder {
    /// A decoder for data from `peer`; `window` is the sender's flow window (the queue bound is
    /// twice that plus one maximal chunk, so a conforming sender can never exceed it). The peer's
    /// chunks may be as long as the wire allows until [`FlowDecoder::with_peer_max_chunk`].
    pub fn new(
        hasher: ChunkHasher,
        store: Arc<Store>,
        peer: PeerSlot,
        window: u64,
        stats: Arc<RouteStats>,
    ) -> Self {
        FlowDecoder {
            hasher,
            store,
            peer,
            codec: strait_codec::Decoder::new(),
            queue: VecDeque::new(),
            popped: 0,
            queued_bytes: 0,
            max_queue: Self::bound(window, MAX_CHUNK_LEN),
            window,
            max_chunk: MAX_CHUNK_LEN,
            waiting: HashMap::new(),
            run_waiting: HashMap::new(),
            checks: HashMap::new(),
            holes: HashMap::new(),
            next_check: 0,
            delivered: 0,
            last_ack: 0,
            unacked_delivered: 0,
            ended: false,
            stats,
            delta_stats: Arc::new(DeltaStats::default()),
            index: None,
            run_wants: VecDeque::new(),
            prev_id: None,
            identity: None,
            preview: Preview::default(),
            charge: Budget::unlimited().charge(),
            late_wants: Vec::new(),
            late_error: None,
            #[cfg(test)]
            visits: 0,
        }
    }

    fn bound(window: u64, max_chunk: usize) -> u64 {
        window.saturating_mul(2).saturating_add(max_chunk as u64)
    }

    /// Holds the peer to its `dedup.max_chunk` (announced at connect): every literal, supply,
    /// delta, part, reference and run item longer than that is a protocol error.
    pub fn with_peer_max_chunk(mut self, max_chunk: u32) -> Self {
        self.max_chunk = (max_chunk as usize).min(MAX_CHUNK_LEN);
        self.max_queue = Self::bound(self.window, self.max_chunk);
        self
    }

    /// Whether a supply this decoder asked for is still to come. It arrives on this stream,
    /// behind whatever the peer sent meanwhile (at most its window, else a reset), so the flow
    /// must read on to get it whatever the budget says.
    pub fn awaits_supply(&self) -> bool {
        !self.waiting.is_empty() || !self.run_waiting.is_empty()
    }

    /// The longest chunk the peer may send (its announced `max_chunk`).
    pub fn peer_max_chunk(&self) -> usize {
        self.max_chunk
    }

    /// Charges what this decoder holds to `budget`. Never blocks: supplies arrive on the same
    /// stream as the data that made this side ask for them.
    pub fn with_budget(mut self, budget: &Budget) -> Self {
        self.charge = budget.charge();
        self.recharge();
        self
    }

    /// A chunk of `len` bytes from the peer: within its max chunk.
    fn check_len(&self, len: usize) -> Result<(), Error> {
        if len > self.max_chunk {
            return Err(Error::TooLong {
                len,
                max: self.max_chunk,
            });
        }
        Ok(())
    }

    /// Counts delta frames into `stats`; with `index`, also sketches every chunk received, so
    /// the encoder of the opposite direction can use them as bases (the peer holds them), and
    /// records the order chunks arrive in, which delta runs name their bases by. Without an
    /// index, deltas still decode, but a run naming a base by position or prefix fails and is
    /// recovered through the miss path.
    pub fn with_delta(mut self, index: Option<Arc<SketchIndex>>, stats: Arc<DeltaStats>) -> Self {
        self.index = index;
        self.delta_stats = stats;
        self
    }

    /// Stores a verified chunk received from the peer (and sketches it).
    fn keep(&self, id: &WireId, data: &[u8]) {
        if let Err(e) = self.store.put(id, data, self.peer) {
            tracing::warn!(error = %e, "chunk store write failed");
        }
        self.learn(id, data);
    }

    fn learn(&self, id: &WireId, data: &[u8]) {
        if let Some(idx) = &self.index {
            if let Some(sk) = sketch(data) {
                idx.insert(id, sk);
            }
        }
    }

    fn record_chain(&mut self, id: &WireId) {
        if let Some(idx) = &self.index {
            idx.record_chain(self.peer.index(), self.prev_id.as_ref(), id);
        }
        self.prev_id = Some(*id);
    }

    /// The id a run item names, resolved among chunks exchanged with this peer only.
    fn resolve(&self, base: &BaseRef) -> Option<WireId> {
        match base {
            BaseRef::Id(id) => Some(*id),
            BaseRef::Next(n) => {
                let from = self.identity.as_ref()?;
                self.index
                    .as_ref()?
                    .successor(self.peer.index(), from, *n as usize)
            }
            BaseRef::Prefix(p) => {
                let mut a = [0u8; 32];
                a[..p.len()].copy_from_slice(p);
                self.index
                    .as_ref()?
                    .resolve_prefix(self.peer.index(), id_prefix(&a))
            }
        }
    }

    fn get_stored(&self, id: &WireId) -> Option<Bytes> {
        match self.store.get(id, Some(self.peer)) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "chunk store read failed");
                None
            }
        }
    }

    /// The bases of a delta, concatenated in frame order, if this side holds every one of them
    /// for the sending peer.
    fn load_bases(&self, bases: &[ChunkRef]) -> Option<Vec<u8>> {
        // Grown from what the store returns, never sized from the (hostile) frame's lengths.
        let mut prefix = Vec::new();
        for b in bases {
            match self.store.get(&b.id, Some(self.peer)) {
                Ok(Some(d)) if d.len() == b.len as usize => prefix.extend_from_slice(&d),
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "chunk store read failed");
                    return None;
                }
            }
        }
        Some(prefix)
    }

    fn decode_verified(
        &mut self,
        id: &WireId,
        codec: u8,
        len: u32,
        payload: &Bytes,
    ) -> Result<Option<Bytes>, Error> {
        self.decode_verified_after(id, codec, len, payload, &[])
    }

    /// Decodes `payload` to `len` bytes and verifies `prefix` followed by them against `id`;
    /// returns the whole chunk.
    fn decode_verified_after(
        &mut self,
        id: &WireId,
        codec: u8,
        len: u32,
        payload: &Bytes,
        prefix: &[u8],
    ) -> Result<Option<Bytes>, Error> {
        let codec_id = CodecId::try_from(codec & !(NO_STORE_FLAG | RUN_SUPPLY_FLAG | PREVIEW_FLAG))
            .map_err(|source| Error::Codec {
                id: short(id),
                source,
            })?;
        self.check_len(prefix.len() + len as usize)?;
        if codec_id == CodecId::Raw && prefix.is_empty() {
            // Raw chunks are delivered from the frame's own buffer: no copy.
            if payload.len() != len as usize || !self.hasher.verify(&ChunkId(*id), payload) {
                return Ok(None);
            }
            return Ok(Some(payload.clone()));
        }
        let mut out = Vec::with_capacity(prefix.len() + len as usize);
        out.extend_from_slice(prefix);
        if let Err(e) = self.codec.decode(codec_id, payload, len as usize, &mut out) {
            // A payload that does not decode is treated like a corrupt chunk: ask again.
            tracing::warn!(chunk = %short(id), error = %e, "chunk payload did not decode");
            return Ok(None);
        }
        if !self.hasher.verify(&ChunkId(*id), &out) {
            return Ok(None);
        }
        self.stats
            .compression_saved_bytes
            .fetch_add((len as u64).saturating_sub(payload.len() as u64), Relaxed);
        Ok(Some(Bytes::from(out)))
    }

    /// The stored chunk `id` if it has `len` bytes.
    fn store_get(&self, id: &WireId, len: u32) -> Option<Bytes> {
        match self.store.get(id, Some(self.peer)) {
            Ok(Some(b)) if b.len() == len as usize => Some(b),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "chunk store read failed");
                None
            }
        }
    }

    /// Handles a data-direction frame. Ids this side lacks are appended to `wants`: send them
    /// to the peer in one `Want` frame and clear it before the next call.
    pub fn on_frame(&mut self, frame: Frame, wants: &mut Vec<WireId>) -> Result<(), Error> {
        let r = self.handle(frame, wants);
        self.recharge();
        r
    }

    fn handle(&mut self, frame: Frame, wants: &mut Vec<WireId>) -> Result<(), Error> {
        let data_frame = !matches!(frame, Frame::Supply { .. } | Frame::End);
        if data_frame && self.ended {
            return Err(Error::DataAfterEnd);
        }
        match frame {
            Frame::Literal {
                id,
                codec,
                len,
                ref payload,
            } => {
                let c = Coded {
                    id,
                    codec,
                    len,
                    payload,
                };
                if codec & PREVIEW_FLAG != 0 {
                    return self.on_preview(c);
                }
                self.on_literal(c, wants)
            }
            Frame::Refs(refs) => self.on_refs(refs, wants),
            Frame::Part { id, len, from, to } => self.on_part(id, len, from, to, wants),
            Frame::Delta {
                id,
                codec,
                len,
                bases,
                payload,
            } => self.on_delta(id, codec, len, &bases, &payload, wants),
            Frame::DeltaRun {
                digest,
                items,
                payload,
            } => {
                if !self.preview.is_empty() {
                    return Err(Error::Unexpected("a delta run after a preview"));
                }
                self.on_delta_run(digest, items, &payload, wants)
            }
            Frame::Supply {
                id,
                codec,
                len,
                ref payload,
            } => {
                let c = Coded {
                    id,
                    codec,
                    len,
                    payload,
                };
                if codec & RUN_SUPPLY_FLAG != 0 {
                    self.on_run_supply(c, wants)
                } else {
                    self.on_supply(c, wants)
                }
            }
            Frame::End if !self.preview.is_empty() => Err(Error::Unexpected(
                "the direction ended inside a previewed chunk",
            )),
            Frame::End => {
                self.ended = true;
                Ok(())
            }
            _ => Err(Error::Unexpected("not a data frame")),
        }
    }

    fn on_literal(&mut self, c: Coded<'_>, wants: &mut Vec<WireId>) -> Result<(), Error> {
        let (id, codec, len, payload) = (c.id, c.codec, c.len, c.payload);
        let (skip, check) = self.take_preview();
        let store = codec & NO_STORE_FLAG == 0;
        self.stats.literal_chunks.fetch_add(1, Relaxed);
        self.identity = Some(id);
        if store {
            self.record_chain(&id);
        }
        let full = skip as usize + len as usize;
        self.check_len(full)?;
        // Previews whose bytes are still being supplied: the chunk cannot be verified from this
        // literal; the sender supplies it whole (and the check waits for the previews).
        let data = match &check {
            Check::None => self.decode_verified(&id, codec, len, payload)?,
            Check::Known(prefix) => self.decode_verified_after(&id, codec, len, payload, prefix)?,
            Check::Deferred(_) => {
                self.stats.misses.fetch_add(1, Relaxed);
                None
            }
        };
        match data {
            Some(data) => {
                if store {
                    self.keep(&id, &data);
                }
                let rest = data.slice(skip as usize..);
                self.push_item(Slot::Ready(rest), len, skip)
            }
            None => {
                if !matches!(check, Check::Deferred(_)) {
                    self.stats.verify_failures.fetch_add(1, Relaxed);
                }
                self.want_missing(id, wants)?;
                let slot = Slot::Waiting {
                    id,
                    len: full as u32,
                    store,
                    from: skip,
                    to: full as u32,
                    check,
                };
                self.push_item(slot, len, skip)
            }
        }
    }

    fn on_refs(&mut self, refs: Vec<ChunkRef>, wants: &mut Vec<WireId>) -> Result<(), Error> {
        let (mut skip, mut check) = self.take_preview();
        for r in refs {
            let (skip, check) = (
                std::mem::take(&mut skip),
                std::mem::replace(&mut check, Check::None),
            );
            self.check_len(r.len as usize)?;
            let Some(rest) = r.len.checked_sub(skip) else {
                return Err(Error::PreviewMismatch(short(&r.id)));
            };
            self.stats.ref_chunks.fetch_add(1, Relaxed);
            self.identity = Some(r.id);
            self.record_chain(&r.id);
            // Without previews to check, a chunk the store holds is read when delivered.
            if skip == 0 && matches!(check, Check::None) && self.store.peer_has(&r.id, self.peer) {
                self.stats.dedup_saved_bytes.fetch_add(rest as u64, Relaxed);
                self.push_item(
                    Slot::Stored {
                        id: r.id,
                        len: r.len,
                    },
                    rest,
                    skip,
                )?;
                continue;
            }
            match self.store_get(&r.id, r.len) {
                Some(b) => {
                    self.stats.dedup_saved_bytes.fetch_add(rest as u64, Relaxed);
                    let b = self.slice_checked(&r.id, &b, skip, r.len, &check)?;
                    self.push_item(Slot::Ready(b), rest, skip)?;
                }
                None => {
                    self.stats.misses.fetch_add(1, Relaxed);
                    self.want_missing(r.id, wants)?;
                    let slot = Slot::Waiting {
                        id: r.id,
                        len: r.len,
                        store: true,
                        from: skip,
                        to: r.len,
                        check,
                    };
                    self.push_item(slot, rest, skip)?;
                }
            }
        }
        Ok(())
    }

    fn on_delta(
        &mut self,
        id: WireId,
        codec: u8,
        len: u32,
        bases: &[ChunkRef],
        payload: &[u8],
        wants: &mut Vec<WireId>,
    ) -> Result<(), Error> {
        if !self.preview.is_empty() {
            return Err(Error::Unexpected("a delta chunk after a preview"));
        }
        if codec != DELTA_ZSTD_PREFIX {
            return Err(Error::DeltaCodec {
                id: short(&id),
                codec,
            });
        }
        self.check_len(len as usize)?;
        DeltaStats::add(&self.delta_stats.delta_chunks, 1);
        self.identity = Some(id);
        self.record_chain(&id);
        let rebuilt = match self.load_bases(bases) {
            None => {
                // A base this side lacks (evicted, wiped, or never given by this peer): the
                // whole chunk is a miss, supplied by the sender.
                self.stats.misses.fetch_add(1, Relaxed);
                DeltaStats::add(&self.delta_stats.base_misses, 1);
                None
            }
            Some(prefix) => {
                let mut out = Vec::new();
                match DeltaDecoder::new().decode(&prefix, payload, len as usize, &mut out) {
                    Ok(()) if self.hasher.verify(&ChunkId(id), &out) => Some(out),
                    Ok(()) => {
                        self.stats.verify_failures.fetch_add(1, Relaxed);
                        None
                    }
                    Err(e) => {
                        tracing::warn!(chunk = %short(&id), error = %e, "delta did not decode");
                        self.stats.verify_failures.fetch_add(1, Relaxed);
                        None
                    }
                }
            }
        };
        match rebuilt {
            Some(data) => {
                self.keep(&id, &data);
                self.push_item(Slot::Ready(Bytes::from(data)), len, 0)
            }
            None => {
                self.want_missing(id, wants)?;
                self.push_item(Slot::whole(id, len), len, 0)
            }
        }
    }

    /// A chunk supplied on request: fills every slot waiting for it.
    fn on_supply(&mut self, c: Coded<'_>, wants: &mut Vec<WireId>) -> Result<(), Error> {
        let (id, codec, len, payload) = (c.id, c.codec, c.len, c.payload);
        let Some(&seq) = self.waiting.get(&id).and_then(|w| w.seqs.first()) else {
            return Err(Error::UnrequestedSupply(short(&id)));
        };
        let expected = match self.slot_mut(seq) {
            Some(Slot::Waiting { len, .. }) => *len,
            _ => return Err(Error::UnrequestedSupply(short(&id))),
        };
        if expected != len {
            return Err(Error::Corrupt {
                id: short(&id),
                attempts: 1,
            });
        }
        let Some(data) = self.decode_verified(&id, codec, len, payload)? else {
            self.stats.verify_failures.fetch_add(1, Relaxed);
            return self.want(id, wants);
        };
        let seqs = self.waiting.remove(&id).map(|w| w.seqs).unwrap_or_default();
        let mut stored = false;
        for seq in seqs {
            let Some(Slot::Waiting {
                store,
                from,
                to,
                check,
                ..
            }) = self.slot_mut(seq)
            else {
                continue;
            };
            let (store, from, to) = (*store, *from, *to);
            let check = std::mem::replace(check, Check::None);
            if store && codec & NO_STORE_FLAG == 0 && !stored {
                self.keep(&id, &data);
                stored = true;
            }
            let b = self.slice_checked(&id, &data, from, to, &check)?;
            self.part_supplied(seq, &b)?;
            self.replace(seq, Slot::Ready(b))?;
        }
        Ok(())
    }

    /// An `Ack` to send, when enough was delivered since the last one ([`ACK_EVERY`] items or
    /// [`crate::ACK_BYTES`] bytes) or the queue drained.
    pub fn take_ack(&mut self) -> Option<Frame> {
        if self.delivered > self.last_ack
            && (self.queue.is_empty()
                || self.delivered - self.last_ack >= ACK_EVERY
                || self.unacked_delivered >= crate::ACK_BYTES)
        {
            self.last_ack = self.delivered;
            self.unacked_delivered = 0;
            return Some(Frame::Ack(self.delivered));
        }
        None
    }

    /// Whether the peer ended its direction.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether the peer ended and everything was delivered.
    pub fn is_done(&self) -> bool {
        self.ended && self.queue.is_empty()
    }

    /// Whether the head of the queue waits for a supplied chunk.
    pub fn is_waiting(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Slot::Waiting { .. } | Slot::Run(_))
        )
    }
}
