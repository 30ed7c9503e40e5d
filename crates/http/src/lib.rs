//! HTTP-aware ingress at the edge and TLS origination at the core.
//!
//! This crate owns:
//! - [`serve_proxy`]: an HTTP forward proxy a pipeline uses through `HTTP_PROXY`/`HTTPS_PROXY`.
//!   Absolute-form requests (`GET http://host:port/path`) are classified, denied with a `403`
//!   or carried to [`Target::Origin`]; `CONNECT host:port` tunnels are classified by host and
//!   carried opaquely (their bytes are encrypted and cannot be deduplicated; they are counted in
//!   [`HttpStats::connect_bytes`] so operators see what escapes optimization);
//! - [`serve_route`]: an HTTP/S3 route — the pipeline talks plain HTTP to the edge
//!   (`AWS_ENDPOINT_URL=http://127.0.0.1:9100`) and every request goes to [`Target::Service`];
//! - [`connect_upstream`] / [`Upstream`]: the core's connect to a declared upstream, over TCP or
//!   TCP + TLS (rustls, verified against the Mozilla roots or a configured CA file);
//! - per-request classification ([`strait_classify::Classifier`]), per-class rate caps
//!   ([`strait_classify::TokenBucket`]) and statistics ([`HttpStats`], [`class_metric_families`]).
//!
//! It never opens a tunnel stream itself: where a request goes is decided here, how the bytes get
//! there is the [`Connector`]'s business (the edge implements it with one QUIC stream per upstream
//! connection; tests implement it with a plain TCP connect).
//!
//! ```text
//!  pipeline ──HTTP/1.1──▶ hyper server ─▶ classify ─▶ deny: 403 (never reaches the connector)
//!                              │                   └▶ allow/log: hyper client ──▶ Connector::connect
//!                              │  bodies stream frame by frame (bounded memory), rate-capped,        │
//!                              │  counted per class, first 64 KiB sniffed for the format             ▼
//!                              └──────────────────────── response ◀──────────────── byte stream (tunnel)
//! ```
//!
//! # Headers, `Host` and S3 SigV4
//!
//! A SigV4 signature covers the `Host` header the client sent, the request path and query, and
//! the `x-amz-*` headers the client chose to sign. In route mode the edge forwards the request
//! target (path and query) byte for byte and changes **no** end-to-end header: the `Host` the
//! upstream sees is the one the client signed (e.g. `127.0.0.1:9100`). Only hop-by-hop headers
//! (`Connection` and the headers it names, `Keep-Alive`, `Proxy-Connection`,
//! `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) are removed, as
//! RFC 9110 §7.6.1 requires of any intermediary; they describe one connection and no S3 client
//! signs them. Body framing is re-derived: a `Content-Length` is kept, a chunked body is
//! re-chunked frame by frame. The upstream must therefore accept the `Host` the client used —
//! true for path-style S3 endpoints (MinIO, moto, Ceph RGW, SeaweedFS), which do not route by
//! `Host`. For virtual-hosted AWS S3 (`bucket.s3.amazonaws.com`), use proxy mode
//! (`HTTPS_PROXY`/`HTTP_PROXY`) instead, so the `Host` the client signs is the real one.
//!
//! In proxy mode, the origin-form target (`/path?query`) is sent upstream and `Host` is kept;
//! if it is missing or disagrees with the absolute-form authority, it is set to that authority
//! (RFC 9112 §3.2.2), which is also what the client signed when it built the URL.
//!
//! Architecture invariant: a denied request never reaches the [`Connector`], and no body is ever
//! held whole in memory: per request at most one hyper frame per direction plus a
//! [`SNIFF_LEN`]-byte format-sniffing prefix.

mod abort;
mod body;
mod error;
mod service;
mod stats;
mod tunnel;
mod upstream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use strait_classify::{ClassStats, Classifier};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::Error;
pub use stats::{class_metric_families, HttpStats};
pub use upstream::{connect_upstream, Upstream, UPSTREAM_CONNECT_TIMEOUT};

