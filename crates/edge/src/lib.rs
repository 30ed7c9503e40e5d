//! The edge role: listens where pipelines connect, keeps one tunnel to the core up (reconnecting
//! with backoff), and carries each accepted TCP connection as one QUIC stream.
//!
//! Owns the `[edge]` config section's behaviour. Never connects anywhere but its core: what a
//! forward reaches is decided by the core's service table.

mod pipe;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strait_admin::{Direction, Metrics, TunnelSnapshot};
use strait_chunk::{ChunkHasher, ChunkerConfig};
use strait_config::{Config, Forward, ForwardKind, RoutePolicy};

/// Service names with this prefix ask the core for an HTTP proxy origin (`proxy:host:port`);
/// declared service names cannot contain ':'.
pub const PROXY_SERVICE_PREFIX: &str = "proxy:";
use strait_store::{PeerSlot, Store};
use strait_transport::endpoint::key_fingerprint;
use strait_transport::flow::{self, FlowError, FlowParts};
use strait_transport::guard::{catch_panic, StreamGuard, TcpResetGuard};
use strait_wire::{Frame, FrameDecoder, PROTOCOL_VERSION};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Errors starting an edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config has no `[edge]` section.
    #[error("config has no [edge] section")]
    NotEdge,
    /// A forward's listen address could not be bound.
    #[error("edge.forward {name:?}: cannot listen on {addr}: {source}")]
    Listen {
        /// Forward name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The transport could not start.
    #[error(transparent)]
    Transport(#[from] strait_transport::Error),
    /// The chunk store refused this peer.
    #[error("chunk store: {0}")]
    Store(String),
    /// Chunker settings rejected.
    #[error("dedup chunk sizes: {0}")]
    Chunker(String),
    /// Classes and rules rejected.
    #[error("policy: {0}")]
    Policy(String),
}

/// Why a flow could not be carried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The tunnel stayed down for the whole wait.
    #[error("tunnel to the core is down (waited {0:?})")]
    TunnelDown(Duration),
    /// Opening the stream failed.
    #[error("opening a stream: {0}")]
    Stream(String),
    /// The core granted no stream (QUIC stream credit) within `limits.open_timeout`.
    #[error("the core allowed no new stream within {0:?} (tunnel.max_flows streams open)")]
    NoStreamCredit(Duration),
}

struct Shared {
    engine: flow::Engine,
    classifier: Arc<strait_classify::Classifier>,
    classes: Arc<strait_classify::ClassStats>,
    http: Arc<strait_http::HttpStats>,
    fec: Arc<strait_fec::FecStats>,
    cfg: Config,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    peer: PeerSlot,
    tunnel: watch::Receiver<Option<quinn::Connection>>,
    flows: TaskTracker,
    closed_tx: AtomicU64,
    closed_rx: AtomicU64,
    current: Mutex<Option<quinn::Connection>>,
}

/// A bound edge, ready to run.
pub struct Edge {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    listeners: Vec<(Forward, TcpListener)>,
    proxies: Vec<(strait_config::Proxy, TcpListener)>,
    tunnel_tx: watch::Sender<Option<quinn::Connection>>,
}

/// Resolves `host:port`, preferring the first address.
async fn resolve(hp: &str) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(hp).await?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{hp} resolves to no address"),
        )
    })
}

