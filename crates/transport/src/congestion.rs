//! strait's BBR: a model-based congestion controller for the tunnel.
//!
//! Why not quinn's `Bbr`: its bandwidth estimate is the max over ten rounds of
//! `min(send rate, ack rate)` between two *consecutive* sends and acks. Two ACKs that arrive
//! close together (ACK aggregation, a GSO batch, a receiver that acks every other packet) give
//! an instantaneous rate far above the bottleneck, and the max filter keeps it: on the WAN
//! emulator's 100 Mbit/s link its estimate read 546, 749 and then 2,874 Mbit/s, it kept up to
//! 6 MB in flight on a 1.25 MB path, the 100 ms drop-tail queue overflowed (10k drops in one
//! 24 MiB transfer) and goodput stayed near 58 % of the link. quinn also paces every controller
//! at `1.25 × window / smoothed RTT`, so the window is the only lever a controller has.
//!
//! This controller keeps BBR's model and phases (draft-cardwell-iccrg-bbr-congestion-control)
//! with a delivery-rate estimator in the manner of draft-cheng-iccrg-delivery-rate-estimation:
//! each send batch remembers how much had been delivered when it left, and a sample is
//! `delivered since then / max(send interval, ack interval)`, discarded when that interval is
//! shorter than the minimum RTT (such samples are what inflated quinn's estimate).
//!
//! - bottleneck bandwidth = max of per-round delivery rates over [`BW_WINDOW_ROUNDS`] rounds;
//!   minimum RTT = min over [`MIN_RTT_WINDOW`] of `ack time - send time` of the newest packet
//!   each ACK frame covers (older ones include the receiver's ACK delay) (the 0.75 phase of
//!   the gain cycle drains the queue, so fresh minimum samples keep coming without ProbeRTT);
//! - window = gain × bandwidth × minimum RTT + [`headroom`] for delayed and aggregated ACKs:
//!   start-up doubles it every round, drain empties the start-up queue, then the gain cycles
//!   1.25, 0.75, 1 × 6 — so the standing queue stays near the headroom, not a whole BDP;
//! - loss: random loss at a flat RTT is not congestion (the delivery rate already accounts for
//!   it, and FEC repairs it below QUIC). A round that loses more than [`LOSS_THRESH`] bounds
//!   what may be in flight to [`BETA`] × that round's most (never below one BDP, so random loss
//!   cannot starve the link; clean rounds raise the bound again) — this is what keeps a shallow
//!   queue from overflowing every gain cycle. Start-up ends on such a round when the bandwidth
//!   stopped growing. When the smoothed RTT is also above the minimum by [`QUEUE_THRESH`] (a
//!   queue filled up: competing traffic), the bandwidth estimate is cut by [`BETA`] as well.
//!   Start-up also ends when even a round's fastest packet was queued (HyStart++'s delay
//!   rule), which halves its overshoot into deep drop-tail queues.
//!   Persistent congestion resets the model.

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rounds the bandwidth max filter spans.
pub const BW_WINDOW_ROUNDS: usize = 10;
/// How long a minimum-RTT sample stays valid.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// Loss fraction of a round above which, with a queue, the round was congested.
pub const LOSS_THRESH: f64 = 0.02;
/// Smoothed RTT above `min RTT × (1 + QUEUE_THRESH)` (and 2 ms) means a queue is building.
pub const QUEUE_THRESH: f64 = 0.5;
/// Factor the bandwidth estimate is cut by after a congested round.
pub const BETA: f64 = 0.85;
/// Start-up gain (2 / ln 2): the window doubles every round.
pub const STARTUP_GAIN: f64 = 2.885;
/// Gain cycle of the steady state, one phase per minimum RTT.
pub const PACING_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Send batches remembered for rate samples; older ones are dropped (their acks give no sample).
pub const MAX_SEND_RECORDS: usize = 1 << 16;
/// Default initial window: 200 packets of 1,200 bytes, as quinn's BBR.
pub const DEFAULT_INITIAL_WINDOW: u64 = 200 * 1200;
/// Smallest window, in packets.
const MIN_WINDOW_PACKETS: u64 = 4;
/// Most packets one clean probing round adds to the in-flight bound.
const MAX_PROBE_PACKETS: u64 = 1024;
/// Consecutive queued ACK samples that end start-up.
const DELAYED_ACKS_TO_EXIT: u32 = 8;
/// Fewest lost packets that make a round lossy (a few losses in a short round are noise).
const MIN_LOSS_EVENTS: u64 = 6;
/// Rounds without 25 % bandwidth growth after which start-up ends.
const FULL_BW_ROUNDS: u8 = 3;