/// Route name proxy-mode requests and tunnels are classified under (`FlowInfo::route`).
pub const PROXY_ROUTE: &str = "http-proxy";
/// Client connections served at once per listener; `accept` waits when all are busy.
pub const MAX_CLIENT_CONNECTIONS: usize = 1024;
/// Bytes of each body kept for format sniffing ([`strait_classify::sniff`]).
pub const SNIFF_LEN: usize = strait_classify::SNIFF_PREFIX_LEN;
/// Default longest a client may take to send a request head (the config's
/// `limits.header_read_timeout`; see `strait_config::limits::DEFAULT_HEADER_READ_TIMEOUT`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default TCP keepalive idle time on accepted client sockets (`limits.tcp_keepalive`): a
/// half-open client is found in about two minutes (see [`strait_admin::listen`]).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Largest request or response head (and hyper read buffer) accepted.
pub const MAX_HEAD_BYTES: usize = 256 * 1024;
/// Read buffer per direction of a `CONNECT` tunnel.
pub const TUNNEL_BUF: usize = 64 * 1024;

/// A boxed, sendable future (what [`Connector::connect`] returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A bidirectional byte stream to a target.
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

/// Where a request goes: a route to a core service, or (proxy mode) an origin `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A service the core declares (route mode).
    Service {
        /// Service name in the core's service table.
        service: String,
    },
    /// An origin named by the client (proxy mode).
    Origin {
        /// Host name or IP literal (no brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Service { service } => write!(f, "service {service}"),
            Target::Origin { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Origin { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Opens a byte stream that reaches a [`Target`]. The edge implements it with a tunnel flow (one
/// QUIC stream carrying the bytes through dedup, at `verdict.priority`, with the verdict's
/// data-path settings); tests implement it with a plain TCP connect.
///
/// One stream carries one upstream HTTP/1.1 connection: it is reused for later requests of the
/// same client connection while the target and class stay the same.
pub trait Connector: Send + Sync + 'static {
    /// Open a stream to `target` for traffic classified as `verdict`.
    fn connect(
        &self,
        target: &Target,
        verdict: &strait_classify::Verdict,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn AsyncStream>>>;
}

/// Bounds of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct IngressOptions {
    /// Longest a client may take to send a request head.
    pub header_read_timeout: Duration,
    /// TCP keepalive idle time on accepted client sockets; `None` = off.
    pub tcp_keepalive: Option<Duration>,
    /// Client connections served at once; `accept` waits when all are busy.
    pub max_connections: usize,
}

impl Default for IngressOptions {
    fn default() -> Self {
        IngressOptions {
            header_read_timeout: HEADER_READ_TIMEOUT,
            tcp_keepalive: Some(TCP_KEEPALIVE),
            max_connections: MAX_CLIENT_CONNECTIONS,
        }
    }
}

/// What an HTTP listener serves with: classification, counters, the way to targets and bounds.
pub struct Ingress {
    /// Classes, rules and AI recognisers.
    pub classifier: Arc<Classifier>,
    /// Per-class counters (shared with the process's metrics).
    pub stats: Arc<HttpStats>,
    /// How bytes reach a target.
    pub connector: Arc<dyn Connector>,
    /// Bounds of the listener.
    pub options: IngressOptions,
}

/// Serve an HTTP forward proxy on `listener` until `shutdown` is cancelled, then stop accepting,
/// let in-flight requests finish (connections are closed after their current response; `CONNECT`
/// tunnels are closed) and return once every connection task has ended.
pub async fn serve_proxy(listener: TcpListener, ingress: Ingress, shutdown: CancellationToken) {
    let shared = service::Shared::new(service::Mode::Proxy, ingress, shutdown);
    service::serve(listener, shared).await
}

/// Serve HTTP route `route` on `listener`: every request is classified (route, path, method,
/// `Host`) and carried to [`Target::Service`] `service` with its headers untouched (see the crate
/// doc on SigV4). Shutdown as in [`serve_proxy`].
pub async fn serve_route(
    listener: TcpListener,
    route: &str,
    service: String,
    ingress: Ingress,
    shutdown: CancellationToken,
) {
    let shared = service::Shared::new(
        service::Mode::Route {
            route: route.to_owned(),
            service,
        },
        ingress,
        shutdown,
    );
    service::serve(listener, shared).await
}

/// Per-class counters for a classifier, wrapped for this crate: see [`HttpStats::new`].
pub fn new_stats(classifier: &Classifier) -> Arc<HttpStats> {
    Arc::new(HttpStats::new(ClassStats::new(classifier)))
}
