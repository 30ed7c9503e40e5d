//! The FEC receive path of one socket fed datagrams from several source addresses, as the
//! socket wrapper runs it: one sans-IO `Session` per address, created only for a first datagram
//! that decodes, the least recently active evicted beyond `MAX_PEERS`, idle ones dropped after
//! `PEER_IDLE_TIMEOUT`, deliveries queued up to `MAX_PENDING_DELIVERIES`. Datagrams are either
//! raw fuzz bytes or packets a per-address sender (a fixed-rate FEC encoder) produced, some of
//! them dropped, so reconstruction runs too.
//!
//! Checked: no panic; every peer's state stays within its bounds; and one watched peer (address
//! 0) gets exactly what a session of its own would deliver from its own datagrams at the same
//! times: nothing another address sends reaches or disturbs it.
//!
//! Input: `[mode][records]`, a record being `[addr][op][len][len bytes]`. The mode's low bit
//! selects many addresses (eviction) or few; its next bits pick the sender's block shape.
#![no_main]

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use strait_fec::{
    packet, FecConfig, FecMode, FecStats, Session, MAX_BLOCKS_IN_FLIGHT, MAX_DECODER_BYTES,
    MAX_PEERS, MAX_PENDING_DELIVERIES, PEER_IDLE_TIMEOUT,
};

const WATCHED: u16 = 0;

struct Peer {
    session: Session,
    last_active: Instant,
}

/// The socket's receive side for many peers, without the socket.
struct Receiver {
    cfg: FecConfig,
    stats: Arc<FecStats>,
    peers: HashMap<u16, Peer>,
    pending: VecDeque<(u16, Vec<u8>)>,
    /// Deliveries to the watched address, in order, and its state resets (evictions).
    watched: Vec<Option<Vec<u8>>>,
}

impl Receiver {
    fn on_datagram(&mut self, addr: u16, wire: &[u8], now: Instant) {
        if !self.peers.contains_key(&addr) {
            if packet::decode(wire).is_err() {
                return;
            }
            if self.peers.len() >= MAX_PEERS {
                let oldest = self
                    .peers
                    .iter()
                    .min_by_key(|(a, p)| (p.last_active, **a))
                    .map(|(a, _)| *a);
                if let Some(a) = oldest {
                    self.evict(a);
                }
            }
        }
        let p = self.peers.entry(addr).or_insert_with(|| Peer {
            session: Session::new(&self.cfg, self.stats.clone(), now),
            last_active: now,
        });
        p.last_active = now;
        if let Ok(delivered) = p.session.on_receive(wire, now) {
            for d in delivered {
                assert!(!d.is_empty() && d.len() <= packet::MAX_PAYLOAD_LEN);
                if addr == WATCHED {
                    self.watched.push(Some(d.clone()));
                }
                if self.pending.len() >= MAX_PENDING_DELIVERIES {
                    self.pending.pop_front();
                }
                self.pending.push_back((addr, d));
            }
        }
        let d = &p.session.decoder;
        assert!(d.bytes_stored() <= MAX_DECODER_BYTES);
        assert!(d.blocks_tracked() <= MAX_BLOCKS_IN_FLIGHT);
        assert!(self.peers.len() <= MAX_PEERS);
    }

    fn evict(&mut self, addr: u16) {
        self.peers.remove(&addr);
        if addr == WATCHED {
            self.watched.push(None);
        }
    }

    fn run_timers(&mut self, now: Instant) {
        let idle: Vec<u16> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_active) >= PEER_IDLE_TIMEOUT)
            .map(|(a, _)| *a)
            .collect();
        for a in idle {
            self.evict(a);
        }
        for p in self.peers.values_mut() {
            if p.session.poll_timeout().is_some_and(|t| t <= now) {
                p.session.handle_timeout(now);
            }
            while let Some(w) = p.session.poll_transmit() {
                assert!(!w.is_empty());
            }
        }
    }
}

