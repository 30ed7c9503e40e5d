//! The receiving half: frames → verified client bytes, in order.

use crate::delta::DeltaStats;
use crate::run::{
    run_digest, MAX_RUN_DECODED_BYTES, MAX_RUN_PREFIX_BYTES, RUN_GAP_STEPS, RUN_SUPPLY_FLAG,
};
use crate::{short, Error, ACK_EVERY, MAX_VERIFY_ATTEMPTS, NO_STORE_FLAG, PREVIEW_FLAG};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, ChunkId};
use strait_codec::CodecId;
use strait_sketch::{id_prefix, sketch, DeltaDecoder, SketchIndex};
use strait_store::{PeerSlot, Store};
use strait_wire::{BaseRef, ChunkRef, Frame, RunItem, WireId, DELTA_ZSTD_PREFIX, MAX_CHUNK_LEN};

enum Slot {
    Ready(Bytes),
    Waiting {
        id: WireId,
        len: u32,
        store: bool,
        /// The bytes of the chunk to deliver: all of it, or what previews did not deliver, or
        /// (for a `Part`) the previewed range.
        from: u32,
        to: u32,
        /// What the chunk's first `from` bytes must be, when known (the previews delivered).
        check: Option<Bytes>,
    },
    /// A delta run that failed verification, waiting for its chunks to be supplied.
    Run(Box<WaitingRun>),
}

struct WaitingRun {
    digest: WireId,
    count: usize,
    /// Supplies received so far: id and the verified bytes (`None`: failed verification).
    got: Vec<(WireId, Option<Bytes>)>,
    /// Stream-order predecessor of the run's first chunk, for the chain.
    prev: Option<WireId>,
    /// Bytes this slot counts in the queue until its chunks are known.
    acct: u64,
}

/// A run's chunks, rebuilt: id, bytes, whether it was a delta (to store).
type Rebuilt = Vec<(WireId, Bytes, bool)>;

/// Decodes one direction of one flow.
pub struct FlowDecoder {
    hasher: ChunkHasher,
    store: Arc<Store>,
    peer: PeerSlot,
    codec: strait_codec::Decoder,
    queue: VecDeque<Slot>,
    queued_bytes: u64,
    max_queue: u64,
    attempts: HashMap<WireId, u8>,
    delivered: u64,
    last_ack: u64,
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
}

/// What previews delivered of the chunk the sender's client paused in.
#[derive(Default)]
struct Preview {
    /// Bytes delivered (or queued to be) so far.
    len: usize,
    /// Those bytes, unless a `Part` of them is still being supplied.
    known: Vec<u8>,
    lost: bool,
}

impl Preview {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes the next chunk must start with, if known.
    fn check(&self) -> Option<Bytes> {
        (!self.lost).then(|| Bytes::copy_from_slice(&self.known))
    }
}

