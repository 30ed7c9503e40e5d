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
    connection_with(dir, None).await
}

/// [`connection`] with the server's transport parameters set.
pub(crate) async fn connection_with(
    dir: &std::path::Path,
    server_transport: Option<quinn::TransportConfig>,
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
    let mut sc =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(sc).unwrap()));
    if let Some(tc) = server_transport {
        sc.transport_config(Arc::new(tc));
    }
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

fn store(dir: &std::path::Path) -> Arc<strait_store::Store> {
    Arc::new(
        strait_store::Store::open(strait_store::StoreConfig::new(dir, 64 << 20, [1; 32])).unwrap(),
    )
}

fn parts(dir: &std::path::Path, idle_timeout: Duration, budget: &Budget) -> FlowParts {
    parts_on(store(dir), idle_timeout, budget)
}

fn parts_on(store: Arc<strait_store::Store>, idle_timeout: Duration, budget: &Budget) -> FlowParts {
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

/// One flow through two pumps over `conn_tx`/`conn_rx` (sender side first): the sender's client
/// is `src`, the receiver's is `dst`; each side has its own store and budget.
struct Sides {
    tx_store: Arc<strait_store::Store>,
    rx_store: Arc<strait_store::Store>,
    tx_budget: Budget,
    rx_budget: Budget,
}

/// One side's pump of a flow, as a task.
fn spawn_pump(
    client: tokio::io::DuplexStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    store: &Arc<strait_store::Store>,
    budget: &Budget,
) -> tokio::task::JoinHandle<Result<(), FlowError>> {
    let p = parts_on(store.clone(), Duration::from_secs(60), budget);
    tokio::spawn(async move {
        let totals = FlowTotals::default();
        pump_stream(client, &mut send, &mut recv, p, &totals, |_| {}).await
    })
}

/// Runs a flow: `data` written by the sender's client, read (if `read`) by the receiver's
/// client. Returns what the receiver's client got, `None` when it does not read.
async fn transfer(
    sides: &Sides,
    conn_tx: &quinn::Connection,
    conn_rx: &quinn::Connection,
    data: Vec<u8>,
    read: bool,
) -> Option<Vec<u8>> {
    let (tx_send, tx_recv) = conn_tx.open_bi().await.unwrap();
    // A stream is announced to the peer by its first bytes: the sender's pump writes first.
    let (src_near, mut src_far) = tokio::io::duplex(1 << 16);
    let (dst_near, mut dst_far) = tokio::io::duplex(1 << 16);
    let tx = spawn_pump(
        src_near,
        tx_send,
        tx_recv,
        &sides.tx_store,
        &sides.tx_budget,
    );
    let client = tokio::spawn(async move {
        src_far.write_all(&data).await.unwrap();
        src_far.shutdown().await.unwrap();
        // Hold the sender's client open until the flow ends.
        let mut sink = Vec::new();
        let _ = src_far.read_to_end(&mut sink).await;
    });
    let (rx_send, rx_recv) = conn_rx.accept_bi().await.unwrap();
    let rx = spawn_pump(
        dst_near,
        rx_send,
        rx_recv,
        &sides.rx_store,
        &sides.rx_budget,
    );
    if !read {
        // Keep the receiver's client alive, never reading.
        tokio::spawn(async move {
            let _keep = (dst_far, tx, rx, client);
            std::future::pending::<()>().await
        });
        return None;
    }
    let mut got = Vec::new();
    dst_far.write_all(b"").await.unwrap();
    dst_far.shutdown().await.unwrap();
    dst_far.read_to_end(&mut got).await.unwrap();
    tx.await.unwrap().unwrap();
    rx.await.unwrap().unwrap();
    client.await.unwrap();
    Some(got)
}

#[tokio::test]
async fn a_flow_over_budget_is_not_starved_by_another_whose_client_never_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, _client, server_side, conn) = connection(&dir.path().join("certs")).await;
    // The sender's budget is a fraction of what the stalled flow will hold: exhausted.
    let sides = Sides {
        tx_store: store(&dir.path().join("tx")),
        rx_store: store(&dir.path().join("rx")),
        tx_budget: Budget::new(1 << 20),
        rx_budget: Budget::new(DEFAULT_FLOW_BUDGET),
    };
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // Cold: both stores learn the data (literals).
    let got = transfer(&sides, &conn, &server_side, data.clone(), true).await;
    assert!(got.as_deref() == Some(&data[..]), "cold transfer differs");
    // A flow whose client never reads holds the sender's budget.
    let hog: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8 ^ 0x5a).collect();
    assert!(transfer(&sides, &conn, &server_side, hog, false)
        .await
        .is_none());
    tokio::time::timeout(Duration::from_secs(10), async {
        while !sides.tx_budget.is_exhausted() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stalled flow never exhausted the sender's budget");
    // The repeat crosses as references, one in flight at a time past the budget: it must
    // finish, not wait for a flush timer that only an idle client triggers.
    let repeat = tokio::time::timeout(
        Duration::from_secs(60),
        transfer(&sides, &conn, &server_side, data.clone(), true),
    )
    .await
    .expect("a flow over budget starved behind the stalled one");
    assert!(repeat.as_deref() == Some(&data[..]), "repeat differs");
}

/// The stream credit the core grants (`endpoint::stream_credit`) lets an edge keep
/// `tunnel.max_flows` flows open however they churn: with all of them open, closing one lets a
/// new one open at once. (With a credit of exactly `max_flows`, quinn announces the freed slot
/// only after more than an eighth of them have closed, and this open waits for ever.)
#[tokio::test]
async fn after_one_of_max_flows_streams_closes_a_new_one_opens() {
    const MAX_FLOWS: u32 = 16;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[tls]\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n[dedup]\nkey = \"{}\"\n\
         [store]\npath = \"s\"\n[tunnel]\nmax_flows = {MAX_FLOWS}\n\
         [core]\nlisten = \"127.0.0.1:0\"\n[[core.service]]\nname = \"a\"\nupstream = \"127.0.0.1:1\"\n",
        "00".repeat(32)
    );
    let cfg = strait_config::parse(&text, std::path::Path::new("t.toml"), false).unwrap();
    let tc = crate::endpoint::transport_config(&cfg.tunnel).unwrap();
    let (_server, _client, core, edge) = connection_with(dir.path(), Some(tc)).await;
    // Every open stream answers its byte, so the edge knows the core accepted it.
    let server = tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut send, mut recv)) = core.accept_bi().await {
            accepted += 1;
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                recv.read_exact(&mut b).await.unwrap();
                send.write_all(&b).await.unwrap();
                // Stream 0 is finished in both directions; the others stay open until the
                // connection closes.
                send.finish().unwrap();
                let _ = recv.read_to_end(16).await;
                let _ = send.stopped().await;
            });
        }
        accepted
    });
    let mut open = Vec::new();
    for i in 0..MAX_FLOWS {
        let (mut send, mut recv) = edge.open_bi().await.unwrap();
        send.write_all(&[u8::from(i != 0)]).await.unwrap();
        let mut b = [0u8; 1];
        recv.read_exact(&mut b).await.unwrap();
        open.push((send, recv));
    }
    // Close stream 0 from the edge's side too, and wait until it is fully closed.
    let (mut send0, mut recv0) = open.remove(0);
    send0.finish().unwrap();
    assert!(recv0.read_to_end(16).await.unwrap().is_empty());
    send0.stopped().await.unwrap();
    drop((send0, recv0));
    let opened = tokio::time::timeout(Duration::from_secs(10), async {
        let (mut send, mut recv) = edge.open_bi().await.unwrap();
        send.write_all(&[1]).await.unwrap();
        let mut b = [0u8; 1];
        recv.read_exact(&mut b).await.unwrap();
        (send, recv)
    })
    .await;
    assert!(
        opened.is_ok(),
        "with {} of {MAX_FLOWS} flows open, no new stream within 10 s",
        MAX_FLOWS - 1
    );
    edge.close(0u32.into(), b"done");
    assert_eq!(server.await.unwrap(), MAX_FLOWS + 1);
}

