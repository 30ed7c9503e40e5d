//! A process-wide byte budget for flow buffers: every encoder and decoder charges the bytes it
//! holds and releases them when it frees them or is dropped.
//!
//! Charging never fails: a decoder must take what arrives on its stream (supplies it asked for
//! come after the data that made it ask), so it only charges; an encoder reads the budget to
//! decide whether to read more from its client ([`crate::FlowEncoder::window_full`]), which is
//! backpressure, never a failure. Each flow may always hold a floor (one maximal chunk) however
//! full the budget is, so every flow can make progress.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Default process-wide budget of flow buffers: with 1,000 flows of slow readers the process
/// stays within a few hundred MiB of RSS (each flow can still hold its floor of one chunk), while
/// a few bulk flows can each use a full 64 MiB window.
pub const DEFAULT_FLOW_BUDGET: u64 = 128 << 20;

struct Inner {
    limit: u64,
    used: AtomicU64,
    parent: Option<Budget>,
}

/// A shared byte budget (cheap to clone: a handle). A child budget (e.g. per peer identity)
/// also charges its parent, and is exhausted when either is.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.inner.limit)
            .field("used", &self.used())
            .finish()
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::unlimited()
    }
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Budget {
            inner: Arc::new(Inner {
                limit,
                used: AtomicU64::new(0),
                parent: None,
            }),
        }
    }

    /// A budget that is never exhausted (still counts).
    pub fn unlimited() -> Self {
        Budget::new(u64::MAX)
    }

    /// A budget of `limit` bytes whose charges also count against `self`.
    pub fn child(&self, limit: u64) -> Budget {
        Budget {
            inner: Arc::new(Inner {
                limit,
                used: AtomicU64::new(0),
                parent: Some(self.clone()),
            }),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// Bytes charged now (by every holder, children included).
    pub fn used(&self) -> u64 {
        self.inner.used.load(Relaxed)
    }

    /// Whether this budget or an ancestor has no room left.
    pub fn is_exhausted(&self) -> bool {
        self.used() >= self.inner.limit
            || self.inner.parent.as_ref().is_some_and(Budget::is_exhausted)
    }

    fn add(&self, n: u64) {
        self.inner.used.fetch_add(n, Relaxed);
        if let Some(p) = &self.inner.parent {
            p.add(n);
        }
    }

    fn sub(&self, n: u64) {
        self.inner.used.fetch_sub(n, Relaxed);
        if let Some(p) = &self.inner.parent {
            p.sub(n);
        }
    }

    /// A charge of zero bytes against this budget, to be set as the holder's bytes change.
    pub fn charge(&self) -> Charge {
        Charge {
            budget: self.clone(),
            held: 0,
        }
    }
}

/// The bytes one holder has charged to a [`Budget`]; dropping it releases them.
#[derive(Debug)]
pub struct Charge {
    budget: Budget,
    held: u64,
}

impl Charge {
    /// Sets the charge to `bytes` (charging or releasing the difference).
    pub fn set(&mut self, bytes: u64) {
        if bytes > self.held {
            self.budget.add(bytes - self.held);
        } else if bytes < self.held {
            self.budget.sub(self.held - bytes);
        }
        self.held = bytes;
    }

    /// Bytes charged by this holder.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// The budget charged.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.set(0);
    }
}
