//! A process-wide byte budget for flow buffers: every encoder and decoder charges the bytes it
//! holds and releases them when it frees them or is dropped.
//!
//! Charging never fails: a decoder must take what arrives on its stream (supplies it asked for
//! come after the data that made it ask), so it only charges; an encoder reads the budget to
//! decide whether to read more from its client ([`crate::FlowEncoder::window_full`]), which is
//! backpressure, never a failure.
//!
//! Past the limit, a sender that holds nothing in flight may still go on through a **floor**:
//! one of [`floor_permits`] permits of its budget, held until the item it lets through is
//! acknowledged. So the bytes beyond the limit are bounded by the permits, not by the number of
//! flows (a thousand flows each over by one chunk were 100-300 MB past a 128 MiB budget), and
//! a flow that waits for a permit, or for room, is woken when one is given back or bytes are
//! released ([`Budget::room`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Default process-wide budget of flow buffers: with 1,000 flows of slow readers each process
/// stays under 256 MiB of RSS (BENCHMARKS.md, Soak), while a few bulk flows can each use a full
/// window.
pub const DEFAULT_FLOW_BUDGET: u64 = 128 << 20;

/// Floor permits of a budget of `limit` bytes: one per MiB, at least 16 and at most 256 (a
/// floor holds one chunk, 64 KiB on average and 256 KiB at most, plus a read buffer: a 128 MiB
/// budget lets at most 128 flows exceed it, by about 16 MiB together).
pub fn floor_permits(limit: u64) -> usize {
    (limit >> 20).clamp(16, 256) as usize
}

struct Inner {
    limit: u64,
    used: AtomicU64,
    parent: Option<Budget>,
    /// Permits to go past the limit (see the module documentation).
    floors: Arc<Semaphore>,
    /// Woken (one waiter per release) when bytes are released while under the limit.
    room: Notify,
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
                floors: Arc::new(Semaphore::new(floor_permits(limit))),
                room: Notify::new(),
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
                floors: Arc::new(Semaphore::new(floor_permits(limit))),
                room: Notify::new(),
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
        if self.used() < self.inner.limit {
            // One waiter per release: it takes the room or passes the wake-up on (tokio's
            // `Notify` hands a dropped waiter's notification to the next), never a herd. A
            // waiter woken while an ancestor is still full waits on that ancestor next.
            self.inner.room.notify_one();
        }
    }

    /// Resolves once this budget (and its ancestors) may have room: at once if it has, else
    /// at a later release of bytes. Spurious wake-ups are possible; check again.
    pub async fn room(&self) {
        let own = self.inner.room.notified();
        if self.used() >= self.inner.limit {
            own.await;
        } else if let Some(p) = self.inner.parent.as_ref().filter(|p| p.is_exhausted()) {
            Box::pin(p.room()).await;
        }
    }

    /// A floor: a permit to go on past the limit with one item in flight (see the module
    /// documentation). Held until that item is acknowledged; dropping it gives it back.
    pub async fn floor(&self) -> Floor {
        let permit = Arc::clone(&self.inner.floors)
            .acquire_owned()
            .await
            .expect("a budget's floor semaphore is never closed");
        Floor { _permit: permit }
    }

    /// Floor permits not taken now.
    pub fn free_floors(&self) -> usize {
        self.inner.floors.available_permits()
    }

    /// A charge of zero bytes against this budget, to be set as the holder's bytes change.
    pub fn charge(&self) -> Charge {
        Charge {
            budget: self.clone(),
            held: 0,
        }
    }
}

/// A floor permit of a [`Budget`] (see [`Budget::floor`]); dropping it gives it back.
#[derive(Debug)]
pub struct Floor {
    _permit: OwnedSemaphorePermit,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    /// Polls `f` once: its output if it completed.
    async fn poll_once<F: Future>(f: &mut Pin<Box<F>>) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match f.as_mut().poll(cx) {
                Poll::Ready(o) => Some(o),
                Poll::Pending => None,
            })
        })
        .await
    }

    /// Polls `f` once: whether it completed.
    async fn ready_now<F: Future>(f: &mut Pin<Box<F>>) -> bool {
        poll_once(f).await.is_some()
    }

    #[tokio::test]
    async fn floors_bound_the_holders_past_the_limit_and_a_floor_given_back_goes_to_a_waiter() {
        let budget = Budget::new(16 << 20);
        let n = floor_permits(budget.limit());
        assert_eq!(n, 16);
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(budget.floor().await);
        }
        assert_eq!(budget.free_floors(), 0);
        let mut waiter = Box::pin(budget.floor());
        assert!(!ready_now(&mut waiter).await, "a floor beyond the permits");
        held.pop();
        let got = poll_once(&mut waiter).await;
        assert!(got.is_some(), "the floor given back went nowhere");
        held.extend(got);
        // A child has floors of its own: one edge's holders cannot take another's.
        let child = budget.child(1 << 20);
        assert_eq!(child.free_floors(), floor_permits(1 << 20));
        let _f = child.floor().await;
        assert_eq!(budget.free_floors(), 0);
    }

    #[tokio::test]
    async fn room_waits_for_a_release_under_the_limit_and_a_child_for_its_full_parent() {
        let budget = Budget::new(1 << 20);
        let mut hog = budget.charge();
        hog.set(2 << 20);
        let mut room = Box::pin(budget.room());
        assert!(
            !ready_now(&mut room).await,
            "room while 2 MiB of 1 are held"
        );
        hog.set(3 << 19);
        assert!(
            !ready_now(&mut room).await,
            "room while still over the limit"
        );
        hog.set(1 << 19);
        assert!(
            ready_now(&mut room).await,
            "no wake-up once under the limit"
        );
        // The parent is full through another child: this child's waiter waits on the parent.
        let (a, b) = (budget.child(4 << 20), budget.child(4 << 20));
        let mut other = b.charge();
        other.set(1 << 20);
        assert!(a.is_exhausted());
        let mut room = Box::pin(a.room());
        assert!(!ready_now(&mut room).await, "room while the parent is full");
        other.set(0);
        assert!(
            ready_now(&mut room).await,
            "a release in the sibling never woke it"
        );
    }
}
