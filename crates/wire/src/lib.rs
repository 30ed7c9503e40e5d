//! Tunnel wire protocol: the frames carried on the QUIC streams between an edge and a core.
//!
//! Performs no I/O and reads no clock. Everything here is a pure function of bytes, so it can be
//! tested and fuzzed without sockets (`fuzz/fuzz_targets/frame.rs`).
//!
//! ```text
//!  edge                                   core
//!   |  control stream (bi, first):  Hello ------------->|  key fingerprint + version check
//!   |<------------------------------ HelloOk | Refuse   |
//!   |  one bi stream per TCP flow:   Open{service} ---->|  core checks its service table
//!   |<------------------------------ OpenOk | Refuse    |
//!   |  data direction:  Literal / Refs / Delta /        |  each chunk verified by id
//!   |                   DeltaRun / End ---------------->|  (a run: by the digest of its ids)
//!   |<----------------  Want / Ack  (control for it)    |
//!   |  (and the same, mirrored, core -> edge)           |
//! ```
//!
//! Every frame is `[type: u8][body length: u32 BE][body]`. Bodies are decoded with a bounds-checked
//! [`Reader`] that rejects trailing bytes; every length is capped ([`MAX_FRAME_LEN`],
//! [`MAX_REFS_PER_FRAME`], [`MAX_NAME_LEN`], [`MAX_RUN_ITEMS`]); varints are at most 5 bytes and
//! minimally encoded.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version carried in [`Frame::Hello`]; a peer speaking another version is refused.
/// Version 2: `Hello` and `HelloOk` carry the sender's max chunk.
pub const PROTOCOL_VERSION: u16 = 2;
/// ALPN identifier of the tunnel (names the protocol version, so a peer of another version fails
/// the TLS handshake with a clear "no application protocol" alert).
pub const ALPN: &[u8] = b"strait/2";
/// Frame header: type byte + u32 body length.
pub const FRAME_HEADER_LEN: usize = 5;
/// Largest chunk a peer may send (literal payload or decoded length).
pub const MAX_CHUNK_LEN: usize = 16 * 1024 * 1024;
/// Largest frame body accepted: one maximal chunk plus its literal header.
pub const MAX_FRAME_LEN: usize = MAX_CHUNK_LEN + 64;
/// Most chunk references (or wanted ids) in one frame.
pub const MAX_REFS_PER_FRAME: usize = 4096;
/// Longest service/route/peer name or reason text.
pub const MAX_NAME_LEN: usize = 1024;
/// Most base chunks one [`Frame::Delta`] may name.
pub const MAX_DELTA_BASES: usize = 4;
/// Delta payload codec: one zstd frame with the bases, concatenated in frame order, as prefix.
pub const DELTA_ZSTD_PREFIX: u8 = 1;
/// Length of a chunk id (keyed BLAKE3).
pub const ID_LEN: usize = 32;
/// Most items one [`Frame::DeltaRun`] may carry.
pub const MAX_RUN_ITEMS: usize = 256;
/// Most places a [`BaseRef::Next`] may step along the peer's chunk order.
pub const MAX_NEXT_STEPS: u8 = 32;
/// Bytes of a [`BaseRef::Prefix`].
pub const BASE_PREFIX_LEN: usize = 8;

/// A chunk id as it travels on the wire.
pub type WireId = [u8; ID_LEN];

/// Why a peer refused a stream or a tunnel. Codes are stable on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseCode {
    /// The core does not declare the requested service.
    UnknownService,
    /// The core could not connect to the service's upstream.
    UpstreamUnreachable,
    /// Protocol version mismatch.
    Version,
    /// Dedup keys differ between edge and core (chunk ids would never match).
    KeyMismatch,
    /// A policy denied the flow.
    Denied,
    /// The peer is shutting down.
    ShuttingDown,
    /// Anything else; the reason text says what.
    Other,
}