impl Edge {
    /// Binds every forward's listener and the QUIC client endpoint.
    pub async fn bind(
        cfg: Config,
        metrics: Arc<Metrics>,
        store: Arc<Store>,
    ) -> Result<Edge, Error> {
        let edge = cfg.edge.clone().ok_or(Error::NotEdge)?;
        let mut listeners = Vec::new();
        for f in &edge.forwards {
            let l = listen(f.listen).map_err(|source| Error::Listen {
                name: f.name.clone(),
                addr: f.listen,
                source,
            })?;
            listeners.push((f.clone(), l));
        }
        let mut proxies = Vec::new();
        for p in &edge.proxies {
            let l = listen(p.listen).map_err(|source| Error::Listen {
                name: p.name.clone(),
                addr: p.listen,
                source,
            })?;
            proxies.push((p.clone(), l));
        }
        let core_addr = resolve(&edge.core).await.map_err(|e| {
            Error::Transport(strait_transport::Error::Io {
                context: format!("resolving edge.core {}", edge.core),
                source: e,
            })
        })?;
        let fec = Arc::new(strait_fec::FecStats::default());
        let endpoint = strait_transport::endpoint::client_endpoint(
            core_addr,
            &cfg.tls,
            &cfg.tunnel,
            fec.clone(),
        )?;
        let fec_stats = fec.clone();
        if cfg.tunnel.fec != strait_config::Fec::Off {
            metrics.add_extra(move || strait_transport::endpoint::fec_families(&fec));
        }
        let peer = store
            .peer_slot(&format!("core@{}", edge.server_name))
            .map_err(|e| Error::Store(e.to_string()))?;
        let chunker = ChunkerConfig::new(
            cfg.dedup.min_chunk,
            cfg.dedup.avg_chunk,
            cfg.dedup.max_chunk,
        )
        .map_err(|e| Error::Chunker(e.to_string()))?;
        let (tunnel_tx, tunnel_rx) = watch::channel(None);
        let classifier = Arc::new(
            strait_classify::Classifier::new(cfg.policy.clone())
                .map_err(|e| Error::Policy(e.to_string()))?,
        );
        // One set of class counters for TCP flows and HTTP requests alike (clones share them).
        let http = strait_http::new_stats(&classifier);
        let classes = Arc::new(http.classes.clone());
        let c2 = classes.clone();
        metrics.add_extra(move || strait_transport::classes::class_families(&c2));
        let h2 = http.clone();
        metrics.add_extra(move || h2.metric_families());
        let deltas = strait_transport::deltas::Deltas::new(cfg.dedup.sketch_index_bytes);
        deltas.load_hints(&store);
        let d2 = deltas.clone();
        metrics.add_extra(move || d2.families());
        let budget = strait_dedup::Budget::new(cfg.limits.flow_budget);
        let b2 = budget.clone();
        metrics.add_extra(move || flow::budget_families(&b2));
        let shared = Arc::new(Shared {
            engine: flow::Engine {
                hasher: ChunkHasher::new(cfg.dedup.key),
                chunker,
                store: store.clone(),
                dedup: cfg.dedup.clone(),
                deltas,
                budget,
                idle_timeout: cfg.limits.flow_idle_timeout,
                peers: Default::default(),
            },
            classifier,
            classes,
            http,
            fec: fec_stats,
            cfg,
            metrics: metrics.clone(),
            store,
            peer,
            tunnel: tunnel_rx,
            flows: TaskTracker::new(),
            closed_tx: AtomicU64::new(0),
            closed_rx: AtomicU64::new(0),
            current: Mutex::new(None),
        });
        let s2 = shared.clone();
        metrics.set_tunnel_probe(move || s2.snapshot());
        let s3 = shared.clone();
        metrics.set_ready_probe(move || s3.tunnel.borrow().is_some());
        Ok(Edge {
            shared,
            endpoint,
            listeners,
            proxies,
            tunnel_tx,
        })
    }

    /// The addresses the forwards listen on, by forward name.
    pub fn forward_addrs(&self) -> Vec<(String, SocketAddr)> {
        let fwd = self
            .listeners
            .iter()
            .filter_map(|(f, l)| l.local_addr().ok().map(|a| (f.name.clone(), a)));
        let prx = self
            .proxies
            .iter()
            .filter_map(|(p, l)| l.local_addr().ok().map(|a| (p.name.clone(), a)));
        fwd.chain(prx).collect()
    }

