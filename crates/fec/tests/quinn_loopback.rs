//! Two quinn endpoints on loopback over FEC-wrapped sockets that drop datagrams at random: a
//! 4 MiB stream arrives byte-exact and FEC rebuilt some of the lost packets.
#![allow(clippy::unwrap_used)]

use std::{net::UdpSocket, sync::Arc, time::Duration};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strait_fec::{wrap_socket, FecConfig, FecMode, FecStats, FEC_HEADER_LEN};

const LEN: usize = 4 * 1024 * 1024;

fn data(seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; LEN];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Leave room for the FEC header on a 1500-byte path.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(1452 - FEC_HEADER_LEN as u16);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

async fn transfer(
    mode: FecMode,
    drop_rate: f64,
) -> (strait_fec::FecStatsSnapshot, strait_fec::FecStatsSnapshot) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());

    let mut server_cfg =
        quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key.into()).unwrap();
    server_cfg.transport_config(transport());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let mut client_cfg = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    client_cfg.transport_config(transport());

    let fec = |seed| {
        let mut c = FecConfig::new(mode);
        c.test_drop_rate = drop_rate;
        c.test_seed = seed;
        c
    };
    let (server_stats, client_stats) =
        (Arc::new(FecStats::default()), Arc::new(FecStats::default()));
    let server_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server_addr = server_sock.local_addr().unwrap();
    let server = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server_cfg),
        wrap_socket(server_sock, fec(11), server_stats.clone()).unwrap(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let mut client = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        wrap_socket(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            fec(22),
            client_stats.clone(),
        )
        .unwrap(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    client.set_default_client_config(client_cfg);

    let server_task = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let got = recv.read_to_end(LEN + 1).await.unwrap();
        let ok = got == data(5);
        send.write_all(&[ok as u8]).await.unwrap();
        send.finish().unwrap();
        conn.closed().await;
        ok
    });

    let conn = client
        .connect(server_addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&data(5)).await.unwrap();
    send.finish().unwrap();
    let verdict = recv.read_to_end(1).await.unwrap();
    assert_eq!(verdict, [1], "server saw different bytes");
    conn.close(0u32.into(), b"done");
    assert!(server_task.await.unwrap());
    client.wait_idle().await;
    (client_stats.snapshot(), server_stats.snapshot())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_loopback_stream_is_byte_exact_and_fec_rebuilds() {
    let (client, server) = tokio::time::timeout(
        Duration::from_secs(60),
        transfer(FecMode::Fixed { k: 16, m: 4 }, 0.02),
    )
    .await
    .unwrap();
    eprintln!("client {client:?}\nserver {server:?}");
    assert!(client.test_dropped > 0);
    assert!(server.packets_rebuilt > 0, "{server:?}");
    assert!(client.repair_bytes_sent > 0);
    assert_eq!(server.packets_rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_loopback_learns_the_loss_and_rebuilds() {
    let (client, server) =
        tokio::time::timeout(Duration::from_secs(60), transfer(FecMode::adaptive(), 0.02))
            .await
            .unwrap();
    eprintln!("client {client:?}\nserver {server:?}");
    assert!(server.loss_ppm > 0, "{server:?}");
    assert!(client.current_m > 0, "{client:?}");
    assert!(server.packets_rebuilt > 0, "{server:?}");
}
