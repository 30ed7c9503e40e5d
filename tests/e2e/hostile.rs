//! Peers that do not follow the rules, speaking the tunnel protocol directly with quinn:
//! a client without a certificate (issue 2) and an edge with a valid certificate that
//! references chunk ids it was never given (issue 3: a hash is not a capability).
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use quinn::crypto::rustls::QuicClientConfig;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use strait_e2e::admin::{self, num, route};
use strait_e2e::bin::light;
use strait_e2e::origin::{self, Origin, OP_SINK};
use strait_e2e::pair::{certs, Pair};
use strait_e2e::{poll, rt, seeded};
use strait_transport::endpoint::key_fingerprint;
use strait_wire::{ChunkRef, Frame, FrameDecoder, WireId, PROTOCOL_VERSION};

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
            send(
                &mut s,
                &Frame::Hello {
                    version: PROTOCOL_VERSION,
                    key_fingerprint: [0; 16],
                },
            )
            .await?;
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
            &Frame::Hello {
                version: PROTOCOL_VERSION,
                key_fingerprint: key_fingerprint(&cfg_b.dedup.key),
            },
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
