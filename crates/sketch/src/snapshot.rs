//! A snapshot of a [`SketchIndex`] (sketches and chains), so a restarted process keeps finding
//! delta bases and predicting the chunk that follows: without it, the first repeat after a
//! restart sends every pause's preview as a literal and finds no base for a new version.
//!
//! ```text
//! magic b"STRSKIX1"
//! u32 LE n | n × (id [32] | SUPER_FEATURES × u64 LE)                 sketches, oldest first
//! u32 LE m | m × (peer u8 | id [32] | has_next u8 | next u64 LE)      chain entries, oldest first
//! ```
//!
//! The body carries no checksum: the caller stores it in a checked container (the chunk
//! store's hints file). Every answer the index gives is a hint that the caller verifies, so a
//! stale snapshot (an evicted chunk, another dedup key) costs a miss, never wrong bytes.
//! Restoring parses the whole snapshot before it changes the index: a malformed one changes
//! nothing.

use crate::{Sketch, SketchIndex, SUPER_FEATURES};

const MAGIC: &[u8; 8] = b"STRSKIX1";
const SKETCH_RECORD: usize = 32 + 8 * SUPER_FEATURES;
const CHAIN_RECORD: usize = 1 + 32 + 1 + 8;

/// A snapshot that cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a sketch index snapshot (or another version of the format).
    #[error("not a sketch index snapshot (bad magic)")]
    Magic,
    /// The snapshot ends inside a section or has bytes after its last one.
    #[error("sketch index snapshot is {len} bytes, its counts say {expected}")]
    Length {
        /// Bytes given.
        len: usize,
        /// Bytes the counts imply (so far).
        expected: usize,
    },
    /// A chain entry's successor flag is neither 0 nor 1.
    #[error("sketch index snapshot chain entry {index} has successor flag {flag}")]
    Flag {
        /// Entry index.
        index: usize,
        /// The flag byte.
        flag: u8,
    },
}

/// What a restore put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Sketch entries.
    pub sketches: usize,
    /// Chain entries.
    pub chain: usize,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let Some(end) = end else {
            return Err(SnapshotError::Length {
                len: self.b.len(),
                expected: self.at.saturating_add(n),
            });
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<usize, SnapshotError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a) as usize)
    }

    /// `count` records of `size` bytes, checked against the bytes left before any is read.
    fn records(&mut self, count: usize, size: usize) -> Result<&'a [u8], SnapshotError> {
        let n = count.checked_mul(size).ok_or(SnapshotError::Length {
            len: self.b.len(),
            expected: usize::MAX,
        })?;
        self.take(n)
    }
}

fn u64_at(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn id_at(b: &[u8]) -> [u8; 32] {
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[..32]);
    id
}

impl SketchIndex {
    /// The live sketches and chain entries, oldest first (see the module doc for the format).
    pub fn snapshot(&self) -> Vec<u8> {
        let sketches = self.live_sketches();
        let chain = self.chain_map().live();
        let mut out = Vec::with_capacity(
            MAGIC.len() + 8 + sketches.len() * SKETCH_RECORD + chain.len() * CHAIN_RECORD,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(sketches.len() as u32).to_le_bytes());
        for (id, sk) in &sketches {
            out.extend_from_slice(id);
            for sf in sk.0 {
                out.extend_from_slice(&sf.to_le_bytes());
            }
        }
        out.extend_from_slice(&(chain.len() as u32).to_le_bytes());
        for (peer, id, next) in &chain {
            out.push(*peer);
            out.extend_from_slice(id);
            out.push(u8::from(next.is_some()));
            out.extend_from_slice(&next.unwrap_or(0).to_le_bytes());
        }
        out
    }

    /// Most bytes a snapshot of an index `factor` times this one's capacity takes (the bound
    /// for reading one back: a process whose index was made smaller still restores its
    /// newest entries).
    pub fn snapshot_bound(&self, factor: usize) -> usize {
        let cap = self.stats().capacity as usize;
        MAGIC.len() + 8 + cap.saturating_mul(factor) * (SKETCH_RECORD + CHAIN_RECORD)
    }

