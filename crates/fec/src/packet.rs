//! FEC wire format. Pure functions of bytes; every decoder is bounds-checked and length-capped.
//!
//! ```text
//! byte 0      0b10_kk_t_vvv: 0b10 marks FEC (the 0x40 "QUIC fixed bit" is clear, so a bare
//!             QUIC packet is never taken for one), kk the kind (0 plain, 1 source, 2 repair,
//!             3 control), t "a timestamp follows the sequence number", vvv the version
//! plain       seq u16, [ts u16], payload                                       3 (5) bytes + payload
//! source      seq u16, [ts u16], block u16, index u8, payload                  6 (8) bytes + payload
//! repair      seq u16, [ts u16], block u16, index u8, k u8, m u8, coder u8, shard
//!                                                                             9 (11) bytes + shard
//!             shard = [len u16][payload][zero pad to even]
//! control     loss_ppm u32, burst_milli u32, queue_delay_us u32, packets u32   17 bytes
//! ```
//! `seq` counts every data packet (plain, source, repair) so the receiver can measure loss and
//! bursts; `ts` is the sender's clock in [`TS_TICK_MICROS`] ticks (wrapping) for the one-way-delay
//! trend. The sender puts a timestamp on a packet at most every [`TS_INTERVAL`] (and on the first
//! after a pause): the queueing delay moves by at most that much in the meantime, and the two
//! bytes on every packet were a third of what adaptive FEC cost a request/response flow at zero
//! loss. All integers are big-endian.

use std::time::Duration;

use crate::FecError;

/// Wire version spoken by this build (1 had a second header byte and a timestamp on every
/// packet).
pub const VERSION: u8 = 2;
/// Bits 7..6 of byte 0 of every FEC packet.
pub const MAGIC: u8 = 0x80;
const MAGIC_MASK: u8 = 0xC0;
const TS_FLAG: u8 = 0x08;
const VERSION_MASK: u8 = 0x07;
/// Largest number of bytes FEC adds to a QUIC packet (a timestamped repair packet: 11 header
/// bytes + 2 length bytes + 1 pad byte). Reduce the MTU QUIC uses by this much.
pub const FEC_HEADER_LEN: usize = REPAIR_HEADER_LEN + TS_LEN + SHARD_PREFIX_LEN + 1;
/// Header of a plain (unprotected) packet without a timestamp.
pub const PLAIN_HEADER_LEN: usize = 3;
/// Header of a source packet without a timestamp.
pub const SOURCE_HEADER_LEN: usize = 6;
/// Header of a repair packet (before the shard) without a timestamp.
pub const REPAIR_HEADER_LEN: usize = 9;
/// Bytes a timestamp adds to a data packet's header.
pub const TS_LEN: usize = 2;
/// A sender timestamps a data packet when this long has passed since its last timestamped one.
pub const TS_INTERVAL: Duration = Duration::from_millis(1);
/// Length prefix inside every shard.
pub const SHARD_PREFIX_LEN: usize = 2;
/// Size of a control packet.
pub const CONTROL_LEN: usize = 17;
/// Largest QUIC packet FEC carries (a UDP payload).
pub const MAX_PAYLOAD_LEN: usize = 65_000;
/// Largest total shards in a block (GF(2^8) limit of reed-solomon-erasure).
pub const MAX_SHARDS: usize = 256;
/// Largest coder id (see [`crate::CoderKind`]: 0 reed-solomon-erasure, 1 reed-solomon-simd).
pub const MAX_CODER_ID: u8 = 1;
/// Microseconds per timestamp tick.
pub const TS_TICK_MICROS: u64 = 100;

const KIND_PLAIN: u8 = 0;
const KIND_SOURCE: u8 = 1;
const KIND_REPAIR: u8 = 2;
const KIND_CONTROL: u8 = 3;

/// Receiver's measurement, sent back to the sender in a control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LossReport {
    /// Measured packet loss, parts per million.
    pub loss_ppm: u32,
    /// Mean loss burst length ×1000 (0 when no loss).
    pub burst_milli: u32,
    /// Mean one-way delay above its recent minimum (queueing), microseconds.
    pub queue_delay_us: u32,
    /// Packets the measurement window covers.
    pub packets: u32,
}

