//! The bounded sketch index: chunk id → sketch, and per super-feature position, super-feature →
//! the most recent chunk carrying it.
//!
//! Memory: entries live in a FIFO ring of at most `max_bytes / ENTRY_BYTES` slots. Inserting
//! into a full ring evicts the oldest entry and unlinks it from every map that still points at
//! it. A chunk inserted again while in the older half of the ring is moved to the front (a
//! second chance, like the chunk store's copy-forward), so bases in steady use stay.

use crate::chain::{Chain, CHAIN_ENTRY_BYTES};
use crate::{Sketch, SUPER_FEATURES};
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// Accounting cost of one entry: the ring slot (32-byte id + 32-byte sketch), the id map
/// (16-byte key + 8-byte sequence) and four super-feature maps (8 + 8 bytes each), with
/// hashbrown's control bytes at its typical ~2/3 load. [`IndexStats::bytes`] reports the
/// measured figure.
pub const ENTRY_BYTES: usize = 208;
/// Default memory bound of a process's sketch index, sketches and chains together (≈ 210 k
/// chunks, ≈ 13 GiB of 64 KiB chunks).
pub const DEFAULT_INDEX_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest accepted bound (below it the index is too small to find anything).
pub const MIN_INDEX_BYTES: u64 = 64 * 1024;

type Seq = u64;

struct Slot {
    id: [u8; 32],
    sketch: Sketch,
}

struct Inner {
    ring: VecDeque<Slot>,
    /// Sequence number of `ring[0]`.
    head: Seq,
    by_id: HashMap<u128, Seq>,
    by_sf: [HashMap<u64, Seq>; SUPER_FEATURES],
    evictions: u64,
}

/// Gauges and counters of a [`SketchIndex`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Live entries (chunks with a sketch).
    pub entries: u64,
    /// Live chain entries (chunks whose stream order is known, per peer).
    pub chain_entries: u64,
    /// Heap bytes of the ring and maps, from their capacities.
    pub bytes: u64,
    /// Entry bound derived from the configured memory bound.
    pub capacity: u64,
    /// Entries evicted to stay within the bound.
    pub evictions: u64,
}

/// A bounded, thread-safe index of chunk sketches shared by every flow of a process, and of the
/// order chunks crossed in per peer (see [`SketchIndex::record_chain`]).
pub struct SketchIndex {
    inner: Mutex<Inner>,
    chain: Mutex<Chain>,
    capacity: usize,
}

fn key(id: &[u8; 32]) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&id[..16]);
    u128::from_le_bytes(a)
}

impl SketchIndex {
    /// An empty index using at most about `max_bytes` (clamped to at least [`MIN_INDEX_BYTES`]),
    /// split between as many sketch entries as chain entries.
    pub fn new(max_bytes: u64) -> Self {
        let capacity =
            (max_bytes.max(MIN_INDEX_BYTES) / (ENTRY_BYTES + CHAIN_ENTRY_BYTES) as u64) as usize;
        SketchIndex {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                head: 0,
                by_id: HashMap::new(),
                by_sf: Default::default(),
                evictions: 0,
            }),
            chain: Mutex::new(Chain::new(capacity)),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves maps that are at worst stale: candidates are
        // only hints, checked by the caller, so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn chain(&self) -> MutexGuard<'_, Chain> {
        // Same reasoning as `lock`: chain answers are hints, verified by the caller.
        self.chain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that chunk `id` crossed, to or from the peer in slot `peer`, right after `prev`
    /// (`None` at the start of a stream or after a chunk whose id is unknown).
    pub fn record_chain(&self, peer: u8, prev: Option<&[u8; 32]>, id: &[u8; 32]) {
        self.chain().record(peer, prev, id);
    }

    /// The chunk `steps` (1..=[`crate::MAX_CHAIN_STEPS`]) places after `from` in the streams
    /// exchanged with `peer`.
    pub fn successor(&self, peer: u8, from: &[u8; 32], steps: usize) -> Option<[u8; 32]> {
        self.chain().successor(peer, from, steps)
    }

    /// How many places after `from` chunk `to` came (at most [`crate::MAX_CHAIN_STEPS`]).
    pub fn chain_distance(&self, peer: u8, from: &[u8; 32], to: &[u8; 32]) -> Option<usize> {
        self.chain().distance(peer, from, to)
    }

    /// The chunk recorded for `peer` whose id starts with `prefix` ([`crate::id_prefix`]).
    pub fn resolve_prefix(&self, peer: u8, prefix: u64) -> Option<[u8; 32]> {
        self.chain().resolve(peer, prefix)
    }

