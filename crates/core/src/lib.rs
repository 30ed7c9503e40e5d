//! The core role: accepts tunnels from edges (mutual TLS), checks each flow's service against
//! its own table and connects only to upstreams it declares.
//!
//! Owns the `[core]` config section's behaviour. Never initiates a tunnel and never connects to
//! an address an edge names: an edge names a *service*, the core maps it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strait_admin::{Direction, LimitReason, Metrics, TunnelSnapshot};
use strait_chunk::{ChunkHasher, ChunkerConfig};
use strait_config::{Config, Service};
use strait_store::{PeerSlot, Store};
use strait_transport::endpoint::key_fingerprint;
use strait_transport::flow::{self, FlowError};
use strait_transport::guard::{catch_panic, StreamGuard, TcpResetGuard};
use strait_wire::{Frame, FrameDecoder, RefuseCode, PROTOCOL_VERSION};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Longest an edge may take to send its `Hello` after the handshake.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC application close code of a connection refused by `limits.max_connections_per_edge`.
pub const CLOSE_TOO_MANY_CONNECTIONS: u32 = 5;

/// Errors starting a core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config has no `[core]` section.
    #[error("config has no [core] section")]
    NotCore,
    /// The transport could not start.
    #[error(transparent)]
    Transport(#[from] strait_transport::Error),
    /// Chunker settings rejected.
    #[error("dedup chunk sizes: {0}")]
    Chunker(String),
    /// Classes and rules rejected.
    #[error("policy: {0}")]
    Policy(String),
    /// An `http(s)://` upstream or its CA file is not usable.
    #[error("core.service upstream: {0}")]
    Upstream(String),
}

/// Live tunnels, for the metrics probe.
struct Tunnels {
    fec: Arc<strait_fec::FecStats>,
    live: Mutex<HashMap<usize, quinn::Connection>>,
    closed_tx: AtomicU64,
    closed_rx: AtomicU64,
    closed_lost: AtomicU64,
}

impl Tunnels {
    fn snapshot(&self) -> TunnelSnapshot {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = TunnelSnapshot {
            connections: live.len() as u64,
            wan_tx_bytes: self.closed_tx.load(Relaxed)
                + strait_transport::endpoint::fec_tx_overhead(&self.fec),
            wan_rx_bytes: self.closed_rx.load(Relaxed),
            lost_packets: self.closed_lost.load(Relaxed),
            ..Default::default()
        };
        let mut first = true;
        for c in live.values() {
            let st = c.stats();
            s.wan_tx_bytes += st.udp_tx.bytes;
            s.wan_rx_bytes += st.udp_rx.bytes;
            s.lost_packets += st.path.lost_packets;
            if first {
                s.rtt_seconds = st.path.rtt.as_secs_f64();
                s.cwnd_bytes = st.path.cwnd;
                first = false;
            }
        }
        s
    }

    fn remove(&self, id: usize) {
        if let Some(c) = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            let st = c.stats();
            self.closed_tx.fetch_add(st.udp_tx.bytes, Relaxed);
            self.closed_rx.fetch_add(st.udp_rx.bytes, Relaxed);
            self.closed_lost.fetch_add(st.path.lost_packets, Relaxed);
        }
    }
}

/// What one edge identity holds at this core, for the per-edge limits.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    connections: u32,
    flows: u32,
}

/// Which per-edge count a [`EdgeSlot`] holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Connection,
    Flow,
}

/// Connections and flows per edge identity (certificate name). An entry exists only while its
/// edge holds something, so the map is bounded by what is open. The `Notify` wakes the streams
/// waiting for a flow slot whenever a slot is freed.
#[derive(Default)]
struct PerEdge(Mutex<HashMap<String, Held>>, tokio::sync::Notify);

impl PerEdge {
    /// Takes one `kind` slot for `edge` if it holds fewer than `max`.
    fn take(self: &Arc<Self>, edge: &str, kind: Kind, max: u32) -> Option<EdgeSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let held = m.entry(edge.to_string()).or_default();
        let n = match kind {
            Kind::Connection => &mut held.connections,
            Kind::Flow => &mut held.flows,
        };
        if *n >= max {
            if held.connections == 0 && held.flows == 0 {
                m.remove(edge);
            }
            return None;
        }
        *n += 1;
        Some(EdgeSlot {
            per_edge: self.clone(),
            edge: edge.to_string(),
            kind,
        })
    }

    /// [`PerEdge::take`], waiting until `deadline` for a slot to free: the flows a reconnecting
    /// client left may take a moment to close here after its edge has let them go.
    async fn take_by(
        self: &Arc<Self>,
        edge: &str,
        kind: Kind,
        max: u32,
        deadline: tokio::time::Instant,
    ) -> Option<EdgeSlot> {
        loop {
            let freed = self.1.notified();
            tokio::pin!(freed);
            // Registered before the check: a slot freed in between still wakes us.
            freed.as_mut().enable();
            if let Some(slot) = self.take(edge, kind, max) {
                return Some(slot);
            }
            tokio::time::timeout_at(deadline, freed).await.ok()?;
        }
    }
}

