//! The per-flow pump: one TCP connection ⇄ one QUIC bidirectional stream, through the dedup
//! engine, in both directions at once.
//!
//! Memory per flow is bounded: the sender holds at most `dedup.flow_window` unacknowledged bytes
//! (it stops reading its client beyond that, or once the process-wide [`Budget`] is exhausted
//! and it holds any unacknowledged item — backpressure; past the budget, a sender holding client
//! bytes but nothing in flight goes on only with one of the budget's floors, see
//! `strait_dedup::budget`),
//! the receiver queues at most twice that plus one of the peer's max chunks while waiting for a
//! missed chunk (more is a reset), plus one read buffer ([`FIRST_READ_BUF`], [`READ_BUF`] once
//! the client sends in bulk, freed while the window holds the client back), one partial chunk
//! (≤ `dedup.max_chunk`) and one batch of supplies ([`MAX_SUPPLY_BATCH`]) per direction.
//! Encoder, decoder and the pump's buffers charge the budget with what they hold.
//!
//! Fairness between the flows of one tunnel: the receiving half reads the QUIC stream while it
//! writes its client (within the budget, else up to one frame), so a slow client's data waits in
//! the decoder and never in QUIC's buffers, where it would hold the connection receive window
//! that all the tunnel's flows share; and a sender held back by its window sends the items it
//! batched at once, since only their acknowledgement can let it go on.
//!
//! Supplies answering the peer's `Want`s are emitted one chunk at a time, at most
//! [`MAX_SUPPLY_BATCH`] bytes between two tunnel writes, never as one buffer the size of a want.
//!
//! A flow on which no byte moves in either direction (client or tunnel) for its idle timeout
//! (`limits.flow_idle_timeout`, default one hour) fails with [`FlowError::Idle`].
//!
//! Termination: each side sends `End` when its client half-closes, and finishes its QUIC send
//! stream only when (a) its own data is all acknowledged and (b) it has delivered the peer's data
//! up to the peer's `End` (after which it half-closes its client). Any error resets both the QUIC
//! stream and the TCP connection (RST), so a client never mistakes a broken flow for a short one.

use bytes::BytesMut;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use strait_admin::RouteStats;
use strait_dedup::{Budget, FlowDecoder, FlowEncoder};
use strait_wire::{Frame, FrameDecoder, RefuseCode, WireId};

