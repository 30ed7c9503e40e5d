//! `[limits]`: the bounds on what peers and clients can make a process hold (issue 14).
//!
//! Every field has a named default below with the reason for its value. Core-only fields in an
//! edge's config are refused (they would silently do nothing there).

use serde::Deserialize;
use std::time::Duration;

use crate::units::parse_duration;
use crate::{Role, V};

/// Bytes all flow buffers of a process may hold together. At the default 16 MiB flow window a
/// handful of bulk flows can run at full window while a thousand slow readers stay well under the
/// 256 MiB RSS target of issue 14; a flow over the budget waits (backpressure), it is not failed.
pub const DEFAULT_FLOW_BUDGET: u64 = 128 << 20;
/// The share of [`DEFAULT_FLOW_BUDGET`] the flows of one edge identity may hold at a core: half,
/// so one edge (compromised or buggy) can never take the whole budget from the others.
pub const DEFAULT_EDGE_FLOW_BUDGET: u64 = 64 << 20;
/// Tunnel connections one edge identity may hold at a core. An edge keeps one; a few more cover
/// a reconnect racing the old connection's idle timeout and a second edge process during a
/// rolling restart. Beyond it the connection is closed with a reason naming this limit.
pub const DEFAULT_MAX_CONNECTIONS_PER_EDGE: u32 = 4;
/// Flows one edge identity may have open at a core across all its connections; matches the
/// per-connection QUIC stream limit (`tunnel.max_flows`), so a second connection does not double
/// what one edge can hold. Beyond it new streams are reset.
pub const DEFAULT_MAX_FLOWS_PER_EDGE: u32 = 1024;
/// Longest a new stream may take to deliver its `Open` frame. A real edge writes `Open` in the
/// same packet that opens the stream; 10 s covers a lossy long-RTT path with retransmissions and
/// still closes streams opened and never used well within the "seconds".
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a flow may carry no byte in either direction before it is reset. One hour: SSH
/// sessions, database connections and notebook kernels routinely idle for many minutes, and
/// closing them would break pipelines; dead peers are caught sooner by TCP keepalive
/// ([`DEFAULT_TCP_KEEPALIVE`]), so this only reaps flows whose both ends are alive but silent.
/// `"off"` disables it.
pub const DEFAULT_FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Idle time before the first TCP keepalive probe on client and upstream sockets. With
/// [`TCP_KEEPALIVE_INTERVAL`] and [`TCP_KEEPALIVE_RETRIES`], a half-open peer is detected about
/// 60 s + 6 × 10 s = 2 minutes after it went silent. `"off"` disables keepalive.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Interval between unanswered TCP keepalive probes (see [`DEFAULT_TCP_KEEPALIVE`]).
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered TCP keepalive probes before the kernel declares the peer dead.
pub const TCP_KEEPALIVE_RETRIES: u32 = 6;
/// Connections the admin server holds open at once. It is a loopback diagnostics port polled by
/// an orchestrator and a metrics scraper: a few connections are normal, 64 leave ample room;
/// beyond it the oldest connection is closed to make room (see `strait-admin`).
pub const DEFAULT_MAX_ADMIN_CONNECTIONS: u32 = 64;
/// Longest a client of the admin server or of an HTTP ingress may take to send a request head.
/// Real clients send a head in one packet; 10 s tolerates a congested path and frees a slowloris
/// connection's slot quickly.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Process-wide bytes flow buffers may hold (a flow over it waits).
    pub flow_budget: u64,
    /// Core: the bytes one edge identity's flows may hold (a share of `flow_budget`).
    pub edge_flow_budget: u64,
    /// Core: tunnel connections per edge identity.
    pub max_connections_per_edge: u32,
    /// Core: open flows per edge identity, across its connections.
    pub max_flows_per_edge: u32,
    /// Core: longest a new stream may take to deliver its `Open`.
    pub open_timeout: Duration,
    /// Longest a flow may stay silent in both directions; `None` = never reset for idleness.
    pub flow_idle_timeout: Option<Duration>,
    /// TCP keepalive idle time on client and upstream sockets; `None` = off.
    pub tcp_keepalive: Option<Duration>,
    /// Admin server connections held at once.
    pub max_admin_connections: u32,
    /// Longest a client may take to send a request head (admin server, HTTP ingress).
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            flow_budget: DEFAULT_FLOW_BUDGET,
            edge_flow_budget: DEFAULT_EDGE_FLOW_BUDGET,
            max_connections_per_edge: DEFAULT_MAX_CONNECTIONS_PER_EDGE,
            max_flows_per_edge: DEFAULT_MAX_FLOWS_PER_EDGE,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            flow_idle_timeout: Some(DEFAULT_FLOW_IDLE_TIMEOUT),
            tcp_keepalive: Some(DEFAULT_TCP_KEEPALIVE),
            max_admin_connections: DEFAULT_MAX_ADMIN_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    flow_budget: Option<String>,
    edge_flow_budget: Option<String>,
    max_connections_per_edge: Option<i64>,
    max_flows_per_edge: Option<i64>,
    open_timeout: Option<String>,
    flow_idle_timeout: Option<String>,
    tcp_keepalive: Option<String>,
    max_admin_connections: Option<i64>,
    header_read_timeout: Option<String>,
}