    /// Serves until `shutdown` is cancelled, then drains open flows and closes the tunnel.
    pub async fn run(self, shutdown: CancellationToken) {
        let Edge {
            shared,
            endpoint,
            listeners,
            proxies,
            tunnel_tx,
        } = self;
        let tunnel_task = tokio::spawn(
            maintain_tunnel(
                shared.clone(),
                endpoint.clone(),
                tunnel_tx,
                shutdown.clone(),
            )
            .instrument(tracing::info_span!("tunnel")),
        );
        let limit = Arc::new(Semaphore::new(shared.cfg.tunnel.max_flows as usize));
        let mut accept_tasks = Vec::new();
        for (p, listener) in proxies {
            let connector = Arc::new(TunnelConnector {
                sh: shared.clone(),
                route: p.name.clone(),
                policy: RoutePolicy {
                    dedup: true,
                    delta: true,
                    compression: Some(strait_config::DEFAULT_COMPRESSION_LEVEL),
                },
            });
            let span = tracing::info_span!("proxy", name = %p.name, listen = %p.listen);
            accept_tasks.push(tokio::spawn(
                strait_http::serve_proxy(listener, shared.ingress(connector), shutdown.clone())
                    .instrument(span),
            ));
        }
        for (fwd, listener) in listeners {
            if fwd.kind == ForwardKind::Http {
                let connector = Arc::new(TunnelConnector {
                    sh: shared.clone(),
                    route: fwd.name.clone(),
                    policy: fwd.policy,
                });
                let span = tracing::info_span!("route", name = %fwd.name, listen = %fwd.listen);
                let (sh, stop) = (shared.clone(), shutdown.clone());
                accept_tasks.push(tokio::spawn(
                    async move {
                        let ingress = sh.ingress(connector);
                        strait_http::serve_route(
                            listener,
                            &fwd.name,
                            fwd.service.clone(),
                            ingress,
                            stop,
                        )
                        .await
                    }
                    .instrument(span),
                ));
                continue;
            }
            let sh = shared.clone();
            let stop = shutdown.clone();
            let limit = limit.clone();
            let span = tracing::info_span!("forward", name = %fwd.name, listen = %fwd.listen);
            accept_tasks.push(tokio::spawn(
                async move {
                    let mut backoff = strait_admin::listen::AcceptBackoff::default();
                    loop {
                        // Backpressure: at most max_flows flows; beyond that, leave
                        // connections in the kernel's accept queue.
                        let permit = tokio::select! {
                            _ = stop.cancelled() => break,
                            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                        };
                        let (tcp, client) = tokio::select! {
                            _ = stop.cancelled() => break,
                            a = listener.accept() => match a {
                                Ok(a) => a,
                                Err(e) => {
                                    // EMFILE and friends: back off instead of spinning.
                                    backoff.failed(&e, Some(&sh.metrics)).await;
                                    continue;
                                }
                            },
                        };
                        backoff.reset();
                        strait_admin::listen::set_keepalive(&tcp, sh.cfg.limits.tcp_keepalive);
                        let sh2 = sh.clone();
                        let f2 = fwd.clone();
                        sh.flows.spawn(
                            async move {
                                let metrics = sh2.metrics.clone();
                                catch_panic(carry(sh2, f2, tcp), &metrics).await;
                                drop(permit);
                            }
                            .instrument(tracing::info_span!("flow", %client)),
                        );
                    }
                }
                .instrument(span),
            ));
        }
        shutdown.cancelled().await;
        for t in accept_tasks {
            let _ = t.await;
        }
        shared.flows.close();
        let drain = shared.cfg.drain_timeout;
        if tokio::time::timeout(drain, shared.flows.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = shared.flows.len(),
                ?drain,
                "drain timeout: resetting remaining flows"
            );
        }
        let _ = tunnel_task.await;
        // Flows cut off by the closed tunnel reset their clients; give them a moment to do so.
        let _ = tokio::time::timeout(Duration::from_secs(2), shared.flows.wait()).await;
        endpoint.close(quinn::VarInt::from_u32(0), b"edge shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        shared.engine.deltas.save_hints(&shared.store);
        if let Err(e) = shared.store.flush() {
            tracing::warn!(error = %e, "chunk store flush failed");
        }
    }
}

use strait_admin::listen::bind as listen;
pub use strait_admin::listen::LISTEN_BACKLOG;

impl Shared {
    /// What an HTTP listener of this edge serves with.
    fn ingress(&self, connector: Arc<TunnelConnector>) -> strait_http::Ingress {
        strait_http::Ingress {
            classifier: self.classifier.clone(),
            stats: self.http.clone(),
            connector,
            options: strait_http::IngressOptions {
                header_read_timeout: self.cfg.limits.header_read_timeout,
                tcp_keepalive: self.cfg.limits.tcp_keepalive,
                max_connections: strait_http::MAX_CLIENT_CONNECTIONS,
            },
        }
    }

