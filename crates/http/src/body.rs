//! Body relaying: per-class rate caps, per-class byte counts and format sniffing, one frame at a
//! time (a body is never held whole).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use strait_classify::{ClassId, Classifier, FlowInfo, Format, TokenBucket};
use tokio::time::Sleep;

use crate::{HttpStats, SNIFF_LEN};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type on both sides of the relay.
pub(crate) type HttpBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete small body (403, 502, ...).
pub(crate) fn full(text: impl Into<Bytes>) -> HttpBody {
    http_body_util::Full::new(text.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Direction of a body or tunnel half.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dir {
    /// Client → target (request bodies, uploads).
    Up = 0,
    /// Target → client.
    Down = 1,
}

/// One token bucket per rate-capped class and direction, shared by every connection of a
/// listener: a class cap limits the class, not each connection.
pub(crate) struct RateLimits {
    buckets: Vec<Option<[Mutex<TokenBucket>; 2]>>,
}

impl RateLimits {
    pub(crate) fn new(classifier: &Classifier) -> Self {
        RateLimits {
            buckets: classifier
                .classes()
                .iter()
                .map(|c| {
                    c.rate_limit.map(|r| {
                        [
                            Mutex::new(TokenBucket::with_default_burst(r)),
                            Mutex::new(TokenBucket::with_default_burst(r)),
                        ]
                    })
                })
                .collect(),
        }
    }

    /// Account `n` bytes of `class` in `dir`; how long to hold them back, if at all.
    pub(crate) fn take(&self, class: ClassId, dir: Dir, n: u64) -> Option<Duration> {
        let b = self.buckets.get(class.index())?.as_ref()?;
        let mut bucket = b[dir as usize].lock().unwrap_or_else(|e| e.into_inner());
        bucket.take(n, Instant::now())
    }

    pub(crate) fn is_capped(&self, class: ClassId) -> bool {
        self.buckets.get(class.index()).is_some_and(|b| b.is_some())
    }
}

/// What a request was classified on, owned so body meters can re-classify with a prefix.
#[derive(Debug)]
pub(crate) struct RequestInfo {
    pub route: String,
    pub host: Option<String>,
    pub path: Option<String>,
    pub method: Option<String>,
}

impl RequestInfo {
    pub(crate) fn flow<'a>(&'a self, prefix: Option<&'a [u8]>) -> FlowInfo<'a> {
        FlowInfo {
            route: &self.route,
            host: self.host.as_deref(),
            path: self.path.as_deref(),
            method: self.method.as_deref(),
            prefix,
        }
    }
}

/// Counts a body's bytes into the class its first [`SNIFF_LEN`] bytes classify it as (a body
/// that sniffs as safetensors counts as `model` even if the request alone said `default`).
/// Bytes seen before the class is known are counted when it is (at [`SNIFF_LEN`], at the end
/// of the body, or when the body is dropped half-way).
pub(crate) struct Meter {
    classifier: Arc<Classifier>,
    stats: Arc<HttpStats>,
    info: Arc<RequestInfo>,
    prefix: Vec<u8>,
    pending: u64,
    settled: Option<(ClassId, Option<Format>)>,
}

impl Meter {
    pub(crate) fn new(
        classifier: Arc<Classifier>,
        stats: Arc<HttpStats>,
        info: Arc<RequestInfo>,
    ) -> Self {
        Meter {
            classifier,
            stats,
            info,
            prefix: Vec::new(),
            pending: 0,
            settled: None,
        }
    }

    fn observe(&mut self, data: &[u8]) {
        match self.settled {
            Some((class, format)) => self.count(class, format, data.len() as u64),
            None => {
                let room = SNIFF_LEN.saturating_sub(self.prefix.len());
                self.prefix.extend_from_slice(&data[..room.min(data.len())]);
                self.pending += data.len() as u64;
                if self.prefix.len() >= SNIFF_LEN {
                    self.settle();
                }
            }
        }
    }

    fn settle(&mut self) {
        if self.settled.is_some() || self.pending == 0 {
            return;
        }
        let v = self
            .classifier
            .classify(&self.info.flow(Some(&self.prefix)));
        self.settled = Some((v.class, v.format));
        if v.format.is_some() {
            tracing::debug!(class = %self.classifier.class(v.class).name, format = ?v.format, "body format sniffed");
        }
        let n = std::mem::take(&mut self.pending);
        self.count(v.class, v.format, n);
        // The prefix has done its job; do not keep 64 KiB per streaming body.
        self.prefix = Vec::new();
    }

    fn count(&self, class: ClassId, format: Option<Format>, n: u64) {
        self.stats
            .classes
            .get(class)
            .logical_bytes
            .fetch_add(n, Relaxed);
        if let Some(f) = format {
            self.stats.add_format_bytes(f, n);
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.settle();
    }
}

/// A body relayed frame by frame through a [`Meter`] and, for a capped class, a token bucket.
pub(crate) struct Metered<B> {
    inner: B,
    meter: Meter,
    limit: Option<(Arc<RateLimits>, ClassId, Dir)>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame already read and counted, waiting for the rate cap.
    held: Option<Frame<Bytes>>,
    /// Set when the inner body fails (the client connection must then end with RST).
    abort: Option<crate::abort::Abort>,
}

impl<B> Metered<B> {
    pub(crate) fn new(
        inner: B,
        meter: Meter,
        limits: &Arc<RateLimits>,
        class: ClassId,
        dir: Dir,
    ) -> Self {
        Metered {
            inner,
            meter,
            limit: limits
                .is_capped(class)
                .then(|| (limits.clone(), class, dir)),
            sleep: None,
            held: None,
            abort: None,
        }
    }

    /// On an error of the inner body, mark the client connection for a reset: a body cut
    /// short must never look complete.
    pub(crate) fn abort_on_error(mut self, abort: crate::abort::Abort) -> Self {
        self.abort = Some(abort);
        self
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
            if let Some(frame) = this.held.take() {
                return Poll::Ready(Some(Ok(frame)));
            }
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => {
                this.meter.settle();
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                if let Some(a) = &this.abort {
                    a.set();
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.meter.observe(data);
                    if let Some((limits, class, dir)) = &this.limit {
                        if let Some(wait) = limits.take(*class, *dir, data.len() as u64) {
                            let mut sleep = Box::pin(tokio::time::sleep(wait));
                            if sleep.as_mut().poll(cx).is_pending() {
                                this.sleep = Some(sleep);
                                this.held = Some(frame);
                                return Poll::Pending;
                            }
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self
            .held
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}