impl RefuseCode {
    fn to_u16(self) -> u16 {
        match self {
            RefuseCode::UnknownService => 1,
            RefuseCode::UpstreamUnreachable => 2,
            RefuseCode::Version => 3,
            RefuseCode::KeyMismatch => 4,
            RefuseCode::Denied => 5,
            RefuseCode::ShuttingDown => 6,
            RefuseCode::Other => 0xffff,
        }
    }
    fn from_u16(v: u16) -> RefuseCode {
        match v {
            1 => RefuseCode::UnknownService,
            2 => RefuseCode::UpstreamUnreachable,
            3 => RefuseCode::Version,
            4 => RefuseCode::KeyMismatch,
            5 => RefuseCode::Denied,
            6 => RefuseCode::ShuttingDown,
            _ => RefuseCode::Other,
        }
    }
}

/// How a literal chunk's payload is encoded (mirrors `strait_codec::CodecId` on the wire).
pub type CodecByte = u8;

/// A chunk reference: id and the chunk's length (so the receiver can check what it expands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// Keyed BLAKE3 of the chunk.
    pub id: WireId,
    /// Decoded length in bytes.
    pub len: u32,
}

/// How a [`Frame::DeltaRun`] item names its base chunk. The receiver resolves it among the chunks
/// exchanged with the sending peer only; a name it cannot resolve (or resolves to the wrong
/// chunk) makes the run fail verification and go through the miss path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseRef {
    /// The chunk this many places (1..=[`MAX_NEXT_STEPS`]) after the previous item's base — for
    /// a run's first item, after the flow's last chunk before the run (a reference's or literal's
    /// own id, a delta item's base) — in the order chunks crossed between the two peers.
    Next(u8),
    /// The chunk exchanged with this peer whose id starts with these bytes.
    Prefix([u8; BASE_PREFIX_LEN]),
    /// The chunk with this id.
    Id(WireId),
}

/// One chunk of a [`Frame::DeltaRun`], in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunItem {
    /// The chunk is its base, unchanged (a compact reference).
    Same(BaseRef),
    /// The chunk is the next `base length + len_diff` bytes of the run's decoded payload.
    Delta {
        /// The base chunk.
        base: BaseRef,
        /// The chunk's length minus the base's (|len_diff| ≤ [`MAX_CHUNK_LEN`]).
        len_diff: i32,
    },
}

