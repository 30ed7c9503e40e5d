//! strait configuration: the TOML schema, its defaults and its validation.
//!
//! Owns parsing and checking only; never opens sockets, never reads certificates (it checks that
//! the files exist). Every problem is reported with its dotted path, the value and the reason
//! (`edge.forward[1].listen = "::99999": invalid socket address`), all problems at once, and an
//! invalid config never starts a process: there is no "warn and fall back".
//!
//! Relative paths in a config file are relative to the working directory of the process.

pub mod limits;
pub mod units;

pub use limits::{Limits, DEFAULT_FLOW_BUDGET};

use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use units::{parse_bytes, parse_duration};

/// Default admin listen address of a core.
pub const DEFAULT_CORE_ADMIN: &str = "127.0.0.1:9902";
/// Default admin listen address of an edge.
pub const DEFAULT_EDGE_ADMIN: &str = "127.0.0.1:9901";
/// Per-stream QUIC receive window: 32 MiB fills 1 Gbit/s × 100 ms with headroom (quinn: 1.25 MB).
pub const DEFAULT_STREAM_RECEIVE_WINDOW: u64 = 32 << 20;
/// Connection receive window (bounded, unlike quinn's default).
pub const DEFAULT_RECEIVE_WINDOW: u64 = 64 << 20;
/// Connection send window.
pub const DEFAULT_SEND_WINDOW: u64 = 64 << 20;
/// UDP socket buffers requested with SO_RCVBUF/SO_SNDBUF (the kernel caps them at rmem_max/wmem_max).
pub const DEFAULT_UDP_BUFFER: u64 = 8 << 20;
/// Most flows (QUIC bidirectional streams) one peer may have open at once.
pub const DEFAULT_MAX_FLOWS: u32 = 1024;
/// Unacknowledged chunk bytes a sender keeps per flow direction (and the receiver's reorder bound).
pub const DEFAULT_FLOW_WINDOW: u64 = 16 << 20;
/// Longest a partial chunk is held back before it is sent anyway.
pub const DEFAULT_FLUSH_DELAY: Duration = Duration::from_millis(2);
/// Chunk store size on disk.
pub const DEFAULT_STORE_MAX_BYTES: u64 = 4 << 30;
/// Default zstd level for literals.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
/// How long shutdown waits for open flows to finish.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest UDP payload path-MTU discovery probes for: a 1500-byte path by default; raise it
/// (up to 8952 for 9000-byte jumbo frames) where the path carries more.
pub const DEFAULT_MAX_MTU: u16 = 1452;
/// Longest name of a service, forward or route.
pub const MAX_NAME_LEN: usize = 64;

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `edge.forward[1].listen`.
    pub path: String,
    /// The offending value as written (empty when the field is missing).
    pub value: String,
    /// Why it is not valid.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.path, self.reason)
        } else {
            write!(f, "{} = {:?}: {}", self.path, self.value, self.reason)
        }
    }
}

/// Errors loading a config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys / wrong types.
    #[error("config file {path} is not valid: {message}")]
    Syntax {
        /// File path.
        path: PathBuf,
        /// Parser message (names the key and line).
        message: String,
    },
    /// Values failed validation; every problem is listed.
    #[error("config file {path} has {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// File path.
        path: PathBuf,
        /// All problems found.
        problems: Vec<Problem>,
    },
}

/// Which role a config file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `[core]` section present.
    Core,
    /// `[edge]` section present.
    Edge,
}

/// Congestion controller of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// Loss-based Cubic (RFC 9438, strait's own with HyStart++'s delay exit from slow start).
    Cubic,
    /// Model-based BBR: keeps filling a link with random loss.
    Bbr,
    /// NewReno.
    NewReno,
}

/// Default residual failure probability of a bulk FEC block in adaptive mode (the FEC crate's
/// `DEFAULT_TARGET`; a transport test keeps the two equal).
pub const DEFAULT_FEC_TARGET: f64 = 1e-4;
/// Default cap on FEC repair packets per source packet in adaptive mode (the FEC crate's
/// `DEFAULT_MAX_RATIO`).
pub const DEFAULT_FEC_MAX_RATIO: f64 = 0.5;

/// Forward error correction setting of the tunnel
/// (`fec = "off" | "adaptive" | { target, max_ratio } | { data, repair }`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fec {
    /// No FEC.
    Off,
    /// Repair ratio follows measured loss; zero repair at zero loss.
    Adaptive {
        /// Residual probability that a bulk block (32 or more packets) cannot be rebuilt;
        /// smaller blocks (messages, tails) are planned for a tenth of it. In (0, 1).
        target: f64,
        /// Most repair packets per source packet. In [0, 1].
        max_ratio: f64,
    },
    /// Fixed k source + m repair packets per block.
    Fixed {
        /// Source packets per block.
        data: u8,
        /// Repair packets per block.
        repair: u8,
    },
}

