//! Peers that do not follow the rules, speaking the tunnel protocol directly with quinn:
//! a client without a certificate (issue 2), an edge with a valid certificate that references
//! chunk ids it was never given (issue 3: a hash is not a capability), and the attacks of
//! issue 14 by one authenticated edge against a real core with default limits, each while a
//! legitimate 64 MiB download crosses through another (normal) edge:
//!
//! | attack | target (issue 14) |
//! |---|---|
//! | want flood, run bomb, refs flood | core RSS +256 MiB at most, the flow reset within seconds |
//! | idle streams | closed by the Open timeout; RSS back near its baseline afterwards |
//! | slow-reading flows | core RSS +256 MiB at most; the slow flows wait, never fail |
//! | admin slowloris | `/live` and `/ready` answer within 1 s throughout |
//!
//! and in every case the core stays up and the legitimate download is byte-exact and takes at
//! most 3x its time alone (measured first, in the same test). Each prints its measurements.
#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::QuicClientConfig;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_e2e::admin::{self, num, route};
use strait_e2e::bin::{heavy, light, HeavyLock};
use strait_e2e::hostile::{drain, mib, stream_end, RssSampler, StreamEnd, TestEdge};
use strait_e2e::origin::{self, Origin, OP_SINK};
use strait_e2e::pair::{certs, Pair};
use strait_e2e::{poll, rt, seeded};
use strait_transport::endpoint::key_fingerprint;
use strait_wire::{BaseRef, ChunkRef, Frame, FrameDecoder, RunItem, WireId, MAX_REFS_PER_FRAME};

/// Reads frames from `recv` until `stop` says so or the stream ends; all frames seen.
async fn read_frames(
    recv: &mut quinn::RecvStream,
    mut stop: impl FnMut(&[Frame]) -> bool,
) -> (Vec<Frame>, Option<String>) {
    let mut fd = FrameDecoder::new();
    let mut frames = Vec::new();
    loop {
        while let Ok(Some((f, _))) = fd.next_frame() {
            frames.push(f);
            if stop(&frames) {
                return (frames, None);
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => fd.extend(&c.bytes),
            Ok(None) => return (frames, Some("stream finished".into())),
            Err(e) => return (frames, Some(e.to_string())),
        }
    }
}

async fn send(s: &mut quinn::SendStream, f: &Frame) -> anyhow::Result<()> {
    let mut out = BytesMut::new();
    f.encode(&mut out);
    s.write_all(&out).await?;
    Ok(())
}

#[test]
fn client_without_a_certificate_is_refused() {
    let _l = light();
    let rt = rt();
    let origin = rt.block_on(Origin::start()).unwrap();
    let mut pair = Pair::new(origin.addr).unwrap();
    pair.start_core().unwrap();
    let core = pair.core().tunnel;
    let ca = pair.certs_dir().join("ca.pem");
    let outcome = rt.block_on(async move {
        let crypto = strait_transport::tls::client_config(&ca, None).unwrap();
        let qc = QuicClientConfig::try_from(crypto).unwrap();
        let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(qc)));
        // TLS 1.3: the client may consider the handshake done before the server has checked
        // (and rejected) the missing certificate, so try to use the connection too.
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            let conn = ep.connect(core, "localhost")?.await?;
            let (mut s, mut r) = conn.open_bi().await?;
            send(&mut s, &strait_e2e::hostile::hello([0; 16])).await?;
            let (frames, end) = read_frames(&mut r, |f| !f.is_empty()).await;
            anyhow::Ok((frames, end))
        })
        .await;
        ep.close(0u32.into(), b"");
        r
    });
    match outcome {
        Err(_) => panic!("no answer within 10s"),
        Ok(Err(e)) => println!("refused as expected: {e}"),
        Ok(Ok((frames, end))) => assert!(
            !frames.iter().any(|f| matches!(f, Frame::HelloOk { .. })),
            "a client without a certificate got HelloOk ({end:?})"
        ),
    }
    let core_admin = pair.core().admin;
    poll(
        "core handshake_failures > 0",
        Duration::from_secs(10),
        || (num(&admin::stats(core_admin).ok()?, "handshake_failures") > 0).then_some(()),
    )
    .unwrap();
    assert_eq!(num(&pair.core_stats(), "tunnel_connects"), 0);
}

/// (id, len) of every chunk record in a store's segment files (see crates/store/src/record.rs).
fn stored_chunks(dir: &Path) -> Vec<(WireId, u32)> {
    let mut out = Vec::new();
    for ent in std::fs::read_dir(dir).unwrap() {
        let p = ent.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("seg-") && name.ends_with(".dat")) {
            continue;
        }
        let b = std::fs::read(&p).unwrap();
        let mut off = 0usize;
        while off + 56 <= b.len() && &b[off..off + 4] == b"STR1" {
            let len = u32::from_le_bytes(b[off + 8..off + 12].try_into().unwrap());
            if b[off + 4] == 1 {
                out.push((b[off + 12..off + 44].try_into().unwrap(), len));
            }
            off += 56 + len as usize;
        }
    }
    out
}