/// One tunnel frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// First frame of the control stream, edge → core.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u16,
        /// Fingerprint of the dedup key (never the key itself).
        key_fingerprint: [u8; 16],
        /// The edge's `dedup.max_chunk`: the core refuses longer chunks from it
        /// (1..=[`MAX_CHUNK_LEN`]).
        max_chunk: u32,
    },
    /// Core accepts the tunnel.
    HelloOk {
        /// Version the core speaks.
        version: u16,
        /// The core's `dedup.max_chunk`: the edge refuses longer chunks from it
        /// (1..=[`MAX_CHUNK_LEN`]).
        max_chunk: u32,
    },
    /// First frame of a flow stream, edge → core: connect me to this service.
    Open {
        /// Service name as declared in the core's config.
        service: String,
        /// The edge's route name (for logs and statistics).
        route: String,
    },
    /// The core connected the upstream; data may flow.
    OpenOk,
    /// A stream or tunnel is refused.
    Refuse {
        /// Machine-readable reason.
        code: RefuseCode,
        /// Human-readable reason.
        reason: String,
    },
    /// A chunk carried in full. `codec` says how `payload` is encoded.
    Literal {
        /// Chunk id the receiver verifies the decoded bytes against.
        id: WireId,
        /// Payload codec.
        codec: CodecByte,
        /// Decoded length.
        len: u32,
        /// Encoded bytes.
        payload: Bytes,
    },
    /// Chunks the sender believes the receiver has, in stream order.
    Refs(Vec<ChunkRef>),
    /// A chunk sent because the receiver asked for it (not part of the ordered data).
    Supply {
        /// Chunk id.
        id: WireId,
        /// Payload codec.
        codec: CodecByte,
        /// Decoded length.
        len: u32,
        /// Encoded bytes.
        payload: Bytes,
    },
    /// A chunk coded against base chunks the sender knows the receiver holds (a near-duplicate
    /// of them). Part of the ordered data, like a literal; the receiver rebuilds it from its
    /// stored bases and verifies it against `id`. A base it lacks makes the chunk a miss.
    Delta {
        /// Chunk id the receiver verifies the rebuilt bytes against.
        id: WireId,
        /// Payload codec ([`DELTA_ZSTD_PREFIX`]).
        codec: CodecByte,
        /// Decoded length.
        len: u32,
        /// Base chunks, in prefix order (1..=[`MAX_DELTA_BASES`]).
        bases: Vec<ChunkRef>,
        /// Encoded bytes.
        payload: Bytes,
    },
    /// Consecutive chunks of the ordered data, each the same as or a near-duplicate of a base
    /// chunk the receiver holds, coded together: per chunk a compact base reference (and a length
    /// difference), and one zstd frame ([`DELTA_ZSTD_PREFIX`]) of the `Delta` items' bytes
    /// concatenated, with their distinct bases, concatenated in order of first use, as prefix.
    /// The receiver hashes every rebuilt chunk itself and delivers the run only if the digest of
    /// the ids in order equals `digest`; otherwise it sends `Want([digest])` and the sender
    /// supplies every chunk of the run.
    DeltaRun {
        /// Digest over the ordered chunk ids of the run (see `strait-dedup`).
        digest: WireId,
        /// The chunks, in stream order (1..=[`MAX_RUN_ITEMS`]).
        items: Vec<RunItem>,
        /// One zstd frame (empty when no item is a `Delta`).
        payload: Bytes,
    },
    /// Bytes `from..to` of a chunk the sender believes the receiver holds: a preview of the
    /// chunk the sender's client paused in, predicted from the order chunks crossed before. The
    /// sender checked that its open chunk's first `to` bytes are this chunk's; `from` is what
    /// earlier previews of the open chunk delivered. Part of the ordered data (one item).
    Part {
        /// The predicted chunk.
        id: WireId,
        /// Its length.
        len: u32,
        /// First byte delivered.
        from: u32,
        /// End of the bytes delivered (`from < to <= len`).
        to: u32,
    },
    /// The sender's data direction is finished (TCP half-close).
    End,
    /// The receiver lacks these chunks (miss or failed verification): please supply them.
    Want(Vec<WireId>),
    /// Cumulative count of data items (literals + refs) the receiver has delivered.
    Ack(u64),
    /// Ask the peer to also send a flush of any partial chunk (reserved, unused by v1 senders).
    Ping(u64),
}

const T_HELLO: u8 = 0x01;
const T_HELLO_OK: u8 = 0x02;
const T_OPEN: u8 = 0x03;
const T_OPEN_OK: u8 = 0x04;
const T_REFUSE: u8 = 0x05;
const T_LITERAL: u8 = 0x10;
const T_REFS: u8 = 0x11;
const T_SUPPLY: u8 = 0x12;
const T_END: u8 = 0x13;
const T_DELTA: u8 = 0x14;
const T_DELTA_RUN: u8 = 0x15;
const T_PART: u8 = 0x16;
const T_WANT: u8 = 0x20;
const T_ACK: u8 = 0x21;
const T_PING: u8 = 0x22;

