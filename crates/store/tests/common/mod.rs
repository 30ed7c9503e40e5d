//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::Path;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strait_store::{RawId, StoreConfig};

pub const KEY: [u8; 32] = [0x5a; 32];

/// `len` seeded random bytes and their id.
pub fn chunk(seed: u64, len: usize) -> (RawId, Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    (*blake3::keyed_hash(&KEY, &data).as_bytes(), data)
}

pub fn cfg(dir: &Path, max_bytes: u64, segment_bytes: u64) -> StoreConfig {
    StoreConfig {
        path: dir.to_path_buf(),
        max_bytes,
        segment_bytes,
        key: KEY,
    }
}

pub fn seg_name(n: u32) -> String {
    format!("seg-{n:06}.dat")
}
