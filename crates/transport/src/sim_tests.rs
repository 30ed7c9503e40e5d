#![allow(clippy::unwrap_used)]
//! A packet-level model of one bottleneck, shared by the congestion controllers' tests: quinn's
//! pacer (tokens at `1.25 × window / srtt`, bursts of 2 ms), a drop-tail queue, random loss, a
//! receiver that acks every other packet, and loss declared by packet threshold (3) as in
//! RFC 9002.

use quinn::congestion::Controller;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(crate) const MTU: u64 = 1200;
const TICK: Duration = Duration::from_micros(100);

/// A controller the model can drive. quinn's `RttEstimator` cannot be built outside quinn, so
/// each controller takes the acknowledgement (with the model's smoothed RTT) its own way; every
/// other event goes through quinn's [`Controller`] trait.
pub(crate) trait SimController {
    /// The controller itself.
    fn controller(&mut self) -> &mut dyn Controller;
    /// One acknowledged packet (`Controller::on_ack` with a smoothed RTT of `srtt`).
    fn ack(&mut self, now: Instant, sent: Instant, bytes: u64, srtt: Duration);
    /// Still in start-up (slow start or its equivalent): drops are counted separately.
    fn in_startup(&self) -> bool;
    /// The controller's bandwidth estimate, bytes per second, if it has one.
    fn bandwidth(&self) -> u64 {
        0
    }
    /// One line of state for `CC_SIM_TRACE`.
    fn trace(&self) -> String;
}

pub(crate) struct Link {
    pub rate_bps: f64,
    pub one_way: Duration,
    pub queue_bytes: u64,
    pub loss: f64,
    /// The receiver acks every `ack_every` packets (and the last one after 25 ms).
    pub ack_every: usize,
}

#[derive(Default, Debug)]
pub(crate) struct Outcome {
    pub delivered: u64,
    pub queue_drops: u64,
    /// Queue drops of packets sent while the controller was in start-up.
    pub startup_queue_drops: u64,
    /// Seconds into the run when start-up ended (`None`: it did not).
    pub startup_end: Option<f64>,
    pub random_drops: u64,
    pub max_in_flight: u64,
    pub max_bw: u64,
}

