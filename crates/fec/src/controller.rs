//! Loss measurement (receiver) and repair planning (sender). Pure: time is an input.
//!
//! The sender models loss as a two-state Gilbert chain fitted to the measured loss rate `p` and
//! mean burst length `B` (bad→good `r = 1/B`, good→bad `q = p·r/(1−p)`; independent loss is the
//! special case `B = 1/(1−p)`). Packets of one block are `d` packets apart on the wire when
//! interleaved over `d` blocks, so the chain is stepped `d` at a time, and a dynamic program over
//! the block's `k + m` packets gives the exact probability that more than `m` are lost.

use std::time::{Duration, Instant};

use crate::{
    config::{FecMode, MAX_INTERLEAVE, MAX_M},
    packet::{LossReport, TS_TICK_MICROS},
};

/// Probability that a block of `k` sources and `m` repairs loses more than `m` packets, under a
/// Gilbert loss model with loss rate `p`, mean burst `burst`, the block spread with stride `d`.
pub fn block_failure_probability(k: usize, m: usize, d: usize, p: f64, burst: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let burst = burst.max(1.0 / (1.0 - p));
    let r = 1.0 / burst;
    let q = (p * r / (1.0 - p)).min(1.0);
    let lambda = 1.0 - q - r;
    let ld = lambda.powi(d.max(1) as i32);
    // d-step transitions.
    let g_to_b = p * (1.0 - ld);
    let b_to_b = p + (1.0 - p) * ld;
    let cap = m + 1; // bucket m+1 means "more than m lost"
    let mut good = vec![0.0f64; cap + 1];
    let mut bad = vec![0.0f64; cap + 1];
    // First packet from the stationary distribution; bad means lost.
    good[0] = 1.0 - p;
    bad[1.min(cap)] = p;
    let n = k + m;
    let (mut ng, mut nb) = (vec![0.0f64; cap + 1], vec![0.0f64; cap + 1]);
    for _ in 1..n {
        ng.iter_mut().for_each(|x| *x = 0.0);
        nb.iter_mut().for_each(|x| *x = 0.0);
        for j in 0..=cap {
            let (g, b) = (good[j], bad[j]);
            if g == 0.0 && b == 0.0 {
                continue;
            }
            let to_bad = g * g_to_b + b * b_to_b;
            let to_good = g * (1.0 - g_to_b) + b * (1.0 - b_to_b);
            ng[j] += to_good;
            nb[(j + 1).min(cap)] += to_bad;
        }
        std::mem::swap(&mut good, &mut ng);
        std::mem::swap(&mut bad, &mut nb);
    }
    (good[cap] + bad[cap]).clamp(0.0, 1.0)
}

/// Smallest `m ≤ cap` whose block failure probability is at most `target` (or `cap`).
pub fn min_repair(k: usize, d: usize, p: f64, burst: f64, target: f64, cap: usize) -> usize {
    (0..=cap)
        .find(|&m| block_failure_probability(k, m, d, p, burst) <= target)
        .unwrap_or(cap)
}

/// Repair cap for a block of `k` sources: `ceil(k · max_ratio)`, so a one-packet block can still
/// get one repair packet when the ratio allows any repair at all.
pub fn repair_cap(k: usize, max_ratio: f64) -> usize {
    ((k as f64 * max_ratio).ceil() as usize).min(MAX_M)
}

/// What the encoder does with its next packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Source packets per full block.
    pub k: usize,
    /// Interleaving depth.
    pub depth: usize,
    /// `repair[k']` = repair packets for a block closed with `k'` sources (index 0 unused).
    pub repair: Vec<usize>,
}

impl Plan {
    /// Repair packets for a block of `k` sources.
    pub fn m_for(&self, k: usize) -> usize {
        self.repair.get(k).copied().unwrap_or(0)
    }
    /// True when no block size gets repair: send plain packets.
    pub fn is_unprotected(&self) -> bool {
        self.repair.iter().all(|&m| m == 0)
    }
}

/// Sender side: turns receiver reports into a [`Plan`].
#[derive(Debug, Clone)]
pub struct RepairPlanner {
    mode: FecMode,
    k: usize,
    congestion_delay_us: u32,
    plan: Plan,
    last: Option<LossReport>,
}

impl RepairPlanner {
    /// Planner for `mode`; adaptive starts with zero repair until a report says otherwise.
    pub fn new(mode: FecMode, adaptive_k: usize, congestion_delay: Duration) -> Self {
        let plan = match mode {
            FecMode::Fixed { k, m } => Plan {
                k: k as usize,
                depth: 1,
                repair: vec![m as usize; k as usize + 1],
            },
            _ => Plan {
                k: adaptive_k,
                depth: 1,
                repair: vec![0; adaptive_k + 1],
            },
        };
        RepairPlanner {
            mode,
            k: plan.k,
            congestion_delay_us: congestion_delay.as_micros().min(u32::MAX as u128) as u32,
            plan,
            last: None,
        }
    }

