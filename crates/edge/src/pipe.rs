//! The in-process pipe between the HTTP layer and a tunnel flow's pump, which carries failure.
//!
//! A plain `tokio::io::duplex` ends with a clean EOF whichever way its other end went away, so a
//! flow that failed half-way would look to hyper like an upstream that finished (and a
//! close-delimited response would be relayed as complete). Here an end dropped before it
//! completed (shut down its writes, or was marked complete) makes the other end's reads fail.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// One end of a [`pipe`].
pub(crate) struct PipeEnd {
    io: DuplexStream,
    /// `failed[i]`: end `i` went away before completing.
    failed: Arc<[AtomicBool; 2]>,
    me: usize,
    complete: bool,
}

/// A pipe of `buf` bytes each way whose ends report each other's failure.
pub(crate) fn pipe(buf: usize) -> (PipeEnd, PipeEnd) {
    let (a, b) = tokio::io::duplex(buf);
    let failed = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let end = |io, me| PipeEnd {
        io,
        failed: failed.clone(),
        me,
        complete: false,
    };
    (end(a, 0), end(b, 1))
}

impl PipeEnd {
    /// This end finished its work: dropping it is a clean end for the other.
    pub(crate) fn complete(&mut self) {
        self.complete = true;
    }
}

impl Drop for PipeEnd {
    fn drop(&mut self) {
        // Runs before `io` drops, so the other end sees the flag with the EOF.
        if !self.complete {
            self.failed[self.me].store(true, Ordering::SeqCst);
        }
    }
}

impl AsyncRead for PipeEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let eof = buf.filled().len() == before && buf.remaining() > 0;
            if eof && this.failed[1 - this.me].load(Ordering::SeqCst) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the tunnel flow failed",
                )));
            }
        }
        r
    }
}

impl AsyncWrite for PipeEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        if let Poll::Ready(Ok(())) = r {
            // Whoever shuts down its writes has said everything: a clean end.
            this.complete = true;
        }
        r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reader_sees_an_error_when_the_other_end_failed() {
        let (mut near, mut far) = pipe(1024);
        far.write_all(b"partial").await.unwrap();
        drop(far);
        let mut got = Vec::new();
        let err = near.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(got, b"partial");
    }

    #[tokio::test]
    async fn reader_sees_eof_when_the_other_end_completed_or_shut_down() {
        let (mut near, mut far) = pipe(1024);
        far.write_all(b"whole").await.unwrap();
        far.complete();
        drop(far);
        let mut got = Vec::new();
        near.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"whole");

        let (mut near, mut far) = pipe(1024);
        near.write_all(b"request").await.unwrap();
        near.shutdown().await.unwrap();
        drop(near);
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
    }
}
