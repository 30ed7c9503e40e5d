//! `strait stats`: reads a process's `/stats` and prints it for humans or as JSON.

use crate::Error;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest `/stats` document accepted.
pub const MAX_STATS_BYTES: usize = 16 << 20;

/// Parses `http://host:port[/...]` or `host:port`.
pub fn admin_addr(url: &str) -> Result<SocketAddr, Error> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport
        .to_socket_addrs()
        .map_err(|e| Error::Other(format!("--admin {url:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Other(format!("--admin {url:?}: resolves to no address")))
}

/// Fetches `path` from an admin server (HTTP/1.0, no keep-alive).
pub fn fetch(addr: SocketAddr, path: &str) -> Result<String, Error> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| Error::Other(format!("cannot reach admin server at {addr}: {e}")))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| Error::Other(e.to_string()))?;
    let mut body = Vec::new();
    s.take(MAX_STATS_BYTES as u64)
        .read_to_end(&mut body)
        .map_err(|e| Error::Other(format!("reading from {addr}: {e}")))?;
    let text = String::from_utf8_lossy(&body).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Other(format!("{addr} sent no HTTP response")))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(Error::Other(format!(
            "{addr}{path}: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}

fn human(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

/// Renders a `/stats` document as a table.
pub fn render(j: &serde_json::Value) -> String {
    let g = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let mut out = String::new();
    let logical = g(&j["logical_bytes"]);
    let stream = g(&j["stream_wan_bytes"]);
    let wan = g(&j["wan_bytes"]);
    out.push_str(&format!(
        "strait {}  ready={}  open flows={}  tunnel rtt={:.1} ms\n",
        j["role"].as_str().unwrap_or("?"),
        j["ready"],
        j["open_flows"],
        g(&j["tunnel"]["rtt_seconds"]) * 1000.0
    ));
    let ratio = if stream > 0.0 { logical / stream } else { 0.0 };
    out.push_str(&format!(
        "carried {} for clients over {} of tunnel frames ({} of UDP incl. overhead): reduction {:.2}x\n\n",
        human(logical),
        human(stream),
        human(wan),
        ratio
    ));
    out.push_str(&format!(
        "{:<16} {:<9} {:>11} {:>11} {:>7} {:>11} {:>11} {:>8} {:>8} {:>6}\n",
        "route",
        "direction",
        "logical",
        "wan",
        "ratio",
        "dedup",
        "compress",
        "refs",
        "literal",
        "miss"
    ));
    if let Some(routes) = j["routes"].as_array() {
        for r in routes {
            let l = g(&r["logical_bytes"]);
            let w = g(&r["wan_bytes"]);
            out.push_str(&format!(
                "{:<16} {:<9} {:>11} {:>11} {:>6.2}x {:>11} {:>11} {:>8} {:>8} {:>6}\n",
                r["route"].as_str().unwrap_or("?"),
                r["direction"].as_str().unwrap_or("?"),
                human(l),
                human(w),
                if w > 0.0 { l / w } else { 0.0 },
                human(g(&r["dedup_saved_bytes"])),
                human(g(&r["compression_saved_bytes"])),
                r["ref_chunks"].as_u64().unwrap_or(0),
                r["literal_chunks"].as_u64().unwrap_or(0),
                r["misses"].as_u64().unwrap_or(0),
            ));
        }
    }
    if let Some(s) = j["store"].as_object() {
        let hits = s.get("hits").and_then(|v| v.as_f64()).unwrap_or(0.0);
        let misses = s.get("misses").and_then(|v| v.as_f64()).unwrap_or(0.0);
        out.push_str(&format!(
            "\nstore: {} of {} in {} chunks, hit rate {:.1}%, {} evicted, {} corrupt dropped\n",
            human(s.get("bytes").and_then(|v| v.as_f64()).unwrap_or(0.0)),
            human(s.get("max_bytes").and_then(|v| v.as_f64()).unwrap_or(0.0)),
            s.get("entries").cloned().unwrap_or_default(),
            if hits + misses > 0.0 {
                100.0 * hits / (hits + misses)
            } else {
                0.0
            },
            s.get("evictions").cloned().unwrap_or_default(),
            s.get("corrupt_dropped").cloned().unwrap_or_default(),
        ));
    }
    out
}