use crate::stall::{self, Probe, STALL_WARN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes read from a client per read call. 64 KiB: a flow's fixed memory is two of these (one
/// per direction, the receive side's QUIC reads included), so 1,000 flows hold 128 MiB rather
/// than 512 MiB at 256 KiB; the encoder cost per byte is unchanged (BENCHMARKS.md, pipeline).
pub const READ_BUF: usize = 64 * 1024;
/// First read buffer of a flow's client: grown to [`READ_BUF`] once a read fills it.
pub const FIRST_READ_BUF: usize = 4 * 1024;
/// Most supply bytes encoded between two tunnel writes: a want naming the whole window is
/// answered in batches, never in one buffer (4 default chunks).
pub const MAX_SUPPLY_BATCH: usize = 1 << 20;
pub use strait_dedup::DEFAULT_FLOW_BUDGET;
/// Bytes beyond the peer's max chunk that one frame carrying such a chunk may take (header,
/// id, lengths): a receiver past its budget still reads a flow up to one whole frame.
pub const FRAME_SLACK: u64 = 4096;
/// Control messages queued from the receiving half to the sending half of a flow.
pub const FLOW_CTL_QUEUE: usize = 256;
/// QUIC application error code of a flow reset.
pub const RESET_CODE: u32 = 1;

/// Why a flow ended without completing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The peer refused the flow.
    #[error("refused by peer ({code:?}): {reason}")]
    Refused {
        /// Code.
        code: RefuseCode,
        /// Reason text.
        reason: String,
    },
    /// The local client's connection failed.
    #[error("client connection: {0}")]
    Client(std::io::Error),
    /// The tunnel stream failed or was reset by the peer.
    #[error("tunnel stream: {0}")]
    Tunnel(String),
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The dedup engine refused what the peer sent.
    #[error(transparent)]
    Engine(#[from] strait_dedup::Error),
    /// No byte moved in either direction for the flow's idle timeout.
    #[error("no byte moved in either direction for {after:?}")]
    Idle {
        /// The idle timeout.
        after: Duration,
    },
}

impl FlowError {
    /// The bound this error enforced, if it is one (for `strait_limit_resets_total{reason}`).
    pub fn limit_reason(&self) -> Option<strait_admin::LimitReason> {
        use strait_admin::LimitReason as R;
        use strait_dedup::Error as E;
        match self {
            FlowError::Idle { .. } => Some(R::FlowIdle),
            FlowError::Engine(E::WindowExceeded { .. }) => Some(R::ReceiveWindow),
            FlowError::Engine(E::TooLong { .. }) => Some(R::ChunkLength),
            FlowError::Engine(E::RepeatedWant { .. } | E::UnknownWant(_)) => Some(R::Wants),
            _ => None,
        }
    }
}

enum Ctl {
    Want(Vec<WireId>),
    Ack(u64),
    Send(Frame),
    DownDone,
}

/// Everything a pump needs besides its sockets.
pub struct FlowParts {
    /// Encoder of what this side sends.
    pub encoder: FlowEncoder,
    /// Decoder of what this side receives.
    pub decoder: FlowDecoder,
    /// Counters of the sending direction (WAN bytes written).
    pub tx_stats: Arc<RouteStats>,
    /// Counters of the receiving direction (WAN bytes read).
    pub rx_stats: Arc<RouteStats>,
    /// Longest a partial chunk waits.
    pub flush_delay: Duration,
    /// Frames already read from the stream (after the open handshake) to process first.
    pub prefix: FrameDecoder,
    /// The first frame from the peer must be `OpenOk` (the edge side).
    pub expect_open_ok: bool,
    /// Rate cap of what this side reads from its client (the flow's class policy).
    pub rate: Option<strait_classify::TokenBucket>,
    /// HTTP objects crossing this flow, whose previous versions are hinted as delta bases
    /// (`None` when delta is off).
    pub versions: Option<crate::versions::Tracker>,
    /// The process-wide budget the pump charges its buffers to (the encoder and decoder charge
    /// theirs already).
    pub budget: Budget,
    /// The flow fails with [`FlowError::Idle`] when no byte moves in either direction this long
    /// (`None`: never).
    pub idle_timeout: Option<Duration>,
}

/// Byte counts of one flow, for per-class statistics.
#[derive(Debug, Default)]
pub struct FlowTotals {
    /// Client bytes read and sent.
    pub tx_logical: AtomicU64,
    /// Tunnel bytes written.
    pub tx_wan: AtomicU64,
    /// Client bytes delivered.
    pub rx_logical: AtomicU64,
    /// Tunnel bytes read.
    pub rx_wan: AtomicU64,
}

/// Runs a flow to completion. On error both the stream and the TCP connection are reset.
pub async fn pump(
    tcp: TcpStream,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    parts: FlowParts,
    totals: &FlowTotals,
) -> Result<(), FlowError> {
    let _ = tcp.set_nodelay(true);
    pump_stream(tcp, send, recv, parts, totals, |tcp| {
        // Linger 0: close with RST so the client sees a failure, never a clean (short) EOF.
        let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
    })
    .await
}

/// [`pump`] over any byte stream (a TLS connection, an in-process pipe to the HTTP layer).
/// `on_error` runs before the stream is dropped when the flow fails (e.g. to arrange a reset).
pub async fn pump_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    parts: FlowParts,
    totals: &FlowTotals,
    on_error: impl FnOnce(&S),
) -> Result<(), FlowError> {
    let FlowParts {
        mut encoder,
        mut decoder,
        tx_stats,
        rx_stats,
        flush_delay,
        prefix,
        expect_open_ok,
        mut rate,
        versions,
        budget,
        idle_timeout,
    } = parts;
    // What moved last, in ms since `start` (both halves touch it; read by the idle watch).
    let start = Instant::now();
    let last_moved = AtomicU64::new(0);
    let moved = || last_moved.store(start.elapsed().as_millis() as u64, Relaxed);
    let probe = Probe::default();
    // Fails the flow after its idle timeout; logs the halves' state once per stall before that.
    let sid = send.id();
    let idle = async {
        let mut warned_at = None;
        loop {
            let last = Duration::from_millis(last_moved.load(Relaxed));
            let now = start.elapsed();
            if let Some(after) = idle_timeout.filter(|t| now >= last + *t) {
                return FlowError::Idle { after };
            }
            let warn_at = last + STALL_WARN;
            if now >= warn_at && warned_at != Some(last) {
                warned_at = Some(last);
                if probe.is_stuck() {
                    tracing::warn!(stream = %sid, stalled_for = ?now - last, state = %probe, "flow stalled");
                } else {
                    tracing::debug!(stream = %sid, idle_for = ?now - last, state = %probe, "flow idle");
                }
            }
            let trace = tracing::enabled!(tracing::Level::TRACE);
            if trace {
                tracing::trace!(stream = %sid, moved_ago = ?now - last, state = %probe, "flow state");
            }
            // Once warned, look again a stall period later (the flow may move and stall anew).
            let next = if warned_at == Some(last) {
                now + STALL_WARN
            } else {
                warn_at
            };
            let next = idle_timeout.map_or(next, |t| next.min(last + t));
            let next = if trace {
                next.min(now + STALL_WARN / 4)
            } else {
                next
            };
            tokio::time::sleep_until(start + next).await;
        }
    };
    let mut up_charge = budget.charge();
    let mut down_charge = budget.charge();
    // Shared by both halves; never held across an await.
    let versions = std::sync::Mutex::new(versions);
    let sends_requests = matches!(
        versions.lock().ok().as_deref(),
        Some(Some(t)) if t.sends() == crate::versions::Sends::Requests
    );
    let mut sent_ids = Vec::new();
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Ctl>(FLOW_CTL_QUEUE);
    let result = {
        let (mut client_r, mut client_w) = tokio::io::split(&mut stream);
        let up = async {
            // Allocated while the client is read, freed while the window holds it back.
            let mut buf: Vec<u8> = Vec::new();
            let mut bulk = false;
            let mut out = BytesMut::new();
            let mut client_eof = false;
            let mut down_done = false;
            let mut deadline: Option<Instant> = None;
            // A floor of the budget (see `strait_dedup::budget`) and the items sent when it was
            // taken: past the budget, a flow holding nothing in flight reads on only with one.
            let mut floor: Option<(strait_dedup::Floor, u64)> = None;
            // The wait for a floor, kept across turns: the floors are handed out in arrival
            // order, and a wait dropped at every wake-up (an acknowledgement, a release of
            // budget) would go to the back of the queue each time and could starve.
            let mut floor_wait = None;
            loop {
                // Act first (write what is encoded, send batched items, free buffers), then
                // wait (the select below) on a state no await separates from its guards.
                if !out.is_empty() {
                    up_charge.set((buf.len() + out.capacity()) as u64);
                    Probe::set(&probe.up, stall::up::WRITING, true);
                    send.write_all(&out)
                        .await
                        .map_err(|e| FlowError::Tunnel(e.to_string()))?;
                    Probe::set(&probe.up, stall::up::WRITING, false);
                    moved();
                    tx_stats.wan_bytes.fetch_add(out.len() as u64, Relaxed);
                    totals.tx_wan.fetch_add(out.len() as u64, Relaxed);
                    out.clear();
                }
                if client_eof && encoder.all_acked() && down_done {
                    break;
                }
                // One look at the budget decides this turn: other flows charge it from other
                // threads at any moment, and a flow that decided to flush on one reading and
                // to wait on another would wait for acknowledgements of items it never sent.
                let exhausted = budget.is_exhausted();
                // The floor is given back once the budget has room, or once the item it let
                // through is acknowledged (the flow then queues again behind the others).
                if floor.as_ref().is_some_and(|(_, sent)| {
                    !exhausted || (encoder.sent_items() > *sent && encoder.all_acked())
                }) {
                    floor = None;
                }
                // Held back by the window, or by the budget: past it, a flow with an item in
                // flight waits for its acknowledgement (`full`), one holding client bytes but
                // nothing in flight for a floor, and one holding nothing reads on in a small
                // buffer (an idle client, a download's once its request is sent, takes no floor).
                let full = encoder.window_full_at(exhausted);
                let over = floor.is_none() && exhausted;
                let held_back = full || (over && !encoder.holds_nothing());
                if full && encoder.has_unsent_items() {
                    // Held back with items the peer has not been sent: only their
                    // acknowledgements can free the window, so send them before waiting (the
                    // flush timer waits for an idle client, which this one is not).
                    encoder.flush_items(&mut out);
                    continue;
                }
                let wants_floor = !client_eof && held_back && !full;
                if !wants_floor {
                    floor_wait = None;
                } else if floor_wait.is_none() {
                    floor_wait = Some(Box::pin(budget.floor()));
                }
                if held_back && !encoder.has_supply() {
                    // Held back (by the window or the budget), possibly for long: keep the
                    // data, free the buffers (`out` was written above).
                    buf = Vec::new();
                    out = BytesMut::new();
                    encoder.release_buffers();
                    up_charge.set(0);
                }
                let size = if bulk && !over {
                    READ_BUF
                } else {
                    FIRST_READ_BUF
                };
                if (buf.is_empty() || buf.len() < size) && !client_eof && !held_back {
                    // Small until the client sends in bulk: an idle client (a download's, once
                    // its request is sent) costs 4 KiB, not 64.
                    buf = vec![0u8; size];
                    up_charge.set((buf.len() + out.capacity()) as u64);
                }
                let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
                probe.up.store(
                    stall::flags(&[
                        (client_eof, stall::up::CLIENT_EOF),
                        (down_done, stall::up::DOWN_DONE),
                        (full, stall::up::WINDOW_FULL),
                        (encoder.all_acked(), stall::up::ALL_ACKED),
                        (encoder.has_supply(), stall::up::HAS_SUPPLY),
                        (encoder.has_pending(), stall::up::HAS_PENDING),
                        (deadline.is_some(), stall::up::DEADLINE),
                    ]),
                    Relaxed,
                );
                probe.up_held.store(encoder.held_bytes(), Relaxed);
                tokio::select! {
                    biased;
                    msg = ctl_rx.recv(), if !down_done || !encoder.all_acked() => match msg {
                        Some(Ctl::Want(ids)) => encoder.on_want(&ids)?,
                        Some(Ctl::Ack(n)) => encoder.on_ack(n)?,
                        Some(Ctl::Send(f)) => f.encode(&mut out),
                        Some(Ctl::DownDone) | None => down_done = true,
                    },
                    // Supplies before new client data: the peer is stalled on them.
                    _ = std::future::ready(()), if encoder.has_supply() => {
                        while out.len() < MAX_SUPPLY_BATCH && encoder.poll_supply(&mut out) {}
                    }
                    f = async { floor_wait.as_mut().expect("guarded").await }, if wants_floor => {
                        floor_wait = None;
                        floor = Some((f, encoder.sent_items()));
                    }
                    // Room may come back before a floor does (the floors' holders may be waiting
                    // on slow clients): look again then.
                    () = budget.room(), if wants_floor => {}
                    n = client_r.read(&mut buf), if !client_eof && !buf.is_empty() && !held_back => {
                        match n {
                            Ok(0) => {
                                client_eof = true;
                                deadline = None;
                                encoder.finish(&mut out);
                            }
                            Ok(n) => {
                                moved();
                                // A full read: the client sends in bulk, read in 64 KiB.
                                bulk |= n == buf.len();
                                totals.tx_logical.fetch_add(n as u64, Relaxed);
                                {
                                    let mut v = versions.lock().unwrap_or_else(|e| e.into_inner());
                                    if let Some(t) = v.as_mut() {
                                        // Chunks flushed since the last read belong to the
                                        // object before any that begins now.
                                        encoder.take_sent_ids(&mut sent_ids);
                                        t.on_sent_ids(&sent_ids);
                                        sent_ids.clear();
                                        let ev = if sends_requests {
                                            t.on_request_bytes(&buf[..n])
                                        } else {
                                            t.on_response_bytes()
                                        };
                                        if let crate::versions::Event::Begin(hints) = ev {
                                            if let Some(h) = hints {
                                                encoder.add_base_hints(&h);
                                            }
                                            encoder.record_sent_ids(true);
                                        }
                                    }
                                    encoder.push(&buf[..n], &mut out);
                                    if let Some(t) = v.as_mut().filter(|t| t.recording()) {
                                        encoder.take_sent_ids(&mut sent_ids);
                                        t.on_sent_ids(&sent_ids);
                                        sent_ids.clear();
                                    }
                                }
                                if let Some(wait) = rate.as_mut().and_then(|r| r.take(n as u64, std::time::Instant::now())) {
                                    // The class's rate cap: hold the client back (backpressure).
                                    tokio::time::sleep(wait).await;
                                }
                                if encoder.has_pending() {
                                    if flush_delay.is_zero() {
                                        encoder.flush(&mut out);
                                    } else if deadline.is_none() {
                                        deadline = Some(Instant::now() + flush_delay);
                                    }
                                }
                            }
                            Err(e) => return Err(FlowError::Client(e)),
                        }
                    }
                    // Listed after the read: with `biased`, the partial chunk is flushed only
                    // when the client really is idle, not because a tunnel write was slow, nor
                    // while the window or the budget holds it back.
                    _ = sleep, if deadline.is_some() && !held_back => {
                        deadline = None;
                        encoder.flush(&mut out);
                    }
                }
            }
            if let Some(t) = versions.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                encoder.take_sent_ids(&mut sent_ids);
                t.on_sent_ids(&sent_ids);
            }
            send.finish()
                .map_err(|e| FlowError::Tunnel(e.to_string()))?;
            Ok::<(), FlowError>(())
        };
        let down = async {
            let mut fd = prefix;
            let mut opened = !expect_open_ok;
            let mut shut = false;
            let mut wants = Vec::new();
            // Bytes popped from the decoder, being written to the client (from `written`).
            let mut pending: Option<bytes::Bytes> = None;
            let mut written = 0usize;
            let mut stream_done = false;
            let read_floor = decoder.peer_max_chunk() as u64 + FRAME_SLACK;
            let ctl = |m: Ctl| {
                let tx = ctl_tx.clone();
                let probe = &probe;
                async move {
                    Probe::set(&probe.down, stall::down::SENDING_CTL, true);
                    let r = tx
                        .send(m)
                        .await
                        .map_err(|_| FlowError::Tunnel("flow sender gone".into()));
                    Probe::set(&probe.down, stall::down::SENDING_CTL, false);
                    r
                }
            };
            loop {
                while let Some((frame, _)) = fd
                    .next_frame()
                    .map_err(|e| FlowError::Protocol(e.to_string()))?
                {
                    if !opened {
                        match frame {
                            Frame::OpenOk => {
                                opened = true;
                                continue;
                            }
                            Frame::Refuse { code, reason } => {
                                return Err(FlowError::Refused { code, reason })
                            }
                            _ => {
                                return Err(FlowError::Protocol("expected OpenOk or Refuse".into()))
                            }
                        }
                    }
                    match frame {
                        Frame::Want(ids) => ctl(Ctl::Want(ids)).await?,
                        Frame::Ack(n) => ctl(Ctl::Ack(n)).await?,
                        f @ (Frame::Literal { .. }
                        | Frame::Refs(_)
                        | Frame::Supply { .. }
                        | Frame::Delta { .. }
                        | Frame::DeltaRun { .. }
                        | Frame::Part { .. }
                        | Frame::End) => {
                            decoder.on_frame(f, &mut wants)?;
                            if !wants.is_empty() {
                                ctl(Ctl::Send(Frame::Want(std::mem::take(&mut wants)))).await?;
                            }
                        }
                        Frame::Ping(_) => {}
                        _ => {
                            return Err(FlowError::Protocol(
                                "unexpected frame on a flow stream".into(),
                            ))
                        }
                    }
                }
                if pending.is_none() {
                    pending = decoder.pop_ready();
                    // A reference whose chunk the store lost meanwhile is wanted now.
                    decoder.take_wants(&mut wants)?;
                    if !wants.is_empty() {
                        ctl(Ctl::Send(Frame::Want(std::mem::take(&mut wants)))).await?;
                    }
                    written = 0;
                    if let Some(b) = &pending {
                        if let Some(t) = versions.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
                        {
                            if sends_requests {
                                t.on_response_bytes();
                            } else {
                                t.on_request_bytes(b);
                            }
                        }
                    }
                }
                // Acknowledge what was popped as it goes (every `ACK_EVERY` items, and all of it
                // once the queue is drained), not only when the client has taken everything: a
                // slow client must not leave the peer holding its whole window unacknowledged.
                if let Some(a) = decoder.take_ack() {
                    ctl(Ctl::Send(a)).await?;
                }
                if pending.is_none() {
                    if decoder.is_done() && !shut {
                        shut = true;
                        // Propagate the half-close; a client that already closed is fine.
                        let _ = client_w.shutdown().await;
                        ctl(Ctl::DownDone).await?;
                    }
                    if stream_done {
                        break;
                    }
                }
                // Undecoded tunnel bytes and the popped chunk still being written (the decoder
                // charges what it holds itself).
                // The whole chunk: its allocation lives until the last byte is written.
                let writing = pending.as_ref().map_or(0, |b| b.len()) as u64;
                down_charge.set(fd.allocated() as u64 + writing);
                // The tunnel is read while the client is written: a slow client must not leave
                // its data unread in QUIC's buffers, where it would hold the connection's
                // receive window that every other flow of the tunnel shares. The decoder holds
                // it instead, bounded by the flow window (a peer sending past it is reset). Past
                // the budget, a flow with nothing to write reads on only while it holds less
                // than one of the peer's frames (so the frame its client waits for can always
                // complete), or while it waits for a supply (which comes behind what the peer
                // sent meanwhile, bounded by the flow window). A flow still writing its client
                // has work and waits: a thousand slow clients then hold one chunk each past the
                // budget, not a chunk and a frame.
                let held = decoder.held_bytes() + fd.buffered() as u64;
                let may_read = !stream_done
                    && (!budget.is_exhausted()
                        || (pending.is_none() && held < read_floor)
                        || decoder.awaits_supply());
                probe.down.store(
                    stall::flags(&[
                        (opened, stall::down::OPENED),
                        (shut, stall::down::SHUT),
                        (stream_done, stall::down::STREAM_DONE),
                        (may_read, stall::down::MAY_READ),
                        (pending.is_some(), stall::down::PENDING),
                        (decoder.awaits_supply(), stall::down::AWAITS_SUPPLY),
                        (decoder.is_done(), stall::down::DECODER_DONE),
                        (budget.is_exhausted(), stall::down::BUDGET_EXHAUSTED),
                    ]),
                    Relaxed,
                );
                probe.down_held.store(held, Relaxed);
                tokio::select! {
                    biased;
                    w = async {
                        match &pending {
                            Some(b) => client_w.write(&b[written..]).await,
                            None => std::future::pending().await,
                        }
                    }, if pending.is_some() => {
                        let n = w.map_err(FlowError::Client)?;
                        if n == 0 {
                            return Err(FlowError::Client(std::io::ErrorKind::WriteZero.into()));
                        }
                        written += n;
                        moved();
                        totals.rx_logical.fetch_add(n as u64, Relaxed);
                        if pending.as_ref().is_some_and(|b| written == b.len()) {
                            pending = None;
                        }
                    }
                    c = recv.read_chunk(READ_BUF, true), if may_read => match c {
                        Ok(Some(c)) => {
                            moved();
                            rx_stats.wan_bytes.fetch_add(c.bytes.len() as u64, Relaxed);
                            totals.rx_wan.fetch_add(c.bytes.len() as u64, Relaxed);
                            fd.extend(&c.bytes);
                        }
                        Ok(None) => stream_done = true,
                        Err(e) => return Err(FlowError::Tunnel(e.to_string())),
                    },
                }
            }
            if !opened {
                return Err(FlowError::Protocol("stream closed before OpenOk".into()));
            }
            if !decoder.is_done() {
                return Err(FlowError::Protocol(
                    "peer closed the stream before ending its data".into(),
                ));
            }
            if fd.buffered() != 0 {
                return Err(FlowError::Protocol(format!(
                    "{} trailing bytes after the last frame",
                    fd.buffered()
                )));
            }
            Ok::<(), FlowError>(())
        };
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
            e = idle => Err(e),
        }
    };
    if result.is_err() {
        reset(send, recv);
        on_error(&stream);
    }
    result
}