impl Fec {
    /// `"adaptive"`: the default target and cap.
    pub const ADAPTIVE: Fec = Fec::Adaptive {
        target: DEFAULT_FEC_TARGET,
        max_ratio: DEFAULT_FEC_MAX_RATIO,
    };
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Log filter (`RUST_LOG` overrides it).
    pub log_level: String,
    /// Admin HTTP server address (`/live`, `/ready`, `/metrics`, `/stats`).
    pub admin_listen: SocketAddr,
    /// Shutdown drain timeout.
    pub drain_timeout: Duration,
    /// Certificates.
    pub tls: Tls,
    /// Transport tuning.
    pub tunnel: Tunnel,
    /// Chunking and dedup.
    pub dedup: Dedup,
    /// Chunk store.
    pub store: Store,
    /// Core role, when `[core]` is present.
    pub core: Option<Core>,
    /// Edge role, when `[edge]` is present.
    pub edge: Option<Edge>,
    /// Traffic classes, rules and AI destinations (`[[class]]`, `[[rule]]`, `[ai]`).
    pub policy: strait_classify::PolicyConfig,
    /// Resource bounds (`[limits]`).
    pub limits: Limits,
}

/// `[tls]`.
#[derive(Debug, Clone)]
pub struct Tls {
    /// CA certificate (PEM) that signs both sides.
    pub ca: PathBuf,
    /// This side's certificate chain (PEM).
    pub cert: PathBuf,
    /// This side's private key (PEM).
    pub key: PathBuf,
}

/// `[tunnel]`.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// QUIC per-stream receive window.
    pub stream_receive_window: u64,
    /// QUIC connection receive window.
    pub receive_window: u64,
    /// QUIC connection send window.
    pub send_window: u64,
    /// SO_SNDBUF and SO_RCVBUF requested for the UDP socket.
    pub udp_buffer: u64,
    /// Congestion controller.
    pub congestion: Congestion,
    /// Initial RTT estimate.
    pub initial_rtt: Duration,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Idle timeout of the tunnel.
    pub idle_timeout: Duration,
    /// Initial MTU (UDP payload) QUIC uses.
    pub initial_mtu: u16,
    /// Largest UDP payload path-MTU discovery may probe for (jumbo-frame paths, loopback).
    pub max_mtu: u16,
    /// Maximum concurrent flows per peer.
    pub max_flows: u32,
    /// Forward error correction.
    pub fec: Fec,
}

/// `[dedup]`.
#[derive(Debug, Clone)]
pub struct Dedup {
    /// Per-deployment key for chunk ids (keyed BLAKE3). Both sides must share it.
    pub key: [u8; 32],
    /// Minimum chunk size.
    pub min_chunk: usize,
    /// Average chunk size.
    pub avg_chunk: usize,
    /// Maximum chunk size.
    pub max_chunk: usize,
    /// Longest a partial chunk waits for more data before it is sent.
    pub flush_delay: Duration,
    /// Unacknowledged bytes per flow direction.
    pub flow_window: u64,
    /// Delta compression of near-duplicate chunks (routes may turn it off).
    pub delta: bool,
    /// Most base chunks one delta may use.
    pub max_delta_bases: u8,
    /// Memory bound of the resemblance-sketch index.
    pub sketch_index_bytes: u64,
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct Store {
    /// Directory of the chunk store.
    pub path: PathBuf,
    /// Upper bound of its size on disk.
    pub max_bytes: u64,
}

/// Data-path settings of one route (a core service or an edge forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Send repeated chunks as references.
    pub dedup: bool,
    /// Send near-duplicate chunks as deltas against similar chunks the peer holds.
    pub delta: bool,
    /// zstd level for literals; `None` = compression off.
    pub compression: Option<i32>,
}

/// `[[core.service]]`.
#[derive(Debug, Clone)]
pub struct Service {
    /// Name edges ask for.
    pub name: String,
    /// `host:port` the core connects to.
    pub upstream: String,
    /// Data path of what the core sends for this service (downloads).
    pub policy: RoutePolicy,
}

/// `[core]`.
#[derive(Debug, Clone)]
pub struct Core {
    /// UDP address of the tunnel endpoint.
    pub listen: SocketAddr,
    /// Services edges may reach.
    pub services: Vec<Service>,
    /// Timeout connecting to an upstream.
    pub upstream_connect_timeout: Duration,
    /// `host:port` globs the core may connect to for edge HTTP proxies (empty: proxying refused).
    pub proxy_allow: Vec<String>,
    /// CA file for verifying `https://` upstreams (default: the system's web PKI roots).
    pub upstream_ca: Option<PathBuf>,
}

