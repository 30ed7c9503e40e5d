//! QUIC endpoints tuned for long fat links: windows, UDP socket buffers and the congestion
//! controller come from `[tunnel]`; quinn's defaults cap one stream near 100 Mbit/s at 100 ms.

use crate::{io_err, tls, Error};
use quinn::congestion::NewRenoConfig;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use strait_config::{Congestion, Fec, Tls, Tunnel};
use strait_fec::{FecConfig, FecMode, FecStats, FEC_HEADER_LEN};

/// Largest UDP payload the tunnel uses on a 1500-byte path.
pub const MAX_UDP_PAYLOAD: u16 = 1452;

fn fec_mode(f: Fec) -> FecMode {
    match f {
        Fec::Off => FecMode::Off,
        Fec::Adaptive { target, max_ratio } => FecMode::Adaptive { target, max_ratio },
        Fec::Fixed { data, repair } => FecMode::Fixed { k: data, m: repair },
    }
}

/// QUIC transport parameters from `[tunnel]`.
pub fn transport_config(t: &Tunnel) -> Result<TransportConfig, Error> {
    let mut tc = TransportConfig::default();
    // FEC wraps every QUIC packet in its header: QUIC's packets shrink by that much so the
    // wrapped datagram still fits the path.
    let fec_overhead = if t.fec == Fec::Off {
        0
    } else {
        FEC_HEADER_LEN as u16
    };
    let mtu = t.initial_mtu.min(MAX_UDP_PAYLOAD.max(t.initial_mtu)) - fec_overhead;
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(t.max_mtu.max(t.initial_mtu) - fec_overhead);
    tc.mtu_discovery_config(Some(mtud));
    let varint = |v: u64, what: &str| {
        VarInt::from_u64(v).map_err(|_| Error::Tls(format!("tunnel.{what} = {v} is too large")))
    };
    tc.stream_receive_window(varint(t.stream_receive_window, "stream_receive_window")?)
        .receive_window(varint(t.receive_window, "receive_window")?)
        .send_window(t.send_window)
        .initial_rtt(t.initial_rtt)
        .keep_alive_interval(Some(t.keep_alive))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(t.idle_timeout)
                .map_err(|_| Error::Tls("tunnel.idle_timeout is too large".into()))?,
        ))
        .initial_mtu(mtu)
        .max_concurrent_bidi_streams(VarInt::from_u32(stream_credit(t.max_flows)))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    if t.fec != Fec::Off {
        // A packet FEC rebuilds arrives up to a whole interleaved round of blocks late; quinn
        // must not call it lost on reordering before that (it never undoes a loss: a spurious
        // retransmission and, for Cubic, a window cut). The time threshold still bounds how
        // late a real loss is found.
        let span = FecConfig::new(fec_mode(t.fec)).reorder_span().max(3);
        tc.packet_threshold(span.saturating_add(3));
        // The same holds in time: quinn calls a packet lost 9/8 RTT after it was sent, but a
        // rebuilt packet's repair leaves up to `max_block_delay` after it and queues behind the
        // block. Measured on the emulator (100 ms RTT, 1 % loss): FEC rebuilt every block, yet
        // quinn declared one packet lost in Cubic's slow start at a 383 KB window, which ended
        // slow start and held the transfer at 26 Mbit/s.
        tc.time_threshold(FEC_TIME_THRESHOLD);
    }
    match t.congestion {
        Congestion::Bbr => {
            tc.congestion_controller_factory(Arc::new(crate::congestion::BbrConfig::default()))
        }
        Congestion::Cubic => {
            tc.congestion_controller_factory(Arc::new(crate::cubic::CubicConfig::default()))
        }
        Congestion::NewReno => tc.congestion_controller_factory(Arc::new(NewRenoConfig::default())),
    };
    Ok(tc)
}

/// The QUIC stream credit (`max_concurrent_bidi_streams`) that lets a peer keep `max_flows`
/// flows open however they churn.
///
/// quinn tells the peer about freed stream slots (`MAX_STREAMS`) only once more than an eighth
/// of the credit has freed since its last announcement (quinn-proto 0.11,
/// `StreamsState::queue_max_stream_id`). With a credit of exactly `max_flows`, up to
/// `max_flows / 8` closed streams stay unusable until enough others close: measured in the
/// 1,000-flow soak, a reconnect burst left 966 flows open and the edge unable to open a 967th
/// for minutes. A seventh more credit makes at least `max_flows` usable at every moment
/// (`c - c/8 >= max_flows` for `c = max_flows + ceil(max_flows / 7)`); the core enforces
/// `max_flows` itself, per connection.
pub fn stream_credit(max_flows: u32) -> u32 {
    max_flows.saturating_add(max_flows.div_ceil(7))
}

/// quinn's time threshold for loss with FEC on (RTTs after sending; quinn's default is 9/8):
/// room for a rebuilt packet's repair to arrive before QUIC retransmits it.
pub const FEC_TIME_THRESHOLD: f32 = 1.5;

