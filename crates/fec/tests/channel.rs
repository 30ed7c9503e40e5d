//! Encoder → lossy channel → decoder, sans-IO: every packet the block math says is recoverable
//! is delivered byte-exact, nothing is delivered twice, duplicates and reordering are harmless.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strait_fec::controller::{RepairPlanner, STARTUP_REPAIR_BUDGET};
use strait_fec::{
    packet::{self, Packet},
    CoderKind, Decoder, Encoder, FecConfig, FecMode, FecStats, FecStatsSnapshot, LossReport,
    Session,
};

fn payloads(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let len = rng.gen_range(4..1400);
            let mut p: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            p[..4].copy_from_slice(&(i as u32).to_be_bytes());
            p
        })
        .collect()
}

fn id_of(p: &[u8]) -> usize {
    u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize
}

/// Runs `pkts` through an encoder (packets 20 µs apart, final idle flush).
fn encode_all(cfg: &FecConfig, pkts: &[Vec<u8>], t0: Instant) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(cfg, Arc::new(FecStats::default()), t0);
    let mut wire = Vec::new();
    let mut now = t0;
    for p in pkts {
        now += Duration::from_micros(20);
        wire.extend(enc.on_send(p, now).unwrap());
    }
    enc.handle_timeout(now + Duration::from_secs(1));
    while let Some(w) = enc.poll_transmit() {
        wire.push(w);
    }
    wire
}

/// Which source packets (by payload id) the math says the receiver ends up with.
fn recoverable(wire: &[Vec<u8>], kept: &[bool]) -> HashSet<usize> {
    // block -> (k from repair, sources: index -> (id, kept), repairs kept)
    #[derive(Default)]
    struct B {
        k: Option<usize>,
        src: Vec<(usize, bool)>,
        rep_kept: usize,
    }
    let mut blocks: BTreeMap<u16, B> = BTreeMap::new();
    let mut out = HashSet::new();
    for (w, &keep) in wire.iter().zip(kept) {
        match packet::decode(w).unwrap() {
            Packet::Plain { payload, .. } => {
                if keep {
                    out.insert(id_of(payload));
                }
            }
            Packet::Source { block, payload, .. } => {
                blocks
                    .entry(block)
                    .or_default()
                    .src
                    .push((id_of(payload), keep));
            }
            Packet::Repair { block, k, .. } => {
                let b = blocks.entry(block).or_default();
                b.k = Some(k as usize);
                b.rep_kept += keep as usize;
            }
            Packet::Control(_) => unreachable!(),
        }
    }
    for b in blocks.values() {
        let got = b.src.iter().filter(|s| s.1).count();
        let decodable = b.k.is_some_and(|k| b.rep_kept > 0 && got + b.rep_kept >= k);
        for &(id, keep) in &b.src {
            if keep || decodable {
                out.insert(id);
            }
        }
    }
    out
}

fn deliver_all(wire: &[&Vec<u8>], t0: Instant) -> (Vec<Vec<u8>>, Arc<FecStats>) {
    let stats = Arc::new(FecStats::default());
    let mut dec = Decoder::new(Duration::from_millis(100), stats.clone(), t0);
    let mut got = Vec::new();
    for (i, w) in wire.iter().enumerate() {
        let now = t0 + Duration::from_micros(20 * i as u64);
        got.extend(dec.on_receive(w, now).unwrap());
    }
    (got, stats)
}

fn check(pkts: &[Vec<u8>], got: &[Vec<u8>], expect: &HashSet<usize>) {
    let mut seen = HashSet::new();
    for g in got {
        let id = id_of(g);
        assert_eq!(g, &pkts[id], "packet {id} delivered corrupted");
        assert!(seen.insert(id), "packet {id} delivered twice");
    }
    let missing: Vec<_> = expect.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "recoverable packets not delivered: {missing:?}"
    );
}

