//! Assembles a process: config → chunk store → metrics → admin server → core or edge role,
//! plus the `demo` that runs a whole pair on loopback. The `strait` binary is a thin shell over
//! this crate.

pub mod alloc;
pub mod demo;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use strait_admin::{ExtraFamily, Metrics, StoreSnapshot};
use strait_config::Config;
use strait_store::{Store, StoreConfig};
use tokio_util::sync::CancellationToken;

/// Errors assembling or running a process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Config problems.
    #[error(transparent)]
    Config(#[from] strait_config::Error),
    /// The chunk store could not open.
    #[error("chunk store at {path}: {source}")]
    Store {
        /// Store path.
        path: std::path::PathBuf,
        /// Cause.
        source: strait_store::Error,
    },
    /// The admin server could not start.
    #[error(transparent)]
    Admin(#[from] strait_admin::Error),
    /// The core role failed to start.
    #[error(transparent)]
    Core(#[from] strait_core::Error),
    /// The edge role failed to start.
    #[error(transparent)]
    Edge(#[from] strait_edge::Error),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// Sets up logging: `RUST_LOG` wins over the config's level.
pub fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// The store's fault counters (`StoreSnapshot` predates them; an extra keeps its shape).
fn store_fault_families(store: &Store) -> Vec<ExtraFamily> {
    let st = store.stats();
    let family = |name: &str, kind: &'static str, help: &str, v: u64| ExtraFamily {
        name: name.into(),
        help: help.into(),
        kind,
        samples: vec![(Vec::new(), v as f64)],
    };
    vec![
        family(
            "store_write_errors_total",
            "counter",
            "Chunk store writes that failed and were not retried successfully.",
            st.write_errors,
        ),
        family(
            "store_disk_full_total",
            "counter",
            "Full-disk errors that made the chunk store free a segment and retry.",
            st.no_space_evictions,
        ),
        family(
            "store_read_errors_total",
            "counter",
            "Chunk store reads that failed (served as misses).",
            st.read_errors,
        ),
        family(
            "store_damaged_segments",
            "gauge",
            "Segments found damaged when the chunk store was opened.",
            st.damaged_segments,
        ),
    ]
}

/// Opens the chunk store of a config and registers its probe.
pub fn open_store(cfg: &Config, metrics: &Metrics) -> Result<Arc<Store>, Error> {
    let store = Store::open(StoreConfig::new(
        &cfg.store.path,
        cfg.store.max_bytes,
        cfg.dedup.key,
    ))
    .map(Arc::new)
    .map_err(|source| Error::Store {
        path: cfg.store.path.clone(),
        source,
    })?;
    let s = store.clone();
    metrics.set_store_probe(move || {
        let st = s.stats();
        StoreSnapshot {
            bytes: st.bytes,
            max_bytes: st.max_bytes,
            entries: st.entries,
            hits: st.hits,
            misses: st.misses,
            evictions: st.evictions,
            corrupt_dropped: st.corrupt_dropped,
            index_bytes: st.index_bytes,
        }
    });
    let s = store.clone();
    metrics.add_extra(move || store_fault_families(&s));
    Ok(store)
}

/// A started process: its metrics, admin address and the task running it.
pub struct Running {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Admin server address.
    pub admin: SocketAddr,
    /// Core: tunnel UDP address. Edge: unused (`None`).
    pub tunnel: Option<SocketAddr>,
    /// Edge: forward listen addresses by name.
    pub forwards: Vec<(String, SocketAddr)>,
    /// Completes when the process has drained after `shutdown` was cancelled.
    pub done: tokio::task::JoinHandle<()>,
}

/// Starts the role the config is for. Stops (draining) when `shutdown` is cancelled.
pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let role = if cfg.core.is_some() { "core" } else { "edge" };
    alloc::spawn_trim(shutdown.clone());
    let metrics = Metrics::new(role);
    let store = open_store(&cfg, &metrics)?;
    let admin_options = strait_admin::AdminOptions {
        max_connections: cfg.limits.max_admin_connections as usize,
        header_read_timeout: cfg.limits.header_read_timeout,
    };
    let (admin, admin_fut) =
        strait_admin::serve(cfg.admin_listen, metrics.clone(), admin_options, {
            let s = shutdown.clone();
            async move { s.cancelled().await }
        })
        .await?;
    tokio::spawn(admin_fut);
    tracing::info!(%admin, role, "admin server listening");
    if cfg.core.is_some() {
        let core = strait_core::Core::bind(cfg, metrics.clone(), store)?;
        let tunnel = core.local_addr().ok();
        tracing::info!(listen = ?tunnel, "core listening");
        let done = tokio::spawn(core.run(shutdown));
        Ok(Running {
            metrics,
            admin,
            tunnel,
            forwards: Vec::new(),
            done,
        })
    } else {
        let edge = strait_edge::Edge::bind(cfg, metrics.clone(), store).await?;
        let forwards = edge.forward_addrs();
        for (name, addr) in &forwards {
            tracing::info!(forward = %name, listen = %addr, "forward listening");
        }
        let done = tokio::spawn(edge.run(shutdown));
        Ok(Running {
            metrics,
            admin,
            tunnel: None,
            forwards,
            done,
        })
    }
}

/// Runs a role until SIGTERM/SIGINT, then drains.
pub async fn run_until_signal(cfg: Config) -> Result<(), Error> {
    let shutdown = CancellationToken::new();
    let running = start(cfg, shutdown.clone()).await?;
    wait_for_signal().await;
    tracing::info!("shutting down: draining open flows");
    shutdown.cancel();
    let _ = running.done.await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
