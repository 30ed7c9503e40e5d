//! What each half of a flow is waiting on, for the warning a stalled flow logs.
//!
//! A flow on which no byte has moved for [`STALL_WARN`] (well before its idle timeout) while it
//! holds data it cannot move ([`Probe::is_stuck`]) logs one warning naming the state of both
//! halves, so that an operator (or a soak) can tell why it holds its stream: a client that reads
//! nothing, a peer that acknowledges nothing, a budget that holds it back, a supply that never
//! came. A flow that is merely idle (an open SSH session) logs that at debug level only.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// No byte moved for this long: the flow logs its state once (again after it moves and stalls
/// anew).
pub const STALL_WARN: Duration = Duration::from_secs(60);

/// Flags of the sending half (client → tunnel).
pub mod up {
    /// The client half-closed.
    pub const CLIENT_EOF: u32 = 1;
    /// The receiving half is done (the peer's data is delivered up to its `End`).
    pub const DOWN_DONE: u32 = 1 << 1;
    /// Window (or budget) full: the client is not read.
    pub const WINDOW_FULL: u32 = 1 << 2;
    /// Everything sent is acknowledged.
    pub const ALL_ACKED: u32 = 1 << 3;
    /// Supplies wait to be sent.
    pub const HAS_SUPPLY: u32 = 1 << 4;
    /// Bytes wait in the partial chunk or batched items.
    pub const HAS_PENDING: u32 = 1 << 5;
    /// The flush timer is armed.
    pub const DEADLINE: u32 = 1 << 6;
    /// Writing to the tunnel (QUIC flow control).
    pub const WRITING: u32 = 1 << 7;
    /// Names, in bit order.
    pub const NAMES: [&str; 8] = [
        "client_eof",
        "down_done",
        "window_full",
        "all_acked",
        "has_supply",
        "has_pending",
        "deadline",
        "writing_tunnel",
    ];
}

/// Flags of the receiving half (tunnel → client).
pub mod down {
    /// `OpenOk` seen (or not expected).
    pub const OPENED: u32 = 1;
    /// The client was half-closed after the peer's `End`.
    pub const SHUT: u32 = 1 << 1;
    /// The peer finished its stream.
    pub const STREAM_DONE: u32 = 1 << 2;
    /// The tunnel is read.
    pub const MAY_READ: u32 = 1 << 3;
    /// Bytes wait to be written to the client.
    pub const PENDING: u32 = 1 << 4;
    /// The decoder waits for a supply.
    pub const AWAITS_SUPPLY: u32 = 1 << 5;
    /// The decoder has seen the peer's `End` and delivered everything.
    pub const DECODER_DONE: u32 = 1 << 6;
    /// The process-wide budget is exhausted.
    pub const BUDGET_EXHAUSTED: u32 = 1 << 7;
    /// Waiting for the sending half to take a control message.
    pub const SENDING_CTL: u32 = 1 << 8;
    /// Names, in bit order.
    pub const NAMES: [&str; 9] = [
        "opened",
        "shut",
        "stream_done",
        "may_read",
        "pending",
        "awaits_supply",
        "decoder_done",
        "budget_exhausted",
        "sending_ctl",
    ];
}

/// Both halves' state, updated at every turn of their loops (relaxed atomics: the halves and the
/// idle watch run in one task, the atomics only make the pump's future `Send`).
#[derive(Debug, Default)]
pub struct Probe {
    /// [`up`] flags.
    pub up: AtomicU32,
    /// [`down`] flags.
    pub down: AtomicU32,
    /// Unacknowledged bytes the encoder holds.
    pub up_held: AtomicU64,
    /// Bytes the decoder holds (queued, waiting) plus undecoded tunnel bytes.
    pub down_held: AtomicU64,
}

/// The word with the flag of each pair whose condition holds.
pub fn flags(set: &[(bool, u32)]) -> u32 {
    set.iter()
        .filter(|(on, _)| *on)
        .fold(0, |w, (_, bit)| w | bit)
}

impl Probe {
    /// Whether the flow holds data it cannot move (unacknowledged or pending items, a client write
    /// or a supply it waits for), as opposed to a flow that is merely idle (an interactive
    /// session nobody types in, a client that has not yet closed).
    pub fn is_stuck(&self) -> bool {
        let (u, d) = (self.up.load(Relaxed), self.down.load(Relaxed));
        u & up::ALL_ACKED == 0
            || u & (up::WINDOW_FULL | up::HAS_SUPPLY | up::HAS_PENDING | up::WRITING) != 0
            || d & (down::PENDING | down::AWAITS_SUPPLY | down::SENDING_CTL) != 0
    }

    /// Sets the flag `bit` of a half to `on`.
    pub fn set(word: &AtomicU32, bit: u32, on: bool) {
        if on {
            word.fetch_or(bit, Relaxed);
        } else {
            word.fetch_and(!bit, Relaxed);
        }
    }
}

struct Flags<'a>(u32, &'a [&'a str]);

impl fmt::Display for Flags<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (i, name) in self.1.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sending half [{}] holding {} B unacknowledged; receiving half [{}] holding {} B",
            Flags(self.up.load(Relaxed), &up::NAMES),
            self.up_held.load(Relaxed),
            Flags(self.down.load(Relaxed), &down::NAMES),
            self.down_held.load(Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_set_the_bits_whose_condition_holds() {
        assert_eq!(flags(&[(true, 1), (false, 2), (true, 8)]), 9);
        assert_eq!(flags(&[]), 0);
    }

    #[test]
    fn a_flow_holding_data_is_stuck_an_idle_one_is_not() {
        let p = Probe::default();
        // Nothing sent, nothing pending: idle.
        Probe::set(&p.up, up::ALL_ACKED, true);
        Probe::set(&p.down, down::OPENED | down::MAY_READ, true);
        assert!(!p.is_stuck());
        for (word, bit) in [
            (&p.up, up::WINDOW_FULL),
            (&p.up, up::HAS_SUPPLY),
            (&p.up, up::HAS_PENDING),
            (&p.up, up::WRITING),
            (&p.down, down::PENDING),
            (&p.down, down::AWAITS_SUPPLY),
            (&p.down, down::SENDING_CTL),
        ] {
            Probe::set(word, bit, true);
            assert!(p.is_stuck(), "{p}");
            Probe::set(word, bit, false);
        }
        // Sent items not acknowledged yet.
        Probe::set(&p.up, up::ALL_ACKED, false);
        assert!(p.is_stuck());
    }

    #[test]
    fn a_probe_names_the_flags_set_and_their_holdings() {
        let p = Probe::default();
        Probe::set(&p.up, up::CLIENT_EOF | up::WINDOW_FULL, true);
        Probe::set(&p.up, up::CLIENT_EOF, false);
        Probe::set(&p.down, down::MAY_READ, true);
        p.up_held.store(7, Relaxed);
        assert_eq!(
            p.to_string(),
            "sending half [window_full] holding 7 B unacknowledged; receiving half [may_read] holding 0 B"
        );
        assert_eq!(
            Probe::default().to_string(),
            "sending half [-] holding 0 B unacknowledged; receiving half [-] holding 0 B"
        );
    }
}
