//! The quinn integration: an [`AsyncUdpSocket`] that runs every datagram through FEC.
//!
//! Send path: quinn's `try_send` → per-peer [`Session::on_send`] → source packet and any
//! completed repair go to the kernel at once. Receive path: kernel → per-peer
//! [`Session::on_receive`] → source packets and rebuilt packets queue for quinn's `poll_recv`;
//! control packets feed the encoder. A background tokio task runs the timers (idle flush, loss
//! reports, block expiry): it must not depend on quinn polling us, because the tail of a transfer
//! is exactly when quinn goes quiet.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::Future,
    io::{self, IoSliceMut},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, Weak,
    },
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use quinn::{
    udp::{EcnCodepoint, RecvMeta, Transmit, UdpSocketState},
    AsyncUdpSocket, UdpPoller,
};
use tokio::{io::Interest, sync::Notify};

use crate::{config::FecConfig, packet, session::Session, stats::FecStats};

/// Peers with FEC state on one socket; the least recently active is evicted beyond this.
pub const MAX_PEERS: usize = 256;
/// A peer silent this long loses its FEC state.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Received packets waiting for quinn to take them.
pub const MAX_PENDING_DELIVERIES: usize = 4096;
/// Datagrams read per receive call.
const RECV_BATCH: usize = 4;
/// Receive buffer per datagram: room for a GRO batch, since quinn-udp enables GRO.
const RECV_BUF_LEN: usize = 64 * 1024;
/// The timer task wakes at least this often to evict idle peers.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves per-peer FEC state that is still memory-safe; keep
    // serving rather than poisoning the tunnel.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Peer {
    session: Session,
    last_active: Instant,
    src_ip: Option<IpAddr>,
    warned: bool,
}

struct Peers {
    map: HashMap<SocketAddr, Peer>,
    armed: Option<Instant>,
}

struct Delivery {
    addr: SocketAddr,
    data: Vec<u8>,
    ecn: Option<EcnCodepoint>,
    dst_ip: Option<IpAddr>,
}

struct RecvState {
    bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    pending: VecDeque<Delivery>,
}

struct Shared {
    io: tokio::net::UdpSocket,
    udp: UdpSocketState,
    cfg: FecConfig,
    stats: Arc<FecStats>,
    peers: Mutex<Peers>,
    recv: Mutex<RecvState>,
    timer: Arc<Notify>,
    rng: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Wakes the timer task so it notices the socket is gone and exits.
        self.timer.notify_one();
    }
}