#[test]
fn hostile_edge_referencing_chunks_it_was_never_given_gets_no_data() {
    let _l = light();
    let rt = rt();
    let origin = rt.block_on(Origin::start()).unwrap();
    let mut pair = Pair::new(origin.addr).unwrap();
    pair.start().unwrap();
    // edge-a uploads data: the core stores its chunks (for edge-a only).
    let len = 8u64 << 20;
    let t = rt
        .block_on(origin::upload(pair.forward(), 80, len))
        .unwrap();
    assert_eq!(Some(t.hash), t.sent_hash);
    let chunks = stored_chunks(&pair.core_cfg.common.store_path);
    assert!(
        chunks.len() >= 16,
        "core stored only {} chunks",
        chunks.len()
    );
    let stolen: Vec<ChunkRef> = chunks
        .iter()
        .map(|&(id, len)| ChunkRef { id, len })
        .collect();
    let stolen_bytes: u64 = chunks.iter().map(|c| c.1 as u64).sum();

    // edge-b: a real certificate from the same CA and the deployment's dedup key.
    certs(&pair.certs_dir(), &["--edge", "edge-b"]).unwrap();
    let mut cfg_b = pair.edge_cfg.clone();
    cfg_b.common.tls.cert = pair.certs_dir().join("edge-edge-b.pem");
    cfg_b.common.tls.key = pair.certs_dir().join("edge-edge-b.key");
    let cfg_b = strait_config::parse(&cfg_b.toml(), Path::new("edge-b.toml"), true).unwrap();
    let core_addr = pair.core().tunnel;
    let seen_before = origin.seen().len();

    let (frames, end) = rt.block_on(async {
        let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        ep.set_default_client_config(
            strait_transport::endpoint::client_config(&cfg_b.tls, &cfg_b.tunnel).unwrap(),
        );
        let conn = ep.connect(core_addr, "localhost").unwrap().await.unwrap();
        let (mut cs, mut cr) = conn.open_bi().await.unwrap();
        send(
            &mut cs,
            &strait_e2e::hostile::hello(key_fingerprint(&cfg_b.dedup.key)),
        )
        .await
        .unwrap();
        let (f, _) = read_frames(&mut cr, |f| !f.is_empty()).await;
        assert!(
            matches!(f.first(), Some(Frame::HelloOk { .. })),
            "edge-b not admitted: {f:?}"
        );

        let (mut s, mut r) = conn.open_bi().await.unwrap();
        send(
            &mut s,
            &Frame::Open {
                service: "origin".into(),
                route: "hostile".into(),
            },
        )
        .await
        .unwrap();
        let (f, _) = read_frames(&mut r, |f| !f.is_empty()).await;
        assert_eq!(f.first(), Some(&Frame::OpenOk), "flow not opened");
        // Data: the SINK op as a literal is not even needed; only stolen references, then End.
        for batch in stolen.chunks(64) {
            send(&mut s, &Frame::Refs(batch.to_vec())).await.unwrap();
        }
        send(&mut s, &Frame::End).await.unwrap();
        let want: HashSet<WireId> = stolen.iter().map(|r| r.id).collect();
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            read_frames(&mut r, |fs| {
                let wanted: HashSet<WireId> = fs
                    .iter()
                    .flat_map(|f| match f {
                        Frame::Want(ids) => ids.clone(),
                        _ => Vec::new(),
                    })
                    .collect();
                want.is_subset(&wanted)
            }),
        )
        .await
        .unwrap_or_else(|_| {
            (
                Vec::new(),
                Some("no Want for every stolen id within 10s".into()),
            )
        });
        // Give up the flow: the core must not deliver anything to its upstream.
        let _ = s.reset(1u32.into());
        let _ = r.stop(1u32.into());
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
        out
    });
    assert!(end.is_none(), "{end:?}; frames: {frames:?}");
    assert!(
        frames
            .iter()
            .all(|f| matches!(f, Frame::Want(_) | Frame::Ack(_))),
        "core sent something other than Want/Ack: {frames:?}"
    );
    // The core connected the upstream at Open; it must close that connection having delivered
    // nothing (no SINK payload, zero bytes).
    let seen = poll(
        "the hostile flow's upstream connection ends",
        Duration::from_secs(15),
        || {
            let s = origin.seen();
            (s.len() > seen_before).then(|| s[seen_before..].to_vec())
        },
    )
    .unwrap();
    for s in &seen {
        assert_eq!(
            s.received, 0,
            "upstream received {} bytes of stolen chunks",
            s.received
        );
        assert_ne!(s.op, OP_SINK);
    }
    let c = pair.core_stats();
    let hostile = route(&c, "origin", "upload");
    println!(
        "hostile edge referenced {} chunks ({stolen_bytes} B): core upload misses {}, delivered logical {}",
        stolen.len(),
        hostile.misses,
        hostile.logical_bytes
    );
    assert!(
        hostile.misses >= stolen.len() as u64,
        "core did not count the misses"
    );
    // edge-a's own transfer still reads the same after the attack.
    let t2 = rt
        .block_on(origin::upload(pair.forward(), 80, len))
        .unwrap();
    assert_eq!(t2.hash, seeded::hash(80, len));
}

