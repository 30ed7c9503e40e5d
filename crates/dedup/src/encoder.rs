//! The sending half: client bytes → frames.

use crate::{short, Error, NO_STORE_FLAG, REF_BATCH};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use strait_admin::RouteStats;
use strait_chunk::{ChunkHasher, Chunker, ChunkerConfig};
use strait_codec::CompressConfig;
use strait_store::{PeerSlot, Store};
use strait_wire::{ChunkRef, Frame, WireId};

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
}

/// Encodes one direction of one flow.
pub struct FlowEncoder {
    cfg: EncoderConfig,
    chunker: Chunker,
    hasher: ChunkHasher,
    store: Arc<Store>,
    peer: PeerSlot,
    codec: strait_codec::Encoder,
    partial: Vec<u8>,
    refs: Vec<ChunkRef>,
    unacked: VecDeque<(WireId, Bytes)>,
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
            codec: strait_codec::Encoder::new(cfg.compress),
            cfg,
            hasher,
            store,
            peer,
            partial: Vec::new(),
            refs: Vec::new(),
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            sent_items: 0,
            acked_items: 0,
            scratch: Vec::new(),
            stats,
            ended: false,
        }
    }

    /// Consumes client bytes, appending frames for every completed chunk to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut BytesMut) {
        while !data.is_empty() {
            match self.chunker.next_boundary(data) {
                Some(n) => {
                    let chunk = if self.partial.is_empty() {
                        Bytes::copy_from_slice(&data[..n])
                    } else {
                        self.partial.extend_from_slice(&data[..n]);
                        Bytes::from(std::mem::take(&mut self.partial))
                    };
                    self.emit_chunk(chunk, out);
                    data = &data[n..];
                }
                None => {
                    self.partial.extend_from_slice(data);
                    break;
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
            if let Some((_, b)) = self.unacked.pop_front() {
                self.unacked_bytes -= b.len() as u64;
            }
            self.acked_items += 1;
        }
        Ok(())
    }

    /// The peer lacks these chunks: supply them from what this flow holds.
    pub fn on_want(&mut self, ids: &[WireId], out: &mut BytesMut) -> Result<(), Error> {
        for id in ids {
            let Some((_, data)) = self.unacked.iter().find(|(u, _)| u == id) else {
                return Err(Error::UnknownWant(short(id)));
            };
            let data = data.clone();
            // The peer evidently does not hold it: stop referencing it until it does again.
            self.store.forget_peer(id, self.peer);
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
        if self.cfg.dedup && self.store.peer_has(&id, self.peer) {
            self.refs.push(ChunkRef {
                id,
                len: len as u32,
            });
            self.stats.ref_chunks.fetch_add(1, Relaxed);
            self.stats.dedup_saved_bytes.fetch_add(len as u64, Relaxed);
        } else {
            self.emit_refs(out);
            self.scratch.clear();
            let codec = self.codec.encode(&chunk, &mut self.scratch);
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
            self.stats
                .compression_saved_bytes
                .fetch_add(len.saturating_sub(self.scratch.len()) as u64, Relaxed);
            if self.cfg.dedup {
                if let Err(e) = self.store.put(&id, &chunk, self.peer) {
                    // Not fatal: without the entry this chunk is simply never referenced.
                    tracing::warn!(error = %e, "chunk store write failed");
                }
            }
        }
        self.unacked_bytes += len as u64;
        self.unacked.push_back((id, chunk));
        self.sent_items += 1;
    }
}
