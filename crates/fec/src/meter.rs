//! Receiver-side loss measurement. Pure: time is an input.
//!
//! Two things make a useful estimate for the sender's planner:
//! - **Few packets.** Counts decay per packet (a window of about [`LOSS_WINDOW_PACKETS`]) and,
//!   slowly, per second ([`LOSS_HALF_LIFE`]), in floating point: a flow that sends 50 packets a
//!   second keeps its one loss in 100 in view instead of rounding it away at the next report.
//! - **Congestion is not link loss** (RFC 9265). Every gap is classified by the queueing delay of
//!   the packet that revealed it: a drop-tail queue drops only when it is full, so the next packet
//!   through sees the queue at its peak. A gap revealed at (near) the recent peak queueing delay,
//!   above `congestion_delay`, is congestion: it, the packets it covers and the packets that
//!   arrived at the peak are left out of the rate the planner sizes repair for. Random loss is
//!   independent of the queue, so the rate measured over the packets that did not arrive at a
//!   peak is an unbiased estimate of it, and it keeps counting random loss at a flat delay
//!   (standing or not).
//! - **An overflow is judged whole.** A report interval whose congestion losses outnumber its
//!   link losses, and the interval after it, add nothing to the estimate: the few overflow drops
//!   the delay rule misses would otherwise buy repair that overflows the queue further.

use std::time::{Duration, Instant};

use crate::packet::{LossReport, TS_TICK_MICROS};

/// Packets of history the loss rate averages over (per-packet exponential decay).
pub const LOSS_WINDOW_PACKETS: f64 = 4096.0;
/// Loss history also halves every this long, so a quiet flow's old losses fade.
pub const LOSS_HALF_LIFE: Duration = Duration::from_secs(10);
/// Below this many (decayed) losses in the window the reported rate is exactly zero: zero loss
/// must mean zero repair, and a long-gone loss must not keep repair on.
const LOSS_FLOOR: f64 = 0.5;
/// Bits of sequence history kept to tell late packets from duplicates.
const SEQ_WINDOW: usize = 1024;
/// A missing sequence number is final (lost, and part of a burst with its missing neighbours)
/// once this many later ones arrived, or at the next report. Packets the sender's send paths
/// put on the wire slightly out of order (a timer-flushed repair beside quinn's next packet)
/// must not split one loss burst into several, or turn a delivered packet into a burst of
/// its own: the burst length sizes interleaving and repair.
pub const REORDER_SPAN: u16 = 32;
/// A forward jump larger than this is a restart, not loss.
pub const MAX_COUNTED_GAP: u16 = 4096;
/// One-way-delay baseline and peak are kept per slot of this length...
const DELAY_SLOT: Duration = Duration::from_secs(1);
/// ...over this many slots (10 s, like BBR's min-RTT filter: long enough that a queue standing
/// for a whole transfer is not mistaken for the path's base delay).
const DELAY_SLOTS: usize = 10;
/// A gap revealed at a queueing delay at least this fraction (num/den) of the recent peak is
/// congestion.
const PEAK_FRACTION: (i64, i64) = (3, 4);

/// A gap revealed this soon after the queue was at its peak, with the queue still above
/// `congestion_delay`, is congestion too: a drop-tail queue that overflowed drops the packets
/// that arrive while it drains back, at delays just under the peak. On the lossless emulator
/// link, 2 of BBR's 221 start-up overflow drops fell there, were counted as link loss and kept
/// 2.8 MB of repair going (2.5–2.8 % of a 96 MiB transfer).
pub const CONGESTION_ECHO: Duration = Duration::from_millis(25);

/// How much the loss history keeps after `packets` more packets (per-packet exponential decay
/// over a window of [`LOSS_WINDOW_PACKETS`]).
fn window_decay(packets: u64) -> f64 {
    (1.0 - 1.0 / LOSS_WINDOW_PACKETS).powi(packets.min(i32::MAX as u64) as i32)
}

/// Decayed loss counts of the non-congestion class: what the sender may plan repair for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossEstimate {
    /// Packets expected (received + lost), decayed.
    pub packets: f64,
    /// Packets lost, decayed.
    pub lost: f64,
    /// Loss events (gaps), decayed.
    pub bursts: f64,
}

