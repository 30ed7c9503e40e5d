//! The core's connect to a declared upstream: TCP, or TCP + TLS origination.

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{AsyncStream, Error};

/// Longest a TCP connect plus TLS handshake to an upstream may take.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most certificates read from a CA file.
const MAX_CA_CERTS: usize = 4096;

/// A parsed upstream. Parse once at start-up (invalid strings and CA files stop the process
/// there), connect per flow.
#[derive(Clone)]
pub struct Upstream {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// TCP keepalive idle time of each connection (`limits.tcp_keepalive`); `None` = off.
    keepalive: Option<Duration>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Upstream {
    /// Parse `tcp://host:port`, bare `host:port`, `http://host[:port]` (TCP, default port 80) or
    /// `https://host[:port]` (TLS, default port 443, SNI and verification against `host`).
    /// TLS verifies against `roots` (a PEM file of CA certificates) if given, else the Mozilla
    /// root set compiled in (`webpki-roots`, so it works in containers without a CA bundle).
    /// IPv6 literals are written in brackets: `https://[::1]:8443`.
    pub fn parse(upstream: &str, roots: Option<&Path>) -> Result<Upstream, Error> {
        let bad = |reason: &str| Error::InvalidUpstream {
            upstream: upstream.to_owned(),
            reason: reason.to_owned(),
        };
        let (rest, default_port, tls) = if let Some(r) = upstream.strip_prefix("https://") {
            (r, Some(443), true)
        } else if let Some(r) = upstream.strip_prefix("http://") {
            (r, Some(80), false)
        } else if let Some(r) = upstream.strip_prefix("tcp://") {
            (r, None, false)
        } else if upstream.contains("://") {
            return Err(bad("scheme must be tcp://, http:// or https://"));
        } else {
            (upstream, None, false)
        };
        // A trailing '/' is harmless; any other path would be silently ignored, so refuse it.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "only scheme://host[:port] is allowed (no path, query or user info)",
            ));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| bad("malformed host:port"))?;
        let port = match (port, default_port) {
            (Some(p), _) => p,
            (None, Some(d)) => d,
            (None, None) => return Err(bad("a port is required")),
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let tls = if tls {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| bad("host is not a valid DNS name or IP address for TLS"))?;
            let config = match roots {
                Some(path) => Arc::new(client_config(load_roots(path)?)?),
                None => default_config()?,
            };
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(Upstream {
            host: host.to_owned(),
            port,
            tls,
            keepalive: Some(crate::TCP_KEEPALIVE),
        })
    }

    /// Whether connecting originates TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `host:port` connected to.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Sets the TCP keepalive idle time of its connections (default [`crate::TCP_KEEPALIVE`]).
    pub fn with_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.keepalive = idle;
        self
    }

    /// Connect (and, for `https://`, complete a verified TLS handshake) within
    /// [`UPSTREAM_CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> io::Result<Box<dyn AsyncStream>> {
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, self.connect_inner()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connecting to upstream {} took longer than {:?}",
                    self.authority(),
                    UPSTREAM_CONNECT_TIMEOUT
                ),
            )),
        }
    }

    async fn connect_inner(&self) -> io::Result<Box<dyn AsyncStream>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                io::Error::new(e.kind(), format!("connect to {}: {e}", self.authority()))
            })?;
        // Requests and small responses must not wait for Nagle.
        tcp.set_nodelay(true)?;
        strait_admin::listen::set_keepalive(&tcp, self.keepalive);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("TLS handshake with {}: {e}", self.authority()),
                    )
                })?;
                Ok(Box::new(tls))
            }
        }
    }
}

/// Parse `upstream` (see [`Upstream::parse`]) and connect to it.
pub async fn connect_upstream(
    upstream: &str,
    roots: Option<&Path>,
) -> io::Result<Box<dyn AsyncStream>> {
    Upstream::parse(upstream, roots)?.connect().await
}

/// `host:port`, `[v6]:port`, `host`, `[v6]`; the host without brackets.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        if after.is_empty() {
            return Some((host, None));
        }
        let port = after.strip_prefix(':')?.parse().ok()?;
        return Some((host, Some(port)));
    }
    match s.rsplit_once(':') {
        // An unbracketed IPv6 literal is ambiguous; refuse it.
        Some((h, _)) if h.contains(':') => None,
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((s, None)),
    }
}

fn client_config(roots: RootCertStore) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The Mozilla-roots config, built once per process (parsing ~150 roots per connect would cost
/// more than the handshake).
fn default_config() -> Result<Arc<ClientConfig>, Error> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(c.clone());
    }
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = Arc::new(client_config(roots)?);
    Ok(CONFIG.get_or_init(|| config).clone())
}

fn load_roots(path: &Path) -> Result<RootCertStore, Error> {
    let err = |reason: String| Error::Roots {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    let mut count = 0usize;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert: CertificateDer<'static> = cert.map_err(|e| err(format!("bad PEM: {e}")))?;
        count += 1;
        if count > MAX_CA_CERTS {
            return Err(err(format!("more than {MAX_CA_CERTS} certificates")));
        }
        roots
            .add(cert)
            .map_err(|e| err(format!("certificate {count}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err("no CERTIFICATE block found".into()));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_upstream_form_and_refuses_paths_and_missing_ports() {
        let ok = [
            ("tcp://db:5432", "db:5432", false),
            ("db:5432", "db:5432", false),
            ("http://s3.local", "s3.local:80", false),
            ("http://s3.local:9000/", "s3.local:9000", false),
            ("https://example.com", "example.com:443", true),
            ("https://[::1]:8443", "[::1]:8443", true),
            ("tcp://[::1]:80", "[::1]:80", false),
        ];
        for (s, auth, tls) in ok {
            let u = Upstream::parse(s, None).map_err(|e| e.to_string());
            let u = match u {
                Ok(u) => u,
                Err(e) => panic!("{s}: {e}"),
            };
            assert_eq!((u.authority().as_str(), u.is_tls()), (auth, tls), "{s}");
        }
        for bad in [
            "db",
            "tcp://db",
            "ftp://x:1",
            "https://x/path",
            "http://u@x:1",
            "::1:80",
            "x:99999",
            "https://:443",
            "[::1",
        ] {
            assert!(Upstream::parse(bad, None).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn missing_ca_file_is_reported_with_its_path() {
        let e = Upstream::parse("https://x:1", Some(Path::new("/nonexistent/ca.pem")))
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            matches!(&e, Err(m) if m.contains("/nonexistent/ca.pem")),
            "{e:?}"
        );
    }
}
