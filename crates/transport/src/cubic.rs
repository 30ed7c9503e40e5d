//! strait's Cubic: RFC 9438 CUBIC with HyStart++ (RFC 9406) slow start, for the tunnel.
//!
//! Why not quinn's `Cubic`: it has no HyStart. Its slow start doubles the window every round
//! until a packet is lost. With Reed-Solomon FEC below QUIC repairing random loss, the first
//! loss it sees is the bottleneck's drop-tail queue overflowing: on the WAN emulator's
//! 100 Mbit/s, 100 ms RTT path with a 100 ms queue that was ~2,800 drops in start-up, a cut
//! window, and a slow cubic climb back (66.7 Mbit/s of bulk goodput). Linux Cubic leaves slow
//! start when the RTT starts rising; so does this one.
//!
//! - slow start grows the window by the bytes acknowledged; per round (a round ends when a
//!   packet sent after it began is acknowledged) the minimum RTT is kept. When [`N_RTT_SAMPLE`]
//!   samples in a row (RFC 9406: the round's first [`N_RTT_SAMPLE`]; see `hystart_sample` for
//!   why not) exceed the last round's minimum by `clamp(minimum / 8, 4 ms, 16 ms)`, a queue is
//!   building: congestion avoidance starts with `ssthresh = window` — no loss needed — as in
//!   Linux's HyStart. With [`CubicConfig::conservative`], RFC 9406's Conservative Slow Start
//!   comes first (growth at 1/[`CSS_GROWTH_DIVISOR`] the rate for [`CSS_ROUNDS`] rounds; slow
//!   start resumes if the RTT falls below the baseline that triggered it); off by default
//!   because on a one-BDP queue it overflowed the queue anyway. HyStart++ runs only in the
//!   first slow start, as RFC 9406 recommends (later slow starts stop at the `ssthresh` a loss
//!   taught);
//! - congestion avoidance follows `W_cubic(t) = C (t − K)³ + W_max` with [`C`] = 0.4 and the
//!   Reno-friendly estimate `W_est`, whichever is larger;
//! - a loss cuts the window to [`BETA`] × window once per recovery period (losses of packets
//!   sent before the recovery began are part of the same event), with fast convergence;
//!   persistent congestion drops the window to [`MIN_WINDOW_PACKETS`] packets;
//! - acknowledgements while the sender is application-limited never grow the window.
//!
//! RTT samples are taken here, not from quinn's estimator: the newest packet one ACK frame
//! covers was acknowledged at once (older ones include the receiver's ACK delay), and quinn calls
//! the controller before it updates its own estimate. The smoothed RTT quinn passes is used for
//! the cubic's `t + RTT` and the Reno-friendly rate.
//!
//! It never reads the clock, never uses pacing (quinn paces every controller at
//! `1.25 × window / smoothed RTT`, so RFC 9406's per-ACK burst limit `L` is not needed) and never
//! treats a rising RTT in congestion avoidance as congestion: only loss is.

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CUBIC's scaling constant `C` (RFC 9438 §5.1), in packets per second³.
pub const C: f64 = 0.4;
/// Multiplicative decrease factor `β_cubic` (RFC 9438 §4.6).
pub const BETA: f64 = 0.7;
/// RTT samples per round whose minimum HyStart++ compares (RFC 9406 `N_RTT_SAMPLE`).
pub const N_RTT_SAMPLE: u32 = 8;
/// Smallest RTT rise that ends slow start (RFC 9406 `MIN_RTT_THRESH`).
pub const MIN_RTT_THRESH: Duration = Duration::from_millis(4);
/// Largest RTT rise slow start waits for (RFC 9406 `MAX_RTT_THRESH`).
pub const MAX_RTT_THRESH: Duration = Duration::from_millis(16);
/// The RTT rise that ends slow start is the last round's minimum over this (RFC 9406
/// `MIN_RTT_DIVISOR`), between the two thresholds.
pub const MIN_RTT_DIVISOR: u32 = 8;
/// Conservative Slow Start grows the window by the bytes acknowledged over this (RFC 9406
/// `CSS_GROWTH_DIVISOR`).
pub const CSS_GROWTH_DIVISOR: u64 = 4;
/// Rounds of Conservative Slow Start before congestion avoidance (RFC 9406 `CSS_ROUNDS`).
pub const CSS_ROUNDS: u32 = 5;
/// Smallest window, in packets (RFC 9002 §7.2: two maximum datagrams).
pub const MIN_WINDOW_PACKETS: u64 = 2;
/// Default initial window, as quinn's `CubicConfig`: RFC 9002's
/// `min(10 × 1200, max(2 × 1200, 14,720))` bytes.
pub const DEFAULT_INITIAL_WINDOW: u64 = 10 * 1200;

