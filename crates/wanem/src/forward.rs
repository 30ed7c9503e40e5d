//! The forwarder: one thread per direction reads IP packets from one TUN fd, asks the
//! [`LinkModel`] for their fate, holds them in a delay line, and writes them to the other TUN fd
//! when due. Waits with `ppoll` on a nanosecond deadline (timer slack set to 1 ns) so delays are
//! accurate to tens of microseconds without spinning a core.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{DropCause, Fate, LinkModel};

/// Bytes one direction's delay line may hold (packets in flight on the emulated wire);
/// beyond it packets are dropped and counted as `dropped_overflow`. 128 MiB covers
/// 1 Gbit/s × 1 s.
pub const MAX_DELAY_LINE_BYTES: usize = 128 << 20;
/// Largest packet read from a TUN fd (TUN MTU is 1500; this only guards against a changed MTU).
pub const MAX_PACKET: usize = 65_536;
/// Packets read per wake-up before delivering due ones again, so reads cannot starve writes.
const READ_BATCH: usize = 64;
/// Packet buffers kept for reuse after delivery (saves an allocation per packet).
const BUFFER_POOL: usize = 4096;
/// Longest idle wait, so a stop request is noticed promptly.
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// Counters of one direction. `packets`/`bytes` count what the sender put on the link (the
/// neutral meter of WAN bytes); `delivered_*` what reached the other side, duplicates included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// IP packets offered to the link.
    pub packets: u64,
    /// IP bytes offered to the link.
    pub bytes: u64,
    /// IP packets written to the far side (duplicates included).
    pub delivered_packets: u64,
    /// IP bytes written to the far side (duplicates included).
    pub delivered_bytes: u64,
    /// Dropped because the bottleneck queue was full.
    pub dropped_queue: u64,
    /// Dropped by independent random loss.
    pub dropped_loss: u64,
    /// Dropped by Gilbert–Elliott burst loss.
    pub dropped_burst: u64,
    /// Dropped because the delay line hit [`MAX_DELAY_LINE_BYTES`] or the far TUN refused it.
    pub dropped_overflow: u64,
    /// Extra copies delivered by duplication.
    pub duplicates: u64,
    /// Packets held back by the reorder delay.
    pub reordered: u64,
}

impl DirectionStats {
    /// All drops, whatever the cause.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue + self.dropped_loss + self.dropped_burst + self.dropped_overflow
    }

    /// Counters accumulated since `earlier` (for per-run deltas on a long-lived link).
    pub fn since(&self, earlier: &DirectionStats) -> DirectionStats {
        DirectionStats {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            delivered_packets: self
                .delivered_packets
                .saturating_sub(earlier.delivered_packets),
            delivered_bytes: self.delivered_bytes.saturating_sub(earlier.delivered_bytes),
            dropped_queue: self.dropped_queue.saturating_sub(earlier.dropped_queue),
            dropped_loss: self.dropped_loss.saturating_sub(earlier.dropped_loss),
            dropped_burst: self.dropped_burst.saturating_sub(earlier.dropped_burst),
            dropped_overflow: self
                .dropped_overflow
                .saturating_sub(earlier.dropped_overflow),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
            reordered: self.reordered.saturating_sub(earlier.reordered),
        }
    }
}

/// Live counters shared between a forwarder thread and readers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    delivered_packets: AtomicU64,
    delivered_bytes: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_burst: AtomicU64,
    dropped_overflow: AtomicU64,
    duplicates: AtomicU64,
    reordered: AtomicU64,
}

fn add(c: &AtomicU64, v: u64) {
    c.fetch_add(v, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> DirectionStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionStats {
            packets: g(&self.packets),
            bytes: g(&self.bytes),
            delivered_packets: g(&self.delivered_packets),
            delivered_bytes: g(&self.delivered_bytes),
            dropped_queue: g(&self.dropped_queue),
            dropped_loss: g(&self.dropped_loss),
            dropped_burst: g(&self.dropped_burst),
            dropped_overflow: g(&self.dropped_overflow),
            duplicates: g(&self.duplicates),
            reordered: g(&self.reordered),
        }
    }
}

struct Held {
    at_ns: u64,
    data: Vec<u8>,
    copies: u8,
}

/// Packets on the emulated wire. In-order packets have non-decreasing delivery times (the model
/// guarantees it), so they sit in a FIFO; reordered ones in a heap keyed by (time, sequence).
#[derive(Default)]
struct DelayLine {
    fifo: VecDeque<Held>,
    held_back: BinaryHeap<Reverse<(u64, u64)>>,
    held_back_data: std::collections::HashMap<u64, Held>,
    seq: u64,
    bytes: usize,
}

