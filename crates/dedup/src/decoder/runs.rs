//! Delta runs at the receiver: rebuild, verify against the digest, or want the run and collect
//! its supplies.
//!
//! Memory (issue 14, point 2): a chunk a run names is loaded (and hashed by the store) once per
//! run however often it is named; every item's bytes, `Same` items included, count against
//! [`MAX_RUN_LOGICAL_BYTES`] and against the room left in the flow's queue before anything more
//! is loaded; supplies collected for a failed run count in the queue as they arrive.

use super::queue::{Slot, WaitingRun};
use super::{Coded, FlowDecoder};
use crate::delta::DeltaStats;
use crate::run::{
    run_digest, MAX_RUN_DECODED_BYTES, MAX_RUN_LOGICAL_BYTES, MAX_RUN_PREFIX_BYTES, RUN_GAP_STEPS,
    RUN_SUPPLY_FLAG,
};
use crate::{entry_bytes, short, Error, MIN_SLOT_BYTES};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use strait_sketch::DeltaDecoder;
use strait_wire::{RunItem, WireId};

/// A run's chunks, rebuilt: id, bytes, whether it was a delta (to store).
type Rebuilt = Vec<(WireId, Bytes, bool)>;

impl FlowDecoder {
    /// Resolves every name of a run, moving `identity` exactly as the sender did: the bases and
    /// the gap chunks of each item, or `None` when one is unknown (counted as misses).
    #[allow(clippy::type_complexity)]
    fn resolve_run(&mut self, items: &[RunItem]) -> Option<(Vec<WireId>, Vec<Vec<WireId>>)> {
        let mut named = Vec::with_capacity(items.len());
        let mut gaps: Vec<Vec<WireId>> = Vec::with_capacity(items.len());
        let mut missing = 0u64;
        let mut delta_missing = 0u64;
        for it in items {
            let mut g = Vec::new();
            if let (
                RunItem::Delta {
                    base: strait_wire::BaseRef::Next(n),
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
            match r {
                Some(r) => named.push(r),
                None => {
                    missing += 1;
                    if matches!(it, RunItem::Delta { .. }) {
                        delta_missing += 1;
                    }
                }
            }
            gaps.push(g);
        }
        if missing > 0 {
            self.stats.misses.fetch_add(missing, Relaxed);
            DeltaStats::add(&self.delta_stats.base_misses, delta_missing);
            return None;
        }
        Some((named, gaps))
    }

    /// Rebuilds a run's chunks from their bases (each read through this peer's slot, once) and
    /// the payload. `Ok(None)`: a base is missing or the payload does not decode (a miss, not
    /// an error). Lengths beyond the caps are protocol errors.
    pub(super) fn rebuild_run(
        &mut self,
        items: &[RunItem],
        payload: &[u8],
    ) -> Result<Option<Rebuilt>, Error> {
        let Some((named, gaps)) = self.resolve_run(items) else {
            return Ok(None);
        };
        // Every item's bytes, each time it is named, fit the run cap and the queue's room.
        let room = self.max_queue.saturating_sub(self.queued_bytes);
        let cap = MAX_RUN_LOGICAL_BYTES.min(room);
        let mut logical = 0u64;
        // Loads, grown from what the store returns, never sized from the frame.
        let mut prefix = Vec::new();
        let mut in_prefix: HashMap<WireId, ()> = HashMap::new();
        let mut loaded: HashMap<WireId, Bytes> = HashMap::new();
        let mut parts: Vec<(WireId, Option<Bytes>, usize)> = Vec::with_capacity(items.len());
        let mut total = 0usize;
        for ((it, base), gaps) in items.iter().zip(&named).zip(&gaps) {
            for g in gaps {
                let Some(data) = self.load_once(&mut loaded, g)? else {
                    DeltaStats::add(&self.delta_stats.base_misses, 1);
                    return Ok(None);
                };
                Self::add_prefix(&mut prefix, &mut in_prefix, g, &data)?;
            }
            let Some(data) = self.load_once(&mut loaded, base)? else {
                if matches!(it, RunItem::Delta { .. }) {
                    DeltaStats::add(&self.delta_stats.base_misses, 1);
                }
                return Ok(None);
            };
            let len = match it {
                RunItem::Same(_) => data.len() as i64,
                RunItem::Delta { len_diff, .. } => {
                    // Two chunks of at most max_chunk differ by less than that: more is no
                    // sender's mistake.
                    let diff = i64::from(*len_diff).unsigned_abs();
                    if diff > self.max_chunk as u64 {
                        return Err(Error::TooLong {
                            len: diff as usize,
                            max: self.max_chunk,
                        });
                    }
                    data.len() as i64 + i64::from(*len_diff)
                }
            };
            let by_position = !matches!(it.base(), strait_wire::BaseRef::Id(_));
            if by_position && (len <= 0 || len as usize > self.max_chunk) {
                // A base named by position or prefix resolved to another chunk here than at the
                // sender (each side records its sends and receives in its own order): a miss,
                // which the sender answers by supplying the run, never an error that ends a
                // conforming flow. Nothing was allocated for it.
                self.stats.verify_failures.fetch_add(1, Relaxed);
                return Ok(None);
            }
            if len <= 0 || len as usize > self.max_chunk {
                return Err(Error::TooLong {
                    len: len.max(0) as usize,
                    max: self.max_chunk,
                });
            }
            let len = len as usize;
            logical += entry_bytes(len);
            if logical > cap {
                return Err(if cap == room {
                    Error::WindowExceeded {
                        queued: self.queued_bytes + logical,
                        limit: self.max_queue,
                    }
                } else {
                    Error::TooLong {
                        len: logical as usize,
                        max: MAX_RUN_LOGICAL_BYTES as usize,
                    }
                });
            }
            match it {
                RunItem::Same(_) => parts.push((*base, Some(data), 0)),
                RunItem::Delta { .. } => {
                    total += len;
                    if total > MAX_RUN_DECODED_BYTES {
                        return Err(Error::TooLong {
                            len: total,
                            max: MAX_RUN_DECODED_BYTES,
                        });
                    }
                    Self::add_prefix(&mut prefix, &mut in_prefix, base, &data)?;
                    parts.push((*base, None, len));
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

    /// `id` from this peer's store slot, read at most once per run (`loaded`); `None` counts a
    /// miss. A stored chunk longer than the peer may send is refused.
    fn load_once(
        &self,
        loaded: &mut HashMap<WireId, Bytes>,
        id: &WireId,
    ) -> Result<Option<Bytes>, Error> {
        if let Some(b) = loaded.get(id) {
            return Ok(Some(b.clone()));
        }
        let Some(data) = self.get_stored(id) else {
            self.stats.misses.fetch_add(1, Relaxed);
            return Ok(None);
        };
        loaded.insert(*id, data.clone());
        Ok(Some(data))
    }

    /// Appends a base to the run's prefix once, within [`MAX_RUN_PREFIX_BYTES`].
    fn add_prefix(
        prefix: &mut Vec<u8>,
        in_prefix: &mut HashMap<WireId, ()>,
        id: &WireId,
        data: &[u8],
    ) -> Result<(), Error> {
        if in_prefix.contains_key(id) {
            return Ok(());
        }
        if prefix.len() + data.len() > MAX_RUN_PREFIX_BYTES {
            return Err(Error::TooLong {
                len: prefix.len() + data.len(),
                max: MAX_RUN_PREFIX_BYTES,
            });
        }
        prefix.extend_from_slice(data);
        in_prefix.insert(*id, ());
        Ok(())
    }

    /// Wants a run's chunks (once while a want for the same digest is outstanding).
    fn want_run(&mut self, digest: WireId, wants: &mut Vec<WireId>) -> Result<(), Error> {
        self.run_waiting
            .entry(digest)
            .or_default()
            .attempt(&digest)?;
        DeltaStats::add(&self.delta_stats.run_failures, 1);
        wants.push(digest);
        self.run_wants.push_back(digest);
        Ok(())
    }

    pub(super) fn on_delta_run(
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
                        self.keep(&id, &data);
                    } else {
                        self.stats.ref_chunks.fetch_add(1, Relaxed);
                        self.stats.dedup_saved_bytes.fetch_add(len as u64, Relaxed);
                    }
                    self.record_chain(&id);
                    self.push_item(Slot::Ready(data), len, 0)?;
                }
            }
            None => {
                if items.is_empty() {
                    return Err(Error::Unexpected("empty delta run"));
                }
                if !self.run_waiting.contains_key(&digest) {
                    self.want_run(digest, wants)?;
                }
                self.push(Slot::Run(Box::new(WaitingRun {
                    digest,
                    count: items.len(),
                    got: Vec::new(),
                    prev,
                    acct: items.len() as u64 * MIN_SLOT_BYTES,
                })))?;
                // The chunks are unknown until supplied: the next chunk has no predecessor.
                self.prev_id = None;
            }
        }
        Ok(())
    }

    /// A supply answering a run want: the next chunk of the oldest run wanted.
    pub(super) fn on_run_supply(
        &mut self,
        c: Coded<'_>,
        wants: &mut Vec<WireId>,
    ) -> Result<(), Error> {
        let (id, codec, len, payload) = (c.id, c.codec, c.len, c.payload);
        let Some(digest) = self.run_wants.front().copied() else {
            return Err(Error::UnrequestedSupply(short(&id)));
        };
        let Some(seq) = self
            .run_waiting
            .get(&digest)
            .and_then(|w| w.seqs.first().copied())
        else {
            return Err(Error::UnrequestedSupply(short(&id)));
        };
        self.check_len(len as usize)?;
        let data = self.decode_verified(&id, codec & !RUN_SUPPLY_FLAG, len, payload)?;
        if data.is_none() {
            self.stats.verify_failures.fetch_add(1, Relaxed);
        }
        let n = entry_bytes(data.as_ref().map_or(0, Bytes::len));
        self.count(n)?;
        let (got, prev, freed) = {
            let Some(Slot::Run(run)) = self.slot_mut(seq) else {
                return Err(Error::UnrequestedSupply(short(&id)));
            };
            run.acct += n;
            run.got.push((id, data));
            if run.got.len() < run.count {
                return Ok(());
            }
            // The supplies leave the slot: it counts its items only again.
            let got = std::mem::take(&mut run.got);
            let freed = run.acct - run.count as u64 * MIN_SLOT_BYTES;
            run.acct -= freed;
            (got, run.prev, freed)
        };
        self.queued_bytes -= freed;
        self.run_wants.pop_front();
        let ok = got.iter().all(|(_, d)| d.is_some())
            && run_digest(&self.hasher, got.iter().map(|(id, _)| id)) == digest;
        if !ok {
            return self.want_run(digest, wants);
        }
        let chunks: VecDeque<Bytes> = got.iter().filter_map(|(_, d)| d.clone()).collect();
        let saved_prev = std::mem::replace(&mut self.prev_id, prev);
        for (id, data) in got.iter().filter_map(|(id, d)| d.as_ref().map(|d| (id, d))) {
            self.keep(id, data);
            self.record_chain(id);
        }
        self.prev_id = saved_prev;
        // Every run waiting for this digest (the same chunks sent twice) is complete.
        let seqs = self
            .run_waiting
            .remove(&digest)
            .map(|w| w.seqs)
            .unwrap_or_default();
        for seq in seqs {
            self.replace(seq, Slot::Chunks(chunks.clone()))?;
        }
        Ok(())
    }
}