/// What a forward speaks to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardKind {
    /// Any TCP protocol, carried as bytes.
    Tcp,
    /// HTTP/1.1 (plain HTTP, S3): each request is classified and policy applied.
    Http,
}

/// `[[edge.proxy]]`: an HTTP proxy pipelines use through `HTTP_PROXY`/`HTTPS_PROXY`.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Route name (statistics label).
    pub name: String,
    /// TCP address the proxy listens on.
    pub listen: SocketAddr,
}

/// `[[edge.forward]]`.
#[derive(Debug, Clone)]
pub struct Forward {
    /// What the forward speaks.
    pub kind: ForwardKind,
    /// Route name (statistics label); defaults to the service name.
    pub name: String,
    /// TCP address the edge listens on.
    pub listen: SocketAddr,
    /// Core service it reaches.
    pub service: String,
    /// Data path of what the edge sends on this route (uploads).
    pub policy: RoutePolicy,
}

/// `[edge]`.
#[derive(Debug, Clone)]
pub struct Edge {
    /// `host:port` of the core's tunnel endpoint.
    pub core: String,
    /// Name the core's certificate must carry.
    pub server_name: String,
    /// Forwards.
    pub forwards: Vec<Forward>,
    /// HTTP proxies.
    pub proxies: Vec<Proxy>,
    /// Timeout of one connection attempt to the core.
    pub connect_timeout: Duration,
    /// How long a new flow waits for the tunnel when it is down before failing.
    pub flow_wait: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay (exponential backoff).
    pub reconnect_max: Duration,
}

