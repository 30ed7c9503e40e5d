//! Receiver state machine: FEC wire packets in, QUIC packets out (source packets at once, rebuilt
//! ones as soon as their block becomes decodable). No I/O; time is an input.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    coder::{CoderKind, ErasureCoder},
    config::FecConfig,
    controller::{LossEstimate, LossMeter, PRIOR_PACKETS, STARTUP_REPORT_PACKETS},
    packet::{self, LossReport, Packet, MAX_SHARDS},
    stats::FecStats,
    FecError,
};

/// Blocks tracked per peer (open ones and recently finished ones, to drop duplicates).
pub const MAX_BLOCKS_IN_FLIGHT: usize = 256;
/// Bytes of stored shards per peer; the oldest blocks are dropped beyond this.
pub const MAX_DECODER_BYTES: usize = 4 * 1024 * 1024;
/// A block that has not become decodable this long after its first packet is given up.
pub const BLOCK_LINGER: Duration = Duration::from_millis(500);
/// Packets waiting to be taken by the caller.
pub const MAX_DELIVERY_QUEUE: usize = 4096;
/// After a new (non-congestion) loss the next report goes out this soon after the previous one
/// rather than a whole report interval later, so repair starts within a round trip of the first
/// loss. Bounds control traffic to 50 reports a second while loss lasts (no fast reports at zero
/// loss).
pub const FAST_REPORT_GAP: Duration = Duration::from_millis(20);
/// A report of zero loss after a report of zero loss is sent only this long after the last
/// one (it changes nothing at the sender), unless it is the first to cover
/// [`crate::controller::STARTUP_REPORT_PACKETS`] or [`crate::controller::PRIOR_PACKETS`]
/// packets (the sender ends its start-up prior, or stops weighing in its own estimate, on
/// those). Sent every report interval, such reports were a third of what adaptive FEC cost a
/// request/response flow at zero loss (46 bytes on the wire, version 1, ten times a second
/// each way); repeating one a second still corrects a lost transition report.
pub const REPORT_REFRESH: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Block {
    /// `(k, m, coder, shard_len)`, known once a repair packet arrived.
    shape: Option<(usize, usize, u8, usize)>,
    sources: Vec<Option<Vec<u8>>>,
    repairs: Vec<Option<Vec<u8>>>,
    /// Source indices already handed to QUIC.
    delivered: [u64; 4],
    done: bool,
    bytes: usize,
    created: Option<Instant>,
}

impl Block {
    fn is_delivered(&self, i: usize) -> bool {
        self.delivered[i / 64] & (1 << (i % 64)) != 0
    }
    fn mark_delivered(&mut self, i: usize) {
        self.delivered[i / 64] |= 1 << (i % 64);
    }
    fn missing_sources(&self) -> bool {
        match self.shape {
            Some((k, ..)) => (0..k).any(|i| !self.is_delivered(i)),
            // Without a repair packet, k is unknown: a hole below the highest index is a loss.
            None => {
                let top = self.sources.len();
                (0..top).any(|i| !self.is_delivered(i))
            }
        }
    }
    /// What a failed block looked like (for finding which blocks the planner under-protects).
    fn log_unrecoverable(&self, id: u16, when: &'static str) {
        let top = self.shape.map_or(self.sources.len(), |s| s.0);
        let have_src = (0..top).filter(|&i| self.is_delivered(i)).count();
        let have_rep = self.repairs.iter().flatten().count();
        tracing::debug!(
            block = id,
            when,
            k = self.shape.map(|s| s.0),
            m = self.shape.map(|s| s.1),
            have_src,
            have_rep,
            "FEC block unrecoverable"
        );
    }

    fn free(&mut self) -> usize {
        self.sources = Vec::new();
        self.repairs = Vec::new();
        std::mem::take(&mut self.bytes)
    }
}

