//! Loss measurement (receiver) and repair planning (sender). Pure: time is an input.
//!
//! The sender models loss as a two-state Gilbert chain fitted to the measured loss rate `p` and
//! mean burst length `B` (bad→good `r = 1/B`, good→bad `q = p·r/(1−p)`; independent loss is the
//! special case `B = 1/(1−p)`). Packets of one block are `d` packets apart on the wire when
//! interleaved over `d` blocks, so the chain is stepped `d` at a time, and a dynamic program over
//! the block's `k + m` packets gives the exact probability that more than `m` are lost.

use crate::{
    config::{FecMode, MAX_INTERLEAVE, MAX_M},
    packet::LossReport,
};

pub use crate::meter::{
    LossEstimate, LossMeter, LOSS_HALF_LIFE, LOSS_WINDOW_PACKETS, MAX_COUNTED_GAP, REORDER_SPAN,
};

/// Any block may get up to this many repair packets whatever the ratio cap says (when it allows
/// any repair at all): a small block is a small message or the tail of a transfer, whose latency
/// is worth far more than a few packets. ⌈k·ratio⌉ alone would give a 2-packet request one
/// repair packet, and a 1-packet block of an interleaved round one copy, which a loss burst of
/// two or three packets defeats.
pub const SMALL_BLOCK_REPAIR: usize = 4;
/// On a bursty path a small block may get up to twice the (upper-bound) burst length in repair
/// packets, at most this many: one burst must not take a whole request and its repair.
pub const MAX_SMALL_BLOCK_REPAIR: usize = 12;
/// One-sided 95 % normal quantile: the planner sizes repair for the mean burst length's upper
/// confidence bound, not its point estimate. A sparse flow sees few bursts, and a burst length
/// read short (a long burst split by a delivered packet, a burst cut by an idle period) leaves
/// blocks unprotected exactly when latency matters.
pub const BURST_CONFIDENCE_Z: f64 = 1.645;
/// When the peer's report rests on fewer packets than this, the loss we measure on the reverse
/// direction fills the rest of the sample (the peer of a sparse sender sees too few packets to
/// tell 2% loss from none; the reverse direction usually has the same link).
pub const PRIOR_PACKETS: f64 = 2000.0;
/// Loss assumed at a connection's start (see [`RepairPlanner::new`] for how long): the first
/// losses of a connection come before any report can, and a loss-based congestion controller
/// (Cubic) that sees them leaves slow start with a small window it then grows for seconds at
/// 100 ms. 1% is the random loss of a poor WAN path; the configured target is still applied.
pub const STARTUP_LOSS: f64 = 0.01;
/// Source packets a connection sends under the start-up prior (by then a lossy path has shown
/// its loss in the peer's reports).
pub const STARTUP_PACKETS: u64 = 2000;
/// Repair packets (of any block) the start-up prior may send before small blocks (fewer than
/// [`STARTUP_LARGE_BLOCK`] sources) lose it. Requests and ACK-only packets each get two or three
/// repair packets under the prior, so a request/response flow spends this in its first few
/// exchanges; after that only measured loss buys small blocks repair. Half of it (24) left a gap:
/// Cubic's slow start met an unrepaired random loss at a 117 KB window before the peer's reports
/// showed loss, and the transfer crawled at 14.5 Mbit/s.
pub const STARTUP_REPAIR_BUDGET: u64 = 48;
/// Blocks of at least this many sources keep the prior after the budget is spent, until the
/// peer has measured [`STARTUP_REPORT_PACKETS`] of our packets or [`STARTUP_PACKETS`] went out.
/// They cost it about a tenth of what they carry. With the budget alone, a bulk transfer spent
/// it in its first 200 ms of slow start (whose first flights are small blocks): when the reverse
/// direction had not shown loss by then, the next full blocks went out unprotected before the
/// first report with loss came back, and one unrepaired loss in slow start left Cubic at 40.7
/// Mbit/s against 79.7 in the next run.
pub const STARTUP_LARGE_BLOCK: usize = BULK_BLOCK;
/// Blocks of at least this many sources are a bulk transfer's; smaller ones are messages and the
/// tails of transfers.
pub const BULK_BLOCK: usize = 32;
/// Blocks smaller than [`BULK_BLOCK`] are planned for the configured target divided by this. A
/// bulk block that fails costs one retransmitted packet among thousands (its target is set by
/// what a congestion controller tolerates, see [`crate::config::DEFAULT_TARGET`]); a message
/// that fails waits a whole loss-detection round trip, so a tail latency goal wants it rarer.
/// Small blocks are few packets, so the tighter target costs little: at the default target this
/// is the 1e-5 every block was planned for before the bulk target was relaxed.
pub const MESSAGE_TARGET_DIVISOR: f64 = 10.0;
/// A report on this many of our packets ends the start-up prior: from then on the peer's
/// measurement stands on its own (at 1% loss it shows no loss with probability 0.7%).
pub const STARTUP_REPORT_PACKETS: u32 = 500;

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

