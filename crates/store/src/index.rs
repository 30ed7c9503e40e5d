//! The in-memory index: chunk id → record location and peer set.

use std::collections::HashMap;

use crate::record::HEADER_LEN;
use crate::RawId;

/// Where a chunk's record lives and who has it. Packed to 20 bytes so a
/// bucket of the index is 36 bytes (see the crate doc's memory figure).
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
pub(crate) struct Entry {
    pub(crate) peers: u64,
    pub(crate) seg: u32,
    pub(crate) off: u32,
    pub(crate) len: u32,
}

impl Entry {
    pub(crate) fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.len)
    }
}

/// The index key: the first 128 bits of the id. Keys are keyed-BLAKE3
/// outputs, so for `n` chunks two share a key with probability about
/// n²/2^129. Such a collision can only cost misses: `get` checks the full id
/// stored in the record before returning bytes.
pub(crate) type IdKey = [u8; 16];

pub(crate) fn id_key(id: &RawId) -> IdKey {
    let mut k = [0u8; 16];
    k.copy_from_slice(&id[..16]);
    k
}

#[derive(Default)]
pub(crate) struct Index(HashMap<IdKey, Entry>);

impl Index {
    pub(crate) fn get(&self, id: &RawId) -> Option<&Entry> {
        self.0.get(&id_key(id))
    }
    pub(crate) fn get_mut(&mut self, id: &RawId) -> Option<&mut Entry> {
        self.0.get_mut(&id_key(id))
    }
    pub(crate) fn insert(&mut self, id: &RawId, e: Entry) -> Option<Entry> {
        self.0.insert(id_key(id), e)
    }
    pub(crate) fn remove(&mut self, id: &RawId) -> Option<Entry> {
        self.0.remove(&id_key(id))
    }
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
    pub(crate) fn capacity(&self) -> usize {
        self.0.capacity()
    }
    pub(crate) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.0.values()
    }
    pub(crate) fn retain(&mut self, f: impl FnMut(&IdKey, &mut Entry) -> bool) {
        self.0.retain(f)
    }
}