/// The RTT sample of one ACK frame: the newest packet it covers was acknowledged at once, older
/// ones include the receiver's ACK delay, so only the newest counts, and only when it is newer
/// than every packet acknowledged before (RFC 9002 §5.1: the largest acknowledged must be newly
/// acknowledged). A frame that newly covers only an older packet (one FEC rebuilt after later
/// ones arrived, up to a block's span late; a retransmission's hole filled) measures how late
/// that packet was, not the path, and a delay-based start-up exit (HyStart++, BBR's queued-ACK
/// rule) must not read it as a queue building. Shared by [`Bbr`] and
/// [`crate::cubic::Cubic`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FrameRtt {
    newest_sent: Option<Instant>,
    /// Send time of the newest packet any earlier frame acknowledged.
    largest_acked_sent: Option<Instant>,
}

impl FrameRtt {
    /// A packet of the frame being processed was acknowledged.
    pub(crate) fn on_acked(&mut self, sent: Instant) {
        if self.newest_sent.is_none_or(|t| sent > t) {
            self.newest_sent = Some(sent);
        }
    }

    /// The frame is done: its RTT sample, if it acknowledged a packet newer than any before.
    pub(crate) fn take_sample(&mut self, now: Instant) -> Option<Duration> {
        let sent = self.newest_sent.take()?;
        if self.largest_acked_sent.is_some_and(|t| sent <= t) {
            return None;
        }
        self.largest_acked_sent = Some(sent);
        Some(now.saturating_duration_since(sent))
    }
}

/// Factory of [`Bbr`].
#[derive(Debug, Clone)]
pub struct BbrConfig {
    /// Window before the first RTT sample, in bytes.
    pub initial_window: u64,
}

impl Default for BbrConfig {
    fn default() -> Self {
        BbrConfig {
            initial_window: DEFAULT_INITIAL_WINDOW,
        }
    }
}

impl ControllerFactory for BbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Bbr::new(self.initial_window, current_mtu, now))
    }
}

/// Phase of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Doubling the window every round until the bandwidth stops growing.
    Startup,
    /// Emptying the queue start-up built.
    Drain,
    /// Steady state, cycling through [`PACING_GAINS`].
    ProbeBw,
}

/// What the sender knew when one batch of packets left (quinn reports sends per batch, and
/// every packet of a batch carries the batch's send time).
#[derive(Debug, Clone, Copy)]
struct SendRecord {
    time: Instant,
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
}

/// strait's BBR (see the module documentation).
#[derive(Debug, Clone)]
pub struct Bbr {
    mtu: u64,
    initial_window: u64,
    window: u64,
    mode: Mode,
    // delivery-rate estimation
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    records: VecDeque<SendRecord>,
    // rounds
    round: u64,
    next_round_delivered: u64,
    round_max_bw: u64,
    round_has_sample: bool,
    round_lost: u64,
    round_acked: u64,
    round_max_in_flight: u64,
    delayed_acks: u32,
    frame_rtt: FrameRtt,
    steady_since: Option<Instant>,
    // in-flight bound learnt from lossy rounds (never below one BDP)
    inflight_hi: Option<u64>,
    probe_packets: u64,
    // model
    bw_rounds: VecDeque<u64>,
    bw: u64,
    min_rtt: Option<(Duration, Instant)>,
    srtt: Duration,
    // start-up exit
    full_bw: u64,
    full_bw_rounds: u8,
    // gain cycle
    cycle_index: usize,
    cycle_start: Instant,
    acked_since_end: u64,
}

