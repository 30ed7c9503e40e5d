//! An in-process origin server (the "upstream" behind the core) and its clients.
//!
//! Every connection starts with a one-byte operation:
//! * `GEN seed:u64 len:u64` — the origin sends `len` seeded bytes, then closes (download).
//! * `BLOB index:u64` — the origin sends blob `index` (set by the test), then closes.
//! * `SINK` — the origin reads to EOF, then answers `len:u64 blake3:[u8;32]` and closes (upload;
//!   the answer also proves the half-close crossed the tunnel).
//! * `ECHO` — the origin echoes everything until EOF (interactive protocols).
//!
//! All integers little-endian. The origin records, per finished connection, how many bytes it
//! received and (for GEN/SINK) the length and BLAKE3 of what it sent or received, so a test
//! checks both ends of every transfer.

use crate::seeded::Seeded;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Operation codes.
pub const OP_GEN: u8 = 1;
/// See the module doc.
pub const OP_BLOB: u8 = 2;
/// See the module doc.
pub const OP_SINK: u8 = 3;
/// See the module doc.
pub const OP_ECHO: u8 = 4;

/// Bytes per read/write call.
pub const IO_BUF: usize = 256 * 1024;

/// What the origin saw on one finished connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Operation byte (0 if the client sent nothing).
    pub op: u8,
    /// Bytes received from the client, request header included.
    pub received: u64,
    /// GEN: bytes sent and their hash; SINK: payload bytes received and their hash.
    pub payload: Option<(u64, blake3::Hash)>,
}

#[derive(Default)]
struct State {
    blobs: Mutex<Vec<Arc<Vec<u8>>>>,
    seen: Mutex<Vec<Seen>>,
    accepted: AtomicU64,
}

/// A running origin (a tokio task on the test's runtime).
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_u64(s: &mut TcpStream, got: &mut u64) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).await?;
    *got += 8;
    Ok(u64::from_le_bytes(b))
}

async fn serve(mut s: TcpStream, st: Arc<State>) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut seen = Seen {
        op: 0,
        received: 0,
        payload: None,
    };
    let mut op = [0u8; 1];
    let r = async {
        if s.read(&mut op).await? == 0 {
            return Ok(());
        }
        seen.op = op[0];
        seen.received = 1;
        match op[0] {
            OP_GEN => {
                let seed = read_u64(&mut s, &mut seen.received).await?;
                let len = read_u64(&mut s, &mut seen.received).await?;
                let mut g = Seeded::new(seed, len);
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; IO_BUF];
                let mut sent = 0u64;
                loop {
                    let n = g.fill(&mut buf);
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    s.write_all(&buf[..n]).await?;
                    sent += n as u64;
                }
                seen.payload = Some((sent, h.finalize()));
                s.shutdown().await?;
            }
            OP_BLOB => {
                let i = read_u64(&mut s, &mut seen.received).await?;
                let blob = st
                    .blobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(i as usize)
                    .cloned()
                    .ok_or_else(|| std::io::Error::other(format!("no blob {i}")))?;
                s.write_all(&blob).await?;
                seen.payload = Some((blob.len() as u64, blake3::hash(&blob)));
                s.shutdown().await?;
            }
            OP_SINK => {
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; IO_BUF];
                let mut n_total = 0u64;
                loop {
                    let n = s.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    n_total += n as u64;
                }
                seen.received += n_total;
                let hash = h.finalize();
                seen.payload = Some((n_total, hash));
                let mut reply = n_total.to_le_bytes().to_vec();
                reply.extend_from_slice(hash.as_bytes());
                s.write_all(&reply).await?;
                s.shutdown().await?;
            }
            OP_ECHO => {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = s.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    seen.received += n as u64;
                    s.write_all(&buf[..n]).await?;
                }
                s.shutdown().await?;
            }
            other => {
                // Unknown op: count what arrives, answer nothing.
                let mut buf = vec![0u8; 64 * 1024];
                let _ = other;
                loop {
                    let n = s.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    seen.received += n as u64;
                }
            }
        }
        Ok::<(), std::io::Error>(())
    }
    .await;
    st.seen.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
    r
}

