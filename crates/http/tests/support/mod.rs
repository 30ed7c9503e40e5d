//! Test support: a direct-TCP connector, a seeded origin server, a TLS origin, helpers to start
//! the proxy and route.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use strait_classify::{Classifier, PolicyConfig, Verdict};
use strait_http::{AsyncStream, BoxFuture, Connector, HttpStats, Target};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Connects straight over TCP: origins by host:port, services by a table.
#[derive(Default)]
pub struct DirectConnector {
    pub services: HashMap<String, SocketAddr>,
    pub connects: AtomicUsize,
    pub seen: Mutex<Vec<(Target, i32)>>,
}

impl Connector for DirectConnector {
    fn connect(
        &self,
        target: &Target,
        verdict: &Verdict,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn AsyncStream>>> {
        self.connects.fetch_add(1, SeqCst);
        self.seen
            .lock()
            .unwrap()
            .push((target.clone(), verdict.priority));
        let addr: Result<String, std::io::Error> = match target {
            Target::Origin { host, port } => Ok(format!("{host}:{port}")),
            Target::Service { service } => self
                .services
                .get(service)
                .map(|a| a.to_string())
                .ok_or_else(|| std::io::Error::other(format!("unknown service {service}"))),
        };
        Box::pin(async move {
            let s = TcpStream::connect(addr?).await?;
            Ok(Box::new(s) as Box<dyn AsyncStream>)
        })
    }
}

pub fn classifier(toml_text: &str) -> Arc<Classifier> {
    let cfg: PolicyConfig = toml::from_str(toml_text).unwrap();
    Arc::new(Classifier::new(cfg).unwrap())
}

pub struct Running {
    pub addr: SocketAddr,
    pub stats: Arc<HttpStats>,
    pub connector: Arc<DirectConnector>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn connects(&self) -> usize {
        self.connector.connects.load(SeqCst)
    }
}

pub async fn start_proxy(classifier: Arc<Classifier>) -> Running {
    start(classifier, None, DirectConnector::default()).await
}

pub async fn start_route(classifier: Arc<Classifier>, origin: SocketAddr) -> Running {
    let mut c = DirectConnector::default();
    c.services.insert("origin".into(), origin);
    start(classifier, Some(("s3", "origin")), c).await
}

async fn start(
    classifier: Arc<Classifier>,
    route: Option<(&str, &str)>,
    connector: DirectConnector,
) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = strait_http::new_stats(&classifier);
    let connector = Arc::new(connector);
    let shutdown = CancellationToken::new();
    let ingress = strait_http::Ingress {
        classifier,
        stats: stats.clone(),
        connector: connector.clone(),
        options: strait_http::IngressOptions::default(),
    };
    let t = shutdown.clone();
    let task = match route {
        None => tokio::spawn(strait_http::serve_proxy(listener, ingress, t)),
        Some((route, service)) => {
            let (route, service) = (route.to_owned(), service.to_owned());
            tokio::spawn(async move {
                strait_http::serve_route(listener, &route, service, ingress, t).await
            })
        }
    };
    Running {
        addr,
        stats,
        connector,
        shutdown,
        task,
    }
}

/// `len` seeded bytes from `offset` (blake3 XOF: random access, so Range can be served).
pub fn blob(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut r = xof(seed, offset);
    let mut v = vec![0u8; len];
    r.fill(&mut v);
    v
}

fn xof(seed: u64, offset: u64) -> blake3::OutputReader {
    let mut r = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    r.set_position(offset);
    r
}

/// blake3 hex of `len` seeded bytes, computed streaming.
pub fn blob_hash(seed: u64, len: u64) -> String {
    let mut r = xof(seed, 0);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        r.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    h.finalize().to_hex().to_string()
}

/// A seeded body, 64 KiB frames; `sized` gives an exact size hint (Content-Length framing),
/// otherwise hyper sends it chunked.
pub struct XofBody {
    reader: blake3::OutputReader,
    left: u64,
    sized: bool,
}

impl XofBody {
    pub fn new(seed: u64, offset: u64, len: u64, sized: bool) -> Self {
        XofBody {
            reader: xof(seed, offset),
            left: len,
            sized,
        }
    }
}

impl Body for XofBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(1 << 16) as usize;
        let mut v = vec![0u8; n];
        self.reader.fill(&mut v);
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(v)))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.left)
        } else {
            SizeHint::default()
        }
    }
}

type OBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

pub struct Origin {
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub accepts: Arc<AtomicUsize>,
    /// Requests served.
    pub requests: Arc<AtomicUsize>,
}

/// An origin: `GET|HEAD /blob/{len}/{seed}` (Range: bytes=a-b), `GET /chunked/{len}/{seed}`
/// (no Content-Length), `PUT|POST *` → `len=N blake3=HEX`, `GET /echo*` → request target and
/// headers.
pub async fn start_origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (a, r) = (accepts.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            a.fetch_add(1, SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    r.fetch_add(1, SeqCst);
                    async move { Ok::<_, Infallible>(origin_handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Origin {
        addr,
        accepts,
        requests,
    }
}

fn text(status: StatusCode, t: String) -> Response<OBody> {
    let mut r = Response::new(http_body_util::Full::new(Bytes::from(t)).boxed_unsync());
    *r.status_mut() = status;
    r
}

async fn origin_handle(req: Request<Incoming>) -> Response<OBody> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().as_str(), parts.as_slice()) {
        ("PUT" | "POST", _) => {
            let mut body = req.into_body();
            let mut h = blake3::Hasher::new();
            let mut n = 0u64;
            while let Some(f) = body.frame().await {
                let Ok(f) = f else {
                    return text(StatusCode::BAD_REQUEST, "body error".into());
                };
                if let Some(d) = f.data_ref() {
                    h.update(d);
                    n += d.len() as u64;
                }
            }
            text(
                StatusCode::OK,
                format!("len={n} blake3={}", h.finalize().to_hex()),
            )
        }
        ("GET" | "HEAD", ["blob", len, seed]) => {
            let (len, seed): (u64, u64) = (len.parse().unwrap(), seed.parse().unwrap());
            let range = req
                .headers()
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.split_once('-'))
                .map(|(a, b)| {
                    let a: u64 = a.parse().unwrap();
                    let b: u64 = if b.is_empty() {
                        len - 1
                    } else {
                        b.parse().unwrap()
                    };
                    (a, b.min(len - 1))
                });
            let (start, end, status) = match range {
                Some((a, b)) => (a, b, StatusCode::PARTIAL_CONTENT),
                None => (0, len.saturating_sub(1), StatusCode::OK),
            };
            let n = if len == 0 { 0 } else { end - start + 1 };
            let mut r = Response::new(XofBody::new(seed, start, n, true).boxed_unsync());
            *r.status_mut() = status;
            r.headers_mut().insert("content-length", n.into());
            if range.is_some() {
                r.headers_mut().insert(
                    "content-range",
                    format!("bytes {start}-{end}/{len}").parse().unwrap(),
                );
            }
            r
        }
        ("GET", ["chunked", len, seed]) => {
            let (len, seed): (u64, u64) = (len.parse().unwrap(), seed.parse().unwrap());
            Response::new(XofBody::new(seed, 0, len, false).boxed_unsync())
        }
        ("GET", _) if path.starts_with("/echo") => {
            let mut t = format!("target={}\n", req.uri());
            for (k, v) in req.headers() {
                t.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            text(StatusCode::OK, t)
        }
        _ => text(StatusCode::NOT_FOUND, "no such thing".into()),
    }
}

/// A test CA and a `localhost` leaf it signed, written as PEM files in `dir`.
pub struct TestPki {
    pub ca_pem: PathBuf,
    pub cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

pub fn test_pki(dir: &Path) -> TestPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "strait test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let ca_pem = dir.join(format!("ca-{}.pem", rand::random::<u32>()));
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    TestPki {
        ca_pem,
        cert_chain: vec![leaf.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    }
}

/// A TLS server on 127.0.0.1 that answers every connection with one HTTP response
/// (`hello over tls`) — or, with `echo`, echoes bytes.
pub async fn start_tls_server(pki: &TestPki, echo: bool) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.cert_chain.clone(), pki.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if echo {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    return;
                }
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "hello over tls";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// A curl command with no proxy settings inherited from the environment.
pub fn curl() -> std::process::Command {
    let mut c = std::process::Command::new("curl");
    for v in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "no_proxy",
        "NO_PROXY",
    ] {
        c.env_remove(v);
    }
    c.arg("-sS");
    c
}

/// Run a blocking command off the runtime.
pub async fn run(mut cmd: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}