impl Bbr {
    /// A controller in start-up with `initial_window` bytes.
    pub fn new(initial_window: u64, mtu: u16, now: Instant) -> Self {
        let mtu = u64::from(mtu);
        let initial_window = initial_window.max(MIN_WINDOW_PACKETS * mtu);
        Bbr {
            mtu,
            initial_window,
            window: initial_window,
            mode: Mode::Startup,
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            records: VecDeque::new(),
            round: 0,
            next_round_delivered: 0,
            round_max_bw: 0,
            round_has_sample: false,
            round_lost: 0,
            round_acked: 0,
            round_max_in_flight: 0,
            delayed_acks: 0,
            frame_rtt: FrameRtt::default(),
            steady_since: None,
            inflight_hi: None,
            probe_packets: 1,
            bw_rounds: VecDeque::with_capacity(BW_WINDOW_ROUNDS),
            bw: 0,
            min_rtt: None,
            srtt: Duration::ZERO,
            full_bw: 0,
            full_bw_rounds: 0,
            cycle_index: 0,
            cycle_start: now,
            acked_since_end: 0,
        }
    }

    /// Current phase.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Bottleneck bandwidth estimate, bytes per second (0 before the first sample).
    pub fn bandwidth(&self) -> u64 {
        self.bw
    }

