#![allow(clippy::unwrap_used)]
//! The pump over a real QUIC connection on loopback.

use super::*;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use std::time::Instant as StdInstant;

/// The server and client endpoints and both ends of a connection between them, with
/// certificates from a fresh CA in `dir` (dropping the server's end would close it).
async fn connection(
    dir: &std::path::Path,
) -> (
    quinn::Endpoint,
    quinn::Endpoint,
    quinn::Connection,
    quinn::Connection,
) {
    crate::certs::generate(dir, &["core".into()], &["edge".into()], false).unwrap();
    let (ccert, ckey) = crate::certs::core_files("core");
    let (ecert, ekey) = crate::certs::edge_files("edge");
    let ca = dir.join("ca.pem");
    let sc = crate::tls::server_config(&ca, &dir.join(ccert), &dir.join(ckey)).unwrap();
    let sc = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(sc).unwrap()));
    let server = quinn::Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).unwrap();
    let cc = crate::tls::client_config(&ca, Some((&dir.join(ecert), &dir.join(ekey)))).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(cc).unwrap(),
    )));
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn({
        let server = server.clone();
        async move { server.accept().await.unwrap().await.unwrap() }
    });
    let conn = client.connect(addr, "core").unwrap().await.unwrap();
    let server_side = accept.await.unwrap();
    (server, client, server_side, conn)
}

fn parts(dir: &std::path::Path, idle_timeout: Duration, budget: &Budget) -> FlowParts {
    let store = Arc::new(
        strait_store::Store::open(strait_store::StoreConfig::new(dir, 16 << 20, [1; 32])).unwrap(),
    );
    let peer = store.peer_slot("peer").unwrap();
    let hasher = strait_chunk::ChunkHasher::new([1; 32]);
    let stats = Arc::new(RouteStats::default());
    FlowParts {
        encoder: FlowEncoder::new(
            strait_dedup::EncoderConfig::default(),
            hasher.clone(),
            store.clone(),
            peer,
            stats.clone(),
        )
        .with_budget(budget),
        decoder: FlowDecoder::new(hasher, store, peer, 64 << 20, stats.clone()).with_budget(budget),
        tx_stats: stats.clone(),
        rx_stats: stats,
        flush_delay: Duration::from_millis(5),
        prefix: FrameDecoder::new(),
        expect_open_ok: false,
        rate: None,
        versions: None,
        budget: budget.clone(),
        idle_timeout: Some(idle_timeout),
    }
}

#[tokio::test]
async fn a_flow_on_which_nothing_moves_fails_idle_and_releases_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, _client, _server_side, conn) = connection(&dir.path().join("certs")).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The client side of the flow: open, silent.
    let (near, _far) = tokio::io::duplex(1 << 16);
    let budget = Budget::new(DEFAULT_FLOW_BUDGET);
    let idle = Duration::from_millis(300);
    let p = parts(&dir.path().join("store"), idle, &budget);
    let totals = FlowTotals::default();
    let started = StdInstant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        pump_stream(near, &mut send, &mut recv, p, &totals, |_| {}),
    )
    .await
    .expect("the idle flow was never ended");
    assert!(
        matches!(r, Err(FlowError::Idle { after }) if after == idle),
        "{r:?}"
    );
    assert!(started.elapsed() >= idle);
    // Encoder, decoder and the pump's buffers released what they charged.
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn a_flow_moving_bytes_is_not_idle() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, _client, _server_side, conn) = connection(&dir.path().join("certs")).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let (near, mut far) = tokio::io::duplex(1 << 16);
    let budget = Budget::new(DEFAULT_FLOW_BUDGET);
    let idle = Duration::from_millis(300);
    let p = parts(&dir.path().join("store"), idle, &budget);
    let totals = FlowTotals::default();
    let pump = pump_stream(near, &mut send, &mut recv, p, &totals, |_| {});
    // The client sends a byte every 50 ms for 1.2 s (four idle timeouts): the flow lives on.
    let client = async {
        for i in 0..24u8 {
            far.write_all(&[i]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        r = pump => panic!("the flow ended while bytes moved: {r:?}"),
        () = client => {}
    }
    assert_eq!(totals.tx_logical.load(Relaxed), 24);
}