impl FlowDecoder {
    /// A decoder for data from `peer`; `window` is the sender's flow window (the queue bound is
    /// twice that, so a conforming sender can never exceed it).
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
            queued_bytes: 0,
            max_queue: window
                .saturating_mul(2)
                .saturating_add(MAX_CHUNK_LEN as u64),
            attempts: HashMap::new(),
            delivered: 0,
            last_ack: 0,
            ended: false,
            stats,
            delta_stats: Arc::new(DeltaStats::default()),
            index: None,
            run_wants: VecDeque::new(),
            prev_id: None,
            identity: None,
            preview: Preview::default(),
        }
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

    /// Rebuilds a run's chunks from their bases (each read through this peer's slot) and the
    /// payload. `Ok(None)`: a base is missing or the payload does not decode (a miss, not an
    /// error). Lengths beyond the caps are protocol errors.
    fn rebuild_run(&mut self, items: &[RunItem], payload: &[u8]) -> Result<Option<Rebuilt>, Error> {
        // Resolve every name first, moving `identity` exactly as the sender did.
        let mut named = Vec::with_capacity(items.len());
        let mut gaps: Vec<Vec<WireId>> = Vec::with_capacity(items.len());
        let mut missing = 0u64;
        for it in items {
            let mut g = Vec::new();
            if let (
                RunItem::Delta {
                    base: BaseRef::Next(n),
                    ..
                },
                Some(from),
                Some(idx),
            ) = (it, self.identity, &self.index)
            {
                if (2..=RUN_GAP_STEPS).contains(n) {
                    for k in 1..*n as usize {
                        match idx.successor(self.peer.index(), &from, k) {
                            Some(x) => g.push(x),
                            None => missing += 1,
                        }
                    }
                }
            }
            let r = self.resolve(it.base());
            self.identity = r;
            if r.is_none() {
                missing += 1;
            }
            named.push(r);
            gaps.push(g);
        }
        if missing > 0 {
            self.stats.misses.fetch_add(missing, Relaxed);
            let d = items.iter().zip(&named);
            let delta_missing = d
                .filter(|(it, r)| matches!(it, RunItem::Delta { .. }) && r.is_none())
                .count();
            DeltaStats::add(&self.delta_stats.base_misses, delta_missing as u64);
            return Ok(None);
        }
        // Load bases; grown from what the store returns, never sized from the frame.
        let mut prefix = Vec::new();
        let mut loaded: Vec<(WireId, Bytes)> = Vec::new();
        let mut parts: Vec<(WireId, Option<Bytes>, usize)> = Vec::with_capacity(items.len());
        let mut total = 0usize;
        for ((it, base), gaps) in items.iter().zip(named.iter().flatten()).zip(&gaps) {
            for g in gaps {
                if loaded.iter().any(|(id, _)| id == g) {
                    continue;
                }
                let Some(data) = self.get_stored(g) else {
                    self.stats.misses.fetch_add(1, Relaxed);
                    DeltaStats::add(&self.delta_stats.base_misses, 1);
                    return Ok(None);
                };
                if prefix.len() + data.len() > MAX_RUN_PREFIX_BYTES {
                    return Err(Error::TooLong {
                        len: prefix.len() + data.len(),
                        max: MAX_RUN_PREFIX_BYTES,
                    });
                }
                prefix.extend_from_slice(&data);
                loaded.push((*g, data));
            }
            let data = match loaded.iter().find(|(id, _)| id == base) {
                Some((_, b)) => Some(b.clone()),
                None => self.get_stored(base),
            };
            let Some(data) = data else {
                self.stats.misses.fetch_add(1, Relaxed);
                if matches!(it, RunItem::Delta { .. }) {
                    DeltaStats::add(&self.delta_stats.base_misses, 1);
                }
                return Ok(None);
            };
            match it {
                RunItem::Same(_) => parts.push((*base, Some(data), 0)),
                RunItem::Delta { len_diff, .. } => {
                    let len = data.len() as i64 + i64::from(*len_diff);
                    if len <= 0 || len as usize > MAX_CHUNK_LEN {
                        return Err(Error::TooLong {
                            len: len.max(0) as usize,
                            max: MAX_CHUNK_LEN,
                        });
                    }
                    total += len as usize;
                    if total > MAX_RUN_DECODED_BYTES {
                        return Err(Error::TooLong {
                            len: total,
                            max: MAX_RUN_DECODED_BYTES,
                        });
                    }
                    if !loaded.iter().any(|(id, _)| id == base) {
                        if prefix.len() + data.len() > MAX_RUN_PREFIX_BYTES {
                            return Err(Error::TooLong {
                                len: prefix.len() + data.len(),
                                max: MAX_RUN_PREFIX_BYTES,
                            });
                        }
                        prefix.extend_from_slice(&data);
                        loaded.push((*base, data));
                    }
                    parts.push((*base, None, len as usize));
                }
            }
        }
        let mut out = Vec::new();
        if total > 0 {
            if let Err(e) = DeltaDecoder::new().decode(&prefix, payload, total, &mut out) {
                tracing::warn!(error = %e, "delta run did not decode");
                self.stats.verify_failures.fetch_add(1, Relaxed);
                return Ok(None);
            }
        } else if !payload.is_empty() {
            self.stats.verify_failures.fetch_add(1, Relaxed);
            return Ok(None);
        }
        let out = Bytes::from(out);
        let mut at = 0;
        let mut rebuilt = Vec::with_capacity(parts.len());
        for (base, same, len) in parts {
            match same {
                // The store verified these bytes against `base` on read.
                Some(b) => rebuilt.push((base, b, false)),
                None => {
                    let b = out.slice(at..at + len);
                    at += len;
                    rebuilt.push((self.hasher.id(&b).0, b, true));
                }
            }
        }
        Ok(Some(rebuilt))
    }

    /// Wants a run's chunks (once while a want for the same digest is outstanding).
    fn want_run(&mut self, digest: WireId, wants: &mut Vec<WireId>) -> Result<(), Error> {
        if self.run_wants.contains(&digest) {
            return Ok(());
        }
        let a = self.attempts.entry(digest).or_insert(0);
        *a += 1;
        if *a > MAX_VERIFY_ATTEMPTS {
            return Err(Error::Corrupt {
                id: short(&digest),
                attempts: *a - 1,
            });
        }
        DeltaStats::add(&self.delta_stats.run_failures, 1);
        wants.push(digest);
        self.run_wants.push_back(digest);
        Ok(())
    }

    fn on_delta_run(
        &mut self,
        digest: WireId,
        items: Vec<RunItem>,
        payload: &[u8],
        wants: &mut Vec<WireId>,
    ) -> Result<(), Error> {
        DeltaStats::add(&self.delta_stats.runs, 1);
        let deltas = items
            .iter()
            .filter(|i| matches!(i, RunItem::Delta { .. }))
            .count() as u64;
        DeltaStats::add(&self.delta_stats.delta_chunks, deltas);
        let prev = self.prev_id;
        let rebuilt = match self.rebuild_run(&items, payload)? {
            Some(r) if run_digest(&self.hasher, r.iter().map(|(id, _, _)| id)) == digest => Some(r),
            Some(_) => {
                self.stats.verify_failures.fetch_add(1, Relaxed);
                None
            }
            None => None,
        };
        match rebuilt {
            Some(chunks) => {
                for (id, data, delta) in chunks {
                    let len = data.len() as u32;
                    if delta {
                        if let Err(e) = self.store.put(&id, &data, self.peer) {
                            tracing::warn!(error = %e, "chunk store write failed");
                        }
                        self.learn(&id, &data);
                    } else {
                        self.stats.ref_chunks.fetch_add(1, Relaxed);
                        self.stats.dedup_saved_bytes.fetch_add(len as u64, Relaxed);
                    }
                    self.record_chain(&id);
                    self.push_slot(Slot::Ready(data), len)?;
                }
            }
            None => {
                self.want_run(digest, wants)?;
                let acct = items.len() as u64;
                self.push_slot(
                    Slot::Run(Box::new(WaitingRun {
                        digest,
                        count: items.len(),
                        got: Vec::new(),
                        prev,
                        acct,
                    })),
                    acct as u32,
                )?;
                // The chunks are unknown until supplied: the next chunk has no predecessor.
                self.prev_id = None;
            }
        }
        Ok(())
    }

    /// A supply answering a run want: the next chunk of the oldest run wanted.
    fn on_run_supply(
        &mut self,
        id: WireId,
        codec: u8,
        len: u32,
        payload: &Bytes,
        wants: &mut Vec<WireId>,
    ) -> Result<(), Error> {
        let Some(digest) = self.run_wants.front().copied() else {
            return Err(Error::UnrequestedSupply(short(&id)));
        };
        let data = self.decode_verified(&id, codec & !RUN_SUPPLY_FLAG, len, payload)?;
        if data.is_none() {
            self.stats.verify_failures.fetch_add(1, Relaxed);
        }
        let Some(run) = self.queue.iter_mut().find_map(|s| match s {
            Slot::Run(r) if r.digest == digest => Some(r),
            _ => None,
        }) else {
            return Err(Error::UnrequestedSupply(short(&id)));
        };
        run.got.push((id, data));
        if run.got.len() < run.count {
            return Ok(());
        }
        self.run_wants.pop_front();
        let got = std::mem::take(&mut run.got);
        let prev = run.prev;
        let ok = got.iter().all(|(_, d)| d.is_some())
            && run_digest(&self.hasher, got.iter().map(|(id, _)| id)) == digest;
        if !ok {
            return self.want_run(digest, wants);
        }
        self.attempts.remove(&digest);
        let chunks: Vec<(WireId, Bytes)> = got
            .into_iter()
            .filter_map(|(id, d)| d.map(|d| (id, d)))
            .collect();
        let saved_prev = std::mem::replace(&mut self.prev_id, prev);
        for (id, data) in &chunks {
            if let Err(e) = self.store.put(id, data, self.peer) {
                tracing::warn!(error = %e, "chunk store write failed");
            }
            self.learn(id, data);
            self.record_chain(id);
        }
        self.prev_id = saved_prev;
        // Every run waiting for this digest (the same chunks sent twice) is complete.
        let mut i = 0;
        while i < self.queue.len() {
            let acct = match &self.queue[i] {
                Slot::Run(r) if r.digest == digest => r.acct,
                _ => {
                    i += 1;
                    continue;
                }
            };
            self.queued_bytes -= acct;
            let mut tail = self.queue.split_off(i);
            tail.pop_front();
            for (_, data) in &chunks {
                let len = data.len() as u32;
                self.push_slot(Slot::Ready(data.clone()), len)?;
            }
            i = self.queue.len();
            self.queue.append(&mut tail);
        }
        Ok(())
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
        if prefix.len() + len as usize > MAX_CHUNK_LEN {
            return Err(Error::TooLong {
                len: prefix.len() + len as usize,
                max: MAX_CHUNK_LEN,
            });
        }
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

    /// A preview: bytes of a chunk the sender's client paused in, delivered now (after
    /// verification against the hash in `id`) and remembered as the start of the next chunk.
    fn on_preview(
        &mut self,
        id: WireId,
        codec: u8,
        len: u32,
        payload: &Bytes,
    ) -> Result<(), Error> {
        if self.preview.len + len as usize > MAX_CHUNK_LEN {
            return Err(Error::TooLong {
                len: self.preview.len + len as usize,
                max: MAX_CHUNK_LEN,
            });
        }
        // The sender holds no chunk to supply instead: a preview that fails verification
        // ends the flow (QUIC authenticated it, so only a broken sender gets here).
        let Some(data) = self.decode_verified(&id, codec, len, payload)? else {
            self.stats.verify_failures.fetch_add(1, Relaxed);
            return Err(Error::Corrupt {
                id: short(&id),
                attempts: 1,
            });
        };
        self.preview.len += data.len();
        if !self.preview.lost {
            self.preview.known.extend_from_slice(&data);
        }
        self.push_slot(Slot::Ready(data), len)
    }

    /// A `Part`: bytes `from..to` of a stored chunk, as a preview.
    fn on_part(
        &mut self,
        id: WireId,
        len: u32,
        from: u32,
        to: u32,
        wants: &mut Vec<WireId>,
    ) -> Result<(), Error> {
        if from as usize != self.preview.len {
            return Err(Error::Unexpected(
                "a part that does not continue the previews",
            ));
        }
        let check = self.preview.check();
        self.preview.len = to as usize;
        match self.store_get(&id, len) {
            Some(b) => {
                let piece = Self::slice_checked(&id, &b, from, to, check.as_deref())?;
                self.stats
                    .dedup_saved_bytes
                    .fetch_add(piece.len() as u64, Relaxed);
                self.preview.known.extend_from_slice(&piece);
                self.push_slot(Slot::Ready(piece), to - from)
            }
            None => {
                self.stats.misses.fetch_add(1, Relaxed);
                self.want_missing(id, wants)?;
                self.preview.lost = true;
                let slot = Slot::Waiting {
                    id,
                    len,
                    store: true,
                    from,
                    to,
                    check,
                };
                self.push_slot(slot, to - from)
            }
        }
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

    /// The previews the next item starts with: their length and, if known, their bytes.
    fn take_preview(&mut self) -> (u32, Option<Bytes>) {
        let p = std::mem::take(&mut self.preview);
        (p.len as u32, (!p.lost).then(|| Bytes::from(p.known)))
    }

    /// Bytes `from..to` of the verified chunk `data`, whose first `from` bytes must be `check`
    /// (what previews delivered) when that is known.
    fn slice_checked(
        id: &WireId,
        data: &Bytes,
        from: u32,
        to: u32,
        check: Option<&[u8]>,
    ) -> Result<Bytes, Error> {
        let (from, to) = (from as usize, to as usize);
        if to > data.len() || from > to || check.is_some_and(|c| !data.starts_with(c)) {
            return Err(Error::PreviewMismatch(short(id)));
        }
        Ok(data.slice(from..to))
    }

    /// Asks for a chunk this side lacks, unless a want for it is outstanding: a slot already
    /// waits for it, and the supply fills every slot waiting for that id (a `Part` and the
    /// reference completing it often name the same chunk).
    fn want_missing(&mut self, id: WireId, wants: &mut Vec<WireId>) -> Result<(), Error> {
        let outstanding = self
            .queue
            .iter()
            .any(|s| matches!(s, Slot::Waiting { id: w, .. } if *w == id));
        if outstanding {
            return Ok(());
        }
        self.want(id, wants)
    }

    fn want(&mut self, id: WireId, wants: &mut Vec<WireId>) -> Result<(), Error> {
        let a = self.attempts.entry(id).or_insert(0);
        *a += 1;
        if *a > MAX_VERIFY_ATTEMPTS {
            return Err(Error::Corrupt {
                id: short(&id),
                attempts: *a - 1,
            });
        }
        if !wants.contains(&id) {
            wants.push(id);
        }
        Ok(())
    }

    fn push_slot(&mut self, slot: Slot, len: u32) -> Result<(), Error> {
        // Empty chunks never occur; refusing them keeps the queue bounded by bytes alone.
        if len == 0 {
            return Err(Error::Unexpected("empty chunk"));
        }
        self.push_counted(slot, len)
    }

    /// Queues a chunk's slot counting the `len` bytes it delivers, which may be none when
    /// previews (`skip`) delivered all of it.
    fn push_item(&mut self, slot: Slot, len: u32, skip: u32) -> Result<(), Error> {
        if skip == 0 {
            self.push_slot(slot, len)
        } else {
            self.push_counted(slot, len)
        }
    }

    /// Queues `slot`, counting `len` bytes (zero only for the rest of a chunk previews
    /// delivered entirely: still an item to acknowledge).
    fn push_counted(&mut self, slot: Slot, len: u32) -> Result<(), Error> {
        self.queued_bytes += len as u64;
        if self.queued_bytes > self.max_queue {
            return Err(Error::WindowExceeded {
                queued: self.queued_bytes,
                limit: self.max_queue,
            });
        }
        self.queue.push_back(slot);
        Ok(())
    }

    /// Handles a data-direction frame. Ids this side lacks are appended to `wants` (send them to
    /// the peer in one `Want` frame).
    pub fn on_frame(&mut self, frame: Frame, wants: &mut Vec<WireId>) -> Result<(), Error> {
        match frame {
            Frame::Literal {
                id,
                codec,
                len,
                payload,
            } => {
                if self.ended {
                    return Err(Error::DataAfterEnd);
                }
                if codec & PREVIEW_FLAG != 0 {
                    return self.on_preview(id, codec, len, &payload);
                }
                let (skip, known) = self.take_preview();
                let store = codec & NO_STORE_FLAG == 0;
                self.stats.literal_chunks.fetch_add(1, Relaxed);
                self.identity = Some(id);
                if store {
                    self.record_chain(&id);
                }
                let full = skip as usize + len as usize;
                if full > MAX_CHUNK_LEN {
                    return Err(Error::TooLong {
                        len: full,
                        max: MAX_CHUNK_LEN,
                    });
                }
                // Previews whose bytes are still being supplied: the chunk cannot be verified
                // from this literal; the sender supplies it whole.
                let data = match &known {
                    Some(prefix) => {
                        self.decode_verified_after(&id, codec, len, &payload, prefix)?
                    }
                    None => {
                        self.stats.misses.fetch_add(1, Relaxed);
                        None
                    }
                };
                match data {
                    Some(data) => {
                        if store {
                            if let Err(e) = self.store.put(&id, &data, self.peer) {
                                tracing::warn!(error = %e, "chunk store write failed");
                            }
                            self.learn(&id, &data);
                        }
                        let rest = data.slice(skip as usize..);
                        self.push_item(Slot::Ready(rest), len, skip)?;
                    }
                    None => {
                        if known.is_some() {
                            self.stats.verify_failures.fetch_add(1, Relaxed);
                        }
                        self.want_missing(id, wants)?;
                        let slot = Slot::Waiting {
                            id,
                            len: full as u32,
                            store,
                            from: skip,
                            to: full as u32,
                            check: known,
                        };
                        self.push_item(slot, len, skip)?;
                    }
                }
            }
            Frame::Refs(refs) => {
                if self.ended {
                    return Err(Error::DataAfterEnd);
                }
                let (mut skip, mut known) = self.take_preview();
                for r in refs {
                    let (skip, check) = (std::mem::take(&mut skip), known.take());
                    let Some(rest) = r.len.checked_sub(skip) else {
                        return Err(Error::PreviewMismatch(short(&r.id)));
                    };
                    self.stats.ref_chunks.fetch_add(1, Relaxed);
                    self.identity = Some(r.id);
                    self.record_chain(&r.id);
                    match self.store_get(&r.id, r.len) {
                        Some(b) => {
                            self.stats.dedup_saved_bytes.fetch_add(rest as u64, Relaxed);
                            let b = Self::slice_checked(&r.id, &b, skip, r.len, check.as_deref())?;
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
            }
            Frame::Part { id, len, from, to } => {
                if self.ended {
                    return Err(Error::DataAfterEnd);
                }
                self.on_part(id, len, from, to, wants)?;
            }
            Frame::Delta {
                id,
                codec,
                len,
                bases,
                payload,
            } => {
                if self.ended {
                    return Err(Error::DataAfterEnd);
                }
                if !self.preview.is_empty() {
                    return Err(Error::Unexpected("a delta chunk after a preview"));
                }
                if codec != DELTA_ZSTD_PREFIX {
                    return Err(Error::DeltaCodec {
                        id: short(&id),
                        codec,
                    });
                }
                DeltaStats::add(&self.delta_stats.delta_chunks, 1);
                self.identity = Some(id);
                self.record_chain(&id);
                let rebuilt = match self.load_bases(&bases) {
                    None => {
                        // A base this side lacks (evicted, wiped, or never given by this peer):
                        // the whole chunk is a miss, supplied by the sender.
                        self.stats.misses.fetch_add(1, Relaxed);
                        DeltaStats::add(&self.delta_stats.base_misses, 1);
                        None
                    }
                    Some(prefix) => {
                        let mut out = Vec::new();
                        match DeltaDecoder::new().decode(&prefix, &payload, len as usize, &mut out)
                        {
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
                        if let Err(e) = self.store.put(&id, &data, self.peer) {
                            tracing::warn!(error = %e, "chunk store write failed");
                        }
                        self.learn(&id, &data);
                        self.push_slot(Slot::Ready(Bytes::from(data)), len)?;
                    }
                    None => {
                        self.want_missing(id, wants)?;
                        self.push_slot(
                            Slot::Waiting {
                                id,
                                len,
                                store: true,
                                from: 0,
                                to: len,
                                check: None,
                            },
                            len,
                        )?;
                    }
                }
            }
            Frame::DeltaRun {
                digest,
                items,
                payload,
            } => {
                if self.ended {
                    return Err(Error::DataAfterEnd);
                }
                if !self.preview.is_empty() {
                    return Err(Error::Unexpected("a delta run after a preview"));
                }
                self.on_delta_run(digest, items, &payload, wants)?;
            }
            Frame::Supply {
                id,
                codec,
                len,
                payload,
            } if codec & RUN_SUPPLY_FLAG != 0 => {
                self.on_run_supply(id, codec, len, &payload, wants)?;
            }
            Frame::Supply {
                id,
                codec,
                len,
                payload,
            } => {
                let expected = self.queue.iter().find_map(|s| match s {
                    Slot::Waiting { id: w, len: l, .. } if *w == id => Some(*l),
                    _ => None,
                });
                let Some(expected_len) = expected else {
                    return Err(Error::UnrequestedSupply(short(&id)));
                };
                if expected_len != len {
                    return Err(Error::Corrupt {
                        id: short(&id),
                        attempts: 1,
                    });
                }
                match self.decode_verified(&id, codec, len, &payload)? {
                    Some(data) => {
                        let mut stored = false;
                        for s in self.queue.iter_mut() {
                            if let Slot::Waiting {
                                id: w,
                                store,
                                from,
                                to,
                                check,
                                ..
                            } = s
                            {
                                if *w == id {
                                    if *store && codec & NO_STORE_FLAG == 0 && !stored {
                                        if let Err(e) = self.store.put(&id, &data, self.peer) {
                                            tracing::warn!(error = %e, "chunk store write failed");
                                        }
                                        if let Some(idx) = &self.index {
                                            if let Some(sk) = sketch(&data) {
                                                idx.insert(&id, sk);
                                            }
                                        }
                                        stored = true;
                                    }
                                    let b = Self::slice_checked(
                                        &id,
                                        &data,
                                        *from,
                                        *to,
                                        check.as_deref(),
                                    )?;
                                    *s = Slot::Ready(b);
                                }
                            }
                        }
                        self.attempts.remove(&id);
                    }
                    None => {
                        self.stats.verify_failures.fetch_add(1, Relaxed);
                        self.want(id, wants)?;
                    }
                }
            }
            Frame::End if !self.preview.is_empty() => {
                return Err(Error::Unexpected(
                    "the direction ended inside a previewed chunk",
                ));
            }
            Frame::End => self.ended = true,
            _ => return Err(Error::Unexpected("not a data frame")),
        }
        Ok(())
    }

    /// The next bytes to deliver to the client, in stream order.
    pub fn pop_ready(&mut self) -> Option<Bytes> {
        loop {
            match self.queue.front() {
                Some(Slot::Ready(_)) => {}
                _ => return None,
            }
            let Some(Slot::Ready(b)) = self.queue.pop_front() else {
                return None;
            };
            self.queued_bytes -= b.len() as u64;
            self.delivered += 1;
            self.stats.logical_bytes.fetch_add(b.len() as u64, Relaxed);
            // The rest of a chunk its previews delivered entirely: acknowledged, nothing to give.
            if !b.is_empty() {
                return Some(b);
            }
        }
    }

    /// An `Ack` to send, when enough was delivered since the last one (or the queue drained).
    pub fn take_ack(&mut self) -> Option<Frame> {
        if self.delivered > self.last_ack
            && (self.queue.is_empty() || self.delivered - self.last_ack >= ACK_EVERY)
        {
            self.last_ack = self.delivered;
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
