//! Counters shared between the FEC layer and whoever exports metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// FEC statistics. Counters only grow except the gauges (`current_*`, `loss_ppm`,
/// `mean_burst_milli`, `queue_delay_us`, `interleave_depth`), which hold the value most recently
/// set by any peer's controller or meter.
#[derive(Debug, Default)]
pub struct FecStats {
    /// QUIC bytes sent inside plain and source packets.
    pub source_bytes_sent: AtomicU64,
    /// Plain and source packets sent.
    pub source_packets_sent: AtomicU64,
    /// Bytes of repair packets sent (whole datagrams).
    pub repair_bytes_sent: AtomicU64,
    /// Repair packets sent.
    pub repair_packets_sent: AtomicU64,
    /// Repair packets sent under the connection start-up prior (before measured loss rules).
    pub startup_repair_packets: AtomicU64,
    /// Blocks closed with repair (their sources over this is the mean protected block size).
    pub blocks_protected: AtomicU64,
    /// Source packets in the blocks of `blocks_protected`.
    pub protected_sources: AtomicU64,
    /// Header bytes added to plain and source packets.
    pub header_overhead_bytes: AtomicU64,
    /// Control (report) packets sent.
    pub control_packets_sent: AtomicU64,
    /// Data packets the receiver found missing from sequence gaps (net of late arrivals).
    pub packets_lost: AtomicU64,
    /// Source packets rebuilt from repair and handed to QUIC.
    pub packets_rebuilt: AtomicU64,
    /// Blocks dropped with source packets still missing.
    pub blocks_unrecoverable: AtomicU64,
    /// Datagrams dropped because they were not FEC, another version, or malformed.
    pub packets_rejected: AtomicU64,
    /// Datagrams that reached the socket but the kernel refused (send buffer full).
    pub local_send_drops: AtomicU64,
    /// Datagrams dropped by the test-only loss hook.
    pub test_dropped: AtomicU64,
    /// Lost packets the receiver attributed to congestion (revealed at a queue-delay peak) and
    /// kept out of the loss rate repair is sized for (RFC 9265).
    pub congestion_losses: AtomicU64,
    /// Source packets per full block.
    pub current_k: AtomicU64,
    /// Repair packets per full block.
    pub current_m: AtomicU64,
    /// Interleaving depth (blocks a run of packets is spread over).
    pub interleave_depth: AtomicU64,
    /// Measured loss, parts per million.
    pub loss_ppm: AtomicU64,
    /// Measured mean loss burst ×1000.
    pub mean_burst_milli: AtomicU64,
    /// Measured queueing delay, microseconds.
    pub queue_delay_us: AtomicU64,
}

/// A plain copy of [`FecStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct FecStatsSnapshot {
    pub source_bytes_sent: u64,
    pub source_packets_sent: u64,
    pub repair_bytes_sent: u64,
    pub repair_packets_sent: u64,
    pub startup_repair_packets: u64,
    pub blocks_protected: u64,
    pub protected_sources: u64,
    pub header_overhead_bytes: u64,
    pub control_packets_sent: u64,
    pub packets_lost: u64,
    pub packets_rebuilt: u64,
    pub blocks_unrecoverable: u64,
    pub packets_rejected: u64,
    pub local_send_drops: u64,
    pub test_dropped: u64,
    pub congestion_losses: u64,
    pub current_k: u64,
    pub current_m: u64,
    pub interleave_depth: u64,
    pub loss_ppm: u64,
    pub mean_burst_milli: u64,
    pub queue_delay_us: u64,
}

impl FecStats {
    /// Reads every field.
    pub fn snapshot(&self) -> FecStatsSnapshot {
        FecStatsSnapshot {
            source_bytes_sent: self.source_bytes_sent.load(Relaxed),
            source_packets_sent: self.source_packets_sent.load(Relaxed),
            repair_bytes_sent: self.repair_bytes_sent.load(Relaxed),
            repair_packets_sent: self.repair_packets_sent.load(Relaxed),
            startup_repair_packets: self.startup_repair_packets.load(Relaxed),
            blocks_protected: self.blocks_protected.load(Relaxed),
            protected_sources: self.protected_sources.load(Relaxed),
            header_overhead_bytes: self.header_overhead_bytes.load(Relaxed),
            control_packets_sent: self.control_packets_sent.load(Relaxed),
            packets_lost: self.packets_lost.load(Relaxed),
            packets_rebuilt: self.packets_rebuilt.load(Relaxed),
            blocks_unrecoverable: self.blocks_unrecoverable.load(Relaxed),
            packets_rejected: self.packets_rejected.load(Relaxed),
            local_send_drops: self.local_send_drops.load(Relaxed),
            test_dropped: self.test_dropped.load(Relaxed),
            congestion_losses: self.congestion_losses.load(Relaxed),
            current_k: self.current_k.load(Relaxed),
            current_m: self.current_m.load(Relaxed),
            interleave_depth: self.interleave_depth.load(Relaxed),
            loss_ppm: self.loss_ppm.load(Relaxed),
            mean_burst_milli: self.mean_burst_milli.load(Relaxed),
            queue_delay_us: self.queue_delay_us.load(Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, v: u64) {
        counter.fetch_add(v, Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Relaxed);
    }

    pub(crate) fn sub_saturating(counter: &AtomicU64, v: u64) {
        let _ = counter.fetch_update(Relaxed, Relaxed, |x| Some(x.saturating_sub(v)));
    }
}