/// Decoder for one peer.
pub struct Decoder {
    blocks: HashMap<u16, Block>,
    order: VecDeque<u16>,
    bytes: usize,
    meter: LossMeter,
    rse: Option<Box<dyn ErasureCoder>>,
    simd: Option<Box<dyn ErasureCoder>>,
    delivered: VecDeque<Vec<u8>>,
    report_interval: Duration,
    next_report: Instant,
    last_report: Instant,
    /// When the last report was sent, and what it said.
    last_sent: Option<(Instant, LossReport)>,
    /// A report was made (sent or not) since [`Decoder::take_refreshed`].
    refreshed: bool,
    stats: Arc<FecStats>,
}

impl Decoder {
    /// Decoder whose clock starts at `now`, reporting every `report_interval`, with the default
    /// congestion delay.
    pub fn new(report_interval: Duration, stats: Arc<FecStats>, now: Instant) -> Self {
        let cfg = FecConfig {
            report_interval,
            ..FecConfig::default()
        };
        Decoder::from_config(&cfg, stats, now)
    }

    /// Decoder with the report interval and congestion delay of `cfg`.
    pub fn from_config(cfg: &FecConfig, stats: Arc<FecStats>, now: Instant) -> Self {
        let report_interval = cfg.report_interval;
        Decoder {
            blocks: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            meter: LossMeter::new(now, cfg.congestion_delay),
            rse: None,
            simd: None,
            delivered: VecDeque::new(),
            report_interval,
            next_report: now + report_interval,
            last_report: now,
            last_sent: None,
            refreshed: false,
            stats,
        }
    }

    fn deliver(&mut self, p: Vec<u8>) {
        if self.delivered.len() >= MAX_DELIVERY_QUEUE {
            self.delivered.pop_front();
        }
        self.delivered.push_back(p);
    }

