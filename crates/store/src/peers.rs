//! The persisted peer table: peer name → slot (bit in every entry's peer mask).
//!
//! ```text
//! magic b"STRPEER1" | count u8 | count × (len u8, name bytes) | crc32 u32 LE of all before
//! ```
//!
//! Replaced atomically (write temp file, fsync, rename, fsync directory) so a
//! crash leaves either the old or the new table, never a torn one.

use crate::vfs::{Small, Vfs};
use crate::Error;

/// Most distinct peers a store tracks (one bit each in a `u64` mask).
pub const MAX_PEERS: usize = 64;
/// Longest peer name in bytes.
pub const MAX_PEER_NAME_LEN: usize = 255;
/// Largest valid peer table file.
pub const MAX_PEER_TABLE_BYTES: usize = 8 + 1 + MAX_PEERS * (1 + MAX_PEER_NAME_LEN) + 4;

const MAGIC: &[u8; 8] = b"STRPEER1";
pub(crate) const FILE_NAME: &str = "peers.tbl";
const TMP_NAME: &str = "peers.tbl.tmp";

/// Encodes a peer table. Names were validated by the caller.
pub fn encode_peer_table(names: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + names.iter().map(|n| n.len() + 1).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.push(names.len() as u8);
    for n in names {
        out.push(n.len() as u8);
        out.extend_from_slice(n.as_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a peer table file: checksum, bounds, UTF-8, no empty or duplicate
/// names, no trailing bytes.
pub fn decode_peer_table(buf: &[u8]) -> Result<Vec<String>, Error> {
    let bad = |reason: &'static str| Error::PeerTableInvalid { reason };
    if buf.len() > MAX_PEER_TABLE_BYTES {
        return Err(bad("file larger than the largest valid table"));
    }
    if buf.len() < MAGIC.len() + 1 + 4 {
        return Err(bad("file shorter than an empty table"));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    if u32::from_le_bytes(c) != crc32fast::hash(body) {
        return Err(bad("checksum mismatch"));
    }
    if &body[..MAGIC.len()] != MAGIC {
        return Err(bad("bad magic"));
    }
    let count = body[MAGIC.len()] as usize;
    if count > MAX_PEERS {
        return Err(bad("more peers than MAX_PEERS"));
    }
    let mut rest = &body[MAGIC.len() + 1..];
    let mut names: Vec<String> = Vec::with_capacity(count);
    for _ in 0..count {
        let (&len, tail) = rest.split_first().ok_or(bad("truncated name length"))?;
        let len = len as usize;
        let name = tail.get(..len).ok_or(bad("truncated name"))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("name is not UTF-8"))?;
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        if names.iter().any(|n| n == name) {
            return Err(bad("duplicate name"));
        }
        names.push(name.to_owned());
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(names)
}

/// Reads the table. `Ok(None)` when the file does not exist.
pub(crate) fn load(vfs: &Vfs) -> Result<Option<Result<Vec<String>, Error>>, Error> {
    Ok(match vfs.read_small(FILE_NAME, MAX_PEER_TABLE_BYTES)? {
        Small::Missing => None,
        Small::TooLarge => Some(Err(Error::PeerTableInvalid {
            reason: "file larger than the largest valid table",
        })),
        Small::Bytes(buf) => Some(decode_peer_table(&buf)),
    })
}

/// Atomically replaces the table with `names`.
pub(crate) fn store(vfs: &Vfs, names: &[String]) -> Result<(), Error> {
    vfs.replace(FILE_NAME, TMP_NAME, &encode_peer_table(names))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn peer_table_round_trips_and_rejects_damage() {
        let names = vec!["edge-a".to_string(), "edge-b".to_string()];
        let buf = encode_peer_table(&names);
        assert_eq!(decode_peer_table(&buf).unwrap(), names);
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(decode_peer_table(&b).is_err(), "flip at {i} accepted");
        }
        assert!(decode_peer_table(&buf[..buf.len() - 1]).is_err());
        assert_eq!(decode_peer_table(&encode_peer_table(&[])).unwrap().len(), 0);
    }

    #[test]
    fn duplicate_and_empty_names_are_rejected() {
        let dup = encode_peer_table(&["a".to_string(), "a".to_string()]);
        assert!(decode_peer_table(&dup).is_err());
        let empty = encode_peer_table(&[String::new()]);
        assert!(decode_peer_table(&empty).is_err());
    }
}