impl Shared {
    fn test_drop(&self) -> bool {
        if self.cfg.test_drop_rate <= 0.0 {
            return false;
        }
        let prev = self
            .rng
            .fetch_update(Relaxed, Relaxed, |mut x| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Some(x)
            })
            .unwrap_or(1);
        let mut x = prev;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 11) as f64 / (1u64 << 53) as f64) < self.cfg.test_drop_rate
    }

    fn send_wire(
        &self,
        destination: SocketAddr,
        ecn: Option<EcnCodepoint>,
        src_ip: Option<IpAddr>,
        contents: &[u8],
    ) -> io::Result<()> {
        if self.test_drop() {
            FecStats::add(&self.stats.test_dropped, 1);
            return Ok(());
        }
        let t = Transmit {
            destination,
            ecn,
            contents,
            segment_size: None,
            src_ip,
        };
        self.udp.send((&self.io).into(), &t)
    }

    fn rearm(&self, peers: &mut Peers, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            if peers.armed.is_none_or(|a| d < a) {
                peers.armed = Some(d);
                self.timer.notify_one();
            }
        }
    }

    fn peer<'a>(&self, peers: &'a mut Peers, addr: SocketAddr, now: Instant) -> &'a mut Peer {
        if !peers.map.contains_key(&addr) && peers.map.len() >= MAX_PEERS {
            if let Some(oldest) = peers
                .map
                .iter()
                .min_by_key(|(_, p)| p.last_active)
                .map(|(a, _)| *a)
            {
                peers.map.remove(&oldest);
            }
        }
        let entry = peers.map.entry(addr).or_insert_with(|| Peer {
            session: Session::new(&self.cfg, self.stats.clone(), now),
            last_active: now,
            src_ip: None,
            warned: false,
        });
        entry.last_active = now;
        entry
    }

    /// Runs due timers, sends what they produced, returns the next deadline. Sends under the
    /// peers lock, like [`FecSocket::try_send`]: packets leave in sequence-number order, so a
    /// timer-flushed repair packet racing quinn's next packet never looks like a loss.
    fn run_timers(&self, now: Instant) -> Instant {
        let mut next = now + MAX_TIMER_SLEEP;
        let mut peers = lock(&self.peers);
        peers
            .map
            .retain(|_, p| now.saturating_duration_since(p.last_active) < PEER_IDLE_TIMEOUT);
        for (addr, p) in peers.map.iter_mut() {
            if p.session.poll_timeout().is_some_and(|t| t <= now) {
                p.session.handle_timeout(now);
            }
            while let Some(w) = p.session.poll_transmit() {
                if let Err(e) = self.send_wire(*addr, None, p.src_ip, &w) {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        FecStats::add(&self.stats.local_send_drops, 1);
                    }
                }
            }
            if let Some(t) = p.session.poll_timeout() {
                next = next.min(t);
            }
        }
        peers.armed = Some(next);
        next
    }

    fn on_datagram(
        &self,
        wire: &[u8],
        addr: SocketAddr,
        ecn: Option<EcnCodepoint>,
        dst_ip: Option<IpAddr>,
        pending: &mut VecDeque<Delivery>,
    ) {
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        if !peers.map.contains_key(&addr) {
            // No state for a sender whose first datagram is not FEC at all.
            if let Err(e) = packet::decode(wire) {
                FecStats::add(&self.stats.packets_rejected, 1);
                tracing::debug!(peer = %addr, error = %e, "dropping datagram from unknown peer");
                return;
            }
        }
        let p = self.peer(&mut peers, addr, now);
        match p.session.on_receive(wire, now) {
            Ok(delivered) => {
                for data in delivered {
                    if pending.len() >= MAX_PENDING_DELIVERIES {
                        pending.pop_front();
                    }
                    pending.push_back(Delivery {
                        addr,
                        data,
                        ecn,
                        dst_ip,
                    });
                }
            }
            Err(e) => {
                FecStats::add(&self.stats.packets_rejected, 1);
                if !p.warned {
                    p.warned = true;
                    tracing::warn!(peer = %addr, error = %e, "dropping FEC datagram (further ones from this peer logged at debug)");
                } else {
                    tracing::debug!(peer = %addr, error = %e, "dropping FEC datagram");
                }
            }
        }
        let deadline = p.session.poll_timeout();
        self.rearm(&mut peers, deadline);
    }
}

/// A UDP socket for quinn with FEC below QUIC. Build it with [`wrap_socket`].
pub struct FecSocket {
    shared: Arc<Shared>,
}

impl fmt::Debug for FecSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FecSocket")
            .field("local_addr", &self.shared.io.local_addr().ok())
            .field("mode", &self.shared.cfg.mode)
            .finish_non_exhaustive()
    }
}

/// Wraps `socket` for quinn. With [`crate::FecMode::Off`] (and no test loss) this is quinn's own
/// tokio socket, so Off costs nothing. Must be called inside a tokio runtime: it spawns the timer
/// task (which ends when the socket is dropped).
///
/// ```ignore
/// let sock = strait_fec::wrap_socket(udp, cfg, stats)?;
/// quinn::Endpoint::new_with_abstract_socket(endpoint_cfg, server_cfg, sock, Arc::new(quinn::TokioRuntime))
/// ```
pub fn wrap_socket(
    socket: std::net::UdpSocket,
    cfg: FecConfig,
    stats: Arc<FecStats>,
) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if matches!(cfg.mode, crate::FecMode::Off) {
        use quinn::Runtime;
        return quinn::TokioRuntime.wrap_udp_socket(socket);
    }
    let handle = tokio::runtime::Handle::try_current().map_err(|e| {
        io::Error::other(format!("strait-fec wrap_socket needs a tokio runtime: {e}"))
    })?;
    let udp = UdpSocketState::new((&socket).into())?;
    let io = tokio::net::UdpSocket::from_std(socket)?;
    let timer = Arc::new(Notify::new());
    let seed = cfg.test_seed | 1;
    let shared = Arc::new(Shared {
        io,
        udp,
        cfg,
        stats,
        peers: Mutex::new(Peers {
            map: HashMap::new(),
            armed: None,
        }),
        recv: Mutex::new(RecvState {
            bufs: vec![vec![0u8; RECV_BUF_LEN]; RECV_BATCH],
            metas: vec![RecvMeta::default(); RECV_BATCH],
            pending: VecDeque::new(),
        }),
        timer: timer.clone(),
        rng: AtomicU64::new(seed),
    });
    let weak = Arc::downgrade(&shared);
    handle.spawn(timer_task(weak, timer));
    Ok(Arc::new(FecSocket { shared }))
}

