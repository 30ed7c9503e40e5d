//! The receive queue: slots in stream order, indexed by the ids they wait for, counted honestly.
//!
//! Every slot has an absolute sequence number (slots popped before it plus its place), so the
//! slots waiting for an id or a run digest are found through a map, never by scanning the queue:
//! a `Refs` frame of many distinct unknown ids costs O(1) per id. Every slot counts the bytes it
//! holds or will hold, at least [`crate::MIN_SLOT_BYTES`], against the flow's bound.

use super::FlowDecoder;
use crate::{entry_bytes, short, Error};
use bytes::Bytes;
use std::collections::VecDeque;
use strait_wire::WireId;

/// What a chunk's first bytes must be (the bytes previews delivered).
pub(super) enum Check {
    /// Nothing was previewed, or nothing to check.
    None,
    /// These bytes.
    Known(Bytes),
    /// A deferred check: a previewed `Part` is still being supplied.
    Deferred(u64),
}

pub(super) enum Slot {
    Ready(Bytes),
    /// A reference to a chunk this side's store held when it arrived: read (and verified) only
    /// when it is delivered, so a queue of references holds ids, not chunks. Read back missing
    /// or corrupt, it becomes `Waiting` and is wanted then.
    Stored {
        id: WireId,
        len: u32,
    },
    Waiting {
        id: WireId,
        len: u32,
        store: bool,
        /// The bytes of the chunk to deliver: all of it, or what previews did not deliver, or
        /// (for a `Part`) the previewed range.
        from: u32,
        to: u32,
        /// What the chunk's first `from` bytes must be.
        check: Check,
    },
    /// A delta run that failed verification, waiting for its chunks to be supplied.
    Run(Box<WaitingRun>),
    /// A completed run's chunks, delivered one item at a time.
    Chunks(VecDeque<Bytes>),
}

impl Slot {
    /// A slot waiting for the whole chunk `id` (`len` bytes), to be stored once supplied.
    pub(super) fn whole(id: WireId, len: u32) -> Slot {
        Slot::Waiting {
            id,
            len,
            store: true,
            from: 0,
            to: len,
            check: Check::None,
        }
    }
}

pub(super) struct WaitingRun {
    pub digest: WireId,
    pub count: usize,
    /// Supplies received so far: id and the verified bytes (`None`: failed verification).
    pub got: Vec<(WireId, Option<Bytes>)>,
    /// Stream-order predecessor of the run's first chunk, for the chain.
    pub prev: Option<WireId>,
    /// Bytes this slot counts in the queue: [`crate::MIN_SLOT_BYTES`] per item plus the supplies got.
    pub acct: u64,
}

/// The slots waiting for one id (or run digest), and the verification attempts made for it.
#[derive(Default)]
pub(super) struct Waiter {
    pub seqs: Vec<u64>,
    pub attempts: u8,
}

impl Waiter {
    /// Counts one more request of `id`; past [`crate::MAX_VERIFY_ATTEMPTS`] the chunk is corrupt.
    pub fn attempt(&mut self, id: &WireId) -> Result<(), Error> {
        self.attempts += 1;
        if self.attempts > crate::MAX_VERIFY_ATTEMPTS {
            return Err(Error::Corrupt {
                id: short(id),
                attempts: self.attempts - 1,
            });
        }
        Ok(())
    }
}

/// Bytes a slot counts.
pub(super) fn slot_cost(slot: &Slot) -> u64 {
    match slot {
        Slot::Ready(b) => entry_bytes(b.len()),
        Slot::Stored { .. } => entry_bytes(0),
        Slot::Waiting { from, to, .. } => entry_bytes(to.saturating_sub(*from) as usize),
        Slot::Run(r) => r.acct,
        Slot::Chunks(c) => c.iter().map(|b| entry_bytes(b.len())).sum(),
    }
}

impl FlowDecoder {
    /// Sequence number the next pushed slot gets.
    pub(super) fn next_seq(&self) -> u64 {
        self.popped + self.queue.len() as u64
    }

