//! Chunk ids: keyed BLAKE3 over the chunk bytes.
//!
//! The hash is keyed so that a chunk cache shared by many clients cannot be poisoned by someone
//! who precomputes colliding ids offline: without the tunnel key, ids are unpredictable.

use std::fmt;

use crate::Error;

/// Length in bytes of a [`ChunkId`].
pub const ID_LEN: usize = 32;

/// Identity of a chunk: keyed BLAKE3 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; ID_LEN]);

impl ChunkId {
    /// Builds an id from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let arr: [u8; ID_LEN] = bytes
            .try_into()
            .map_err(|_| Error::IdLength { len: bytes.len() })?;
        Ok(Self(arr))
    }

    /// Full lowercase hex (64 digits).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(ID_LEN * 2);
        for b in self.0 {
            push_hex(&mut s, b);
        }
        s
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        let bad = || Error::IdHex {
            text: text.chars().take(80).collect(),
        };
        let bytes = text.as_bytes();
        if bytes.len() != ID_LEN * 2 {
            return Err(bad());
        }
        let mut out = [0u8; ID_LEN];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let hi = hex_val(pair[0]).ok_or_else(bad)?;
            let lo = hex_val(pair[1]).ok_or_else(bad)?;
            *o = (hi << 4) | lo;
        }
        Ok(Self(out))
    }

    /// The id as bytes.
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }
}

fn push_hex(s: &mut String, b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    s.push(char::from(DIGITS[usize::from(b >> 4)]));
    s.push(char::from(DIGITS[usize::from(b & 0xf)]));
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Number of leading bytes shown by `Debug`/`Display`: enough to tell ids apart in logs.
const SHORT_HEX_BYTES: usize = 8;

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..SHORT_HEX_BYTES] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// Computes chunk ids with a tunnel-wide secret key.
#[derive(Clone)]
pub struct ChunkHasher {
    key: [u8; 32],
}

impl fmt::Debug for ChunkHasher {
    // The key is a secret: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkHasher { key: <redacted> }")
    }
}

impl ChunkHasher {
    /// A hasher keyed with `key` (both peers must use the same key).
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// The id of `data`.
    pub fn id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.key, data).as_bytes())
    }

    /// Whether `data` hashes to `id`. The comparison is constant-time.
    pub fn verify(&self, id: &ChunkId, data: &[u8]) -> bool {
        blake3::keyed_hash(&self.key, data) == blake3::Hash::from_bytes(id.0)
    }
}
