//! Guards that make a flow that did not complete end as a failure on both of its sockets.
//!
//! quinn's `SendStream` *finishes* the stream when dropped, and a dropped `TcpStream` sends FIN:
//! a flow task that panics, is cancelled or returns early through `?` would otherwise end both
//! sides cleanly, and a client could take a truncated transfer for a complete one. These guards
//! reset on drop instead (QUIC `RESET_STREAM`/`STOP_SENDING` with [`RESET_CODE`](crate::flow::RESET_CODE), TCP RST via
//! linger 0) unless the flow disarmed them after completing.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

/// Both halves of a flow's QUIC stream.
#[derive(Debug)]
pub struct BiStream {
    /// What this side sends.
    pub send: quinn::SendStream,
    /// What the peer sends.
    pub recv: quinn::RecvStream,
}

/// A flow's QUIC stream that is reset (both halves, [`RESET_CODE`](crate::flow::RESET_CODE)) when dropped, unless
/// [`StreamGuard::disarm`]ed.
#[derive(Debug)]
pub struct StreamGuard {
    stream: BiStream,
    armed: bool,
}

impl StreamGuard {
    /// Guards a freshly opened or accepted stream.
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        StreamGuard {
            stream: BiStream { send, recv },
            armed: true,
        }
    }

    /// The flow completed (or answered with a `Refuse`): drop ends the stream as quinn does.
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Whether a drop now would reset the stream.
    pub fn is_armed(&self) -> bool {
        self.armed
    }
}

impl Deref for StreamGuard {
    type Target = BiStream;
    fn deref(&self) -> &BiStream {
        &self.stream
    }
}

impl DerefMut for StreamGuard {
    fn deref_mut(&mut self) -> &mut BiStream {
        &mut self.stream
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.armed {
            crate::flow::reset(&mut self.stream.send, &mut self.stream.recv);
        }
    }
}

/// A client or upstream TCP connection that is closed with RST (linger 0) when dropped, unless
/// [`TcpResetGuard::disarm`]ed: the peer sees a failure, never a clean (short) end.
///
/// Linger 0 is set when the guard is made, not when it drops: if the process dies (kill -9,
/// OOM) the kernel closes the socket as `close(2)` would, and with linger 0 that is an RST too.
/// Without it, a client of a killed edge (or the upstream of a killed core) whose receive buffer
/// held nothing unread would see a clean FIN after a short transfer.
#[derive(Debug)]
pub struct TcpResetGuard {
    tcp: tokio::net::TcpStream,
    armed: bool,
}

impl TcpResetGuard {
    /// Guards `tcp`: from now on, any close but one after [`TcpResetGuard::disarm`] is an RST.
    pub fn new(tcp: tokio::net::TcpStream) -> Self {
        reset_tcp(&tcp);
        TcpResetGuard { tcp, armed: true }
    }

    /// The flow completed: drop closes the connection normally (FIN after every byte sent).
    pub fn disarm(&mut self) {
        self.armed = false;
        // Back to the default: a close waits for unsent data instead of discarding it.
        let _ = socket2::SockRef::from(&self.tcp).set_linger(None);
    }
}

impl Deref for TcpResetGuard {
    type Target = tokio::net::TcpStream;
    fn deref(&self) -> &tokio::net::TcpStream {
        &self.tcp
    }
}

impl DerefMut for TcpResetGuard {
    fn deref_mut(&mut self) -> &mut tokio::net::TcpStream {
        &mut self.tcp
    }
}

impl Drop for TcpResetGuard {
    fn drop(&mut self) {
        if self.armed {
            reset_tcp(&self.tcp);
        }
    }
}

