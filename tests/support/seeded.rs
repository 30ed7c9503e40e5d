//! Seeded byte streams: the same (seed, length) gives the same bytes everywhere, so the sender
//! generates them on the fly and the receiver's BLAKE3 is compared with the sender's.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Random (incompressible) bytes from a seed, produced in pieces.
pub struct Seeded {
    rng: ChaCha8Rng,
    left: u64,
}

impl Seeded {
    /// `len` bytes from `seed`.
    pub fn new(seed: u64, len: u64) -> Seeded {
        Seeded {
            rng: ChaCha8Rng::seed_from_u64(seed),
            left: len,
        }
    }

    /// Fills up to `buf.len()` bytes; returns how many (0 at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = (buf.len() as u64).min(self.left) as usize;
        self.rng.fill_bytes(&mut buf[..n]);
        self.left -= n as u64;
        n
    }
}

/// All of a seeded stream in memory.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Seeded::new(seed, len as u64).fill(&mut v);
    v
}

/// BLAKE3 of a seeded stream without holding it.
pub fn hash(seed: u64, len: u64) -> blake3::Hash {
    let mut s = Seeded::new(seed, len);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = s.fill(&mut buf);
        if n == 0 {
            return h.finalize();
        }
        h.update(&buf[..n]);
    }
}
