//! `CONNECT host:port`: classified by host, then carried opaquely. The payload is (almost always)
//! TLS, so nothing downstream can reduce it; its bytes are counted in
//! [`HttpStats::connect_bytes`](crate::HttpStats) so operators see what escapes optimization.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use strait_classify::{Action, ClassId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use crate::abort::Abort;
use crate::body::{full, Dir, HttpBody, RequestInfo};
use crate::service::{bad_request, Shared};
use crate::{Target, PROXY_ROUTE, TUNNEL_BUF, UPSTREAM_CONNECT_TIMEOUT};

pub(crate) async fn handle_connect(
    shared: Arc<Shared>,
    abort: Abort,
    mut req: Request<Incoming>,
) -> Response<HttpBody> {
    let Some(auth) = req.uri().authority().cloned() else {
        return bad_request(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let Some(port) = auth.port_u16() else {
        return bad_request(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let host = auth.host();
    let info = RequestInfo {
        route: PROXY_ROUTE.to_owned(),
        host: Some(format!("{host}:{port}")),
        path: None,
        method: Some("CONNECT".to_owned()),
    };
    let verdict = shared.classifier.classify(&info.flow(None));
    let counters = shared.stats.classes.get(verdict.class);
    counters.record_verdict(&verdict, false);
    let class_name = &shared.classifier.class(verdict.class).name;
    let target = Target::Origin {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    };
    match verdict.action {
        Action::Deny => {
            tracing::info!(class = %class_name, %target, shadow_ai = verdict.is_shadow_ai, "CONNECT denied by policy");
            let mut r = Response::new(full(
                shared.classifier.deny_body(&verdict, &info.flow(None)),
            ));
            *r.status_mut() = StatusCode::FORBIDDEN;
            return r;
        }
        Action::Log => {
            tracing::info!(class = %class_name, %target, shadow_ai = verdict.is_shadow_ai, "CONNECT logged by policy")
        }
        Action::Allow => tracing::debug!(class = %class_name, %target, "CONNECT"),
    }
    let stream = match tokio::time::timeout(
        UPSTREAM_CONNECT_TIMEOUT,
        shared.connector.connect(&target, &verdict),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.stats.upstream_errors.fetch_add(1, Relaxed);
            return bad_request(
                StatusCode::BAD_GATEWAY,
                &format!("cannot reach {target}: {e}"),
            );
        }
        Err(_) => {
            shared.stats.upstream_errors.fetch_add(1, Relaxed);
            return bad_request(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "cannot reach {target}: no connection within {UPSTREAM_CONNECT_TIMEOUT:?}"
                ),
            );
        }
    };
    shared.stats.connect_tunnels.fetch_add(1, Relaxed);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let class = verdict.class;
    let s = shared.clone();
    shared.tracker.spawn(
        async move {
            let client = match on_upgrade.await {
                Ok(u) => TokioIo::new(u),
                Err(e) => {
                    tracing::debug!(error = %e, "CONNECT upgrade failed");
                    return;
                }
            };
            // The halves outlive the copies: select! drops its futures before running the
            // chosen branch, and the client must be marked for a reset before it is dropped.
            let (mut cr, mut cw) = tokio::io::split(client);
            let (mut ur, mut uw) = tokio::io::split(stream);
            let both = async {
                tokio::try_join!(
                    copy(&s, class, Dir::Up, &mut cr, &mut uw),
                    copy(&s, class, Dir::Down, &mut ur, &mut cw)
                )
            };
            tokio::select! {
                r = both => if let Err(e) = r {
                    // Either side failed: the client must not take the tunnel's end for a
                    // clean close, so its connection ends with RST.
                    abort.set();
                    tracing::debug!(error = %e, "CONNECT tunnel ended with an error");
                },
                // Opaque tunnels have no request boundary to drain at: cut them (RST).
                _ = s.shutdown.cancelled() => abort.set(),
            }
        }
        .instrument(tracing::debug_span!("connect", target = %target)),
    );
    Response::new(full(""))
}

/// Copy one direction until EOF, then half-close the other side, so protocols that signal the
/// end of a request by shutting down writing still work.
async fn copy<R, W>(
    shared: &Shared,
    class: ClassId,
    dir: Dir,
    mut r: R,
    mut w: W,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; TUNNEL_BUF];
    let counters = shared.stats.classes.get(class);
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        shared.stats.connect_bytes.fetch_add(n as u64, Relaxed);
        counters.logical_bytes.fetch_add(n as u64, Relaxed);
        if let Some(wait) = shared.limits.take(class, dir, n as u64) {
            tokio::time::sleep(wait).await;
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
    }
}