/// Factory of [`Cubic`].
#[derive(Debug, Clone)]
pub struct CubicConfig {
    /// Window before the first acknowledgement, in bytes.
    pub initial_window: u64,
    /// Leave the first slow start on a rising RTT (HyStart++). Off, slow start ends only on
    /// loss, as quinn's Cubic does.
    pub hystart: bool,
    /// On a rising RTT, grow on through RFC 9406's Conservative Slow Start before congestion
    /// avoidance. Off (the default), congestion avoidance starts at once, as Linux's HyStart
    /// does: the delay signal arrives one round after the queue began to build, while slow start
    /// doubles, so on a path whose queue is about one BDP the window is already near pipe plus
    /// queue, and CSS's further 5 rounds overflowed it (in the model: 732 start-up drops
    /// against ~40 without CSS).
    pub conservative: bool,
}

impl Default for CubicConfig {
    fn default() -> Self {
        CubicConfig {
            initial_window: DEFAULT_INITIAL_WINDOW,
            hystart: true,
            conservative: false,
        }
    }
}

impl ControllerFactory for CubicConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Cubic::new(&self, current_mtu, now))
    }
}

/// Phase of the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The window grows by the bytes acknowledged.
    SlowStart,
    /// HyStart++ saw the RTT rise: the window grows at a quarter of that rate for a few rounds.
    ConservativeSlowStart,
    /// The window follows the cubic function (or the Reno-friendly estimate).
    CongestionAvoidance,
}

/// HyStart++ state: the rounds and their minimum RTTs.
#[derive(Debug, Clone)]
struct HyStart {
    /// Packets sent at or after this instant end the current round when acknowledged.
    round_start: Option<Instant>,
    last_round_min_rtt: Option<Duration>,
    current_round_min_rtt: Option<Duration>,
    /// Samples in a row that crossed the threshold (slow start) or fell below the baseline
    /// (Conservative Slow Start).
    streak: u32,
    /// Smallest sample of the streak in slow start.
    streak_min: Option<Duration>,
    /// The smallest of the samples that started Conservative Slow Start.
    css_baseline: Option<Duration>,
    css_rounds: u32,
}

impl HyStart {
    fn new() -> Self {
        HyStart {
            round_start: None,
            last_round_min_rtt: None,
            current_round_min_rtt: None,
            streak: 0,
            streak_min: None,
            css_baseline: None,
            css_rounds: 0,
        }
    }

    /// The RTT rise that ends slow start: last round's minimum / 8, within 4..=16 ms.
    fn threshold(last: Duration) -> Duration {
        (last / MIN_RTT_DIVISOR).clamp(MIN_RTT_THRESH, MAX_RTT_THRESH)
    }
}

/// strait's Cubic (see the module documentation).
#[derive(Debug, Clone)]
pub struct Cubic {
    mss: u64,
    initial_window: u64,
    hystart_enabled: bool,
    /// Conservative Slow Start after HyStart++ fires ([`CubicConfig::conservative`]).
    conservative: bool,
    window: u64,
    ssthresh: u64,
    phase: Phase,
    hystart: HyStart,
    /// When the current recovery period began: losses of packets sent before it are ignored,
    /// acknowledgements of them do not grow the window.
    recovery_start: Option<Instant>,
    /// Window before the last reduction (`W_max`), bytes.
    w_max: f64,
    /// Time from the epoch start until the cubic reaches `W_max` again, seconds.
    k: f64,
    /// Start of the current congestion-avoidance epoch (first growing ACK after a reduction).
    epoch_start: Option<Instant>,
    /// Window at the start of the epoch, bytes.
    cwnd_epoch: u64,
    /// Reno-friendly estimate `W_est`, bytes.
    w_est: f64,
    /// Window just before the last reduction, bytes (`cwnd_prior`: `W_est` grows at the Reno
    /// rate once it passed it).
    cwnd_prior: f64,
    /// Growth below one byte carried to the next acknowledgement (a 1,200-byte ACK on a
    /// megabyte window moves the cubic by a fraction of a byte).
    carry: f64,
    /// Smoothed RTT, from quinn's estimator.
    srtt: Duration,
    /// The RTT sample of the ACK frame being processed.
    frame_rtt: crate::congestion::FrameRtt,
}