    fn snapshot(&self) -> TunnelSnapshot {
        let mut s = TunnelSnapshot {
            wan_tx_bytes: self.closed_tx.load(Relaxed)
                + strait_transport::endpoint::fec_tx_overhead(&self.fec),
            wan_rx_bytes: self.closed_rx.load(Relaxed),
            ..Default::default()
        };
        if let Some(c) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let st = c.stats();
            s.wan_tx_bytes += st.udp_tx.bytes;
            s.wan_rx_bytes += st.udp_rx.bytes;
            s.lost_packets = st.path.lost_packets;
            s.rtt_seconds = st.path.rtt.as_secs_f64();
            s.cwnd_bytes = st.path.cwnd;
            s.connections = u64::from(c.close_reason().is_none());
        }
        s
    }

    /// The tunnel, waiting up to `edge.flow_wait` for it to come up.
    async fn connection(&self) -> Result<quinn::Connection, OpenError> {
        let wait = self
            .cfg
            .edge
            .as_ref()
            .map(|e| e.flow_wait)
            .unwrap_or_default();
        let mut rx = self.tunnel.clone();
        let got = tokio::time::timeout(wait, async {
            loop {
                if let Some(c) = rx.borrow_and_update().clone() {
                    if c.close_reason().is_none() {
                        return Some(c);
                    }
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match got {
            Ok(Some(c)) => Ok(c),
            _ => Err(OpenError::TunnelDown(wait)),
        }
    }
}

/// A tunnel and its control stream (kept open for the life of the connection).
type Tunnel = (quinn::Connection, quinn::SendStream, quinn::RecvStream);

async fn connect_once(sh: &Shared, endpoint: &quinn::Endpoint) -> Result<Tunnel, String> {
    let edge = sh.cfg.edge.as_ref().ok_or("no [edge] section")?;
    let addr = resolve(&edge.core)
        .await
        .map_err(|e| format!("resolving {}: {e}", edge.core))?;
    let connecting = endpoint
        .connect(addr, &edge.server_name)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let conn = tokio::time::timeout(edge.connect_timeout, connecting)
        .await
        .map_err(|_| {
            format!(
                "handshake with {addr} timed out after {:?}",
                edge.connect_timeout
            )
        })?
        .map_err(|e| format!("handshake with {addr} ({}) failed: {e}", edge.server_name))?;
    // Control stream: protocol version and dedup key check.
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut out = bytes::BytesMut::new();
    Frame::Hello {
        version: PROTOCOL_VERSION,
        key_fingerprint: key_fingerprint(&sh.cfg.dedup.key),
        max_chunk: sh.cfg.dedup.max_chunk as u32,
    }
    .encode(&mut out);
    send.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut fd = FrameDecoder::new();
    let reply = tokio::time::timeout(
        edge.connect_timeout,
        flow::read_frame(&mut recv, &mut fd, None),
    )
    .await
    .map_err(|_| "core sent no HelloOk in time".to_string())?;
    match reply {
        Ok(Some(Frame::HelloOk { max_chunk, .. })) => {
            // The core's flows are held to the max chunk it announced.
            sh.engine.peers.set_max_chunk(sh.peer, max_chunk);
            Ok((conn, send, recv))
        }
        Ok(Some(Frame::Refuse { reason, .. })) => Err(format!("core refused the tunnel: {reason}")),
        Ok(_) => Err("core closed the control stream".into()),
        Err(e) => Err(format!(
            "control stream: {e}; close reason: {:?}",
            conn.close_reason()
        )),
    }
}

async fn maintain_tunnel(
    sh: Arc<Shared>,
    endpoint: quinn::Endpoint,
    tx: watch::Sender<Option<quinn::Connection>>,
    shutdown: CancellationToken,
) {
    let edge = match sh.cfg.edge.as_ref() {
        Some(e) => e.clone(),
        None => return,
    };
    let mut backoff = edge.reconnect_min;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = connect_once(&sh, &endpoint) => r,
        };
        match attempt {
            Ok((conn, _control_send, _control_recv)) => {
                backoff = edge.reconnect_min;
                sh.metrics.tunnel_connects.fetch_add(1, Relaxed);
                tracing::info!(core = %edge.core, rtt = ?conn.rtt(), "tunnel up");
                *sh.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                let _ = tx.send(Some(conn.clone()));
                let reason = tokio::select! {
                    _ = shutdown.cancelled() => None,
                    r = conn.closed() => Some(r),
                };
                let _ = tx.send(None);
                let st = conn.stats();
                sh.closed_tx.fetch_add(st.udp_tx.bytes, Relaxed);
                sh.closed_rx.fetch_add(st.udp_rx.bytes, Relaxed);
                *sh.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
                match reason {
                    None => {
                        // Let draining flows finish before the tunnel closes, for at most the
                        // drain timeout; closing the connection then fails the rest, and their
                        // pumps reset the client connections (RST), never a clean short EOF.
                        let _ = tokio::time::timeout(sh.cfg.drain_timeout, sh.flows.wait()).await;
                        conn.close(quinn::VarInt::from_u32(0), b"edge shutting down");
                        break;
                    }
                    Some(r) => tracing::warn!(reason = %r, "tunnel down; reconnecting"),
                }
            }
            Err(e) => {
                sh.metrics.handshake_failures.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "tunnel connect failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(edge.reconnect_max);
            }
        }
    }
}

/// A flow opened on the tunnel: its stream and engine, ready to pump.
struct OpenedFlow {
    /// Reset on drop unless the flow completed.
    stream: StreamGuard,
    parts: FlowParts,
    _open: strait_admin::OpenFlow,
}

/// Opens a stream to the core for `service` and builds the flow's engine. The core's answer
/// (`OpenOk` or `Refuse`) is read by the pump, so no round trip is spent here.
async fn open_flow(
    sh: &Arc<Shared>,
    service: &str,
    route: &str,
    policy: RoutePolicy,
    verdict: &strait_classify::Verdict,
) -> Result<OpenedFlow, OpenError> {
    let conn = sh.connection().await?;
    // Bounded: a client must get an error, not wait for ever on a stream the core never grants.
    let wait = sh.cfg.limits.open_timeout;
    let (send, recv) = tokio::time::timeout(wait, conn.open_bi())
        .await
        .map_err(|_| OpenError::NoStreamCredit(wait))?
        .map_err(|e| OpenError::Stream(e.to_string()))?;
    let mut stream = StreamGuard::new(send, recv);
    let send = &mut stream.send;
    let _ = send.set_priority(verdict.priority);
    let tx_stats = sh.metrics.route(route, Direction::Upload);
    let rx_stats = sh.metrics.route(route, Direction::Download);
    let mut out = bytes::BytesMut::new();
    Frame::Open {
        service: service.to_string(),
        route: route.to_string(),
    }
    .encode(&mut out);
    send.write_all(&out)
        .await
        .map_err(|e| OpenError::Stream(e.to_string()))?;
    tx_stats.wan_bytes.fetch_add(out.len() as u64, Relaxed);
    tx_stats.flows.fetch_add(1, Relaxed);
    let parts = sh.engine.parts(flow::FlowSpec {
        route,
        sending: Direction::Upload,
        peer: sh.peer,
        policy,
        rate_limit: verdict.rate_limit,
        tx_stats,
        rx_stats,
        prefix: FrameDecoder::new(),
        expect_open_ok: true,
        budget: None,
    });
    Ok(OpenedFlow {
        stream,
        parts,
        _open: sh.metrics.open_flow(),
    })
}

fn log_flow_result(sh: &Shared, route: &str, service: &str, result: &Result<(), FlowError>) {
    match result {
        Ok(()) => tracing::debug!(%route, "flow done"),
        Err(e) => {
            sh.metrics.flow_errors.fetch_add(1, Relaxed);
            if let Some(r) = e.limit_reason() {
                sh.metrics.limit_reset(r);
                tracing::warn!(%route, %service, reason = r.as_str(), "flow reset: a bound was exceeded");
            }
            match e {
                FlowError::Refused { .. } => {
                    sh.metrics.refused_flows.fetch_add(1, Relaxed);
                    tracing::warn!(%route, %service, error = %e, "core refused the flow")
                }
                FlowError::Client(_) => tracing::info!(%route, error = %e, "flow reset by client"),
                _ => tracing::warn!(%route, error = %e, "flow failed"),
            }
        }
    }
}

async fn carry(sh: Arc<Shared>, fwd: Forward, tcp: TcpStream) {
    let verdict = sh.classifier.classify(&strait_classify::FlowInfo {
        route: &fwd.name,
        host: None,
        path: None,
        method: None,
        prefix: None,
    });
    let class = sh.classifier.class(verdict.class).name.clone();
    let counters = sh.classes.get(verdict.class);
    counters.record_verdict(&verdict, false);
    // Reset (RST) on every way out but a completed flow, a panic included.
    let mut tcp = TcpResetGuard::new(tcp);
    let _ = tcp.set_nodelay(true);
    match verdict.action {
        strait_classify::Action::Deny => {
            sh.metrics.refused_flows.fetch_add(1, Relaxed);
            tracing::warn!(route = %fwd.name, %class, "flow denied by policy");
            return;
        }
        strait_classify::Action::Log => {
            tracing::info!(route = %fwd.name, %class, "flow logged by policy")
        }
        strait_classify::Action::Allow => {}
    }
    let policy = strait_transport::classes::effective_policy(fwd.policy, &verdict);
    let mut f = match open_flow(&sh, &fwd.service, &fwd.name, policy, &verdict).await {
        Ok(f) => f,
        Err(e) => {
            sh.metrics.flow_errors.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, service = %fwd.service, "flow failed before it started");
            return;
        }
    };
    let totals = flow::FlowTotals::default();
    let s = &mut *f.stream;
    let result = flow::pump_stream(
        &mut *tcp,
        &mut s.send,
        &mut s.recv,
        f.parts,
        &totals,
        |_| {},
    )
    .await;
    if result.is_ok() {
        tcp.disarm();
        f.stream.disarm();
    }
    counters.add_bytes(
        totals.tx_logical.load(Relaxed) + totals.rx_logical.load(Relaxed),
        totals.tx_wan.load(Relaxed) + totals.rx_wan.load(Relaxed),
    );
    log_flow_result(&sh, &fwd.name, &fwd.service, &result);
}

