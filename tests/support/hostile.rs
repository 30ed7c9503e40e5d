//! A test edge that speaks the tunnel protocol itself (quinn + a valid edge certificate), so a
//! test can send what a real edge never would; and an RSS sampler for a process id.
//!
//! ```text
//!  TestEdge ══QUIC (mTLS, own identity)══▶ core ──TCP──▶ Origin
//!     │ control stream: Hello → HelloOk
//!     │ flow streams:   Open → OpenOk, then any frames (Literal, Want, DeltaRun, Refs, ...)
//! ```
//!
//! The test edge has its own certificate (a name of the test's choosing, signed by the pair's
//! CA) and the deployment's dedup key, so the core admits it like any edge. It keeps nothing of
//! the protocol's state: the test decides every frame.

use crate::pair::{certs, Pair};
use crate::proc::Proc;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strait_transport::endpoint::key_fingerprint;
use strait_wire::{Frame, FrameDecoder, WireId, PROTOCOL_VERSION};

/// Longest the test edge waits for the core's answer to `Hello` or `Open`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes asked of quinn per read.
pub const READ_CHUNK: usize = 64 * 1024;
/// How often the RSS sampler reads `/proc/<pid>/status`.
pub const RSS_PERIOD: Duration = Duration::from_millis(100);
/// Codec byte of an unencoded chunk payload (`strait_codec::CodecId::Raw`).
pub const CODEC_RAW: u8 = 0;
/// Codec-byte flag of a preview literal (`strait_dedup::PREVIEW_FLAG`): delivered, not stored,
/// so never a chunk to name later.
pub const PREVIEW_FLAG: u8 = 0x20;

/// The `Hello` a test edge sends. The ONE place a Hello is built in the hostile tests, so a new
/// field (protocol version 2: the sender's `max_chunk`) is added here only.
pub fn hello(key_fingerprint: [u8; 16]) -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        key_fingerprint,
        // The quickstart configs' dedup.max_chunk: what a real edge announces.
        max_chunk: 256 << 10,
    }
}

/// Encodes one frame.
pub fn encode(f: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    f.encode(&mut out);
    out
}

/// An edge identity speaking the protocol by hand over one QUIC connection.
pub struct TestEdge {
    /// The client endpoint.
    pub ep: quinn::Endpoint,
    /// The tunnel connection (Hello done).
    pub conn: quinn::Connection,
    /// The dedup key (chunk ids are keyed BLAKE3 with it).
    pub key: [u8; 32],
    // The control stream stays open for the tunnel's life (closing it means nothing today,
    // but a core may watch it).
    _control: (quinn::SendStream, quinn::RecvStream),
}

impl TestEdge {
    /// A certificate for edge identity `name` (signed by the pair's CA), a connection to the
    /// pair's core, and a completed Hello/HelloOk.
    pub async fn connect(pair: &Pair, name: &str) -> anyhow::Result<TestEdge> {
        let certs_dir = pair.certs_dir();
        let cert = certs_dir.join(format!("edge-{name}.pem"));
        if !cert.is_file() {
            certs(&certs_dir, &["--edge", name])?;
        }
        let mut raw = pair.edge_cfg.clone();
        raw.common.tls.cert = cert;
        raw.common.tls.key = certs_dir.join(format!("edge-{name}.key"));
        let cfg = strait_config::parse(&raw.toml(), Path::new("test-edge.toml"), true)
            .map_err(|e| anyhow::anyhow!("test edge config: {e}"))?;
        let core = pair
            .core
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the pair's core is not running"))?
            .tunnel;
        let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        ep.set_default_client_config(strait_transport::endpoint::client_config(
            &cfg.tls,
            &cfg.tunnel,
        )?);
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, ep.connect(core, "localhost")?)
            .await
            .map_err(|_| anyhow::anyhow!("no QUIC handshake within {HANDSHAKE_TIMEOUT:?}"))??;
        let (mut cs, cr) = conn.open_bi().await?;
        cs.write_all(&encode(&hello(key_fingerprint(&cfg.dedup.key))))
            .await?;
        let mut control = FrameReader::new(cr);
        let f = tokio::time::timeout(HANDSHAKE_TIMEOUT, control.next())
            .await
            .map_err(|_| anyhow::anyhow!("no HelloOk within {HANDSHAKE_TIMEOUT:?}"))??;
        anyhow::ensure!(
            matches!(f, Some(Frame::HelloOk { .. })),
            "test edge {name} not admitted: {f:?}"
        );
        Ok(TestEdge {
            ep,
            conn,
            key: cfg.dedup.key,
            _control: (cs, control.recv),
        })
    }

    /// A new stream on which nothing has been sent yet (the core learns of it only when this or
    /// a later stream carries a byte).
    pub async fn open_raw(&self) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
        Ok(self.conn.open_bi().await?)
    }

    /// A flow: `Open{service, route}` answered by `OpenOk`.
    pub async fn open_flow(&self, service: &str, route: &str) -> anyhow::Result<Flow> {
        let (mut send, recv) = self.open_raw().await?;
        send.write_all(&encode(&Frame::Open {
            service: service.into(),
            route: route.into(),
        }))
        .await?;
        let mut reader = FrameReader::new(recv);
        let f = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next())
            .await
            .map_err(|_| anyhow::anyhow!("no answer to Open within {HANDSHAKE_TIMEOUT:?}"))??;
        anyhow::ensure!(f == Some(Frame::OpenOk), "flow not opened: {f:?}");
        Ok(Flow { send, reader })
    }

    /// The id of `data` (keyed BLAKE3 with the deployment key).
    pub fn id(&self, data: &[u8]) -> WireId {
        *blake3::keyed_hash(&self.key, data).as_bytes()
    }

    /// A `Literal` carrying `data` unencoded, with its correct id.
    pub fn literal(&self, data: &[u8]) -> Frame {
        Frame::Literal {
            id: self.id(data),
            codec: CODEC_RAW,
            len: data.len() as u32,
            payload: bytes::Bytes::copy_from_slice(data),
        }
    }

    /// Closes the connection and waits (bounded) for the endpoint to go idle.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"test done");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ep.wait_idle()).await;
    }
}

