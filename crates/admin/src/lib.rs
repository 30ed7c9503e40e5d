//! Statistics and the admin HTTP server: `/live`, `/ready`, `/metrics` (Prometheus text format)
//! and `/stats` (JSON).
//!
//! [`Metrics`] is the one registry a process has; components get handles to their counters from
//! it (`route(name, direction)`), and tests read the same values the server renders. Label values
//! are route names, directions and classes: never a chunk id or a client address.

pub mod listen;
mod server;
pub use server::{serve, AdminOptions, Error};

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Direction of data relative to the sites: `upload` is edge → core, `download` core → edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Edge → core.
    Upload,
    /// Core → edge.
    Download,
}

impl Direction {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// Why a peer's connection or flow was cut off by a limit (the `reason` label of
/// `strait_limit_resets_total`: a closed set, so the label stays bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// A tunnel connection beyond `limits.max_connections_per_edge` was closed.
    ConnectionsPerEdge,
    /// A stream beyond `limits.max_flows_per_edge` was reset.
    FlowsPerEdge,
    /// A stream beyond `tunnel.max_flows` on one connection was reset.
    FlowsPerTunnel,
    /// A stream sent no `Open` within `limits.open_timeout` and was reset.
    OpenTimeout,
    /// A flow stayed silent beyond `limits.flow_idle_timeout` and was reset.
    FlowIdle,
    /// A peer queued more than a flow's receive bound (`2 x dedup.flow_window + max chunk`,
    /// counted honestly per slot) and its flow was reset.
    ReceiveWindow,
    /// A peer sent a chunk, delta or run beyond its announced `max_chunk` or a run cap.
    ChunkLength,
    /// A peer wanted a chunk it was not owed, or more often than the retry budget.
    Wants,
}

impl LimitReason {
    /// Every reason, in label order.
    pub const ALL: [LimitReason; 8] = [
        LimitReason::ConnectionsPerEdge,
        LimitReason::FlowsPerEdge,
        LimitReason::FlowsPerTunnel,
        LimitReason::OpenTimeout,
        LimitReason::FlowIdle,
        LimitReason::ReceiveWindow,
        LimitReason::ChunkLength,
        LimitReason::Wants,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitReason::ConnectionsPerEdge => "connections_per_edge",
            LimitReason::FlowsPerEdge => "flows_per_edge",
            LimitReason::FlowsPerTunnel => "flows_per_tunnel",
            LimitReason::OpenTimeout => "open_timeout",
            LimitReason::FlowIdle => "flow_idle",
            LimitReason::ReceiveWindow => "receive_window",
            LimitReason::ChunkLength => "chunk_length",
            LimitReason::Wants => "wants",
        }
    }
}

/// Distinct (route, direction) pairs one per-route registry keeps. A route name can come from
/// a peer (an edge's proxy route, carried in `Open`), so the label set must be bounded: routes
/// beyond it are counted under [`OVERFLOW_ROUTE`].
pub const MAX_ROUTE_LABELS: usize = 1024;
/// The route label every route beyond [`MAX_ROUTE_LABELS`] shares.
pub const OVERFLOW_ROUTE: &str = "other";

/// The entry of `route` in a per-route registry, created on first use; once the registry holds
/// [`MAX_ROUTE_LABELS`] pairs, new routes share [`OVERFLOW_ROUTE`]'s entry.
pub fn route_entry<T: Default + Clone>(
    m: &mut BTreeMap<(String, Direction), T>,
    route: &str,
    direction: Direction,
) -> T {
    let key = (route.to_string(), direction);
    let key = if m.contains_key(&key) || m.len() < MAX_ROUTE_LABELS {
        key
    } else {
        (OVERFLOW_ROUTE.to_string(), direction)
    };
    m.entry(key).or_default().clone()
}

/// Counters of one route in one direction, as seen by this process.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Bytes of client data (read from the sender's client or delivered to the receiver's).
    pub logical_bytes: AtomicU64,
    /// Frame bytes carried on the tunnel stream for this route and direction (data + control).
    pub wan_bytes: AtomicU64,
    /// Logical bytes that crossed as references instead of data.
    pub dedup_saved_bytes: AtomicU64,
    /// Bytes saved by compressing literals.
    pub compression_saved_bytes: AtomicU64,
    /// Chunks sent or received as references.
    pub ref_chunks: AtomicU64,
    /// Chunks sent or received as literals.
    pub literal_chunks: AtomicU64,
    /// References the receiver could not expand and had to ask for.
    pub misses: AtomicU64,
    /// Chunks that failed verification (never delivered).
    pub verify_failures: AtomicU64,
    /// Flows started.
    pub flows: AtomicU64,
}