fn gilbert(rng: &mut ChaCha8Rng, n: usize, p: f64, burst: f64) -> Vec<bool> {
    let r = 1.0 / burst;
    let q = p * r / (1.0 - p);
    let mut bad = false;
    (0..n)
        .map(|_| {
            bad = if bad {
                rng.gen::<f64>() >= r
            } else {
                rng.gen::<f64>() < q
            };
            !bad
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_loss_delivers_everything_recoverable(
        seed: u64, k in 2u8..33, m in 1u8..7, loss in 0.0f64..0.2, simd: bool,
    ) {
        let mut cfg = FecConfig::new(FecMode::Fixed { k, m });
        cfg.coder = if simd { CoderKind::ReedSolomonSimd } else { CoderKind::ReedSolomonErasure };
        let t0 = Instant::now();
        let pkts = payloads(seed, 300);
        let wire = encode_all(&cfg, &pkts, t0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x55);
        let kept: Vec<bool> = wire.iter().map(|_| rng.gen::<f64>() >= loss).collect();
        let expect = recoverable(&wire, &kept);
        let through: Vec<&Vec<u8>> = wire.iter().zip(&kept).filter(|x| *x.1).map(|x| x.0).collect();
        let (got, _) = deliver_all(&through, t0);
        check(&pkts, &got, &expect);
    }

    #[test]
    fn bursty_loss_delivers_everything_recoverable(
        seed: u64, k in 4u8..33, m in 1u8..9, burst in 1.5f64..6.0,
    ) {
        let cfg = FecConfig::new(FecMode::Fixed { k, m });
        let t0 = Instant::now();
        let pkts = payloads(seed, 300);
        let wire = encode_all(&cfg, &pkts, t0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xAA);
        let kept = gilbert(&mut rng, wire.len(), 0.05, burst);
        let expect = recoverable(&wire, &kept);
        let through: Vec<&Vec<u8>> = wire.iter().zip(&kept).filter(|x| *x.1).map(|x| x.0).collect();
        let (got, _) = deliver_all(&through, t0);
        check(&pkts, &got, &expect);
    }

    #[test]
    fn duplicates_and_reordering_are_harmless(
        seed: u64, k in 2u8..20, m in 1u8..5, loss in 0.0f64..0.15, window in 1usize..12,
    ) {
        let cfg = FecConfig::new(FecMode::Fixed { k, m });
        let t0 = Instant::now();
        let pkts = payloads(seed, 200);
        let wire = encode_all(&cfg, &pkts, t0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x77);
        let kept: Vec<bool> = wire.iter().map(|_| rng.gen::<f64>() >= loss).collect();
        let expect = recoverable(&wire, &kept);
        let mut through: Vec<&Vec<u8>> = Vec::new();
        for (w, &keep) in wire.iter().zip(&kept) {
            if keep {
                through.push(w);
                if rng.gen::<f64>() < 0.1 {
                    through.push(w);
                }
            }
        }
        // Local reordering: swap each packet with one up to `window` later.
        for i in 0..through.len() {
            let j = (i + rng.gen_range(0..=window)).min(through.len() - 1);
            through.swap(i, j);
        }
        let (got, _) = deliver_all(&through, t0);
        check(&pkts, &got, &expect);
    }
}

#[test]
fn idle_flush_protects_a_partial_block() {
    let cfg = FecConfig::new(FecMode::Fixed { k: 16, m: 2 });
    let t0 = Instant::now();
    let stats = Arc::new(FecStats::default());
    let mut enc = Encoder::new(&cfg, stats.clone(), t0);
    let pkts = payloads(7, 5);
    let mut wire = Vec::new();
    for p in &pkts {
        wire.extend(enc.on_send(p, t0).unwrap());
    }
    assert_eq!(wire.len(), 5, "no repair before the block is full or idle");
    let deadline = enc.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + cfg.idle_flush);
    enc.handle_timeout(deadline);
    while let Some(w) = enc.poll_transmit() {
        wire.push(w);
    }
    assert_eq!(wire.len(), 7);
    assert_eq!(enc.poll_timeout(), None);
    // Lose two of the five sources: both come back from the flushed repair.
    let through: Vec<&Vec<u8>> = [0, 2, 4, 5, 6].iter().map(|&i| &wire[i]).collect();
    let (got, dstats) = deliver_all(&through, t0);
    assert_eq!(got.len(), 5);
    check(&pkts, &got, &(0..5).collect());
    assert_eq!(dstats.snapshot().packets_rebuilt, 2);
}

#[test]
fn paced_message_stays_one_round_and_is_flushed_when_the_sender_pauses() {
    // Fixed k=16 m=4, depth 1: a message paced 3 ms a packet (slower than idle_flush) is one
    // block, not one block per packet whose copies sit next to it on the wire.
    let cfg = FecConfig::new(FecMode::Fixed { k: 16, m: 4 });
    assert!(cfg.idle_flush < Duration::from_millis(3));
    let t0 = Instant::now();
    let mut enc = Encoder::new(&cfg, Arc::new(FecStats::default()), t0);
    let pkts = payloads(8, 4);
    let pace = Duration::from_millis(3);
    // A first message teaches the encoder the sender's pace; the second is checked.
    let mut wire = Vec::new();
    let mut now = t0;
    for (i, p) in pkts.iter().chain(&pkts).enumerate() {
        if i == pkts.len() {
            enc.handle_timeout(now + Duration::from_millis(100));
            while enc.poll_transmit().is_some() {}
            wire.clear();
        }
        now = t0 + pace * i as u32 + Duration::from_millis(100) * (i / pkts.len()) as u32;
        // Timers run as the socket's timer task would, between packets.
        while enc.poll_timeout().is_some_and(|t| t <= now) {
            enc.handle_timeout(enc.poll_timeout().unwrap());
        }
        while let Some(w) = enc.poll_transmit() {
            wire.push(w);
        }
        wire.extend(enc.on_send(p, now).unwrap());
    }
    let blocks: HashSet<u16> = wire
        .iter()
        .map(|w| match packet::decode(w).unwrap() {
            Packet::Source { block, .. } => block,
            other => panic!("repair before the message ended: {other:?}"),
        })
        .collect();
    assert_eq!(blocks.len(), 1, "one block for the paced message");
    // The sender pauses: the round is flushed within max_block_delay of its first packet.
    let deadline = enc.poll_timeout().unwrap();
    assert!(deadline > now && deadline <= now + cfg.max_block_delay);
    enc.handle_timeout(deadline);
    let repairs: Vec<Vec<u8>> = std::iter::from_fn(|| enc.poll_transmit()).collect();
    assert_eq!(repairs.len(), 4);
    // Any four of the eight packets may go, e.g. a burst over the last two sources and the
    // first two repairs.
    wire.extend(repairs);
    let through: Vec<&Vec<u8>> = [0, 1, 6, 7].iter().map(|&i| &wire[i]).collect();
    let (got, _) = deliver_all(&through, t0);
    check(&pkts, &got, &(0..4).collect());
}

/// Two sessions joined by a channel that drops A→B datagrams with `loss`; B's reports reach A.
fn run_pair(
    mode: FecMode,
    loss: f64,
    n: usize,
    seed: u64,
) -> (Arc<FecStats>, Arc<FecStats>, usize) {
    let cfg = FecConfig::new(mode);
    let t0 = Instant::now();
    let (sa, sb) = (Arc::new(FecStats::default()), Arc::new(FecStats::default()));
    let mut a = Session::new(&cfg, sa.clone(), t0);
    let mut b = Session::new(&cfg, sb.clone(), t0);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pkts: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut p = vec![0u8; 1200];
            p[..4].copy_from_slice(&(i as u32).to_be_bytes());
            p
        })
        .collect();
    let mut delivered = HashSet::new();
    let mut now = t0;
    for p in &pkts {
        // 100 µs apart ≈ 100 Mbit/s of 1200-byte packets.
        now += Duration::from_micros(100);
        let mut out: Vec<Vec<u8>> = a.on_send(p, now).unwrap().collect();
        for s in [&mut a, &mut b] {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        while let Some(w) = a.poll_transmit() {
            out.push(w);
        }
        for w in out {
            if rng.gen::<f64>() >= loss {
                for d in b.on_receive(&w, now).unwrap() {
                    delivered.insert(id_of(&d));
                }
            }
        }
        while let Some(w) = b.poll_transmit() {
            a.on_receive(&w, now).unwrap().for_each(drop);
        }
    }
    (sa, sb, delivered.len())
}

