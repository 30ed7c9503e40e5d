//! The process allocator, tuned for many long flows. glibc's malloc gives each thread that
//! allocates its own 64 MiB arena and keeps what a flow freed in it, so the RSS of a proxy
//! with a thousand slow flows grew well past what its flows hold (six arenas measured in a
//! 1,000-flow soak). [`tune`] caps the arenas at [`ARENAS`] and [`spawn_trim`] hands free pages
//! back to the kernel every [`TRIM_PERIOD`]. Elsewhere (musl, other systems) both do nothing.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most malloc arenas (glibc's default is 8 per core).
pub const ARENAS: i32 = 2;
/// How often free heap pages are returned to the kernel.
pub const TRIM_PERIOD: Duration = Duration::from_secs(5);

/// Caps the allocator's arenas. Call before the runtime starts its threads.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns free heap pages to the kernel every [`TRIM_PERIOD`] until `stop` is cancelled.
pub fn spawn_trim(stop: CancellationToken) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(TRIM_PERIOD) => {}
            }
            // SAFETY: malloc_trim only releases free memory; it is thread-safe.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    drop(stop);
}