/// Snapshot of [`RouteStats`].
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RouteSnapshot {
    /// Route name.
    pub route: String,
    /// Direction.
    pub direction: &'static str,
    /// See [`RouteStats::logical_bytes`].
    pub logical_bytes: u64,
    /// See [`RouteStats::wan_bytes`].
    pub wan_bytes: u64,
    /// See [`RouteStats::dedup_saved_bytes`].
    pub dedup_saved_bytes: u64,
    /// See [`RouteStats::compression_saved_bytes`].
    pub compression_saved_bytes: u64,
    /// See [`RouteStats::ref_chunks`].
    pub ref_chunks: u64,
    /// See [`RouteStats::literal_chunks`].
    pub literal_chunks: u64,
    /// See [`RouteStats::misses`].
    pub misses: u64,
    /// See [`RouteStats::verify_failures`].
    pub verify_failures: u64,
    /// See [`RouteStats::flows`].
    pub flows: u64,
}

/// Tunnel-wide numbers, read from the transport when rendered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TunnelSnapshot {
    /// Tunnels currently up (edge: 0 or 1; core: connected edges).
    pub connections: u64,
    /// UDP bytes sent, all overhead included.
    pub wan_tx_bytes: u64,
    /// UDP bytes received, all overhead included.
    pub wan_rx_bytes: u64,
    /// Smoothed RTT of the (first) tunnel, seconds.
    pub rtt_seconds: f64,
    /// Packets QUIC declared lost.
    pub lost_packets: u64,
    /// Congestion window of the (first) tunnel, bytes.
    pub cwnd_bytes: u64,
}

/// Chunk store numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreSnapshot {
    /// Bytes on disk.
    pub bytes: u64,
    /// Configured bound.
    pub max_bytes: u64,
    /// Entries.
    pub entries: u64,
    /// Lookups that found the chunk.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries evicted.
    pub evictions: u64,
    /// Entries dropped because they failed verification.
    pub corrupt_dropped: u64,
    /// Approximate memory of the index.
    pub index_bytes: u64,
}

/// Extra gauges/counters contributed by a component (FEC, classes): name → (help, kind, samples).
#[derive(Debug, Clone, Serialize)]
pub struct ExtraFamily {
    /// Metric name without the `strait_` prefix.
    pub name: String,
    /// Help text.
    pub help: String,
    /// "counter" or "gauge".
    pub kind: &'static str,
    /// (labels, value).
    pub samples: Vec<(Vec<(String, String)>, f64)>,
}

type Probe<T> = Arc<dyn Fn() -> T + Send + Sync>;

/// The process's metrics registry.
pub struct Metrics {
    role: &'static str,
    routes: Mutex<BTreeMap<(String, Direction), Arc<RouteStats>>>,
    /// Flows currently open.
    pub open_flows: AtomicI64,
    /// TLS/QUIC handshakes that failed.
    pub handshake_failures: AtomicU64,
    /// Flows refused (unknown service, upstream down, policy).
    pub refused_flows: AtomicU64,
    /// Flows that ended with an error (reset).
    pub flow_errors: AtomicU64,
    /// Tunnel connections established since start.
    pub tunnel_connects: AtomicU64,
    /// Failed `accept` calls on any TCP listener (each followed by a backoff pause).
    pub accept_errors: AtomicU64,
    /// Flow tasks that panicked (their stream and client were reset).
    pub flow_panics: AtomicU64,
    limit_resets: [AtomicU64; LimitReason::ALL.len()],
    tunnel: Mutex<Option<Probe<TunnelSnapshot>>>,
    store: Mutex<Option<Probe<StoreSnapshot>>>,
    extra: Mutex<Vec<Probe<Vec<ExtraFamily>>>>,
    ready: Mutex<Option<Probe<bool>>>,
}

/// A guard that counts one open flow until dropped.
pub struct OpenFlow(Arc<Metrics>);

