//! On-disk record codec. Pure: no I/O, no clock.
//!
//! ```text
//! offset  size  field
//!      0     4  magic  b"STR1"
//!      4     1  kind   1 = chunk, 2 = peer set
//!      5     3  reserved, must be zero
//!      8     4  len    payload length, u32 LE (0 for a peer-set record)
//!     12    32  id     keyed BLAKE3 of the payload
//!     44     8  peers  peer bit mask, u64 LE
//!     52     4  crc    CRC-32 (IEEE) of bytes 0..52
//!     56   len  payload
//! ```
//!
//! The header CRC catches torn and damaged headers, so the scan never trusts a
//! length it cannot vouch for. The payload is not covered by the CRC: the keyed
//! BLAKE3 id is a far stronger check and `Store::get` verifies it on every read.

use crate::{Error, RawId};

/// Bytes of a record header.
pub const HEADER_LEN: usize = 56;
/// Largest chunk payload a record may carry.
pub const MAX_CHUNK_BYTES: usize = 16 * 1024 * 1024;
/// Largest record (header and payload).
pub const MAX_RECORD_BYTES: usize = HEADER_LEN + MAX_CHUNK_BYTES;

const MAGIC: [u8; 4] = *b"STR1";
const CRC_OFFSET: usize = 52;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A chunk: the payload is the chunk's bytes, `peers` its peer set when written.
    Chunk,
    /// A peer-set update for an earlier chunk record: no payload, `peers` is the
    /// complete new set (absolute, so replaying the log in order is idempotent).
    Peers,
}

impl RecordKind {
    fn to_byte(self) -> u8 {
        match self {
            RecordKind::Chunk => 1,
            RecordKind::Peers => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, Error> {
        match b {
            1 => Ok(RecordKind::Chunk),
            2 => Ok(RecordKind::Peers),
            kind => Err(Error::UnknownRecordKind { kind }),
        }
    }
}

/// A decoded, checksum-verified record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the record holds.
    pub kind: RecordKind,
    /// Payload length in bytes.
    pub len: u32,
    /// Chunk id (keyed BLAKE3 of the chunk bytes).
    pub id: RawId,
    /// Peer bit mask.
    pub peers: u64,
}

impl RecordHeader {
    /// Header plus payload length in bytes.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

/// Encodes a header into its fixed-size form, computing the checksum.
pub fn encode_header(h: &RecordHeader) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = h.kind.to_byte();
    out[8..12].copy_from_slice(&h.len.to_le_bytes());
    out[12..44].copy_from_slice(&h.id);
    out[44..52].copy_from_slice(&h.peers.to_le_bytes());
    let crc = crc32fast::hash(&out[..CRC_OFFSET]);
    out[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Encodes a whole record. `payload.len()` must equal `h.len`; the caller
/// (the store) has already checked it against [`MAX_CHUNK_BYTES`].
pub fn encode_record(h: &RecordHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&encode_header(h));
    out.extend_from_slice(payload);
    out
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Decodes and validates a record header from the first [`HEADER_LEN`] bytes of
/// `buf` (trailing bytes are the payload and are not looked at).
pub fn decode_header(buf: &[u8]) -> Result<RecordHeader, Error> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Err(Error::RecordTruncated {
            need: HEADER_LEN,
            have: buf.len(),
        });
    };
    if h[0..4] != MAGIC {
        return Err(Error::BadMagic {
            found: le_u32(h, 0),
        });
    }
    let stored = le_u32(h, CRC_OFFSET);
    let computed = crc32fast::hash(&h[..CRC_OFFSET]);
    if stored != computed {
        return Err(Error::HeaderChecksum { stored, computed });
    }
    let kind = RecordKind::from_byte(h[4])?;
    if h[5..8] != [0, 0, 0] {
        return Err(Error::ReservedNotZero);
    }
    let len = le_u32(h, 8);
    match kind {
        RecordKind::Chunk if len as usize > MAX_CHUNK_BYTES => {
            return Err(Error::ChunkTooLarge {
                len: len as usize,
                max: MAX_CHUNK_BYTES,
            })
        }
        RecordKind::Peers if len != 0 => return Err(Error::PeersRecordPayload { len }),
        _ => {}
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&h[12..44]);
    let mut peers = [0u8; 8];
    peers.copy_from_slice(&h[44..52]);
    Ok(RecordHeader {
        kind,
        len,
        id,
        peers: u64::from_le_bytes(peers),
    })
}

/// Decodes one complete record at the start of `buf`.
///
/// Returns the header and the number of bytes the record occupies; the
/// payload is `buf[HEADER_LEN..used]`. Bytes after `used` belong to the next
/// record and are left alone; a caller that expects exactly one record checks
/// `used == buf.len()`. A payload cut short is an error, never a short record.
pub fn decode_record(buf: &[u8]) -> Result<(RecordHeader, usize), Error> {
    let h = decode_header(buf)?;
    let used = h.record_len();
    if buf.len() < used {
        return Err(Error::RecordTruncated {
            need: used,
            have: buf.len(),
        });
    }
    Ok((h, used))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn header(kind: RecordKind, len: u32) -> RecordHeader {
        RecordHeader {
            kind,
            len,
            id: [7u8; 32],
            peers: 0x8000_0000_0000_0001,
        }
    }

    #[test]
    fn record_round_trips_and_leaves_next_record_alone() {
        let h = header(RecordKind::Chunk, 5);
        let mut buf = encode_record(&h, b"hello");
        buf.extend_from_slice(&encode_record(&header(RecordKind::Peers, 0), &[]));
        let (got, used) = decode_record(&buf).unwrap();
        assert_eq!(got, h);
        assert_eq!(used, HEADER_LEN + 5);
        let (next, used2) = decode_record(&buf[used..]).unwrap();
        assert_eq!(next.kind, RecordKind::Peers);
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn every_single_bit_flip_in_a_header_is_rejected() {
        let buf = encode_record(&header(RecordKind::Chunk, 3), b"abc");
        for bit in 0..HEADER_LEN * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&b).is_err(), "bit {bit} flip accepted");
        }
    }

    #[test]
    fn short_payload_is_truncated_error() {
        let buf = encode_record(&header(RecordKind::Chunk, 10), &[1u8; 10]);
        let err = decode_record(&buf[..buf.len() - 1]).unwrap_err();
        assert!(matches!(err, Error::RecordTruncated { need: 66, have: 65 }));
        assert!(matches!(
            decode_record(&buf[..10]).unwrap_err(),
            Error::RecordTruncated { need: 56, have: 10 }
        ));
    }

    #[test]
    fn oversized_chunk_and_peers_payload_are_rejected() {
        let big = encode_header(&header(RecordKind::Chunk, MAX_CHUNK_BYTES as u32 + 1));
        assert!(matches!(
            decode_header(&big).unwrap_err(),
            Error::ChunkTooLarge { .. }
        ));
        let p = encode_header(&header(RecordKind::Peers, 1));
        assert!(matches!(
            decode_header(&p).unwrap_err(),
            Error::PeersRecordPayload { len: 1 }
        ));
    }
}
