//! strait-wanem: a WAN on one machine, for tests and benchmarks. Never a dependency of the
//! production binary.
//!
//! Owns: two network namespaces (site A, site B) joined **only** through TUN devices, and a
//! userspace forwarder that moves IP packets between the two TUN fds applying, per direction,
//! one-way delay, jitter (in order unless reordering is asked), a rate limit with a bounded
//! drop-tail queue, random loss, Gilbert–Elliott burst loss, reordering and duplication — all
//! from a seeded RNG. Its per-direction counters are the neutral meter of WAN bytes.
//!
//! Never: touches the root namespace's interfaces or routes, or depends on netem/tc (this kernel
//! has neither). Host-wide changes are limited to *widening* `tcp_allowed_congestion_control`
//! and *raising* `net.core.{r,w}mem_max`, both only when a config asks for it.
//!
//! ```text
//!  ns A (swe-<pid>-<n>-a)                                 ns B (swe-<pid>-<n>-b)
//!  apps ── wan0 10.x.y.1/24                      10.x.y.2/24 wan0 ── apps
//!            │ TUN fd                                  TUN fd │
//!            └──► [thread a→b: LinkModel + delay line] ──────►┘
//!            ┌◄── [thread b→a: LinkModel + delay line] ◄──────┐
//! ```
//! The only I/O is in `forward` (TUN reads/writes) and `netns`/`wan` (`ip`, `/proc/sys`);
//! [`model::LinkModel`] is pure and takes time as an input.

mod forward;
pub mod model;
pub mod netns;
pub mod params;
mod wan;

pub use forward::{DirectionStats, MAX_DELAY_LINE_BYTES};
pub use netns::{cleanup_stale, run_in_netns, skip_reason, spawn_in_netns};
pub use params::{
    parse_duration, parse_probability, parse_queue, parse_rate, GilbertElliott, LinkParams,
    QueueLimit, WanConfig,
};
pub use wan::{Wan, WanStats};

/// Everything that can go wrong starting or configuring the emulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The emulator cannot run here (not root, no `/dev/net/tun`, no `ip`).
    #[error("WAN emulator unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// A link parameter is out of range.
    #[error("{field} = {value} is not valid: {reason}")]
    InvalidParam {
        /// Dotted path of the field, e.g. `a_to_b.loss`.
        field: String,
        /// The rejected value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A human-form value (`50ms`, `100mbit`, `1%`) did not parse.
    #[error("{what} {value:?} is not valid: {reason}")]
    Parse {
        /// Kind of value.
        what: String,
        /// The rejected text.
        value: String,
        /// Why.
        reason: String,
    },
    /// The requested congestion control is not available in this kernel.
    #[error("congestion control {name:?} not available (available: {available})")]
    CongestionControl {
        /// Requested.
        name: String,
        /// What the kernel offers.
        available: String,
    },
    /// An external command could not be started.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Cause.
        source: std::io::Error,
    },
    /// An external command failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// A namespace could not be opened or entered.
    #[error("network namespace {name}: {source}")]
    Netns {
        /// Namespace name.
        name: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}