impl LossEstimate {
    /// Loss rate, 0 below the floor.
    pub fn rate(&self) -> f64 {
        if self.lost < LOSS_FLOOR || self.packets <= 0.0 {
            0.0
        } else {
            (self.lost / self.packets).min(1.0)
        }
    }

    /// Mean burst length (0 without loss).
    pub fn burst(&self) -> f64 {
        if self.rate() == 0.0 || self.bursts <= 0.0 {
            0.0
        } else {
            (self.lost / self.bursts).max(1.0)
        }
    }

    fn scale(&mut self, f: f64) {
        self.packets *= f;
        self.lost *= f;
        self.bursts *= f;
    }
}

/// Receiver side: loss rate, burst length and queueing delay from the data packet headers.
#[derive(Debug, Clone)]
pub struct LossMeter {
    epoch: Instant,
    congestion_ticks: i64,
    highest: Option<u16>,
    seen: [u64; SEQ_WINDOW / 64],
    /// Sequence numbers that arrived at a queue-delay peak, or whose gap a packet arriving at
    /// one revealed (congestion): left out of the random-loss rate either way.
    congested: [u64; SEQ_WINDOW / 64],
    /// Next sequence number to finalize.
    final_next: u16,
    /// The last finalized sequence number was a (non-congestion) loss: a burst is open.
    in_burst: bool,
    random: LossEstimate,
    /// What the packets finalized since the last report add to `random` (decayed among
    /// themselves), unless congestion losses outnumbered their link losses (see
    /// [`LossMeter::report`]).
    pending: LossEstimate,
    /// Packets and link losses finalized since the last report, undecayed.
    interval_packets: u64,
    interval_lost: u64,
    /// Losses attributed to congestion since the last report.
    interval_congestion: u64,
    /// The last report interval was left out for congestion (the queue may still be draining).
    overflowed: bool,
    /// Losses attributed to congestion since the last [`LossMeter::take_congestion_losses`].
    congestion_lost: u64,
    since_report: u64,
    /// A non-congestion loss was seen since the last report (the decoder reports it early).
    fresh_loss: bool,
    last_decay: Instant,
    // One-way delay, ticks relative to the first sample (clock offset cancels).
    owd_origin: Option<u16>,
    owd_sum: i64,
    owd_count: i64,
    base: [i32; DELAY_SLOTS],
    peak_queue: [i32; DELAY_SLOTS],
    slot: usize,
    slot_start: Instant,
    last_queue: i64,
    /// When a packet last saw the queue at its peak (above `congestion_delay`).
    last_peak: Option<Instant>,
}

impl LossMeter {
    /// Meter whose clock starts at `now`; gaps revealed at a queueing delay of at least
    /// `congestion_delay` that is near the recent peak count as congestion.
    pub fn new(now: Instant, congestion_delay: Duration) -> Self {
        LossMeter {
            epoch: now,
            congestion_ticks: (congestion_delay.as_micros() / TS_TICK_MICROS as u128)
                .min(i32::MAX as u128) as i64,
            highest: None,
            seen: [0; SEQ_WINDOW / 64],
            congested: [0; SEQ_WINDOW / 64],
            final_next: 0,
            in_burst: false,
            random: LossEstimate::default(),
            pending: LossEstimate::default(),
            interval_packets: 0,
            interval_lost: 0,
            interval_congestion: 0,
            overflowed: false,
            congestion_lost: 0,
            since_report: 0,
            fresh_loss: false,
            last_decay: now,
            owd_origin: None,
            owd_sum: 0,
            owd_count: 0,
            base: [i32::MAX; DELAY_SLOTS],
            peak_queue: [0; DELAY_SLOTS],
            slot: 0,
            slot_start: now,
            last_queue: 0,
            last_peak: None,
        }
    }

    fn bit(seq: u16) -> (usize, u64) {
        let i = seq as usize % SEQ_WINDOW;
        (i / 64, 1u64 << (i % 64))
    }