    /// Minimum RTT estimate.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.map(|(d, _)| d)
    }

    fn bdp(&self, gain: f64) -> Option<u64> {
        let (rtt, _) = self.min_rtt?;
        if self.bw == 0 {
            return None;
        }
        Some((self.bw as f64 * rtt.as_secs_f64() * gain) as u64)
    }

    fn pacing_gain(&self) -> f64 {
        match self.mode {
            Mode::Startup => STARTUP_GAIN,
            Mode::Drain => 1.0 / STARTUP_GAIN,
            Mode::ProbeBw => PACING_GAINS[self.cycle_index],
        }
    }

    /// Ends a round: the round's best rate enters the max filter, start-up and congestion are
    /// judged.
    fn end_round(&mut self) {
        self.round += 1;
        if self.round_has_sample {
            if self.bw_rounds.len() == BW_WINDOW_ROUNDS {
                self.bw_rounds.pop_front();
            }
            self.bw_rounds.push_back(self.round_max_bw);
            self.bw = self.bw_rounds.iter().copied().max().unwrap_or(0);
        }
        let total = self.round_lost + self.round_acked;
        let lossy = self.round_lost >= MIN_LOSS_EVENTS * self.mtu
            && self.round_lost as f64 > LOSS_THRESH * total as f64;
        let queued = match self.min_rtt {
            Some((min, _)) => {
                self.srtt > min.mul_f64(1.0 + QUEUE_THRESH)
                    && self.srtt > min + Duration::from_millis(2)
            }
            None => false,
        };
        let congested = lossy && queued;
        let stalled = self.full_bw > 0 && self.bw as f64 <= self.full_bw as f64 * 1.25;
        if self.mode == Mode::ProbeBw {
            // Losses found while draining were start-up's overshoot, already answered by drain.
            if lossy {
                // The path could not hold what was in flight: bound the excess above one BDP.
                let floor = self.bdp(1.0).unwrap_or(0) + MIN_WINDOW_PACKETS * self.mtu;
                let hi = ((self.round_max_in_flight as f64 * BETA) as u64).max(floor);
                self.inflight_hi = Some(hi);
                self.probe_packets = 1;
            } else if self.cycle_index == 0 {
                // A clean probing round raises the bound, by twice as much each time.
                if let Some(hi) = self.inflight_hi {
                    let hi = hi + self.probe_packets * self.mtu;
                    self.probe_packets = (self.probe_packets * 2).min(MAX_PROBE_PACKETS);
                    let unbounded = self.bdp(2.0).is_some_and(|two| hi >= two);
                    self.inflight_hi = if unbounded { None } else { Some(hi) };
                }
            }
        }
        match self.mode {
            Mode::Startup => {
                if self.round_has_sample {
                    if !stalled {
                        self.full_bw = self.bw;
                        self.full_bw_rounds = 0;
                    } else {
                        self.full_bw_rounds += 1;
                    }
                }
                // Loss while the bandwidth still grows is random loss, not a full pipe.
                if self.full_bw_rounds >= FULL_BW_ROUNDS || congested || (lossy && stalled) {
                    self.mode = Mode::Drain;
                }
            }
            Mode::Drain => {}
            Mode::ProbeBw => {
                if congested {
                    let cut = (self.bw as f64 * BETA) as u64;
                    for b in self.bw_rounds.iter_mut() {
                        *b = (*b).min(cut);
                    }
                    self.bw = cut;
                }
            }
        }
        self.round_max_bw = 0;
        self.round_has_sample = false;
        self.round_lost = 0;
        self.round_acked = 0;
        self.round_max_in_flight = 0;
    }

    fn update_window(&mut self, now: Instant, in_flight: u64) {
        let floor = MIN_WINDOW_PACKETS * self.mtu;
        match self.mode {
            Mode::Startup => {
                // Slow-start-like growth by the bytes acknowledged, never beyond the start-up
                // gain times the measured BDP (once there is one).
                let grown = self.window + self.acked_since_end;
                self.window = match self.bdp(STARTUP_GAIN) {
                    Some(cap) => grown.min(cap.max(self.initial_window)).max(self.window),
                    None => grown,
                };
            }
            Mode::Drain => {
                let target = self.bdp(1.0).unwrap_or(self.initial_window);
                if in_flight <= target {
                    self.mode = Mode::ProbeBw;
                    self.steady_since = Some(now);
                    self.cycle_index = 0;
                    self.cycle_start = now;
                }
                self.window = target + self.headroom();
            }
            Mode::ProbeBw => {
                if let Some((rtt, _)) = self.min_rtt {
                    if now.saturating_duration_since(self.cycle_start) >= rtt {
                        self.cycle_index = (self.cycle_index + 1) % PACING_GAINS.len();
                        self.cycle_start = now;
                    }
                }
                let gain = PACING_GAINS[self.cycle_index];
                let target = self.bdp(gain).unwrap_or(self.initial_window);
                self.window = target + self.headroom();
            }
        }
        if let Some(hi) = self.inflight_hi {
            self.window = self.window.min(hi);
        }
        self.window = self.window.max(floor);
    }

    /// Room above `gain × BDP` for ACKs that come late or in bunches: 5 ms at the bottleneck
    /// rate, at least 8 packets, at most one BDP (on a sub-millisecond path, such as loopback,
    /// 5 ms of a multi-Gbit/s estimate would be megabytes of bursts into the receiver's socket
    /// buffer: measured 14 % retransmissions with 9000-byte packets before this bound).
    fn headroom(&self) -> u64 {
        let floor = 8 * self.mtu;
        let bdp = self.bdp(1.0).unwrap_or(0).max(floor);
        (self.bw / 200).clamp(floor, bdp)
    }

    /// One acknowledged packet sent at `sent` (the body of [`Controller::on_ack`]; quinn's
    /// `RttEstimator` cannot be built outside quinn, so tests drive this with `srtt`).
    pub fn on_packet_acked(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        srtt: Duration,
    ) {
        self.srtt = srtt;
        self.frame_rtt.on_acked(sent);
        self.delivered += bytes;
        self.delivered_time = now;
        self.acked_since_end += bytes;
        self.round_acked += bytes;
        // Batches sent before this one were acked already, lost, or reordered: no sample.
        while self.records.front().is_some_and(|r| r.time < sent) {
            self.records.pop_front();
        }
        let Some(rec) = self.records.front().copied().filter(|r| r.time == sent) else {
            return;
        };
        self.first_sent_time = rec.time;
        if rec.delivered >= self.next_round_delivered {
            self.end_round();
            self.next_round_delivered = self.delivered;
        }
        let send_elapsed = rec.time.saturating_duration_since(rec.first_sent_time);
        let ack_elapsed = now.saturating_duration_since(rec.delivered_time);
        let interval = send_elapsed.max(ack_elapsed);
        let min_rtt = self.min_rtt.map(|(d, _)| d).unwrap_or(srtt);
        if interval.is_zero() || interval < min_rtt {
            return;
        }
        let rate = ((self.delivered - rec.delivered) as f64 / interval.as_secs_f64()) as u64;
        // An app-limited sample says only that the path can do at least this much.
        if app_limited && rate <= self.bw {
            return;
        }
        self.round_has_sample = true;
        self.round_max_bw = self.round_max_bw.max(rate);
        if rate > self.bw {
            // A new high is used at once (start-up must not wait for the round to end).
            self.bw = rate;
        }
    }

    /// HyStart++'s delay rule (RFC 9406), per ACK rather than per round: when
    /// [`DELAYED_ACKS_TO_EXIT`] packets in a row waited in a queue, the pipe is full. Start-up
    /// doubles its window every round, so waiting for the round (or for BBR's three rounds
    /// without growth) would overflow a queue of one BDP before leaving.
    fn check_startup_delay(&mut self, sample: Duration) {
        let Some((min, _)) = self.min_rtt else {
            return;
        };
        let thresh = (min / 8).clamp(Duration::from_millis(4), Duration::from_millis(16));
        if sample > min + thresh {
            self.delayed_acks += 1;
            if self.delayed_acks >= DELAYED_ACKS_TO_EXIT && self.bw > 0 {
                self.mode = Mode::Drain;
            }
        } else {
            self.delayed_acks = 0;
        }
    }

    fn on_rtt_sample(&mut self, sample: Duration, now: Instant) {
        match self.min_rtt {
            Some((min, at))
                if sample > min && now.saturating_duration_since(at) < MIN_RTT_WINDOW => {}
            _ => self.min_rtt = Some((sample, now)),
        }
    }
}

