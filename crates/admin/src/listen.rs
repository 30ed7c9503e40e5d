//! What every TCP listener of a process shares (the admin server, the HTTP ingress, the edge's
//! forwards, the core's upstream sockets): accept-error backoff and TCP keepalive.
//!
//! It lives here because `strait-admin` is the lowest crate every listener depends on; it holds
//! no listener itself.

use std::time::Duration;

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