#[test]
fn adaptive_at_zero_loss_sends_no_repair_and_adds_under_one_percent() {
    let (sa, _, delivered) = run_pair(FecMode::adaptive(), 0.0, 20_000, 1);
    let s = sa.snapshot();
    assert_eq!(delivered, 20_000);
    // Only the start-up prior sent repair; none once the peer measured. Full blocks keep the
    // prior until the peer's first report on enough packets (100 ms here: 1000 packets, the
    // blocks they fill and the one open when the report came).
    assert_eq!(s.repair_packets_sent, s.startup_repair_packets, "{s:?}");
    let m_prior = RepairPlanner::new(FecMode::adaptive(), 64).plan().m_for(64) as u64;
    assert!(
        s.startup_repair_packets <= (1000 / 64 + 2) * m_prior,
        "{s:?}"
    );
    assert_eq!(s.current_m, 0);
    assert!(
        (s.header_overhead_bytes + s.repair_bytes_sent) * 100 <= s.source_bytes_sent,
        "{s:?}"
    );
}

#[test]
fn adaptive_at_two_percent_loss_learns_repair_and_rebuilds() {
    let n = 20_000;
    let (sa, sb, delivered) = run_pair(FecMode::adaptive(), 0.02, n, 2);
    let (a, b) = (sa.snapshot(), sb.snapshot());
    assert!(a.current_m > 0, "{a:?}");
    assert!(a.repair_packets_sent > 0);
    // Every protected block is counted with its sources: 1200-byte packets 100 µs apart fill
    // most blocks (k = 64) before a pause closes them.
    assert!(a.blocks_protected > 0, "{a:?}");
    assert!(a.protected_sources <= a.blocks_protected * 64, "{a:?}");
    assert!(a.protected_sources >= a.blocks_protected * 32, "{a:?}");
    assert!(b.packets_rebuilt > 0, "{b:?}");
    assert!(b.loss_ppm > 10_000 && b.loss_ppm < 30_000, "{b:?}");
    // The start-up prior protects the packets sent before the first report: almost nothing
    // is lost for good (without it, the first report interval's ~40 losses were).
    let lost_for_good = n - delivered;
    assert!(lost_for_good < 10, "{lost_for_good} lost, {b:?}");
    assert!(a.startup_repair_packets > 0, "{a:?}");
}

