//! The receiving half: frames → verified client bytes, in order.

use crate::delta::DeltaStats;
use crate::{short, Error, ACK_EVERY, MAX_VERIFY_ATTEMPTS, NO_STORE_FLAG};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, ChunkId};
use strait_codec::CodecId;
use strait_sketch::{sketch, DeltaDecoder, SketchIndex};
use strait_store::{PeerSlot, Store};
use strait_wire::{ChunkRef, Frame, WireId, DELTA_ZSTD_PREFIX, MAX_CHUNK_LEN};

enum Slot {
    Ready(Bytes),
    Waiting { id: WireId, len: u32, store: bool },
}

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
        }
    }

    /// Counts delta frames into `stats`; with `index`, also sketches every chunk received, so
    /// the encoder of the opposite direction can use them as bases (the peer holds them).
    /// Deltas are decoded without this call too.
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
        let codec_id =
            CodecId::try_from(codec & !NO_STORE_FLAG).map_err(|source| Error::Codec {
                id: short(id),
                source,
            })?;
        if codec_id == CodecId::Raw {
            // Raw chunks are delivered from the frame's own buffer: no copy.
            if payload.len() != len as usize || !self.hasher.verify(&ChunkId(*id), payload) {
                return Ok(None);
            }
            return Ok(Some(payload.clone()));
        }
        let mut out = Vec::with_capacity(len as usize);
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
                let store = codec & NO_STORE_FLAG == 0;
                self.stats.literal_chunks.fetch_add(1, Relaxed);
                match self.decode_verified(&id, codec, len, &payload)? {
                    Some(data) => {
                        if store {
                            if let Err(e) = self.store.put(&id, &data, self.peer) {
                                tracing::warn!(error = %e, "chunk store write failed");
                            }
                            self.learn(&id, &data);
                        }
                        self.push_slot(Slot::Ready(data), len)?;
                    }
                    None => {
                        self.stats.verify_failures.fetch_add(1, Relaxed);
                        self.want(id, wants)?;
                        self.push_slot(Slot::Waiting { id, len, store }, len)?;
                    }
                }
            }
            Frame::Refs(refs) => {
                if self.ended {
                    return Err(Error::DataAfterEnd);
                }
                for r in refs {
                    self.stats.ref_chunks.fetch_add(1, Relaxed);
                    let found = match self.store.get(&r.id, Some(self.peer)) {
                        Ok(Some(b)) if b.len() == r.len as usize => Some(b),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(error = %e, "chunk store read failed");
                            None
                        }
                    };
                    match found {
                        Some(b) => {
                            self.stats
                                .dedup_saved_bytes
                                .fetch_add(r.len as u64, Relaxed);
                            self.push_slot(Slot::Ready(b), r.len)?;
                        }
                        None => {
                            self.stats.misses.fetch_add(1, Relaxed);
                            self.want(r.id, wants)?;
                            self.push_slot(
                                Slot::Waiting {
                                    id: r.id,
                                    len: r.len,
                                    store: true,
                                },
                                r.len,
                            )?;
                        }
                    }
                }
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
                if codec != DELTA_ZSTD_PREFIX {
                    return Err(Error::DeltaCodec {
                        id: short(&id),
                        codec,
                    });
                }
                DeltaStats::add(&self.delta_stats.delta_chunks, 1);
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
                        self.want(id, wants)?;
                        self.push_slot(
                            Slot::Waiting {
                                id,
                                len,
                                store: true,
                            },
                            len,
                        )?;
                    }
                }
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
                            if let Slot::Waiting { id: w, store, .. } = s {
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
                                    *s = Slot::Ready(data.clone());
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
            Frame::End => self.ended = true,
            _ => return Err(Error::Unexpected("not a data frame")),
        }
        Ok(())
    }

    /// The next bytes to deliver to the client, in stream order.
    pub fn pop_ready(&mut self) -> Option<Bytes> {
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
        Some(b)
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
        matches!(self.queue.front(), Some(Slot::Waiting { .. }))
    }
}
