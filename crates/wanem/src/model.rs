//! The link model of one direction: decides each packet's fate from its arrival time and size.
//! Performs no I/O and reads no clock — time is an input — so it is tested without sockets.
//!
//! Pipeline per arriving packet (in this order):
//! 1. every random draw of the packet is made up front, from one ChaCha stream per feature, so
//!    the fate of the n-th packet depends only on the seed and n (and, for queue drops, timing);
//! 2. the drop-tail queue in front of the rate limiter admits it or drops it (`queue`);
//! 3. admitted packets occupy the bottleneck (lost packets too: they are lost *on* the wire);
//! 4. bursty loss (Gilbert–Elliott), then random loss;
//! 5. delay + jitter, held in order behind the previous packet unless reordering selects it;
//!    jitter is a time-correlated process — uniform samples in ±jitter at knots every
//!    2×jitter, linearly interpolated — so the delay never falls faster than time passes and
//!    packets stay in order *without* the clamp inflating the mean delay at high packet rates
//!    (independent per-packet jitter plus an in-order clamp drifts towards delay + jitter);
//! 6. duplication delivers a second copy at the same instant.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::params::{LinkParams, QueueLimit};
use crate::Error;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Why the model dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// The drop-tail queue in front of the rate limiter was full.
    Queue,
    /// Independent random loss.
    RandomLoss,
    /// Gilbert–Elliott burst loss.
    BurstLoss,
}

/// The model's decision for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Dropped, for this reason.
    Drop(DropCause),
    /// Delivered at `at_ns` (same clock as the input); `copies` is 1, or 2 when duplicated;
    /// `reordered` when it was held back so later packets may overtake it.
    Deliver {
        /// Delivery time in nanoseconds.
        at_ns: u64,
        /// 1, or 2 when duplicated.
        copies: u8,
        /// Held back by the reorder delay.
        reordered: bool,
    },
}

// One RNG stream per feature so enabling one feature never shifts another's decisions.
const STREAM_BURST: u64 = 0;
const STREAM_LOSS: u64 = 1;
const STREAM_JITTER: u64 = 2;
const STREAM_REORDER: u64 = 3;
const STREAM_DUP: u64 = 4;
const STREAMS_PER_DIRECTION: u64 = 8;

/// One direction of the emulated link.
#[derive(Debug)]
pub struct LinkModel {
    params: LinkParams,
    /// Gilbert–Elliott transitions `(p, r)`.
    ge: Option<(f64, f64)>,
    ge_bad: bool,
    queue_limit_bytes: Option<u128>,
    /// When the bottleneck finishes serialising everything admitted so far.
    link_free_at_ns: u64,
    /// Delivery time of the last in-order packet: no in-order packet leaves before it.
    last_delivery_ns: u64,
    jitter: JitterProcess,
    rng: [ChaCha8Rng; 5],
}

/// Piecewise-linear jitter between uniform knots `2 × jitter` apart: slope within ±1, so
/// `t + jitter(t)` never decreases.
#[derive(Debug, Default)]
struct JitterProcess {
    prev_t: u64,
    prev_v: f64,
    next_t: u64,
    next_v: f64,
}

impl JitterProcess {
    fn value(&mut self, now_ns: u64, amplitude_ns: f64, rng: &mut ChaCha8Rng) -> f64 {
        if amplitude_ns <= 0.0 {
            return 0.0;
        }
        let period = (2.0 * amplitude_ns) as u64;
        let mut sample = || amplitude_ns * (2.0 * rng.gen::<f64>() - 1.0);
        if self.next_t == 0 || now_ns >= self.next_t.saturating_add(period) {
            // First use, or idle for more than a period: restart the process here.
            self.prev_t = now_ns;
            self.prev_v = sample();
            self.next_t = now_ns.saturating_add(period);
            self.next_v = sample();
        }
        while now_ns >= self.next_t {
            self.prev_t = self.next_t;
            self.prev_v = self.next_v;
            self.next_t = self.next_t.saturating_add(period);
            self.next_v = sample();
        }
        let frac = (now_ns - self.prev_t) as f64 / period as f64;
        self.prev_v + (self.next_v - self.prev_v) * frac
    }
}