// ---------------------------------------------------------------------------------------------
// Raw (as written) structures. Strings for everything with units so that validation can report
// the value exactly as the user wrote it.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    log: Option<RawLog>,
    admin: Option<RawAdmin>,
    tls: Option<RawTls>,
    tunnel: Option<RawTunnel>,
    dedup: Option<RawDedup>,
    store: Option<RawStore>,
    core: Option<RawCore>,
    edge: Option<RawEdge>,
    shutdown: Option<RawShutdown>,
    limits: Option<limits::RawLimits>,
    #[serde(default)]
    class: Vec<strait_classify::ClassConfig>,
    #[serde(default)]
    rule: Vec<strait_classify::RuleConfig>,
    ai: Option<strait_classify::AiConfig>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    drain_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    stream_receive_window: Option<String>,
    receive_window: Option<String>,
    send_window: Option<String>,
    udp_buffer: Option<String>,
    congestion: Option<String>,
    initial_rtt: Option<String>,
    keep_alive: Option<String>,
    idle_timeout: Option<String>,
    initial_mtu: Option<i64>,
    max_mtu: Option<i64>,
    max_flows: Option<i64>,
    fec: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDedup {
    key: Option<String>,
    key_file: Option<String>,
    min_chunk: Option<String>,
    avg_chunk: Option<String>,
    max_chunk: Option<String>,
    flush_delay: Option<String>,
    flow_window: Option<String>,
    delta: Option<bool>,
    max_delta_bases: Option<i64>,
    sketch_index_bytes: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<String>,
    max_bytes: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCore {
    listen: Option<String>,
    upstream_connect_timeout: Option<String>,
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    proxy_allow: Vec<String>,
    upstream_ca: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    upstream: Option<String>,
    dedup: Option<bool>,
    delta: Option<bool>,
    compression: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    core: Option<String>,
    server_name: Option<String>,
    connect_timeout: Option<String>,
    flow_wait: Option<String>,
    reconnect_min: Option<String>,
    reconnect_max: Option<String>,
    #[serde(default)]
    forward: Vec<RawForward>,
    #[serde(default)]
    proxy: Vec<RawProxy>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    name: Option<String>,
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawForward {
    kind: Option<String>,
    name: Option<String>,
    listen: Option<String>,
    service: Option<String>,
    dedup: Option<bool>,
    delta: Option<bool>,
    compression: Option<toml::Value>,
}

/// Collects problems while validating.
struct V {
    problems: Vec<Problem>,
    check_files: bool,
}

impl V {
    fn bad(
        &mut self,
        path: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.problems.push(Problem {
            path: path.into(),
            value: value.into(),
            reason: reason.into(),
        });
    }

    fn bytes(&mut self, path: &str, v: &Option<String>, default: u64, min: u64, max: u64) -> u64 {
        let Some(s) = v else { return default };
        match parse_bytes(s) {
            Ok(b) if b < min || b > max => {
                self.bad(path, s, format!("must be between {min} and {max} bytes"));
                default
            }
            Ok(b) => b,
            Err(e) => {
                self.bad(path, s, e);
                default
            }
        }
    }

    fn duration(
        &mut self,
        path: &str,
        v: &Option<String>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(s) = v else { return default };
        match parse_duration(s) {
            Ok(d) if d < min || d > max => {
                self.bad(path, s, format!("must be between {min:?} and {max:?}"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.bad(path, s, e);
                default
            }
        }
    }

    fn socket_addr(&mut self, path: &str, v: &Option<String>, default: Option<&str>) -> SocketAddr {
        let fallback: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        let s = match (v, default) {
            (Some(s), _) => s.as_str(),
            (None, Some(d)) => d,
            (None, None) => {
                self.bad(
                    path,
                    "",
                    "missing (expected an address like \"127.0.0.1:9000\")",
                );
                return fallback;
            }
        };
        match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.bad(
                    path,
                    s,
                    "invalid socket address (expected ip:port, e.g. \"127.0.0.1:9000\")",
                );
                fallback
            }
        }
    }

    fn host_port(&mut self, path: &str, v: &Option<String>) -> String {
        let Some(s) = v else {
            self.bad(path, "", "missing (expected host:port)");
            return String::new();
        };
        if s.parse::<SocketAddr>().is_ok() {
            return s.clone();
        }
        match s.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && port.parse::<u16>().map(|p| p != 0).unwrap_or(false)
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_') =>
            {
                s.clone()
            }
            _ => {
                self.bad(
                    path,
                    s,
                    "invalid host:port (expected e.g. \"127.0.0.1:8000\" or \"db.internal:5432\")",
                );
                String::new()
            }
        }
    }

    fn name(&mut self, path: &str, v: &Option<String>) -> String {
        let Some(s) = v else {
            self.bad(path, "", "missing");
            return String::new();
        };
        if s.is_empty()
            || s.len() > MAX_NAME_LEN
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            self.bad(
                path,
                s,
                format!("names are 1-{MAX_NAME_LEN} characters of a-z, A-Z, 0-9, '-', '_', '.'"),
            );
        }
        s.clone()
    }

    fn file(&mut self, path: &str, v: &Option<String>) -> PathBuf {
        let Some(s) = v else {
            self.bad(path, "", "missing (expected a file path)");
            return PathBuf::new();
        };
        let p = PathBuf::from(s);
        if self.check_files && !p.is_file() {
            self.bad(
                path,
                s,
                "file does not exist (create certificates with `strait certs --out certs`)",
            );
        }
        p
    }

    fn compression(&mut self, path: &str, v: &Option<toml::Value>) -> Option<i32> {
        match v {
            None => Some(DEFAULT_COMPRESSION_LEVEL),
            Some(toml::Value::Boolean(false)) => None,
            Some(toml::Value::Boolean(true)) => Some(DEFAULT_COMPRESSION_LEVEL),
            Some(toml::Value::Integer(l)) if (1..=19).contains(l) => Some(*l as i32),
            Some(other) => {
                self.bad(
                    path,
                    other.to_string(),
                    "expected a zstd level 1-19, true or false",
                );
                None
            }
        }
    }

    fn policy(
        &mut self,
        path: &str,
        dedup: Option<bool>,
        delta: Option<bool>,
        compression: &Option<toml::Value>,
    ) -> RoutePolicy {
        RoutePolicy {
            dedup: dedup.unwrap_or(true),
            delta: delta.unwrap_or(true),
            compression: self.compression(&format!("{path}.compression"), compression),
        }
    }
}