/// Metric families of the process-wide flow budget: its limit and the bytes flows hold now.
pub fn budget_families(b: &Budget) -> Vec<strait_admin::ExtraFamily> {
    let one = |name: &str, help: &str, v: u64| strait_admin::ExtraFamily {
        name: name.to_string(),
        help: help.to_string(),
        kind: "gauge",
        samples: vec![(Vec::new(), v as f64)],
    };
    vec![
        one(
            "flow_budget_bytes",
            "Process-wide byte budget of flow buffers (limits.flow_budget).",
            b.limit(),
        ),
        one(
            "flow_budget_used_bytes",
            "Bytes flow buffers, queues and slots hold now (the holders of its floors may hold a chunk each beyond the budget).",
            b.used(),
        ),
    ]
}

/// Resets both halves of a stream.
pub fn reset(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
    let _ = send.reset(quinn::VarInt::from_u32(RESET_CODE));
    let _ = recv.stop(quinn::VarInt::from_u32(RESET_CODE));
}

/// Reads whole frames from `recv` until one is available; returns it with the decoder holding
/// whatever followed it.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    fd: &mut FrameDecoder,
    stats: Option<&RouteStats>,
) -> Result<Option<Frame>, FlowError> {
    loop {
        if let Some((f, _)) = fd
            .next_frame()
            .map_err(|e| FlowError::Protocol(e.to_string()))?
        {
            return Ok(Some(f));
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => {
                if let Some(s) = stats {
                    s.wan_bytes.fetch_add(c.bytes.len() as u64, Relaxed);
                }
                fd.extend(&c.bytes);
            }
            Ok(None) => return Ok(None),
            Err(e) => return Err(FlowError::Tunnel(e.to_string())),
        }
    }
}