// ---------------------------------------------------------------------------------------------
// Issue 14: one authenticated edge against a real core with default limits.
// ---------------------------------------------------------------------------------------------

/// Bytes of the legitimate download through the pair's own edge (issue 14's 64 MiB transfer).
const LEGIT_LEN: u64 = 64 << 20;
/// Issue 14's target: one attack grows the core's RSS (peak minus baseline) by at most this.
const MAX_RSS_GROWTH: u64 = 256 << 20;
/// Issue 14's target: the legitimate download takes at most this many times its time alone.
const MAX_SLOWDOWN: f64 = 3.0;
/// Issue 14's "the offending flow is reset within seconds": longest from the attack's last
/// frame to the reset the test edge sees.
const RESET_DEADLINE: Duration = Duration::from_secs(5);
/// A core whose RSS grows this much is killed by the sampler (the machine is shared; today's
/// core grows by gigabytes under some of these attacks). The test then fails on its bound.
const KILL_GROWTH: u64 = 1536 << 20;
/// `/live` and `/ready` must answer within this (an orchestrator's probe timeout).
const PROBE_DEADLINE: Duration = Duration::from_secs(1);
/// Identity of the hostile test edge (its own certificate, signed by the pair's CA).
const MALLORY: &str = "mallory";
/// How long the legitimate download may take at all before the test gives up on it.
const LEGIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A started pair, the origin behind it and the legitimate download's time alone.
struct Scene {
    // Field order is drop order: processes first, then the origin, the runtime and the lock.
    pair: Pair,
    _origin: Origin,
    rt: tokio::runtime::Runtime,
    alone: f64,
    seed: u64,
    _lock: HeavyLock,
}

impl Scene {
    /// The pair started, and the legitimate download timed alone (seed `seed`).
    fn new(seed: u64) -> Scene {
        let lock = heavy();
        let rt = rt();
        let origin = rt.block_on(Origin::start()).unwrap();
        let mut pair = Pair::new(origin.addr).unwrap();
        pair.start().unwrap();
        let alone = rt
            .block_on(legit(pair.forward(), seed))
            .unwrap_or_else(|e| panic!("the legitimate download alone failed: {e:#}"));
        Scene {
            pair,
            _origin: origin,
            rt,
            alone,
            seed,
            _lock: lock,
        }
    }

    /// The sampler of the core's RSS (baseline now).
    fn core_rss(&self) -> RssSampler {
        RssSampler::of(&self.pair.core().proc, Some(KILL_GROWTH)).unwrap()
    }

    /// A legitimate download of fresh bytes (a new seed: no dedup) during an attack.
    async fn legit_during(&self) -> anyhow::Result<f64> {
        legit(self.pair.forward(), self.seed + 1).await
    }

    fn core_admin(&self) -> SocketAddr {
        self.pair.core().admin
    }
}

/// Downloads LEGIT_LEN seeded bytes through the edge forward `fwd`; checks them byte for byte
/// (length and BLAKE3 against the seeded stream); the seconds it took.
async fn legit(fwd: SocketAddr, seed: u64) -> anyhow::Result<f64> {
    let t = tokio::time::timeout(LEGIT_TIMEOUT, origin::download(fwd, seed, LEGIT_LEN))
        .await
        .map_err(|_| anyhow::anyhow!("no complete download within {LEGIT_TIMEOUT:?}"))??;
    anyhow::ensure!(
        t.len == LEGIT_LEN && t.hash == seeded::hash(seed, LEGIT_LEN),
        "legitimate download corrupt: {} of {LEGIT_LEN} bytes, hash {}",
        t.len,
        t.hash
    );
    Ok(t.secs)
}

/// GET `path` with every step bounded by `deadline`: (status, time to the whole answer).
fn timed_get(addr: SocketAddr, path: &str, deadline: Duration) -> anyhow::Result<(u16, Duration)> {
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&addr, deadline)?;
    s.set_read_timeout(Some(deadline))?;
    s.set_write_timeout(Some(deadline))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let text = String::from_utf8_lossy(&all);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("GET {path}: no HTTP status in {text:?}"))?;
    Ok((status, t0.elapsed()))
}

/// Whether the core's `/live` answers 200 within [`PROBE_DEADLINE`].
fn core_live(addr: SocketAddr) -> Result<Duration, String> {
    match timed_get(addr, "/live", PROBE_DEADLINE) {
        Ok((200, t)) if t <= PROBE_DEADLINE => Ok(t),
        Ok((st, t)) => Err(format!("/live answered {st} after {t:?}")),
        Err(e) => Err(format!("/live: {e:#}")),
    }
}

/// What one attack did, measured.
struct Outcome {
    attack: &'static str,
    baseline: u64,
    peak: u64,
    killed: Option<u64>,
    alone: f64,
    during: anyhow::Result<f64>,
    /// Per offending flow: how long after the attack's last frame it was reset (zero when during
    /// the attack) and how, or `None` when it was not within [`RESET_DEADLINE`]. Empty when the
    /// attack is not on a flow.
    resets: Vec<Option<(Duration, String)>>,
    live: Result<Duration, String>,
    /// The core's exit status, if it is no longer running.
    core_exit: Option<String>,
}