/// One connection or flow counted against its edge until dropped.
struct EdgeSlot {
    per_edge: Arc<PerEdge>,
    edge: String,
    kind: Kind,
}

impl Drop for EdgeSlot {
    fn drop(&mut self) {
        let mut m = self.per_edge.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = m.get_mut(&self.edge) {
            match self.kind {
                Kind::Connection => held.connections = held.connections.saturating_sub(1),
                Kind::Flow => held.flows = held.flows.saturating_sub(1),
            }
            if held.connections == 0 && held.flows == 0 {
                m.remove(&self.edge);
            }
        }
        drop(m);
        self.per_edge.1.notify_waiters();
    }
}

struct Shared {
    per_edge: Arc<PerEdge>,
    /// Each edge identity's share of the flow budget (`limits.edge_flow_budget`), a child of the
    /// engine's process budget. One entry per identity the store tracks (bounded by its peer
    /// slots).
    edge_budgets: Mutex<HashMap<String, strait_dedup::Budget>>,
    upstreams: HashMap<String, strait_http::Upstream>,
    proxy_allow: Vec<(strait_classify::Glob, strait_classify::Glob)>,
    engine: flow::Engine,
    classifier: Arc<strait_classify::Classifier>,
    classes: Arc<strait_classify::ClassStats>,
    cfg: Config,
    services: HashMap<String, Service>,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    flows: TaskTracker,
    tunnels: Tunnels,
}

/// A bound core, ready to run.
pub struct Core {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
}

impl Core {
    /// Binds the tunnel endpoint. The store is opened by the caller (so tests can share it).
    pub fn bind(cfg: Config, metrics: Arc<Metrics>, store: Arc<Store>) -> Result<Core, Error> {
        let core = cfg.core.clone().ok_or(Error::NotCore)?;
        let fec = Arc::new(strait_fec::FecStats::default());
        let endpoint = strait_transport::endpoint::server_endpoint(
            core.listen,
            &cfg.tls,
            &cfg.tunnel,
            fec.clone(),
        )?;
        let fec_stats = fec.clone();
        if cfg.tunnel.fec != strait_config::Fec::Off {
            metrics.add_extra(move || strait_transport::endpoint::fec_families(&fec));
        }
        let chunker = ChunkerConfig::new(
            cfg.dedup.min_chunk,
            cfg.dedup.avg_chunk,
            cfg.dedup.max_chunk,
        )
        .map_err(|e| Error::Chunker(e.to_string()))?;
        let classifier = Arc::new(
            strait_classify::Classifier::new(cfg.policy.clone())
                .map_err(|e| Error::Policy(e.to_string()))?,
        );
        let classes = Arc::new(strait_classify::ClassStats::new(&classifier));
        let c2 = classes.clone();
        metrics.add_extra(move || strait_transport::classes::class_families(&c2));
        let mut upstreams = HashMap::new();
        for s in &core.services {
            if s.upstream.starts_with("http://") || s.upstream.starts_with("https://") {
                let u = strait_http::Upstream::parse(&s.upstream, core.upstream_ca.as_deref())
                    .map_err(|e| Error::Upstream(format!("service {:?}: {e}", s.name)))?
                    .with_keepalive(cfg.limits.tcp_keepalive);
                upstreams.insert(s.name.clone(), u);
            }
        }
        let proxy_allow = core
            .proxy_allow
            .iter()
            .filter_map(|g| g.rsplit_once(':'))
            .map(|(h, p)| {
                (
                    strait_classify::Glob::new_case_insensitive(h),
                    strait_classify::Glob::new(p),
                )
            })
            .collect();
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
            per_edge: Arc::new(PerEdge::default()),
            edge_budgets: Mutex::new(HashMap::new()),
            upstreams,
            proxy_allow,
            classifier,
            classes,
            services: core
                .services
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            cfg,
            metrics: metrics.clone(),
            store,
            flows: TaskTracker::new(),
            tunnels: Tunnels {
                fec: fec_stats,
                live: Mutex::new(HashMap::new()),
                closed_tx: AtomicU64::new(0),
                closed_rx: AtomicU64::new(0),
                closed_lost: AtomicU64::new(0),
            },
        });
        let s2 = shared.clone();
        metrics.set_tunnel_probe(move || s2.tunnels.snapshot());
        metrics.set_ready_probe(|| true);
        Ok(Core { shared, endpoint })
    }

    /// The UDP address the tunnel endpoint listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then drains open flows for up to the configured
    /// drain timeout and closes every tunnel.
    pub async fn run(self, shutdown: CancellationToken) {
        let Core { shared, endpoint } = self;
        let mut next_id = 0usize;
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = endpoint.accept() => match i { Some(i) => i, None => break },
            };
            next_id += 1;
            let id = next_id;
            let sh = shared.clone();
            let remote = incoming.remote_address();
            let stop = shutdown.clone();
            tokio::spawn(
                async move { serve_connection(sh, incoming, id, stop).await }
                    .instrument(tracing::info_span!("tunnel", %remote)),
            );
        }
        endpoint.set_server_config(None);
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
        endpoint.close(quinn::VarInt::from_u32(0), b"core shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        shared.engine.deltas.save_hints(&shared.store);
        if let Err(e) = shared.store.flush() {
            tracing::warn!(error = %e, "chunk store flush failed");
        }
    }
}