async fn timer_task(weak: Weak<Shared>, notify: Arc<Notify>) {
    loop {
        let next = {
            let Some(shared) = weak.upgrade() else {
                return;
            };
            shared.run_timers(Instant::now())
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = notify.notified() => {}
        }
    }
}

impl AsyncUdpSocket for FecSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller {
            shared: self.shared.clone(),
            fut: None,
        })
    }

    fn try_send(&self, t: &Transmit) -> io::Result<()> {
        let sh = &self.shared;
        let mut committed = false;
        let res = sh.io.try_io(Interest::WRITABLE, || {
            let now = Instant::now();
            let mut out: Vec<Vec<u8>> = Vec::new();
            // Encoded and sent under the peers lock: the timer task's packets (idle flushes,
            // reports) cannot slip between a sequence number and the wire.
            let mut peers = lock(&sh.peers);
            let p = sh.peer(&mut peers, t.destination, now);
            p.src_ip = t.src_ip;
            // GSO is off (max_transmit_segments = 1), but split defensively.
            let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
            for pkt in t.contents.chunks(seg) {
                match p.session.on_send(pkt, now) {
                    Ok(wires) => out.extend(wires),
                    Err(e) => tracing::debug!(error = %e, "packet not FEC-encoded; dropped"),
                }
            }
            let deadline = p.session.poll_timeout();
            sh.rearm(&mut peers, deadline);
            committed = true;
            let mut blocked = false;
            for w in &out {
                match sh.send_wire(t.destination, t.ecn, t.src_ip, w) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        FecStats::add(&sh.stats.local_send_drops, 1);
                    }
                    Err(e) => return Err(e),
                }
            }
            if blocked {
                // Clears tokio's readiness so quinn's next send waits for writability.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match res {
            // The packet is already in an FEC block: count it as a local loss (repair may still
            // rebuild it, QUIC retransmits otherwise) instead of having quinn send it twice.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && committed => Ok(()),
            r => r,
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let sh = &self.shared;
        let mut guard = lock(&sh.recv);
        let rs = &mut *guard;
        loop {
            if !rs.pending.is_empty() {
                let mut n = 0;
                while n < bufs.len().min(meta.len()) {
                    let Some(d) = rs.pending.pop_front() else {
                        break;
                    };
                    if d.data.len() > bufs[n].len() {
                        continue;
                    }
                    bufs[n][..d.data.len()].copy_from_slice(&d.data);
                    meta[n] = RecvMeta {
                        addr: d.addr,
                        len: d.data.len(),
                        stride: d.data.len(),
                        ecn: d.ecn,
                        dst_ip: d.dst_ip,
                    };
                    n += 1;
                }
                if n > 0 {
                    return Poll::Ready(Ok(n));
                }
            }
            ready!(sh.io.poll_recv_ready(cx))?;
            let RecvState {
                bufs: scratch,
                metas,
                pending,
            } = rs;
            let res = sh.io.try_io(Interest::READABLE, || {
                let mut slices: Vec<IoSliceMut<'_>> =
                    scratch.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                sh.udp.recv((&sh.io).into(), &mut slices, metas)
            });
            match res {
                Ok(count) => {
                    for (buf, m) in scratch.iter().zip(metas.iter()).take(count) {
                        let stride = m.stride.max(1);
                        for wire in buf[..m.len.min(buf.len())].chunks(stride) {
                            sh.on_datagram(wire, m.addr, m.ecn, m.dst_ip, pending);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Like quinn's own tokio socket: a receive error (e.g. an ICMP-induced one) is
                // not fatal for the endpoint.
                Err(e) => tracing::debug!(error = %e, "UDP receive error"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.io.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.shared.udp.may_fragment()
    }
}

type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

struct Poller {
    shared: Arc<Shared>,
    fut: Option<WritableFuture>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poller").finish_non_exhaustive()
    }
}

impl UdpPoller for Poller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let fut = this.fut.get_or_insert_with(|| {
            let shared = this.shared.clone();
            Box::pin(async move { shared.io.writable().await })
        });
        let res = fut.as_mut().poll(cx);
        if res.is_ready() {
            this.fut = None;
        }
        res
    }
}