impl Outcome {
    fn measure(attack: &'static str, s: &mut Scene, rss: &RssSampler) -> Outcome {
        let core_exit = s
            .pair
            .core
            .as_mut()
            .and_then(|c| c.proc.try_wait().ok().flatten())
            .map(|st| st.to_string());
        Outcome {
            core_exit,
            attack,
            baseline: rss.baseline(),
            peak: rss.peak(),
            killed: rss.killed(),
            alone: s.alone,
            during: Ok(0.0),
            resets: Vec::new(),
            live: core_live(s.core_admin()),
        }
    }

    /// Prints every measurement, then asserts issue 14's targets.
    fn check(self) {
        let growth = self.peak.saturating_sub(self.baseline);
        let ratio = self.during.as_ref().map(|d| d / self.alone).ok();
        eprintln!(
            "[{}] core RSS baseline {:.0} MiB, peak {:.0} MiB, growth {:.0} MiB (bound {:.0}){}; \
             legit 64 MiB alone {:.2} s, during {}; /live {:?}{}",
            self.attack,
            mib(self.baseline),
            mib(self.peak),
            mib(growth),
            mib(MAX_RSS_GROWTH),
            self.killed
                .map(|k| format!(", KILLED by the test at {:.0} MiB", mib(k)))
                .unwrap_or_default(),
            self.alone,
            match (&self.during, ratio) {
                (Ok(d), Some(r)) => format!("{d:.2} s ({r:.2}x)"),
                (Err(e), _) => format!("FAILED: {e:#}"),
                _ => String::new(),
            },
            self.live,
            self.core_exit
                .as_ref()
                .map(|st| format!("; core EXITED: {st}"))
                .unwrap_or_default(),
        );
        for (i, r) in self.resets.iter().enumerate() {
            match r {
                Some((t, how)) => eprintln!(
                    "[{}] flow {i}: reset {:.2} s after the attack ({how})",
                    self.attack,
                    t.as_secs_f64()
                ),
                None => eprintln!(
                    "[{}] flow {i}: NOT reset within {RESET_DEADLINE:?}",
                    self.attack
                ),
            }
        }
        assert!(
            self.killed.is_none(),
            "[{}] core RSS passed baseline + {:.0} MiB; the test killed it",
            self.attack,
            mib(KILL_GROWTH)
        );
        assert!(
            growth <= MAX_RSS_GROWTH,
            "[{}] core RSS grew {:.0} MiB, bound {:.0} MiB",
            self.attack,
            mib(growth),
            mib(MAX_RSS_GROWTH)
        );
        if let Err(e) = &self.live {
            panic!("[{}] core not live after the attack: {e}", self.attack);
        }
        for (i, r) in self.resets.iter().enumerate() {
            assert!(
                r.is_some(),
                "[{}] offending flow {i} not reset within {RESET_DEADLINE:?}",
                self.attack
            );
        }
        match self.during {
            Err(e) => panic!("[{}] legitimate download failed: {e:#}", self.attack),
            Ok(d) => assert!(
                d <= MAX_SLOWDOWN * self.alone,
                "[{}] legitimate download took {d:.2} s, more than {MAX_SLOWDOWN}x its {:.2} s alone",
                self.attack,
                self.alone
            ),
        }
    }
}

/// Waits for each stream's end, no longer than [`RESET_DEADLINE`] after `attack_end`; per
/// stream the delay after `attack_end` (zero if before) and how it ended.
async fn resets_after(
    watchers: Vec<tokio::task::JoinHandle<StreamEnd>>,
    attack_end: Instant,
) -> Vec<Option<(Duration, String)>> {
    let deadline = tokio::time::Instant::from_std(attack_end + RESET_DEADLINE);
    let mut out = Vec::new();
    for w in watchers {
        let r = match tokio::time::timeout_at(deadline, w).await {
            Ok(Ok(end)) => Some((end.at.saturating_duration_since(attack_end), end.how)),
            Ok(Err(e)) => Some((Duration::ZERO, format!("watcher failed: {e}"))),
            Err(_) => None,
        };
        out.push(r);
    }
    out
}

/// Watches a flow's end without reading its data.
fn watch(f: strait_e2e::hostile::Flow) -> tokio::task::JoinHandle<StreamEnd> {
    tokio::spawn(async move {
        let strait_e2e::hostile::Flow { send, mut reader } = f;
        stream_end(&send, &mut reader.recv).await
    })
}

/// Flows of the want flood.
const WANT_FLOWS: u64 = 2;
/// `Want` frames per flooding flow: more than the receiver's retry budget for one id
/// (`strait_dedup::MAX_VERIFY_ATTEMPTS`, 2), so a core that counts re-wants ends the flow.
const WANTS_PER_FLOW: usize = 4;
/// Literals read before choosing the largest to want.
const WANT_CANDIDATES: usize = 8;

