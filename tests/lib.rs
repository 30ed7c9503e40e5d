//! End-to-end tests for strait: real processes, real sockets.
//!
//! This library is the support code the test files under `e2e/` share. It runs the real
//! `strait` binary as child processes (killed when their guard drops, even when a test fails),
//! writes their configs with port 0 where the config allows it and reads the bound ports back
//! from their logs, serves seeded data from in-process origins, and scrapes the admin API.
//! It is never a dependency of product code.
//!
//! ```text
//!  test client ──TCP──▶ edge forward ══QUIC══▶ core ──TCP──▶ Origin (in the test process)
//!        (tokio)        strait edge            strait core      GEN / BLOB / SINK / ECHO
//! ```
#![allow(clippy::unwrap_used)]

#[path = "support/admin.rs"]
pub mod admin;
#[path = "support/bin.rs"]
pub mod bin;
#[path = "support/faultkit.rs"]
pub mod faultkit;
#[path = "support/hostile.rs"]
pub mod hostile;
#[path = "support/ingress.rs"]
pub mod ingress;
#[path = "support/origin.rs"]
pub mod origin;
#[path = "support/pair.rs"]
pub mod pair;
#[path = "support/proc.rs"]
pub mod proc;
#[path = "support/seeded.rs"]
pub mod seeded;

use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t0.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async version of [`poll`].
pub async fn poll_async<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if t0.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// MiB/s of `bytes` moved in `secs`.
pub fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / secs.max(1e-9)
}

/// Fails the test with a clear message when an external tool is missing.
pub fn require_tool(tool: &str) {
    let ok = std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test needs `{tool}` on PATH (the CI script installs it: apt-get install {tool})"
    );
}

/// A multi-threaded tokio runtime for the in-process origins and clients. Tests are plain
/// `#[test]` functions: process control (which blocks) stays on the test thread, network I/O
/// runs on this runtime.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
