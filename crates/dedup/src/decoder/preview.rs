//! Previews: bytes of a chunk the sender's client paused in, delivered before the chunk
//! completes. The chunk that completes them must start with exactly those bytes; when a previewed
//! `Part` is lost (this side lacks the chunk it names), the check is deferred until the Part's
//! supply arrives, never skipped (issue 14, point 7).

use super::queue::{Check, Slot};
use super::{Coded, FlowDecoder};
use crate::{entry_bytes, short, Error};
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use strait_wire::WireId;

/// What previews delivered of the chunk the sender's client paused in.
#[derive(Default)]
pub(super) struct Preview {
    /// Bytes delivered (or queued to be) so far.
    pub len: usize,
    /// Those bytes while all are known.
    pub known: Vec<u8>,
    /// Once a `Part` was lost: the deferred check collecting the bytes instead.
    pub deferred: Option<u64>,
}

impl Preview {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A check of a chunk's first bytes waiting for lost `Part`s to be supplied.
pub(super) struct Deferred {
    /// The previewed bytes; the ranges of lost parts are zero until supplied.
    prefix: Vec<u8>,
    /// Lost parts not supplied yet.
    holes: usize,
    /// The chunk the previews belong to, once known: its id and bytes.
    chunk: Option<(WireId, Bytes)>,
    /// Bytes this check counts in the queue.
    acct: u64,
}

impl FlowDecoder {
    /// A preview: bytes of a chunk the sender's client paused in, delivered now (after
    /// verification against the hash in `id`) and remembered as the start of the next chunk.
    pub(super) fn on_preview(&mut self, c: Coded<'_>) -> Result<(), Error> {
        let (id, codec, len, payload) = (c.id, c.codec, c.len, c.payload);
        self.check_len(self.preview.len + len as usize)?;
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
        self.remember_preview(&data, None)?;
        self.push_item(Slot::Ready(data), len, 0)
    }

    /// Appends previewed bytes (or, with `lost`, a hole for a lost part's bytes) to what the next
    /// chunk must start with.
    fn remember_preview(&mut self, data: &[u8], lost: Option<(u64, usize)>) -> Result<(), Error> {
        if let (None, Some(_)) = (self.preview.deferred, lost) {
            let key = self.next_check;
            self.next_check += 1;
            let prefix = std::mem::take(&mut self.preview.known);
            let acct = entry_bytes(prefix.capacity());
            self.count(acct)?;
            self.checks.insert(
                key,
                Deferred {
                    prefix,
                    holes: 0,
                    chunk: None,
                    acct,
                },
            );
            self.preview.deferred = Some(key);
        }
        let Some(key) = self.preview.deferred else {
            self.preview.known.extend_from_slice(data);
            return Ok(());
        };
        let n = lost.map_or(data.len(), |(_, n)| n);
        self.count(n as u64)?;
        let Some(d) = self.checks.get_mut(&key) else {
            return Ok(());
        };
        d.acct += n as u64;
        match lost {
            Some((seq, n)) => {
                self.holes.insert(seq, (key, d.prefix.len()));
                d.prefix.resize(d.prefix.len() + n, 0);
                d.holes += 1;
            }
            None => d.prefix.extend_from_slice(data),
        }
        Ok(())
    }

    /// A `Part`: bytes `from..to` of a stored chunk, as a preview.
    pub(super) fn on_part(
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
        self.check_len(len as usize)?;
        if from >= to || to > len {
            return Err(Error::PreviewMismatch(short(&id)));
        }
        let check = match self.preview.deferred {
            None => Check::Known(Bytes::copy_from_slice(&self.preview.known)),
            Some(_) => Check::None,
        };
        self.preview.len = to as usize;
        match self.store_get(&id, len) {
            Some(b) => {
                let piece = self.slice_checked(&id, &b, from, to, &check)?;
                self.stats
                    .dedup_saved_bytes
                    .fetch_add(piece.len() as u64, Relaxed);
                self.remember_preview(&piece, None)?;
                self.push_item(Slot::Ready(piece), to - from, 0)
            }
            None => {
                self.stats.misses.fetch_add(1, Relaxed);
                self.want_missing(id, wants)?;
                let seq = self.next_seq();
                self.remember_preview(&[], Some((seq, (to - from) as usize)))?;
                let slot = Slot::Waiting {
                    id,
                    len,
                    store: true,
                    from,
                    to,
                    check,
                };
                self.push_item(slot, to - from, 0)
            }
        }
    }

    /// The previews the next item starts with: their length and what the item must start with.
    pub(super) fn take_preview(&mut self) -> (u32, Check) {
        let p = std::mem::take(&mut self.preview);
        let check = match p.deferred {
            Some(key) => Check::Deferred(key),
            None if p.len == 0 => Check::None,
            None => Check::Known(Bytes::from(p.known)),
        };
        (p.len as u32, check)
    }

    /// Bytes `from..to` of the verified chunk `data`, whose first `from` bytes must be what
    /// `check` says (at once, or once the lost parts it waits for arrive).
    pub(super) fn slice_checked(
        &mut self,
        id: &WireId,
        data: &Bytes,
        from: u32,
        to: u32,
        check: &Check,
    ) -> Result<Bytes, Error> {
        let (from, to) = (from as usize, to as usize);
        if to > data.len() || from > to {
            return Err(Error::PreviewMismatch(short(id)));
        }
        match check {
            Check::None => {}
            Check::Known(c) => {
                if !data.starts_with(c) {
                    return Err(Error::PreviewMismatch(short(id)));
                }
            }
            Check::Deferred(key) => {
                if let Some(d) = self.checks.get_mut(key) {
                    d.chunk = Some((*id, data.clone()));
                    d.acct += entry_bytes(data.len());
                    self.count(entry_bytes(data.len()))?;
                }
                self.settle(*key)?;
            }
        }
        Ok(data.slice(from..to))
    }

    /// The slot `seq` of a lost part got its bytes: fills its hole in the deferred check.
    pub(super) fn part_supplied(&mut self, seq: u64, piece: &[u8]) -> Result<(), Error> {
        let Some((key, at)) = self.holes.remove(&seq) else {
            return Ok(());
        };
        if let Some(d) = self.checks.get_mut(&key) {
            if let Some(hole) = d.prefix.get_mut(at..at + piece.len()) {
                hole.copy_from_slice(piece);
            }
            d.holes -= 1;
        }
        self.settle(key)
    }

    /// Compares a deferred check once every part and the chunk are known.
    fn settle(&mut self, key: u64) -> Result<(), Error> {
        let done = self
            .checks
            .get(&key)
            .is_some_and(|d| d.holes == 0 && d.chunk.is_some());
        if !done {
            return Ok(());
        }
        let Some(d) = self.checks.remove(&key) else {
            return Ok(());
        };
        let Some((id, chunk)) = d.chunk else {
            return Ok(());
        };
        self.queued_bytes -= d.acct;
        if !chunk.starts_with(&d.prefix) {
            self.stats.verify_failures.fetch_add(1, Relaxed);
            return Err(Error::PreviewMismatch(short(&id)));
        }
        Ok(())
    }
}
