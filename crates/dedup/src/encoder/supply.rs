//! Wants and supplies of the sending half: the peer names chunks (or run digests) it lacks; the
//! encoder queues one supply per id and emits them one chunk at a time
//! ([`FlowEncoder::poll_supply`]), so the pump writes them in bounded batches between its other
//! tunnel writes and never builds one buffer proportional to a `Want`.
//!
//! Invariants (issue 14, point 1):
//! - An id is queued at most once, and every want of it counts until the item it answers is
//!   acknowledged: [`MAX_VERIFY_ATTEMPTS`] wants in all (the first and the receiver's
//!   re-request after a failed verification), then the flow fails with
//!   [`Error::RepeatedWant`]. A receiver never names an id twice before its supply arrived, so
//!   a duplicate (in one `Want`, or of a supply still queued) counts like a re-want: a flood
//!   naming one chunk many times is reset, not silently absorbed while the flow stalls.
//! - Every wanted id must name an item this flow holds ([`Error::UnknownWant`] otherwise), so
//!   the queue holds at most one entry per held item and is counted in
//!   [`FlowEncoder::held_bytes`].
//! - The store's peer marks change at most once per held item: `forget_peer` when its supply is
//!   emitted, `mark_peer` only once the peer acknowledged the item.

use super::{FlowEncoder, Held};
use crate::run::{SentRun, RUN_SUPPLY_FLAG};
use crate::{short, Error, MAX_VERIFY_ATTEMPTS, NO_STORE_FLAG};
use bytes::BytesMut;
use std::collections::hash_map::Entry;
use strait_wire::{Frame, WireId};

/// A want being answered: queued, or supplied and not yet acknowledged.
pub(super) struct Wanted {
    /// A supply for it is in the queue, not yet emitted.
    queued: bool,
    /// Wants received since the item was last acknowledged.
    wants: u8,
    /// Sequence number of the last item supplied for it: once acknowledged, the want is over.
    until: u64,
}

/// A supply waiting to be emitted.
pub(super) enum Pending {
    /// One chunk: the newest held item with this id.
    Chunk(WireId),
    /// A run's chunks, in order, from the `next`-th.
    Run { run: SentRun, next: usize },
}

impl FlowEncoder {
    /// The peer lacks these chunks (or runs, by digest): queues their supplies, emitted by
    /// [`FlowEncoder::poll_supply`]. A supply is queued once per id; every want of an
    /// unacknowledged id (a duplicate in this want, of a supply still queued, or of one
    /// supplied) counts against [`MAX_VERIFY_ATTEMPTS`].
    pub fn on_want(&mut self, ids: &[WireId]) -> Result<(), Error> {
        for id in ids {
            let run = self.run_index.get(id).map(|(r, _)| *r);
            if run.is_none() && !self.held_index.contains_key(id) {
                return Err(Error::UnknownWant(short(id)));
            }
            match self.wanted.entry(*id) {
                Entry::Occupied(mut e) => {
                    let w = e.get_mut();
                    if w.wants >= MAX_VERIFY_ATTEMPTS {
                        return Err(Error::RepeatedWant {
                            id: short(id),
                            wants: w.wants + 1,
                        });
                    }
                    w.wants += 1;
                    if w.queued {
                        continue;
                    }
                    w.queued = true;
                }
                Entry::Vacant(e) => {
                    e.insert(Wanted {
                        queued: true,
                        wants: 1,
                        until: 0,
                    });
                }
            }
            self.supplies.push_back(match run {
                Some(run) => Pending::Run { run, next: 0 },
                None => Pending::Chunk(*id),
            });
        }
        self.recharge();
        Ok(())
    }

    /// Whether supplies wait for [`FlowEncoder::poll_supply`].
    pub fn has_supply(&self) -> bool {
        !self.supplies.is_empty()
    }