impl Controller for Bbr {
    fn on_sent(&mut self, now: Instant, _bytes: u64, _last_packet_number: u64) {
        // Nothing in flight: the delivery clock restarts at this send.
        if self.records.is_empty() {
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        if self.records.len() == MAX_SEND_RECORDS {
            self.records.pop_front();
        }
        self.records.push_back(SendRecord {
            time: now,
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
        });
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.on_packet_acked(now, sent, bytes, app_limited, rtt.get());
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        _app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        if let Some(sample) = self.frame_rtt.take_sample(now) {
            if self.mode == Mode::Startup {
                self.check_startup_delay(sample);
            }
            self.on_rtt_sample(sample, now);
        }
        self.round_max_in_flight = self.round_max_in_flight.max(in_flight);
        self.update_window(now, in_flight);
        self.acked_since_end = 0;
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        // Losses of packets sent before the steady state are start-up's overshoot, which drain
        // already answered.
        if self.steady_since.is_some_and(|t| sent >= t) {
            self.round_lost += lost_bytes;
        }
        if is_persistent_congestion {
            // The path changed or collapsed: relearn it from scratch (keep the minimum RTT).
            let min_rtt = self.min_rtt;
            *self = Bbr::new(self.initial_window, self.mtu as u16, now);
            self.min_rtt = min_rtt;
            self.window = MIN_WINDOW_PACKETS * self.mtu;
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.window = self.window.max(MIN_WINDOW_PACKETS * self.mtu);
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window;
        m.pacing_rate = Some((self.bw as f64 * self.pacing_gain() * 8.0) as u64);
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.initial_window
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
#[path = "congestion_tests.rs"]
mod tests;