/// xorshift64*: seeded, so a run is repeatable.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub(crate) fn run(cc: &mut dyn SimController, link: &Link, secs: f64, seed: u64) -> Outcome {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut rng = Rng(seed | 1);
    let mut out = Outcome::default();
    let mut now = start;
    // Sender state.
    let mut next_pn: u64 = 0;
    let mut unacked: VecDeque<(u64, Instant)> = VecDeque::new(); // (pn, sent), in pn order
    let mut in_flight: u64 = 0;
    let mut srtt = Duration::ZERO;
    let mut tokens: f64 = 10.0 * MTU as f64;
    // Bottleneck: packets queued (pn, sent, bytes) and when the head finishes serialising.
    let mut queue: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut queued_bytes: u64 = 0;
    let mut head_done: Option<Instant> = None;
    // Packets in the propagation delay towards the receiver, and ACKs back.
    let mut to_rx: VecDeque<(Instant, u64, Instant)> = VecDeque::new();
    let mut to_tx: VecDeque<(Instant, Vec<(u64, Instant)>)> = VecDeque::new();
    let mut pending_ack: Vec<(u64, Instant)> = Vec::new();
    let mut pending_since: Option<Instant> = None;
    let ser = Duration::from_secs_f64(MTU as f64 * 8.0 / link.rate_bps);
    while now < end {
        // Bottleneck serialisation.
        loop {
            match (queue.front(), head_done) {
                (Some(_), None) => head_done = Some(now + ser),
                (Some(&(pn, sent)), Some(t)) if t <= now => {
                    queue.pop_front();
                    queued_bytes -= MTU;
                    to_rx.push_back((t + link.one_way, pn, sent));
                    head_done = if queue.is_empty() {
                        None
                    } else {
                        Some(t + ser)
                    };
                    continue;
                }
                _ => {}
            }
            break;
        }
        // Receiver: ack every `ack_every` packets or after 25 ms.
        while to_rx.front().is_some_and(|p| p.0 <= now) {
            let (_, pn, sent) = to_rx.pop_front().unwrap();
            pending_ack.push((pn, sent));
            pending_since.get_or_insert(now);
        }
        if pending_ack.len() >= link.ack_every
            || pending_since.is_some_and(|t| now.duration_since(t) >= Duration::from_millis(25))
        {
            to_tx.push_back((now + link.one_way, std::mem::take(&mut pending_ack)));
            pending_since = None;
        }
        // Sender: ACKs.
        let mut largest_acked = None;
        while to_tx.front().is_some_and(|a| a.0 <= now) {
            let (_, acks) = to_tx.pop_front().unwrap();
            let largest = acks.iter().map(|a| a.0).max().unwrap();
            for (pn, sent) in acks {
                if let Ok(i) = unacked.binary_search_by_key(&pn, |u| u.0) {
                    unacked.remove(i);
                    in_flight -= MTU;
                    out.delivered += MTU;
                    let sample = now.duration_since(sent);
                    srtt = if srtt.is_zero() {
                        sample
                    } else {
                        (srtt * 7 + sample) / 8
                    };
                    cc.ack(now, sent, MTU, srtt);
                    largest_acked = Some(largest);
                }
            }
            // Packet threshold: anything 3 below the largest acked is lost.
            while unacked.front().is_some_and(|u| u.0 + 3 <= largest) {
                let (_, sent) = unacked.pop_front().unwrap();
                in_flight -= MTU;
                cc.controller().on_congestion_event(now, sent, false, MTU);
            }
        }
        if largest_acked.is_some() {
            cc.controller()
                .on_end_acks(now, in_flight, false, largest_acked);
        }
        // Sender: pacing and window (one quinn batch per tick).
        let window = cc.controller().window();
        {
            // quinn paces by its initial RTT (333 ms) until the first sample.
            let srtt = if srtt.is_zero() {
                Duration::from_millis(333)
            } else {
                srtt
            };
            let cap = (window as f64 * 0.002 / srtt.as_secs_f64())
                .clamp(10.0 * MTU as f64, 256.0 * MTU as f64);
            tokens =
                (tokens + window as f64 * 1.25 * TICK.as_secs_f64() / srtt.as_secs_f64()).min(cap);
        }
        let startup = cc.in_startup();
        if !startup && out.startup_end.is_none() {
            out.startup_end = Some(now.duration_since(start).as_secs_f64());
        }
        let mut sent_batch = 0;
        while in_flight + MTU <= window && tokens >= MTU as f64 {
            tokens -= MTU as f64;
            let pn = next_pn;
            next_pn += 1;
            unacked.push_back((pn, now));
            in_flight += MTU;
            sent_batch += MTU;
            if rng.next_f64() < link.loss {
                out.random_drops += 1;
            } else if queued_bytes + MTU > link.queue_bytes {
                out.queue_drops += 1;
                if startup {
                    out.startup_queue_drops += 1;
                }
            } else {
                queue.push_back((pn, now));
                queued_bytes += MTU;
            }
        }
        if sent_batch > 0 {
            cc.controller().on_sent(now, sent_batch, next_pn - 1);
        }
        out.max_in_flight = out.max_in_flight.max(in_flight);
        out.max_bw = out.max_bw.max(cc.bandwidth());
        if std::env::var_os("CC_SIM_TRACE").is_some()
            && (now.duration_since(start).as_micros() % 50_000) < 100
        {
            eprintln!(
                "t={:.2} {} win={} inflight={} q={} deliv={} drops={} srtt={:?}",
                now.duration_since(start).as_secs_f64(),
                cc.trace(),
                window,
                in_flight,
                queued_bytes,
                out.delivered,
                out.queue_drops,
                srtt
            );
        }
        now += TICK;
    }
    out
}

pub(crate) fn link(mbit: f64, rtt_ms: u64, queue_ms: f64, loss: f64) -> Link {
    Link {
        rate_bps: mbit * 1e6,
        one_way: Duration::from_millis(rtt_ms / 2),
        queue_bytes: (mbit * 1e6 / 8.0 * queue_ms / 1000.0) as u64,
        loss,
        ack_every: 2,
    }
}

pub(crate) fn utilisation(o: &Outcome, l: &Link, secs: f64) -> f64 {
    o.delivered as f64 * 8.0 / (l.rate_bps * secs)
}