    /// The slot with sequence number `seq`, if still queued.
    pub(super) fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        #[cfg(test)]
        {
            self.visits += 1;
        }
        let i = usize::try_from(seq.checked_sub(self.popped)?).ok()?;
        self.queue.get_mut(i)
    }

    /// Counts `n` more bytes held, failing when the flow's bound is exceeded.
    pub(super) fn count(&mut self, n: u64) -> Result<(), Error> {
        self.queued_bytes += n;
        if self.queued_bytes > self.max_queue {
            return Err(Error::WindowExceeded {
                queued: self.queued_bytes,
                limit: self.max_queue,
            });
        }
        Ok(())
    }

    /// Queues a chunk's slot. Empty chunks never occur (refused); `skip > 0`: previews
    /// delivered its first bytes, and the rest may be empty.
    pub(super) fn push_item(&mut self, slot: Slot, len: u32, skip: u32) -> Result<(), Error> {
        if len == 0 && skip == 0 {
            return Err(Error::Unexpected("empty chunk"));
        }
        self.push(slot)
    }

    /// Queues `slot`, indexing it when it waits for an id.
    pub(super) fn push(&mut self, slot: Slot) -> Result<(), Error> {
        self.count(slot_cost(&slot))?;
        let seq = self.next_seq();
        match &slot {
            Slot::Waiting { id, .. } => self.waiting.entry(*id).or_default().seqs.push(seq),
            Slot::Run(r) => self.run_waiting.entry(r.digest).or_default().seqs.push(seq),
            Slot::Ready(_) | Slot::Stored { .. } | Slot::Chunks(_) => {}
        }
        self.queue.push_back(slot);
        Ok(())
    }

    /// Replaces the slot `seq` (no longer indexed) by `slot`, recounting.
    pub(super) fn replace(&mut self, seq: u64, slot: Slot) -> Result<(), Error> {
        let new = slot_cost(&slot);
        let Some(s) = self.slot_mut(seq) else {
            return Ok(());
        };
        let old = slot_cost(s);
        *s = slot;
        self.queued_bytes -= old;
        self.count(new)
    }

    /// Asks for a chunk this side lacks, unless a want for it is outstanding: a slot already
    /// waits for it, and the supply fills every slot waiting for that id (a `Part` and the
    /// reference completing it often name the same chunk).
    pub(super) fn want_missing(
        &mut self,
        id: WireId,
        wants: &mut Vec<WireId>,
    ) -> Result<(), Error> {
        #[cfg(test)]
        {
            self.visits += 1;
        }
        if self.waiting.contains_key(&id) {
            return Ok(());
        }
        self.want(id, wants)
    }

    /// Wants `id` (again), counting the attempt. `wants` is drained by the caller after each
    /// frame, so it never holds the id already.
    pub(super) fn want(&mut self, id: WireId, wants: &mut Vec<WireId>) -> Result<(), Error> {
        self.waiting.entry(id).or_default().attempt(&id)?;
        wants.push(id);
        Ok(())
    }

    /// The next bytes to deliver to the client, in stream order. A reference read back
    /// missing from the store is wanted: send [`FlowDecoder::take_wants`] after each call.
    pub fn pop_ready(&mut self) -> Option<Bytes> {
        let b = loop {
            if let Some(&Slot::Stored { id, len }) = self.queue.front() {
                if !self.load_stored(id, len) {
                    break None;
                }
            }
            let b = match self.queue.front_mut() {
                Some(Slot::Chunks(c)) => {
                    let Some(b) = c.pop_front() else {
                        self.queue.pop_front();
                        self.popped += 1;
                        continue;
                    };
                    b
                }
                Some(Slot::Ready(_)) => {
                    let Some(Slot::Ready(b)) = self.queue.pop_front() else {
                        break None;
                    };
                    self.popped += 1;
                    b
                }
                _ => break None,
            };
            self.queued_bytes -= entry_bytes(b.len());
            self.delivered += 1;
            self.unacked_delivered += b.len() as u64;
            self.stats
                .logical_bytes
                .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
            // The rest of a chunk its previews delivered entirely: acknowledged, nothing to give.
            if !b.is_empty() {
                break Some(b);
            }
        };
        // A completed run whose last chunk was just taken.
        if matches!(self.queue.front(), Some(Slot::Chunks(c)) if c.is_empty()) {
            self.queue.pop_front();
            self.popped += 1;
        }
        self.recharge();
        b
    }

    /// Reads the stored chunk of the reference at the head of the queue into a ready slot;
    /// `false` when the store no longer has it intact: the slot then waits for it, wanted.
    fn load_stored(&mut self, id: WireId, len: u32) -> bool {
        let seq = self.popped;
        if let Some(b) = self.store_get(&id, len) {
            // Over the flow's bound only for a peer that sent more than its window.
            return match self.replace(seq, Slot::Ready(b)) {
                Ok(()) => true,
                Err(e) => {
                    self.late_error.get_or_insert(e);
                    false
                }
            };
        }
        self.stats
            .misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut wants = std::mem::take(&mut self.late_wants);
        if let Err(e) = self.want_missing(id, &mut wants) {
            self.late_error.get_or_insert(e);
        }
        self.late_wants = wants;
        self.waiting.entry(id).or_default().seqs.insert(0, seq);
        if let Err(e) = self.replace(seq, Slot::whole(id, len)) {
            self.late_error.get_or_insert(e);
        }
        false
    }

    /// The wants [`FlowDecoder::pop_ready`] found (send them like those of `on_frame`), or the
    /// error it met (a chunk wanted too often, the flow's bound exceeded).
    pub fn take_wants(&mut self, wants: &mut Vec<WireId>) -> Result<(), Error> {
        if let Some(e) = self.late_error.take() {
            return Err(e);
        }
        wants.append(&mut self.late_wants);
        Ok(())
    }

    /// Bytes this decoder holds, counted honestly (at least [`crate::MIN_SLOT_BYTES`] per slot).
    pub fn held_bytes(&self) -> u64 {
        self.queued_bytes
    }

    pub(super) fn recharge(&mut self) {
        let n = self.queued_bytes;
        self.charge.set(n);
    }
}