/// A UDP socket with SO_RCVBUF/SO_SNDBUF raised. Logs when the kernel granted less than asked,
/// naming the sysctl to raise.
pub fn udp_socket(addr: SocketAddr, buffer: u64) -> Result<std::net::UdpSocket, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(io_err("creating UDP socket"))?;
    let want = usize::try_from(buffer).unwrap_or(usize::MAX);
    let _ = sock.set_recv_buffer_size(want);
    let _ = sock.set_send_buffer_size(want);
    // Linux reports double the requested size (bookkeeping overhead).
    let got_r = sock.recv_buffer_size().unwrap_or(0) / 2;
    let got_s = sock.send_buffer_size().unwrap_or(0) / 2;
    if got_r < want || got_s < want {
        tracing::warn!(
            requested = want,
            granted_recv = got_r,
            granted_send = got_s,
            "kernel capped UDP socket buffers; raise them with `sysctl -w net.core.rmem_max={want} net.core.wmem_max={want}` to fill long fat links"
        );
    }
    sock.bind(&addr.into())
        .map_err(io_err(format!("binding UDP {addr}")))?;
    sock.set_nonblocking(true)
        .map_err(io_err("set_nonblocking"))?;
    Ok(sock.into())
}

fn runtime() -> Arc<dyn quinn::Runtime> {
    Arc::new(quinn::TokioRuntime)
}

fn make_endpoint(
    sock: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
    tunnel: &Tunnel,
    fec_stats: Arc<FecStats>,
) -> Result<quinn::Endpoint, Error> {
    let mode = fec_mode(tunnel.fec);
    // Accept (and advertise) datagrams as large as path-MTU discovery may grow to; quinn's
    // default caps them at 1472 bytes.
    let mut ep_cfg = quinn::EndpointConfig::default();
    ep_cfg
        .max_udp_payload_size(tunnel.max_mtu.max(tunnel.initial_mtu))
        .map_err(|e| Error::Tls(format!("tunnel.max_mtu: {e}")))?;
    if mode == FecMode::Off {
        return quinn::Endpoint::new(ep_cfg, server, sock, runtime())
            .map_err(io_err("starting QUIC endpoint"));
    }
    let cfg = FecConfig::new(mode);
    cfg.validate()
        .map_err(|e| Error::Tls(format!("tunnel.fec: {e}")))?;
    let wrapped = strait_fec::wrap_socket(sock, cfg, fec_stats)
        .map_err(io_err("wrapping UDP socket with FEC"))?;
    quinn::Endpoint::new_with_abstract_socket(ep_cfg, server, wrapped, runtime())
        .map_err(io_err("starting QUIC endpoint"))
}

/// The core's endpoint: listens on `listen`, requires client certificates from the CA.
pub fn server_endpoint(
    listen: SocketAddr,
    tls: &Tls,
    tunnel: &Tunnel,
    fec_stats: Arc<FecStats>,
) -> Result<quinn::Endpoint, Error> {
    let crypto = tls::server_config(&tls.ca, &tls.cert, &tls.key)?;
    let qc = QuicServerConfig::try_from(crypto).map_err(|e| Error::Tls(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qc));
    sc.transport_config(Arc::new(transport_config(tunnel)?));
    let sock = udp_socket(listen, tunnel.udp_buffer)?;
    make_endpoint(sock, Some(sc), tunnel, fec_stats)
}