/// Errors decoding a frame. Every variant names the offending value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Unknown frame type byte.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A frame body is longer than allowed.
    #[error("frame length {len} exceeds limit {max}")]
    FrameTooLong {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The body ended before a field was complete.
    #[error("frame type 0x{ty:02x} truncated: needed {needed} more bytes at offset {at}")]
    Truncated {
        /// Frame type.
        ty: u8,
        /// Bytes missing.
        needed: usize,
        /// Offset in the body.
        at: usize,
    },
    /// Bytes left over after the last field.
    #[error("frame type 0x{ty:02x} has {extra} trailing bytes")]
    Trailing {
        /// Frame type.
        ty: u8,
        /// Number of leftover bytes.
        extra: usize,
    },
    /// A count or length field is over its cap.
    #[error("{what} {value} exceeds limit {max}")]
    OverLimit {
        /// Which field.
        what: &'static str,
        /// Value received.
        value: usize,
        /// Limit.
        max: usize,
    },
    /// A field that must be positive is zero.
    #[error("{what} is zero; it must be at least 1")]
    Zero {
        /// Which field.
        what: &'static str,
    },
    /// A text field is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// Which field.
        what: &'static str,
    },
    /// A varint is longer than its type, not minimally encoded, or out of range.
    #[error("{what}: malformed varint at offset {at}")]
    BadVarint {
        /// Which field.
        what: &'static str,
        /// Offset in the body.
        at: usize,
    },
    /// A delta-run item tag is not one this version defines.
    #[error("delta run item {index}: invalid tag 0x{tag:02x}")]
    BadRunItem {
        /// Item index.
        index: usize,
        /// The tag byte.
        tag: u8,
    },
}

/// Bounds-checked reader over a frame body.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    ty: u8,
}

impl<'a> Reader<'a> {
    /// Reader over `buf`, a body of frame type `ty` (for error messages).
    pub fn new(ty: u8, buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0, ty }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(Error::Truncated {
                ty: self.ty,
                needed: n - rest,
                at: self.pos,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A chunk length (`what` names it in the error), at most [`MAX_CHUNK_LEN`].
    fn chunk_len(&mut self, what: &'static str) -> Result<u32, Error> {
        let len = self.u32()?;
        if len as usize > MAX_CHUNK_LEN {
            return Err(Error::OverLimit {
                what,
                value: len as usize,
                max: MAX_CHUNK_LEN,
            });
        }
        Ok(len)
    }
    /// A peer's announced max chunk: 1..=[`MAX_CHUNK_LEN`].
    fn max_chunk(&mut self) -> Result<u32, Error> {
        let v = self.chunk_len("announced max chunk")?;
        if v == 0 {
            return Err(Error::Zero {
                what: "announced max chunk",
            });
        }
        Ok(v)
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn id(&mut self) -> Result<WireId, Error> {
        let b = self.take(ID_LEN)?;
        let mut a = [0u8; ID_LEN];
        a.copy_from_slice(b);
        Ok(a)
    }
    fn string(&mut self, what: &'static str) -> Result<String, Error> {
        let len = self.u16()? as usize;
        if len > MAX_NAME_LEN {
            return Err(Error::OverLimit {
                what,
                value: len,
                max: MAX_NAME_LEN,
            });
        }
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::BadUtf8 { what })
    }
    /// An unsigned LEB128 varint of at most 5 bytes, minimally encoded, fitting a `u32`.
    fn varint(&mut self, what: &'static str) -> Result<u32, Error> {
        let at = self.pos;
        let mut v: u64 = 0;
        for i in 0..5 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if (i > 0 && b == 0) || v > u64::from(u32::MAX) {
                    return Err(Error::BadVarint { what, at });
                }
                return Ok(v as u32);
            }
        }
        Err(Error::BadVarint { what, at })
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    fn finish(self) -> Result<(), Error> {
        let extra = self.buf.len() - self.pos;
        if extra != 0 {
            return Err(Error::Trailing { ty: self.ty, extra });
        }
        Ok(())
    }
}

fn put_delta_fields(out: &mut BytesMut, id: &WireId, codec: u8, len: u32, bases: &[ChunkRef]) {
    out.put_slice(id);
    out.put_u8(codec);
    out.put_u32(len);
    out.put_u8(bases.len() as u8);
    for b in bases {
        out.put_slice(&b.id);
        out.put_u32(b.len);
    }
}

fn put_varint(out: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn varint_len(v: u32) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0xfff_ffff => 4,
        _ => 5,
    }
}

