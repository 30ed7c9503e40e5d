//! The admin HTTP server (hyper, HTTP/1.1).

use crate::listen::AcceptBackoff;
use crate::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Admin server errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listen address could not be bound.
    #[error("admin server cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Most admin connections held at once by default (it is a loopback diagnostics port, not a
/// data path); the config's `limits.max_admin_connections` sets it.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Default longest a client may take to send a request head (`limits.header_read_timeout`).
pub const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection younger than this is never the one closed to make room: a real client (an
/// orchestrator's probe, a scraper) sends its whole request head within it, so by the time it
/// could be chosen it has sent more than any slowloris, which is chosen first.
pub const ADMIN_EVICTION_GRACE: Duration = Duration::from_millis(50);

/// Bounds of the admin server.
#[derive(Debug, Clone, Copy)]
pub struct AdminOptions {
    /// Connections held at once. When a new one arrives at the cap, the connection that has
    /// sent the fewest bytes (the oldest among equals) of those older than
    /// [`ADMIN_EVICTION_GRACE`] is closed: a semaphore before `accept` would queue `/live`
    /// behind idle connections until their header-read timeout, and an orchestrator would
    /// restart a healthy process; closing the oldest could close a probe that had just
    /// arrived in a flood.
    pub max_connections: usize,
    /// Longest a client may take to send a request head (slowloris connections end after it).
    pub header_read_timeout: Duration,
}

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions {
            max_connections: ADMIN_MAX_CONNECTIONS,
            header_read_timeout: ADMIN_HEADER_READ_TIMEOUT,
        }
    }
}

/// Open connections, oldest first: when each opened, the bytes it sent, the signal that closes it.
#[derive(Default)]
struct Open {
    next_id: u64,
    conns: BTreeMap<u64, (Instant, Arc<AtomicU64>, Arc<Notify>)>,
}

impl Open {
    /// Closes the connection that sent the fewest bytes among those older than the grace, or
    /// says how long until the oldest is.
    fn evict_one(&mut self, now: Instant) -> Result<(), Duration> {
        let victim = self
            .conns
            .iter()
            .filter(|(_, (at, _, _))| now.duration_since(*at) >= ADMIN_EVICTION_GRACE)
            .min_by_key(|(id, (_, bytes, _))| (bytes.load(Relaxed), **id))
            .map(|(id, _)| *id);
        match victim {
            Some(id) => {
                if let Some((_, _, close)) = self.conns.remove(&id) {
                    close.notify_one();
                }
                Ok(())
            }
            None => {
                let oldest = self.conns.values().map(|(at, _, _)| *at).min();
                Err(oldest.map_or(Duration::ZERO, |at| {
                    ADMIN_EVICTION_GRACE.saturating_sub(now.duration_since(at))
                }))
            }
        }
    }
}

/// A connection's stream, counting the bytes the client sent.
struct Counted {
    tcp: tokio::net::TcpStream,
    read: Arc<AtomicU64>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Relaxed);
        r
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

fn respond(m: &Metrics, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => (StatusCode::OK, "text/plain", "live\n".to_string()),
        (&Method::GET, "/ready") => {
            if m.ready() {
                (StatusCode::OK, "text/plain", "ready\n".to_string())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: tunnel down\n".to_string(),
                )
            }
        }
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", m.prometheus()),
        (&Method::GET, "/stats") => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&m.stats_json()).unwrap_or_default(),
        ),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /live, /ready, /metrics, /stats\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Binds the admin server; returns its address and the serving future (runs until `shutdown`).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    options: AdminOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()> + Send), Error> {
    // A deep queue: a burst of connections must not drop a probe's handshake while the
    // accept loop waits for room at the connection cap.
    let listener = crate::listen::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let open = Arc::new(Mutex::new(Open::default()));
    let max = options.max_connections.max(1);
    let fut = async move {
        tokio::pin!(shutdown);
        let mut backoff = AcceptBackoff::default();
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        backoff.failed(&e, Some(&metrics)).await;
                        continue;
                    }
                },
            };
            backoff.reset();
            // At the cap, the slowest sender past the grace makes room (see AdminOptions);
            // when every held connection is younger, wait until one is not.
            loop {
                let wait = {
                    let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
                    if o.conns.len() < max {
                        break;
                    }
                    match o.evict_one(Instant::now()) {
                        Ok(()) => continue,
                        Err(wait) => wait,
                    }
                };
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            }
            let read = Arc::new(AtomicU64::new(0));
            let (id, close) = {
                let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
                o.next_id += 1;
                let id = o.next_id;
                let close = Arc::new(Notify::new());
                o.conns
                    .insert(id, (Instant::now(), read.clone(), close.clone()));
                (id, close)
            };
            let stream = Counted { tcp: stream, read };
            let m = metrics.clone();
            let open = open.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let resp = respond(&m, &req);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(options.header_read_timeout);
                tokio::select! {
                    _ = builder.serve_connection(io, svc) => {}
                    _ = close.notified() => {}
                }
                open.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .conns
                    .remove(&id);
            });
        }
    };
    Ok((local, fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(o: &mut Open, at: Instant, sent: u64) -> (u64, Arc<Notify>) {
        o.next_id += 1;
        let close = Arc::new(Notify::new());
        let id = o.next_id;
        o.conns
            .insert(id, (at, Arc::new(AtomicU64::new(sent)), close.clone()));
        (id, close)
    }

    #[test]
    fn the_slowest_sender_past_the_grace_is_closed_never_a_young_probe() {
        let t0 = Instant::now();
        let now = t0 + ADMIN_EVICTION_GRACE * 4;
        let mut o = Open::default();
        // An early probe that sent its whole head, slowloris connections of 1-3 bytes, and a
        // probe that just arrived with nothing read yet.
        let (probe, _) = conn(&mut o, t0, 40);
        let (loris_a, _) = conn(&mut o, t0, 3);
        let (loris_b, _) = conn(&mut o, t0 + ADMIN_EVICTION_GRACE, 1);
        let (young, _) = conn(&mut o, now, 0);
        assert_eq!(o.evict_one(now), Ok(()));
        assert!(
            !o.conns.contains_key(&loris_b),
            "the 1-byte loris goes first"
        );
        assert_eq!(o.evict_one(now), Ok(()));
        assert!(!o.conns.contains_key(&loris_a));
        assert_eq!(o.evict_one(now), Ok(()));
        assert!(
            !o.conns.contains_key(&probe),
            "then the probe, which had its answer"
        );
        // Only the young connection is left: it is not closed; the caller waits out its grace.
        assert_eq!(o.evict_one(now), Err(ADMIN_EVICTION_GRACE));
        assert!(o.conns.contains_key(&young));
    }
}
