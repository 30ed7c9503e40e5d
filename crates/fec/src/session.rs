//! One peer's FEC endpoint: an [`Encoder`] for what we send, a [`Decoder`] for what we receive,
//! with the decoder's loss reports going to the peer and the peer's reports to our encoder.

use std::{collections::VecDeque, sync::Arc, time::Instant};

use crate::{
    config::FecConfig,
    decoder::Decoder,
    encoder::Encoder,
    packet::{self, Packet},
    stats::FecStats,
    FecError,
};

/// Encoder + decoder + report exchange for one peer. No I/O; time is an input.
pub struct Session {
    /// What we send.
    pub encoder: Encoder,
    /// What we receive.
    pub decoder: Decoder,
    control: VecDeque<Vec<u8>>,
    /// The peer's latest report, weighed again with our own estimate whenever that is renewed
    /// (the peer repeats an unchanged zero-loss report only every [`crate::REPORT_REFRESH`]).
    peer_report: Option<crate::LossReport>,
    stats: Arc<FecStats>,
}

impl Session {
    /// Session whose clocks start at `now`.
    pub fn new(cfg: &FecConfig, stats: Arc<FecStats>, now: Instant) -> Self {
        Session {
            encoder: Encoder::new(cfg, stats.clone(), now),
            decoder: Decoder::from_config(cfg, stats.clone(), now),
            control: VecDeque::new(),
            peer_report: None,
            stats,
        }
    }

    /// One outgoing QUIC packet; returns the wire packets to send now.
    pub fn on_send(
        &mut self,
        pkt: &[u8],
        now: Instant,
    ) -> Result<impl Iterator<Item = Vec<u8>> + '_, FecError> {
        self.encoder.on_send(pkt, now)
    }

    /// One incoming datagram; returns the QUIC packets it makes available. Control packets feed
    /// the encoder's controller and deliver nothing.
    pub fn on_receive(
        &mut self,
        wire: &[u8],
        now: Instant,
    ) -> Result<impl Iterator<Item = Vec<u8>> + '_, FecError> {
        let pkt = packet::decode(wire)?;
        if let Packet::Control(report) = pkt {
            // Our own measurement of the reverse direction backs up a report on few packets.
            self.peer_report = Some(report);
            self.encoder
                .on_report_with_prior(report, self.decoder.loss_estimate());
        } else {
            self.decoder.on_packet(pkt, now)?;
        }
        Ok(self.decoder.on_receive_drain())
    }

    /// Earliest deadline of the encoder's flush and the decoder's report/expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.encoder.poll_timeout(), self.decoder.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs both timers; anything to send is then in [`Session::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.encoder.handle_timeout(now);
        if let Some(report) = self.decoder.handle_timeout(now) {
            let mut wire = Vec::with_capacity(packet::CONTROL_LEN);
            packet::encode_control(&mut wire, &report);
            FecStats::add(&self.stats.control_packets_sent, 1);
            self.control.push_back(wire);
        }
        if self.decoder.take_refreshed() {
            if let Some(report) = self.peer_report {
                self.encoder
                    .on_report_with_prior(report, self.decoder.loss_estimate());
            }
        }
    }

    /// Next wire packet a timer produced (flushed repair, loss report).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.control
            .pop_front()
            .or_else(|| self.encoder.poll_transmit())
    }
}
