//! What every TCP listener of a process shares (the admin server, the HTTP ingress, the edge's
//! forwards, the core's upstream sockets): a deep accept queue, accept-error backoff and TCP
//! keepalive.
//!
//! It lives here because `strait-admin` is the lowest crate every listener depends on.

use std::net::SocketAddr;
use std::time::Duration;

/// Pending connections a listener queues before it accepts them (the kernel caps it at
/// `net.core.somaxconn`, 4,096 on current kernels). std's and tokio's 128 dropped handshakes:
/// a thousand clients reconnecting at once (a soak's round of slow downloads ending together)
/// had their SYN-ACKs retried for a minute; and 200 slowloris connections arriving together at
/// the admin server, whose accept loop waits for room at its connection cap, filled the queue,
/// so an orchestrator's probe arriving with them was dropped and its SYN retried after a second.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with [`LISTEN_BACKLOG`] (address reuse on, like `TcpListener::bind`).
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(LISTEN_BACKLOG)
}

/// First pause after a failed `accept`. Errors such as EMFILE (out of file descriptors) repeat
/// immediately while the condition lasts; retrying without a pause spins a core at 100 %.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between failed `accept`s (doubling from [`ACCEPT_BACKOFF_MIN`]): a second keeps
/// the log and CPU quiet and still picks up within a second once descriptors are free again.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Interval between unanswered TCP keepalive probes (the config's
/// `TCP_KEEPALIVE_INTERVAL`, repeated here so this crate need not depend on the config).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel declares the peer dead.
pub const KEEPALIVE_RETRIES: u32 = 6;

/// Exponential backoff of an accept loop: [`ACCEPT_BACKOFF_MIN`] doubling to
/// [`ACCEPT_BACKOFF_MAX`], back to the minimum after a successful accept.
#[derive(Debug, Clone)]
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            next: ACCEPT_BACKOFF_MIN,
        }
    }
}

impl AcceptBackoff {
    /// The pause before the next attempt after a failure (and doubles the one after it).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        d
    }

    /// An accept succeeded: the next failure pauses for the minimum again.
    pub fn reset(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }

    /// Logs a failed accept, counts it and sleeps for the next delay.
    pub async fn failed(&mut self, error: &std::io::Error, metrics: Option<&crate::Metrics>) {
        let pause = self.next_delay();
        if let Some(m) = metrics {
            m.accept_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::warn!(%error, ?pause, "accept failed; backing off");
        tokio::time::sleep(pause).await;
    }
}

/// Turns on TCP keepalive (`idle` before the first probe, then [`KEEPALIVE_INTERVAL`] ×
/// [`KEEPALIVE_RETRIES`]) so a half-open peer is found instead of pinning its flow for ever.
/// `None` leaves keepalive off. Errors are logged: a socket without keepalive still works.
pub fn set_keepalive(tcp: &tokio::net::TcpStream, idle: Option<Duration>) {
    let Some(idle) = idle else { return };
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot enable TCP keepalive");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_its_cap_and_resets() {
        let mut b = AcceptBackoff::default();
        let seq: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(seq, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), ACCEPT_BACKOFF_MIN);
    }

    /// A burst of connections to a listener whose accept loop is busy waits in its queue: with
    /// std's and tokio's backlog of 128, handshakes beyond it were dropped and each retried a
    /// second later (an admin probe behind 200 slowloris connections timed out).
    #[tokio::test]
    async fn a_burst_of_300_connections_waits_in_the_queue_of_a_listener_that_accepts_none() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let failed = tokio::task::spawn_blocking(move || {
            let conns: Vec<_> = (0..300)
                .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)))
                .collect();
            conns.iter().filter(|c| c.is_err()).count()
        })
        .await
        .unwrap();
        assert_eq!(failed, 0, "{failed} of 300 handshakes were dropped");
        drop(l);
    }

    #[tokio::test]
    async fn keepalive_is_set_on_the_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let sock = socket2::SockRef::from(&c);
        assert!(!sock.keepalive().unwrap());
        set_keepalive(&c, Some(Duration::from_secs(42)));
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(sock.keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
    }
}