    /// Current plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Feeds a receiver report. Returns true when queueing delay held repair from growing.
    pub fn on_report(&mut self, report: LossReport) -> bool {
        let FecMode::Adaptive { target, max_ratio } = self.mode else {
            return false;
        };
        let p = report.loss_ppm as f64 / 1e6;
        let burst = (report.burst_milli as f64 / 1000.0).max(1.0);
        let cap = repair_cap(self.k, max_ratio);
        // Depth: the shallowest that needs the least repair for a full block.
        let mut best = (usize::MAX, 1);
        for d in 1..=MAX_INTERLEAVE {
            let m = min_repair(self.k, d, p, burst, target, cap);
            if m < best.0 {
                best = (m, d);
            }
            if m == 0 || d as f64 >= burst * 2.0 {
                break;
            }
        }
        let depth = if best.0 == 0 { 1 } else { best.1 };
        let mut repair = vec![0; self.k + 1];
        for (kk, slot) in repair.iter_mut().enumerate().skip(1) {
            *slot = min_repair(kk, depth, p, burst, target, repair_cap(kk, max_ratio));
        }
        // RFC 9265: loss that arrives with a standing/growing queue is congestion. Repair may
        // shrink but not grow, so the congestion controller sees that loss.
        let congested = report.queue_delay_us >= self.congestion_delay_us
            && self.last.is_none_or(|l| report.loss_ppm >= l.loss_ppm);
        let mut held = false;
        if congested {
            for (new, old) in repair.iter_mut().zip(&self.plan.repair) {
                if *new > *old {
                    *new = *old;
                    held = true;
                }
            }
        }
        self.plan = Plan {
            k: self.k,
            depth: if congested { self.plan.depth } else { depth },
            repair,
        };
        self.last = Some(report);
        held
    }
}

/// Bits of sequence history kept to tell late packets from duplicates.
const SEQ_WINDOW: usize = 1024;
/// A forward jump larger than this is a restart, not loss.
pub const MAX_COUNTED_GAP: u16 = 4096;

/// Receiver side: loss rate, burst length and queueing delay from the data packet headers.
#[derive(Debug, Clone)]
pub struct LossMeter {
    epoch: Instant,
    highest: Option<u16>,
    seen: [u64; SEQ_WINDOW / 64],
    // Window counters, decayed by 7/8 per report so they forget in ~1 s at 100 ms reports and
    // reach exactly zero once loss stops.
    expected: u64,
    lost: u64,
    bursts: u64,
    since_report: u64,
    // One-way delay, ticks relative to the first sample (clock offset cancels).
    owd_origin: Option<u16>,
    owd_sum: i64,
    owd_count: i64,
    owd_min: [i32; 10],
    owd_min_slot: usize,
}

impl LossMeter {
    /// Meter whose clock starts at `now`.
    pub fn new(now: Instant) -> Self {
        LossMeter {
            epoch: now,
            highest: None,
            seen: [0; SEQ_WINDOW / 64],
            expected: 0,
            lost: 0,
            bursts: 0,
            since_report: 0,
            owd_origin: None,
            owd_sum: 0,
            owd_count: 0,
            owd_min: [i32::MAX; 10],
            owd_min_slot: 0,
        }
    }

    fn bit(&mut self, seq: u16) -> (usize, u64) {
        let i = seq as usize % SEQ_WINDOW;
        (i / 64, 1u64 << (i % 64))
    }

    /// Records data packet `seq` sent at `ts`; returns the change in detected losses
    /// (positive for a gap, -1 for a late packet that filled one, 0 for in-order or duplicate).
    pub fn on_packet(&mut self, seq: u16, ts: u16, now: Instant) -> i64 {
        self.on_delay(ts, now);
        let Some(high) = self.highest else {
            self.highest = Some(seq);
            let (w, b) = self.bit(seq);
            self.seen[w] |= b;
            self.expected += 1;
            self.since_report += 1;
            return 0;
        };
        let diff = seq.wrapping_sub(high) as i16;
        if diff > 0 {
            let diff = diff as u16;
            // Clear the bits the window slides over.
            for s in 1..=diff.min(SEQ_WINDOW as u16) {
                let (w, b) = self.bit(high.wrapping_add(s));
                self.seen[w] &= !b;
            }
            let (w, b) = self.bit(seq);
            self.seen[w] |= b;
            self.highest = Some(seq);
            if diff > MAX_COUNTED_GAP {
                return 0;
            }
            let gap = (diff - 1) as u64;
            self.expected += diff as u64;
            self.since_report += 1;
            if gap > 0 {
                self.lost += gap;
                self.bursts += 1;
            }
            gap as i64
        } else {
            let back = (-(diff as i32)) as usize;
            if back >= SEQ_WINDOW {
                return 0;
            }
            let (w, b) = self.bit(seq);
            if self.seen[w] & b != 0 {
                return 0; // duplicate
            }
            self.seen[w] |= b;
            self.since_report += 1;
            if self.lost > 0 {
                self.lost -= 1;
                -1
            } else {
                0
            }
        }
    }

