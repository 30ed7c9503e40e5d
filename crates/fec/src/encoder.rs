//! Sender state machine: QUIC packets in, FEC wire packets out. No I/O; time is an input.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    coder::{CoderKind, ErasureCoder},
    config::FecConfig,
    controller::{LossEstimate, RepairPlanner},
    packet::{self, LossReport, RepairHeader, MAX_PAYLOAD_LEN, SOURCE_HEADER_LEN, TS_TICK_MICROS},
    stats::FecStats,
    FecError,
};

/// Wire packets waiting to be taken; bounds memory if a caller never drains.
pub const MAX_ENCODER_OUTBOX: usize = 4096;
/// A pause longer than this many times the sender's smoothed packet gap means it went idle.
pub const IDLE_PACE_FACTOR: u32 = 2;

struct OpenBlock {
    id: u16,
    payloads: Vec<Vec<u8>>,
    max_len: usize,
}

/// Encoder for one peer.
pub struct Encoder {
    planner: RepairPlanner,
    coder: Box<dyn ErasureCoder>,
    epoch: Instant,
    next_seq: u16,
    next_block: u16,
    round: Vec<Option<OpenBlock>>,
    round_depth: usize,
    round_k: usize,
    cursor: usize,
    round_opened: Option<Instant>,
    last_send: Option<Instant>,
    /// When the last timestamped packet went out (see [`packet::TS_INTERVAL`]).
    last_ts: Option<Instant>,
    /// Smoothed gap between packets sent less than `max_block_delay` apart: the sender's own
    /// pace (a paced congestion controller sends a message as packets milliseconds apart).
    pace: Option<Duration>,
    idle_flush: Duration,
    max_block_delay: Duration,
    outbox: VecDeque<Vec<u8>>,
    scratch_shards: Vec<Vec<u8>>,
    scratch_repair: Vec<Vec<u8>>,
    stats: Arc<FecStats>,
}

impl Encoder {
    /// Encoder whose timestamp clock starts at `now`.
    pub fn new(cfg: &FecConfig, stats: Arc<FecStats>, now: Instant) -> Self {
        let k = cfg.adaptive_k as usize;
        let planner = if cfg.startup_prior {
            RepairPlanner::new(cfg.mode, k)
        } else {
            RepairPlanner::without_startup(cfg.mode, k)
        };
        let k = planner.plan().k;
        FecStats::set(&stats.current_k, k as u64);
        FecStats::set(&stats.current_m, planner.plan().m_for(k) as u64);
        Encoder {
            planner,
            coder: cfg.coder.build(),
            epoch: now,
            next_seq: 0,
            next_block: 0,
            round: Vec::new(),
            round_depth: 0,
            round_k: 0,
            cursor: 0,
            round_opened: None,
            last_send: None,
            last_ts: None,
            pace: None,
            idle_flush: cfg.idle_flush,
            max_block_delay: cfg.max_block_delay,
            outbox: VecDeque::new(),
            scratch_shards: Vec::new(),
            scratch_repair: Vec::new(),
            stats,
        }
    }

    /// Which coder repair packets use.
    pub fn coder_kind(&self) -> CoderKind {
        CoderKind::from_id(self.coder.id()).unwrap_or_default()
    }

    /// The timestamp of a data packet sent at `now`, when it is due one: the first packet, and
    /// any packet [`packet::TS_INTERVAL`] or more after the last timestamped one.
    fn stamp(&mut self, now: Instant) -> Option<u16> {
        if self
            .last_ts
            .is_some_and(|t| now.saturating_duration_since(t) < packet::TS_INTERVAL)
        {
            return None;
        }
        self.last_ts = Some(now);
        Some(
            (now.saturating_duration_since(self.epoch).as_micros() / TS_TICK_MICROS as u128) as u16,
        )
    }

    fn seq(&mut self) -> u16 {
        let s = self.next_seq;
        self.next_seq = s.wrapping_add(1);
        s
    }

    fn push(&mut self, wire: Vec<u8>) {
        if self.outbox.len() >= MAX_ENCODER_OUTBOX {
            self.outbox.pop_front();
        }
        self.outbox.push_back(wire);
    }

