//! The per-connection HTTP service shared by proxy and route mode: classify, deny or forward,
//! relay the response.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use strait_classify::{Action, ClassId, Classifier, Verdict};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::abort::{Abort, ClientIo};
use crate::body::{full, Dir, HttpBody, Meter, Metered, RateLimits, RequestInfo};
use crate::{
    tunnel, Connector, HttpStats, Ingress, IngressOptions, Target, MAX_HEAD_BYTES, PROXY_ROUTE,
    UPSTREAM_CONNECT_TIMEOUT,
};
use strait_admin::listen::{set_keepalive, AcceptBackoff};

/// How requests are addressed.
pub(crate) enum Mode {
    /// Forward proxy: absolute-form requests and `CONNECT`.
    Proxy,
    /// Every request goes to one core service.
    Route { route: String, service: String },
}

/// Everything a listener's connections share.
pub(crate) struct Shared {
    pub mode: Mode,
    pub classifier: Arc<Classifier>,
    pub stats: Arc<HttpStats>,
    pub connector: Arc<dyn Connector>,
    pub limits: Arc<RateLimits>,
    pub options: IngressOptions,
    pub shutdown: CancellationToken,
    /// Connection, upstream and tunnel tasks; `serve` returns when all have ended.
    pub tracker: TaskTracker,
}

impl Shared {
    pub(crate) fn new(mode: Mode, ingress: Ingress, shutdown: CancellationToken) -> Arc<Self> {
        let Ingress {
            classifier,
            stats,
            connector,
            options,
        } = ingress;
        Arc::new(Shared {
            mode,
            limits: Arc::new(RateLimits::new(&classifier)),
            classifier,
            stats,
            connector,
            options,
            shutdown,
            tracker: TaskTracker::new(),
        })
    }

    pub(crate) fn route(&self) -> &str {
        match &self.mode {
            Mode::Proxy => PROXY_ROUTE,
            Mode::Route { route, .. } => route,
        }
    }
}

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(shared.options.max_connections.max(1)));
    let mut backoff = AcceptBackoff::default();
    let span = tracing::info_span!("http", route = %shared.route());
    async {
        loop {
            // Backpressure: a full house stops accepting rather than growing without bound.
            let permit = tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (tcp, peer) = tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        backoff.failed(&e, None).await;
                        continue;
                    }
                },
            };
            backoff.reset();
            let _ = tcp.set_nodelay(true);
            set_keepalive(&tcp, shared.options.tcp_keepalive);
            let conn_span = tracing::debug_span!("client", %peer);
            shared
                .tracker
                .spawn(serve_conn(shared.clone(), tcp, permit).instrument(conn_span));
        }
        drop(listener);
        shared.tracker.close();
        shared.tracker.wait().await;
    }
    .instrument(span)
    .await
}

/// The upstream connection of one client connection, reused while target and class stay.
#[derive(Default)]
struct Conn {
    cached: Mutex<Option<Cached>>,
    /// Set when a response or tunnel failed after its head was sent: the client connection
    /// then ends with RST.
    abort: Abort,
}

struct Cached {
    target: Target,
    class: ClassId,
    sender: SendRequest<HttpBody>,
}