async fn serve_connection(
    sh: Arc<Shared>,
    incoming: quinn::Incoming,
    id: usize,
    shutdown: CancellationToken,
) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            sh.metrics.handshake_failures.fetch_add(1, Relaxed);
            tracing::warn!(error = %e, "tunnel handshake failed");
            return;
        }
    };
    let edge = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().and_then(strait_transport::tls::peer_name));
    let Some(edge) = edge else {
        sh.metrics.handshake_failures.fetch_add(1, Relaxed);
        tracing::warn!("edge certificate carries no name; closing");
        conn.close(quinn::VarInt::from_u32(2), b"certificate without a name");
        return;
    };
    let max_conns = sh.cfg.limits.max_connections_per_edge;
    let Some(_conn_slot) = sh.per_edge.take(&edge, Kind::Connection, max_conns) else {
        sh.metrics.limit_reset(LimitReason::ConnectionsPerEdge);
        let reason =
            format!("limits.max_connections_per_edge ({max_conns}) reached for edge {edge:?}");
        tracing::warn!(%edge, max = max_conns, "tunnel refused: too many connections from this edge");
        conn.close(
            quinn::VarInt::from_u32(CLOSE_TOO_MANY_CONNECTIONS),
            reason.as_bytes(),
        );
        return;
    };
    let span = tracing::info_span!("edge", name = %edge);
    async move {
        let peer = match sh.store.peer_slot(&edge) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot track this edge in the chunk store");
                conn.close(quinn::VarInt::from_u32(3), b"core cannot track more edges");
                return;
            }
        };
        // Control stream: version and dedup key check.
        let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
            let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
            let mut fd = FrameDecoder::new();
            let f = flow::read_frame(&mut recv, &mut fd, None)
                .await
                .map_err(|e| e.to_string())?;
            let refuse = |code, reason: String| Frame::Refuse { code, reason };
            let reply = match f {
                Some(Frame::Hello {
                    version,
                    key_fingerprint: fp,
                    max_chunk,
                }) => {
                    if version != PROTOCOL_VERSION {
                        Err(refuse(
                            RefuseCode::Version,
                            format!("core speaks protocol {PROTOCOL_VERSION}, edge {version}"),
                        ))
                    } else if fp != key_fingerprint(&sh.cfg.dedup.key) {
                        Err(refuse(
                            RefuseCode::KeyMismatch,
                            "dedup key differs between edge and core (dedup.key_file)".into(),
                        ))
                    } else {
                        // The edge's flows are held to the max chunk it announced.
                        sh.engine.peers.set_max_chunk(peer, max_chunk);
                        Ok(Frame::HelloOk {
                            version: PROTOCOL_VERSION,
                            max_chunk: sh.cfg.dedup.max_chunk as u32,
                        })
                    }
                }
                _ => Err(refuse(RefuseCode::Other, "expected Hello".into())),
            };
            let mut out = bytes::BytesMut::new();
            match &reply {
                Ok(f) | Err(f) => f.encode(&mut out),
            }
            send.write_all(&out).await.map_err(|e| e.to_string())?;
            match reply {
                Ok(_) => Ok((send, recv)),
                Err(Frame::Refuse { reason, .. }) => Err(reason),
                Err(_) => Err("refused".into()),
            }
        })
        .await;
        let _control = match hello {
            Ok(Ok(c)) => c,
            Ok(Err(reason)) => {
                tracing::warn!(%reason, "tunnel refused");
                sh.metrics.handshake_failures.fetch_add(1, Relaxed);
                // Give the refusal a moment to reach the edge before closing.
                tokio::time::sleep(Duration::from_millis(100)).await;
                conn.close(quinn::VarInt::from_u32(4), reason.as_bytes());
                return;
            }
            Err(_) => {
                tracing::warn!("edge sent no Hello in time");
                conn.close(quinn::VarInt::from_u32(4), b"no hello");
                return;
            }
        };
        tracing::info!(rtt = ?conn.rtt(), "tunnel up");
        sh.metrics.tunnel_connects.fetch_add(1, Relaxed);
        sh.tunnels
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, conn.clone());
        let tunnel_flows = Arc::new(tokio::sync::Semaphore::new(sh.cfg.tunnel.max_flows as usize));
        loop {
            let (send, recv) = tokio::select! {
                _ = shutdown.cancelled() => break,
                s = conn.accept_bi() => match s {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::info!(reason = %e, "tunnel closed");
                        break;
                    }
                },
            };
            // From here on, every way out but a completed flow resets the stream.
            let stream = StreamGuard::new(send, recv);
            // The wait for a flow slot and for the `Open` share one deadline: a stream that
            // sends nothing is reset `open_timeout` after it arrived, whatever it waited on.
            let open_by = tokio::time::Instant::now() + sh.cfg.limits.open_timeout;
            let (sh2, edge2, tunnel_flows) = (sh.clone(), edge.clone(), tunnel_flows.clone());
            sh.flows.spawn(
                async move {
                    let metrics = sh2.metrics.clone();
                    // A flow beyond `tunnel.max_flows` on this connection (QUIC's stream credit
                    // is a little above it, see `endpoint::stream_credit`) or beyond
                    // `limits.max_flows_per_edge` waits, until its Open deadline, for a slot:
                    // flows the edge already let go may still be closing here. Then it is reset.
                    let Ok(Ok(tunnel_slot)) =
                        tokio::time::timeout_at(open_by, tunnel_flows.acquire_owned()).await
                    else {
                        metrics.limit_reset(LimitReason::FlowsPerTunnel);
                        tracing::warn!(edge = %edge2, max = sh2.cfg.tunnel.max_flows, "flow reset: tunnel.max_flows reached on this connection");
                        return;
                    };
                    let max_flows = sh2.cfg.limits.max_flows_per_edge;
                    let Some(flow_slot) = sh2
                        .per_edge
                        .take_by(&edge2, Kind::Flow, max_flows, open_by)
                        .await
                    else {
                        metrics.limit_reset(LimitReason::FlowsPerEdge);
                        tracing::warn!(edge = %edge2, max = max_flows, "flow reset: limits.max_flows_per_edge reached");
                        return;
                    };
                    catch_panic(serve_flow(sh2, stream, peer, &edge2, open_by), &metrics).await;
                    drop(flow_slot);
                    drop(tunnel_slot);
                }
                .instrument(tracing::info_span!("flow")),
            );
        }
        sh.tunnels.remove(id);
    }
    .instrument(span)
    .await
}