    /// Records that chunk `id` has `sketch`.
    pub fn insert(&self, id: &[u8; 32], sketch: Sketch) {
        let mut g = self.lock();
        let inner = &mut *g;
        let k = key(id);
        if let Some(&seq) = inner.by_id.get(&k) {
            let age = inner.head + inner.ring.len() as u64 - seq;
            if (age as usize) < self.capacity / 2 {
                return;
            }
        }
        while inner.ring.len() >= self.capacity {
            inner.evict_oldest();
        }
        let seq = inner.head + inner.ring.len() as u64;
        inner.ring.push_back(Slot { id: *id, sketch });
        inner.by_id.insert(k, seq);
        for (map, sf) in inner.by_sf.iter_mut().zip(sketch.0.iter()) {
            map.insert(*sf, seq);
        }
    }

    /// Whether chunk `id` has an entry.
    pub fn contains(&self, id: &[u8; 32]) -> bool {
        self.get(id).is_some()
    }

    /// The sketch recorded for chunk `id`.
    pub fn get(&self, id: &[u8; 32]) -> Option<Sketch> {
        let g = self.lock();
        let seq = *g.by_id.get(&key(id))?;
        let slot = g.slot(seq)?;
        (slot.id == *id).then_some(slot.sketch)
    }

    /// Chunks sharing at least `min_shared` super-features with `sketch`, most shared first, at
    /// most `max` of them. `exclude` is never returned (the chunk itself).
    pub fn candidates(
        &self,
        sketch: &Sketch,
        min_shared: usize,
        max: usize,
        exclude: &[u8; 32],
    ) -> Vec<([u8; 32], usize)> {
        let g = self.lock();
        let mut found: Vec<(Seq, usize)> = Vec::with_capacity(SUPER_FEATURES);
        for (map, sf) in g.by_sf.iter().zip(sketch.0.iter()) {
            if let Some(&seq) = map.get(sf) {
                match found.iter_mut().find(|(s, _)| *s == seq) {
                    Some((_, n)) => *n += 1,
                    None => found.push((seq, 1)),
                }
            }
        }
        // Most shared first; among equals the newest (most likely the previous version).
        found.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        found
            .into_iter()
            .filter(|(_, n)| *n >= min_shared)
            .filter_map(|(seq, n)| g.slot(seq).map(|s| (s.id, n)))
            .filter(|(id, _)| id != exclude)
            .take(max)
            .collect()
    }

    /// Live sketch entries, oldest first.
    pub(crate) fn live_sketches(&self) -> Vec<([u8; 32], Sketch)> {
        let g = self.lock();
        g.ring
            .iter()
            .enumerate()
            .filter(|(i, s)| g.by_id.get(&key(&s.id)) == Some(&(g.head + *i as u64)))
            .map(|(_, s)| (s.id, s.sketch))
            .collect()
    }

    /// The chain map, locked (for [`crate::snapshot`]).
    pub(crate) fn chain_map(&self) -> MutexGuard<'_, Chain> {
        self.chain()
    }

    /// Gauges for metrics.
    pub fn stats(&self) -> IndexStats {
        let g = self.lock();
        let ring = g.ring.capacity() * std::mem::size_of::<Slot>();
        let ids = g.by_id.capacity() * (16 + 8 + 1);
        let sfs: usize = g.by_sf.iter().map(|m| m.capacity() * (8 + 8 + 1)).sum();
        let entries = g.by_id.len() as u64;
        let evictions = g.evictions;
        drop(g);
        let chain = self.chain();
        IndexStats {
            entries,
            chain_entries: chain.len() as u64,
            bytes: (ring + ids + sfs + chain.heap_bytes()) as u64,
            capacity: self.capacity as u64,
            evictions,
        }
    }
}

impl Inner {
    fn slot(&self, seq: Seq) -> Option<&Slot> {
        let i = seq.checked_sub(self.head)?;
        self.ring.get(i as usize)
    }

    fn evict_oldest(&mut self) {
        let seq = self.head;
        let Some(old) = self.ring.pop_front() else {
            return;
        };
        self.head += 1;
        let k = key(&old.id);
        if self.by_id.get(&k) == Some(&seq) {
            self.by_id.remove(&k);
            self.evictions += 1;
        }
        for (map, sf) in self.by_sf.iter_mut().zip(old.sketch.0.iter()) {
            if map.get(sf) == Some(&seq) {
                map.remove(sf);
            }
        }
    }
}