#[test]
fn reports_from_a_peer_reach_the_encoder() {
    let cfg = FecConfig::new(FecMode::adaptive());
    let t0 = Instant::now();
    let mut s = Session::new(&cfg, Arc::new(FecStats::default()), t0);
    let mut w = Vec::new();
    packet::encode_control(
        &mut w,
        &LossReport {
            loss_ppm: 20_000,
            burst_milli: 1020,
            queue_delay_us: 0,
            packets: 5000,
        },
    );
    assert_eq!(s.on_receive(&w, t0).unwrap().count(), 0);
    assert!(s.encoder.plan().m_for(32) >= 3);
}

#[test]
fn decoder_memory_is_bounded() {
    let t0 = Instant::now();
    let mut dec = Decoder::new(
        Duration::from_millis(100),
        Arc::new(FecStats::default()),
        t0,
    );
    let mut w = Vec::new();
    // Source packets of 2000 distinct blocks that never complete.
    for blk in 0..2000u16 {
        w.clear();
        packet::encode_source(&mut w, blk, Some(0), blk, 1, &[7u8; 1000]);
        dec.on_receive(&w, t0).unwrap().for_each(drop);
    }
    assert!(dec.blocks_tracked() <= strait_fec::MAX_BLOCKS_IN_FLIGHT);
    assert!(dec.bytes_stored() <= strait_fec::MAX_DECODER_BYTES);
    dec.handle_timeout(t0 + Duration::from_secs(2));
    assert_eq!(dec.blocks_tracked(), 0);
}

/// Per-packet loss of one direction: a Gilbert chain with loss rate `p` and mean burst `burst`
/// (independent loss for `burst` ≤ 1/(1−p)), the emulator's model.
struct Lossy {
    p: f64,
    burst: f64,
    bad: bool,
}

impl Lossy {
    fn new(p: f64, burst: f64) -> Self {
        Lossy {
            p,
            burst: burst.max(1.0 / (1.0 - p)),
            bad: false,
        }
    }
    fn drops(&mut self, rng: &mut ChaCha8Rng) -> bool {
        if self.p <= 0.0 {
            return false;
        }
        let r = 1.0 / self.burst;
        let q = self.p * r / (1.0 - self.p);
        let u: f64 = rng.gen();
        self.bad = if self.bad { u >= r } else { u < q };
        self.bad
    }
}

/// Outcome of [`run_exchanges`].
struct Exchanges {
    /// The requester's stats.
    a: FecStatsSnapshot,
    /// The responder's stats.
    b: FecStatsSnapshot,
    /// Exchanges whose request lost a packet for good.
    failed_req: usize,
    /// Exchanges whose response lost a packet for good.
    failed_resp: usize,
}

