//! The FEC packet decoder and the per-peer receive state machine on hostile datagrams: no panic,
//! bounded memory, and anything delivered was either carried verbatim or rebuilt from a shard
//! whose padding checked out.
#![no_main]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use strait_fec::{packet, FecConfig, FecMode, FecStats, Session, MAX_DECODER_BYTES};

fuzz_target!(|data: &[u8]| {
    // One datagram as is.
    if let Ok(p) = packet::decode(data) {
        if let packet::Packet::Repair {
            k, m, index, shard, ..
        } = p
        {
            assert!(k >= 1 && m >= 1 && index < m && shard.len() % 2 == 0);
        }
    }
    // The input as a sequence of datagrams `[len u16][bytes]` fed to one session, so block
    // bookkeeping, reconstruction and reports are exercised across packets.
    let t0 = Instant::now();
    let mut s = Session::new(
        &FecConfig::new(FecMode::adaptive()),
        Arc::new(FecStats::default()),
        t0,
    );
    let mut rest = data;
    let mut i = 0u64;
    while rest.len() >= 2 {
        let len = (u16::from_be_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let (dgram, tail) = rest[2..].split_at(len);
        rest = tail;
        i += 1;
        let now = t0 + Duration::from_millis(i);
        if let Ok(delivered) = s.on_receive(dgram, now) {
            for d in delivered {
                assert!(!d.is_empty() && d.len() <= packet::MAX_PAYLOAD_LEN);
            }
        }
        s.handle_timeout(now);
        while s.poll_transmit().is_some() {}
        assert!(s.decoder.bytes_stored() <= MAX_DECODER_BYTES);
    }
});