/// The watched address alone: a session reset whenever the receiver dropped its state.
struct Alone {
    cfg: FecConfig,
    session: Option<Session>,
    out: Vec<Option<Vec<u8>>>,
}

impl Alone {
    fn on_datagram(&mut self, wire: &[u8], now: Instant) {
        if self.session.is_none() && packet::decode(wire).is_err() {
            return;
        }
        let s = self
            .session
            .get_or_insert_with(|| Session::new(&self.cfg, Arc::new(FecStats::default()), now));
        if let Ok(delivered) = s.on_receive(wire, now) {
            self.out.extend(delivered.map(Some));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let many = mode & 1 == 1;
    let k = 1 + (mode >> 1) % 8;
    let m = 1 + (mode >> 4) % 4;
    let t0 = Instant::now();
    let cfg = FecConfig::new(FecMode::adaptive());
    let mut rx = Receiver {
        cfg: cfg.clone(),
        stats: Arc::new(FecStats::default()),
        peers: HashMap::new(),
        pending: VecDeque::new(),
        watched: Vec::new(),
    };
    let mut alone = Alone {
        cfg: cfg.clone(),
        session: None,
        out: Vec::new(),
    };
    let send_cfg = FecConfig::new(FecMode::Fixed { k, m });
    let mut senders: HashMap<u16, Session> = HashMap::new();
    let mut now = t0;
    while let [a, op, len, tail @ ..] = rest {
        let (bytes, tail) = tail.split_at((*len as usize).min(tail.len()));
        rest = tail;
        let addr = if many {
            u16::from(*a) * 7 + u16::from(*op >> 4)
        } else {
            u16::from(*a % 8)
        };
        // Datagrams this record puts on the wire from `addr`.
        let mut wire: Vec<Vec<u8>> = Vec::new();
        match op % 4 {
            0 => wire.push(bytes.to_vec()),
            1 if !bytes.is_empty() => {
                // The sender's packets, those whose bit in the record's first byte is set lost.
                let s = senders
                    .entry(addr)
                    .or_insert_with(|| Session::new(&send_cfg, Arc::new(FecStats::default()), t0));
                let lost = bytes[0];
                if let Ok(out) = s.on_send(bytes, now) {
                    wire.extend(
                        out.enumerate()
                            .filter(|(i, _)| lost >> (i % 8) & 1 == 0)
                            .map(|(_, w)| w),
                    );
                }
            }
            2 => {
                // Time passes: every timer that is due runs.
                now += Duration::from_millis(u64::from(*len) * 4);
                for s in senders.values_mut() {
                    s.handle_timeout(now);
                    while let Some(w) = s.poll_transmit() {
                        assert!(!w.is_empty());
                    }
                }
                rx.run_timers(now);
                if let Some(s) = alone.session.as_mut() {
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now);
                    }
                    while s.poll_transmit().is_some() {}
                }
            }
            _ => now += Duration::from_millis(1),
        }
        for w in wire {
            let resets = rx.watched.iter().filter(|d| d.is_none()).count();
            rx.on_datagram(addr, &w, now);
            // The receiver may have evicted the watched peer: start it afresh alone as well.
            let after = rx.watched.iter().filter(|d| d.is_none()).count();
            for _ in resets..after {
                alone.session = None;
                alone.out.push(None);
            }
            if addr == WATCHED {
                alone.on_datagram(&w, now);
            }
        }
        // Idle evictions happen in timers.
        let resets = rx.watched.iter().filter(|d| d.is_none()).count();
        let alone_resets = alone.out.iter().filter(|d| d.is_none()).count();
        for _ in alone_resets..resets {
            alone.session = None;
            alone.out.push(None);
        }
    }
    assert!(rx.pending.len() <= MAX_PENDING_DELIVERIES);
    assert_eq!(rx.watched, alone.out, "the watched peer's deliveries");
});