/// Client-side settings of an edge's endpoint.
pub fn client_config(tls: &Tls, tunnel: &Tunnel) -> Result<quinn::ClientConfig, Error> {
    let crypto = tls::client_config(&tls.ca, Some((&tls.cert, &tls.key)))?;
    let qc = QuicClientConfig::try_from(crypto).map_err(|e| Error::Tls(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(qc));
    let mut tc = transport_config(tunnel)?;
    // The edge opens every flow and accepts none: the core may open no stream at all (a
    // stream nobody accepts would only hold the connection's receive window).
    tc.max_concurrent_bidi_streams(VarInt::from_u32(0));
    cc.transport_config(Arc::new(tc));
    Ok(cc)
}

/// The edge's endpoint (an ephemeral UDP port of the family of `core`).
pub fn client_endpoint(
    core: SocketAddr,
    tls: &Tls,
    tunnel: &Tunnel,
    fec_stats: Arc<FecStats>,
) -> Result<quinn::Endpoint, Error> {
    let bind: SocketAddr = if core.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = udp_socket(bind, tunnel.udp_buffer)?;
    let mut ep = make_endpoint(sock, None, tunnel, fec_stats)?;
    ep.set_default_client_config(client_config(tls, tunnel)?);
    Ok(ep)
}

/// Fingerprint of the dedup key exchanged in `Hello`: proves both sides share the key without
/// revealing it.
pub fn key_fingerprint(key: &[u8; 32]) -> [u8; 16] {
    let h = blake3::keyed_hash(key, b"strait dedup key fingerprint v1");
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

/// FEC statistics as metric families (`strait_fec_*`).
pub fn fec_families(stats: &FecStats) -> Vec<strait_admin::ExtraFamily> {
    let s = stats.snapshot();
    let one = |name: &str, help: &str, kind: &'static str, v: f64| strait_admin::ExtraFamily {
        name: name.to_string(),
        help: help.to_string(),
        kind,
        samples: vec![(Vec::new(), v)],
    };
    vec![
        one(
            "fec_repair_bytes_total",
            "FEC repair bytes sent.",
            "counter",
            s.repair_bytes_sent as f64,
        ),
        one(
            "fec_source_bytes_total",
            "QUIC bytes sent inside FEC source packets.",
            "counter",
            s.source_bytes_sent as f64,
        ),
        one(
            "fec_header_bytes_total",
            "Bytes of FEC headers.",
            "counter",
            s.header_overhead_bytes as f64,
        ),
        one(
            "fec_packets_lost_total",
            "Packets the FEC receiver saw lost.",
            "counter",
            s.packets_lost as f64,
        ),
        one(
            "fec_packets_rebuilt_total",
            "Lost packets rebuilt from repair.",
            "counter",
            s.packets_rebuilt as f64,
        ),
        one(
            "fec_blocks_unrecoverable_total",
            "Blocks that could not be rebuilt.",
            "counter",
            s.blocks_unrecoverable as f64,
        ),
        one(
            "fec_startup_repair_packets_total",
            "Repair packets sent under the connection-start loss prior (before loss was measured).",
            "counter",
            s.startup_repair_packets as f64,
        ),
        one(
            "fec_blocks_protected_total",
            "Blocks sent with repair.",
            "counter",
            s.blocks_protected as f64,
        ),
        one(
            "fec_protected_sources_total",
            "Source packets in the blocks sent with repair (over the blocks: mean block size).",
            "counter",
            s.protected_sources as f64,
        ),
        one(
            "fec_local_send_drops_total",
            "Packets this side's socket could not send (buffer full).",
            "counter",
            s.local_send_drops as f64,
        ),
        one(
            "fec_congestion_losses_total",
            "Losses at a queueing-delay peak: queue overflow, left to congestion control (RFC 9265).",
            "counter",
            s.congestion_losses as f64,
        ),
        one(
            "fec_k",
            "Current source packets per block.",
            "gauge",
            s.current_k as f64,
        ),
        one(
            "fec_m",
            "Current repair packets per block.",
            "gauge",
            s.current_m as f64,
        ),
        one(
            "fec_loss_ratio",
            "Measured loss rate.",
            "gauge",
            s.loss_ppm as f64 / 1e6,
        ),
        one(
            "fec_mean_burst_packets",
            "Measured mean loss burst length.",
            "gauge",
            s.mean_burst_milli as f64 / 1000.0,
        ),
    ]
}

/// Bytes FEC added on the wire beyond what QUIC counts (repair, headers, reports): quinn's UDP
/// counters see only QUIC packets, so the tunnel's WAN meter adds these.
pub fn fec_tx_overhead(stats: &FecStats) -> u64 {
    let s = stats.snapshot();
    s.repair_bytes_sent
        + s.header_overhead_bytes
        + s.control_packets_sent * strait_fec::packet::CONTROL_LEN as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fec_config_maps_onto_the_fec_layer_with_its_defaults() {
        // `fec = "adaptive"` in a config is the FEC crate's own default mode.
        assert_eq!(
            strait_config::DEFAULT_FEC_TARGET,
            strait_fec::DEFAULT_TARGET
        );
        assert_eq!(
            strait_config::DEFAULT_FEC_MAX_RATIO,
            strait_fec::DEFAULT_MAX_RATIO
        );
        assert_eq!(fec_mode(Fec::ADAPTIVE), FecMode::adaptive());
        let tuned = Fec::Adaptive {
            target: 1e-6,
            max_ratio: 0.25,
        };
        assert_eq!(
            fec_mode(tuned),
            FecMode::Adaptive {
                target: 1e-6,
                max_ratio: 0.25
            }
        );
        assert!(FecConfig::new(fec_mode(tuned)).validate().is_ok());
        assert_eq!(
            fec_mode(Fec::Fixed {
                data: 16,
                repair: 4
            }),
            FecMode::Fixed { k: 16, m: 4 }
        );
    }

    #[test]
    fn stream_credit_leaves_max_flows_usable_whatever_quinn_holds_back() {
        for n in (0..=5000).chain([u32::MAX / 2, u32::MAX - 1, u32::MAX]) {
            let c = stream_credit(n);
            assert!(c >= n, "{n}");
            // quinn withholds at most c / 8 freed slots.
            if c < u32::MAX {
                assert!(c - c / 8 >= n, "max_flows {n}: credit {c}");
            }
        }
        assert_eq!(stream_credit(1024), 1024 + 147);
    }

    #[test]
    fn config_flow_budget_default_is_the_engines() {
        // `[limits] flow_budget` unset gives the budget the engine documents as its default.
        assert_eq!(
            strait_config::DEFAULT_FLOW_BUDGET,
            strait_dedup::DEFAULT_FLOW_BUDGET
        );
    }
}
