//! The hints file: what a process learned about the streams it carried (the sketch index's
//! snapshot: delta bases and which chunk followed which), saved at a clean shutdown and
//! loaded at start, so the first repeat after a restart is as cheap as the one before it.
//!
//! ```text
//! magic b"STRHINT1" | body | crc32 u32 LE of all before
//! ```
//!
//! Replaced atomically like the peer table. Hints are never trusted for bytes: whatever the
//! body says is verified where it is used, so a stale file costs misses; a damaged one is
//! refused whole.

use crate::Error;

const MAGIC: &[u8; 8] = b"STRHINT1";
pub(crate) const FILE_NAME: &str = "hints.bin";
pub(crate) const TMP_NAME: &str = "hints.bin.tmp";

/// The container around `body`.
pub(crate) fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The body of a container, checked.
pub(crate) fn decode(mut buf: Vec<u8>) -> Result<Vec<u8>, Error> {
    let bad = |reason| Error::HintsInvalid { reason };
    if buf.len() < MAGIC.len() + 4 {
        return Err(bad("shorter than its header"));
    }
    if &buf[..MAGIC.len()] != MAGIC {
        return Err(bad("bad magic"));
    }
    let n = buf.len() - 4;
    let mut c = [0u8; 4];
    c.copy_from_slice(&buf[n..]);
    if crc32fast::hash(&buf[..n]) != u32::from_le_bytes(c) {
        return Err(bad("checksum mismatch"));
    }
    buf.truncate(n);
    buf.drain(..MAGIC.len());
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::{Error, Store};

    #[test]
    fn hints_round_trip_and_damage_is_refused_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Store::open(crate::StoreConfig::new(dir.path(), 64 << 20, [3; 32])).unwrap();
        let s = open();
        assert!(s.load_hints(1 << 20).unwrap().is_none());
        s.save_hints(b"sketches and chains").unwrap();
        drop(s);
        let s = open();
        assert_eq!(
            s.load_hints(1 << 20).unwrap().as_deref(),
            Some(&b"sketches and chains"[..])
        );
        assert!(matches!(
            s.load_hints(8),
            Err(Error::HintsInvalid { reason }) if reason.contains("larger")
        ));
        drop(s);
        let path = dir.path().join(super::FILE_NAME);
        let mut b = std::fs::read(&path).unwrap();
        b[10] ^= 0x40;
        std::fs::write(&path, &b).unwrap();
        let s = open();
        assert!(matches!(
            s.load_hints(1 << 20),
            Err(Error::HintsInvalid {
                reason: "checksum mismatch"
            })
        ));
        std::fs::write(&path, b"STRHIN").unwrap();
        assert!(matches!(
            s.load_hints(1 << 20),
            Err(Error::HintsInvalid { .. })
        ));
    }
}