#[test]
fn want_flood_of_one_held_chunk_is_bounded_and_reset_while_another_edge_downloads() {
    let mut s = Scene::new(1400);
    let rss = s.core_rss();
    let (during, resets) = s.rt.block_on(async {
        let edge = TestEdge::connect(&s.pair, MALLORY).await.unwrap();
        let mut flows = Vec::new();
        for k in 0..WANT_FLOWS {
            let mut f = edge.open_flow("origin", "want-flood").await.unwrap();
            f.request_gen(&edge, 1410 + k, LEGIT_LEN).await.unwrap();
            // Chunks the core sent and holds unacknowledged for this flow: a Want may name them.
            let held = f.literals(WANT_CANDIDATES).await.unwrap();
            let (id, len) = *held.iter().max_by_key(|c| c.1).unwrap();
            flows.push((f, id, len));
        }
        for (f, id, len) in &mut flows {
            let want = Frame::Want(vec![*id; MAX_REFS_PER_FRAME]);
            for _ in 0..WANTS_PER_FLOW {
                if let Err(e) = f.send(&want).await {
                    eprintln!("[want flood] Want refused by the core: {e:#}");
                    break;
                }
            }
            eprintln!(
                "[want flood] {WANTS_PER_FLOW} Wants of {MAX_REFS_PER_FRAME} x one {len}-byte chunk: \
                 {:.0} MiB of supplies if each copy is answered",
                mib(WANTS_PER_FLOW as u64 * MAX_REFS_PER_FRAME as u64 * u64::from(*len))
            );
        }
        let attack_end = Instant::now();
        // Never read again: only watch for the reset.
        let watchers = flows.into_iter().map(|(f, ..)| watch(f)).collect();
        let during = s.legit_during().await;
        let resets = resets_after(watchers, attack_end).await;
        edge.close().await;
        (during, resets)
    });
    let mut o = Outcome::measure("want flood", &mut s, &rss);
    o.during = during;
    o.resets = resets;
    o.check();
}

/// `DeltaRun` frames of the run bomb.
const BOMB_FRAMES: usize = 8;
/// `Same` items per bomb frame (the wire's most, `MAX_RUN_ITEMS`): 256 x 33 bytes ≈ 8 KiB.
const BOMB_ITEMS: usize = strait_wire::MAX_RUN_ITEMS;
/// The large chunk the bomb names: the wire's largest (a core enforcing `dedup.max_chunk`
/// refuses it; the bomb then names the largest chunk a download left in the core's store).
const BIG_CHUNK: usize = strait_wire::MAX_CHUNK_LEN;
/// Bytes downloaded through the test edge when the big chunk is refused.
const FALLBACK_DOWNLOAD: u64 = 4 << 20;

/// Stores one BIG_CHUNK-byte chunk in the core for the test edge (an upload literal, the SINK
/// op as its first byte); its id, or `None` when the core refuses such a chunk.
async fn store_big_chunk(edge: &TestEdge, seed: u64) -> Option<(WireId, u32)> {
    let mut f = edge.open_flow("origin", "run-bomb-setup").await.ok()?;
    let mut data = seeded::bytes(seed, BIG_CHUNK);
    data[0] = OP_SINK;
    let lit = edge.literal(&data);
    f.send(&lit).await.ok()?;
    f.send(&Frame::End).await.ok()?;
    // The core acknowledges the literal once it verified, stored and delivered it.
    let acked = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match f.reader.next().await {
                Ok(Some(Frame::Ack(n))) if n >= 1 => return true,
                Ok(Some(_)) => {}
                _ => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    acked.then(|| (edge.id(&data), BIG_CHUNK as u32))
}

#[test]
fn run_bomb_of_same_items_is_bounded_and_reset_while_another_edge_downloads() {
    let mut s = Scene::new(1500);
    let (during, resets, rss) = s.rt.block_on(async {
        let edge = TestEdge::connect(&s.pair, MALLORY).await.unwrap();
        let big = match store_big_chunk(&edge, 1510).await {
            Some(c) => c,
            None => {
                eprintln!("[run bomb] the core refused a {BIG_CHUNK}-byte chunk; naming the largest downloaded chunk");
                let mut f = edge.open_flow("origin", "run-bomb-setup").await.unwrap();
                f.request_gen(&edge, 1511, FALLBACK_DOWNLOAD).await.unwrap();
                let got = f.read_all_acked().await.unwrap();
                *got.iter().max_by_key(|c| c.1).unwrap()
            }
        };
        eprintln!(
            "[run bomb] {BOMB_FRAMES} DeltaRun frames of {BOMB_ITEMS} Same items naming one {}-byte chunk: \
             {:.0} MiB loaded per frame if each item is",
            big.1,
            mib(BOMB_ITEMS as u64 * u64::from(big.1))
        );
        // Baseline after the setup (the big literal itself is legitimate).
        let rss = s.core_rss();
        let mut f = edge.open_flow("origin", "run-bomb").await.unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1512);
        for _ in 0..BOMB_FRAMES {
            let mut digest = [0u8; 32];
            rng.fill_bytes(&mut digest);
            let run = Frame::DeltaRun {
                digest,
                items: vec![RunItem::Same(BaseRef::Id(big.0)); BOMB_ITEMS],
                payload: Bytes::new(),
            };
            if let Err(e) = f.send(&run).await {
                eprintln!("[run bomb] DeltaRun refused by the core: {e:#}");
                break;
            }
        }
        let attack_end = Instant::now();
        let watcher = watch(f);
        let during = s.legit_during().await;
        let resets = resets_after(vec![watcher], attack_end).await;
        edge.close().await;
        (during, resets, rss)
    });
    let mut o = Outcome::measure("run bomb", &mut s, &rss);
    o.during = during;
    o.resets = resets;
    o.check();
}