/// Past the budget, what senders hold beyond it is bounded by the budget's floors, not by the
/// number of flows. Many flows whose data is never acknowledged: each floor's holder holds at
/// most one item, one partial chunk and one read buffer; every other flow only what its first
/// small read took. (With one floor per flow, 512 such flows held a chunk or more each.)
#[tokio::test]
async fn past_the_budget_senders_hold_what_the_floors_bound_not_a_chunk_each() {
    const FLOWS: usize = 512;
    let dir = tempfile::tempdir().unwrap();
    let mut tc = quinn::TransportConfig::default();
    tc.max_concurrent_bidi_streams((FLOWS as u32 + 8).into());
    let (_server, _client, server_side, conn) =
        connection_with(&dir.path().join("certs"), Some(tc)).await;
    // The receiving end reads and discards: nothing is ever acknowledged.
    tokio::spawn(async move {
        while let Ok((send, mut recv)) = server_side.accept_bi().await {
            tokio::spawn(async move {
                let _send = send;
                while let Ok(Some(_)) = recv.read_chunk(1 << 16, true).await {}
            });
        }
    });
    let budget = Budget::new(1 << 20);
    let store = store(&dir.path().join("tx"));
    let mut totals = Vec::new();
    for f in 0..FLOWS {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let (near, mut far) = tokio::io::duplex(1 << 16);
        let t = Arc::new(FlowTotals::default());
        totals.push(t.clone());
        let p = parts_on(store.clone(), Duration::from_secs(600), &budget);
        tokio::spawn(async move {
            let _ = pump_stream(near, &mut send, &mut recv, p, &t, |_| {}).await;
        });
        tokio::spawn(async move {
            // Distinct bytes per flow: no chunk repeats across flows.
            let seed = blake3::hash(&(f as u64).to_le_bytes());
            let mut data = vec![0u8; 512 << 10];
            blake3::Hasher::new_keyed(seed.as_bytes())
                .finalize_xof()
                .fill(&mut data);
            let _ = far.write_all(&data).await;
            std::future::pending::<()>().await
        });
    }
    let max_chunk = strait_chunk::ChunkerConfig::default().max() as u64;
    let floors = strait_dedup::floor_permits(budget.limit()) as u64;
    let bound = budget.limit()
        + floors * (2 * max_chunk + READ_BUF as u64)
        + FLOWS as u64 * 4 * FIRST_READ_BUF as u64;
    let mut peak = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            peak = peak.max(budget.used());
            // Every flow has started; every floor is taken (or the bound is broken already).
            let all_read = totals.iter().all(|t| t.tx_logical.load(Relaxed) > 0);
            if all_read && (budget.free_floors() == 0 || peak > bound) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("not every flow read its client, or the floors were never all taken, within 60 s");
    peak = peak.max(budget.used());
    assert!(
        peak <= bound,
        "{FLOWS} held-back flows hold {peak} B; the floors bound them to {bound} B"
    );
}