    /// Records data packet `seq` sent at `ts` (on packets that carry one); returns the change in
    /// losses finalized by this packet (positive for gaps that became final, -1 for a packet that
    /// arrived after its gap was final, 0 otherwise). A packet without a timestamp is judged by
    /// the queue the latest timestamped packet that arrived saw (usually at most
    /// [`crate::packet::TS_INTERVAL`] of sending earlier; more when that one was lost).
    pub fn on_packet(&mut self, seq: u16, ts: Option<u16>, now: Instant) -> i64 {
        let congested = match ts {
            Some(ts) => self.on_delay(ts, now),
            None => self.still_congested(now),
        };
        self.since_report += 1;
        let Some(high) = self.highest else {
            self.highest = Some(seq);
            self.final_next = seq;
            let (w, b) = Self::bit(seq);
            self.seen[w] |= b;
            return 0;
        };
        let diff = seq.wrapping_sub(high) as i16;
        if diff > 0 {
            let diff = diff as u16;
            let mut delta = 0;
            if diff > MAX_COUNTED_GAP {
                // A restart, not loss: settle what came before and begin anew.
                delta += self.settle();
                self.seen = [0; SEQ_WINDOW / 64];
                self.congested = [0; SEQ_WINDOW / 64];
                if congested {
                    let (w, b) = Self::bit(seq);
                    self.congested[w] |= b;
                }
                self.final_next = seq;
                self.in_burst = false;
            } else {
                // Finalize what the window is about to slide over.
                let keep_from = seq.wrapping_sub(SEQ_WINDOW as u16 - 1);
                while (keep_from.wrapping_sub(self.final_next) as i16) > 0
                    && self.final_next != high.wrapping_add(1)
                {
                    delta += self.finalize_next();
                }
                if (keep_from.wrapping_sub(self.final_next) as i16) > 0 {
                    // One gap wider than the window: final at once, one burst.
                    let n = keep_from.wrapping_sub(self.final_next) as u64;
                    delta += self.count_lost_run(n, congested);
                    self.final_next = keep_from;
                }
                for s in 1..=diff.min(SEQ_WINDOW as u16) {
                    let x = high.wrapping_add(s);
                    let (w, b) = Self::bit(x);
                    self.seen[w] &= !b;
                    if congested {
                        self.congested[w] |= b;
                    } else {
                        self.congested[w] &= !b;
                    }
                }
                if diff > 1 && !congested {
                    self.fresh_loss = true;
                }
            }
            let (w, b) = Self::bit(seq);
            self.seen[w] |= b;
            self.highest = Some(seq);
            while seq.wrapping_sub(self.final_next) >= REORDER_SPAN {
                delta += self.finalize_next();
            }
            delta
        } else {
            let back = (-(diff as i32)) as usize;
            if back >= SEQ_WINDOW {
                return 0;
            }
            let (w, b) = Self::bit(seq);
            if self.seen[w] & b != 0 {
                return 0; // duplicate
            }
            self.seen[w] |= b;
            if (seq.wrapping_sub(self.final_next) as i16) >= 0 {
                // Late, but before its gap was final: never counted lost; whether it counts as
                // a packet depends on the queue it arrived at, not the one its gap was seen at.
                if congested {
                    self.congested[w] |= b;
                } else {
                    self.congested[w] &= !b;
                }
                return 0;
            }
            // Counted lost already; undo in its class.
            if self.congested[w] & b != 0 {
                if self.congestion_lost > 0 {
                    self.congestion_lost -= 1;
                    self.interval_congestion = self.interval_congestion.saturating_sub(1);
                    return -1;
                }
                0
            } else if self.pending.lost >= 1.0 {
                self.pending.lost -= 1.0;
                self.interval_lost = self.interval_lost.saturating_sub(1);
                -1
            } else if self.random.lost >= 1.0 {
                self.random.lost -= 1.0;
                -1
            } else {
                0
            }
        }
    }

    /// Finalizes every sequence number up to the highest seen; returns the losses finalized.
    pub fn settle(&mut self) -> i64 {
        let Some(high) = self.highest else {
            return 0;
        };
        let mut delta = 0;
        while self.final_next != high.wrapping_add(1) {
            delta += self.finalize_next();
        }
        delta
    }