/// What every flow of a process shares to build its dedup engine (edge and core alike).
pub struct Engine {
    /// Keyed-BLAKE3 chunk ids.
    pub hasher: strait_chunk::ChunkHasher,
    /// Chunk sizes.
    pub chunker: strait_chunk::ChunkerConfig,
    /// This side's chunk store.
    pub store: Arc<strait_store::Store>,
    /// `[dedup]` settings.
    pub dedup: strait_config::Dedup,
    /// Sketch index and delta counters.
    pub deltas: Arc<crate::deltas::Deltas>,
    /// Process-wide budget of flow buffers (every flow's encoder, decoder and pump charge it).
    pub budget: Budget,
    /// A flow on which no byte moves in either direction this long fails (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Each peer's max chunk, learnt at connect (`Hello` / `HelloOk`).
    pub peers: PeerLimits,
}

/// What each peer announced at connect, by store slot: lock-free, one entry per slot.
pub struct PeerLimits {
    max_chunk: [AtomicU32; strait_store::MAX_PEERS],
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            max_chunk: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl PeerLimits {
    /// Records the max chunk `peer` announced (its latest connection's).
    pub fn set_max_chunk(&self, peer: strait_store::PeerSlot, max_chunk: u32) {
        if let Some(m) = self.max_chunk.get(peer.index() as usize) {
            m.store(max_chunk, Relaxed);
        }
    }

    /// The max chunk `peer` announced, if it did.
    pub fn max_chunk(&self, peer: strait_store::PeerSlot) -> Option<u32> {
        self.max_chunk
            .get(peer.index() as usize)
            .map(|m| m.load(Relaxed))
            .filter(|m| *m > 0)
    }
}

/// One flow's place: its route, which way this side sends, its peer and policy.
pub struct FlowSpec<'a> {
    /// Route (edge forward or core service) name.
    pub route: &'a str,
    /// Direction of what this side sends (the edge uploads, the core downloads).
    pub sending: strait_admin::Direction,
    /// The peer's slot in the store.
    pub peer: strait_store::PeerSlot,
    /// Data-path settings after the class verdict.
    pub policy: strait_config::RoutePolicy,
    /// Rate cap of the flow's class.
    pub rate_limit: Option<strait_classify::ByteRate>,
    /// Counters of the sending direction.
    pub tx_stats: Arc<RouteStats>,
    /// Counters of the receiving direction.
    pub rx_stats: Arc<RouteStats>,
    /// Frames already read from the stream.
    pub prefix: FrameDecoder,
    /// Whether the peer's first frame must be `OpenOk`.
    pub expect_open_ok: bool,
    /// The budget this flow charges instead of the engine's (a core gives each edge identity a
    /// child of the process budget, `limits.edge_flow_budget`); `None`: the engine's.
    pub budget: Option<Budget>,
}