    /// Adds the entries of a [`SketchIndex::snapshot`] as if recorded in its order (this
    /// index's bound applies: a snapshot of a larger index keeps its newest entries). A
    /// malformed snapshot is refused whole and changes nothing.
    pub fn restore(&self, b: &[u8]) -> Result<Restored, SnapshotError> {
        let mut r = Reader { b, at: 0 };
        if r.take(MAGIC.len()).ok() != Some(MAGIC.as_slice()) {
            return Err(SnapshotError::Magic);
        }
        let n = r.u32()?;
        let sketches = r.records(n, SKETCH_RECORD)?;
        let m = r.u32()?;
        let chain = r.records(m, CHAIN_RECORD)?;
        if r.at != b.len() {
            return Err(SnapshotError::Length {
                len: b.len(),
                expected: r.at,
            });
        }
        for (index, c) in chain.chunks_exact(CHAIN_RECORD).enumerate() {
            if c[33] > 1 {
                return Err(SnapshotError::Flag { index, flag: c[33] });
            }
        }
        for s in sketches.chunks_exact(SKETCH_RECORD) {
            let mut sf = [0u64; SUPER_FEATURES];
            for (i, v) in sf.iter_mut().enumerate() {
                *v = u64_at(&s[32 + 8 * i..]);
            }
            self.insert(&id_at(s), Sketch(sf));
        }
        let mut map = self.chain_map();
        for c in chain.chunks_exact(CHAIN_RECORD) {
            let next = (c[33] == 1).then(|| u64_at(&c[34..]));
            map.restore(c[0], &id_at(&c[1..]), next);
        }
        Ok(Restored {
            sketches: n,
            chain: m,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(n: u32) -> [u8; 32] {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_le_bytes());
        id[31] = 0xa5;
        id
    }

    fn filled() -> SketchIndex {
        filled_with(100)
    }

    fn filled_with(sketches: u32) -> SketchIndex {
        let ix = SketchIndex::new(1 << 20);
        for n in 0..sketches {
            let v = u64::from(n);
            ix.insert(&id(n), Sketch([v, v + 1000, v + 2000, v + 3000]));
        }
        for peer in [0u8, 3] {
            let mut prev = None;
            for n in 0..50u32 {
                let i = id(n + u32::from(peer));
                ix.record_chain(peer, prev.as_ref(), &i);
                prev = Some(i);
            }
        }
        ix
    }

    #[test]
    fn a_restored_index_answers_as_the_original() {
        let a = filled();
        let snap = a.snapshot();
        let b = SketchIndex::new(1 << 20);
        let r = b.restore(&snap).unwrap();
        assert_eq!(
            r,
            Restored {
                sketches: 100,
                chain: 100
            }
        );
        assert_eq!(b.snapshot(), snap);
        for n in 0..100 {
            assert_eq!(b.get(&id(n)), a.get(&id(n)));
        }
        for peer in [0u8, 3] {
            let from = id(10 + u32::from(peer));
            assert_eq!(b.successor(peer, &from, 5), a.successor(peer, &from, 5));
            assert!(b.successor(peer, &from, 5).is_some());
        }
        let sk = a.get(&id(7)).unwrap();
        assert_eq!(
            b.candidates(&sk, 4, 2, &[0; 32]),
            a.candidates(&sk, 4, 2, &[0; 32])
        );
    }

    #[test]
    fn a_smaller_index_keeps_the_newest_entries() {
        let snap = filled_with(1000).snapshot();
        let small = SketchIndex::new(crate::MIN_INDEX_BYTES);
        let cap = small.stats().capacity as u32;
        assert!(cap < 1000, "capacity {cap}");
        small.restore(&snap).unwrap();
        assert!(small.contains(&id(999)));
        assert!(!small.contains(&id(0)));
        assert_eq!(small.stats().entries, u64::from(cap));
    }

    #[test]
    fn malformed_snapshots_are_refused_and_change_nothing() {
        let snap = filled().snapshot();
        let ix = SketchIndex::new(1 << 20);
        let mut bad_magic = snap.clone();
        bad_magic[0] ^= 1;
        assert_eq!(ix.restore(&bad_magic), Err(SnapshotError::Magic));
        for cut in [9, 20, snap.len() - 1] {
            assert!(matches!(
                ix.restore(&snap[..cut]),
                Err(SnapshotError::Length { .. })
            ));
        }
        let mut longer = snap.clone();
        longer.push(0);
        assert!(matches!(
            ix.restore(&longer),
            Err(SnapshotError::Length { .. })
        ));
        // A count far beyond the bytes (no allocation, no overflow).
        let mut huge = snap.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            ix.restore(&huge),
            Err(SnapshotError::Length { .. })
        ));
        let mut flag = snap.clone();
        let at = snap.len() - 9;
        flag[at] = 7;
        assert!(matches!(
            ix.restore(&flag),
            Err(SnapshotError::Flag { flag: 7, .. })
        ));
        assert_eq!(ix.stats().entries, 0);
        assert_eq!(ix.stats().chain_entries, 0);
    }
}