fn fec_setting(v: &mut V, value: &Option<toml::Value>) -> Fec {
    match value {
        None => Fec::Off,
        Some(toml::Value::String(s)) if s == "off" => Fec::Off,
        Some(toml::Value::String(s)) if s == "adaptive" => Fec::ADAPTIVE,
        Some(toml::Value::Table(t)) => {
            let unknown: Vec<&String> = t
                .keys()
                .filter(|k| !["data", "repair", "target", "max_ratio"].contains(&k.as_str()))
                .collect();
            let fixed = t.contains_key("data") || t.contains_key("repair");
            let adaptive = t.contains_key("target") || t.contains_key("max_ratio");
            let whole = toml::Value::Table(t.clone()).to_string();
            if !unknown.is_empty() || fixed == adaptive {
                v.bad(
                    "tunnel.fec",
                    whole,
                    "expected { data = 1..64, repair = 0..64 } or { target = (0, 1), max_ratio = [0, 1] }",
                );
                return Fec::Off;
            }
            if fixed {
                let get = |k: &str| t.get(k).and_then(|x| x.as_integer());
                match (get("data"), get("repair")) {
                    (Some(d), Some(r)) if (1..=64).contains(&d) && (0..=64).contains(&r) => {
                        Fec::Fixed {
                            data: d as u8,
                            repair: r as u8,
                        }
                    }
                    _ => {
                        v.bad(
                            "tunnel.fec",
                            whole,
                            "expected { data = 1..64, repair = 0..64 }",
                        );
                        Fec::Off
                    }
                }
            } else {
                let mut number = |key: &str, default: f64, ok: fn(f64) -> bool, want: &str| {
                    let Some(x) = t.get(key) else {
                        return Some(default);
                    };
                    match x.as_float().or_else(|| x.as_integer().map(|i| i as f64)) {
                        Some(f) if ok(f) => Some(f),
                        _ => {
                            v.bad(format!("tunnel.fec.{key}"), x.to_string(), want);
                            None
                        }
                    }
                };
                let target = number(
                    "target",
                    DEFAULT_FEC_TARGET,
                    |f| f > 0.0 && f < 1.0,
                    "a probability in (0, 1), e.g. 1e-4",
                );
                let max_ratio = number(
                    "max_ratio",
                    DEFAULT_FEC_MAX_RATIO,
                    |f| (0.0..=1.0).contains(&f),
                    "a ratio in [0, 1], e.g. 0.5",
                );
                match (target, max_ratio) {
                    (Some(target), Some(max_ratio)) => Fec::Adaptive { target, max_ratio },
                    _ => Fec::Off,
                }
            }
        }
        Some(other) => {
            v.bad(
                "tunnel.fec",
                other.to_string(),
                "expected \"off\", \"adaptive\", { target = p, max_ratio = r } or { data = k, repair = m }",
            );
            Fec::Off
        }
    }
}

/// Reads and validates a config file. `check_files` also checks that referenced files exist.
pub fn load(path: &Path, check_files: bool) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, check_files)
}

/// Parses and validates config text (`path` is used in messages only).
pub fn parse(text: &str, path: &Path, check_files: bool) -> Result<Config, Error> {
    let raw: Raw = toml::from_str(text).map_err(|e| Error::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })?;
    let mut v = V {
        problems: Vec::new(),
        check_files,
    };
    let cfg = validate(&mut v, raw);
    if v.problems.is_empty() {
        Ok(cfg)
    } else {
        Err(Error::Invalid {
            path: path.to_path_buf(),
            problems: v.problems,
        })
    }
}

