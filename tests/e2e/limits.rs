//! Issue 14, point 4: a core bounds what one edge identity holds: connections per edge, flows
//! per edge across its connections, and the time a new stream may take to send its `Open`.
//! The test edge speaks the protocol with quinn and a real certificate (`edge-b`), while the
//! real edge (`edge-a`) keeps carrying data byte-exact.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use strait_e2e::admin::{self, metric};
use strait_e2e::bin::light;
use strait_e2e::origin::{self, Origin};
use strait_e2e::pair::{certs, Pair};
use strait_e2e::{poll, rt, seeded};
use strait_transport::endpoint::key_fingerprint;
use strait_wire::{Frame, FrameDecoder};

const MAX_CONNECTIONS: u32 = 2;
const MAX_FLOWS: u32 = 3;
const OPEN_TIMEOUT: Duration = Duration::from_millis(1500);

/// A pair whose core has small per-edge limits (`max_flows_per_edge` flows, and
/// `tunnel_max_flows` per connection when set), and the config of a second edge identity.
fn pair_with_limits(
    origin: SocketAddr,
    max_flows_per_edge: u32,
    tunnel_max_flows: Option<u32>,
) -> (Pair, strait_config::Config) {
    let mut pair = Pair::new(origin).unwrap();
    // The [limits] table goes in after [dedup]'s lines (the next header, [store], ends it).
    pair.core_cfg.common.dedup_extra = format!(
        "\n[limits]\nmax_connections_per_edge = {MAX_CONNECTIONS}\nmax_flows_per_edge = {max_flows_per_edge}\nopen_timeout = \"{}ms\"\n",
        OPEN_TIMEOUT.as_millis()
    );
    if let Some(n) = tunnel_max_flows {
        pair.core_cfg.common.tunnel_extra = format!("max_flows = {n}\n");
    }
    pair.start().unwrap();
    pair.edge_mut().wait_ready(Duration::from_secs(15)).unwrap();
    certs(&pair.certs_dir(), &["--edge", "edge-b"]).unwrap();
    let mut cfg_b = pair.edge_cfg.clone();
    cfg_b.common.tls.cert = pair.certs_dir().join("edge-edge-b.pem");
    cfg_b.common.tls.key = pair.certs_dir().join("edge-edge-b.key");
    let cfg_b = strait_config::parse(&cfg_b.toml(), Path::new("edge-b.toml"), true).unwrap();
    (pair, cfg_b)
}

async fn send(s: &mut quinn::SendStream, f: &Frame) {
    let mut out = BytesMut::new();
    f.encode(&mut out);
    s.write_all(&out).await.unwrap();
}