impl Drop for OpenFlow {
    fn drop(&mut self) {
        self.0.open_flows.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    /// A registry for a process of `role` ("edge" or "core").
    pub fn new(role: &'static str) -> Arc<Metrics> {
        Arc::new(Metrics {
            role,
            routes: Mutex::new(BTreeMap::new()),
            open_flows: AtomicI64::new(0),
            handshake_failures: AtomicU64::new(0),
            refused_flows: AtomicU64::new(0),
            flow_errors: AtomicU64::new(0),
            tunnel_connects: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            flow_panics: AtomicU64::new(0),
            limit_resets: Default::default(),
            tunnel: Mutex::new(None),
            store: Mutex::new(None),
            extra: Mutex::new(Vec::new()),
            ready: Mutex::new(None),
        })
    }

    /// Counters of `route` in `direction` (created on first use).
    pub fn route(&self, route: &str, direction: Direction) -> Arc<RouteStats> {
        let mut m = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        route_entry(&mut m, route, direction)
    }

    /// Counts an open flow until the guard drops.
    pub fn open_flow(self: &Arc<Self>) -> OpenFlow {
        self.open_flows.fetch_add(1, Relaxed);
        OpenFlow(self.clone())
    }

    /// Counts a connection or flow cut off by a limit.
    pub fn limit_reset(&self, reason: LimitReason) {
        self.limit_resets[reason as usize].fetch_add(1, Relaxed);
    }

    /// Connections and flows cut off for `reason` since start.
    pub fn limit_resets(&self, reason: LimitReason) -> u64 {
        self.limit_resets[reason as usize].load(Relaxed)
    }

    /// Where tunnel numbers come from.
    pub fn set_tunnel_probe(&self, f: impl Fn() -> TunnelSnapshot + Send + Sync + 'static) {
        *self.tunnel.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(f));
    }