impl Exchanges {
    fn failed(&self) -> usize {
        self.failed_req + self.failed_resp
    }
}

/// Request/response over a 100 ms path losing `loss` of datagrams both ways: A sends a 2-packet
/// request, B answers 13 packets when the request is complete. Returns A's stats and how many
/// exchanges lost a packet for good (QUIC would have needed a retransmission round trip).
fn run_sparse_exchanges(loss: f64, exchanges: usize, seed: u64) -> (FecStats, usize) {
    let x = run_exchanges(loss, 1.0, exchanges, seed);
    let stats = FecStats::default();
    stats
        .current_m
        .store(x.a.current_m, std::sync::atomic::Ordering::Relaxed);
    stats.repair_packets_sent.store(
        x.a.repair_packets_sent,
        std::sync::atomic::Ordering::Relaxed,
    );
    (stats, x.failed())
}

/// Request/response over a 100 ms path with Gilbert loss (`loss`, mean burst `burst`) both ways:
/// A sends a 2-packet request, B answers 13 packets when the request is complete, A acknowledges
/// with one small packet. Counts exchanges that lost a packet for good, per direction.
fn run_exchanges(loss: f64, burst: f64, exchanges: usize, seed: u64) -> Exchanges {
    run_paced_exchanges(loss, burst, Duration::ZERO, exchanges, seed)
}

/// [`run_exchanges`] with B's response packets `pace` apart (a paced congestion controller).
fn run_paced_exchanges(
    loss: f64,
    burst: f64,
    pace: Duration,
    exchanges: usize,
    seed: u64,
) -> Exchanges {
    use std::collections::BinaryHeap;
    let cfg = FecConfig::new(FecMode::adaptive());
    let t0 = Instant::now();
    let one_way = Duration::from_millis(50);
    let (sa, sb) = (Arc::new(FecStats::default()), Arc::new(FecStats::default()));
    let mut a = Session::new(&cfg, sa.clone(), t0);
    let mut b = Session::new(&cfg, sb.clone(), t0);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut links = [Lossy::new(loss, burst), Lossy::new(loss, burst)];
    // (Reverse((arrival, order sent)), to_b, wire): in order, like the emulator.
    type Net = BinaryHeap<(std::cmp::Reverse<(Instant, u64)>, bool, Vec<u8>)>;
    let mut net: Net = BinaryHeap::new();
    let mut sent = 0u64;
    let mut send = |net: &mut Net, rng: &mut ChaCha8Rng, at: Instant, to_b: bool, w| {
        sent += 1;
        if !links[to_b as usize].drops(rng) {
            net.push((std::cmp::Reverse((at + one_way, sent)), to_b, w));
        }
    };
    let (mut failed_req, mut failed_resp) = (0, 0);
    let mut now = t0;
    for x in 0..exchanges {
        let tag = |dir: u8, i: usize, len: usize| {
            let mut p = vec![dir; len];
            p[..4].copy_from_slice(&((x * 64 + i) as u32).to_be_bytes());
            p
        };
        for i in 0..2 {
            for w in a
                .on_send(&tag(1, i, 1200), now)
                .unwrap()
                .collect::<Vec<_>>()
            {
                send(&mut net, &mut rng, now, true, w);
            }
        }
        let (mut req, mut resp) = (HashSet::new(), HashSet::new());
        let end = now + Duration::from_millis(300);
        let (mut answered, mut acked) = (false, false);
        let mut to_answer = 0..0;
        let mut next_answer = end;
        while now < end {
            let next_net = net.peek().map(|e| e.0 .0 .0).min(Some(next_answer));
            let next_timer = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(t) = [next_net, next_timer, Some(end)]
                .into_iter()
                .flatten()
                .min()
            else {
                break;
            };
            now = t.max(now);
            for (s, to_b) in [(&mut a, true), (&mut b, false)] {
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
                while let Some(w) = s.poll_transmit() {
                    send(&mut net, &mut rng, now, to_b, w);
                }
            }
            while net.peek().is_some_and(|e| e.0 .0 .0 <= now) {
                let (_, to_b, w) = net.pop().unwrap();
                let got: Vec<Vec<u8>> = if to_b {
                    b.on_receive(&w, now).unwrap().collect()
                } else {
                    a.on_receive(&w, now).unwrap().collect()
                };
                for d in got {
                    let id = id_of(&d).wrapping_sub(x * 64);
                    match (to_b, d[4]) {
                        (true, 1) => req.insert(id),
                        (false, 2) => resp.insert(id),
                        _ => false,
                    };
                }
            }
            if req.len() == 2 && !answered {
                answered = true;
                to_answer = 0..13;
                next_answer = now;
            }
            while next_answer <= now {
                let Some(i) = to_answer.next() else {
                    next_answer = end;
                    break;
                };
                for w in b
                    .on_send(&tag(2, i, 1200), now)
                    .unwrap()
                    .collect::<Vec<_>>()
                {
                    send(&mut net, &mut rng, now, false, w);
                }
                next_answer = if pace.is_zero() { now } else { now + pace };
            }
            if resp.len() >= 2 && !acked {
                // QUIC acknowledges the response: a small packet of its own in A's stream.
                acked = true;
                for w in a.on_send(&tag(3, 0, 40), now).unwrap().collect::<Vec<_>>() {
                    send(&mut net, &mut rng, now, true, w);
                }
            }
        }
        if !answered {
            failed_req += 1;
        } else if resp.len() != 13 {
            failed_resp += 1;
        }
    }
    Exchanges {
        a: sa.snapshot(),
        b: sb.snapshot(),
        failed_req,
        failed_resp,
    }
}