/// Repair cap for a block of `k` sources: `ceil(k · max_ratio)`, but at least
/// [`SMALL_BLOCK_REPAIR`] when the ratio allows any repair at all.
pub fn repair_cap(k: usize, max_ratio: f64) -> usize {
    repair_cap_for_burst(k, max_ratio, 1.0)
}

/// [`repair_cap`] on a path whose loss bursts last `burst` packets: blocks of at most
/// [`MAX_SMALL_BLOCK_REPAIR`] sources may get up to `2 × burst` repair packets (at most
/// [`MAX_SMALL_BLOCK_REPAIR`]); larger blocks keep the configured ratio.
pub fn repair_cap_for_burst(k: usize, max_ratio: f64, burst: f64) -> usize {
    if max_ratio <= 0.0 {
        return 0;
    }
    let by_ratio = (k as f64 * max_ratio).ceil() as usize;
    let small = if k <= MAX_SMALL_BLOCK_REPAIR {
        ((2.0 * burst).ceil() as usize).clamp(SMALL_BLOCK_REPAIR, MAX_SMALL_BLOCK_REPAIR)
    } else {
        SMALL_BLOCK_REPAIR
    };
    by_ratio.clamp(small, MAX_M)
}

/// Upper confidence bound ([`BURST_CONFIDENCE_Z`]) of the mean burst length `burst` measured at
/// loss rate `p` over `packets` packets. Burst lengths of a Gilbert channel are geometric, with
/// variance `burst · (burst − 1)`; random loss (`burst` = 1) stays 1.
pub fn burst_upper_bound(p: f64, burst: f64, packets: f64) -> f64 {
    let bursts = p * packets / burst.max(1.0);
    if burst <= 1.0 || bursts <= 0.0 {
        return burst.max(1.0);
    }
    burst + BURST_CONFIDENCE_Z * (burst * (burst - 1.0) / bursts.max(1.0)).sqrt()
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
///
/// Congestion (RFC 9265) is kept out at the source: the receiver's [`LossMeter`] reports only
/// loss that did not coincide with a queue-delay peak, so drops of a queue the sender overfills
/// never raise repair, and QUIC's congestion controller sees them.
#[derive(Debug, Clone)]
pub struct RepairPlanner {
    mode: FecMode,
    k: usize,
    plan: Plan,
    /// Loss rate, mean burst and packets of the latest report (blended with the reverse
    /// direction).
    measured: (f64, f64, f64),
    /// The start-up prior, while it lasts: (source packets sent, repair packets sent).
    startup: Option<(u64, u64)>,
}

impl RepairPlanner {
    /// Planner for `mode`. Adaptive starts under the start-up prior ([`STARTUP_LOSS`]): for
    /// every block until [`STARTUP_REPAIR_BUDGET`] repair packets are sent, then for blocks of
    /// [`STARTUP_LARGE_BLOCK`] sources or more, until [`STARTUP_PACKETS`] source packets are
    /// sent or a report covers [`STARTUP_REPORT_PACKETS`]; from then on repair follows measured
    /// loss only (none at zero loss).
    pub fn new(mode: FecMode, adaptive_k: usize) -> Self {
        let fixed = match mode {
            FecMode::Fixed { k, m } => Some(Plan {
                k: k as usize,
                depth: 1,
                repair: vec![m as usize; k as usize + 1],
            }),
            _ => None,
        };
        let startup = matches!(mode, FecMode::Adaptive { .. }).then_some((0, 0));
        let mut pl = RepairPlanner {
            mode,
            k: fixed.as_ref().map_or(adaptive_k, |p| p.k),
            plan: fixed.unwrap_or(Plan {
                k: adaptive_k,
                depth: 1,
                repair: vec![0; adaptive_k + 1],
            }),
            measured: (0.0, 1.0, 0.0),
            startup,
        };
        pl.replan();
        pl
    }

    /// Adaptive without the start-up prior: zero repair until a report says otherwise.
    pub fn without_startup(mode: FecMode, adaptive_k: usize) -> Self {
        let mut pl = RepairPlanner::new(mode, adaptive_k);
        pl.end_startup();
        pl
    }

    /// Current plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// True while the start-up prior is in force (for some block sizes at least).
    pub fn in_startup(&self) -> bool {
        self.startup.is_some()
    }

    /// True while the start-up prior covers small blocks too (its repair budget is not spent).
    pub fn prior_covers_small_blocks(&self) -> bool {
        self.startup
            .is_some_and(|(_, repaired)| repaired < STARTUP_REPAIR_BUDGET)
    }

    /// Counts sent packets against the start-up prior's packet and repair budgets.
    pub fn on_sent(&mut self, sources: u64, repairs: u64) {
        let Some((sent, repaired)) = self.startup.as_mut() else {
            return;
        };
        let small_before = *repaired < STARTUP_REPAIR_BUDGET;
        *sent += sources;
        *repaired += repairs;
        if *sent >= STARTUP_PACKETS {
            self.end_startup();
        } else if small_before && *repaired >= STARTUP_REPAIR_BUDGET {
            self.replan();
        }
    }

    fn end_startup(&mut self) {
        if self.startup.take().is_some() {
            self.replan();
        }
    }

    /// Feeds a receiver report.
    pub fn on_report(&mut self, report: LossReport) {
        self.on_report_with_prior(report, LossEstimate::default());
    }

    /// Feeds a receiver report; `reverse` is what our own receiver measures on the opposite
    /// direction, weighed in only for the part of [`PRIOR_PACKETS`] the report does not cover.
    pub fn on_report_with_prior(&mut self, report: LossReport, reverse: LossEstimate) {
        self.measured = blend(report, reverse);
        if report.packets >= STARTUP_REPORT_PACKETS {
            self.startup = None;
        }
        self.replan();
    }

    fn replan(&mut self) {
        let FecMode::Adaptive { target, max_ratio } = self.mode else {
            return;
        };
        let (p, burst, packets) = self.measured;
        let burst = burst_upper_bound(p, burst, packets);
        // Under the prior, at least STARTUP_LOSS; loss already measured keeps its burst length,
        // the prior itself is random loss.
        let prior = |on: bool| {
            if on && p < STARTUP_LOSS {
                (STARTUP_LOSS, if p == 0.0 { 1.0 } else { burst })
            } else {
                (p, burst)
            }
        };
        let (p_large, b_large) = prior(self.startup.is_some());
        let (p_small, b_small) = prior(self.prior_covers_small_blocks());
        let cap = repair_cap_for_burst(self.k, max_ratio, b_large);
        // Depth: the shallowest that needs the least repair for a full block.
        let mut best = (usize::MAX, 1);
        for d in 1..=MAX_INTERLEAVE {
            let m = min_repair(self.k, d, p_large, b_large, target, cap);
            if m < best.0 {
                best = (m, d);
            }
            if m == 0 || d as f64 >= b_large * 2.0 {
                break;
            }
        }
        let depth = if best.0 == 0 { 1 } else { best.1 };
        let mut repair = vec![0; self.k + 1];
        for (kk, slot) in repair.iter_mut().enumerate().skip(1) {
            let (p, burst) = if kk >= STARTUP_LARGE_BLOCK {
                (p_large, b_large)
            } else {
                (p_small, b_small)
            };
            let cap = repair_cap_for_burst(kk, max_ratio, burst);
            let target = if kk >= BULK_BLOCK {
                target
            } else {
                target / MESSAGE_TARGET_DIVISOR
            };
            *slot = min_repair(kk, depth, p, burst, target, cap);
        }
        self.plan = Plan {
            k: self.k,
            depth,
            repair,
        };
    }
}

/// Loss rate, mean burst and packets counted from the peer's report, topped up with the reverse
/// direction's counts when the report covers fewer than [`PRIOR_PACKETS`] packets.
fn blend(report: LossReport, reverse: LossEstimate) -> (f64, f64, f64) {
    let n = report.packets as f64;
    let p_fwd = report.loss_ppm as f64 / 1e6;
    let b_fwd = report.burst_milli as f64 / 1000.0;
    let room = (PRIOR_PACKETS - n).max(0.0);
    let p_rev = reverse.rate();
    if room <= 0.0 || reverse.packets <= 0.0 || p_rev == 0.0 {
        return (p_fwd, b_fwd.max(1.0), n);
    }
    let w = room.min(reverse.packets);
    let p = (p_fwd * n + p_rev * w) / (n + w);
    let burst = if p_fwd > 0.0 { b_fwd } else { reverse.burst() };
    (p, burst.max(1.0), n + w)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::DEFAULT_TARGET;

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
        let mut pl = RepairPlanner::without_startup(FecMode::adaptive(), 32);
        assert!(pl.plan().is_unprotected());
        pl.on_report(report(0, 0, 0));
        assert!(pl.plan().is_unprotected());
        assert_eq!(pl.plan().depth, 1);
    }

    #[test]
    fn startup_prior_protects_the_first_packets_then_zero_loss_means_zero_repair() {
        let mut pl = RepairPlanner::new(FecMode::adaptive(), 64);
        assert!(pl.in_startup());
        // Before any report: planned for STARTUP_LOSS of independent loss.
        let m = pl.plan().m_for(64);
        assert!(m >= 1 && block_failure_probability(64, m, 1, STARTUP_LOSS, 1.0) <= DEFAULT_TARGET);
        assert!(pl.plan().m_for(1) >= 1);
        // A lossless report on few packets does not end the prior.
        pl.on_report(LossReport {
            packets: 300,
            ..report(0, 0, 0)
        });
        assert_eq!(pl.plan().m_for(64), m);
        // Measured loss above the prior wins, with its burst.
        pl.on_report(LossReport {
            packets: 300,
            ..report(30_000, 1030, 0)
        });
        assert!(pl.plan().m_for(64) > m);
        pl.on_report(LossReport {
            packets: STARTUP_REPORT_PACKETS - 1,
            ..report(0, 0, 0)
        });
        pl.on_sent(STARTUP_PACKETS - 1, 10);
        assert!(pl.in_startup());
        pl.on_sent(1, 0);
        assert!(!pl.in_startup());
        // The meter measured zero loss: exactly zero repair from now on.
        assert!(pl.plan().is_unprotected(), "{:?}", pl.plan());
        pl.on_report(report(0, 0, 0));
        assert!(pl.plan().is_unprotected());
    }

    #[test]
    fn large_blocks_keep_the_prior_until_the_peer_has_measured_enough() {
        let mut pl = RepairPlanner::new(FecMode::adaptive(), 64);
        let m = pl.plan().m_for(64);
        // The budget goes on a slow start's first, small flights...
        pl.on_sent(200, STARTUP_REPAIR_BUDGET);
        assert!(pl.in_startup());
        assert!(!pl.prior_covers_small_blocks());
        // ...small blocks lose the prior, large ones keep it.
        assert_eq!(
            pl.plan().m_for(STARTUP_LARGE_BLOCK - 1),
            0,
            "{:?}",
            pl.plan()
        );
        assert_eq!(pl.plan().m_for(64), m);
        assert!(pl.plan().m_for(STARTUP_LARGE_BLOCK) >= 1);
        // A report on too few packets changes nothing; one on enough ends the prior, and zero
        // measured loss is zero repair.
        pl.on_report(LossReport {
            packets: STARTUP_REPORT_PACKETS - 1,
            ..report(0, 0, 0)
        });
        assert_eq!(pl.plan().m_for(64), m);
        pl.on_report(LossReport {
            packets: STARTUP_REPORT_PACKETS,
            ..report(0, 0, 0)
        });
        assert!(!pl.in_startup());
        assert!(pl.plan().is_unprotected());
        // Without reports, STARTUP_PACKETS end it.
        let mut pl = RepairPlanner::new(FecMode::adaptive(), 64);
        pl.on_sent(STARTUP_PACKETS - 1, 200);
        assert!(pl.in_startup());
        pl.on_sent(1, 0);
        assert!(!pl.in_startup());
        assert!(pl.plan().is_unprotected());
    }

    #[test]
    fn startup_prior_leaves_small_blocks_when_its_repair_budget_is_spent() {
        let mut pl = RepairPlanner::new(FecMode::adaptive(), 64);
        pl.on_sent(10, STARTUP_REPAIR_BUDGET - 1);
        assert!(pl.prior_covers_small_blocks());
        assert!(pl.plan().m_for(2) >= 1);
        pl.on_sent(1, 1);
        assert!(!pl.prior_covers_small_blocks());
        assert!(
            (1..STARTUP_LARGE_BLOCK).all(|k| pl.plan().m_for(k) == 0),
            "{:?}",
            pl.plan()
        );
        // Measured loss still buys repair afterwards.
        pl.on_report(report(10_000, 1010, 0));
        assert!(pl.plan().m_for(64) >= 1);
        // Fixed mode has no prior.
        let fixed = RepairPlanner::new(FecMode::Fixed { k: 8, m: 2 }, 64);
        assert!(!fixed.in_startup());
        assert_eq!(fixed.plan().m_for(8), 2);
    }

    #[test]
    fn one_percent_random_loss_gets_sufficient_and_minimal_repair() {
        let target = 1e-4;
        let mut pl = RepairPlanner::without_startup(
            FecMode::Adaptive {
                target,
                max_ratio: 0.5,
            },
            32,
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
    fn bulk_blocks_get_the_target_and_messages_a_tenth_of_it() {
        let p = 0.01;
        let mut pl = RepairPlanner::without_startup(FecMode::adaptive(), 64);
        pl.on_report(report(10_000, 1010, 0));
        let minimal = |k: usize, target: f64| {
            let m = pl.plan().m_for(k);
            assert!(binomial_tail(k + m, m, p) <= target * 1.01, "k={k} m={m}");
            assert!(
                m == 0 || binomial_tail(k + m - 1, m - 1, p) > target,
                "k={k} m={m} not minimal for {target}"
            );
            m
        };
        let full = minimal(64, DEFAULT_TARGET);
        minimal(BULK_BLOCK, DEFAULT_TARGET);
        let message = DEFAULT_TARGET / MESSAGE_TARGET_DIVISOR;
        minimal(BULK_BLOCK - 1, message);
        minimal(4, message);
        // The relaxed bulk target saves a repair packet per full block at 1% loss.
        assert!(binomial_tail(64 + full, full, p) > message, "{full}");
    }

    #[test]
    fn repair_ratio_is_capped() {
        let mut pl = RepairPlanner::without_startup(
            FecMode::Adaptive {
                target: 1e-9,
                max_ratio: 0.25,
            },
            32,
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
        let mut pl = RepairPlanner::without_startup(FecMode::adaptive(), 32);
        pl.on_report(report(10_000, 4000, 0));
        assert!(pl.plan().depth >= 3, "depth {}", pl.plan().depth);
        let d = pl.plan().depth;
        let m = pl.plan().m_for(32);
        assert!(block_failure_probability(32, m, d, 0.01, 4.0) <= 1e-4);
        // Without interleaving the same m would not suffice.
        assert!(block_failure_probability(32, m, 1, 0.01, 4.0) > 1e-4);
    }

    #[test]
    fn small_blocks_get_repair_beyond_the_ratio_cap() {
        // 2% loss: a 2-packet request gets 3 repair packets (⌈2·0.5⌉ = 1 would leave a 1.2e-3
        // failure rate), a full block stays within the ratio. Both are planned for a message's
        // target, a tenth of a full block's.
        let message = DEFAULT_TARGET / MESSAGE_TARGET_DIVISOR;
        let mut pl = RepairPlanner::without_startup(FecMode::adaptive(), 32);
        pl.on_report(report(20_000, 1020, 0));
        assert_eq!(pl.plan().m_for(1), 2);
        assert_eq!(pl.plan().m_for(2), 3);
        assert!(block_failure_probability(2, 3, 1, 0.02, 1.02) <= message);
        assert!(block_failure_probability(2, 2, 1, 0.02, 1.02) > message);
        // Bursty loss (mean burst 4): interleaved single-packet blocks get several copies,
        // more than a random-loss path's cap, for the burst's upper bound.
        pl.on_report(report(10_000, 4000, 0));
        let d = pl.plan().depth;
        assert!(d > 1);
        let m1 = pl.plan().m_for(1);
        assert!(
            (SMALL_BLOCK_REPAIR + 1..=MAX_SMALL_BLOCK_REPAIR).contains(&m1),
            "{m1}"
        );
        let upper = burst_upper_bound(0.01, 4.0, 10_000.0);
        assert!(block_failure_probability(1, m1, d, 0.01, upper) <= message);
        assert!(pl.plan().m_for(32) <= 16);
        assert_eq!(repair_cap(2, 0.0), 0);
    }

    #[test]
    fn burst_length_is_planned_at_its_upper_confidence_bound() {
        // Random loss stays random.
        assert_eq!(burst_upper_bound(0.02, 1.0, 10_000.0), 1.0);
        // Mean 4 from 25 bursts: a little above; from 2 bursts: far above; more data, closer.
        let many = burst_upper_bound(0.01, 4.0, 10_000.0);
        let few = burst_upper_bound(0.01, 4.0, 800.0);
        assert!((4.3..5.5).contains(&many), "{many}");
        assert!(few > many + 1.0, "{few} vs {many}");
        assert!(burst_upper_bound(0.01, 4.0, 1e7) < 4.05);
        // The planner sizes a full block for the bound, not the point estimate.
        let mut pl = RepairPlanner::without_startup(FecMode::adaptive(), 32);
        pl.on_report(LossReport {
            loss_ppm: 10_000,
            burst_milli: 4000,
            queue_delay_us: 0,
            packets: 800,
        });
        let (d, m) = (pl.plan().depth, pl.plan().m_for(32));
        assert!(block_failure_probability(32, m, d, 0.01, few) <= DEFAULT_TARGET);
    }

    #[test]
    fn sparse_report_is_topped_up_with_the_reverse_direction() {
        // The peer saw 100 of our packets and no loss; we saw 2% on 5000 of theirs.
        let reverse = LossEstimate {
            packets: 5000.0,
            lost: 100.0,
            bursts: 100.0,
        };
        let sparse = LossReport {
            loss_ppm: 0,
            burst_milli: 0,
            queue_delay_us: 0,
            packets: 100,
        };
        let mut pl = RepairPlanner::without_startup(FecMode::adaptive(), 32);
        pl.on_report_with_prior(sparse, reverse);
        assert!(pl.plan().m_for(2) >= 1, "{:?}", pl.plan());
        // A well-sampled lossless forward direction ignores the reverse one.
        let mut full = sparse;
        full.packets = 10_000;
        pl.on_report_with_prior(full, reverse);
        assert!(pl.plan().is_unprotected());
        // Both directions lossless: zero repair.
        pl.on_report_with_prior(sparse, LossEstimate::default());
        assert!(pl.plan().is_unprotected());
    }
}