    fn finalize_next(&mut self) -> i64 {
        let s = self.final_next;
        self.final_next = s.wrapping_add(1);
        let (w, b) = Self::bit(s);
        if self.seen[w] & b != 0 {
            self.in_burst = false;
            // A packet that arrived at a queue-delay peak is left out of the rate, like the
            // gaps such packets reveal: counted, it would dilute the random loss measured over
            // the rest (a queue at its peak for half the time halved it, and repair fell short).
            if self.congested[w] & b == 0 {
                self.count_packets(1, 0);
            }
            0
        } else if self.congested[w] & b != 0 {
            self.in_burst = false;
            self.congestion_lost += 1;
            self.interval_congestion += 1;
            1
        } else {
            self.count_packets(1, 1);
            1
        }
    }

    /// A run of `n` lost packets finalized at once (a gap wider than the history window).
    fn count_lost_run(&mut self, n: u64, congested: bool) -> i64 {
        if congested {
            self.in_burst = false;
            self.congestion_lost += n;
            self.interval_congestion += n;
        } else {
            self.count_packets(n, n);
        }
        n as i64
    }

    /// Adds `expected` packets of which `lost` (at the end, contiguous) were lost.
    fn count_packets(&mut self, expected: u64, lost: u64) {
        self.pending.scale(window_decay(expected));
        self.pending.packets += expected as f64;
        self.interval_packets += expected;
        if lost > 0 {
            self.pending.lost += lost as f64;
            self.interval_lost += lost;
            if !self.in_burst {
                self.pending.bursts += 1.0;
            }
            self.in_burst = true;
        }
    }

    /// Updates the delay filters with one packet; true when a gap it reveals is congestion.
    fn on_delay(&mut self, ts: u16, now: Instant) -> bool {
        while now.saturating_duration_since(self.slot_start) >= DELAY_SLOT {
            self.slot_start += DELAY_SLOT;
            self.slot = (self.slot + 1) % DELAY_SLOTS;
            self.base[self.slot] = i32::MAX;
            self.peak_queue[self.slot] = 0;
            if now.saturating_duration_since(self.slot_start) >= DELAY_SLOT * DELAY_SLOTS as u32 {
                // Long silence: skip ahead instead of looping slot by slot.
                self.slot_start = now;
                self.base = [i32::MAX; DELAY_SLOTS];
                self.peak_queue = [0; DELAY_SLOTS];
            }
        }
        let ticks =
            (now.saturating_duration_since(self.epoch).as_micros() / TS_TICK_MICROS as u128) as u16;
        let raw = ticks.wrapping_sub(ts);
        let origin = *self.owd_origin.get_or_insert(raw);
        let rel = raw.wrapping_sub(origin) as i16 as i32;
        self.owd_sum += rel as i64;
        self.owd_count += 1;
        let slot = &mut self.base[self.slot];
        *slot = (*slot).min(rel);
        let base = self.base.iter().copied().min().unwrap_or(rel);
        let queue = (rel as i64 - base as i64).max(0);
        let q32 = queue.min(i32::MAX as i64) as i32;
        let peak_slot = &mut self.peak_queue[self.slot];
        *peak_slot = (*peak_slot).max(q32);
        let peak = self.peak_queue.iter().copied().max().unwrap_or(0) as i64;
        self.last_queue = queue;
        let queued = queue >= self.congestion_ticks.max(1);
        if queued && queue * PEAK_FRACTION.1 >= peak * PEAK_FRACTION.0 {
            self.last_peak = Some(now);
            return true;
        }
        self.still_congested(now)
    }

    /// The latest measured queue is above `congestion_delay` and was at its peak within
    /// [`CONGESTION_ECHO`].
    fn still_congested(&self, now: Instant) -> bool {
        self.last_queue >= self.congestion_ticks.max(1)
            && self
                .last_peak
                .is_some_and(|t| now.saturating_duration_since(t) <= CONGESTION_ECHO)
    }

    /// True when packets arrived since the last report.
    pub fn has_news(&self) -> bool {
        self.since_report > 0
    }

    /// True when a non-congestion loss was seen since the last report.
    pub fn has_fresh_loss(&self) -> bool {
        self.fresh_loss
    }