    /// Appends the next queued supply (one chunk) to `out`; `false` when none is queued.
    pub fn poll_supply(&mut self, out: &mut BytesMut) -> bool {
        let emitted = loop {
            let Some(p) = self.supplies.front_mut() else {
                break false;
            };
            match p {
                Pending::Chunk(id) => {
                    let id = *id;
                    self.supplies.pop_front();
                    let Some(seq) = self.held_index.get(&id).map(|h| h.last) else {
                        // Acknowledged meanwhile: nothing to supply.
                        self.wanted.remove(&id);
                        continue;
                    };
                    if let Some(w) = self.wanted.get_mut(&id) {
                        w.queued = false;
                        w.until = seq;
                    }
                    let flag = if self.cfg.dedup { 0 } else { NO_STORE_FLAG };
                    self.supply_item(seq, flag, out);
                    break true;
                }
                Pending::Run { run, next } => {
                    let (run, k) = (*run, *next);
                    if k + 1 >= run.count {
                        self.supplies.pop_front();
                        if let Some(w) = self.wanted.get_mut(&run.digest) {
                            w.queued = false;
                            w.until = run.first + k as u64;
                        }
                    } else {
                        *next += 1;
                    }
                    let seq = run.first + k as u64;
                    if seq < self.acked_items {
                        // Acknowledged meanwhile (only a broken peer does that): skip the rest.
                        if k + 1 < run.count {
                            self.supplies.pop_front();
                        }
                        self.wanted.remove(&run.digest);
                        continue;
                    }
                    self.supply_item(seq, RUN_SUPPLY_FLAG, out);
                    break true;
                }
            }
        };
        self.recharge();
        emitted
    }

    /// Encodes a `Supply` of the held item with sequence number `seq` (held: `seq` ≥ acked).
    fn supply_item(&mut self, seq: u64, flag: u8, out: &mut BytesMut) {
        let Some(held) = usize::try_from(seq - self.acked_items)
            .ok()
            .and_then(|i| self.unacked.get_mut(i))
        else {
            return;
        };
        let Held {
            id,
            data,
            bases,
            forgotten,
            mark_on_ack,
        } = held;
        if !*forgotten {
            // The peer evidently does not hold it: stop referencing it until it acknowledges the
            // supplied copy. A delta is wanted when the peer lacked a base (or the rebuild
            // failed): stop using those bases for this peer too.
            *forgotten = true;
            self.store.forget_peer(id, self.peer);
            for b in bases.iter().flat_map(|b| b.iter()) {
                self.store.forget_peer(b, self.peer);
            }
        }
        // Stored by the peer once delivered (run supplies always are): mark it at the ack.
        *mark_on_ack = self.cfg.dedup || flag & RUN_SUPPLY_FLAG != 0;
        let (id, data) = (*id, data.clone());
        self.scratch.clear();
        let codec = self.codec.encode(&data, &mut self.scratch);
        Frame::encode_chunk(
            out,
            true,
            &id,
            u8::from(codec) | flag,
            data.len() as u32,
            &self.scratch,
        );
    }

    /// A want of `id` whose supplies were all acknowledged (through `seq`) is over.
    fn end_want(&mut self, id: &WireId, seq: u64) {
        if self
            .wanted
            .get(id)
            .is_some_and(|w| !w.queued && w.until <= seq)
        {
            self.wanted.remove(id);
        }
    }

    /// Bookkeeping of the item with sequence number `seq`, acknowledged and dropped.
    pub(super) fn on_item_acked(&mut self, seq: u64, h: &Held) {
        if let Entry::Occupied(mut e) = self.held_index.entry(h.id) {
            let held = e.get_mut();
            held.count -= 1;
            if held.count == 0 {
                e.remove();
            }
        }
        if h.mark_on_ack {
            // The peer delivered (and stored) the supplied copy: referencing it is safe again.
            let _ = self.store.mark_peer(&h.id, self.peer);
        }
        self.end_want(&h.id, seq);
        while self
            .runs
            .front()
            .is_some_and(|r| r.first + r.count as u64 <= seq + 1)
        {
            let Some(r) = self.runs.pop_front() else {
                break;
            };
            self.end_want(&r.digest, seq);
            if let Entry::Occupied(mut e) = self.run_index.entry(r.digest) {
                let (_, n) = e.get_mut();
                *n -= 1;
                if *n == 0 {
                    e.remove();
                }
            }
        }
    }
}
