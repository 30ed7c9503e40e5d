//! Per-class counters. Plain atomics so the data path can bump them from any task without locks;
//! the admin side reads [`ClassSnapshot`]s and exports them (`strait_class_*_total{class="..."}`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::policy::{Action, ClassId, Classifier, Verdict};

/// Counters of one traffic class. All monotonic.
#[derive(Debug, Default)]
pub struct ClassCounters {
    /// Flows (TCP connections, CONNECT tunnels, route streams) classified into the class.
    pub flows: AtomicU64,
    /// HTTP requests classified into the class.
    pub requests: AtomicU64,
    /// Payload bytes as the applications sent them.
    pub logical_bytes: AtomicU64,
    /// Bytes that crossed the WAN for them (after dedup and compression).
    pub wan_bytes: AtomicU64,
    /// Bytes saved (logical minus WAN, as the data path accounts it).
    pub saved_bytes: AtomicU64,
    /// Flows or requests denied by policy.
    pub denied: AtomicU64,
    /// Flows or requests recognised as shadow AI (whatever the action).
    pub shadow_ai: AtomicU64,
}

/// A point-in-time copy of [`ClassCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClassSnapshot {
    /// Class name.
    pub class: String,
    /// See [`ClassCounters::flows`].
    pub flows: u64,
    /// See [`ClassCounters::requests`].
    pub requests: u64,
    /// See [`ClassCounters::logical_bytes`].
    pub logical_bytes: u64,
    /// See [`ClassCounters::wan_bytes`].
    pub wan_bytes: u64,
    /// See [`ClassCounters::saved_bytes`].
    pub saved_bytes: u64,
    /// See [`ClassCounters::denied`].
    pub denied: u64,
    /// See [`ClassCounters::shadow_ai`].
    pub shadow_ai: u64,
}

impl ClassCounters {
    /// Count a classified flow (`request = false`) or HTTP request (`request = true`) with its
    /// verdict: bumps flows/requests, and denied/shadow-AI as the verdict says.
    pub fn record_verdict(&self, verdict: &Verdict, request: bool) {
        let counter = if request { &self.requests } else { &self.flows };
        counter.fetch_add(1, Ordering::Relaxed);
        if verdict.action == Action::Deny {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        if verdict.is_shadow_ai {
            self.shadow_ai.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Account payload bytes: `logical` as sent by the application, `wan` as carried.
    /// Savings are `logical - wan` when positive (FEC and framing can make WAN larger).
    pub fn add_bytes(&self, logical: u64, wan: u64) {
        self.logical_bytes.fetch_add(logical, Ordering::Relaxed);
        self.wan_bytes.fetch_add(wan, Ordering::Relaxed);
        self.saved_bytes
            .fetch_add(logical.saturating_sub(wan), Ordering::Relaxed);
    }

    /// Copy the counters.
    pub fn snapshot(&self, class: &str) -> ClassSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClassSnapshot {
            class: class.to_owned(),
            flows: r(&self.flows),
            requests: r(&self.requests),
            logical_bytes: r(&self.logical_bytes),
            wan_bytes: r(&self.wan_bytes),
            saved_bytes: r(&self.saved_bytes),
            denied: r(&self.denied),
            shadow_ai: r(&self.shadow_ai),
        }
    }
}

/// Counters for every class of a [`Classifier`], indexed by [`ClassId`]. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ClassStats {
    names: Arc<[String]>,
    counters: Arc<[ClassCounters]>,
}

impl ClassStats {
    /// One zeroed counter set per class of `classifier`.
    pub fn new(classifier: &Classifier) -> Self {
        let names: Arc<[String]> = classifier
            .classes()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let counters = names.iter().map(|_| ClassCounters::default()).collect();
        ClassStats { names, counters }
    }

    /// Counters of class `id`. An id from another classifier falls back to `default` rather than
    /// panicking.
    pub fn get(&self, id: ClassId) -> &ClassCounters {
        self.counters
            .get(id.index())
            .unwrap_or(&self.counters[ClassId::DEFAULT.index()])
    }

    /// `(class name, counters)` for every class, in [`ClassId`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ClassCounters)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.counters.iter())
    }

    /// Snapshots of every class, in [`ClassId`] order.
    pub fn snapshot(&self) -> Vec<ClassSnapshot> {
        self.iter().map(|(n, c)| c.snapshot(n)).collect()
    }
}