/// `Refs` frames of the refs flood (issue 14's measurement).
const REFS_FRAMES: usize = 119;
/// Longest the refs flood's sender may take to hand all its frames to the core.
const REFS_SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn refs_flood_of_unknown_ids_is_bounded_and_reset_while_another_edge_downloads() {
    let mut s = Scene::new(1600);
    let rss = s.core_rss();
    let (during, resets) = s.rt.block_on(async {
        let edge = TestEdge::connect(&s.pair, MALLORY).await.unwrap();
        let f = edge.open_flow("origin", "refs-flood").await.unwrap();
        let strait_e2e::hostile::Flow { mut send, reader } = f;
        // Read (and drop) the core's Wants, so it is never blocked on writing them.
        let wants = Arc::new(AtomicU64::new(0));
        let drained = tokio::spawn(drain(reader, wants.clone()));
        let t0 = Instant::now();
        let sender = tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(1610);
            let mut sent = 0;
            for _ in 0..REFS_FRAMES {
                let refs = (0..MAX_REFS_PER_FRAME)
                    .map(|_| {
                        let mut id = [0u8; 32];
                        rng.fill_bytes(&mut id);
                        ChunkRef { id, len: 1 }
                    })
                    .collect();
                let mut out = BytesMut::new();
                Frame::Refs(refs).encode(&mut out);
                if send.write_all(&out).await.is_err() {
                    break;
                }
                sent += 1;
            }
            (sent, send)
        });
        // quinn buffers what flow control allows: "sent" is handed over, not yet processed.
        let sent = tokio::time::timeout(REFS_SEND_TIMEOUT, sender).await;
        let attack_end = Instant::now();
        let _send = match sent {
            Ok(Ok((n, send))) => {
                eprintln!(
                    "[refs flood] {n} of {REFS_FRAMES} Refs frames of {MAX_REFS_PER_FRAME} unknown 1-byte ids handed to the core in {:.2} s",
                    t0.elapsed().as_secs_f64()
                );
                Some(send)
            }
            Ok(Err(e)) => panic!("refs flood sender: {e}"),
            Err(_) => {
                eprintln!("[refs flood] the core did not take {REFS_FRAMES} frames within {REFS_SEND_TIMEOUT:?}");
                None
            }
        };
        let during = s.legit_during().await;
        // The core wants every unknown id back: its pace through the backlog.
        let (w, t) = (wants.load(Relaxed), t0.elapsed().as_secs_f64());
        eprintln!(
            "[refs flood] the core asked for {w} of {} ids within {t:.1} s (≈ {:.1} frames/s processed)",
            REFS_FRAMES * MAX_REFS_PER_FRAME,
            w as f64 / MAX_REFS_PER_FRAME as f64 / t
        );
        let resets = resets_after(vec![drained], attack_end).await;
        edge.close().await;
        (during, resets)
    });
    let mut o = Outcome::measure("refs flood", &mut s, &rss);
    o.during = during;
    o.resets = resets;
    o.check();
}

/// Streams the idle-streams attack opens (issue 14's measurement), over [`IDLE_CONNECTIONS`].
const IDLE_STREAMS: usize = 2000;
/// Connections of the idle-streams attack: a QUIC connection carries at most
/// `tunnel.max_flows` (1,024 by default) streams.
const IDLE_CONNECTIONS: usize = 2;
/// The core's default Open timeout (issue 14: 10 s) plus slack: a stream that has not delivered
/// its `Open` by then must have been closed.
const OPEN_CLOSE_DEADLINE: Duration = Duration::from_secs(15);
/// "RSS returns near baseline": at most this above it once the attacker went away.
const NEAR_BASELINE: u64 = 64 << 20;
/// How long the core may take to release the streams' memory after the attacker left.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one idle stream does: nothing, half an `Open`, or a whole `Open` and then nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quiet {
    Silent,
    HalfOpen,
    OpenThenIdle,
}

