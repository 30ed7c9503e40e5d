//! The crate's one error type.

/// Everything that can go wrong in FEC coding, packet decoding and configuration.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FecError {
    /// The first byte is not an FEC magic byte: the peer runs without FEC (a bare QUIC packet has
    /// the 0x40 "fixed bit" set, ours never does).
    #[error("packet first byte {byte:#04x} is not an FEC header (peer without FEC?)")]
    NotFec {
        /// The byte that was found.
        byte: u8,
    },
    /// The peer speaks another FEC wire version.
    #[error("FEC wire version {version} is not supported (this side speaks {supported})")]
    UnsupportedVersion {
        /// Version found in the packet.
        version: u8,
        /// Version this build speaks.
        supported: u8,
    },
    /// A packet ends before its header or body does.
    #[error("FEC packet of {len} bytes is shorter than the {need} bytes its kind needs")]
    Truncated {
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Bytes after a fixed-size body.
    #[error("FEC control packet has {extra} trailing bytes")]
    TrailingBytes {
        /// Number of unexpected bytes.
        extra: usize,
    },
    /// Flag bits that this version does not define.
    #[error("FEC packet kind {kind} has reserved flag bits {flags:#04x} set")]
    ReservedFlags {
        /// Packet kind.
        kind: u8,
        /// Offending flag bits.
        flags: u8,
    },
    /// A field that is out of its allowed range.
    #[error("FEC field {field} = {value} is out of range (limit {limit})")]
    OutOfRange {
        /// Field name.
        field: &'static str,
        /// Value found.
        value: u64,
        /// The limit it broke.
        limit: u64,
    },
    /// A packet contradicts what earlier packets of the same block said.
    #[error("FEC block {block}: {what}")]
    InconsistentBlock {
        /// Block id.
        block: u16,
        /// What disagreed.
        what: &'static str,
    },
    /// The erasure coder rejected its input.
    #[error("erasure coder {coder} failed: {reason}")]
    Coder {
        /// Coder name.
        coder: &'static str,
        /// Reason reported by the coder.
        reason: String,
    },
    /// A payload bigger than any shard may carry.
    #[error("packet of {len} bytes exceeds the FEC payload limit {max}")]
    PacketTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A configuration value that cannot be used.
    #[error("fec.{field} = {value}: {reason}")]
    InvalidConfig {
        /// Config field (dotted below `fec`).
        field: &'static str,
        /// The offending value, rendered.
        value: String,
        /// Why it is invalid.
        reason: &'static str,
    },
}