impl V {
    pub(crate) fn count(
        &mut self,
        path: &str,
        v: Option<i64>,
        default: u32,
        min: u32,
        max: u32,
    ) -> u32 {
        match v {
            None => default,
            Some(n) if (i64::from(min)..=i64::from(max)).contains(&n) => n as u32,
            Some(n) => {
                self.bad(
                    path,
                    n.to_string(),
                    format!("must be between {min} and {max}"),
                );
                default
            }
        }
    }

    /// A duration that may also be `"off"` (`None`).
    fn duration_or_off(
        &mut self,
        path: &str,
        v: &Option<String>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        match v.as_deref() {
            Some("off") => None,
            Some(s) => match parse_duration(s) {
                Ok(d) if (min..=max).contains(&d) => Some(d),
                Ok(_) => {
                    self.bad(
                        path,
                        s,
                        format!("must be \"off\" or between {min:?} and {max:?}"),
                    );
                    Some(default)
                }
                Err(e) => {
                    self.bad(path, s, format!("{e}, or \"off\""));
                    Some(default)
                }
            },
            None => Some(default),
        }
    }
}

/// Validates `[limits]`; `flow_window` is `dedup.flow_window` (a budget must let one flow run).
pub(crate) fn validate(v: &mut V, raw: Option<RawLimits>, role: Role, flow_window: u64) -> Limits {
    let r = raw.unwrap_or_default();
    if role == Role::Edge {
        let core_only = [
            ("edge_flow_budget", r.edge_flow_budget.clone()),
            (
                "max_connections_per_edge",
                r.max_connections_per_edge.map(|n| n.to_string()),
            ),
            (
                "max_flows_per_edge",
                r.max_flows_per_edge.map(|n| n.to_string()),
            ),
            ("open_timeout", r.open_timeout.clone()),
        ];
        for (name, value) in core_only {
            if let Some(value) = value {
                v.bad(
                    format!("limits.{name}"),
                    value,
                    "applies to a core only; remove it from an edge's config",
                );
            }
        }
    }
    let flow_budget = v.bytes(
        "limits.flow_budget",
        &r.flow_budget,
        DEFAULT_FLOW_BUDGET,
        1 << 20,
        1 << 40,
    );
    let edge_flow_budget = v.bytes(
        "limits.edge_flow_budget",
        &r.edge_flow_budget,
        DEFAULT_EDGE_FLOW_BUDGET.min(flow_budget),
        1 << 20,
        1 << 40,
    );
    if flow_budget < flow_window {
        v.bad(
            "limits.flow_budget",
            flow_budget.to_string(),
            format!("must hold at least one flow window (dedup.flow_window = {flow_window} bytes)"),
        );
    }
    if role == Role::Core {
        if edge_flow_budget > flow_budget {
            v.bad(
                "limits.edge_flow_budget",
                edge_flow_budget.to_string(),
                format!("must not exceed limits.flow_budget ({flow_budget} bytes)"),
            );
        } else if edge_flow_budget < flow_window {
            v.bad(
                "limits.edge_flow_budget",
                edge_flow_budget.to_string(),
                format!(
                    "must hold at least one flow window (dedup.flow_window = {flow_window} bytes)"
                ),
            );
        }
    }
    Limits {
        flow_budget,
        edge_flow_budget,
        max_connections_per_edge: v.count(
            "limits.max_connections_per_edge",
            r.max_connections_per_edge,
            DEFAULT_MAX_CONNECTIONS_PER_EDGE,
            1,
            1024,
        ),
        max_flows_per_edge: v.count(
            "limits.max_flows_per_edge",
            r.max_flows_per_edge,
            DEFAULT_MAX_FLOWS_PER_EDGE,
            1,
            1_000_000,
        ),
        open_timeout: v.duration(
            "limits.open_timeout",
            &r.open_timeout,
            DEFAULT_OPEN_TIMEOUT,
            Duration::from_millis(10),
            Duration::from_secs(600),
        ),
        flow_idle_timeout: v.duration_or_off(
            "limits.flow_idle_timeout",
            &r.flow_idle_timeout,
            DEFAULT_FLOW_IDLE_TIMEOUT,
            Duration::from_secs(1),
            Duration::from_secs(7 * 24 * 3600),
        ),
        tcp_keepalive: v.duration_or_off(
            "limits.tcp_keepalive",
            &r.tcp_keepalive,
            DEFAULT_TCP_KEEPALIVE,
            Duration::from_secs(1),
            Duration::from_secs(2 * 3600),
        ),
        max_admin_connections: v.count(
            "limits.max_admin_connections",
            r.max_admin_connections,
            DEFAULT_MAX_ADMIN_CONNECTIONS,
            1,
            4096,
        ),
        header_read_timeout: v.duration(
            "limits.header_read_timeout",
            &r.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT,
            Duration::from_millis(100),
            Duration::from_secs(600),
        ),
    }
}