    fn on_delay(&mut self, ts: u16, now: Instant) {
        let ticks =
            (now.saturating_duration_since(self.epoch).as_micros() / TS_TICK_MICROS as u128) as u16;
        let raw = ticks.wrapping_sub(ts);
        let origin = *self.owd_origin.get_or_insert(raw);
        let rel = raw.wrapping_sub(origin) as i16 as i32;
        self.owd_sum += rel as i64;
        self.owd_count += 1;
        let slot = &mut self.owd_min[self.owd_min_slot];
        *slot = (*slot).min(rel);
    }

    /// True when packets arrived since the last report.
    pub fn has_news(&self) -> bool {
        self.since_report > 0
    }

    /// Produces a report and ages the window.
    pub fn report(&mut self) -> LossReport {
        let loss_ppm = self
            .lost
            .saturating_mul(1_000_000)
            .checked_div(self.expected)
            .map_or(0, |v| v.min(1_000_000) as u32);
        let burst_milli = self
            .lost
            .saturating_mul(1000)
            .checked_div(self.bursts)
            .map_or(0, |v| v.min(u32::MAX as u64) as u32);
        let min = self.owd_min.iter().copied().min().unwrap_or(i32::MAX);
        let queue_delay_us = if self.owd_count == 0 || min == i32::MAX {
            0
        } else {
            let mean = self.owd_sum / self.owd_count;
            ((mean - min as i64).max(0) as u64 * TS_TICK_MICROS).min(u32::MAX as u64) as u32
        };
        let report = LossReport {
            loss_ppm,
            burst_milli,
            queue_delay_us,
            packets: self.expected.min(u32::MAX as u64) as u32,
        };
        self.expected = self.expected * 7 / 8;
        self.lost = self.lost * 7 / 8;
        self.bursts = self.bursts * 7 / 8;
        self.since_report = 0;
        self.owd_sum = 0;
        self.owd_count = 0;
        // The baseline minimum covers the last 10 reports (~1 s), so route changes are followed.
        self.owd_min_slot = (self.owd_min_slot + 1) % self.owd_min.len();
        self.owd_min[self.owd_min_slot] = i32::MAX;
        report
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn binomial_tail(n: usize, m: usize, p: f64) -> f64 {
        // P(X > m), X ~ Bin(n, p)
        let mut c = 1.0f64;
        let mut sum = 0.0;
        for i in 0..=m {
            if i > 0 {
                c = c * (n - i + 1) as f64 / i as f64;
            }
            sum += c * p.powi(i as i32) * (1.0 - p).powi((n - i) as i32);
        }
        1.0 - sum
    }

    fn report(loss_ppm: u32, burst_milli: u32, queue_delay_us: u32) -> LossReport {
        LossReport {
            loss_ppm,
            burst_milli,
            queue_delay_us,
            packets: 10_000,
        }
    }

    #[test]
    fn independent_loss_matches_binomial() {
        let p = 0.01;
        for (k, m) in [(16, 2), (32, 4), (32, 6), (8, 1)] {
            let g = block_failure_probability(k, m, 1, p, 1.0 / (1.0 - p));
            let b = binomial_tail(k + m, m, p);
            assert!((g - b).abs() < 1e-9 + b * 1e-6, "k={k} m={m} {g} vs {b}");
        }
        // Reference figures: k=32 m=4 ≈ 4e-6 packet loss, m=6 ≈ 2e-8 (per packet ≈ block/…).
        assert!(binomial_tail(36, 4, p) < 1e-4);
    }

    #[test]
    fn zero_loss_plans_zero_repair() {
        let mut pl = RepairPlanner::new(FecMode::adaptive(), 32, Duration::from_millis(10));
        assert!(pl.plan().is_unprotected());
        pl.on_report(report(0, 0, 0));
        assert!(pl.plan().is_unprotected());
        assert_eq!(pl.plan().depth, 1);
    }

    #[test]
    fn one_percent_random_loss_gets_sufficient_and_minimal_repair() {
        let target = 1e-4;
        let mut pl = RepairPlanner::new(
            FecMode::Adaptive {
                target,
                max_ratio: 0.5,
            },
            32,
            Duration::from_millis(10),
        );
        // Independent 1% loss: mean burst 1/(1-p) = 1.0101.
        pl.on_report(report(10_000, 1010, 0));
        let m = pl.plan().m_for(32);
        assert_eq!(pl.plan().depth, 1);
        assert!(binomial_tail(32 + m, m, 0.01) <= target * 1.01, "m={m}");
        assert!(
            binomial_tail(32 + m - 1, m - 1, 0.01) > target,
            "m={m} not minimal"
        );
        // Small partial blocks get their own (smaller) repair.
        assert!(pl.plan().m_for(4) <= m && pl.plan().m_for(4) >= 1);
    }

    #[test]
    fn repair_ratio_is_capped() {
        let mut pl = RepairPlanner::new(
            FecMode::Adaptive {
                target: 1e-9,
                max_ratio: 0.25,
            },
            32,
            Duration::from_millis(10),
        );
        pl.on_report(report(200_000, 1200, 0));
        assert_eq!(pl.plan().m_for(32), 8);
        assert!(pl
            .plan()
            .repair
            .iter()
            .enumerate()
            .all(|(k, &m)| m <= repair_cap(k, 0.25)));
    }

    #[test]
    fn bursty_loss_is_interleaved() {
        let mut pl = RepairPlanner::new(FecMode::adaptive(), 32, Duration::from_millis(10));
        pl.on_report(report(10_000, 4000, 0));
        assert!(pl.plan().depth >= 3, "depth {}", pl.plan().depth);
        let d = pl.plan().depth;
        let m = pl.plan().m_for(32);
        assert!(block_failure_probability(32, m, d, 0.01, 4.0) <= 1e-4);
        // Without interleaving the same m would not suffice.
        assert!(block_failure_probability(32, m, 1, 0.01, 4.0) > 1e-4);
    }

    #[test]
    fn queue_growth_stops_repair_growth() {
        let mut pl = RepairPlanner::new(FecMode::adaptive(), 32, Duration::from_millis(10));
        pl.on_report(report(5_000, 1005, 1_000));
        let before = pl.plan().clone();
        assert!(before.m_for(32) > 0);
        // Loss rises together with a 40 ms queue: no growth.
        let held = pl.on_report(report(30_000, 1030, 40_000));
        assert!(held);
        assert_eq!(pl.plan().m_for(32), before.m_for(32));
        // Same loss without a queue: repair grows.
        pl.on_report(report(30_000, 1030, 500));
        assert!(pl.plan().m_for(32) > before.m_for(32));
        // Loss falls while queued: repair may shrink.
        pl.on_report(report(1_000, 1001, 40_000));
        assert!(pl.plan().m_for(32) < before.m_for(32) + 1);
    }

    #[test]
    fn meter_counts_gaps_bursts_reorder_and_duplicates() {
        let t0 = Instant::now();
        let mut mt = LossMeter::new(t0);
        let mut net = 0;
        for s in [0u16, 1, 2, 5, 6, 4, 6, 7, 10] {
            net += mt.on_packet(s, 0, t0);
        }
        // Gaps: {3,4} then 4 arrives late; {8,9}. Duplicate 6 ignored.
        assert_eq!(net, 3);
        let r = mt.report();
        assert_eq!(r.packets, 11);
        assert_eq!(r.loss_ppm, 3 * 1_000_000 / 11);
        assert_eq!(r.burst_milli, 1500);
    }

    #[test]
    fn meter_sees_queue_delay_and_forgets_loss() {
        let t0 = Instant::now();
        let mut mt = LossMeter::new(t0);
        // Sender clock == receiver clock; delay grows from 0 to 20 ms.
        for i in 0..100u16 {
            let sent = i * 10; // 1 ms apart in 100 µs ticks
            let delay = Duration::from_micros(i as u64 * 200);
            mt.on_packet(i, sent, t0 + Duration::from_millis(i as u64) + delay);
        }
        let r = mt.report();
        assert!(
            r.queue_delay_us > 8_000 && r.queue_delay_us < 12_000,
            "{r:?}"
        );
        assert_eq!(r.loss_ppm, 0);
        mt.on_packet(200, 0, t0);
        assert!(mt.report().loss_ppm > 0);
        for _ in 0..60 {
            mt.report();
        }
        assert_eq!(mt.report().loss_ppm, 0);
    }
}
