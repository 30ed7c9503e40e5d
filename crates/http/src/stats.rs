//! Counters of the HTTP ingress and their Prometheus families.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use strait_admin::ExtraFamily;
use strait_classify::{ClassStats, Format};

/// Counters of the HTTP ingress. The per-class counters are a shared [`ClassStats`] (a clone
/// shares the counters), so the edge's TCP forwards can count into the same set.
///
/// What this crate counts per class: `requests`, `denied` and `shadow_ai` per HTTP request,
/// `flows` per `CONNECT` tunnel, and `logical_bytes` for request and response **bodies** (and
/// `CONNECT` payload). It never counts WAN bytes or savings: the data path behind the
/// [`Connector`](crate::Connector) does (and must not count these logical bytes a second time).
#[derive(Debug)]
pub struct HttpStats {
    /// Per-class counters.
    pub classes: ClassStats,
    /// Payload bytes carried through `CONNECT` tunnels, both directions: encrypted, so the data
    /// path cannot reduce them.
    pub connect_bytes: AtomicU64,
    /// `CONNECT` tunnels established.
    pub connect_tunnels: AtomicU64,
    /// Requests answered `502` because the target could not be reached or broke mid-response.
    pub upstream_errors: AtomicU64,
    /// Body bytes per sniffed format, in [`Format::ALL`] order.
    format_bytes: Box<[AtomicU64]>,
}

impl HttpStats {
    /// Zeroed ingress counters around `classes`.
    pub fn new(classes: ClassStats) -> Self {
        HttpStats {
            classes,
            connect_bytes: AtomicU64::new(0),
            connect_tunnels: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            format_bytes: Format::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Bytes carried opaquely through `CONNECT` so far.
    pub fn connect_bytes(&self) -> u64 {
        self.connect_bytes.load(Relaxed)
    }

    /// Body bytes counted for `format` so far.
    pub fn format_bytes(&self, format: Format) -> u64 {
        Format::ALL
            .iter()
            .position(|f| *f == format)
            .and_then(|i| self.format_bytes.get(i))
            .map_or(0, |c| c.load(Relaxed))
    }

    pub(crate) fn add_format_bytes(&self, format: Format, n: u64) {
        if let Some(c) = Format::ALL
            .iter()
            .position(|f| *f == format)
            .and_then(|i| self.format_bytes.get(i))
        {
            c.fetch_add(n, Relaxed);
        }
    }

    /// The ingress's own families (`strait_connect_bytes_total`, `strait_connect_tunnels_total`,
    /// `strait_http_upstream_errors_total`, `strait_http_format_bytes_total{format}`). The
    /// per-class families come from [`class_metric_families`], registered once per
    /// [`ClassStats`] whoever else counts into it.
    pub fn metric_families(&self) -> Vec<ExtraFamily> {
        let one = |name: &str, help: &str, v: u64| ExtraFamily {
            name: name.to_owned(),
            help: help.to_owned(),
            kind: "counter",
            samples: vec![(Vec::new(), v as f64)],
        };
        vec![
            one(
                "connect_bytes_total",
                "Bytes carried opaquely through HTTP CONNECT tunnels (encrypted; not reducible).",
                self.connect_bytes.load(Relaxed),
            ),
            one(
                "connect_tunnels_total",
                "HTTP CONNECT tunnels established.",
                self.connect_tunnels.load(Relaxed),
            ),
            one(
                "http_upstream_errors_total",
                "HTTP requests answered 502 because the target was unreachable or failed.",
                self.upstream_errors.load(Relaxed),
            ),
            ExtraFamily {
                name: "http_format_bytes_total".into(),
                help: "HTTP body bytes by format sniffed from the body's first bytes.".into(),
                kind: "counter",
                samples: Format::ALL
                    .iter()
                    .zip(self.format_bytes.iter())
                    .map(|(f, c)| {
                        (
                            vec![("format".into(), f.name().into())],
                            c.load(Relaxed) as f64,
                        )
                    })
                    .collect(),
            },
        ]
    }
}

/// Per-class families of `stats`: `strait_class_{flows,requests,logical_bytes,wan_bytes,
/// saved_bytes,denied,shadow_ai}_total{class}`. Register once per [`ClassStats`]
/// (`metrics.add_extra(move || class_metric_families(&stats))`).
pub fn class_metric_families(stats: &ClassStats) -> Vec<ExtraFamily> {
    let snaps = stats.snapshot();
    let family =
        |name: &str, help: &str, get: fn(&strait_classify::ClassSnapshot) -> u64| ExtraFamily {
            name: format!("class_{name}_total"),
            help: help.to_owned(),
            kind: "counter",
            samples: snaps
                .iter()
                .map(|s| (vec![("class".to_owned(), s.class.clone())], get(s) as f64))
                .collect(),
        };
    vec![
        family("flows", "Flows classified into the class.", |s| s.flows),
        family(
            "requests",
            "HTTP requests classified into the class.",
            |s| s.requests,
        ),
        family(
            "logical_bytes",
            "Payload bytes of the class as the applications sent them.",
            |s| s.logical_bytes,
        ),
        family(
            "wan_bytes",
            "Bytes of the class that crossed the WAN.",
            |s| s.wan_bytes,
        ),
        family(
            "saved_bytes",
            "Bytes of the class saved by dedup and compression.",
            |s| s.saved_bytes,
        ),
        family(
            "denied",
            "Flows and requests of the class denied by policy.",
            |s| s.denied,
        ),
        family(
            "shadow_ai",
            "Flows and requests recognised as shadow AI (LLM APIs not sanctioned).",
            |s| s.shadow_ai,
        ),
    ]
}
