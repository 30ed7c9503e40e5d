#![allow(clippy::unwrap_used)]
//! The controller against a packet-level model of one bottleneck: quinn's pacer (tokens at
//! `1.25 × window / srtt`, bursts of 2 ms), a drop-tail queue, random loss, a receiver that
//! acks every other packet, and loss declared by packet threshold (3) as in RFC 9002.

use super::*;
use quinn::congestion::Controller;
use std::collections::VecDeque;

const MTU: u64 = 1200;
const TICK: Duration = Duration::from_micros(100);

struct Link {
    rate_bps: f64,
    one_way: Duration,
    queue_bytes: u64,
    loss: f64,
    /// The receiver acks every `ack_every` packets (and the last one after 25 ms).
    ack_every: usize,
}

#[derive(Default, Debug)]
struct Outcome {
    delivered: u64,
    queue_drops: u64,
    random_drops: u64,
    max_in_flight: u64,
    max_bw: u64,
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

fn run(cc: &mut Bbr, link: &Link, secs: f64, seed: u64) -> Outcome {
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
        let mut acked_any = false;
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
                    cc.on_packet_acked(now, sent, MTU, false, srtt);
                    acked_any = true;
                }
            }
            // Packet threshold: anything 3 below the largest acked is lost.
            while unacked.front().is_some_and(|u| u.0 + 3 <= largest) {
                let (_, sent) = unacked.pop_front().unwrap();
                in_flight -= MTU;
                cc.on_congestion_event(now, sent, false, MTU);
            }
        }
        if acked_any {
            cc.on_end_acks(now, in_flight, false, None);
        }
        // Sender: pacing and window (one quinn batch per tick).
        let window = cc.window();
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
            } else {
                queue.push_back((pn, now));
                queued_bytes += MTU;
            }
        }
        if sent_batch > 0 {
            cc.on_sent(now, sent_batch, next_pn - 1);
        }
        out.max_in_flight = out.max_in_flight.max(in_flight);
        out.max_bw = out.max_bw.max(cc.bandwidth());
        if std::env::var_os("CC_SIM_TRACE").is_some()
            && (now.duration_since(start).as_micros() % 50_000) < 100
        {
            eprintln!(
                "t={:.2} mode={:?} win={} bw={} inflight={} q={} deliv={} drops={} srtt={:?}",
                now.duration_since(start).as_secs_f64(),
                cc.mode(),
                window,
                cc.bandwidth(),
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

fn link(mbit: f64, rtt_ms: u64, queue_ms: f64, loss: f64) -> Link {
    Link {
        rate_bps: mbit * 1e6,
        one_way: Duration::from_millis(rtt_ms / 2),
        queue_bytes: (mbit * 1e6 / 8.0 * queue_ms / 1000.0) as u64,
        loss,
        ack_every: 2,
    }
}

fn utilisation(o: &Outcome, l: &Link, secs: f64) -> f64 {
    o.delivered as f64 * 8.0 / (l.rate_bps * secs)
}

#[test]
fn fills_a_long_lossy_link_without_overflowing_its_queue() {
    let l = link(100.0, 100, 100.0, 0.01);
    let mut cc = Bbr::new(DEFAULT_INITIAL_WINDOW, MTU as u16, Instant::now());
    let startup = run(&mut cc, &l, 3.0, 42);
    let steady = run(&mut cc, &l, 10.0, 43);
    // Delivered bytes exclude the 1 % random loss, so 0.85 is 86 % of what the link carries.
    let u = utilisation(&startup, &l, 3.0);
    assert!(u >= 0.75, "start-up utilisation {u:.3} ({startup:?})");
    let u = utilisation(&steady, &l, 10.0);
    assert!(u >= 0.9, "steady utilisation {u:.3} ({steady:?})");
    // Start-up's last doubling may overshoot by at most what one BDP beyond pipe and queue
    // holds; after that the queue must not overflow.
    let bdp_packets = (l.rate_bps / 8.0 * 0.1 / MTU as f64) as u64;
    assert!(startup.queue_drops <= bdp_packets, "{startup:?}");
    assert!(
        steady.queue_drops * 1000 <= steady.delivered / MTU,
        "{steady:?}"
    );
    assert_eq!(cc.mode(), Mode::ProbeBw);
}

#[test]
fn bandwidth_estimate_stays_near_the_bottleneck_despite_ack_aggregation() {
    // The receiver acks every 16 packets: quinn's estimator read several times the link here.
    let mut l = link(100.0, 100, 100.0, 0.0);
    l.ack_every = 16;
    let mut cc = Bbr::new(DEFAULT_INITIAL_WINDOW, MTU as u16, Instant::now());
    let o = run(&mut cc, &l, 6.0, 7);
    let link_bytes = l.rate_bps / 8.0;
    assert!(
        (o.max_bw as f64) < 1.25 * link_bytes,
        "max estimate {} B/s on a {} B/s link",
        o.max_bw,
        link_bytes
    );
    assert!(
        cc.bandwidth() as f64 > 0.8 * link_bytes,
        "estimate {}",
        cc.bandwidth()
    );
    assert!(utilisation(&o, &l, 6.0) >= 0.85, "{o:?}");
}

#[test]
fn fills_a_fast_lossless_link() {
    let l = link(500.0, 20, 20.0, 0.0);
    let mut cc = Bbr::new(DEFAULT_INITIAL_WINDOW, MTU as u16, Instant::now());
    let o = run(&mut cc, &l, 4.0, 3);
    assert!(utilisation(&o, &l, 4.0) >= 0.9, "{o:?}");
    let rtt = cc.min_rtt().unwrap();
    assert!(
        rtt >= Duration::from_millis(20) && rtt < Duration::from_millis(23),
        "{rtt:?}"
    );
}

#[test]
fn a_shallow_queue_is_not_kept_overflowing() {
    // 5 ms of queue: start-up overshoots once, then the standing queue must fit.
    let l = link(50.0, 60, 5.0, 0.0);
    let mut cc = Bbr::new(DEFAULT_INITIAL_WINDOW, MTU as u16, Instant::now());
    let o = run(&mut cc, &l, 3.0, 5);
    let warm = run(&mut cc, &l, 5.0, 6);
    assert!(utilisation(&warm, &l, 5.0) >= 0.85, "{warm:?}");
    let sent = warm.delivered / MTU;
    assert!(
        (warm.queue_drops as f64) < 0.005 * sent as f64,
        "steady-state queue drops {} of {sent} packets (start-up: {o:?})",
        warm.queue_drops
    );
}

#[test]
fn congested_rounds_cut_the_estimate_random_loss_does_not() {
    let now = Instant::now();
    let mut cc = Bbr::new(DEFAULT_INITIAL_WINDOW, MTU as u16, now);
    cc.mode = Mode::ProbeBw;
    cc.bw = 1_000_000;
    cc.bw_rounds = [1_000_000].into_iter().collect();
    cc.min_rtt = Some((Duration::from_millis(100), now));
    // 5 % loss at a flat RTT: random loss, the estimate stays.
    cc.srtt = Duration::from_millis(101);
    cc.round_acked = 190_000;
    cc.round_lost = 10_000;
    cc.end_round();
    assert_eq!(cc.bandwidth(), 1_000_000);
    // The same loss with the RTT 50 % up: a queue overflowed, the estimate is cut.
    cc.srtt = Duration::from_millis(160);
    cc.round_acked = 190_000;
    cc.round_lost = 10_000;
    cc.end_round();
    assert_eq!(cc.bandwidth(), (1_000_000.0 * BETA) as u64);
}

#[test]
fn persistent_congestion_restarts_from_a_small_window() {
    let l = link(100.0, 40, 50.0, 0.0);
    let mut cc = Bbr::new(DEFAULT_INITIAL_WINDOW, MTU as u16, Instant::now());
    run(&mut cc, &l, 2.0, 9);
    assert!(cc.window() > 100 * MTU);
    cc.on_congestion_event(Instant::now(), Instant::now(), true, 10 * MTU);
    assert_eq!(cc.window(), MIN_WINDOW_PACKETS * MTU);
    assert_eq!(cc.mode(), Mode::Startup);
    assert!(cc.min_rtt().is_some());
}
