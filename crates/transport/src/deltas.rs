//! Delta-compression counters per route and direction, and their metric families.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use strait_admin::{Direction, ExtraFamily};
use strait_dedup::{DeltaStats, SketchIndex};

/// Hints files from an index up to this many times larger than ours are read (keeping the
/// newest entries): a process whose `sketch_index_bytes` was lowered keeps what fits.
const HINTS_FACTOR: usize = 4;

/// One process's delta counters and its sketch index.
pub struct Deltas {
    /// The sketch index shared by every flow.
    pub index: Arc<SketchIndex>,
    /// Last versions of HTTP objects, hinted as bases when they cross again.
    pub versions: Arc<crate::versions::Versions>,
    stats: Mutex<BTreeMap<(String, Direction), Arc<DeltaStats>>>,
}

impl Deltas {
    /// A registry with an index bounded to `index_bytes`.
    pub fn new(index_bytes: u64) -> Arc<Deltas> {
        Arc::new(Deltas {
            index: Arc::new(SketchIndex::new(index_bytes)),
            versions: Arc::new(crate::versions::Versions::new()),
            stats: Mutex::new(BTreeMap::new()),
        })
    }

    /// Restores the sketch index from the store's hints file, the snapshot a clean shutdown
    /// left ([`Deltas::save_hints`]): without it the first repeat after a restart finds no
    /// delta base and predicts no chunk, so every pause of its sender costs a literal
    /// preview. A damaged or foreign file is logged and ignored (the index starts empty).
    pub fn load_hints(&self, store: &strait_store::Store) {
        let max = self.index.snapshot_bound(HINTS_FACTOR);
        match store.load_hints(max) {
            Ok(None) => {}
            Ok(Some(b)) => match self.index.restore(&b) {
                Ok(r) => tracing::info!(
                    sketches = r.sketches,
                    chain = r.chain,
                    "sketch index restored from the store's hints"
                ),
                Err(e) => tracing::warn!(error = %e, "store hints ignored"),
            },
            Err(e) => tracing::warn!(error = %e, "store hints ignored"),
        }
    }

    /// Saves the sketch index to the store's hints file (at a clean shutdown).
    pub fn save_hints(&self, store: &strait_store::Store) {
        let snap = self.index.snapshot();
        match store.save_hints(&snap) {
            Ok(()) => tracing::debug!(bytes = snap.len(), "sketch index saved to the store"),
            Err(e) => tracing::warn!(error = %e, "saving the sketch index failed"),
        }
    }

    /// Counters of `route` in `direction`.
    pub fn stats(&self, route: &str, direction: Direction) -> Arc<DeltaStats> {
        let mut m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        strait_admin::route_entry(&mut m, route, direction)
    }

    /// `strait_delta_*` families.
    pub fn families(&self) -> Vec<ExtraFamily> {
        let m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let fam = |name: &str, help: &str, f: &dyn Fn(&DeltaStats) -> u64| ExtraFamily {
            name: name.to_string(),
            help: help.to_string(),
            kind: "counter",
            samples: m
                .iter()
                .map(|((r, d), s)| {
                    (
                        vec![
                            ("route".to_string(), r.clone()),
                            ("direction".to_string(), d.as_str().to_string()),
                        ],
                        f(s) as f64,
                    )
                })
                .collect(),
        };
        let gauge = |name: &str, help: &str, v: f64| ExtraFamily {
            name: name.into(),
            help: help.into(),
            kind: "gauge",
            samples: vec![(Vec::new(), v)],
        };
        let idx = self.index.stats();
        let (objects, ids) = self.versions.len();
        vec![
            fam(
                "delta_chunks_total",
                "Chunks carried as deltas against similar chunks.",
                &|s| s.delta_chunks.load(Relaxed),
            ),
            fam(
                "delta_saved_bytes_total",
                "Bytes saved by deltas beyond compressed literals.",
                &|s| s.delta_saved_bytes.load(Relaxed),
            ),
            fam(
                "delta_base_misses_total",
                "Deltas whose base the receiver lacked.",
                &|s| s.base_misses.load(Relaxed),
            ),
            fam(
                "delta_runs_total",
                "Delta runs (one zstd frame over consecutive near-duplicate chunks).",
                &|s| s.runs.load(Relaxed),
            ),
            fam(
                "delta_run_failures_total",
                "Delta runs that failed verification and were asked for again.",
                &|s| s.run_failures.load(Relaxed),
            ),
            gauge(
                "sketch_index_entries",
                "Chunks in the resemblance-sketch index.",
                idx.entries as f64,
            ),
            gauge(
                "delta_version_objects",
                "HTTP objects whose last version's chunks are kept as delta-base hints.",
                objects as f64,
            ),
            gauge(
                "delta_version_ids",
                "Chunk ids kept as delta-base hints of HTTP objects' last versions.",
                ids as f64,
            ),
            gauge(
                "sketch_index_bytes",
                "Memory of the resemblance-sketch index.",
                idx.bytes as f64,
            ),
        ]
    }
}