    /// The non-congestion loss counts as they stand (the sender side of the same peer uses them
    /// as a prior when the peer's report rests on few packets).
    pub fn estimate(&self) -> LossEstimate {
        self.random
    }

    /// Adds the interval's link losses to the estimate, unless congestion losses outnumbered
    /// them. While a queue overflows, the queueing delay a gap is judged by is least reliable
    /// (a drop-tail queue drops at its peak, but a packet revealing the gap may have waited
    /// less), and a few of hundreds of overflow drops pass for link loss; planned for, they buy
    /// repair the sender's congestion controller does not count, which overflows the queue
    /// further (on the lossless emulator link: 3 of BBR's 681 start-up drops counted as link
    /// loss, and repair then ran at 13 % of the link for seconds, every interval dropping
    /// hundreds more). The next interval is left out too: the queue drains in it, and the drops
    /// it reveals at falling delays are the overflow's (2 such, one report after BBR's start-up
    /// overflow, bought 3 MB of deeply interleaved repair on a 96 MiB lossless transfer). Each
    /// is left out whole, packets too, so the rate measured over the other intervals stays
    /// unbiased (RFC 9265: repair must not grow with congestion); intervals without overflow
    /// (all of them, on a path that does not congest) measure link loss as before.
    fn commit_interval(&mut self) {
        let overflow = self.interval_congestion > self.interval_lost;
        let draining = std::mem::replace(&mut self.overflowed, overflow);
        if !overflow && !draining {
            self.random.scale(window_decay(self.interval_packets));
            self.random.packets += self.pending.packets;
            self.random.lost += self.pending.lost;
            self.random.bursts += self.pending.bursts;
        }
        self.pending = LossEstimate::default();
        self.interval_packets = 0;
        self.interval_lost = 0;
        self.interval_congestion = 0;
    }

    /// Losses attributed to congestion since the last call.
    pub fn take_congestion_losses(&mut self) -> u64 {
        std::mem::take(&mut self.congestion_lost)
    }

    /// Queueing delay the latest timestamped packet saw, microseconds.
    pub fn queue_delay_us(&self) -> u64 {
        self.last_queue as u64 * TS_TICK_MICROS
    }