    /// Where store numbers come from.
    pub fn set_store_probe(&self, f: impl Fn() -> StoreSnapshot + Send + Sync + 'static) {
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(f));
    }

    /// Readiness (edge: tunnel up; core: endpoint listening).
    pub fn set_ready_probe(&self, f: impl Fn() -> bool + Send + Sync + 'static) {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(f));
    }

    /// Adds a source of extra metric families.
    pub fn add_extra(&self, f: impl Fn() -> Vec<ExtraFamily> + Send + Sync + 'static) {
        self.extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(f));
    }

    /// Whether the process is ready.
    pub fn ready(&self) -> bool {
        let p = self.ready.lock().unwrap_or_else(|e| e.into_inner()).clone();
        p.map(|f| f()).unwrap_or(false)
    }

    /// All route counters.
    pub fn routes(&self) -> Vec<RouteSnapshot> {
        let m = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .map(|((route, dir), s)| RouteSnapshot {
                route: route.clone(),
                direction: dir.as_str(),
                logical_bytes: s.logical_bytes.load(Relaxed),
                wan_bytes: s.wan_bytes.load(Relaxed),
                dedup_saved_bytes: s.dedup_saved_bytes.load(Relaxed),
                compression_saved_bytes: s.compression_saved_bytes.load(Relaxed),
                ref_chunks: s.ref_chunks.load(Relaxed),
                literal_chunks: s.literal_chunks.load(Relaxed),
                misses: s.misses.load(Relaxed),
                verify_failures: s.verify_failures.load(Relaxed),
                flows: s.flows.load(Relaxed),
            })
            .collect()
    }

    /// Tunnel numbers now.
    pub fn tunnel(&self) -> TunnelSnapshot {
        let p = self
            .tunnel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        p.map(|f| f()).unwrap_or_default()
    }

    /// Store numbers now.
    pub fn store(&self) -> Option<StoreSnapshot> {
        let p = self.store.lock().unwrap_or_else(|e| e.into_inner()).clone();
        p.map(|f| f())
    }

    fn extras(&self) -> Vec<ExtraFamily> {
        let ps: Vec<_> = self.extra.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ps.iter().flat_map(|f| f()).collect()
    }

    /// The `/stats` document.
    pub fn stats_json(&self) -> serde_json::Value {
        let routes = self.routes();
        let tunnel = self.tunnel();
        let logical: u64 = routes.iter().map(|r| r.logical_bytes).sum();
        let wan = tunnel.wan_tx_bytes + tunnel.wan_rx_bytes;
        let stream_wan: u64 = routes.iter().map(|r| r.wan_bytes).sum();
        let ratio = if stream_wan > 0 {
            logical as f64 / stream_wan as f64
        } else {
            0.0
        };
        let extras: BTreeMap<String, serde_json::Value> = self
            .extras()
            .into_iter()
            .map(|f| {
                let samples: Vec<serde_json::Value> = f
                    .samples
                    .iter()
                    .map(|(labels, v)| {
                        let mut o = serde_json::Map::new();
                        for (k, lv) in labels {
                            o.insert(k.clone(), serde_json::Value::String(lv.clone()));
                        }
                        o.insert("value".into(), serde_json::json!(v));
                        serde_json::Value::Object(o)
                    })
                    .collect();
                (f.name, serde_json::Value::Array(samples))
            })
            .collect();
        serde_json::json!({
            "role": self.role,
            "ready": self.ready(),
            "logical_bytes": logical,
            "wan_bytes": wan,
            "stream_wan_bytes": stream_wan,
            "reduction_ratio": ratio,
            "open_flows": self.open_flows.load(Relaxed),
            "refused_flows": self.refused_flows.load(Relaxed),
            "flow_errors": self.flow_errors.load(Relaxed),
            "handshake_failures": self.handshake_failures.load(Relaxed),
            "tunnel_connects": self.tunnel_connects.load(Relaxed),
            "accept_errors": self.accept_errors.load(Relaxed),
            "flow_panics": self.flow_panics.load(Relaxed),
            "limit_resets": LimitReason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), serde_json::json!(self.limit_resets(*r))))
                .collect::<serde_json::Map<_, _>>(),
            "tunnel": tunnel,
            "store": self.store(),
            "routes": routes,
            "extra": extras,
        })
    }

    /// The `/metrics` document (Prometheus text exposition format 0.0.4).
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP strait_{name} {help}");
            let _ = writeln!(out, "# TYPE strait_{name} {kind}");
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "strait_{name} {v}");
                } else {
                    let _ = writeln!(out, "strait_{name}{{{labels}}} {v}");
                }
            }
        };
        let routes = self.routes();
        let per_route = |f: &dyn Fn(&RouteSnapshot) -> u64| -> Vec<(String, f64)> {
            routes
                .iter()
                .map(|r| {
                    (
                        format!(
                            "route=\"{}\",direction=\"{}\"",
                            escape(&r.route),
                            r.direction
                        ),
                        f(r) as f64,
                    )
                })
                .collect()
        };
        family(
            "logical_bytes_total",
            "counter",
            "Client bytes carried, per route and direction.",
            &per_route(&|r| r.logical_bytes),
        );
        family(
            "stream_wan_bytes_total",
            "counter",
            "Tunnel frame bytes per route and direction.",
            &per_route(&|r| r.wan_bytes),
        );
        family(
            "dedup_saved_bytes_total",
            "counter",
            "Bytes that crossed as references.",
            &per_route(&|r| r.dedup_saved_bytes),
        );
        family(
            "compression_saved_bytes_total",
            "counter",
            "Bytes saved by compressing literals.",
            &per_route(&|r| r.compression_saved_bytes),
        );
        family(
            "ref_chunks_total",
            "counter",
            "Chunks carried as references.",
            &per_route(&|r| r.ref_chunks),
        );
        family(
            "literal_chunks_total",
            "counter",
            "Chunks carried as literals.",
            &per_route(&|r| r.literal_chunks),
        );
        family(
            "chunk_misses_total",
            "counter",
            "References the receiver had to ask for.",
            &per_route(&|r| r.misses),
        );
        family(
            "chunk_verify_failures_total",
            "counter",
            "Chunks that failed verification and were not delivered.",
            &per_route(&|r| r.verify_failures),
        );
        family(
            "flows_total",
            "counter",
            "Flows started per route.",
            &per_route(&|r| r.flows),
        );
        let t = self.tunnel();
        family(
            "wan_bytes_total",
            "counter",
            "UDP bytes on the tunnel including all overhead.",
            &[
                ("direction=\"tx\"".to_string(), t.wan_tx_bytes as f64),
                ("direction=\"rx\"".to_string(), t.wan_rx_bytes as f64),
            ],
        );
        family(
            "tunnel_up",
            "gauge",
            "Tunnels currently up.",
            &[(String::new(), t.connections as f64)],
        );
        family(
            "tunnel_rtt_seconds",
            "gauge",
            "Smoothed round-trip time of the tunnel.",
            &[(String::new(), t.rtt_seconds)],
        );
        family(
            "tunnel_lost_packets_total",
            "counter",
            "Packets QUIC declared lost.",
            &[(String::new(), t.lost_packets as f64)],
        );
        family(
            "tunnel_cwnd_bytes",
            "gauge",
            "Congestion window.",
            &[(String::new(), t.cwnd_bytes as f64)],
        );
        family(
            "tunnel_connects_total",
            "counter",
            "Tunnel connections established.",
            &[(String::new(), self.tunnel_connects.load(Relaxed) as f64)],
        );
        family(
            "handshake_failures_total",
            "counter",
            "Failed tunnel handshakes.",
            &[(String::new(), self.handshake_failures.load(Relaxed) as f64)],
        );
        family(
            "open_flows",
            "gauge",
            "Flows currently open.",
            &[(String::new(), self.open_flows.load(Relaxed) as f64)],
        );
        family(
            "refused_flows_total",
            "counter",
            "Flows refused.",
            &[(String::new(), self.refused_flows.load(Relaxed) as f64)],
        );
        family(
            "flow_errors_total",
            "counter",
            "Flows that ended with an error.",
            &[(String::new(), self.flow_errors.load(Relaxed) as f64)],
        );
        family(
            "limit_resets_total",
            "counter",
            "Connections and flows cut off by a limit, per limit.",
            &LimitReason::ALL
                .iter()
                .map(|r| {
                    (
                        format!("reason=\"{}\"", r.as_str()),
                        self.limit_resets(*r) as f64,
                    )
                })
                .collect::<Vec<_>>(),
        );
        family(
            "flow_panics_total",
            "counter",
            "Flow tasks that panicked (stream and client reset).",
            &[(String::new(), self.flow_panics.load(Relaxed) as f64)],
        );
        family(
            "accept_errors_total",
            "counter",
            "Failed accepts on TCP listeners (each followed by a backoff pause).",
            &[(String::new(), self.accept_errors.load(Relaxed) as f64)],
        );
        if let Some(s) = self.store() {
            family(
                "store_bytes",
                "gauge",
                "Chunk store size on disk.",
                &[(String::new(), s.bytes as f64)],
            );
            family(
                "store_max_bytes",
                "gauge",
                "Chunk store bound.",
                &[(String::new(), s.max_bytes as f64)],
            );
            family(
                "store_entries",
                "gauge",
                "Chunks in the store.",
                &[(String::new(), s.entries as f64)],
            );
            family(
                "store_hits_total",
                "counter",
                "Store lookups that found the chunk.",
                &[(String::new(), s.hits as f64)],
            );
            family(
                "store_misses_total",
                "counter",
                "Store lookups that did not.",
                &[(String::new(), s.misses as f64)],
            );
            family(
                "store_evictions_total",
                "counter",
                "Entries evicted.",
                &[(String::new(), s.evictions as f64)],
            );
            family(
                "store_corrupt_dropped_total",
                "counter",
                "Entries dropped after failing verification.",
                &[(String::new(), s.corrupt_dropped as f64)],
            );
            family(
                "store_index_bytes",
                "gauge",
                "Approximate index memory.",
                &[(String::new(), s.index_bytes as f64)],
            );
        }
        for f in self.extras() {
            let samples: Vec<(String, f64)> = f
                .samples
                .iter()
                .map(|(labels, v)| {
                    let l = labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                        .collect::<Vec<_>>()
                        .join(",");
                    (l, *v)
                })
                .collect();
            family(&f.name, f.kind, &f.help, &samples);
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn route_counters_render_in_both_formats() {
        let m = Metrics::new("edge");
        let r = m.route("origin", Direction::Download);
        r.logical_bytes.fetch_add(1234, Relaxed);
        r.wan_bytes.fetch_add(100, Relaxed);
        let text = m.prometheus();
        assert!(
            text.contains(
                "strait_logical_bytes_total{route=\"origin\",direction=\"download\"} 1234"
            ),
            "{text}"
        );
        m.limit_reset(LimitReason::OpenTimeout);
        m.limit_reset(LimitReason::OpenTimeout);
        let text = m.prometheus();
        assert!(
            text.contains("strait_limit_resets_total{reason=\"open_timeout\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("strait_limit_resets_total{reason=\"flows_per_edge\"} 0"),
            "{text}"
        );
        let j = m.stats_json();
        assert_eq!(j["limit_resets"]["open_timeout"], 2);
        assert_eq!(j["logical_bytes"], 1234);
        assert_eq!(j["routes"][0]["route"], "origin");
        assert_eq!(j["routes"][0]["wan_bytes"], 100);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod route_label_tests {
    use super::*;

    #[test]
    fn routes_beyond_the_label_bound_share_one_entry() {
        let m = Metrics::new("core");
        for i in 0..MAX_ROUTE_LABELS + 500 {
            m.route(&format!("r{i}"), Direction::Upload)
                .flows
                .fetch_add(1, Relaxed);
        }
        let routes = m.routes();
        assert_eq!(routes.len(), MAX_ROUTE_LABELS + 1);
        let other = routes.iter().find(|r| r.route == OVERFLOW_ROUTE).unwrap();
        assert_eq!(other.flows, 500);
        // A route that got its own entry keeps it.
        m.route("r0", Direction::Upload).flows.fetch_add(1, Relaxed);
        assert_eq!(
            m.routes().iter().find(|r| r.route == "r0").unwrap().flows,
            2
        );
    }
}