fn validate(v: &mut V, raw: Raw) -> Config {
    let role = match (&raw.core, &raw.edge) {
        (Some(_), Some(_)) => {
            v.bad(
                "core",
                "",
                "a config file is for one role: has both [core] and [edge]",
            );
            Role::Core
        }
        (None, None) => {
            v.bad(
                "core",
                "",
                "missing: a config needs a [core] or an [edge] section",
            );
            Role::Core
        }
        (Some(_), None) => Role::Core,
        (None, Some(_)) => Role::Edge,
    };

    let log = raw.log.unwrap_or_default();
    let log_level = log.level.unwrap_or_else(|| "info".to_string());
    if !log_level.split(',').all(|d| {
        let lvl = d.rsplit('=').next().unwrap_or("");
        matches!(
            lvl.trim(),
            "trace" | "debug" | "info" | "warn" | "error" | "off"
        )
    }) {
        v.bad(
            "log.level",
            &log_level,
            "expected trace, debug, info, warn, error or off (or target=level,...)",
        );
    }

    let admin = raw.admin.unwrap_or_default();
    let admin_default = match role {
        Role::Core => DEFAULT_CORE_ADMIN,
        Role::Edge => DEFAULT_EDGE_ADMIN,
    };
    let admin_listen = v.socket_addr("admin.listen", &admin.listen, Some(admin_default));
    let shutdown = raw.shutdown.unwrap_or_default();
    let drain_timeout = v.duration(
        "shutdown.drain_timeout",
        &shutdown.drain_timeout,
        DEFAULT_DRAIN_TIMEOUT,
        Duration::ZERO,
        Duration::from_secs(3600),
    );

    let tls_raw = raw.tls.unwrap_or_default();
    let tls = Tls {
        ca: v.file("tls.ca", &tls_raw.ca),
        cert: v.file("tls.cert", &tls_raw.cert),
        key: v.file("tls.key", &tls_raw.key),
    };

    let t = raw.tunnel.unwrap_or_default();
    let congestion = match t.congestion.as_deref() {
        None | Some("bbr") => Congestion::Bbr,
        Some("cubic") => Congestion::Cubic,
        Some("newreno") => Congestion::NewReno,
        Some(other) => {
            v.bad(
                "tunnel.congestion",
                other,
                "expected \"bbr\", \"cubic\" or \"newreno\"",
            );
            Congestion::Bbr
        }
    };
    let initial_mtu = match t.initial_mtu {
        None => 1452,
        Some(m) if (1200..=9000).contains(&m) => m as u16,
        Some(m) => {
            v.bad(
                "tunnel.initial_mtu",
                m.to_string(),
                "must be between 1200 and 9000",
            );
            1452
        }
    };
    let max_mtu = match t.max_mtu {
        None => DEFAULT_MAX_MTU,
        Some(m) if (1200..=65_000).contains(&m) && m as u16 >= initial_mtu => m as u16,
        Some(m) => {
            v.bad(
                "tunnel.max_mtu",
                m.to_string(),
                format!("must be between tunnel.initial_mtu ({initial_mtu}) and 65000"),
            );
            DEFAULT_MAX_MTU
        }
    };
    let max_flows = v.count(
        "tunnel.max_flows",
        t.max_flows,
        DEFAULT_MAX_FLOWS,
        1,
        100_000,
    );
    let fec = fec_setting(v, &t.fec);
    let tunnel = Tunnel {
        stream_receive_window: v.bytes(
            "tunnel.stream_receive_window",
            &t.stream_receive_window,
            DEFAULT_STREAM_RECEIVE_WINDOW,
            64 << 10,
            1 << 30,
        ),
        receive_window: v.bytes(
            "tunnel.receive_window",
            &t.receive_window,
            DEFAULT_RECEIVE_WINDOW,
            64 << 10,
            4 << 30,
        ),
        send_window: v.bytes(
            "tunnel.send_window",
            &t.send_window,
            DEFAULT_SEND_WINDOW,
            64 << 10,
            4 << 30,
        ),
        udp_buffer: v.bytes(
            "tunnel.udp_buffer",
            &t.udp_buffer,
            DEFAULT_UDP_BUFFER,
            64 << 10,
            1 << 30,
        ),
        congestion,
        initial_rtt: v.duration(
            "tunnel.initial_rtt",
            &t.initial_rtt,
            Duration::from_millis(100),
            Duration::from_millis(1),
            Duration::from_secs(10),
        ),
        keep_alive: v.duration(
            "tunnel.keep_alive",
            &t.keep_alive,
            Duration::from_secs(2),
            Duration::from_millis(100),
            Duration::from_secs(600),
        ),
        idle_timeout: v.duration(
            "tunnel.idle_timeout",
            &t.idle_timeout,
            Duration::from_secs(10),
            Duration::from_millis(500),
            Duration::from_secs(3600),
        ),
        initial_mtu,
        max_mtu,
        max_flows,
        fec,
    };
    if tunnel.keep_alive >= tunnel.idle_timeout {
        v.bad(
            "tunnel.keep_alive",
            format!("{:?}", tunnel.keep_alive),
            format!(
                "must be shorter than tunnel.idle_timeout ({:?})",
                tunnel.idle_timeout
            ),
        );
    }

    let d = raw.dedup.unwrap_or_default();
    let key = match (&d.key, &d.key_file) {
        (Some(_), Some(_)) => {
            v.bad("dedup.key", "", "set dedup.key or dedup.key_file, not both");
            [0u8; 32]
        }
        (Some(k), None) => parse_key(v, "dedup.key", k),
        (None, Some(f)) => {
            if v.check_files {
                match std::fs::read_to_string(f) {
                    Ok(text) => parse_key(v, "dedup.key_file", text.trim()),
                    Err(e) => {
                        v.bad(
                            "dedup.key_file",
                            f,
                            format!("cannot read: {e} (`strait certs` writes one)"),
                        );
                        [0u8; 32]
                    }
                }
            } else {
                [0u8; 32]
            }
        }
        (None, None) => {
            v.bad(
                "dedup.key_file",
                "",
                "missing: set dedup.key (64 hex digits) or dedup.key_file; both sides must share the key",
            );
            [0u8; 32]
        }
    };
    let min_chunk = v.bytes("dedup.min_chunk", &d.min_chunk, 16 << 10, 256, 4 << 20) as usize;
    let avg_chunk = v.bytes("dedup.avg_chunk", &d.avg_chunk, 64 << 10, 1024, 8 << 20) as usize;
    let max_chunk = v.bytes("dedup.max_chunk", &d.max_chunk, 256 << 10, 4096, 16 << 20) as usize;
    if !(min_chunk < avg_chunk && avg_chunk < max_chunk) {
        v.bad(
            "dedup.avg_chunk",
            avg_chunk.to_string(),
            format!("must satisfy min_chunk ({min_chunk}) < avg_chunk < max_chunk ({max_chunk})"),
        );
    }
    if !avg_chunk.is_power_of_two() {
        v.bad(
            "dedup.avg_chunk",
            avg_chunk.to_string(),
            "must be a power of two (e.g. 64KiB)",
        );
    }
    let flow_window = v.bytes(
        "dedup.flow_window",
        &d.flow_window,
        DEFAULT_FLOW_WINDOW,
        1 << 20,
        1 << 30,
    );
    if (flow_window as usize) < 4 * max_chunk {
        v.bad(
            "dedup.flow_window",
            flow_window.to_string(),
            format!(
                "must hold at least 4 maximal chunks ({} bytes)",
                4 * max_chunk
            ),
        );
    }
    let dedup = Dedup {
        key,
        min_chunk,
        avg_chunk,
        max_chunk,
        flush_delay: v.duration(
            "dedup.flush_delay",
            &d.flush_delay,
            DEFAULT_FLUSH_DELAY,
            Duration::ZERO,
            Duration::from_secs(1),
        ),
        flow_window,
        delta: d.delta.unwrap_or(true),
        max_delta_bases: match d.max_delta_bases {
            None => 2,
            Some(n) if (1..=4).contains(&n) => n as u8,
            Some(n) => {
                v.bad(
                    "dedup.max_delta_bases",
                    n.to_string(),
                    "must be between 1 and 4",
                );
                2
            }
        },
        sketch_index_bytes: v.bytes(
            "dedup.sketch_index_bytes",
            &d.sketch_index_bytes,
            64 << 20,
            1 << 20,
            16 << 30,
        ),
    };

    let limits = limits::validate(v, raw.limits, role, flow_window);

    let s = raw.store.unwrap_or_default();
    let store = Store {
        path: match &s.path {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            Some(p) => {
                v.bad("store.path", p, "must not be empty");
                PathBuf::new()
            }
            None => {
                v.bad(
                    "store.path",
                    "",
                    "missing (a directory for the chunk store)",
                );
                PathBuf::new()
            }
        },
        max_bytes: v.bytes(
            "store.max_bytes",
            &s.max_bytes,
            DEFAULT_STORE_MAX_BYTES,
            1 << 20,
            1 << 50,
        ),
    };

    let core = raw.core.map(|c| {
        let listen = v.socket_addr("core.listen", &c.listen, None);
        let mut names = HashSet::new();
        let mut services = Vec::new();
        if c.service.is_empty() && c.proxy_allow.is_empty() {
            v.bad(
                "core.service",
                "",
                "missing: declare at least one [[core.service]] (or core.proxy_allow for edge proxies)",
            );
        }
        for (i, s) in c.service.iter().enumerate() {
            let p = format!("core.service[{i}]");
            let name = v.name(&format!("{p}.name"), &s.name);
            if !name.is_empty() && !names.insert(name.clone()) {
                v.bad(format!("{p}.name"), &name, "duplicate service name");
            }
            let upstream = match s.upstream.as_deref() {
                Some(u) if u.starts_with("https://") || u.starts_with("http://") => {
                    let rest = u.split_once("://").map(|x| x.1).unwrap_or("");
                    let host = rest.split('/').next().unwrap_or("");
                    if host.is_empty() {
                        v.bad(format!("{p}.upstream"), u, "URL has no host");
                    }
                    u.to_string()
                }
                _ => v.host_port(&format!("{p}.upstream"), &s.upstream),
            };
            let policy = v.policy(&p, s.dedup, s.delta, &s.compression);
            services.push(Service {
                name,
                upstream,
                policy,
            });
        }
        let upstream_ca = c
            .upstream_ca
            .as_ref()
            .map(|f| v.file("core.upstream_ca", &Some(f.clone())));
        for (i, g) in c.proxy_allow.iter().enumerate() {
            if g.is_empty() || !g.contains(':') {
                v.bad(
                    format!("core.proxy_allow[{i}]"),
                    g,
                    "expected a host:port glob such as \"*.example.com:443\"",
                );
            }
        }
        Core {
            listen,
            services,
            proxy_allow: c.proxy_allow.clone(),
            upstream_ca,
            upstream_connect_timeout: v.duration(
                "core.upstream_connect_timeout",
                &c.upstream_connect_timeout,
                Duration::from_secs(10),
                Duration::from_millis(10),
                Duration::from_secs(600),
            ),
        }
    });

    let edge = raw.edge.map(|e| {
        let core = v.host_port("edge.core", &e.core);
        let server_name = match &e.server_name {
            Some(n) if !n.is_empty() && n.len() <= 253 => n.clone(),
            Some(n) => {
                v.bad(
                    "edge.server_name",
                    n,
                    "must be a DNS name of 1-253 characters",
                );
                n.clone()
            }
            None => "localhost".to_string(),
        };
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        let mut forwards = Vec::new();
        if e.forward.is_empty() && e.proxy.is_empty() {
            v.bad(
                "edge.forward",
                "",
                "missing: declare at least one [[edge.forward]] or [[edge.proxy]]",
            );
        }
        let mut proxies = Vec::new();
        for (i, pr) in e.proxy.iter().enumerate() {
            let p = format!("edge.proxy[{i}]");
            let name = match &pr.name {
                Some(_) => v.name(&format!("{p}.name"), &pr.name),
                None => "proxy".to_string(),
            };
            if !names.insert(name.clone()) {
                v.bad(
                    format!("{p}.name"),
                    &name,
                    "duplicate route name (set a distinct name)",
                );
            }
            let listen = v.socket_addr(&format!("{p}.listen"), &pr.listen, None);
            if listen.port() != 0 && !listens.insert(listen) {
                v.bad(
                    format!("{p}.listen"),
                    listen.to_string(),
                    "two listeners on the same address",
                );
            }
            proxies.push(Proxy { name, listen });
        }
        for (i, f) in e.forward.iter().enumerate() {
            let p = format!("edge.forward[{i}]");
            let service = v.name(&format!("{p}.service"), &f.service);
            let name = match &f.name {
                Some(_) => v.name(&format!("{p}.name"), &f.name),
                None => service.clone(),
            };
            if !name.is_empty() && !names.insert(name.clone()) {
                v.bad(
                    format!("{p}.name"),
                    &name,
                    "duplicate forward name (set a distinct name)",
                );
            }
            let listen = v.socket_addr(&format!("{p}.listen"), &f.listen, None);
            if listen.port() != 0 && !listens.insert(listen) {
                v.bad(
                    format!("{p}.listen"),
                    listen.to_string(),
                    "two forwards listen on the same address",
                );
            }
            let policy = v.policy(&p, f.dedup, f.delta, &f.compression);
            let kind = match f.kind.as_deref() {
                None | Some("tcp") => ForwardKind::Tcp,
                Some("http") => ForwardKind::Http,
                Some(other) => {
                    v.bad(format!("{p}.kind"), other, "expected \"tcp\" or \"http\"");
                    ForwardKind::Tcp
                }
            };
            forwards.push(Forward {
                kind,
                name,
                listen,
                service,
                policy,
            });
        }
        let reconnect_min = v.duration(
            "edge.reconnect_min",
            &e.reconnect_min,
            Duration::from_millis(100),
            Duration::from_millis(1),
            Duration::from_secs(60),
        );
        let reconnect_max = v.duration(
            "edge.reconnect_max",
            &e.reconnect_max,
            Duration::from_secs(5),
            Duration::from_millis(1),
            Duration::from_secs(600),
        );
        if reconnect_max < reconnect_min {
            v.bad(
                "edge.reconnect_max",
                format!("{reconnect_max:?}"),
                format!("must be at least edge.reconnect_min ({reconnect_min:?})"),
            );
        }
        Edge {
            core,
            server_name,
            forwards,
            proxies,
            connect_timeout: v.duration(
                "edge.connect_timeout",
                &e.connect_timeout,
                Duration::from_secs(5),
                Duration::from_millis(10),
                Duration::from_secs(600),
            ),
            flow_wait: v.duration(
                "edge.flow_wait",
                &e.flow_wait,
                Duration::from_secs(10),
                Duration::ZERO,
                Duration::from_secs(600),
            ),
            reconnect_min,
            reconnect_max,
        }
    });

    let policy = strait_classify::PolicyConfig {
        classes: raw.class,
        rules: raw.rule,
        ai: raw.ai.unwrap_or_default(),
    };
    if let Err(e) = strait_classify::Classifier::new(policy.clone()) {
        let msg = e.to_string();
        match msg.split_once(" = ") {
            Some((path, rest)) => match rest.split_once(": ") {
                Some((value, reason)) => v.bad(path, value.trim_matches('"'), reason),
                None => v.bad(path, "", rest),
            },
            None => v.bad("policy", "", msg),
        }
    }
    Config {
        log_level,
        admin_listen,
        drain_timeout,
        tls,
        tunnel,
        dedup,
        store,
        core,
        edge,
        policy,
        limits,
    }
}

fn parse_key(v: &mut V, path: &str, s: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    match hex::decode(s) {
        Ok(b) if b.len() == 32 => key.copy_from_slice(&b),
        _ => {
            // Never echo key material into logs.
            v.bad(path, "<redacted>", "expected 64 hex digits (32 bytes)");
        }
    }
    key
}

impl Config {
    /// The role this config is for.
    pub fn role(&self) -> Role {
        if self.core.is_some() {
            Role::Core
        } else {
            Role::Edge
        }
    }
}

#[cfg(test)]
mod tests;
