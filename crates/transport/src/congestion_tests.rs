#![allow(clippy::unwrap_used)]
//! The controller against the packet-level model of one bottleneck in `sim_tests`.

use super::*;
use crate::sim_tests::{link, run, utilisation, SimController, MTU};
use quinn::congestion::Controller;

impl SimController for Bbr {
    fn controller(&mut self) -> &mut dyn Controller {
        self
    }

    fn ack(&mut self, now: Instant, sent: Instant, bytes: u64, srtt: Duration) {
        self.on_packet_acked(now, sent, bytes, false, srtt);
    }

    fn in_startup(&self) -> bool {
        self.mode == Mode::Startup
    }

    fn bandwidth(&self) -> u64 {
        self.bw
    }

    fn trace(&self) -> String {
        format!("mode={:?} bw={}", self.mode, self.bw)
    }
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