    /// Produces a report (non-congestion loss only) and ages the window by the time elapsed.
    pub fn report(&mut self, now: Instant) -> LossReport {
        self.settle();
        self.commit_interval();
        let dt = now.saturating_duration_since(self.last_decay);
        self.last_decay = now;
        self.random
            .scale(0.5f64.powf(dt.as_secs_f64() / LOSS_HALF_LIFE.as_secs_f64()));
        let rate = self.random.rate();
        let loss_ppm = (rate * 1e6).round().min(1e6) as u32;
        let burst_milli = (self.random.burst() * 1000.0).round().min(u32::MAX as f64) as u32;
        let base = self.base.iter().copied().min().unwrap_or(i32::MAX);
        let queue_delay_us = if self.owd_count == 0 || base == i32::MAX {
            0
        } else {
            let mean = self.owd_sum / self.owd_count;
            ((mean - base as i64).max(0) as u64 * TS_TICK_MICROS).min(u32::MAX as u64) as u32
        };
        let report = LossReport {
            loss_ppm,
            burst_milli,
            queue_delay_us,
            packets: self.random.packets.round().min(u32::MAX as f64) as u32,
        };
        self.since_report = 0;
        self.fresh_loss = false;
        self.owd_sum = 0;
        self.owd_count = 0;
        report
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const CONG: Duration = Duration::from_millis(10);

    /// The sender's timestamp rule (as [`crate::Encoder`] applies it): a packet sent at
    /// `sent_us` carries a timestamp when `TS_INTERVAL` passed since the last one that did,
    /// whether or not the packet is then lost.
    fn stamp(last: &mut Option<u64>, sent_us: u64) -> Option<u16> {
        let every = crate::packet::TS_INTERVAL.as_micros() as u64;
        if last.is_some_and(|t| sent_us - t < every) {
            return None;
        }
        *last = Some(sent_us);
        Some((sent_us / TS_TICK_MICROS) as u16)
    }

    /// Sender and receiver share a clock; `delay_us` is the one-way delay of packet `i`.
    /// Packets `0..n` sent `gap_us` apart, with a report every 100 ms of arrivals, as the
    /// decoder makes them (the meter judges each report interval's losses as a whole).
    fn feed(
        mt: &mut LossMeter,
        t0: Instant,
        n: u16,
        gap_us: u64,
        lost: impl Fn(u16) -> bool,
        delay_us: impl Fn(u16) -> u64,
    ) {
        let mut last = None;
        let mut next_report = t0 + Duration::from_millis(100);
        for i in 0..n {
            let sent = i as u64 * gap_us;
            let ts = stamp(&mut last, sent);
            if lost(i) {
                continue;
            }
            let now = t0 + Duration::from_micros(sent + delay_us(i));
            if now >= next_report {
                mt.report(now);
                next_report = now + Duration::from_millis(100);
            }
            mt.on_packet(i, ts, now);
        }
    }

    #[test]
    fn meter_counts_gaps_bursts_reorder_and_duplicates() {
        let t0 = Instant::now();
        let mut mt = LossMeter::new(t0, CONG);
        let mut net = 0;
        for s in [0u16, 1, 2, 5, 6, 4, 6, 7, 10] {
            net += mt.on_packet(s, Some(0), t0);
        }
        // Losses become final after REORDER_SPAN later packets or at the next report.
        assert_eq!(net, 0);
        net += mt.settle();
        // Gaps: {3,4} then 4 arrives late; {8,9}. Duplicate 6 ignored.
        assert_eq!(net, 3);
        let r = mt.report(t0);
        let decayed = (1.0 - 1.0 / LOSS_WINDOW_PACKETS).powi(10);
        assert!((r.packets as f64 - 11.0 * decayed).abs() < 1.0, "{r:?}");
        assert!((r.loss_ppm as f64 - 3e6 / 11.0).abs() < 300.0, "{r:?}");
        assert_eq!(r.burst_milli, 1500);
    }

    #[test]
    fn reordering_on_the_wire_does_not_split_or_invent_bursts() {
        // Gilbert loss, mean burst 4, 1%; the sender's paths swap neighbours now and then (a
        // timer-flushed repair overtaken by the next QUIC packet).
        let t0 = Instant::now();
        let mut mt = LossMeter::new(t0, CONG);
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let (p, burst) = (0.01, 4.0);
        let (r, q) = (1.0 / burst, 0.01 / burst / (1.0 - p));
        let mut bad = false;
        let mut order: Vec<u16> = (0..30_000u16).collect();
        for i in (0..order.len() - 1).step_by(7) {
            if rng.gen_bool(0.3) {
                order.swap(i, i + 1);
            }
        }
        let mut lost = 0;
        for &s in &order {
            bad = if bad {
                !rng.gen_bool(r)
            } else {
                rng.gen_bool(q)
            };
            if bad {
                lost += 1;
                continue;
            }
            mt.on_packet(s, Some(0), t0);
        }
        let rep = mt.report(t0 + Duration::from_secs(3));
        assert!(lost > 150, "{lost}");
        assert!((7_000..14_000).contains(&rep.loss_ppm), "{rep:?}");
        assert!(
            (3_000..5_500).contains(&rep.burst_milli),
            "burst measured {rep:?}"
        );
    }

    #[test]
    fn meter_sees_queue_delay() {
        let t0 = Instant::now();
        let mut mt = LossMeter::new(t0, CONG);
        // Delay grows from 0 to 20 ms over 100 packets 1 ms apart, all in one report interval.
        let mut last = None;
        for i in 0..100u16 {
            let sent = i as u64 * 1000;
            let ts = stamp(&mut last, sent);
            mt.on_packet(i, ts, t0 + Duration::from_micros(sent + i as u64 * 200));
        }
        let r = mt.report(t0 + Duration::from_millis(120));
        assert!(
            r.queue_delay_us > 8_000 && r.queue_delay_us < 12_000,
            "{r:?}"
        );
        assert_eq!(r.loss_ppm, 0);
    }

    #[test]
    fn sparse_single_losses_are_kept_not_rounded_away() {
        // 60 packets a second, one loss in 50, reports every 100 ms for 20 s.
        let t0 = Instant::now();
        let mut mt = LossMeter::new(t0, CONG);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut last = LossReport::default();
        let mut nonzero = 0;
        for i in 0..1200u16 {
            let now = t0 + Duration::from_micros(i as u64 * 16_667);
            if rng.gen_bool(0.98) {
                let ts = ((i as u64 * 16_667) / TS_TICK_MICROS) as u16;
                mt.on_packet(i, Some(ts), now + Duration::from_millis(50));
            }
            if i % 6 == 5 {
                last = mt.report(now);
                nonzero += (last.loss_ppm > 0) as u32;
            }
        }
        // After the first seconds every report carries the loss, near 2%.
        assert!(nonzero >= 190, "only {nonzero} of 200 reports saw loss");
        assert!(
            (10_000..35_000).contains(&last.loss_ppm),
            "estimate {last:?}"
        );
    }

    #[test]
    fn zero_loss_reports_exactly_zero_and_old_loss_fades() {
        let t0 = Instant::now();
        let mut mt = LossMeter::new(t0, CONG);
        feed(&mut mt, t0, 20_000, 100, |_| false, |_| 1000);
        assert_eq!(mt.report(t0 + Duration::from_secs(2)).loss_ppm, 0);
        // One loss, then a long lossless stretch: the rate returns to exactly zero.
        let mut mt = LossMeter::new(t0, CONG);
        feed(&mut mt, t0, 30_000, 100, |i| i == 10, |_| 1000);
        assert_eq!(mt.report(t0 + Duration::from_secs(3)).loss_ppm, 0);
        // And a quiet flow forgets by time.
        let mut mt = LossMeter::new(t0, CONG);
        feed(&mut mt, t0, 100, 10_000, |i| i == 10, |_| 1000);
        assert!(mt.report(t0 + Duration::from_secs(1)).loss_ppm > 0);
        mt.on_packet(100, Some(0), t0 + Duration::from_secs(31));
        assert_eq!(mt.report(t0 + Duration::from_secs(31)).loss_ppm, 0);
    }

    #[test]
    fn drops_at_a_queue_delay_peak_are_congestion_not_link_loss() {
        // A sender overfills a drop-tail queue: delay ramps 0 → 100 ms, then every 20th packet
        // is dropped while the queue stays full (bursts of 8), as BBR's overshoot does.
        let t0 = Instant::now();
        let mut mt = LossMeter::new(t0, CONG);
        let n = 20_000u16;
        let delay = |i: u16| (i as u64 * 10).min(100_000);
        let lost = |i: u16| i > 12_000 && (i % 160) < 8;
        let mut net = 0i64;
        let mut last = None;
        for i in 0..n {
            let sent = i as u64 * 100;
            let ts = stamp(&mut last, sent);
            if lost(i) {
                continue;
            }
            net += mt.on_packet(i, ts, t0 + Duration::from_micros(sent + delay(i)));
        }
        assert!(net >= 390, "gaps still count as losses: {net}");
        let r = mt.report(t0 + Duration::from_secs(2));
        assert_eq!(r.loss_ppm, 0, "{r:?}");
        assert_eq!(mt.take_congestion_losses(), net as u64);
    }

    #[test]
    fn random_loss_at_a_flat_delay_counts_even_with_a_standing_queue() {
        let t0 = Instant::now();
        for flat_ms in [0u64, 40] {
            let mut mt = LossMeter::new(t0, CONG);
            let mut rng = ChaCha8Rng::seed_from_u64(flat_ms);
            let lost: Vec<bool> = (0..20_000).map(|_| rng.gen_bool(0.01)).collect();
            feed(
                &mut mt,
                t0,
                20_000,
                100,
                |i| lost[i as usize],
                |_| flat_ms * 1000,
            );
            let r = mt.report(t0 + Duration::from_secs(2));
            assert!(
                (7_000..13_000).contains(&r.loss_ppm),
                "flat {flat_ms} ms: {r:?}"
            );
            assert!(r.burst_milli < 1_100, "{r:?}");
        }
    }

    #[test]
    fn random_loss_is_measured_beside_congestion_drops() {
        // 1% random loss on a path whose queue saws between 40 and 100 ms and overflows at the
        // top: the random rate is still found, the overflow drops are not in it.
        let t0 = Instant::now();
        let mut mt = LossMeter::new(t0, CONG);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let n = 40_000u16;
        let saw = |i: u16| 40_000 + (i as u64 % 4000) * 15; // 40 → 100 ms, 0.4 s period
        let random: Vec<bool> = (0..n).map(|_| rng.gen_bool(0.01)).collect();
        let overflow = |i: u16| i % 4000 >= 3990;
        feed(
            &mut mt,
            t0,
            n,
            100,
            |i| random[i as usize] || overflow(i),
            saw,
        );
        let r = mt.report(t0 + Duration::from_secs(4));
        assert!((6_000..14_000).contains(&r.loss_ppm), "{r:?}");
        assert!(mt.take_congestion_losses() >= 90);
    }

    /// Feeds `(delay_us, dropped)` per packet, 100 µs apart from sequence `first`; returns the
    /// next sequence number.
    fn feed_path(
        mt: &mut LossMeter,
        t0: Instant,
        last: &mut Option<u64>,
        first: u16,
        path: &[(u64, bool)],
    ) -> u16 {
        let mut seq = first;
        for &(delay, dropped) in path {
            let sent = seq as u64 * 100;
            let ts = stamp(last, sent);
            if !dropped {
                mt.on_packet(seq, ts, t0 + Duration::from_micros(sent + delay));
            }
            seq += 1;
        }
        seq
    }

    #[test]
    fn link_losses_among_overflow_drops_are_not_measured() {
        // A lossless path whose queue overflows once: 300 drops at the 100 ms peak, and three
        // single drops revealed as the queue drains, 35-45 ms after the peak, which the delay
        // rule takes for link loss. The report interval that holds them adds no link loss.
        // Control: the same three drops in an interval without overflow are measured.
        for overflow in [true, false] {
            let t0 = Instant::now();
            let mut mt = LossMeter::new(t0, CONG);
            let mut last = None;
            let calm: Vec<(u64, bool)> = vec![(0, false); 2000];
            let seq = feed_path(&mut mt, t0, &mut last, 0, &calm);
            let r = mt.report(t0 + Duration::from_millis(200));
            assert_eq!(r.loss_ppm, 0, "{r:?}");
            let leaks = [1200, 1300, 1400];
            let mut path: Vec<(u64, bool)> = Vec::new();
            if overflow {
                path.extend((0..1000).map(|i| (i * 100, false)));
                path.extend((0..300).map(|_| (100_000, true)));
                path.push((100_000, false));
                path.extend((0..2000u64).map(|i| (100_000 - i * 50, leaks.contains(&i))));
            } else {
                path.extend((0..3300u64).map(|i| (0, leaks.contains(&i))));
            }
            feed_path(&mut mt, t0, &mut last, seq, &path);
            let end = t0 + Duration::from_millis(200 + 330 + 100);
            let r = mt.report(end);
            let congestion = mt.take_congestion_losses();
            if overflow {
                assert!(congestion >= 300, "{congestion}");
                assert_eq!(r.loss_ppm, 0, "{r:?}");
            } else {
                assert_eq!(congestion, 0);
                assert!(r.loss_ppm > 0, "{r:?}");
            }
        }
    }

    #[test]
    fn packets_at_a_queue_peak_do_not_dilute_the_random_rate() {
        // 1% random loss; the queue sits at its 40 ms peak for half of every 0.4 s and is empty
        // for the other half. Losses revealed at the peak are left out, and so are the packets
        // that arrived there: the rate over the rest is still 1%, not 0.5%.
        let t0 = Instant::now();
        let mut mt = LossMeter::new(t0, CONG);
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let n = 40_000u16;
        let random: Vec<bool> = (0..n).map(|_| rng.gen_bool(0.01)).collect();
        let delay = |i: u16| if i % 4000 < 2000 { 40_000 } else { 0 };
        feed(&mut mt, t0, n, 100, |i| random[i as usize], delay);
        let r = mt.report(t0 + Duration::from_secs(4));
        assert!((8_000..12_500).contains(&r.loss_ppm), "{r:?}");
        assert!(mt.take_congestion_losses() >= 100);
    }
}
