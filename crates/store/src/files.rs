//! Segment files: naming, scanning, background fsync.

use std::io;
use std::thread::JoinHandle;

use crate::record::{self, RecordHeader, HEADER_LEN};
use crate::vfs::SegFile;
use crate::Error;

/// A failed background fsync only means the segment may not survive power
/// loss, which costs misses; it is logged, not propagated into an unrelated put.
pub(crate) fn finish_sync(h: JoinHandle<Result<(), Error>>) {
    match h.join() {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(%err, "background segment fsync failed"),
        Err(_) => tracing::warn!("background segment fsync panicked"),
    }
}

pub(crate) fn seg_name(n: u32) -> String {
    format!("seg-{n:06}.dat")
}

/// Only the canonical spelling counts, so `seg-1.dat` and `seg-000001.dat`
/// can never both claim segment 1.
pub(crate) fn parse_seg_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".dat")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    (n > 0 && seg_name(n) == name).then_some(n)
}

/// Walks the chain of valid record headers of a segment from offset 0 and
/// returns where it ends (the first byte not covered by a valid record).
pub(crate) fn scan_segment(
    file: &SegFile,
    file_len: u64,
    mut on_record: impl FnMut(&RecordHeader, u32),
) -> io::Result<u64> {
    let mut off = 0u64;
    let mut hdr = [0u8; HEADER_LEN];
    while file_len - off >= HEADER_LEN as u64 {
        file.read_exact_at(&mut hdr, off)?;
        let Ok(h) = record::decode_header(&hdr) else {
            break;
        };
        let end = off + h.record_len() as u64;
        // u32 offsets: a record past 4 GiB cannot be indexed, treat as end.
        if end > file_len || off > u64::from(u32::MAX) {
            break;
        }
        on_record(&h, off as u32);
        off = end;
    }
    Ok(off)
}