impl DelayLine {
    fn push(&mut self, h: Held, reordered: bool) {
        self.bytes += h.data.len();
        if reordered {
            self.seq += 1;
            self.held_back.push(Reverse((h.at_ns, self.seq)));
            self.held_back_data.insert(self.seq, h);
        } else {
            self.fifo.push_back(h);
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        let a = self.fifo.front().map(|h| h.at_ns);
        let b = self.held_back.peek().map(|Reverse((t, _))| *t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn pop_due(&mut self, now_ns: u64) -> Option<Held> {
        let a = self.fifo.front().map(|h| h.at_ns).filter(|t| *t <= now_ns);
        let b = self
            .held_back
            .peek()
            .map(|Reverse((t, s))| (*t, *s))
            .filter(|(t, _)| *t <= now_ns);
        let h = match (a, b) {
            (Some(ta), Some((tb, _))) if ta <= tb => self.fifo.pop_front(),
            (Some(_), None) => self.fifo.pop_front(),
            (_, Some((_, seq))) => {
                self.held_back.pop();
                self.held_back_data.remove(&seq)
            }
            (None, None) => None,
        }?;
        self.bytes -= h.data.len();
        Some(h)
    }
}

/// One direction: reads `input`, writes `output`.
pub(crate) struct Direction {
    pub input: Arc<OwnedFd>,
    pub output: Arc<OwnedFd>,
    pub model: LinkModel,
    pub counters: Arc<Counters>,
    pub stop: Arc<AtomicBool>,
    pub epoch: Instant,
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Direction {
    /// The forwarding loop; returns when `stop` is set or the input fd fails.
    pub(crate) fn run(mut self) -> io::Result<()> {
        // Precise wake-ups: the default 50 µs timer slack would add that much to every delay.
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        let mut line = DelayLine::default();
        let mut buf = vec![0u8; MAX_PACKET];
        let mut pool: Vec<Vec<u8>> = Vec::new();
        let in_fd = self.input.as_raw_fd();
        let out_fd = self.output.as_raw_fd();
        while !self.stop.load(Ordering::Relaxed) {
            let now = nanos_since(self.epoch);
            while let Some(h) = line.pop_due(now) {
                for _ in 0..h.copies {
                    // SAFETY: out_fd is a live TUN fd and h.data a valid buffer.
                    let n = unsafe { libc::write(out_fd, h.data.as_ptr().cast(), h.data.len()) };
                    if n == h.data.len() as isize {
                        add(&self.counters.delivered_packets, 1);
                        add(&self.counters.delivered_bytes, h.data.len() as u64);
                    } else {
                        add(&self.counters.dropped_overflow, 1);
                    }
                }
                if pool.len() < BUFFER_POOL {
                    pool.push(h.data);
                }
            }
            let wait = line
                .next_deadline()
                .map(|d| Duration::from_nanos(d.saturating_sub(nanos_since(self.epoch))))
                .unwrap_or(IDLE_WAIT)
                .min(IDLE_WAIT);
            let ts = libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            };
            let mut pfd = libc::pollfd {
                fd: in_fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd and ts are valid for the call; a null sigmask keeps the current one.
            let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 || pfd.revents & libc::POLLIN == 0 {
                if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                    return Err(io::Error::other("TUN fd closed"));
                }
                continue;
            }
            for _ in 0..READ_BATCH {
                // SAFETY: buf is valid for MAX_PACKET bytes.
                let n = unsafe { libc::read(in_fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break; // EAGAIN (drained) or a transient error: back to the loop.
                }
                let n = n as usize;
                let now = nanos_since(self.epoch);
                add(&self.counters.packets, 1);
                add(&self.counters.bytes, n as u64);
                match self.model.admit(now, n) {
                    Fate::Drop(DropCause::Queue) => add(&self.counters.dropped_queue, 1),
                    Fate::Drop(DropCause::RandomLoss) => add(&self.counters.dropped_loss, 1),
                    Fate::Drop(DropCause::BurstLoss) => add(&self.counters.dropped_burst, 1),
                    Fate::Deliver {
                        at_ns,
                        copies,
                        reordered,
                    } => {
                        if line.bytes + n > MAX_DELAY_LINE_BYTES {
                            add(&self.counters.dropped_overflow, 1);
                            continue;
                        }
                        if copies > 1 {
                            add(&self.counters.duplicates, u64::from(copies - 1));
                        }
                        if reordered {
                            add(&self.counters.reordered, 1);
                        }
                        let mut data = pool.pop().unwrap_or_default();
                        data.clear();
                        data.extend_from_slice(&buf[..n]);
                        line.push(
                            Held {
                                at_ns,
                                data,
                                copies,
                            },
                            reordered,
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn held(at_ns: u64, tag: u8) -> Held {
        Held {
            at_ns,
            data: vec![tag],
            copies: 1,
        }
    }

    #[test]
    fn delay_line_releases_by_time_across_fifo_and_held_back() {
        let mut l = DelayLine::default();
        l.push(held(10, 1), false);
        l.push(held(5, 2), true);
        l.push(held(20, 3), false);
        l.push(held(15, 4), true);
        assert_eq!(l.next_deadline(), Some(5));
        assert!(l.pop_due(4).is_none());
        let order: Vec<u8> = std::iter::from_fn(|| l.pop_due(100))
            .map(|h| h.data[0])
            .collect();
        assert_eq!(order, vec![2, 1, 4, 3]);
        assert_eq!(l.bytes, 0);
        assert_eq!(l.next_deadline(), None);
    }
}