/// One decoded FEC packet, borrowing from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Unprotected QUIC packet (repair is off).
    Plain {
        /// Data packet sequence number.
        seq: u16,
        /// Sender timestamp in ticks, on some packets (see [`TS_INTERVAL`]).
        ts: Option<u16>,
        /// The QUIC packet.
        payload: &'a [u8],
    },
    /// QUIC packet that is part of block `block` at position `index`.
    Source {
        /// Data packet sequence number.
        seq: u16,
        /// Sender timestamp in ticks, on some packets (see [`TS_INTERVAL`]).
        ts: Option<u16>,
        /// Block id.
        block: u16,
        /// Position in the block.
        index: u8,
        /// The QUIC packet.
        payload: &'a [u8],
    },
    /// Repair shard `index` (0-based among repairs) of block `block` with `k` sources.
    Repair {
        /// Data packet sequence number.
        seq: u16,
        /// Sender timestamp in ticks, on some packets (see [`TS_INTERVAL`]).
        ts: Option<u16>,
        /// Block id.
        block: u16,
        /// Repair index, `< m`.
        index: u8,
        /// Source packets in the block.
        k: u8,
        /// Repair packets in the block.
        m: u8,
        /// Erasure coder id.
        coder: u8,
        /// The repair shard.
        shard: &'a [u8],
    },
    /// Receiver report.
    Control(LossReport),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn need(&self, n: usize) -> Result<(), FecError> {
        if self.buf.len() - self.pos < n {
            return Err(FecError::Truncated {
                len: self.buf.len(),
                need: self.pos + n,
            });
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, FecError> {
        self.need(1)?;
        let v = self.buf[self.pos];
        self.pos += 1;
        Ok(v)
    }
    fn u16(&mut self) -> Result<u16, FecError> {
        self.need(2)?;
        let v = u16::from_be_bytes([self.buf[self.pos], self.buf[self.pos + 1]]);
        self.pos += 2;
        Ok(v)
    }
    fn u32(&mut self) -> Result<u32, FecError> {
        self.need(4)?;
        let b = &self.buf[self.pos..self.pos + 4];
        self.pos += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn rest(&mut self) -> &'a [u8] {
        let r = &self.buf[self.pos..];
        self.pos = self.buf.len();
        r
    }
    fn finish(&self) -> Result<(), FecError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            extra => Err(FecError::TrailingBytes { extra }),
        }
    }
}

fn range(field: &'static str, value: usize, min: usize, max: usize) -> Result<(), FecError> {
    if value < min || value > max {
        return Err(FecError::OutOfRange {
            field,
            value: value as u64,
            limit: if value < min { min } else { max } as u64,
        });
    }
    Ok(())
}

/// Decodes one datagram. Rejects foreign magic, other versions, reserved flags, out-of-range
/// fields and (for fixed-size kinds) trailing bytes.
pub fn decode(buf: &[u8]) -> Result<Packet<'_>, FecError> {
    let mut r = Reader { buf, pos: 0 };
    let b0 = r.u8()?;
    if b0 & MAGIC_MASK != MAGIC {
        return Err(FecError::NotFec { byte: b0 });
    }
    if b0 & VERSION_MASK != VERSION {
        return Err(FecError::UnsupportedVersion {
            version: b0 & VERSION_MASK,
            supported: VERSION,
        });
    }
    let kind = (b0 >> 4) & 0x03;
    let timed = b0 & TS_FLAG != 0;
    if kind == KIND_CONTROL {
        if timed {
            return Err(FecError::ReservedFlags {
                kind,
                flags: TS_FLAG,
            });
        }
        let report = LossReport {
            loss_ppm: r.u32()?,
            burst_milli: r.u32()?,
            queue_delay_us: r.u32()?,
            packets: r.u32()?,
        };
        r.finish()?;
        range("loss_ppm", report.loss_ppm as usize, 0, 1_000_000)?;
        return Ok(Packet::Control(report));
    }
    let seq = r.u16()?;
    let ts = if timed { Some(r.u16()?) } else { None };
    match kind {
        KIND_PLAIN => {
            let payload = r.rest();
            range("payload length", payload.len(), 1, MAX_PAYLOAD_LEN)?;
            Ok(Packet::Plain { seq, ts, payload })
        }
        KIND_SOURCE => {
            let block = r.u16()?;
            let index = r.u8()?;
            let payload = r.rest();
            range("payload length", payload.len(), 1, MAX_PAYLOAD_LEN)?;
            Ok(Packet::Source {
                seq,
                ts,
                block,
                index,
                payload,
            })
        }
        _ => {
            let block = r.u16()?;
            let index = r.u8()?;
            let k = r.u8()?;
            let m = r.u8()?;
            let coder = r.u8()?;
            range("k", k as usize, 1, MAX_SHARDS)?;
            range("m", m as usize, 1, MAX_SHARDS - k as usize)?;
            range("repair index", index as usize, 0, m as usize - 1)?;
            range("coder", coder as usize, 0, MAX_CODER_ID as usize)?;
            let shard = r.rest();
            range(
                "shard length",
                shard.len(),
                SHARD_PREFIX_LEN + 2,
                MAX_PAYLOAD_LEN + SHARD_PREFIX_LEN + 1,
            )?;
            if !shard.len().is_multiple_of(2) {
                return Err(FecError::OutOfRange {
                    field: "shard length (must be even)",
                    value: shard.len() as u64,
                    limit: (shard.len() + 1) as u64,
                });
            }
            Ok(Packet::Repair {
                seq,
                ts,
                block,
                index,
                k,
                m,
                coder,
                shard,
            })
        }
    }
}