fn zigzag(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

fn unzigzag(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

const RUN_TAG_DELTA: u8 = 0x01;
const RUN_KIND_NEXT: u8 = 0;
const RUN_KIND_PREFIX: u8 = 1;
const RUN_KIND_ID: u8 = 2;

impl RunItem {
    /// The item's base reference.
    pub fn base(&self) -> &BaseRef {
        match self {
            RunItem::Same(b) | RunItem::Delta { base: b, .. } => b,
        }
    }

    /// Bytes this item takes on the wire.
    pub fn encoded_len(&self) -> usize {
        let base = match self.base() {
            BaseRef::Next(_) => 0,
            BaseRef::Prefix(_) => BASE_PREFIX_LEN,
            BaseRef::Id(_) => ID_LEN,
        };
        let diff = match self {
            RunItem::Same(_) => 0,
            RunItem::Delta { len_diff, .. } => varint_len(zigzag(*len_diff)),
        };
        1 + base + diff
    }

    fn encode(&self, out: &mut BytesMut) {
        let delta = matches!(self, RunItem::Delta { .. }) as u8;
        match self.base() {
            BaseRef::Next(steps) => {
                // Callers keep steps in 1..=MAX_NEXT_STEPS; clamp rather than emit a bad tag.
                let s = (*steps).clamp(1, MAX_NEXT_STEPS) - 1;
                out.put_u8(delta | (RUN_KIND_NEXT << 1) | (s << 3));
            }
            BaseRef::Prefix(p) => {
                out.put_u8(delta | (RUN_KIND_PREFIX << 1));
                out.put_slice(p);
            }
            BaseRef::Id(id) => {
                out.put_u8(delta | (RUN_KIND_ID << 1));
                out.put_slice(id);
            }
        }
        if let RunItem::Delta { len_diff, .. } = self {
            put_varint(out, zigzag(*len_diff));
        }
    }

    fn decode(r: &mut Reader<'_>, index: usize) -> Result<RunItem, Error> {
        let tag = r.u8()?;
        let high = tag >> 3;
        let base = match (tag >> 1) & 0x3 {
            RUN_KIND_NEXT => BaseRef::Next(high + 1),
            RUN_KIND_PREFIX if high == 0 => {
                let mut p = [0u8; BASE_PREFIX_LEN];
                p.copy_from_slice(r.take(BASE_PREFIX_LEN)?);
                BaseRef::Prefix(p)
            }
            RUN_KIND_ID if high == 0 => BaseRef::Id(r.id()?),
            _ => return Err(Error::BadRunItem { index, tag }),
        };
        if tag & RUN_TAG_DELTA == 0 {
            return Ok(RunItem::Same(base));
        }
        let len_diff = unzigzag(r.varint("delta run length difference")?);
        if len_diff.unsigned_abs() as usize > MAX_CHUNK_LEN {
            return Err(Error::OverLimit {
                what: "delta run length difference",
                value: len_diff.unsigned_abs() as usize,
                max: MAX_CHUNK_LEN,
            });
        }
        Ok(RunItem::Delta { base, len_diff })
    }
}

fn put_run_fields(out: &mut BytesMut, digest: &WireId, items: &[RunItem]) {
    out.put_slice(digest);
    put_varint(out, items.len() as u32);
    for it in items {
        it.encode(out);
    }
}

fn put_string(out: &mut BytesMut, s: &str) {
    // Callers never produce names over MAX_NAME_LEN (config validation caps them); truncate
    // defensively on a char boundary rather than emit a frame the peer must reject.
    let mut end = s.len().min(MAX_NAME_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(0);
        out.put_u32(0);
        let ty = match self {
            Frame::Hello {
                version,
                key_fingerprint,
                max_chunk,
            } => {
                out.put_u16(*version);
                out.put_slice(key_fingerprint);
                out.put_u32(*max_chunk);
                T_HELLO
            }
            Frame::HelloOk { version, max_chunk } => {
                out.put_u16(*version);
                out.put_u32(*max_chunk);
                T_HELLO_OK
            }
            Frame::Open { service, route } => {
                put_string(out, service);
                put_string(out, route);
                T_OPEN
            }
            Frame::OpenOk => T_OPEN_OK,
            Frame::Refuse { code, reason } => {
                out.put_u16(code.to_u16());
                put_string(out, reason);
                T_REFUSE
            }
            Frame::Literal {
                id,
                codec,
                len,
                payload,
            } => {
                out.put_slice(id);
                out.put_u8(*codec);
                out.put_u32(*len);
                out.put_slice(payload);
                T_LITERAL
            }
            Frame::Supply {
                id,
                codec,
                len,
                payload,
            } => {
                out.put_slice(id);
                out.put_u8(*codec);
                out.put_u32(*len);
                out.put_slice(payload);
                T_SUPPLY
            }
            Frame::Refs(refs) => {
                out.put_u16(refs.len() as u16);
                for r in refs {
                    out.put_slice(&r.id);
                    out.put_u32(r.len);
                }
                T_REFS
            }
            Frame::Delta {
                id,
                codec,
                len,
                bases,
                payload,
            } => {
                put_delta_fields(out, id, *codec, *len, bases);
                out.put_slice(payload);
                T_DELTA
            }
            Frame::DeltaRun {
                digest,
                items,
                payload,
            } => {
                put_run_fields(out, digest, items);
                out.put_slice(payload);
                T_DELTA_RUN
            }
            Frame::Part { id, len, from, to } => {
                out.put_slice(id);
                out.put_u32(*len);
                out.put_u32(*from);
                out.put_u32(*to);
                T_PART
            }
            Frame::End => T_END,
            Frame::Want(ids) => {
                out.put_u16(ids.len() as u16);
                for id in ids {
                    out.put_slice(id);
                }
                T_WANT
            }
            Frame::Ack(n) => {
                out.put_u64(*n);
                T_ACK
            }
            Frame::Ping(n) => {
                out.put_u64(*n);
                T_PING
            }
        };
        let body_len = (out.len() - start - FRAME_HEADER_LEN) as u32;
        out[start] = ty;
        out[start + 1..start + 5].copy_from_slice(&body_len.to_be_bytes());
    }

    /// Bytes a literal or supply frame adds around its payload.
    pub fn literal_overhead() -> usize {
        FRAME_HEADER_LEN + ID_LEN + 1 + 4
    }

    /// Appends a `Literal` (or, with `supply`, a `Supply`) frame without first copying the
    /// payload into a `Bytes`. Encodes exactly what `Frame::encode` would.
    pub fn encode_chunk(
        out: &mut BytesMut,
        supply: bool,
        id: &WireId,
        codec: CodecByte,
        len: u32,
        payload: &[u8],
    ) {
        out.reserve(Self::literal_overhead() + payload.len());
        out.put_u8(if supply { T_SUPPLY } else { T_LITERAL });
        out.put_u32((ID_LEN + 1 + 4 + payload.len()) as u32);
        out.put_slice(id);
        out.put_u8(codec);
        out.put_u32(len);
        out.put_slice(payload);
    }

    /// Appends a `Delta` frame without first copying the payload into a `Bytes`. Encodes exactly
    /// what `Frame::encode` would. `bases` must hold 1..=[`MAX_DELTA_BASES`] entries.
    pub fn encode_delta(
        out: &mut BytesMut,
        id: &WireId,
        codec: CodecByte,
        len: u32,
        bases: &[ChunkRef],
        payload: &[u8],
    ) {
        let body = ID_LEN + 1 + 4 + 1 + bases.len() * (ID_LEN + 4) + payload.len();
        out.reserve(FRAME_HEADER_LEN + body);
        out.put_u8(T_DELTA);
        out.put_u32(body as u32);
        put_delta_fields(out, id, codec, len, bases);
        out.put_slice(payload);
    }

    /// Appends a `DeltaRun` frame without first copying the payload into a `Bytes`. Encodes
    /// exactly what `Frame::encode` would. `items` must hold 1..=[`MAX_RUN_ITEMS`] entries.
    pub fn encode_delta_run(
        out: &mut BytesMut,
        digest: &WireId,
        items: &[RunItem],
        payload: &[u8],
    ) {
        let body = Self::delta_run_overhead(items) - FRAME_HEADER_LEN + payload.len();
        out.reserve(FRAME_HEADER_LEN + body);
        out.put_u8(T_DELTA_RUN);
        out.put_u32(body as u32);
        put_run_fields(out, digest, items);
        out.put_slice(payload);
    }

    /// Bytes a delta-run frame adds around its payload.
    pub fn delta_run_overhead(items: &[RunItem]) -> usize {
        FRAME_HEADER_LEN
            + ID_LEN
            + varint_len(items.len() as u32)
            + items.iter().map(RunItem::encoded_len).sum::<usize>()
    }

    /// Bytes a delta frame adds around its payload.
    pub fn delta_overhead(bases: usize) -> usize {
        FRAME_HEADER_LEN + ID_LEN + 1 + 4 + 1 + bases * (ID_LEN + 4)
    }

    /// Decodes one frame body of type `ty`. The body must be complete; trailing bytes are an error.
    pub fn decode_body(ty: u8, body: Bytes) -> Result<Frame, Error> {
        if body.len() > MAX_FRAME_LEN {
            return Err(Error::FrameTooLong {
                len: body.len(),
                max: MAX_FRAME_LEN,
            });
        }
        let mut r = Reader::new(ty, &body);
        let frame = match ty {
            T_HELLO => {
                let version = r.u16()?;
                let mut key_fingerprint = [0u8; 16];
                key_fingerprint.copy_from_slice(r.take(16)?);
                Frame::Hello {
                    version,
                    key_fingerprint,
                    max_chunk: r.max_chunk()?,
                }
            }
            T_HELLO_OK => Frame::HelloOk {
                version: r.u16()?,
                max_chunk: r.max_chunk()?,
            },
            T_OPEN => {
                let service = r.string("service name length")?;
                let route = r.string("route name length")?;
                Frame::Open { service, route }
            }
            T_OPEN_OK => Frame::OpenOk,
            T_REFUSE => {
                let code = RefuseCode::from_u16(r.u16()?);
                let reason = r.string("reason length")?;
                Frame::Refuse { code, reason }
            }
            T_LITERAL | T_SUPPLY => {
                let id = r.id()?;
                let codec = r.u8()?;
                let len = r.chunk_len("chunk length")?;
                let start = r.pos;
                let payload_len = r.rest().len();
                if payload_len > MAX_CHUNK_LEN {
                    return Err(Error::OverLimit {
                        what: "literal payload length",
                        value: payload_len,
                        max: MAX_CHUNK_LEN,
                    });
                }
                let payload = body.slice(start..);
                if ty == T_LITERAL {
                    Frame::Literal {
                        id,
                        codec,
                        len,
                        payload,
                    }
                } else {
                    Frame::Supply {
                        id,
                        codec,
                        len,
                        payload,
                    }
                }
            }
            T_REFS => {
                let n = r.u16()? as usize;
                if n > MAX_REFS_PER_FRAME {
                    return Err(Error::OverLimit {
                        what: "reference count",
                        value: n,
                        max: MAX_REFS_PER_FRAME,
                    });
                }
                let mut refs = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.id()?;
                    let len = r.chunk_len("chunk length")?;
                    refs.push(ChunkRef { id, len });
                }
                Frame::Refs(refs)
            }
            T_DELTA => {
                let id = r.id()?;
                let codec = r.u8()?;
                let len = r.chunk_len("chunk length")?;
                let n = r.u8()? as usize;
                if n == 0 || n > MAX_DELTA_BASES {
                    return Err(Error::OverLimit {
                        what: "delta base count (must be at least 1)",
                        value: n,
                        max: MAX_DELTA_BASES,
                    });
                }
                let mut bases = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.id()?;
                    let len = r.chunk_len("base chunk length")?;
                    bases.push(ChunkRef { id, len });
                }
                let start = r.pos;
                let payload_len = r.rest().len();
                if payload_len > MAX_CHUNK_LEN {
                    return Err(Error::OverLimit {
                        what: "delta payload length",
                        value: payload_len,
                        max: MAX_CHUNK_LEN,
                    });
                }
                Frame::Delta {
                    id,
                    codec,
                    len,
                    bases,
                    payload: body.slice(start..),
                }
            }
            T_DELTA_RUN => {
                let digest = r.id()?;
                let n = r.varint("delta run item count")? as usize;
                if n == 0 || n > MAX_RUN_ITEMS {
                    return Err(Error::OverLimit {
                        what: "delta run item count (must be at least 1)",
                        value: n,
                        max: MAX_RUN_ITEMS,
                    });
                }
                let mut items = Vec::with_capacity(n);
                for i in 0..n {
                    items.push(RunItem::decode(&mut r, i)?);
                }
                let start = r.pos;
                let payload_len = r.rest().len();
                if payload_len > MAX_CHUNK_LEN {
                    return Err(Error::OverLimit {
                        what: "delta run payload length",
                        value: payload_len,
                        max: MAX_CHUNK_LEN,
                    });
                }
                Frame::DeltaRun {
                    digest,
                    items,
                    payload: body.slice(start..),
                }
            }
            T_PART => {
                let id = r.id()?;
                let len = r.chunk_len("chunk length")?;
                let from = r.u32()?;
                let to = r.u32()?;
                if from >= to || to > len {
                    return Err(Error::OverLimit {
                        what: "part range end (must exceed its start)",
                        value: to as usize,
                        max: len as usize,
                    });
                }
                Frame::Part { id, len, from, to }
            }
            T_END => Frame::End,
            T_WANT => {
                let n = r.u16()? as usize;
                if n > MAX_REFS_PER_FRAME {
                    return Err(Error::OverLimit {
                        what: "wanted id count",
                        value: n,
                        max: MAX_REFS_PER_FRAME,
                    });
                }
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(r.id()?);
                }
                Frame::Want(ids)
            }
            T_ACK => Frame::Ack(r.u64()?),
            T_PING => Frame::Ping(r.u64()?),
            other => return Err(Error::UnknownType(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

/// Incremental frame decoder over a byte stream: feed bytes, take whole frames.
///
/// Holds at most one partial frame ([`MAX_FRAME_LEN`] + header) of buffered input.
#[derive(Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        FrameDecoder::default()
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the buffer has allocated (what it costs in memory).
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    /// How many more bytes are needed before [`FrameDecoder::next_frame`] can make progress
    /// (at least 1 when it returned `Ok(None)`).
    pub fn wanted(&self) -> usize {
        if self.buf.len() < FRAME_HEADER_LEN {
            return FRAME_HEADER_LEN - self.buf.len();
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        (FRAME_HEADER_LEN + len)
            .saturating_sub(self.buf.len())
            .max(1)
    }

    /// Next complete frame and its encoded length, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<(Frame, usize)>, Error> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let ty = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(Error::FrameTooLong {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        // The body is copied into its own allocation: a frame's payload may stay queued for long
        // (for a slow client), and a slice would pin the whole receive buffer it came from,
        // frames before and after it included. The buffer itself is freed whenever it empties,
        // so an idle flow holds none.
        let body = Bytes::copy_from_slice(&self.buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len]);
        self.buf.advance(FRAME_HEADER_LEN + len);
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        Frame::decode_body(ty, body).map(|f| Some((f, FRAME_HEADER_LEN + len)))
    }
}

/// Decodes all frames in `data` (for fuzzing and tests): every frame, then whether bytes remain.
pub fn decode_all(data: &[u8]) -> Result<(Vec<Frame>, usize), Error> {
    let mut d = FrameDecoder::new();
    d.extend(data);
    let mut frames = Vec::new();
    while let Some((f, _)) = d.next_frame()? {
        frames.push(f);
    }
    Ok((frames, d.buffered()))
}

#[cfg(test)]
mod tests;