    /// Takes one QUIC packet; returns the wire packets to send now (its source packet first, then
    /// any repair packets of blocks it completed).
    pub fn on_send(
        &mut self,
        pkt: &[u8],
        now: Instant,
    ) -> Result<impl Iterator<Item = Vec<u8>> + '_, FecError> {
        if pkt.is_empty() || pkt.len() > MAX_PAYLOAD_LEN {
            return Err(FecError::PacketTooLarge {
                len: pkt.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        self.handle_timeout(now);
        let plan = self.planner.plan();
        let (k, depth, unprotected) = (plan.k, plan.depth, plan.is_unprotected());
        if self.round_opened.is_some()
            && (unprotected || depth != self.round_depth || k != self.round_k)
        {
            self.close_round(now);
        }
        let seq = self.seq();
        let ts = self.stamp(now);
        let mut wire = Vec::with_capacity(pkt.len() + SOURCE_HEADER_LEN + packet::TS_LEN);
        if unprotected {
            let header = packet::encode_plain(&mut wire, seq, ts, pkt);
            FecStats::add(&self.stats.header_overhead_bytes, header as u64);
        } else {
            if self.round_opened.is_none() {
                self.round.clear();
                self.round.resize_with(depth, || None);
                self.round_depth = depth;
                self.round_k = k;
                self.cursor = 0;
                self.round_opened = Some(now);
            }
            let slot = self.cursor;
            self.cursor = (self.cursor + 1) % self.round_depth;
            let next_block = &mut self.next_block;
            let block = self.round[slot].get_or_insert_with(|| {
                let id = *next_block;
                *next_block = id.wrapping_add(1);
                OpenBlock {
                    id,
                    payloads: Vec::with_capacity(k),
                    max_len: 0,
                }
            });
            let index = block.payloads.len() as u8;
            let header = packet::encode_source(&mut wire, seq, ts, block.id, index, pkt);
            block.payloads.push(pkt.to_vec());
            block.max_len = block.max_len.max(pkt.len());
            FecStats::add(&self.stats.header_overhead_bytes, header as u64);
        }
        FecStats::add(&self.stats.source_bytes_sent, pkt.len() as u64);
        FecStats::add(&self.stats.source_packets_sent, 1);
        self.count_sent(1, 0);
        if let Some(gap) = self.last_send.map(|t| now.saturating_duration_since(t)) {
            if gap < self.max_block_delay {
                self.pace = Some(self.pace.map_or(gap, |p| (p * 7 + gap) / 8));
            }
        }
        self.last_send = Some(now);
        self.push(wire);
        let full = self.round_opened.is_some()
            && self
                .round
                .iter()
                .all(|b| b.as_ref().is_some_and(|b| b.payloads.len() >= self.round_k));
        if full {
            self.close_round(now);
        }
        Ok(self.outbox.drain(..))
    }

    /// Closes every open block of the round and queues their repair, interleaved (repair 0 of
    /// each block, then repair 1 of each, …) so a burst hits each block at most once per pass.
    fn close_round(&mut self, now: Instant) {
        self.round_opened = None;
        let blocks: Vec<OpenBlock> = self.round.drain(..).flatten().collect();
        let mut repairs: Vec<(u16, u8, u8, Vec<Vec<u8>>)> = Vec::with_capacity(blocks.len());
        for b in blocks {
            let k = b.payloads.len();
            let m = self.planner.plan().m_for(k).min(packet::MAX_SHARDS - k);
            if m == 0 || k == 0 {
                continue;
            }
            let shard_len = packet::shard_len_for(b.max_len);
            self.scratch_shards.resize_with(k, Vec::new);
            for (dst, p) in self.scratch_shards.iter_mut().zip(&b.payloads) {
                packet::fill_shard(dst, p, shard_len);
            }
            let mut out = std::mem::take(&mut self.scratch_repair);
            out.resize_with(m, Vec::new);
            out.truncate(m);
            let refs: Vec<&[u8]> = self.scratch_shards[..k].iter().map(Vec::as_slice).collect();
            match self.coder.encode(&refs, &mut out) {
                Ok(()) => {
                    FecStats::add(&self.stats.blocks_protected, 1);
                    FecStats::add(&self.stats.protected_sources, k as u64);
                    repairs.push((b.id, k as u8, m as u8, out))
                }
                Err(e) => {
                    tracing::warn!(error = %e, block = b.id, "FEC encode failed; block sent without repair");
                }
            }
        }
        let most = repairs.iter().map(|r| r.3.len()).max().unwrap_or(0);
        let total: usize = repairs.iter().map(|r| r.3.len()).sum();
        if self.planner.in_startup() {
            FecStats::add(&self.stats.startup_repair_packets, total as u64);
        }
        self.count_sent(0, total as u64);
        for j in 0..most {
            for (id, k, m, shards) in &repairs {
                if let Some(shard) = shards.get(j) {
                    let mut wire = Vec::with_capacity(shard.len() + packet::FEC_HEADER_LEN);
                    let h = RepairHeader {
                        seq: self.seq(),
                        ts: self.stamp(now),
                        block: *id,
                        index: j as u8,
                        k: *k,
                        m: *m,
                        coder: self.coder.id(),
                    };
                    packet::encode_repair(&mut wire, h, shard);
                    FecStats::add(&self.stats.repair_bytes_sent, wire.len() as u64);
                    FecStats::add(&self.stats.repair_packets_sent, 1);
                    self.push(wire);
                }
            }
        }
        if let Some((_, _, _, v)) = repairs.pop() {
            self.scratch_repair = v;
        }
    }

    /// How long a pause in sending closes the round: `idle_flush`, or [`IDLE_PACE_FACTOR`] times
    /// the sender's own pace when that is longer (capped by `max_block_delay`). A message paced
    /// out packet by packet would otherwise close a round per packet, each a one-packet block
    /// whose repair follows it on the wire, where one loss burst takes the packet and all its
    /// copies; kept together, the message's packets are interleaved over the round's blocks.
    fn idle_wait(&self) -> Duration {
        let paced = self.pace.map_or(Duration::ZERO, |p| p * IDLE_PACE_FACTOR);
        paced.clamp(self.idle_flush, self.max_block_delay.max(self.idle_flush))
    }

    /// When [`Encoder::handle_timeout`] next has work: the idle flush or block age deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let opened = self.round_opened?;
        let idle = self.last_send.map_or(opened, |t| t) + self.idle_wait();
        Some(idle.min(opened + self.max_block_delay))
    }

    /// Flushes a partial round whose deadline passed; its repair is then in [`Encoder::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|t| t <= now) {
            self.close_round(now);
        }
    }

    /// Next queued wire packet (repair from a timeout flush).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// Feeds the peer's loss report to the adaptive controller.
    pub fn on_report(&mut self, report: LossReport) {
        self.on_report_with_prior(report, LossEstimate::default());
    }

    /// Feeds the peer's loss report, with our own measurement of the reverse direction as a
    /// prior for a report on few packets (see [`RepairPlanner::on_report_with_prior`]).
    pub fn on_report_with_prior(&mut self, report: LossReport, reverse: LossEstimate) {
        let before = self.planner.plan().clone();
        self.planner.on_report_with_prior(report, reverse);
        if *self.planner.plan() != before {
            let p = self.planner.plan();
            tracing::debug!(
                loss_ppm = report.loss_ppm,
                burst_milli = report.burst_milli,
                packets = report.packets,
                reverse_rate = reverse.rate(),
                startup = self.planner.in_startup(),
                depth = p.depth,
                m_full = p.m_for(p.k),
                m_small = ?&p.repair[1..p.repair.len().min(17)],
                "FEC plan"
            );
        }
        self.publish_plan();
    }

    fn count_sent(&mut self, sources: u64, repairs: u64) {
        if self.planner.in_startup() {
            self.planner.on_sent(sources, repairs);
            if !self.planner.in_startup() {
                self.publish_plan();
            }
        }
    }

    fn publish_plan(&self) {
        let plan = self.planner.plan();
        FecStats::set(&self.stats.current_k, plan.k as u64);
        FecStats::set(&self.stats.current_m, plan.m_for(plan.k) as u64);
        FecStats::set(&self.stats.interleave_depth, plan.depth as u64);
    }

    /// The plan in force.
    pub fn plan(&self) -> &crate::controller::Plan {
        self.planner.plan()
    }
}