/// Arranges for `tcp` to close with RST when it is dropped (linger 0).
pub fn reset_tcp(tcp: &tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

/// Runs a flow task, catching a panic: it is counted (`strait_flow_panics_total`) and logged,
/// and the guards the task held have reset its stream and client while unwinding. The rest of
/// the process carries on.
pub async fn catch_panic(
    flow: impl std::future::Future<Output = ()>,
    metrics: &strait_admin::Metrics,
) {
    use futures::FutureExt;
    if let Err(panic) = std::panic::AssertUnwindSafe(flow).catch_unwind().await {
        metrics
            .flow_panics
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %what, "flow task panicked; its stream and client were reset");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn armed_tcp_guard_resets_and_disarmed_one_closes_cleanly() {
        let (mut client, server) = pair().await;
        let mut g = TcpResetGuard::new(server);
        g.write_all(b"partial").await.unwrap();
        drop(g);
        let mut buf = Vec::new();
        let err = client.read_to_end(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

        let (mut client, server) = pair().await;
        let mut g = TcpResetGuard::new(server);
        g.write_all(b"complete").await.unwrap();
        g.disarm();
        drop(g);
        let mut buf = Vec::new();
        client.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"complete");
    }

    /// A connected (server, client) pair of loopback QUIC connections with fresh certificates.
    async fn quic_pair(dir: &std::path::Path) -> (quinn::Connection, quinn::Connection) {
        crate::certs::generate(dir, &["localhost".into()], &["edge-a".into()], false).unwrap();
        let (cc, ck) = crate::certs::core_files("localhost");
        let text = format!(
            "[tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/{cc}\"\nkey = \"{d}/{ck}\"\n\
             [dedup]\nkey = \"{k}\"\n[store]\npath = \"{d}/store\"\n\
             [core]\nlisten = \"127.0.0.1:0\"\n[[core.service]]\nname = \"a\"\nupstream = \"127.0.0.1:1\"\n",
            d = dir.display(),
            k = "00".repeat(32),
        );
        let cfg = strait_config::parse(&text, std::path::Path::new("t.toml"), false).unwrap();
        let stats = std::sync::Arc::new(strait_fec::FecStats::default());
        let server = crate::endpoint::server_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &cfg.tls,
            &cfg.tunnel,
            stats.clone(),
        )
        .unwrap();
        let (ec, ek) = crate::certs::edge_files("edge-a");
        let edge_tls = strait_config::Tls {
            ca: dir.join("ca.pem"),
            cert: dir.join(ec),
            key: dir.join(ek),
        };
        let addr = server.local_addr().unwrap();
        let client = crate::endpoint::client_endpoint(addr, &edge_tls, &cfg.tunnel, stats).unwrap();
        let connecting = client.connect(addr, "localhost").unwrap();
        let (s, c) = tokio::join!(
            async { server.accept().await.unwrap().await.unwrap() },
            connecting
        );
        (s, c.unwrap())
    }

    /// The edge's endpoint grants the core no stream: it opens every flow itself and accepts
    /// none, so a (hostile) core has nothing to fill. The edge still opens streams.
    #[tokio::test]
    async fn the_core_may_open_no_stream_to_the_edge() {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = quic_pair(dir.path()).await;
        // Stream credit comes with the handshake's transport parameters: with any, this open
        // would complete at once.
        let opened = tokio::time::timeout(Duration::from_millis(500), server.open_bi()).await;
        assert!(opened.is_err(), "the core opened a stream to the edge");
        let (mut cs, _cr) = client.open_bi().await.unwrap();
        cs.write_all(b"open").await.unwrap();
        let (_ss, mut sr) = server.accept_bi().await.unwrap();
        let mut got = [0u8; 4];
        sr.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"open");
    }

    #[tokio::test]
    async fn armed_stream_guard_resets_and_disarmed_one_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = quic_pair(dir.path()).await;
        for disarm in [false, true] {
            let (mut cs, mut cr) = client.open_bi().await.unwrap();
            cs.write_all(b"open").await.unwrap();
            let (ss, mut sr) = server.accept_bi().await.unwrap();
            let mut got = [0u8; 4];
            sr.read_exact(&mut got).await.unwrap();
            let mut g = StreamGuard::new(ss, sr);
            g.send.write_all(b"partial").await.unwrap();
            if disarm {
                g.send.finish().unwrap();
                g.disarm();
            }
            drop(g);
            let read = cr.read_to_end(1 << 20).await;
            match (disarm, read) {
                (true, Ok(b)) => assert_eq!(b, b"partial"),
                (false, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)))) => {
                    assert_eq!(code, quinn::VarInt::from_u32(crate::flow::RESET_CODE))
                }
                (d, r) => panic!("disarmed {d}: {r:?}"),
            }
            let _ = cs.finish();
        }
    }

    #[tokio::test]
    async fn panicking_flow_is_counted_and_its_client_reset() {
        let metrics = strait_admin::Metrics::new("edge");
        let (mut client, server) = pair().await;
        catch_panic(
            async move {
                let mut g = TcpResetGuard::new(server);
                if g.write_all(b"half a resp").await.is_ok() {
                    panic!("flow bug");
                }
            },
            &metrics,
        )
        .await;
        assert_eq!(
            metrics
                .flow_panics
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let mut buf = Vec::new();
        let err = client.read_to_end(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    }
}