/// A connected upstream: plain TCP (reset with RST on failure) or an `http(s)://` upstream
/// (TLS originated here when the service's upstream is `https://`).
enum UpstreamConn {
    Tcp(tokio::net::TcpStream),
    Http(Box<dyn strait_http::AsyncStream>),
}

/// Service names with this prefix come from an edge's HTTP proxy: `proxy:host:port`.
pub const PROXY_SERVICE_PREFIX: &str = "proxy:";

impl Shared {
    /// `edge`'s share of the process flow budget, created on first use.
    fn edge_budget(&self, edge: &str) -> strait_dedup::Budget {
        let mut m = self.edge_budgets.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(edge.to_string())
            .or_insert_with(|| self.engine.budget.child(self.cfg.limits.edge_flow_budget))
            .clone()
    }

    fn proxy_allowed(&self, origin: &str) -> bool {
        let Some((host, port)) = origin.rsplit_once(':') else {
            return false;
        };
        self.proxy_allow
            .iter()
            .any(|(h, p)| h.matches(host) && p.matches(port))
    }
}

/// Refuses a flow: says why on the stream, finishes it and stops reading the edge's side.
async fn refuse(stream: &mut StreamGuard, code: RefuseCode, reason: &str) {
    let mut out = bytes::BytesMut::new();
    Frame::Refuse {
        code,
        reason: reason.to_string(),
    }
    .encode(&mut out);
    let s = &mut **stream;
    let _ = s.send.write_all(&out).await;
    let _ = s.send.finish();
    let _ = s.recv.stop(quinn::VarInt::from_u32(flow::RESET_CODE));
    // A refusal is an answer, not a failure: the finished stream must not be reset.
    stream.disarm();
}

