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
//!   |  data direction:  Literal / Refs / Delta / End -->|  each chunk verified by id
//!   |<----------------  Want / Ack  (control for it)    |
//!   |  (and the same, mirrored, core -> edge)           |
//! ```
//!
//! Every frame is `[type: u8][body length: u32 BE][body]`. Bodies are decoded with a bounds-checked
//! [`Reader`] that rejects trailing bytes; every length is capped ([`MAX_FRAME_LEN`],
//! [`MAX_REFS_PER_FRAME`], [`MAX_NAME_LEN`]).

use bytes::{BufMut, Bytes, BytesMut};

/// Protocol version carried in [`Frame::Hello`]; a peer speaking another version is refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// ALPN identifier of the tunnel.
pub const ALPN: &[u8] = b"strait/1";
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
    },
    /// Core accepts the tunnel.
    HelloOk {
        /// Version the core speaks.
        version: u16,
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
    /// A text field is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// Which field.
        what: &'static str,
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
            } => {
                out.put_u16(*version);
                out.put_slice(key_fingerprint);
                T_HELLO
            }
            Frame::HelloOk { version } => {
                out.put_u16(*version);
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
                }
            }
            T_HELLO_OK => Frame::HelloOk { version: r.u16()? },
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
                let len = r.u32()?;
                if len as usize > MAX_CHUNK_LEN {
                    return Err(Error::OverLimit {
                        what: "chunk length",
                        value: len as usize,
                        max: MAX_CHUNK_LEN,
                    });
                }
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
                    let len = r.u32()?;
                    if len as usize > MAX_CHUNK_LEN {
                        return Err(Error::OverLimit {
                            what: "chunk length",
                            value: len as usize,
                            max: MAX_CHUNK_LEN,
                        });
                    }
                    refs.push(ChunkRef { id, len });
                }
                Frame::Refs(refs)
            }
            T_DELTA => {
                let id = r.id()?;
                let codec = r.u8()?;
                let len = r.u32()?;
                if len as usize > MAX_CHUNK_LEN {
                    return Err(Error::OverLimit {
                        what: "chunk length",
                        value: len as usize,
                        max: MAX_CHUNK_LEN,
                    });
                }
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
                    let len = r.u32()?;
                    if len as usize > MAX_CHUNK_LEN {
                        return Err(Error::OverLimit {
                            what: "base chunk length",
                            value: len as usize,
                            max: MAX_CHUNK_LEN,
                        });
                    }
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
        let mut whole = self.buf.split_to(FRAME_HEADER_LEN + len);
        let body = whole.split_off(FRAME_HEADER_LEN).freeze();
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