async fn serve_conn(shared: Arc<Shared>, tcp: TcpStream, _permit: OwnedSemaphorePermit) {
    let conn = Arc::new(Conn::default());
    let io = ClientIo::new(tcp, conn.abort.clone());
    let s = shared.clone();
    let svc = hyper::service::service_fn(move |req| {
        let s = s.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(s, conn, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.options.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let served = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = shared.shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

fn text_response(status: StatusCode, text: String) -> Response<HttpBody> {
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn bad_request(status: StatusCode, why: &str) -> Response<HttpBody> {
    text_response(status, format!("strait: {why}\n"))
}

/// Where a request goes and what it is classified on.
struct Addressed {
    target: Target,
    /// Host (with port) the classifier sees.
    class_host: Option<String>,
    /// Origin-form request target sent upstream.
    path_and_query: String,
    /// `Host` to set upstream (proxy mode, when missing or not the authority).
    set_host: Option<HeaderValue>,
}

/// Errors are the status and reason of the refusal.
fn address(shared: &Shared, req: &Request<Incoming>) -> Result<Addressed, (StatusCode, String)> {
    let uri = req.uri();
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    // An OPTIONS * or authority-form request has no path; "/" would change its meaning.
    if !path_and_query.starts_with('/') && path_and_query != "*" {
        return Err((
            StatusCode::BAD_REQUEST,
            "request target must be a path".into(),
        ));
    }
    match &shared.mode {
        Mode::Route { service, .. } => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned);
            Ok(Addressed {
                target: Target::Service {
                    service: service.clone(),
                },
                class_host: host,
                path_and_query,
                set_host: None,
            })
        }
        Mode::Proxy => {
            match uri.scheme_str() {
                Some("http") => {}
                Some(other) => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!(
                        "scheme {other:?} is not proxied as a plain request; use CONNECT for https"
                    ),
                    ))
                }
                None => return Err((
                    StatusCode::BAD_REQUEST,
                    "this is an HTTP proxy: the request target must be absolute (http://host/path)"
                        .into(),
                )),
            }
            let Some(auth) = uri.authority() else {
                return Err((StatusCode::BAD_REQUEST, "no host in request target".into()));
            };
            if auth.as_str().contains('@') {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "user info in the request target is not supported".into(),
                ));
            }
            let host = auth.host();
            let port = auth.port_u16().unwrap_or(80);
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let set_host = match req.headers().get(header::HOST) {
                Some(h) if h.as_bytes().eq_ignore_ascii_case(auth.as_str().as_bytes()) => None,
                _ => HeaderValue::from_str(auth.as_str()).ok(),
            };
            Ok(Addressed {
                target: Target::Origin {
                    host: bare.to_owned(),
                    port,
                },
                class_host: Some(format!("{host}:{port}")),
                path_and_query,
                set_host,
            })
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Response<HttpBody> {
    if req.method() == Method::CONNECT {
        return match shared.mode {
            Mode::Proxy => tunnel::handle_connect(shared, conn.abort.clone(), req).await,
            Mode::Route { .. } => bad_request(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is served by the HTTP proxy, not by a route",
            ),
        };
    }
    let addressed = match address(&shared, &req) {
        Ok(a) => a,
        Err((status, why)) => return bad_request(status, &why),
    };
    let info = Arc::new(RequestInfo {
        route: shared.route().to_owned(),
        host: addressed.class_host.clone(),
        path: Some(addressed.path_and_query.clone()),
        method: Some(req.method().as_str().to_owned()),
    });
    let verdict = shared.classifier.classify(&info.flow(None));
    let class_name = &shared.classifier.class(verdict.class).name;
    shared
        .stats
        .classes
        .get(verdict.class)
        .record_verdict(&verdict, true);
    let target = &addressed.target;
    match verdict.action {
        Action::Deny => {
            tracing::info!(class = %class_name, %target, method = %req.method(), path = %addressed.path_and_query,
                shadow_ai = verdict.is_shadow_ai, "request denied by policy");
            // The request body is never read: with `Expect: 100-continue` the client sends
            // nothing, and otherwise hyper closes the connection after the 403.
            return text_response(
                StatusCode::FORBIDDEN,
                shared.classifier.deny_body(&verdict, &info.flow(None)),
            );
        }
        Action::Log => {
            tracing::info!(class = %class_name, %target, method = %req.method(), path = %addressed.path_and_query,
                shadow_ai = verdict.is_shadow_ai, "request logged by policy");
        }
        Action::Allow => {
            tracing::debug!(class = %class_name, %target, method = %req.method(), path = %addressed.path_and_query, "request");
        }
    }
    let is_head = req.method() == Method::HEAD;
    let (mut parts, body) = req.into_parts();
    parts.uri = match Uri::try_from(addressed.path_and_query.as_str()) {
        Ok(u) => u,
        Err(_) => return bad_request(StatusCode::BAD_REQUEST, "malformed request target"),
    };
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, true);
    if let Some(h) = addressed.set_host {
        parts.headers.insert(header::HOST, h);
    }
    let up_body = Metered::new(
        body,
        Meter::new(
            shared.classifier.clone(),
            shared.stats.clone(),
            info.clone(),
        ),
        &shared.limits,
        verdict.class,
        Dir::Up,
    )
    .abort_on_error(conn.abort.clone())
    .boxed_unsync();
    let upstream_req = Request::from_parts(parts, up_body);

    let resp = match send(&shared, &conn, &addressed.target, &verdict, upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            shared
                .stats
                .upstream_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(%target, error = %e, "upstream request failed");
            return text_response(
                StatusCode::BAD_GATEWAY,
                format!("strait: cannot reach {target}: {e}\n"),
            );
        }
    };
    let (mut parts, body) = resp.into_parts();
    // A HEAD response's framing headers describe the body a GET would get; keep them.
    strip_hop_by_hop(&mut parts.headers, !is_head);
    let down = Metered::new(
        body,
        Meter::new(shared.classifier.clone(), shared.stats.clone(), info),
        &shared.limits,
        verdict.class,
        Dir::Down,
    )
    .abort_on_error(conn.abort.clone())
    .boxed_unsync();
    Response::from_parts(parts, down)
}

/// Send `req` on the client connection's upstream connection (opening one if there is none, or
/// it goes elsewhere, or it was closed). A reused connection that turns out to be closed before
/// the request was written is replaced once.
async fn send(
    shared: &Shared,
    conn: &Conn,
    target: &Target,
    verdict: &Verdict,
    mut req: Request<HttpBody>,
) -> Result<Response<Incoming>, String> {
    let mut cached = conn.cached.lock().await;
    let mut reuse = cached
        .take()
        .filter(|c| c.target == *target && c.class == verdict.class && !c.sender.is_closed())
        .map(|c| c.sender);
    loop {
        let reused = reuse.is_some();
        let mut sender = match reuse.take() {
            Some(s) => s,
            None => open(shared, target, verdict).await?,
        };
        if let Err(e) = sender.ready().await {
            if reused {
                continue;
            }
            return Err(e.to_string());
        }
        match sender.try_send_request(req).await {
            Ok(resp) => {
                *cached = Some(Cached {
                    target: target.clone(),
                    class: verdict.class,
                    sender,
                });
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                Some(r) if reused => req = r,
                _ => return Err(e.into_error().to_string()),
            },
        }
    }
}

async fn open(
    shared: &Shared,
    target: &Target,
    verdict: &Verdict,
) -> Result<SendRequest<HttpBody>, String> {
    let stream = match tokio::time::timeout(
        UPSTREAM_CONNECT_TIMEOUT,
        shared.connector.connect(target, verdict),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no connection within {UPSTREAM_CONNECT_TIMEOUT:?}")),
    };
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let target = target.to_string();
    shared.tracker.spawn(
        async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        }
        .instrument(tracing::debug_span!("upstream", %target)),
    );
    Ok(sender)
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, hyper re-derives
/// framing for the next one, and no signing client covers them. `framing = false` keeps
/// `Transfer-Encoding` (HEAD responses).
fn strip_hop_by_hop(headers: &mut HeaderMap, framing: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        // `Connection: content-length` must not strip the framing of the message.
        if n != header::CONTENT_LENGTH && n != header::HOST {
            headers.remove(n);
        }
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if framing {
        headers.remove(header::TRANSFER_ENCODING);
    }
}