impl LinkModel {
    /// A model for `params`; `direction` (0 or 1) picks independent RNG streams under `seed`.
    pub fn new(params: &LinkParams, seed: u64, direction: u64) -> Result<Self, Error> {
        params.validate(if direction == 0 { "a_to_b" } else { "b_to_a" })?;
        let stream = |s: u64| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            r.set_stream(direction * STREAMS_PER_DIRECTION + s);
            r
        };
        let queue_limit_bytes = params.rate_bps.map(|rate| match params.queue {
            QueueLimit::Bytes(b) => u128::from(b),
            QueueLimit::Millis(ms) => u128::from(rate) * u128::from(ms) / 8000,
        });
        Ok(LinkModel {
            params: params.clone(),
            ge: params.burst.map(|g| g.transitions()),
            ge_bad: false,
            queue_limit_bytes,
            link_free_at_ns: 0,
            last_delivery_ns: 0,
            jitter: JitterProcess::default(),
            rng: [
                stream(STREAM_BURST),
                stream(STREAM_LOSS),
                stream(STREAM_JITTER),
                stream(STREAM_REORDER),
                stream(STREAM_DUP),
            ],
        })
    }

    /// The parameters this model applies.
    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Bytes waiting for (or in) the bottleneck at `now_ns`.
    pub fn backlog_bytes(&self, now_ns: u64) -> u64 {
        match self.params.rate_bps {
            Some(rate) => {
                let ahead = u128::from(self.link_free_at_ns.saturating_sub(now_ns));
                u64::try_from(ahead * u128::from(rate) / 8 / NANOS_PER_SEC).unwrap_or(u64::MAX)
            }
            None => 0,
        }
    }

    /// Decides the fate of a packet of `len` bytes arriving at `now_ns`. Arrival times must not
    /// go backwards.
    pub fn admit(&mut self, now_ns: u64, len: usize) -> Fate {
        // 1. Draw everything first (see the module doc).
        let ge_bad = match self.ge {
            Some((p, r)) => {
                let u: f64 = self.rng[0].gen();
                self.ge_bad = if self.ge_bad { u >= r } else { u < p };
                self.ge_bad
            }
            None => false,
        };
        let u_loss: f64 = self.rng[1].gen();
        let u_reorder: f64 = self.rng[3].gen();
        let u_dup: f64 = self.rng[4].gen();

        // 2–3. Drop-tail queue and serialisation at the bottleneck.
        let depart_ns = match (self.params.rate_bps, self.queue_limit_bytes) {
            (Some(rate), Some(limit)) => {
                let backlog = u128::from(self.backlog_bytes(now_ns));
                // An empty queue always takes a packet, even one larger than the limit.
                if backlog > 0 && backlog + len as u128 > limit {
                    return Fate::Drop(DropCause::Queue);
                }
                let start = self.link_free_at_ns.max(now_ns);
                let tx_ns = (len as u128 * 8 * NANOS_PER_SEC).div_ceil(u128::from(rate));
                self.link_free_at_ns =
                    start.saturating_add(u64::try_from(tx_ns).unwrap_or(u64::MAX));
                self.link_free_at_ns
            }
            _ => now_ns,
        };

        // 4. Loss on the wire.
        if ge_bad {
            return Fate::Drop(DropCause::BurstLoss);
        }
        if u_loss < self.params.loss {
            return Fate::Drop(DropCause::RandomLoss);
        }

        // 5. Delay plus jitter, never below zero.
        let delay = self.params.delay.as_nanos() as f64;
        let jitter = self.params.jitter.as_nanos() as f64;
        let j = self.jitter.value(depart_ns, jitter, &mut self.rng[2]);
        let d = (delay + j).max(0.0) as u64;
        let base = depart_ns.saturating_add(d);
        let reordered = u_reorder < self.params.reorder;
        let at_ns = if reordered {
            // Held back; does not move the in-order floor, so later packets overtake it.
            base.saturating_add(self.params.reorder_delay.as_nanos() as u64)
        } else {
            let at = base.max(self.last_delivery_ns);
            self.last_delivery_ns = at;
            at
        };

        // 6. Duplication.
        let copies = if u_dup < self.params.duplicate { 2 } else { 1 };
        Fate::Deliver {
            at_ns,
            copies,
            reordered,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::params::GilbertElliott;
    use std::time::Duration;

    fn run(params: &LinkParams, seed: u64, n: usize) -> Vec<Fate> {
        let mut m = LinkModel::new(params, seed, 0).unwrap();
        // One packet per 10 µs: never queue-limited unless a rate is set.
        (0..n).map(|i| m.admit(i as u64 * 10_000, 1000)).collect()
    }

    fn loss_fraction(f: &[Fate]) -> f64 {
        f.iter().filter(|f| matches!(f, Fate::Drop(_))).count() as f64 / f.len() as f64
    }

    #[test]
    fn random_loss_over_100k_packets_is_within_0_2_points() {
        for (seed, loss) in [(1, 0.01), (2, 0.05), (3, 0.001)] {
            let p = LinkParams {
                loss,
                ..LinkParams::default()
            };
            let measured = loss_fraction(&run(&p, seed, 100_000));
            assert!(
                (measured - loss).abs() <= 0.002,
                "configured {loss}, measured {measured}"
            );
        }
    }

    fn burst_lengths(f: &[Fate]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut run = 0;
        for x in f {
            if matches!(x, Fate::Drop(DropCause::BurstLoss)) {
                run += 1;
            } else if run > 0 {
                out.push(run);
                run = 0;
            }
        }
        out
    }

    #[test]
    fn gilbert_elliott_bursts_follow_the_configured_mean_length() {
        for (seed, mean_loss, mean_burst) in [(7, 0.01, 4.0), (8, 0.05, 2.0), (9, 0.02, 8.0)] {
            let p = LinkParams {
                burst: Some(GilbertElliott {
                    mean_loss,
                    mean_burst,
                }),
                ..LinkParams::default()
            };
            let f = run(&p, seed, 1_000_000);
            let bursts = burst_lengths(&f);
            let mean = bursts.iter().sum::<usize>() as f64 / bursts.len() as f64;
            assert!(
                (mean - mean_burst).abs() / mean_burst < 0.08,
                "mean burst {mean}, configured {mean_burst} ({} bursts)",
                bursts.len()
            );
            let loss = loss_fraction(&f);
            assert!(
                (loss - mean_loss).abs() / mean_loss < 0.1,
                "loss {loss}, configured {mean_loss}"
            );
        }
    }

    #[test]
    fn same_seed_gives_the_same_fates_and_other_seeds_differ() {
        let p = LinkParams {
            loss: 0.05,
            jitter: Duration::from_millis(3),
            delay: Duration::from_millis(10),
            duplicate: 0.01,
            reorder: 0.01,
            ..LinkParams::default()
        };
        assert_eq!(run(&p, 42, 10_000), run(&p, 42, 10_000));
        assert_ne!(run(&p, 42, 10_000), run(&p, 43, 10_000));
    }

    #[test]
    fn directions_draw_independent_streams() {
        let p = LinkParams {
            loss: 0.1,
            ..LinkParams::default()
        };
        let mut a = LinkModel::new(&p, 5, 0).unwrap();
        let mut b = LinkModel::new(&p, 5, 1).unwrap();
        let fa: Vec<_> = (0..1000).map(|i| a.admit(i, 100)).collect();
        let fb: Vec<_> = (0..1000).map(|i| b.admit(i, 100)).collect();
        assert_ne!(fa, fb);
    }

    #[test]
    fn jitter_never_reorders_unless_asked() {
        let p = LinkParams {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(10),
            ..LinkParams::default()
        };
        let f = run(&p, 11, 100_000);
        let times: Vec<u64> = f
            .iter()
            .map(|f| match f {
                Fate::Deliver { at_ns, .. } => *at_ns,
                Fate::Drop(_) => panic!("no loss configured"),
            })
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        // Jitter is really applied: delays spread over most of ±10 ms.
        let delays: Vec<i64> = times
            .iter()
            .enumerate()
            .map(|(i, t)| *t as i64 - i as i64 * 10_000)
            .collect();
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(*min < 14_000_000 && *max > 26_000_000, "{min} {max}");
        // ... and the mean stays at the configured delay (no drift from the in-order rule).
        let mean = delays.iter().sum::<i64>() as f64 / delays.len() as f64;
        assert!((mean - 20e6).abs() < 1.5e6, "mean delay {mean} ns");
    }

    #[test]
    fn reordered_packets_are_overtaken() {
        let p = LinkParams {
            delay: Duration::from_millis(5),
            reorder: 0.05,
            reorder_delay: Duration::from_millis(2),
            ..LinkParams::default()
        };
        let f = run(&p, 12, 10_000);
        let mut reordered = 0;
        let mut overtaken = 0;
        for (i, x) in f.iter().enumerate() {
            if let Fate::Deliver {
                at_ns,
                reordered: true,
                ..
            } = x
            {
                reordered += 1;
                if let Some(Fate::Deliver { at_ns: next, .. }) = f.get(i + 1) {
                    if next < at_ns {
                        overtaken += 1;
                    }
                }
            }
        }
        assert!((400..600).contains(&reordered), "{reordered}");
        assert!(overtaken as f64 > 0.9 * reordered as f64);
    }

    #[test]
    fn rate_limit_spaces_packets_and_drop_tail_bounds_the_queue() {
        // 8 Mbit/s: a 1000-byte packet takes 1 ms. Queue 10 ms = 10 000 bytes.
        let p = LinkParams {
            rate_bps: Some(8_000_000),
            queue: QueueLimit::Millis(10),
            ..LinkParams::default()
        };
        let mut m = LinkModel::new(&p, 1, 0).unwrap();
        // A burst of 100 packets at t = 0.
        let fates: Vec<_> = (0..100).map(|_| m.admit(0, 1000)).collect();
        let delivered: Vec<u64> = fates
            .iter()
            .filter_map(|f| match f {
                Fate::Deliver { at_ns, .. } => Some(*at_ns),
                _ => None,
            })
            .collect();
        assert_eq!(delivered.len(), 10, "10 000-byte queue holds 10 packets");
        assert_eq!(delivered[0], 1_000_000);
        assert_eq!(delivered[9], 10_000_000);
        assert_eq!(
            fates
                .iter()
                .filter(|f| **f == Fate::Drop(DropCause::Queue))
                .count(),
            90
        );
        // Once drained, the queue takes packets again.
        assert!(matches!(m.admit(10_000_000, 1000), Fate::Deliver { .. }));
    }

    #[test]
    fn duplication_rate_matches_configuration() {
        let p = LinkParams {
            duplicate: 0.02,
            ..LinkParams::default()
        };
        let f = run(&p, 13, 100_000);
        let dups = f
            .iter()
            .filter(|f| matches!(f, Fate::Deliver { copies: 2, .. }))
            .count();
        assert!((1800..2200).contains(&dups), "{dups}");
    }
}