#[test]
fn paced_responses_survive_bursty_loss() {
    // 1% loss in bursts of mean 4 both ways, responses paced 3 ms a packet (slower than
    // idle_flush). One-packet blocks with their copies next to them lost ~4% of responses;
    // rounds that span the paced message and a burst length measured without the sender's
    // reordering keep it under 2%.
    let x = run_paced_exchanges(0.01, 4.0, Duration::from_millis(3), 300, 4);
    assert!(
        x.failed() <= 6,
        "{} + {} of 300 failed",
        x.failed_req,
        x.failed_resp
    );
    assert!(x.a.mean_burst_milli > 1_500, "burst measured {:?}", x.a);
}

#[test]
#[ignore = "prints the failure rates of request/response under bursty loss; run by hand"]
fn bursty_exchange_survey() {
    let pace_us: u64 = std::env::var("PACE_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let pace = Duration::from_micros(pace_us);
    for (loss, burst) in [(0.02, 1.0), (0.01, 4.0), (0.01, 2.0), (0.01, 8.0)] {
        for seed in [1u64, 2, 3] {
            let x = run_paced_exchanges(loss, burst, pace, 1000, seed);
            println!(
                "loss {loss} burst {burst} pace {pace_us} us seed {seed}: failed req {} resp {} | A repair {} of {} src, unrec {} | B repair {} of {} src, unrec {}",
                x.failed_req,
                x.failed_resp,
                x.a.repair_packets_sent,
                x.a.source_packets_sent,
                x.b.blocks_unrecoverable,
                x.b.repair_packets_sent,
                x.b.source_packets_sent,
                x.a.blocks_unrecoverable,
            );
            println!(
                "    A measures {} ppm burst {} | B measures {} ppm burst {} | A plan m {} d {} | B plan m {} d {}",
                x.a.loss_ppm, x.a.mean_burst_milli, x.b.loss_ppm, x.b.mean_burst_milli,
                x.a.current_m, x.a.interleave_depth, x.b.current_m, x.b.interleave_depth
            );
        }
    }
}

#[test]
fn sparse_request_response_is_protected_in_both_directions() {
    // 2% loss: an exchange of 15 packets fails ~26% of the time without FEC.
    let (a, failed) = run_sparse_exchanges(0.02, 400, 9);
    let a = a.snapshot();
    assert!(
        a.repair_packets_sent > 0,
        "the requester never protected its requests: {a:?}"
    );
    assert!(
        failed <= 8,
        "{failed} of 400 exchanges lost a packet for good"
    );
}

#[test]
fn sparse_request_response_at_zero_loss_sends_no_repair_after_startup() {
    let x = run_exchanges(0.0, 1.0, 300, 10);
    assert_eq!(x.failed(), 0);
    // The prior's small-block budget is all the repair there is. Full blocks would still get
    // the prior's repair (the peer has not measured 500 of a sparse flow's packets), so the
    // plan for them (`current_m`) may still show it, but no such block is ever sent.
    let m_prior = RepairPlanner::new(FecMode::adaptive(), 64).plan().m_for(64) as u64;
    for s in [x.a, x.b] {
        assert_eq!(s.repair_packets_sent, s.startup_repair_packets, "{s:?}");
        assert!(s.startup_repair_packets <= STARTUP_REPAIR_BUDGET, "{s:?}");
        assert!(s.current_m == 0 || s.current_m == m_prior, "{s:?}");
    }
}

/// Zero-loss adaptive FEC's fixed costs: what a packet's header carries and how often the
/// receiver reports.
mod zero_loss_costs {
    use super::*;
    use strait_fec::controller::{PRIOR_PACKETS, STARTUP_REPORT_PACKETS};
    use strait_fec::packet::{PLAIN_HEADER_LEN, TS_INTERVAL, TS_LEN};
    use strait_fec::REPORT_REFRESH;

    fn ts_of(wire: &[u8]) -> Option<u16> {
        match packet::decode(wire).unwrap() {
            Packet::Plain { ts, .. } | Packet::Source { ts, .. } | Packet::Repair { ts, .. } => ts,
            Packet::Control(_) => panic!("control packet from the encoder"),
        }
    }

    #[test]
    fn a_timestamp_rides_on_one_packet_per_interval_and_after_a_pause() {
        let cfg = FecConfig {
            startup_prior: false,
            ..FecConfig::new(FecMode::adaptive())
        };
        let stats = Arc::new(FecStats::default());
        let t0 = Instant::now();
        let mut enc = Encoder::new(&cfg, stats.clone(), t0);
        let gap = Duration::from_micros(100);
        let per_interval = (TS_INTERVAL.as_micros() / gap.as_micros()) as usize;
        let mut stamped = Vec::new();
        for i in 0..1000 {
            let now = t0 + gap * i as u32;
            for w in enc.on_send(&[7u8; 1200], now).unwrap() {
                if ts_of(&w).is_some() {
                    stamped.push(i);
                }
            }
        }
        let expect: Vec<usize> = (0..1000).step_by(per_interval).collect();
        assert_eq!(stamped, expect);
        let s = stats.snapshot();
        assert_eq!(
            s.header_overhead_bytes as usize,
            1000 * PLAIN_HEADER_LEN + expect.len() * TS_LEN
        );
        // The first packet after a pause carries one, whatever the interval's phase.
        let later = t0 + gap * 1000 + Duration::from_millis(50);
        let w: Vec<Vec<u8>> = enc.on_send(&[7u8; 1200], later).unwrap().collect();
        assert!(ts_of(&w[0]).is_some());
        let w: Vec<Vec<u8>> = enc.on_send(&[7u8; 1200], later).unwrap().collect();
        assert_eq!(ts_of(&w[0]), None);
    }

    /// Plain packets `gap` apart into a decoder, dropping those `lost` says; returns the
    /// reports it sends over `secs`.
    fn reports(
        secs: u64,
        gap: Duration,
        lost: impl Fn(u64) -> bool,
    ) -> Vec<(Duration, LossReport)> {
        let t0 = Instant::now();
        let cfg = FecConfig {
            startup_prior: false,
            ..FecConfig::new(FecMode::adaptive())
        };
        let mut enc = Encoder::new(&cfg, Arc::new(FecStats::default()), t0);
        let mut dec = Decoder::from_config(&cfg, Arc::new(FecStats::default()), t0);
        let mut out = Vec::new();
        let n = Duration::from_secs(secs).as_micros() as u64 / gap.as_micros() as u64;
        for i in 0..n {
            let now = t0 + gap * i as u32;
            let wire: Vec<Vec<u8>> = enc.on_send(&[1u8; 300], now).unwrap().collect();
            if !lost(i) {
                for w in &wire {
                    dec.on_receive(w, now).unwrap().for_each(drop);
                }
            }
            if dec.poll_timeout().is_some_and(|t| t <= now) {
                if let Some(r) = dec.handle_timeout(now) {
                    out.push((now - t0, r));
                }
            }
        }
        out
    }

    #[test]
    fn an_unchanged_zero_loss_report_is_repeated_only_every_refresh_interval() {
        let secs = 10;
        let got = reports(secs, Duration::from_millis(1), |_| false);
        assert!(got.iter().all(|(_, r)| r.loss_ppm == 0), "{got:?}");
        // The first report, one per REPORT_REFRESH (it was one per 100 ms: 100 here), and the
        // first to cover each of the two sample sizes the sender acts on.
        let thresholds = [STARTUP_REPORT_PACKETS as f64, PRIOR_PACKETS];
        let most = (secs * 1000 / REPORT_REFRESH.as_millis() as u64) as usize + 1 + 2;
        assert!(
            (secs as usize..=most).contains(&got.len()),
            "{} reports: {got:?}",
            got.len()
        );
        let mut crossings = 0;
        for pair in got.windows(2) {
            if pair[1].0 - pair[0].0 >= REPORT_REFRESH {
                continue;
            }
            let (a, b) = (pair[0].1.packets as f64, pair[1].1.packets as f64);
            assert!(
                thresholds.iter().any(|&t| a < t && b >= t),
                "early report that crosses no threshold: {pair:?}"
            );
            crossings += 1;
        }
        assert_eq!(crossings, 2, "{got:?}");
    }

    #[test]
    fn reports_keep_their_pace_while_there_is_loss_and_announce_its_end() {
        // 2% random loss for the first 3 s, none after (the meter forgets it within ~15 s).
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let drops: Vec<bool> = (0..25_000)
            .map(|i| i < 3000 && rng.gen_bool(0.02))
            .collect();
        let got = reports(25, Duration::from_millis(1), |i| drops[i as usize]);
        let lossy: Vec<_> = got
            .iter()
            .filter(|(t, _)| *t < Duration::from_secs(3))
            .collect();
        // Every report interval (or sooner after a fresh loss) while loss is measured.
        assert!(lossy.len() >= 29, "{} reports in 3 s: {got:?}", lossy.len());
        assert!(
            lossy.iter().skip(2).all(|(_, r)| r.loss_ppm > 0),
            "{lossy:?}"
        );
        // Loss fades (half-life and window); the first zero report is sent at once, then the
        // refresh pace resumes.
        let first_zero = got
            .iter()
            .position(|(t, r)| *t > Duration::from_secs(3) && r.loss_ppm == 0)
            .expect("a zero-loss report after the loss ended");
        let prev = &got[first_zero - 1];
        assert!(prev.1.loss_ppm > 0, "{prev:?}");
        assert!(got[first_zero].0 - prev.0 <= Duration::from_millis(100));
        for pair in got[first_zero..].windows(2) {
            assert!(pair[1].0 - pair[0].0 >= REPORT_REFRESH, "{pair:?}");
        }
    }

    #[test]
    fn our_own_loss_estimate_reaches_the_plan_without_a_new_report_from_the_peer() {
        // The peer said "no loss, on few packets", then goes quiet (its zero reports are
        // repeated only every REPORT_REFRESH). Our receiver measures 3% on the reverse
        // direction: within a report interval our sending plan uses it as the prior.
        let cfg = FecConfig {
            startup_prior: false,
            ..FecConfig::new(FecMode::adaptive())
        };
        let t0 = Instant::now();
        let mut s = Session::new(&cfg, Arc::new(FecStats::default()), t0);
        let mut ctl = Vec::new();
        packet::encode_control(
            &mut ctl,
            &LossReport {
                loss_ppm: 0,
                burst_milli: 0,
                queue_delay_us: 0,
                packets: 20,
            },
        );
        s.on_receive(&ctl, t0).unwrap().for_each(drop);
        assert!(s.encoder.plan().is_unprotected());
        let mut peer = Encoder::new(&cfg, Arc::new(FecStats::default()), t0);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut protected_at = None;
        for i in 0..800u32 {
            let now = t0 + Duration::from_millis(i as u64);
            let wire: Vec<Vec<u8>> = peer.on_send(&[2u8; 500], now).unwrap().collect();
            if !rng.gen_bool(0.03) {
                for w in &wire {
                    s.on_receive(w, now).unwrap().for_each(drop);
                }
            }
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            while s.poll_transmit().is_some() {}
            if protected_at.is_none() && !s.encoder.plan().is_unprotected() {
                protected_at = Some(i);
            }
        }
        let at = protected_at.expect("the reverse direction's loss never reached the plan");
        assert!(at < 400, "plan protected only after {at} ms");
    }
}