    /// Takes one data datagram; returns the QUIC packets it makes available. A control packet is
    /// an error here (route it to the encoder; see [`crate::Session`]).
    pub fn on_receive(
        &mut self,
        wire: &[u8],
        now: Instant,
    ) -> Result<impl Iterator<Item = Vec<u8>> + '_, FecError> {
        let pkt = packet::decode(wire)?;
        self.on_packet(pkt, now)?;
        Ok(self.delivered.drain(..))
    }

    pub(crate) fn on_receive_drain(&mut self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.delivered.drain(..)
    }

    pub(crate) fn on_packet(&mut self, pkt: Packet<'_>, now: Instant) -> Result<(), FecError> {
        match pkt {
            Packet::Control(_) => Err(FecError::InconsistentBlock {
                block: 0,
                what: "control packet given to the data decoder",
            }),
            Packet::Plain { seq, ts, payload } => {
                self.count(seq, ts, now);
                self.deliver(payload.to_vec());
                Ok(())
            }
            Packet::Source {
                seq,
                ts,
                block,
                index,
                payload,
            } => {
                self.count(seq, ts, now);
                let b = self.block(block, now);
                let i = index as usize;
                if b.is_delivered(i) {
                    return Ok(()); // duplicate
                }
                if let Some((k, _, _, shard_len)) = b.shape {
                    if i >= k || payload.len() + packet::SHARD_PREFIX_LEN > shard_len {
                        return Err(FecError::InconsistentBlock {
                            block,
                            what: "source packet outside the block's shape",
                        });
                    }
                }
                b.mark_delivered(i);
                let mut stored = 0;
                if !b.done {
                    if b.sources.len() <= i {
                        b.sources.resize(i + 1, None);
                    }
                    b.sources[i] = Some(payload.to_vec());
                    b.bytes += payload.len();
                    stored = payload.len();
                }
                self.bytes += stored;
                self.deliver(payload.to_vec());
                self.try_decode(block);
                self.enforce_bounds();
                Ok(())
            }
            Packet::Repair {
                seq,
                ts,
                block,
                index,
                k,
                m,
                coder,
                shard,
            } => {
                self.count(seq, ts, now);
                let (k, m) = (k as usize, m as usize);
                let b = self.block(block, now);
                if b.done {
                    return Ok(());
                }
                let shape = (k, m, coder, shard.len());
                match b.shape {
                    Some(s) if s != shape => {
                        return Err(FecError::InconsistentBlock {
                            block,
                            what: "repair packets disagree on k, m, coder or shard length",
                        })
                    }
                    Some(_) => {}
                    None => {
                        if b.sources.len() > k
                            || b.sources
                                .iter()
                                .flatten()
                                .any(|s| s.len() + packet::SHARD_PREFIX_LEN > shard.len())
                        {
                            return Err(FecError::InconsistentBlock {
                                block,
                                what: "repair shape does not fit the source packets seen",
                            });
                        }
                        b.shape = Some(shape);
                        b.repairs = vec![None; m];
                    }
                }
                let j = index as usize;
                let mut stored = 0;
                if b.repairs.get(j).is_some_and(Option::is_none) {
                    b.repairs[j] = Some(shard.to_vec());
                    b.bytes += shard.len();
                    stored = shard.len();
                }
                self.bytes += stored;
                self.try_decode(block);
                self.enforce_bounds();
                Ok(())
            }
        }
    }

    fn count(&mut self, seq: u16, ts: Option<u16>, now: Instant) {
        let delta = self.meter.on_packet(seq, ts, now);
        self.account(delta);
    }

    /// Adds finalized losses (and congestion losses) to the counters.
    fn account(&mut self, delta: i64) {
        let congestion = self.meter.take_congestion_losses();
        if congestion > 0 {
            FecStats::add(&self.stats.congestion_losses, congestion);
        }
        if delta > 0 {
            FecStats::add(&self.stats.packets_lost, delta as u64);
        } else if delta < 0 {
            FecStats::sub_saturating(&self.stats.packets_lost, delta.unsigned_abs());
        }
    }

    fn block(&mut self, id: u16, now: Instant) -> &mut Block {
        if !self.blocks.contains_key(&id) {
            self.order.push_back(id);
        }
        self.blocks.entry(id).or_insert_with(|| Block {
            created: Some(now),
            ..Block::default()
        })
    }

    fn try_decode(&mut self, id: u16) {
        let Some(b) = self.blocks.get_mut(&id) else {
            return;
        };
        let Some((k, m, coder, shard_len)) = b.shape else {
            return;
        };
        if b.done {
            return;
        }
        let have_src = (0..k).filter(|&i| b.is_delivered(i)).count();
        if have_src == k {
            b.done = true;
            self.bytes -= b.free();
            return;
        }
        let have_rep = b.repairs.iter().flatten().count();
        if have_src + have_rep < k {
            return;
        }
        let mut shards: Vec<Option<Vec<u8>>> = Vec::with_capacity(k + m);
        for i in 0..k {
            shards.push(b.sources.get(i).cloned().flatten().map(|p| {
                let mut s = Vec::with_capacity(shard_len);
                packet::fill_shard(&mut s, &p, shard_len);
                s
            }));
        }
        shards.extend(b.repairs.iter().cloned());
        let coder_slot = match CoderKind::from_id(coder) {
            Some(CoderKind::ReedSolomonSimd) => &mut self.simd,
            Some(CoderKind::ReedSolomonErasure) => &mut self.rse,
            None => {
                b.done = true;
                self.bytes -= b.free();
                FecStats::add(&self.stats.blocks_unrecoverable, 1);
                tracing::debug!(block = id, coder, "unknown FEC coder id");
                return;
            }
        };
        let kind = CoderKind::from_id(coder).unwrap_or_default();
        let c = coder_slot.get_or_insert_with(|| kind.build());
        let result = c.reconstruct(k, &mut shards);
        let mut rebuilt = Vec::new();
        match result {
            Ok(()) => {
                for (i, s) in shards.iter().enumerate().take(k) {
                    if b.is_delivered(i) {
                        continue;
                    }
                    match s.as_deref().map(packet::parse_shard) {
                        Some(Ok(p)) => rebuilt.push((i, p.to_vec())),
                        Some(Err(e)) => {
                            tracing::debug!(block = id, index = i, error = %e, "rebuilt shard rejected")
                        }
                        None => {}
                    }
                }
            }
            Err(e) => tracing::debug!(block = id, error = %e, "FEC reconstruct failed"),
        }
        for (i, _) in &rebuilt {
            b.mark_delivered(*i);
        }
        if b.missing_sources() {
            FecStats::add(&self.stats.blocks_unrecoverable, 1);
            b.log_unrecoverable(id, "decode");
        }
        b.done = true;
        self.bytes -= b.free();
        FecStats::add(&self.stats.packets_rebuilt, rebuilt.len() as u64);
        for (_, p) in rebuilt {
            self.deliver(p);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(id) = self.order.pop_front() {
            if let Some(mut b) = self.blocks.remove(&id) {
                if !b.done && b.missing_sources() {
                    FecStats::add(&self.stats.blocks_unrecoverable, 1);
                    b.log_unrecoverable(id, "expired");
                }
                self.bytes -= b.free();
            }
        }
    }

    fn enforce_bounds(&mut self) {
        while self.order.len() > MAX_BLOCKS_IN_FLIGHT || self.bytes > MAX_DECODER_BYTES {
            self.evict_oldest();
        }
    }

    /// When [`Decoder::handle_timeout`] next has work: the next report or block expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let report = self.meter.has_news().then_some(self.report_due());
        let expiry = self
            .order
            .front()
            .and_then(|id| self.blocks.get(id))
            .and_then(|b| b.created)
            .map(|t| t + BLOCK_LINGER);
        match (report, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires old blocks; returns a loss report when one is due (send it to the peer). A zero-loss
    /// report that follows a zero-loss report is made but not returned until [`REPORT_REFRESH`]
    /// after the last one sent.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<LossReport> {
        while let Some(b) = self.order.front().and_then(|id| self.blocks.get(id)) {
            if b.created.is_some_and(|t| t + BLOCK_LINGER <= now) {
                self.evict_oldest();
            } else {
                break;
            }
        }
        if now < self.report_due() {
            return None;
        }
        self.next_report = now + self.report_interval;
        if !self.meter.has_news() {
            return None;
        }
        self.last_report = now;
        let settled = self.meter.settle();
        self.account(settled);
        let r = self.meter.report(now);
        FecStats::set(&self.stats.loss_ppm, r.loss_ppm as u64);
        FecStats::set(&self.stats.mean_burst_milli, r.burst_milli as u64);
        FecStats::set(&self.stats.queue_delay_us, r.queue_delay_us as u64);
        self.refreshed = true;
        let crossed =
            |last: &LossReport, at: f64| (last.packets as f64) < at && r.packets as f64 >= at;
        let unchanged = r.loss_ppm == 0
            && self.last_sent.is_some_and(|(t, last)| {
                last.loss_ppm == 0
                    && now.saturating_duration_since(t) < REPORT_REFRESH
                    && !crossed(&last, STARTUP_REPORT_PACKETS as f64)
                    && !crossed(&last, PRIOR_PACKETS)
            });
        if unchanged {
            return None;
        }
        self.last_sent = Some((now, r));
        Some(r)
    }

    /// True once after each report the decoder made, sent or not: its loss estimate (the prior
    /// for our own sending) was brought up to date.
    pub fn take_refreshed(&mut self) -> bool {
        std::mem::take(&mut self.refreshed)
    }

    fn report_due(&self) -> Instant {
        if self.meter.has_fresh_loss() {
            self.next_report.min(self.last_report + FAST_REPORT_GAP)
        } else {
            self.next_report
        }
    }

    /// Non-congestion loss measured on what we receive (a prior for what we send).
    pub fn loss_estimate(&self) -> LossEstimate {
        self.meter.estimate()
    }

    /// Blocks currently tracked (for tests of the memory bound).
    pub fn blocks_tracked(&self) -> usize {
        self.order.len()
    }

    /// Shard bytes currently stored.
    pub fn bytes_stored(&self) -> usize {
        self.bytes
    }
}

const _: () = assert!(MAX_SHARDS <= 256, "delivered bitmap holds 256 indices");
