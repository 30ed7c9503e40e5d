//! Stream order of chunks per peer: which chunk followed which in the streams exchanged with a
//! peer, and which chunk an 8-byte id prefix names. Lets a sender name a base chunk in one byte
//! ("the successor of the previous item's base") instead of 32, when both sides saw the same
//! streams.
//!
//! Both sides record the same streams (what one sends to a peer, the other receives from it), so
//! their chains agree except after evictions, restarts or concurrent flows recording in another
//! order. Every answer here is only a hint: the caller loads the named chunk through its
//! peer-isolated store and verifies what it rebuilds, so a wrong or missing answer costs a
//! re-request, never wrong bytes.

use std::collections::{HashMap, VecDeque};

/// Accounting cost of one chain entry: the map entry (16-byte key, 32-byte id, 8-byte successor
/// key, 8-byte sequence, control byte) at hashbrown's typical ~7/8 load, plus its ring slot.
pub const CHAIN_ENTRY_BYTES: usize = 112;
/// Longest walk along a chain in one lookup ([`Chain::distance`], [`Chain::successor`]).
pub const MAX_CHAIN_STEPS: usize = 32;

type Key = (u8, u64);

/// An id's first 8 bytes, the handle a chain keys it by.
pub fn id_prefix(id: &[u8; 32]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&id[..8]);
    u64::from_le_bytes(a)
}

struct Entry {
    id: [u8; 32],
    next: Option<u64>,
    seq: u64,
}

/// The bounded chain map (held inside [`crate::SketchIndex`]).
pub(crate) struct Chain {
    map: HashMap<Key, Entry>,
    ring: VecDeque<(Key, u64)>,
    next_seq: u64,
    capacity: usize,
}

impl Chain {
    pub(crate) fn new(capacity: usize) -> Self {
        Chain {
            map: HashMap::new(),
            ring: VecDeque::new(),
            next_seq: 0,
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.map.capacity() * (16 + 32 + 16 + 8 + 1) + self.ring.capacity() * 24
    }

    fn touch(&mut self, k: Key, id: &[u8; 32]) {
        let seq = self.next_seq;
        let half = self.capacity as u64 / 2;
        match self.map.get_mut(&k) {
            Some(e) if e.id == *id => {
                // Second chance: refreshed only once it is in the older half, so a chunk in
                // steady use stays without a ring push per sighting.
                if seq - e.seq < half {
                    return;
                }
                e.seq = seq;
            }
            Some(e) => {
                // Another id with the same prefix: the newer one wins (a hint, verified later).
                *e = Entry {
                    id: *id,
                    next: None,
                    seq,
                };
            }
            None => {
                self.map.insert(
                    k,
                    Entry {
                        id: *id,
                        next: None,
                        seq,
                    },
                );
            }
        }
        self.ring.push_back((k, seq));
        self.next_seq += 1;
        while self.ring.len() > self.capacity {
            if let Some((old, s)) = self.ring.pop_front() {
                if self.map.get(&old).is_some_and(|e| e.seq == s) {
                    self.map.remove(&old);
                }
            }
        }
    }

    pub(crate) fn record(&mut self, peer: u8, prev: Option<&[u8; 32]>, id: &[u8; 32]) {
        let k = (peer, id_prefix(id));
        self.touch(k, id);
        if let Some(p) = prev {
            if let Some(e) = self.map.get_mut(&(peer, id_prefix(p))) {
                if e.id == *p {
                    e.next = Some(k.1);
                }
            }
        }
    }

    /// Live entries, oldest first: `(peer, id, successor's id prefix)`.
    pub(crate) fn live(&self) -> Vec<(u8, [u8; 32], Option<u64>)> {
        self.ring
            .iter()
            .filter_map(|(k, s)| {
                let e = self.map.get(k).filter(|e| e.seq == *s)?;
                Some((k.0, e.id, e.next))
            })
            .collect()
    }

    /// Re-inserts an entry [`Chain::live`] listed (oldest first keeps the eviction order).
    pub(crate) fn restore(&mut self, peer: u8, id: &[u8; 32], next: Option<u64>) {
        let k = (peer, id_prefix(id));
        self.touch(k, id);
        if let Some(e) = self.map.get_mut(&k) {
            e.next = next;
        }
    }

    pub(crate) fn resolve(&self, peer: u8, prefix: u64) -> Option<[u8; 32]> {
        self.map.get(&(peer, prefix)).map(|e| e.id)
    }

    fn step(&self, peer: u8, from: &[u8; 32]) -> Option<[u8; 32]> {
        let e = self.map.get(&(peer, id_prefix(from)))?;
        if e.id != *from {
            return None;
        }
        self.resolve(peer, e.next?)
    }

    pub(crate) fn successor(&self, peer: u8, from: &[u8; 32], steps: usize) -> Option<[u8; 32]> {
        if steps == 0 || steps > MAX_CHAIN_STEPS {
            return None;
        }
        let mut cur = *from;
        for _ in 0..steps {
            cur = self.step(peer, &cur)?;
        }
        Some(cur)
    }

    pub(crate) fn distance(&self, peer: u8, from: &[u8; 32], to: &[u8; 32]) -> Option<usize> {
        let mut cur = *from;
        for steps in 1..=MAX_CHAIN_STEPS {
            cur = self.step(peer, &cur)?;
            if cur == *to {
                return Some(steps);
            }
        }
        None
    }
}