/// A frame reader over a receive stream.
pub struct FrameReader {
    /// The stream.
    pub recv: quinn::RecvStream,
    fd: FrameDecoder,
    /// Stream bytes read so far.
    pub bytes: u64,
}

impl FrameReader {
    /// Reads frames from `recv`.
    pub fn new(recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            recv,
            fd: FrameDecoder::new(),
            bytes: 0,
        }
    }

    /// The next frame; `None` when the stream finished; an error when it was reset, the
    /// connection was lost or the bytes are not a frame.
    pub async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        self.next_limited(READ_CHUNK).await
    }

    /// The next frame among the bytes already read, if one is complete.
    pub fn pop(&mut self) -> anyhow::Result<Option<Frame>> {
        Ok(self.fd.next_frame()?.map(|(f, _)| f))
    }

    /// One read of at most `max` stream bytes; `false` when the stream finished.
    pub async fn fill(&mut self, max: usize) -> anyhow::Result<bool> {
        match self.recv.read_chunk(max, true).await? {
            Some(c) => {
                self.bytes += c.bytes.len() as u64;
                self.fd.extend(&c.bytes);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// [`FrameReader::next`] reading at most `max` stream bytes per read call.
    pub async fn next_limited(&mut self, max: usize) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some(f) = self.pop()? {
                return Ok(Some(f));
            }
            if !self.fill(max).await? {
                return Ok(None);
            }
        }
    }
}

/// One open flow of a [`TestEdge`].
pub struct Flow {
    /// The edge → core half.
    pub send: quinn::SendStream,
    /// The core → edge half.
    pub reader: FrameReader,
}

impl Flow {
    /// Sends one frame.
    pub async fn send(&mut self, f: &Frame) -> anyhow::Result<()> {
        self.send.write_all(&encode(f)).await?;
        Ok(())
    }

    /// Asks the origin behind the core for `len` seeded bytes (`GEN seed len`, see
    /// [`crate::origin`]) as one literal, then ends the upload direction.
    pub async fn request_gen(
        &mut self,
        edge: &TestEdge,
        seed: u64,
        len: u64,
    ) -> anyhow::Result<()> {
        let mut req = vec![crate::origin::OP_GEN];
        req.extend_from_slice(&seed.to_le_bytes());
        req.extend_from_slice(&len.to_le_bytes());
        self.send(&edge.literal(&req)).await?;
        self.send(&Frame::End).await
    }

    /// Reads until `n` ordered `Literal` chunks (previews aside) arrived, acknowledging none;
    /// their (id, len).
    pub async fn literals(&mut self, n: usize) -> anyhow::Result<Vec<(WireId, u32)>> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.reader.next().await? {
                Some(Frame::Literal { id, len, codec, .. }) if codec & PREVIEW_FLAG == 0 => {
                    out.push((id, len))
                }
                Some(_) => {}
                None => anyhow::bail!("stream finished after {} literals", out.len()),
            }
        }
        Ok(out)
    }

    /// Reads the core's whole answer, acknowledging every data item as it arrives (as a real
    /// edge does once it delivered them), until the core finishes the stream; the (id, len) of
    /// every literal that is not a preview.
    pub async fn read_all_acked(&mut self) -> anyhow::Result<Vec<(WireId, u32)>> {
        let mut out = Vec::new();
        let mut acked = 0u64;
        while let Some(f) = self.reader.next().await? {
            if let Frame::Literal { id, len, codec, .. } = &f {
                if codec & PREVIEW_FLAG == 0 {
                    out.push((*id, *len));
                }
            }
            let n = items(&f);
            if n > 0 {
                acked += n;
                self.send(&Frame::Ack(acked)).await?;
            }
        }
        Ok(out)
    }
}