#[test]
fn idle_streams_are_closed_by_the_open_timeout_and_their_memory_returns() {
    let mut s = Scene::new(1700);
    let rss = s.core_rss();
    let open = strait_e2e::hostile::encode(&Frame::Open {
        service: "origin".into(),
        route: "idle".into(),
    });
    let (during, ends, opened_at) = s.rt.block_on(async {
        let mut edges = Vec::new();
        for _ in 0..IDLE_CONNECTIONS {
            edges.push(TestEdge::connect(&s.pair, MALLORY).await.unwrap());
        }
        let mut watchers = Vec::new();
        for k in 0..IDLE_STREAMS {
            let edge = &edges[k % IDLE_CONNECTIONS];
            // A silent stream exists for the core only once a later stream of its connection
            // carries a byte (QUIC opens lower-numbered streams implicitly): the last stream
            // of each connection is never silent, or the core could not know of it at all.
            let last_of_its_connection = k + IDLE_CONNECTIONS >= IDLE_STREAMS;
            let kind = match k % 3 {
                0 if !last_of_its_connection => Quiet::Silent,
                0 | 1 => Quiet::HalfOpen,
                _ => Quiet::OpenThenIdle,
            };
            let (mut send, mut recv) = edge.open_raw().await.unwrap();
            match kind {
                Quiet::Silent => {}
                Quiet::HalfOpen => send.write_all(&open[..open.len() / 2]).await.unwrap(),
                Quiet::OpenThenIdle => send.write_all(&open).await.unwrap(),
            }
            watchers.push((
                kind,
                tokio::spawn(async move {
                    let end = stream_end(&send, &mut recv).await;
                    // Keep both halves until the end was seen (dropping them closes the stream).
                    drop((send, recv));
                    end
                }),
            ));
        }
        let opened_at = Instant::now();
        eprintln!(
            "[idle streams] {IDLE_STREAMS} streams opened over {IDLE_CONNECTIONS} connections"
        );
        let during = s.legit_during().await;
        let deadline = tokio::time::Instant::from_std(opened_at + OPEN_CLOSE_DEADLINE);
        let mut ends = Vec::new();
        for (kind, w) in watchers {
            let end = match tokio::time::timeout_at(deadline, w).await {
                Ok(Ok(e)) => Some(e),
                _ => None,
            };
            ends.push((kind, end));
        }
        for e in edges {
            e.close().await;
        }
        (during, ends, opened_at)
    });
    let peak_during = rss.peak();
    // The attacker is gone: the core must give the memory back.
    let released = poll("core RSS back near its baseline", RELEASE_TIMEOUT, || {
        (rss.current() <= rss.baseline() + NEAR_BASELINE).then_some(())
    });
    let after = rss.current();
    for kind in [Quiet::Silent, Quiet::HalfOpen, Quiet::OpenThenIdle] {
        let of_kind: Vec<_> = ends.iter().filter(|(k, _)| *k == kind).collect();
        let closed: Vec<f64> = of_kind
            .iter()
            .filter_map(|(_, e)| e.as_ref())
            .map(|e| e.at.saturating_duration_since(opened_at).as_secs_f64())
            .collect();
        let max = closed.iter().cloned().fold(0.0, f64::max);
        eprintln!(
            "[idle streams] {kind:?}: {} of {} closed by the core within {OPEN_CLOSE_DEADLINE:?} (latest {max:.1} s after opening)",
            closed.len(),
            of_kind.len()
        );
    }
    eprintln!(
        "[idle streams] core RSS baseline {:.0} MiB, peak while held {:.0} MiB, {:.0} MiB after the attacker left",
        mib(rss.baseline()),
        mib(peak_during),
        mib(after)
    );
    let mut o = Outcome::measure("idle streams", &mut s, &rss);
    o.during = during;
    let not_closed = ends
        .iter()
        .filter(|(k, e)| *k != Quiet::OpenThenIdle && e.is_none())
        .count();
    o.check();
    assert_eq!(
        not_closed, 0,
        "{not_closed} streams that never delivered an Open were still open {OPEN_CLOSE_DEADLINE:?} after opening"
    );
    released.unwrap_or_else(|e| {
        panic!(
            "{e:#}: {:.0} MiB now, baseline {:.0} MiB",
            mib(after),
            mib(rss.baseline())
        )
    });
}

/// Flows of the slow-reading attack: half read at a trickle, half never read.
const SLOW_FLOWS: u64 = 64;
/// Bytes a trickling flow reads per step.
const TRICKLE_PIECE: usize = 16 * 1024;
/// Pause between a trickling flow's reads (16 KiB / 250 ms = 64 KiB/s).
const TRICKLE_PAUSE: Duration = Duration::from_millis(250);
/// How long the slow flows are held in all (the legitimate download runs meanwhile).
const SLOW_HOLD: Duration = Duration::from_secs(12);