impl Cubic {
    /// A controller in slow start with `config.initial_window` bytes.
    pub fn new(config: &CubicConfig, mtu: u16, _now: Instant) -> Self {
        let mss = u64::from(mtu);
        let initial_window = config.initial_window.max(MIN_WINDOW_PACKETS * mss);
        Cubic {
            mss,
            initial_window,
            hystart_enabled: config.hystart,
            conservative: config.conservative,
            window: initial_window,
            ssthresh: u64::MAX,
            phase: Phase::SlowStart,
            hystart: HyStart::new(),
            recovery_start: None,
            w_max: 0.0,
            k: 0.0,
            epoch_start: None,
            cwnd_epoch: initial_window,
            w_est: 0.0,
            cwnd_prior: 0.0,
            carry: 0.0,
            srtt: Duration::ZERO,
            frame_rtt: Default::default(),
        }
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Slow-start threshold, bytes (`u64::MAX` until slow start first ended).
    pub fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    fn minimum_window(&self) -> u64 {
        MIN_WINDOW_PACKETS * self.mss
    }

    fn in_recovery(&self, sent: Instant) -> bool {
        self.recovery_start.is_some_and(|r| sent <= r)
    }

    /// HyStart++ runs only while nothing has set `ssthresh` yet (RFC 9406 §4.2).
    fn hystart_active(&self) -> bool {
        self.hystart_enabled
            && self.ssthresh == u64::MAX
            && self.phase != Phase::CongestionAvoidance
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
        if self.hystart_active() {
            match self.hystart.round_start {
                Some(start) if sent < start => {}
                _ => self.start_round(now),
            }
        }
        if app_limited || self.in_recovery(sent) {
            return;
        }
        match self.phase {
            Phase::SlowStart => {
                self.window = self.window.saturating_add(bytes);
                // A later slow start (after persistent congestion) stops at what loss taught.
                if self.window >= self.ssthresh {
                    self.window = self.ssthresh;
                    self.enter_congestion_avoidance(now);
                }
            }
            Phase::ConservativeSlowStart => {
                self.window = self.window.saturating_add(bytes / CSS_GROWTH_DIVISOR);
            }
            Phase::CongestionAvoidance => self.grow_cubic(now, bytes),
        }
    }

    /// A HyStart++ round ends: its minimum becomes the baseline, Conservative Slow Start counts
    /// it.
    fn start_round(&mut self, now: Instant) {
        let h = &mut self.hystart;
        if h.round_start.is_some() {
            // The first round's minimum, however few samples it had, is the first baseline.
            if h.current_round_min_rtt.is_some() {
                h.last_round_min_rtt = h.current_round_min_rtt;
            }
            if self.phase == Phase::ConservativeSlowStart {
                h.css_rounds += 1;
            }
        }
        h.round_start = Some(now);
        h.current_round_min_rtt = None;
        if self.phase == Phase::ConservativeSlowStart && self.hystart.css_rounds >= CSS_ROUNDS {
            self.ssthresh = self.window;
            self.enter_congestion_avoidance(now);
        }
    }

    /// One RTT sample (the newest packet of an ACK frame) while HyStart++ runs.
    ///
    /// RFC 9406 compares the minimum of a round's first [`N_RTT_SAMPLE`] samples; here it is
    /// any [`N_RTT_SAMPLE`] samples in a row. Under quinn's pacer the first packets of each round
    /// left after the previous round's queue had drained, so a round's minimum stayed at the
    /// base RTT until the queue overflowed (in the model: 100 Mbit/s, 100 ms, 100 ms queue,
    /// ~2,100 drops in slow start with the per-round rule, as with no HyStart at all).
    fn hystart_sample(&mut self, now: Instant, sample: Duration) {
        let h = &mut self.hystart;
        h.current_round_min_rtt = Some(h.current_round_min_rtt.map_or(sample, |m| m.min(sample)));
        match self.phase {
            Phase::SlowStart => {
                let Some(last) = h.last_round_min_rtt else {
                    return;
                };
                if sample < last + HyStart::threshold(last) {
                    h.streak = 0;
                    h.streak_min = None;
                    return;
                }
                h.streak += 1;
                h.streak_min = Some(h.streak_min.map_or(sample, |m| m.min(sample)));
                if h.streak >= N_RTT_SAMPLE {
                    h.css_baseline = h.streak_min;
                    h.css_rounds = 0;
                    h.streak = 0;
                    h.streak_min = None;
                    if self.conservative {
                        self.phase = Phase::ConservativeSlowStart;
                    } else {
                        self.ssthresh = self.window;
                        self.enter_congestion_avoidance(now);
                    }
                }
            }
            Phase::ConservativeSlowStart => {
                if h.css_baseline.is_none_or(|b| sample >= b) {
                    h.streak = 0;
                    return;
                }
                h.streak += 1;
                if h.streak >= N_RTT_SAMPLE {
                    // The rise was not a queue that stays: back to slow start.
                    h.css_baseline = None;
                    h.streak = 0;
                    self.phase = Phase::SlowStart;
                }
            }
            Phase::CongestionAvoidance => {}
        }
    }

    fn enter_congestion_avoidance(&mut self, _now: Instant) {
        tracing::debug!(
            from = ?self.phase,
            window = self.window,
            baseline = ?self.hystart.last_round_min_rtt,
            "cubic: congestion avoidance"
        );
        self.phase = Phase::CongestionAvoidance;
        // Left without a loss: the cubic plateau is the window we reached (K = 0).
        if self.recovery_start.is_none() && self.w_max < self.window as f64 {
            self.w_max = self.window as f64;
            self.cwnd_prior = self.w_max;
            self.k = 0.0;
        }
        self.epoch_start = None;
    }

    /// RFC 9438 §4.2–4.4: grow towards `W_cubic(t + RTT)` or the Reno-friendly estimate.
    fn grow_cubic(&mut self, now: Instant, bytes: u64) {
        let mss = self.mss as f64;
        let epoch_start = match self.epoch_start {
            Some(t) => t,
            None => {
                self.epoch_start = Some(now);
                self.cwnd_epoch = self.window;
                self.w_est = self.window as f64;
                if self.w_max <= self.window as f64 {
                    self.w_max = self.window as f64;
                    self.k = 0.0;
                } else {
                    self.k = ((self.w_max - self.window as f64) / mss / C).cbrt();
                }
                now
            }
        };
        let cwnd = self.window as f64;
        let t = now.saturating_duration_since(epoch_start).as_secs_f64();
        let rtt = self.srtt.as_secs_f64();
        // Reno-friendly estimate (§4.3): α = 3(1 − β)/(1 + β) packets per window, 1 once W_est
        // passed the window before the reduction.
        let alpha = if self.w_est >= self.cwnd_prior {
            1.0
        } else {
            3.0 * (1.0 - BETA) / (1.0 + BETA)
        };
        self.w_est += alpha * bytes as f64 / cwnd * mss;
        let w_cubic_now = self.w_cubic(t);
        if w_cubic_now < self.w_est {
            self.window = self.window.max(self.w_est as u64);
        } else {
            // §4.4/4.5: the target one RTT ahead, within [cwnd, 1.5 × cwnd].
            let target = self.w_cubic(t + rtt).clamp(cwnd, 1.5 * cwnd);
            self.carry += (target - cwnd) / cwnd * bytes as f64;
            let inc = self.carry.floor();
            self.carry -= inc;
            self.window = self.window.saturating_add(inc as u64);
        }
    }

    /// `W_cubic(t) = C (t − K)³ + W_max`, in bytes (the cubic works in packets).
    fn w_cubic(&self, t: f64) -> f64 {
        let mss = self.mss as f64;
        (C * (t - self.k).powi(3) * mss + self.w_max).max(0.0)
    }

    /// RFC 9438 §4.6–4.7: one multiplicative decrease, with fast convergence.
    fn reduce(&mut self, now: Instant) {
        let cwnd = self.window as f64;
        self.cwnd_prior = cwnd;
        self.carry = 0.0;
        self.w_max = if cwnd < self.w_max {
            // Fast convergence: another flow is taking bandwidth, give way sooner.
            cwnd * (1.0 + BETA) / 2.0
        } else {
            cwnd
        };
        self.ssthresh = ((cwnd * BETA) as u64).max(self.minimum_window());
        self.window = self.ssthresh;
        self.recovery_start = Some(now);
        self.epoch_start = None;
        self.phase = Phase::CongestionAvoidance;
    }
}

impl Controller for Cubic {
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
        _in_flight: u64,
        _app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        if let Some(sample) = self.frame_rtt.take_sample(now) {
            if self.hystart_active() {
                self.hystart_sample(now, sample);
            }
        }
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
        if !self.in_recovery(sent) {
            tracing::debug!(
                phase = ?self.phase,
                window = self.window,
                persistent = is_persistent_congestion,
                "cubic: loss"
            );
            self.reduce(now);
        }
        if is_persistent_congestion {
            // RFC 9002 §7.6.2: nothing got through for a while; start again from the minimum
            // window and slow start up to the threshold the reduction set.
            self.window = self.minimum_window();
            self.recovery_start = None;
            self.epoch_start = None;
            self.phase = Phase::SlowStart;
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mss = u64::from(new_mtu);
        self.window = self.window.max(self.minimum_window());
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window;
        m.ssthresh = (self.ssthresh != u64::MAX).then_some(self.ssthresh);
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
#[path = "cubic_tests.rs"]
mod tests;