/// Bytes buffered between the HTTP layer and a tunnel flow's pump.
pub const HTTP_PIPE_BUF: usize = 256 * 1024;

/// Opens tunnel flows for the HTTP layer: each upstream stream the HTTP layer asks for is an
/// in-process pipe whose other end a flow pump carries to the core.
struct TunnelConnector {
    sh: Arc<Shared>,
    route: String,
    policy: RoutePolicy,
}

impl strait_http::Connector for TunnelConnector {
    fn connect(
        &self,
        target: &strait_http::Target,
        verdict: &strait_classify::Verdict,
    ) -> strait_http::BoxFuture<'static, std::io::Result<Box<dyn strait_http::AsyncStream>>> {
        let sh = self.sh.clone();
        let route = self.route.clone();
        let service = match target {
            strait_http::Target::Service { service } => service.clone(),
            // Proxy flows name their origin; the core checks it against core.proxy_allow.
            strait_http::Target::Origin { host, port } => {
                format!("{PROXY_SERVICE_PREFIX}{host}:{port}")
            }
        };
        let policy = strait_transport::classes::effective_policy(self.policy, verdict);
        let verdict = *verdict;
        Box::pin(async move {
            let mut f = open_flow(&sh, &service, &route, policy, &verdict)
                .await
                .map_err(std::io::Error::other)?;
            // Wait for the core's answer before handing out the stream, so a refusal (origin
            // not allowed, unknown service, upstream down) becomes an HTTP error for the client
            // instead of a "200 Connection established" followed by EOF.
            let mut fd = FrameDecoder::new();
            match flow::read_frame(&mut f.stream.recv, &mut fd, Some(&f.parts.rx_stats)).await {
                Ok(Some(Frame::OpenOk)) => {
                    f.parts.expect_open_ok = false;
                    f.parts.prefix = fd;
                }
                Ok(Some(Frame::Refuse { code, reason })) => {
                    sh.metrics.refused_flows.fetch_add(1, Relaxed);
                    tracing::warn!(%route, %service, ?code, %reason, "core refused the flow");
                    let kind = match code {
                        strait_wire::RefuseCode::Denied => std::io::ErrorKind::PermissionDenied,
                        _ => std::io::ErrorKind::ConnectionRefused,
                    };
                    return Err(std::io::Error::new(
                        kind,
                        format!("core refused {service:?}: {reason}"),
                    ));
                }
                Ok(_) => {
                    return Err(std::io::Error::other(
                        "core answered the flow with neither OpenOk nor Refuse",
                    ))
                }
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            // Not a duplex: its far end dropping would read as a clean EOF to hyper.
            let (near, mut far) = pipe::pipe(HTTP_PIPE_BUF);
            let sh2 = sh.clone();
            let metrics = sh.metrics.clone();
            let flow = async move {
                let totals = flow::FlowTotals::default();
                let s = &mut *f.stream;
                let result =
                    flow::pump_stream(&mut far, &mut s.send, &mut s.recv, f.parts, &totals, |_| {})
                        .await;
                if result.is_ok() {
                    // Otherwise `far` and the stream drop armed: the HTTP layer's reads
                    // fail and the stream is reset.
                    far.complete();
                    f.stream.disarm();
                }
                // The HTTP layer counts logical bytes; the data path adds what crossed the WAN.
                let counters = sh2.classes.get(verdict.class);
                counters.wan_bytes.fetch_add(
                    totals.tx_wan.load(Relaxed) + totals.rx_wan.load(Relaxed),
                    Relaxed,
                );
                log_flow_result(&sh2, &route, &service, &result);
            };
            sh.flows.spawn(
                async move { catch_panic(flow, &metrics).await }
                    .instrument(tracing::info_span!("http-flow")),
            );
            Ok(Box::new(near) as Box<dyn strait_http::AsyncStream>)
        })
    }
}