/// The first frame on `recv`, or the error that ended the stream.
async fn first_frame(recv: &mut quinn::RecvStream) -> Result<Frame, String> {
    let mut fd = FrameDecoder::new();
    loop {
        if let Ok(Some((f, _))) = fd.next_frame() {
            return Ok(f);
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => fd.extend(&c.bytes),
            Ok(None) => return Err("stream finished".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A tunnel connection as edge-b, through the Hello exchange; `Err` = how the core ended it.
async fn connect(
    ep: &quinn::Endpoint,
    core: SocketAddr,
    cfg: &strait_config::Config,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), quinn::ConnectionError> {
    let conn = ep.connect(core, "localhost").unwrap().await?;
    let (mut s, mut r) = conn.open_bi().await?;
    send(
        &mut s,
        &strait_e2e::hostile::hello(key_fingerprint(&cfg.dedup.key)),
    )
    .await;
    match first_frame(&mut r).await {
        Ok(Frame::HelloOk { .. }) => Ok((conn, s, r)),
        _ => Err(conn.closed().await),
    }
}

/// Opens a flow to service `origin`; the core's first answer (frame or stream error).
async fn open_flow(
    conn: &quinn::Connection,
) -> (quinn::SendStream, quinn::RecvStream, Result<Frame, String>) {
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    send(
        &mut s,
        &Frame::Open {
            service: "origin".into(),
            route: "limits".into(),
        },
    )
    .await;
    let first = tokio::time::timeout(Duration::from_secs(10), first_frame(&mut r))
        .await
        .unwrap_or_else(|_| Err("no answer within 10s".into()));
    (s, r, first)
}

fn resets(pair: &Pair, reason: &str) -> u64 {
    let text = admin::metrics(pair.core().admin).unwrap();
    metric(
        &text,
        "strait_limit_resets_total",
        &format!("reason=\"{reason}\""),
    )
    .unwrap_or_else(|| panic!("no strait_limit_resets_total{{reason={reason:?}}} in {text}"))
        as u64
}

/// Everything a test needs: runtime, origin, the pair (core with small limits, edge-a up) and
/// edge-b's config.
struct Setup {
    rt: tokio::runtime::Runtime,
    // Field order is drop order: the pair's processes stop before the origin does.
    pair: Pair,
    _origin: Origin,
    cfg_b: strait_config::Config,
}

fn setup() -> Setup {
    setup_with(MAX_FLOWS, None)
}

fn setup_with(max_flows_per_edge: u32, tunnel_max_flows: Option<u32>) -> Setup {
    let rt = rt();
    let origin = rt.block_on(Origin::start()).unwrap();
    let (pair, cfg_b) = pair_with_limits(origin.addr, max_flows_per_edge, tunnel_max_flows);
    Setup {
        rt,
        pair,
        _origin: origin,
        cfg_b,
    }
}

impl Setup {
    /// edge-a, never limited, still carries a transfer byte-exact.
    fn other_edge_carries(&self, seed: u64) {
        let len = 4 << 20;
        let t = self
            .rt
            .block_on(origin::upload(self.pair.forward(), seed, len))
            .unwrap();
        assert_eq!(t.hash, seeded::hash(seed, len));
    }
}

fn client(cfg: &strait_config::Config) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    ep.set_default_client_config(
        strait_transport::endpoint::client_config(&cfg.tls, &cfg.tunnel).unwrap(),
    );
    ep
}

#[test]
fn core_refuses_connections_beyond_the_per_edge_cap_naming_the_limit() {
    let _l = light();
    let st = setup();
    let (rt, pair, cfg_b) = (&st.rt, &st.pair, &st.cfg_b);
    let core = pair.core().tunnel;
    rt.block_on(async {
        let ep = client(cfg_b);
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(connect(&ep, core, cfg_b).await.expect("within the cap"));
        }
        let refused = connect(&ep, core, cfg_b)
            .await
            .expect_err("a connection beyond the cap was admitted");
        match &refused {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, quinn::VarInt::from_u32(5), "{c:?}");
                let reason = String::from_utf8_lossy(&c.reason);
                assert!(
                    reason.contains("limits.max_connections_per_edge (2)")
                        && reason.contains("edge-b"),
                    "{reason}"
                );
            }
            other => panic!("refused with {other:?}, not a close naming the limit"),
        }
        // A connection that ends frees its slot.
        let (conn, _, _) = held.remove(0);
        conn.close(0u32.into(), b"done");
        let deadline = Instant::now() + Duration::from_secs(10);
        let again = loop {
            match connect(&ep, core, cfg_b).await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("slot never freed: {e:?}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        held.push(again);
    });
    assert!(resets(pair, "connections_per_edge") >= 1);
    // The other edge identity was never limited: its transfer is byte-exact.
    st.other_edge_carries(21);
}

#[test]
fn core_resets_flows_beyond_the_per_edge_cap_across_connections() {
    let _l = light();
    let st = setup();
    let (rt, pair, cfg_b) = (&st.rt, &st.pair, &st.cfg_b);
    let core = pair.core().tunnel;
    rt.block_on(async {
        let ep = client(cfg_b);
        let (c1, _s1, _r1) = connect(&ep, core, cfg_b).await.unwrap();
        let (c2, _s2, _r2) = connect(&ep, core, cfg_b).await.unwrap();
        // MAX_FLOWS flows spread over both connections are admitted...
        let mut flows = Vec::new();
        for i in 0..MAX_FLOWS {
            let conn = if i % 2 == 0 { &c1 } else { &c2 };
            let (s, r, first) = open_flow(conn).await;
            assert_eq!(first, Ok(Frame::OpenOk), "flow {i} within the cap");
            flows.push((s, r));
        }
        // ...one more, on either connection, is reset.
        let (_s, _r, first) = open_flow(&c1).await;
        let err = first.expect_err("a flow beyond the per-edge cap was opened");
        assert!(err.contains("reset") || err.contains("stopped"), "{err}");
        // Ending a flow frees its slot.
        let (mut s, mut r) = flows.remove(0);
        let _ = s.reset(1u32.into());
        let _ = r.stop(1u32.into());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, r, first) = open_flow(&c2).await;
            if first == Ok(Frame::OpenOk) {
                flows.push((s, r));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "flow slot never freed: {first:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(resets(pair, "flows_per_edge") >= 1);
    st.other_edge_carries(22);
}

/// `tunnel.max_flows` bounds one connection's flows at the core itself: QUIC's stream credit is
/// a seventh above it (so that quinn's batched credit updates never leave fewer usable), and
/// the streams within that slack are reset, while another connection of the same edge still
/// opens flows.
#[test]
fn core_resets_flows_beyond_tunnel_max_flows_on_one_connection() {
    const TUNNEL_MAX_FLOWS: u32 = 8;
    let _l = light();
    let st = setup_with(4 * TUNNEL_MAX_FLOWS, Some(TUNNEL_MAX_FLOWS));
    let (rt, pair, cfg_b) = (&st.rt, &st.pair, &st.cfg_b);
    let core = pair.core().tunnel;
    rt.block_on(async {
        let ep = client(cfg_b);
        let (c1, _s1, _r1) = connect(&ep, core, cfg_b).await.unwrap();
        let mut flows = Vec::new();
        for i in 0..TUNNEL_MAX_FLOWS {
            let (s, r, first) = open_flow(&c1).await;
            assert_eq!(first, Ok(Frame::OpenOk), "flow {i} within tunnel.max_flows");
            flows.push((s, r));
        }
        let (_s, _r, first) = open_flow(&c1).await;
        let err = first.expect_err("a flow beyond tunnel.max_flows was opened");
        assert!(err.contains("reset") || err.contains("stopped"), "{err}");
        // The bound is per connection: the same edge's second connection opens flows.
        let (c2, _s2, _r2) = connect(&ep, core, cfg_b).await.unwrap();
        let (s, r, first) = open_flow(&c2).await;
        assert_eq!(first, Ok(Frame::OpenOk), "a flow on a second connection");
        flows.push((s, r));
    });
    assert!(resets(pair, "flows_per_tunnel") >= 1);
    assert_eq!(resets(pair, "flows_per_edge"), 0);
    st.other_edge_carries(23);
}

#[test]
fn stream_without_a_whole_open_is_reset_after_the_open_timeout() {
    let _l = light();
    let st = setup();
    let (rt, pair, cfg_b) = (&st.rt, &st.pair, &st.cfg_b);
    let core = pair.core().tunnel;
    let waited = rt.block_on(async {
        let ep = client(cfg_b);
        let (conn, _s, _r) = connect(&ep, core, cfg_b).await.unwrap();
        // Half an Open: the stream exists at the core but its first frame never completes.
        let mut out = BytesMut::new();
        Frame::Open {
            service: "origin".into(),
            route: "limits".into(),
        }
        .encode(&mut out);
        let (mut s, mut r) = conn.open_bi().await.unwrap();
        s.write_all(&out[..out.len() / 2]).await.unwrap();
        let t0 = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(15), first_frame(&mut r))
            .await
            .expect("the silent stream was never closed");
        let err = end.expect_err("the core answered half an Open");
        assert!(err.contains("reset"), "{err}");
        t0.elapsed()
    });
    println!("half an Open was reset after {waited:?} (open_timeout {OPEN_TIMEOUT:?})");
    assert!(
        waited >= OPEN_TIMEOUT - Duration::from_millis(200) && waited < OPEN_TIMEOUT * 4,
        "reset after {waited:?}, open_timeout is {OPEN_TIMEOUT:?}"
    );
    poll("open_timeout counted", Duration::from_secs(5), || {
        (resets(pair, "open_timeout") == 1).then_some(())
    })
    .unwrap();
    st.other_edge_carries(23);
}
