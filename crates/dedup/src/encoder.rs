//! The sending half: client bytes → frames.

use crate::delta::{DeltaConfig, DeltaStats, MAX_BASE_HINTS, MIN_SHARED_SUPER_FEATURES};
use crate::{short, Error, NO_STORE_FLAG, REF_BATCH};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, ChunkId, Chunker, ChunkerConfig};
use strait_codec::CompressConfig;
use strait_sketch::{sketch, DeltaEncoder, Sketch, SketchIndex};
use strait_store::{PeerSlot, Store};
use strait_wire::{ChunkRef, Frame, WireId, DELTA_ZSTD_PREFIX, MAX_DELTA_BASES};

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

/// A chunk held until acknowledged; `bases` are the bases it was delta-coded against.
struct Held {
    id: WireId,
    data: Bytes,
    bases: Option<Box<[WireId]>>,
}

/// The near-duplicate side of an encoder.
struct Delta {
    index: Arc<SketchIndex>,
    stats: Arc<DeltaStats>,
    coder: DeltaEncoder,
    hints: Vec<(WireId, Sketch)>,
    prefix: Vec<u8>,
    payload: Vec<u8>,
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
    unacked_bytes: u64,
    sent_items: u64,
    acked_items: u64,
    scratch: Vec<u8>,
    stats: Arc<RouteStats>,
    ended: bool,
}

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
            unacked_bytes: 0,
            sent_items: 0,
            acked_items: 0,
            scratch: Vec::new(),
            stats,
            ended: false,
        }
    }

    /// Turns on delta compression (when `cfg.delta.enabled` and `cfg.dedup`): near-duplicate
    /// chunks are looked up in `index` (shared by all flows of the process, fed by every chunk
    /// this encoder sends) and counted into `stats`.
    pub fn with_delta(mut self, index: Arc<SketchIndex>, stats: Arc<DeltaStats>) -> Self {
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
                        Bytes::from(std::mem::take(&mut self.partial))
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
                            let chunk = Bytes::from(std::mem::take(&mut self.partial));
                            self.emit_chunk(chunk, out);
                        }
                    }
                }
            }
        }
        if self.refs.len() >= REF_BATCH {
            self.emit_refs(out);
        }
    }

    /// Whether a partial chunk or pending references wait for [`FlowEncoder::flush`].
    pub fn has_pending(&self) -> bool {
        !self.partial.is_empty() || !self.refs.is_empty()
    }

    /// Sends the partial chunk now (the client went idle for the flush delay) and emits pending
    /// references. The chunker keeps its state, so the next content-defined boundary falls where
    /// it would have without the flush: one chunk is split in two, every later one is unchanged.
    pub fn flush(&mut self, out: &mut BytesMut) {
        if !self.partial.is_empty() {
            let chunk = Bytes::from(std::mem::take(&mut self.partial));
            self.emit_chunk(chunk, out);
        }
        self.emit_refs(out);
    }

    /// The client finished sending: flush and end the direction.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if !self.ended {
            self.flush(out);
            Frame::End.encode(out);
            self.ended = true;
        }
    }

    /// Whether `finish` was called.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether the window of unacknowledged bytes is full (stop reading the client).
    pub fn window_full(&self) -> bool {
        self.unacked_bytes >= self.cfg.window
    }

    /// Whether everything sent has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.acked_items == self.sent_items
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
            if let Some(h) = self.unacked.pop_front() {
                self.unacked_bytes -= h.data.len() as u64;
            }
            self.acked_items += 1;
        }
        Ok(())
    }

    /// The peer lacks these chunks: supply them from what this flow holds.
    pub fn on_want(&mut self, ids: &[WireId], out: &mut BytesMut) -> Result<(), Error> {
        for id in ids {
            let Some(held) = self.unacked.iter().find(|h| h.id == *id) else {
                return Err(Error::UnknownWant(short(id)));
            };
            let data = held.data.clone();
            // The peer evidently does not hold it: stop referencing it until it does again.
            self.store.forget_peer(id, self.peer);
            // A delta is wanted when the peer lacked a base (or the rebuild failed): stop
            // using those bases for this peer; a real miss would repeat otherwise.
            for b in held.bases.iter().flat_map(|b| b.iter()) {
                self.store.forget_peer(b, self.peer);
            }
            self.scratch.clear();
            let codec = self.codec.encode(&data, &mut self.scratch);
            let flag = if self.cfg.dedup { 0 } else { NO_STORE_FLAG };
            Frame::encode_chunk(
                out,
                true,
                id,
                u8::from(codec) | flag,
                data.len() as u32,
                &self.scratch,
            );
            if self.cfg.dedup {
                // The supplied copy is stored by the peer: referencing it again is safe.
                let _ = self.store.mark_peer(id, self.peer);
            }
        }
        Ok(())
    }

    fn emit_refs(&mut self, out: &mut BytesMut) {
        if !self.refs.is_empty() {
            Frame::Refs(std::mem::take(&mut self.refs)).encode(out);
        }
    }

    fn emit_chunk(&mut self, chunk: Bytes, out: &mut BytesMut) {
        let id = self.hasher.id(&chunk).0;
        let len = chunk.len();
        self.stats.logical_bytes.fetch_add(len as u64, Relaxed);
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
            self.refs.push(ChunkRef {
                id,
                len: len as u32,
            });
            self.stats.ref_chunks.fetch_add(1, Relaxed);
            self.stats.dedup_saved_bytes.fetch_add(len as u64, Relaxed);
            None
        } else {
            self.emit_refs(out);
            self.scratch.clear();
            let codec = self.codec.encode(&chunk, &mut self.scratch);
            self.stats
                .compression_saved_bytes
                .fetch_add(len.saturating_sub(self.scratch.len()) as u64, Relaxed);
            let bases = self.try_delta(&id, &chunk, out);
            if bases.is_none() {
                let flag = if self.cfg.dedup { 0 } else { NO_STORE_FLAG };
                Frame::encode_chunk(
                    out,
                    false,
                    &id,
                    u8::from(codec) | flag,
                    len as u32,
                    &self.scratch,
                );
                self.stats.literal_chunks.fetch_add(1, Relaxed);
            }
            if self.cfg.dedup {
                if let Err(e) = self.store.put(&id, &chunk, self.peer) {
                    // Not fatal: without the entry this chunk is simply never referenced.
                    tracing::warn!(error = %e, "chunk store write failed");
                }
            }
            bases
        };
        self.unacked_bytes += len as u64;
        self.unacked.push_back(Held {
            id,
            data: chunk,
            bases,
        });
        self.sent_items += 1;
    }

    /// Sends `chunk` as a `Delta` frame when a base the peer holds makes it smaller than the
    /// literal in `self.scratch`; returns the bases used. Also indexes the chunk's sketch.
    fn try_delta(
        &mut self,
        id: &WireId,
        chunk: &[u8],
        out: &mut BytesMut,
    ) -> Option<Box<[WireId]>> {
        let d = self.delta.as_mut()?;
        let sk = sketch(chunk)?;
        let max_bases = (self.cfg.delta.max_bases as usize).clamp(1, MAX_DELTA_BASES);
        // Hints first (the previous version of the same object), then the shared index.
        let mut cands: Vec<(WireId, usize)> = Vec::with_capacity(max_bases * 2);
        for (h, hsk) in &d.hints {
            let n = sk.shared(hsk);
            if n > 0 && h != id {
                cands.push((*h, n + strait_sketch::SUPER_FEATURES));
            }
        }
        for c in d
            .index
            .candidates(&sk, MIN_SHARED_SUPER_FEATURES, max_bases * 2, id)
        {
            if !cands.iter().any(|(x, _)| *x == c.0) {
                cands.push(c);
            }
        }
        d.index.insert(id, sk);
        if cands.is_empty() {
            return None;
        }
        cands.sort_by_key(|c| std::cmp::Reverse(c.1));
        let mut bases: Vec<ChunkRef> = Vec::with_capacity(max_bases);
        let mut datas: Vec<Bytes> = Vec::with_capacity(max_bases);
        for (cid, _) in cands {
            if bases.len() == max_bases {
                break;
            }
            // Isolation: only a chunk this peer sent or received, read with its slot.
            if !self.store.peer_has(&cid, self.peer) {
                continue;
            }
            if let Ok(Some(b)) = self.store.get(&cid, Some(self.peer)) {
                bases.push(ChunkRef {
                    id: cid,
                    len: b.len() as u32,
                });
                datas.push(b);
            }
        }
        if bases.is_empty() {
            return None;
        }
        // Best base last: zstd codes recent (nearby) offsets cheapest.
        bases.reverse();
        datas.reverse();
        d.prefix.clear();
        for b in &datas {
            d.prefix.extend_from_slice(b);
        }
        DeltaStats::add(&d.stats.attempts, 1);
        if let Err(e) = d.coder.encode(&d.prefix, chunk, &mut d.payload) {
            tracing::warn!(error = %e, "delta encode failed");
            return None;
        }
        let delta_size = Frame::delta_overhead(bases.len()) + d.payload.len();
        let literal_size = Frame::literal_overhead() + self.scratch.len();
        if delta_size >= literal_size {
            DeltaStats::add(&d.stats.rejected, 1);
            return None;
        }
        Frame::encode_delta(
            out,
            id,
            DELTA_ZSTD_PREFIX,
            chunk.len() as u32,
            &bases,
            &d.payload,
        );
        DeltaStats::add(&d.stats.delta_chunks, 1);
        DeltaStats::add(
            &d.stats.delta_saved_bytes,
            (literal_size - delta_size) as u64,
        );
        Some(bases.iter().map(|b| b.id).collect())
    }
}