/// Data items a frame adds to the ordered data (what an `Ack` counts).
pub fn items(f: &Frame) -> u64 {
    match f {
        Frame::Literal { .. } | Frame::Delta { .. } | Frame::Part { .. } => 1,
        Frame::Refs(r) => r.len() as u64,
        Frame::DeltaRun { items, .. } => items.len() as u64,
        _ => 0,
    }
}

/// How a stream ended, as the test edge saw it.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    /// When the end was seen.
    pub at: Instant,
    /// What ended it (reset code, stop code, finish, connection loss).
    pub how: String,
}

/// Waits until the core stops or resets the stream (either half) or the connection is lost,
/// without reading the stream's data. A clean finish of the core's half also counts (as
/// "finished"): quinn reports it only once all its data was read, so on an unread stream it
/// cannot be seen, and a reset is what the tests wait for.
pub async fn stream_end(send: &quinn::SendStream, recv: &mut quinn::RecvStream) -> StreamEnd {
    let how = tokio::select! {
        s = send.stopped() => match s {
            Ok(Some(code)) => format!("stopped (code {code})"),
            Ok(None) => "send half acknowledged".to_string(),
            Err(e) => format!("send half: {e}"),
        },
        r = recv.received_reset() => match r {
            Ok(Some(code)) => format!("reset (code {code})"),
            Ok(None) => "finished".to_string(),
            Err(e) => format!("receive half: {e}"),
        },
    };
    StreamEnd {
        at: Instant::now(),
        how,
    }
}

/// Reads and drops everything the core sends on `reader` until the stream ends; the end, and
/// the count of `Want` ids seen (in `wants`, updated live).
pub async fn drain(mut reader: FrameReader, wants: Arc<AtomicU64>) -> StreamEnd {
    let how = loop {
        match reader.next().await {
            Ok(Some(Frame::Want(ids))) => {
                wants.fetch_add(ids.len() as u64, Relaxed);
            }
            Ok(Some(_)) => {}
            Ok(None) => break "finished".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    StreamEnd {
        at: Instant::now(),
        how,
    }
}

/// Resident set size of `pid` in bytes (`VmRSS` of `/proc/<pid>/status`), `None` when the
/// process is gone.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// MiB of `bytes`, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

struct RssState {
    baseline: u64,
    peak: u64,
    last: u64,
    killed: Option<u64>,
}

/// Samples a process's RSS every [`RSS_PERIOD`] in a thread: baseline (at start), peak, last.
/// With a kill limit, a process whose RSS grows beyond baseline + limit is killed (SIGKILL) so
/// a failing test does not exhaust a shared machine; the test then fails on [`RssSampler::killed`].
pub struct RssSampler {
    pid: i32,
    state: Arc<Mutex<RssState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid`; the baseline is its RSS now.
    pub fn start(pid: i32, kill_above_growth: Option<u64>) -> anyhow::Result<RssSampler> {
        let baseline =
            rss_bytes(pid).ok_or_else(|| anyhow::anyhow!("no RSS for pid {pid}: not running"))?;
        let state = Arc::new(Mutex::new(RssState {
            baseline,
            peak: baseline,
            last: baseline,
            killed: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Relaxed) {
                let Some(rss) = rss_bytes(pid) else { break };
                let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                s.last = rss;
                s.peak = s.peak.max(rss);
                if let Some(limit) = kill_above_growth {
                    if s.killed.is_none() && rss > s.baseline + limit {
                        s.killed = Some(rss);
                        // SAFETY: kill(2) on the pid of a child this test started.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
                drop(s);
                std::thread::sleep(RSS_PERIOD);
            }
        });
        Ok(RssSampler {
            pid,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Starts sampling a [`Proc`].
    pub fn of(p: &Proc, kill_above_growth: Option<u64>) -> anyhow::Result<RssSampler> {
        RssSampler::start(p.pid(), kill_above_growth)
    }

    fn read<T>(&self, f: impl FnOnce(&RssState) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// RSS when sampling started.
    pub fn baseline(&self) -> u64 {
        self.read(|s| s.baseline)
    }

    /// Highest RSS sampled.
    pub fn peak(&self) -> u64 {
        self.read(|s| s.peak)
    }

    /// Peak minus baseline.
    pub fn growth(&self) -> u64 {
        self.read(|s| s.peak.saturating_sub(s.baseline))
    }

    /// The latest sample (read fresh when the process still runs).
    pub fn current(&self) -> u64 {
        rss_bytes(self.pid).unwrap_or_else(|| self.read(|s| s.last))
    }

    /// The RSS at which the sampler killed the process, if it did.
    pub fn killed(&self) -> Option<u64> {
        self.read(|s| s.killed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