/// Byte 0, the sequence number and the timestamp if any. Returns the header bytes written.
fn head(out: &mut Vec<u8>, kind: u8, seq: u16, ts: Option<u16>) -> usize {
    let flag = if ts.is_some() { TS_FLAG } else { 0 };
    out.push(MAGIC | kind << 4 | flag | VERSION);
    out.extend_from_slice(&seq.to_be_bytes());
    if let Some(ts) = ts {
        out.extend_from_slice(&ts.to_be_bytes());
        3 + TS_LEN
    } else {
        3
    }
}

/// Appends a plain packet to `out`; returns its header length.
pub fn encode_plain(out: &mut Vec<u8>, seq: u16, ts: Option<u16>, payload: &[u8]) -> usize {
    let n = head(out, KIND_PLAIN, seq, ts);
    out.extend_from_slice(payload);
    n
}

/// Appends a source packet to `out`; returns its header length.
pub fn encode_source(
    out: &mut Vec<u8>,
    seq: u16,
    ts: Option<u16>,
    block: u16,
    index: u8,
    payload: &[u8],
) -> usize {
    let n = head(out, KIND_SOURCE, seq, ts);
    out.extend_from_slice(&block.to_be_bytes());
    out.push(index);
    out.extend_from_slice(payload);
    n + 3
}

/// Header fields of a repair packet.
#[derive(Debug, Clone, Copy)]
pub struct RepairHeader {
    /// Sequence number.
    pub seq: u16,
    /// Timestamp ticks, if this packet carries one.
    pub ts: Option<u16>,
    /// Block id.
    pub block: u16,
    /// Repair index.
    pub index: u8,
    /// Sources in block.
    pub k: u8,
    /// Repairs in block.
    pub m: u8,
    /// Coder id.
    pub coder: u8,
}

/// Appends a repair packet to `out`.
pub fn encode_repair(out: &mut Vec<u8>, h: RepairHeader, shard: &[u8]) {
    head(out, KIND_REPAIR, h.seq, h.ts);
    out.extend_from_slice(&h.block.to_be_bytes());
    out.extend_from_slice(&[h.index, h.k, h.m, h.coder]);
    out.extend_from_slice(shard);
}

