//! `strait demo`: an origin, a core and an edge on loopback with throwaway certificates; a
//! generated AI dataset fetched through the pair twice; a table of what crossed the tunnel.

use crate::{start, Error, Running};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use strait_admin::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest request head the demo origin reads.
const MAX_REQUEST_HEAD: usize = 8192;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Bytes of sample data.
    pub size: usize,
    /// Passes over the data.
    pub passes: usize,
    /// Seed of the generated data.
    pub seed: u64,
    /// `[tunnel] fec` of both sides, as a TOML value (`"off"`, `"adaptive"`, `{ data = 32, repair = 4 }`).
    pub fec: String,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            size: 256 << 20,
            passes: 2,
            seed: 42,
            fec: "\"off\"".into(),
        }
    }
}

/// One pass's figures.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Client bytes received (verified).
    pub logical_bytes: u64,
    /// UDP bytes on the tunnel, both directions, all overhead.
    pub wan_bytes: u64,
    /// Bytes that crossed as references.
    pub dedup_saved: u64,
    /// Bytes saved by compression.
    pub compression_saved: u64,
    /// Seconds.
    pub seconds: f64,
}

/// Serves `files` over minimal HTTP/1.0 until `stop`.
pub async fn serve_origin(
    listener: TcpListener,
    files: Arc<HashMap<String, Vec<u8>>>,
    stop: CancellationToken,
) {
    loop {
        let (mut s, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let files = files.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            match files.get(&path) {
                Some(body) => {
                    let hdr = format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(hdr.as_bytes()).await;
                    let _ = s.write_all(body).await;
                }
                None => {
                    let _ = s
                        .write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
            }
            let _ = s.shutdown().await;
        });
    }
}

