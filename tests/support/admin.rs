//! Reading a process's admin API: `/ready`, `/stats` (JSON), `/metrics` (Prometheus text).

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// GET `path` from `addr`; (status, body).
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let text = String::from_utf8_lossy(&all).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("GET {path}: no HTTP response: {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("GET {path}: bad status line {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Whether `/ready` answers 200.
pub fn ready(addr: SocketAddr) -> bool {
    matches!(get(addr, "/ready"), Ok((200, _)))
}

/// The `/stats` document.
pub fn stats(addr: SocketAddr) -> anyhow::Result<Value> {
    let (st, body) = get(addr, "/stats")?;
    anyhow::ensure!(st == 200, "/stats answered {st}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// The `/metrics` text.
pub fn metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let (st, body) = get(addr, "/metrics")?;
    anyhow::ensure!(st == 200, "/metrics answered {st}: {body}");
    Ok(body)
}

/// One route/direction's counters from a `/stats` document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Route {
    /// Client bytes.
    pub logical_bytes: u64,
    /// Tunnel frame bytes.
    pub wan_bytes: u64,
    /// Bytes carried as references.
    pub dedup_saved_bytes: u64,
    /// Bytes saved by zstd.
    pub compression_saved_bytes: u64,
    /// Chunks as references.
    pub ref_chunks: u64,
    /// Chunks as literals.
    pub literal_chunks: u64,
    /// Misses.
    pub misses: u64,
    /// Verification failures.
    pub verify_failures: u64,
}

impl Route {
    /// Counter differences `self - before`.
    pub fn since(&self, before: &Route) -> Route {
        Route {
            logical_bytes: self.logical_bytes - before.logical_bytes,
            wan_bytes: self.wan_bytes - before.wan_bytes,
            dedup_saved_bytes: self.dedup_saved_bytes - before.dedup_saved_bytes,
            compression_saved_bytes: self.compression_saved_bytes - before.compression_saved_bytes,
            ref_chunks: self.ref_chunks - before.ref_chunks,
            literal_chunks: self.literal_chunks - before.literal_chunks,
            misses: self.misses - before.misses,
            verify_failures: self.verify_failures - before.verify_failures,
        }
    }
}

/// Counters of `route` in `direction` ("upload"/"download"); zeros when absent.
pub fn route(stats: &Value, route: &str, direction: &str) -> Route {
    let Some(rs) = stats["routes"].as_array() else {
        return Route::default();
    };
    let Some(r) = rs
        .iter()
        .find(|r| r["route"] == route && r["direction"] == direction)
    else {
        return Route::default();
    };
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    Route {
        logical_bytes: n("logical_bytes"),
        wan_bytes: n("wan_bytes"),
        dedup_saved_bytes: n("dedup_saved_bytes"),
        compression_saved_bytes: n("compression_saved_bytes"),
        ref_chunks: n("ref_chunks"),
        literal_chunks: n("literal_chunks"),
        misses: n("misses"),
        verify_failures: n("verify_failures"),
    }
}

/// A top-level number of a `/stats` document (`wan_bytes`, `refused_flows`, ...).
pub fn num(stats: &Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or(0)
}

/// A number of the `store` object.
pub fn store_num(stats: &Value, key: &str) -> u64 {
    stats["store"][key].as_u64().unwrap_or(0)
}

/// The value of the sample `name{labels}` (labels exactly as rendered, or "" for none).
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}