async fn serve_flow(
    sh: Arc<Shared>,
    mut stream: StreamGuard,
    peer: PeerSlot,
    edge: &str,
    open_by: tokio::time::Instant,
) {
    let mut fd = FrameDecoder::new();
    let open_timeout = sh.cfg.limits.open_timeout;
    let first = flow::read_frame(&mut stream.recv, &mut fd, None);
    let open = match tokio::time::timeout_at(open_by, first).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::warn!(%edge, error = %e, "flow open failed");
            return;
        }
        Err(_) => {
            sh.metrics.limit_reset(LimitReason::OpenTimeout);
            tracing::warn!(%edge, ?open_timeout, "flow reset: no Open within limits.open_timeout");
            return;
        }
    };
    let Frame::Open { service, route } = open else {
        tracing::warn!("flow did not start with Open");
        refuse(&mut stream, RefuseCode::Other, "expected Open").await;
        return;
    };
    // An edge HTTP proxy names its origin; the core reaches it only if proxy_allow lists it.
    let proxied = service
        .strip_prefix(PROXY_SERVICE_PREFIX)
        .map(str::to_string);
    let svc = match &proxied {
        Some(origin) => {
            if !sh.proxy_allowed(origin) {
                sh.metrics.refused_flows.fetch_add(1, Relaxed);
                tracing::warn!(%edge, %origin, %route, "refused: proxy origin is not in core.proxy_allow");
                refuse(
                    &mut stream,
                    RefuseCode::Denied,
                    &format!("origin {origin:?} is not in this core's proxy_allow list"),
                )
                .await;
                return;
            }
            Service {
                name: route.clone(),
                upstream: origin.clone(),
                policy: strait_config::RoutePolicy {
                    dedup: true,
                    delta: true,
                    compression: Some(strait_config::DEFAULT_COMPRESSION_LEVEL),
                },
            }
        }
        None => match sh.services.get(&service).cloned() {
            Some(s) => s,
            None => {
                sh.metrics.refused_flows.fetch_add(1, Relaxed);
                tracing::warn!(%edge, %service, %route, "refused: service is not declared by this core");
                refuse(
                    &mut stream,
                    RefuseCode::UnknownService,
                    &format!("service {service:?} is not declared by this core"),
                )
                .await;
                return;
            }
        },
    };
    let verdict = sh.classifier.classify(&strait_classify::FlowInfo {
        route: &svc.name,
        host: None,
        path: None,
        method: None,
        prefix: None,
    });
    let class = sh.classifier.class(verdict.class).name.clone();
    let counters = sh.classes.get(verdict.class);
    counters.record_verdict(&verdict, false);
    if verdict.action == strait_classify::Action::Deny {
        sh.metrics.refused_flows.fetch_add(1, Relaxed);
        tracing::warn!(%edge, %service, %class, "flow denied by policy");
        refuse(
            &mut stream,
            RefuseCode::Denied,
            &format!("class {class:?} is denied by the core's policy"),
        )
        .await;
        return;
    }
    let policy = strait_transport::classes::effective_policy(svc.policy, &verdict);
    let _ = stream.send.set_priority(verdict.priority);
    let timeout = sh
        .cfg
        .core
        .as_ref()
        .map(|c| c.upstream_connect_timeout)
        .unwrap_or(Duration::from_secs(10));
    let connect = async {
        match sh.upstreams.get(&svc.name).filter(|_| proxied.is_none()) {
            Some(u) => u.connect().await.map(UpstreamConn::Http),
            None => tokio::net::TcpStream::connect(&svc.upstream)
                .await
                .map(|tcp| {
                    let _ = tcp.set_nodelay(true);
                    strait_admin::listen::set_keepalive(&tcp, sh.cfg.limits.tcp_keepalive);
                    UpstreamConn::Tcp(tcp)
                }),
        }
    };
    let upstream = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            sh.metrics.refused_flows.fetch_add(1, Relaxed);
            tracing::warn!(%service, upstream = %svc.upstream, error = %e, "upstream unreachable");
            refuse(
                &mut stream,
                RefuseCode::UpstreamUnreachable,
                &format!("upstream {} of service {service:?}: {e}", svc.upstream),
            )
            .await;
            return;
        }
        Err(_) => {
            sh.metrics.refused_flows.fetch_add(1, Relaxed);
            tracing::warn!(%service, upstream = %svc.upstream, "upstream connect timed out");
            refuse(
                &mut stream,
                RefuseCode::UpstreamUnreachable,
                &format!(
                    "upstream {} of service {service:?}: connect timed out",
                    svc.upstream
                ),
            )
            .await;
            return;
        }
    };
    let mut out = bytes::BytesMut::new();
    Frame::OpenOk.encode(&mut out);
    if stream.send.write_all(&out).await.is_err() {
        return;
    }
    let tx_stats = sh.metrics.route(&svc.name, Direction::Download);
    let rx_stats = sh.metrics.route(&svc.name, Direction::Upload);
    tx_stats.flows.fetch_add(1, Relaxed);
    let _open = sh.metrics.open_flow();
    let parts = sh.engine.parts(flow::FlowSpec {
        route: &svc.name,
        sending: Direction::Download,
        peer,
        policy,
        rate_limit: verdict.rate_limit,
        tx_stats,
        rx_stats,
        prefix: fd,
        expect_open_ok: false,
        budget: Some(sh.edge_budget(edge)),
    });
    let totals = flow::FlowTotals::default();
    let s = &mut *stream;
    let result = match upstream {
        UpstreamConn::Tcp(tcp) => {
            // Reset (RST) on every way out but a completed flow, a panic included.
            let mut tcp = TcpResetGuard::new(tcp);
            let r = flow::pump_stream(&mut *tcp, &mut s.send, &mut s.recv, parts, &totals, |_| {})
                .await;
            if r.is_ok() {
                tcp.disarm();
            }
            r
        }
        UpstreamConn::Http(up) => {
            flow::pump_stream(up, &mut s.send, &mut s.recv, parts, &totals, |_| {}).await
        }
    };
    if result.is_ok() {
        stream.disarm();
    }
    counters.add_bytes(
        totals.tx_logical.load(Relaxed) + totals.rx_logical.load(Relaxed),
        totals.tx_wan.load(Relaxed) + totals.rx_wan.load(Relaxed),
    );
    match result {
        Ok(()) => tracing::debug!(%service, "flow done"),
        Err(e) => {
            sh.metrics.flow_errors.fetch_add(1, Relaxed);
            if let Some(r) = e.limit_reason() {
                sh.metrics.limit_reset(r);
                tracing::warn!(%edge, %service, reason = r.as_str(), "flow reset: a bound was exceeded");
            }
            match e {
                FlowError::Client(_) => {
                    tracing::info!(%service, error = %e, "flow reset by upstream")
                }
                _ => tracing::warn!(%service, error = %e, "flow failed"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flow_waiting_for_a_per_edge_slot_gets_the_one_freed_and_gives_up_at_its_deadline() {
        let per = Arc::new(PerEdge::default());
        let held = per.take("a", Kind::Flow, 1).unwrap();
        assert!(per.take("a", Kind::Flow, 1).is_none());
        // Another identity is not held back.
        let other = per.take("b", Kind::Flow, 1).unwrap();
        // No slot frees: the wait ends empty at its deadline.
        let t = tokio::time::Instant::now();
        assert!(per
            .take_by("a", Kind::Flow, 1, t + Duration::from_millis(50))
            .await
            .is_none());
        assert!(t.elapsed() >= Duration::from_millis(50));
        // A slot freed while a flow waits is its.
        let waiter = tokio::spawn({
            let per = per.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                per.take_by("a", Kind::Flow, 1, deadline).await.is_some()
            }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.unwrap());
        drop(other);
        // Every slot dropped: no entry is left behind.
        assert!(per.0.lock().unwrap().is_empty());
    }
}
