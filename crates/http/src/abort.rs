//! A client connection that ends with RST when a response failed after its head was sent.
//!
//! Once hyper has written a response head, the only way left to tell the client that the body is
//! broken is to abort the connection: hyper stops writing (no chunked terminator), and
//! [`ClientIo`] turns the close into a reset, so a client that reads until EOF (a close-delimited
//! body) sees an error instead of a clean, short end.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Set when something carried on a client connection failed half-way.
#[derive(Debug, Clone, Default)]
pub(crate) struct Abort(Arc<AtomicBool>);

impl Abort {
    /// The connection must end with RST.
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A client TCP connection that closes with RST when dropped after [`Abort::set`].
pub(crate) struct ClientIo {
    tcp: TcpStream,
    abort: Abort,
}

impl ClientIo {
    pub(crate) fn new(tcp: TcpStream, abort: Abort) -> Self {
        ClientIo { tcp, abort }
    }
}

impl Drop for ClientIo {
    fn drop(&mut self) {
        if self.abort.is_set() {
            let _ = socket2::SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