/// Fetches `/name` over HTTP/1.0 from `addr` and returns the body.
pub async fn http_get(addr: std::net::SocketAddr, name: &str) -> Result<Vec<u8>, Error> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| Error::Other(format!("connect {addr}: {e}")))?;
    s.write_all(format!("GET /{name} HTTP/1.0\r\nHost: demo\r\n\r\n").as_bytes())
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)
        .await
        .map_err(|e| Error::Other(format!("GET /{name}: {e}")))?;
    let pos = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Error::Other(format!("GET /{name}: no HTTP response")))?;
    let head = String::from_utf8_lossy(&all[..pos]).to_string();
    if !head.starts_with("HTTP/1.0 200") {
        return Err(Error::Other(format!(
            "GET /{name}: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::Other(format!("GET /{name}: no Content-Length")))?;
    let body = all.split_off(pos + 4);
    if body.len() != len {
        return Err(Error::Other(format!(
            "GET /{name}: short body {} of {len} bytes",
            body.len()
        )));
    }
    Ok(body)
}

/// Download totals of the edge; WAN bytes are what both sides put on the wire (each side's UDP
/// transmit counter, FEC repair included).
fn totals(m: &Metrics, core: &Metrics) -> PassReport {
    let mut r = PassReport::default();
    for s in m.routes() {
        if s.direction == "download" {
            r.logical_bytes += s.logical_bytes;
            r.dedup_saved += s.dedup_saved_bytes;
            r.compression_saved += s.compression_saved_bytes;
        }
    }
    r.wan_bytes = m.tunnel().wan_tx_bytes + core.tunnel().wan_tx_bytes;
    r
}

fn config_text(
    role: &str,
    dir: &std::path::Path,
    core_addr: &str,
    origin: &str,
    fec: &str,
) -> String {
    let d = dir.display();
    let common = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[tls]\nca = \"{d}/certs/ca.pem\"\ncert = \"{d}/certs/{role}.pem\"\nkey = \"{d}/certs/{role}.key\"\n[dedup]\nkey_file = \"{d}/certs/dedup.key\"\n[store]\npath = \"{d}/{role}-store\"\nmax_bytes = \"2GiB\"\n[tunnel]\nudp_buffer = \"4MiB\"\nfec = {fec}\n"
    );
    if role.starts_with("core") {
        format!("{common}[core]\nlisten = \"127.0.0.1:0\"\n[[core.service]]\nname = \"origin\"\nupstream = \"{origin}\"\n")
    } else {
        format!("{common}[edge]\ncore = \"{core_addr}\"\nserver_name = \"localhost\"\n[[edge.forward]]\nlisten = \"127.0.0.1:0\"\nservice = \"origin\"\n")
    }
}

/// Runs the demo; returns one report per pass. Fails if a byte differs.
pub async fn run(
    opts: &DemoOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<PassReport>, Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::Other(format!("temp dir: {e}")))?;
    strait_transport::certs::generate(
        &dir.path().join("certs"),
        &["localhost".into()],
        &["edge-a".into()],
        false,
    )
    .map_err(|e| Error::Other(e.to_string()))?;
    progress(&format!(
        "generating {} MiB of sample AI data (JSONL, bf16 safetensors, JPEG shards)",
        opts.size >> 20
    ));
    let files = strait_datagen::sample_dataset(opts.seed, opts.size);
    let digests: Vec<(String, blake3::Hash)> = files
        .iter()
        .map(|(n, b)| (n.clone(), blake3::hash(b)))
        .collect();
    let files: Arc<HashMap<String, Vec<u8>>> = Arc::new(files.into_iter().collect());
    let stop = CancellationToken::new();
    let origin = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    let origin_addr = origin
        .local_addr()
        .map_err(|e| Error::Other(e.to_string()))?;
    tokio::spawn(serve_origin(origin, files.clone(), stop.clone()));

    // Role names double as certificate file stems (core-localhost, edge-edge-a).
    let core_cfg = strait_config::parse(
        &config_text(
            "core-localhost",
            dir.path(),
            "",
            &origin_addr.to_string(),
            &opts.fec,
        ),
        std::path::Path::new("demo-core.toml"),
        true,
    )?;
    let core: Running = start(core_cfg, stop.clone()).await?;
    let core_addr = core
        .tunnel
        .ok_or_else(|| Error::Other("core has no tunnel address".into()))?;
    let edge_cfg = strait_config::parse(
        &config_text(
            "edge-edge-a",
            dir.path(),
            &core_addr.to_string(),
            "",
            &opts.fec,
        ),
        std::path::Path::new("demo-edge.toml"),
        true,
    )?;
    let edge: Running = start(edge_cfg, stop.clone()).await?;
    let fwd = edge
        .forwards
        .first()
        .map(|f| f.1)
        .ok_or_else(|| Error::Other("edge has no forward".into()))?;
    progress(&format!(
        "origin {origin_addr}, core {core_addr}, edge forward {fwd}"
    ));

    let mut reports = Vec::new();
    for pass in 1..=opts.passes {
        let before = totals(&edge.metrics, &core.metrics);
        let t0 = Instant::now();
        for (name, digest) in &digests {
            let body = http_get(fwd, name).await?;
            if blake3::hash(&body) != *digest {
                return Err(Error::Other(format!(
                    "pass {pass}: {name} differs from the origin's bytes"
                )));
            }
        }
        let after = totals(&edge.metrics, &core.metrics);
        let r = PassReport {
            logical_bytes: after.logical_bytes - before.logical_bytes,
            wan_bytes: after.wan_bytes - before.wan_bytes,
            dedup_saved: after.dedup_saved - before.dedup_saved,
            compression_saved: after.compression_saved - before.compression_saved,
            seconds: t0.elapsed().as_secs_f64(),
        };
        progress(&format!(
            "pass {pass}: {} files verified byte-exact",
            digests.len()
        ));
        reports.push(r);
    }
    stop.cancel();
    let _ = edge.done.await;
    let _ = core.done.await;
    Ok(reports)
}

/// The demo's table.
pub fn table(reports: &[PassReport]) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut s = format!(
        "{:<6} {:>12} {:>12} {:>9} {:>12} {:>12} {:>8} {:>10}\n",
        "pass", "logical MiB", "WAN MiB", "ratio", "dedup MiB", "zstd MiB", "secs", "MiB/s"
    );
    for (i, r) in reports.iter().enumerate() {
        s.push_str(&format!(
            "{:<6} {:>12.1} {:>12.1} {:>8.1}x {:>12.1} {:>12.1} {:>8.2} {:>10.1}\n",
            i + 1,
            mib(r.logical_bytes),
            mib(r.wan_bytes),
            r.logical_bytes as f64 / r.wan_bytes.max(1) as f64,
            mib(r.dedup_saved),
            mib(r.compression_saved),
            r.seconds,
            mib(r.logical_bytes) / r.seconds.max(1e-9)
        ));
    }
    s
}