impl Origin {
    /// Starts an origin on 127.0.0.1 (an ephemeral port).
    pub async fn start() -> anyhow::Result<Origin> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                st.accepted.fetch_add(1, Relaxed);
                let st2 = st.clone();
                tokio::spawn(async move {
                    let _ = serve(s, st2).await;
                });
            }
        });
        Ok(Origin { addr, state, task })
    }

    /// Replaces the blobs BLOB serves.
    pub fn set_blobs(&self, blobs: Vec<Arc<Vec<u8>>>) {
        *self.state.blobs.lock().unwrap_or_else(|e| e.into_inner()) = blobs;
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Relaxed)
    }

    /// Finished connections so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets what was seen.
    pub fn clear_seen(&self) {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Result of one client transfer: bytes and BLAKE3 of what the client received (download) or
/// of what the origin reported receiving (upload), and the seconds it took.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Bytes the receiving end got.
    pub len: u64,
    /// BLAKE3 of what the receiving end got.
    pub hash: blake3::Hash,
    /// BLAKE3 of what the client sent (uploads; `None` for downloads, whose sender is the
    /// origin: see [`Origin::seen`]).
    pub sent_hash: Option<blake3::Hash>,
    /// Wall time.
    pub secs: f64,
}

fn gen_request(seed: u64, len: u64) -> Vec<u8> {
    let mut r = vec![OP_GEN];
    r.extend_from_slice(&seed.to_le_bytes());
    r.extend_from_slice(&len.to_le_bytes());
    r
}

/// Bytes of a GEN request (counted as upload logical bytes).
pub const GEN_REQUEST_LEN: u64 = 17;
/// Bytes of a BLOB request.
pub const BLOB_REQUEST_LEN: u64 = 9;
/// Bytes of a SINK answer.
pub const SINK_REPLY_LEN: u64 = 40;

async fn read_all_hashed(s: &mut TcpStream) -> std::io::Result<(u64, blake3::Hash)> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; IO_BUF];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, h.finalize()));
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// Downloads `len` seeded bytes via `addr` (a forward or the origin itself).
pub async fn download(addr: SocketAddr, seed: u64, len: u64) -> anyhow::Result<Transfer> {
    let t0 = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    let _ = s.set_nodelay(true);
    s.write_all(&gen_request(seed, len)).await?;
    s.shutdown().await?;
    let (n, hash) = read_all_hashed(&mut s).await?;
    Ok(Transfer {
        len: n,
        hash,
        sent_hash: None,
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// Downloads blob `index` via `addr`; returns its bytes.
pub async fn download_blob(addr: SocketAddr, index: u64) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    let mut r = vec![OP_BLOB];
    r.extend_from_slice(&index.to_le_bytes());
    s.write_all(&r).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(out)
}

async fn sink_reply(s: &mut TcpStream) -> anyhow::Result<(u64, blake3::Hash)> {
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await?;
    anyhow::ensure!(
        reply.len() == SINK_REPLY_LEN as usize,
        "sink answered {} bytes, expected {SINK_REPLY_LEN}",
        reply.len()
    );
    let mut l = [0u8; 8];
    l.copy_from_slice(&reply[..8]);
    let mut h = [0u8; 32];
    h.copy_from_slice(&reply[8..]);
    Ok((u64::from_le_bytes(l), blake3::Hash::from(h)))
}

/// Uploads `len` seeded bytes via `addr`; returns what the origin received (its length and
/// hash, as the origin reports it back).
pub async fn upload(addr: SocketAddr, seed: u64, len: u64) -> anyhow::Result<Transfer> {
    let t0 = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    let _ = s.set_nodelay(true);
    s.write_all(&[OP_SINK]).await?;
    let mut g = Seeded::new(seed, len);
    let mut buf = vec![0u8; IO_BUF];
    let mut sent = blake3::Hasher::new();
    loop {
        let n = g.fill(&mut buf);
        if n == 0 {
            break;
        }
        sent.update(&buf[..n]);
        s.write_all(&buf[..n]).await?;
    }
    s.shutdown().await?;
    let (n, hash) = sink_reply(&mut s).await?;
    Ok(Transfer {
        len: n,
        hash,
        sent_hash: Some(sent.finalize()),
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// Uploads `data` via `addr`; returns what the origin received.
pub async fn upload_bytes(addr: SocketAddr, data: &[u8]) -> anyhow::Result<Transfer> {
    upload_paced(addr, data, data.len().max(1), std::time::Duration::ZERO).await
}

/// [`upload_bytes`] by a client that writes `piece` bytes at a time and pauses `pause` after
/// each (a slow producer: every pause longer than the flush delay sends a partial chunk ahead).
pub async fn upload_paced(
    addr: SocketAddr,
    data: &[u8],
    piece: usize,
    pause: std::time::Duration,
) -> anyhow::Result<Transfer> {
    let t0 = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(&[OP_SINK]).await?;
    for p in data.chunks(piece) {
        s.write_all(p).await?;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    s.shutdown().await?;
    let (n, hash) = sink_reply(&mut s).await?;
    Ok(Transfer {
        len: n,
        hash,
        sent_hash: Some(blake3::hash(data)),
        secs: t0.elapsed().as_secs_f64(),
    })
}
