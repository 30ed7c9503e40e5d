//! Forward error correction below QUIC: a layer over the UDP socket quinn uses, so packets FEC
//! rebuilds reach QUIC as if received (no retransmission round trip, no false congestion signal
//! for random loss).
//!
//! Owns: the FEC wire format ([`packet`]), erasure coders behind [`ErasureCoder`], the sans-IO
//! [`Encoder`]/[`Decoder`]/[`Session`] state machines, the adaptive controller ([`controller`]),
//! and the quinn socket wrapper ([`wrap_socket`]). Never does: QUIC, TLS, or anything above the
//! datagram; it never authenticates packets (a forged or corrupt rebuilt packet is rejected by
//! QUIC's AEAD) and never hides congestion: repair stops growing when loss comes with queueing
//! delay (RFC 9265).
//!
//! ```text
//!   quinn ──try_send──▶ FecSocket ──Session::on_send──▶ [source][source]..[repair] ──▶ UDP
//!   quinn ◀─poll_recv── FecSocket ◀─Session::on_receive─ [source][repair][control] ◀── UDP
//!                         │ timer task: idle flush of partial blocks, loss reports, expiry
//!   receiver ─control (loss ppm, burst, queue delay) every 100 ms─▶ sender's RepairPlanner
//!             (20 ms after a new loss;      ▲ our own receiver's loss, when the report is sparse
//!              once a second at zero loss)    (weighed again at each of our own report ticks)
//! ```
//! The receiver's meter leaves out losses revealed at a queue-delay peak (a full drop-tail
//! queue: congestion), so repair follows link loss only and congestion stays visible to QUIC.
//! A connection's first packets are protected for an assumed loss (the start-up prior: a
//! bounded number of repair packets for small blocks, and full blocks until the peer has
//! measured 500 packets or 2000 went out) because its first losses come before any report;
//! after that, zero measured loss means exactly zero repair.
//! Only `FecSocket` does I/O; everything else takes time as an input.
//!
//! Both ends of a tunnel must run FEC (a bare QUIC datagram is counted in
//! `packets_rejected` and dropped). QUIC's MTU must leave room for [`FEC_HEADER_LEN`].

mod coder;
mod config;
pub mod controller;
mod decoder;
mod encoder;
mod error;
mod meter;
pub mod packet;
mod session;
mod socket;
mod stats;

pub use coder::{CoderKind, ErasureCoder, RseCoder, SimdCoder, MAX_CACHED_CODECS};
pub use config::{
    FecConfig, FecMode, DEFAULT_ADAPTIVE_K, DEFAULT_MAX_RATIO, DEFAULT_TARGET, MAX_INTERLEAVE,
    MAX_K, MAX_M,
};
pub use decoder::{
    Decoder, BLOCK_LINGER, FAST_REPORT_GAP, MAX_BLOCKS_IN_FLIGHT, MAX_DECODER_BYTES,
    MAX_DELIVERY_QUEUE, REPORT_REFRESH,
};
pub use encoder::{Encoder, IDLE_PACE_FACTOR, MAX_ENCODER_OUTBOX};
pub use error::FecError;
pub use packet::{LossReport, FEC_HEADER_LEN};
pub use session::Session;
pub use socket::{wrap_socket, FecSocket, MAX_PEERS, MAX_PENDING_DELIVERIES, PEER_IDLE_TIMEOUT};
pub use stats::{FecStats, FecStatsSnapshot};
