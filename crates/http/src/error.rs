//! The crate's error type.

use std::path::PathBuf;

/// What went wrong setting up an upstream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The upstream string is not `tcp://host:port`, `host:port`, `http://host[:port]` or
    /// `https://host[:port]`.
    #[error("upstream {upstream:?} is not valid: {reason}")]
    InvalidUpstream {
        /// The string as given.
        upstream: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The CA file could not be read or holds no usable certificate.
    #[error("CA file {path} is not usable: {reason}")]
    Roots {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the client configuration.
    #[error("TLS client configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}
