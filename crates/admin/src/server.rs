//! The admin HTTP server (hyper, HTTP/1.1).

use crate::listen::AcceptBackoff;
use crate::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
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

/// Bounds of the admin server.
#[derive(Debug, Clone, Copy)]
pub struct AdminOptions {
    /// Connections held at once. When a new one arrives at the cap, the oldest is closed: a
    /// semaphore before `accept` would queue `/live` behind idle connections until their
    /// header-read timeout, and an orchestrator would restart a healthy process.
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

/// Open connections, oldest first, each with the signal that closes it.
#[derive(Default)]
struct Open {
    next_id: u64,
    conns: BTreeMap<u64, Arc<Notify>>,
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
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
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
            let (id, close) = {
                let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
                // At the cap, the oldest connection makes room: an idle or slow one has had
                // the longest to send its request; a probe is served in microseconds.
                while o.conns.len() >= max {
                    match o.conns.pop_first() {
                        Some((_, oldest)) => oldest.notify_one(),
                        None => break,
                    }
                }
                o.next_id += 1;
                let id = o.next_id;
                let close = Arc::new(Notify::new());
                o.conns.insert(id, close.clone());
                (id, close)
            };
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
