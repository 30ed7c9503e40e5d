//! The tunnel transport: QUIC (quinn) with mutual TLS (rustls), certificate generation, UDP
//! socket tuning for long fat links, and the per-flow pump that moves one TCP connection over one
//! QUIC stream through the dedup engine.
//!
//! Owns every quinn and rustls type in strait. It never decides *where* a flow goes (that is the
//! edge's and core's job) and never parses frames itself beyond handing them to `strait-dedup`.

pub mod certs;
pub mod classes;
pub mod congestion;
pub mod cubic;
pub mod deltas;
pub mod endpoint;
pub mod flow;
pub mod guard;
pub mod stall;
pub mod tls;
pub mod versions;

#[cfg(test)]
mod sim_tests;

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// Which file (CA, certificate, key).
        what: &'static str,
        /// Its path.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    CertGen(String),
    /// A file exists and `--force` was not given.
    #[error("{0} exists; not overwriting it without --force")]
    Exists(std::path::PathBuf),
    /// I/O on a socket or file.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A peer broke the protocol.
    #[error("protocol error from peer: {0}")]
    Protocol(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