/// Appends a control packet to `out`.
pub fn encode_control(out: &mut Vec<u8>, r: &LossReport) {
    out.push(MAGIC | KIND_CONTROL << 4 | VERSION);
    for v in [r.loss_ppm, r.burst_milli, r.queue_delay_us, r.packets] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Length of the shard that protects payloads of at most `max_payload` bytes: length prefix plus
/// payload, rounded up to even (reed-solomon-simd needs even shards; one rule for both coders
/// keeps the wire format coder-independent).
pub fn shard_len_for(max_payload: usize) -> usize {
    (SHARD_PREFIX_LEN + max_payload + 1) & !1
}

/// Writes `[len u16][payload][zeros]` of exactly `shard_len` bytes into `out`.
pub fn fill_shard(out: &mut Vec<u8>, payload: &[u8], shard_len: usize) {
    out.clear();
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(shard_len, 0);
}

/// Extracts the payload from a rebuilt shard; the padding must be zero (a cheap integrity check).
pub fn parse_shard(shard: &[u8]) -> Result<&[u8], FecError> {
    if shard.len() < SHARD_PREFIX_LEN {
        return Err(FecError::Truncated {
            len: shard.len(),
            need: SHARD_PREFIX_LEN,
        });
    }
    let len = u16::from_be_bytes([shard[0], shard[1]]) as usize;
    let end = SHARD_PREFIX_LEN + len;
    range(
        "rebuilt payload length",
        len,
        1,
        shard.len() - SHARD_PREFIX_LEN,
    )?;
    if shard[end..].iter().any(|&b| b != 0) {
        return Err(FecError::OutOfRange {
            field: "rebuilt shard padding",
            value: 1,
            limit: 0,
        });
    }
    Ok(&shard[SHARD_PREFIX_LEN..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bare_quic_packet_is_rejected_as_not_fec() {
        // Short-header QUIC packet: fixed bit 0x40 set.
        assert_eq!(
            decode(&[0x43, 1, 2, 3]),
            Err(FecError::NotFec { byte: 0x43 })
        );
        // Version 1's byte 0 (0xA1) is refused by name, not misread.
        assert_eq!(
            decode(&[0xA1, 0, 0, 0, 0, 0, 1]),
            Err(FecError::UnsupportedVersion {
                version: 1,
                supported: 2
            })
        );
    }

    #[test]
    fn every_kind_round_trips() {
        let mut b = Vec::new();
        assert_eq!(
            encode_plain(&mut b, 7, Some(9), b"abc"),
            PLAIN_HEADER_LEN + TS_LEN
        );
        assert_eq!(
            decode(&b).unwrap(),
            Packet::Plain {
                seq: 7,
                ts: Some(9),
                payload: b"abc"
            }
        );
        b.clear();
        assert_eq!(encode_plain(&mut b, 8, None, b"abc"), PLAIN_HEADER_LEN);
        assert_eq!(b.len(), PLAIN_HEADER_LEN + 3);
        assert_eq!(
            decode(&b).unwrap(),
            Packet::Plain {
                seq: 8,
                ts: None,
                payload: b"abc"
            }
        );
        b.clear();
        assert_eq!(
            encode_source(&mut b, 1, Some(2), 300, 5, b"xy"),
            SOURCE_HEADER_LEN + TS_LEN
        );
        assert_eq!(b.len(), SOURCE_HEADER_LEN + TS_LEN + 2);
        assert!(matches!(
            decode(&b).unwrap(),
            Packet::Source {
                block: 300,
                index: 5,
                ..
            }
        ));
        b.clear();
        let h = RepairHeader {
            seq: 1,
            ts: Some(2),
            block: 3,
            index: 1,
            k: 4,
            m: 2,
            coder: 1,
        };
        encode_repair(&mut b, h, &[0, 1, 7, 0]);
        assert_eq!(b.len(), REPAIR_HEADER_LEN + TS_LEN + 4);
        assert_eq!(
            b.len(),
            FEC_HEADER_LEN + 1,
            "a 1-byte payload's repair packet"
        );
        assert!(matches!(
            decode(&b).unwrap(),
            Packet::Repair {
                k: 4,
                m: 2,
                coder: 1,
                ..
            }
        ));
        b.clear();
        let r = LossReport {
            loss_ppm: 10_000,
            burst_milli: 1500,
            queue_delay_us: 3,
            packets: 99,
        };
        encode_control(&mut b, &r);
        assert_eq!(b.len(), CONTROL_LEN);
        assert_eq!(decode(&b).unwrap(), Packet::Control(r));
        b.push(0);
        assert_eq!(decode(&b), Err(FecError::TrailingBytes { extra: 1 }));
    }

    #[test]
    fn repair_fields_are_range_checked() {
        let mut b = Vec::new();
        let h = RepairHeader {
            seq: 0,
            ts: None,
            block: 0,
            index: 2,
            k: 4,
            m: 2,
            coder: 0,
        };
        encode_repair(&mut b, h, &[0, 1, 7, 0]);
        assert!(matches!(
            decode(&b),
            Err(FecError::OutOfRange {
                field: "repair index",
                ..
            })
        ));
        b.clear();
        encode_repair(
            &mut b,
            RepairHeader {
                index: 0,
                coder: MAX_CODER_ID + 1,
                ..h
            },
            &[0, 1, 7, 0],
        );
        assert!(matches!(
            decode(&b),
            Err(FecError::OutOfRange { field: "coder", .. })
        ));
    }

    #[test]
    fn a_timestamp_flag_on_a_control_packet_is_refused() {
        let mut b = Vec::new();
        encode_control(&mut b, &LossReport::default());
        b[0] |= TS_FLAG;
        assert!(matches!(
            decode(&b),
            Err(FecError::ReservedFlags { kind: 3, .. })
        ));
    }

    #[test]
    fn shard_round_trip_and_padding_check() {
        let mut s = Vec::new();
        fill_shard(&mut s, b"hello", shard_len_for(8));
        assert_eq!(s.len(), 10);
        assert_eq!(parse_shard(&s).unwrap(), b"hello");
        s[9] = 1;
        assert!(parse_shard(&s).is_err());
    }
}