#[test]
fn slow_reading_flows_are_held_within_the_memory_bound_while_another_edge_downloads() {
    let mut s = Scene::new(1800);
    let rss = s.core_rss();
    let (during, flows) = s.rt.block_on(async {
        // Two connections: unread streams use up a QUIC connection's receive window, which
        // would starve the trickling flows (and new Opens) of the same connection.
        let trickling = TestEdge::connect(&s.pair, MALLORY).await.unwrap();
        let unread = TestEdge::connect(&s.pair, MALLORY).await.unwrap();
        // Every flow opened before any asks for data.
        let mut opened = Vec::new();
        for k in 0..SLOW_FLOWS {
            let trickle = k % 2 == 0;
            let edge = if trickle { &trickling } else { &unread };
            opened.push((trickle, edge.open_flow("origin", "slow").await.unwrap()));
        }
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for (k, (trickle, mut f)) in opened.into_iter().enumerate() {
            let edge = if trickle { &trickling } else { &unread };
            f.request_gen(edge, 1810 + k as u64, LEGIT_LEN)
                .await
                .unwrap();
            tasks.push(tokio::spawn(async move {
                let strait_e2e::hostile::Flow {
                    mut send,
                    mut reader,
                } = f;
                let hold = tokio::time::Instant::from_std(t0 + SLOW_HOLD);
                if !trickle {
                    // Never read: the flow ends only if the core ends it.
                    let end =
                        tokio::time::timeout_at(hold, stream_end(&send, &mut reader.recv)).await;
                    return (trickle, reader.bytes, end.ok().map(|e| e.how));
                }
                let mut acked = 0u64;
                let r = tokio::time::timeout_at(hold, async {
                    loop {
                        match reader.fill(TRICKLE_PIECE).await {
                            Ok(true) => {}
                            Ok(false) => return "finished".to_string(),
                            Err(e) => return e.to_string(),
                        }
                        loop {
                            match reader.pop() {
                                Ok(Some(f)) => acked += strait_e2e::hostile::items(&f),
                                Ok(None) => break,
                                Err(e) => return e.to_string(),
                            }
                        }
                        let mut out = BytesMut::new();
                        Frame::Ack(acked).encode(&mut out);
                        if let Err(e) = send.write_all(&out).await {
                            return e.to_string();
                        }
                        tokio::time::sleep(TRICKLE_PAUSE).await;
                    }
                })
                .await;
                (trickle, reader.bytes, r.ok())
            }));
        }
        let during = s.legit_during().await;
        let mut flows = Vec::new();
        for t in tasks {
            flows.push(t.await.unwrap());
        }
        trickling.close().await;
        unread.close().await;
        (during, flows)
    });
    let read: u64 = flows.iter().map(|f| f.1).sum();
    let ended: Vec<_> = flows.iter().filter_map(|f| f.2.clone()).collect();
    eprintln!(
        "[slow readers] {SLOW_FLOWS} flows ({} trickling at 64 KiB/s, the rest never read) held {SLOW_HOLD:?}: \
         {:.1} MiB read in all; {} ended by the core: {:?}",
        SLOW_FLOWS / 2,
        mib(read),
        ended.len(),
        ended.iter().take(3).collect::<Vec<_>>()
    );
    let mut o = Outcome::measure("slow readers", &mut s, &rss);
    o.during = during;
    o.check();
    // A slow reader is not an attack the core may fail: over a budget it waits.
    assert!(
        ended.is_empty(),
        "{} slow flows were ended by the core (backpressure expected): {ended:?}",
        ended.len()
    );
}

/// Connections of the admin slowloris.
const SLOWLORIS_CONNECTIONS: usize = 200;
/// How long the slowloris lasts: past the admin header-read timeout (default 10 s).
const SLOWLORIS_HOLD: Duration = Duration::from_secs(14);
/// Pause between probes of `/live` and `/ready`.
const PROBE_PERIOD: Duration = Duration::from_millis(200);

#[test]
fn admin_slowloris_leaves_live_and_ready_answering_within_a_second() {
    let mut s = Scene::new(1900);
    let rss = s.core_rss();
    let admin_addr = s.core_admin();
    let closed = Arc::new(AtomicU64::new(0));
    let mut lorises = Vec::new();
    for _ in 0..SLOWLORIS_CONNECTIONS {
        let closed = closed.clone();
        lorises.push(s.rt.spawn(async move {
            use tokio::io::AsyncWriteExt;
            let Ok(mut c) = tokio::net::TcpStream::connect(admin_addr).await else {
                closed.fetch_add(1, Relaxed);
                return;
            };
            let head =
                b"GET /live HTTP/1.1\r\nHost: slowloris\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            for b in head.iter().cycle() {
                if c.write_all(&[*b]).await.is_err() {
                    closed.fetch_add(1, Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    let legit = s.rt.spawn(legit(s.pair.forward(), s.seed + 1));
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    let mut failures = Vec::new();
    let mut probes = 0;
    while t0.elapsed() < SLOWLORIS_HOLD {
        for path in ["/live", "/ready"] {
            probes += 1;
            match timed_get(admin_addr, path, PROBE_DEADLINE) {
                Ok((200, t)) => worst = worst.max(t),
                Ok((st, t)) => {
                    failures.push(format!("{path} {st} after {t:?} at {:?}", t0.elapsed()))
                }
                Err(e) => failures.push(format!("{path}: {e:#} at {:?}", t0.elapsed())),
            }
        }
        std::thread::sleep(PROBE_PERIOD);
    }
    let during = s.rt.block_on(legit).unwrap();
    for l in lorises {
        l.abort();
    }
    eprintln!(
        "[admin slowloris] {SLOWLORIS_CONNECTIONS} connections sending one header byte a second for {SLOWLORIS_HOLD:?}: \
         {probes} probes, slowest answer {:.0} ms, {} failed; {} slow connections closed by the core",
        worst.as_secs_f64() * 1e3,
        failures.len(),
        closed.load(Relaxed)
    );
    let mut o = Outcome::measure("admin slowloris", &mut s, &rss);
    o.during = during;
    o.check();
    assert!(
        failures.is_empty(),
        "{} of {probes} probes did not answer 200 within {PROBE_DEADLINE:?}: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}