impl Engine {
    /// The encoder, decoder and settings of one flow.
    pub fn parts(&self, spec: FlowSpec<'_>) -> FlowParts {
        let d = &self.dedup;
        let budget = spec.budget.unwrap_or_else(|| self.budget.clone());
        let delta = d.delta && spec.policy.delta;
        let receiving = match spec.sending {
            strait_admin::Direction::Upload => strait_admin::Direction::Download,
            strait_admin::Direction::Download => strait_admin::Direction::Upload,
        };
        let encoder = FlowEncoder::new(
            strait_dedup::EncoderConfig {
                chunker: self.chunker,
                dedup: spec.policy.dedup,
                compress: strait_codec::CompressConfig {
                    level: spec.policy.compression,
                    tensor: true,
                },
                window: d.flow_window,
                delta: strait_dedup::DeltaConfig {
                    enabled: delta,
                    max_bases: d.max_delta_bases,
                    index_bytes: d.sketch_index_bytes,
                },
                // Record-aligned cuts help exact dedup but leave more, smaller chunks for
                // deltas, which then cost more (BENCHMARKS.md, delta section): use them
                // without delta.
                format_cuts: !delta,
            },
            self.hasher.clone(),
            self.store.clone(),
            spec.peer,
            spec.tx_stats.clone(),
        )
        .with_delta(
            self.deltas.index.clone(),
            self.deltas.stats(spec.route, spec.sending),
        )
        .with_budget(&budget);
        // A peer that did not announce one (none can, after a v2 Hello) is held to ours.
        let peer_max_chunk = self
            .peers
            .max_chunk(spec.peer)
            .unwrap_or(d.max_chunk as u32);
        let decoder = FlowDecoder::new(
            self.hasher.clone(),
            self.store.clone(),
            spec.peer,
            d.flow_window,
            spec.rx_stats.clone(),
        )
        .with_delta(
            Some(self.deltas.index.clone()),
            self.deltas.stats(spec.route, receiving),
        )
        .with_peer_max_chunk(peer_max_chunk)
        .with_budget(&budget);
        FlowParts {
            encoder,
            decoder,
            tx_stats: spec.tx_stats,
            rx_stats: spec.rx_stats,
            flush_delay: d.flush_delay,
            prefix: spec.prefix,
            expect_open_ok: spec.expect_open_ok,
            rate: spec
                .rate_limit
                .map(strait_classify::TokenBucket::with_default_burst),
            versions: delta.then(|| {
                crate::versions::Tracker::new(
                    match spec.sending {
                        strait_admin::Direction::Upload => crate::versions::Sends::Requests,
                        strait_admin::Direction::Download => crate::versions::Sends::Responses,
                    },
                    spec.route,
                    self.deltas.versions.clone(),
                )
            }),
            budget,
            idle_timeout: self.idle_timeout,
        }
    }
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
