//! QUIC endpoints tuned for long fat links: windows, UDP socket buffers and the congestion
//! controller come from `[tunnel]`; quinn's defaults cap one stream near 100 Mbit/s at 100 ms.

use crate::{io_err, tls, Error};
use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use strait_config::{Congestion, Tls, Tunnel};

/// QUIC transport parameters from `[tunnel]`.
pub fn transport_config(t: &Tunnel) -> Result<TransportConfig, Error> {
    let mut tc = TransportConfig::default();
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
        .initial_mtu(t.initial_mtu)
        .max_concurrent_bidi_streams(VarInt::from_u32(t.max_flows))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    match t.congestion {
        Congestion::Bbr => tc.congestion_controller_factory(Arc::new(BbrConfig::default())),
        Congestion::Cubic => tc.congestion_controller_factory(Arc::new(CubicConfig::default())),
        Congestion::NewReno => tc.congestion_controller_factory(Arc::new(NewRenoConfig::default())),
    };
    Ok(tc)
}

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

/// The core's endpoint: listens on `listen`, requires client certificates from the CA.
pub fn server_endpoint(
    listen: SocketAddr,
    tls: &Tls,
    tunnel: &Tunnel,
) -> Result<quinn::Endpoint, Error> {
    let crypto = tls::server_config(&tls.ca, &tls.cert, &tls.key)?;
    let qc = QuicServerConfig::try_from(crypto).map_err(|e| Error::Tls(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qc));
    sc.transport_config(Arc::new(transport_config(tunnel)?));
    let sock = udp_socket(listen, tunnel.udp_buffer)?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(sc), sock, runtime())
        .map_err(io_err(format!("starting QUIC endpoint on {listen}")))
}

/// Client-side settings of an edge's endpoint.
pub fn client_config(tls: &Tls, tunnel: &Tunnel) -> Result<quinn::ClientConfig, Error> {
    let crypto = tls::client_config(&tls.ca, Some((&tls.cert, &tls.key)))?;
    let qc = QuicClientConfig::try_from(crypto).map_err(|e| Error::Tls(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(qc));
    cc.transport_config(Arc::new(transport_config(tunnel)?));
    Ok(cc)
}

/// The edge's endpoint (an ephemeral UDP port of the family of `core`).
pub fn client_endpoint(
    core: SocketAddr,
    tls: &Tls,
    tunnel: &Tunnel,
) -> Result<quinn::Endpoint, Error> {
    let bind: SocketAddr = if core.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = udp_socket(bind, tunnel.udp_buffer)?;
    let mut ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, sock, runtime())
        .map_err(io_err("starting QUIC client endpoint"))?;
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
