//! Issue 14, point 5: a flow that fails reaches the HTTP client as an error, never as a clean
//! end: a 502 before any response byte, a reset connection after.
#![allow(clippy::unwrap_used)]

mod support;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use strait_classify::Verdict;
use strait_http::{AsyncStream, BoxFuture, Connector, Target};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How a scripted upstream ends after its bytes.
#[derive(Clone, Copy, PartialEq)]
enum End {
    /// The flow failed: reads return an error (what the edge's tunnel pipe does).
    Fail,
    /// A clean EOF (the control case).
    Clean,
}

/// An upstream that answers with fixed bytes once a request head was written (or at once, for
/// a CONNECT tunnel), then ends as scripted.
struct Scripted {
    reply: Vec<u8>,
    pos: usize,
    end: End,
    wait_for_head: bool,
    written: Vec<u8>,
    waker: Option<Waker>,
}

impl AsyncRead for Scripted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.wait_for_head && !this.written.windows(4).any(|w| w == b"\r\n\r\n") {
            this.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if this.pos < this.reply.len() {
            let n = buf
                .remaining()
                .min(this.reply.len() - this.pos)
                .min(16 << 10);
            buf.put_slice(&this.reply[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        match this.end {
            End::Clean => Poll::Ready(Ok(())),
            End::Fail => Poll::Ready(Err(std::io::Error::other("tunnel flow failed"))),
        }
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.written.extend_from_slice(buf);
        if let Some(w) = this.waker.take() {
            w.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Hands out one scripted upstream per connect.
struct ScriptedConnector {
    reply: Vec<u8>,
    end: End,
    wait_for_head: bool,
    connects: Mutex<usize>,
}

impl Connector for ScriptedConnector {
    fn connect(
        &self,
        _target: &Target,
        _verdict: &Verdict,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn AsyncStream>>> {
        *self.connects.lock().unwrap() += 1;
        let s = Scripted {
            reply: self.reply.clone(),
            pos: 0,
            end: self.end,
            wait_for_head: self.wait_for_head,
            written: Vec::new(),
            waker: None,
        };
        Box::pin(async move { Ok(Box::new(s) as Box<dyn AsyncStream>) })
    }
}

async fn serve(reply: Vec<u8>, end: End, proxy: bool) -> (std::net::SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let classifier = classifier("");
    let ingress = strait_http::Ingress {
        stats: strait_http::new_stats(&classifier),
        classifier,
        connector: Arc::new(ScriptedConnector {
            reply,
            end,
            wait_for_head: !proxy,
            connects: Mutex::new(0),
        }),
        options: strait_http::IngressOptions::default(),
    };
    let stop = CancellationToken::new();
    let t = stop.clone();
    if proxy {
        tokio::spawn(strait_http::serve_proxy(listener, ingress, t));
    } else {
        tokio::spawn(async move {
            strait_http::serve_route(listener, "s3", "origin".into(), ingress, t).await
        });
    }
    (addr, stop)
}

/// Sends `request` on a fresh connection and reads until EOF or an error: (bytes, error).
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (Vec<u8>, Option<std::io::Error>) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .expect("the proxy neither finished nor failed the response");
    (got, read)
}

const GET: &[u8] = b"GET /blob HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn flow_failing_before_the_response_is_a_502() {
    let (addr, _stop) = serve(Vec::new(), End::Fail, false).await;
    let (got, err) = exchange(addr, GET).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 502 "), "{text} ({err:?})");
}

/// A close-delimited body: its end is only the upstream's EOF, so a failed flow that ended the
/// pipe cleanly would be relayed as a complete response.
fn close_delimited(len: usize) -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
    r.extend(blob(11, 0, len));
    r
}

#[tokio::test]
async fn flow_failing_mid_body_resets_the_client_and_never_ends_the_chunked_body() {
    let (addr, _stop) = serve(close_delimited(300_000), End::Fail, false).await;
    let (got, err) = exchange(addr, GET).await;
    let text = String::from_utf8_lossy(&got[..got.len().min(200)]).to_string();
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        !got.ends_with(b"0\r\n\r\n"),
        "a failed body was relayed with its chunked terminator"
    );
    let err = err.expect("the client saw a clean end of a failed response");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn flow_ending_cleanly_relays_a_complete_chunked_body() {
    // The control: the same response ending with a clean EOF is complete, so the test above
    // tells a failed flow from a finished one.
    let (addr, _stop) = serve(close_delimited(300_000), End::Clean, false).await;
    let (got, err) = exchange(addr, GET).await;
    assert!(err.is_none(), "{err:?}");
    assert!(got.ends_with(b"0\r\n\r\n"), "no chunked terminator");
}

#[tokio::test]
async fn flow_failing_mid_sized_body_leaves_it_short_and_resets() {
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 500000\r\n\r\n".to_vec();
    reply.extend(blob(12, 0, 200_000));
    let (addr, _stop) = serve(reply, End::Fail, false).await;
    let (got, err) = exchange(addr, GET).await;
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.len() - head_end < 500_000, "a short body was padded?");
    let err = err.expect("the client saw a clean close of a short body");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn connect_tunnel_whose_flow_fails_resets_the_client() {
    for (end, reset) in [(End::Fail, true), (End::Clean, false)] {
        let (addr, _stop) = serve(b"hello from the origin".to_vec(), end, true).await;
        let (got, err) = exchange(
            addr,
            b"CONNECT origin.example:443 HTTP/1.1\r\nHost: origin.example:443\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(text.ends_with("hello from the origin"), "{text}");
        match (reset, err) {
            (true, Some(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
            (true, None) => panic!("a failed CONNECT tunnel ended cleanly"),
            (false, None) => {}
            (false, Some(e)) => panic!("a clean CONNECT tunnel ended with {e}"),
        }
    }
}
