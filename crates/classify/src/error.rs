//! The crate's one error type.

/// Everything that can fail in classification: malformed payload structures and invalid policy
/// configuration. Messages name the offending value.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Fewer bytes were given than the structure needs; feed at least `need` bytes.
    #[error("{what} truncated: have {have} bytes, need {need}")]
    Truncated {
        /// Which structure was being parsed.
        what: &'static str,
        /// Bytes available.
        have: u64,
        /// Bytes needed to finish parsing.
        need: u64,
    },
    /// A declared length exceeds its named bound.
    #[error("{what} length {len} exceeds limit {max}")]
    TooLarge {
        /// Which length.
        what: &'static str,
        /// The declared length.
        len: u64,
        /// The bound it exceeds.
        max: u64,
    },
    /// A safetensors header that is not valid: bad JSON, unknown layout, overlapping or
    /// inconsistent tensor ranges.
    #[error("invalid safetensors header: {reason}")]
    Safetensors {
        /// What is wrong, naming the value.
        reason: String,
    },
    /// A tar header block that is not valid.
    #[error("invalid tar header at offset {offset}: {reason}")]
    Tar {
        /// Byte offset of the header block in the archive.
        offset: u64,
        /// What is wrong, naming the value.
        reason: String,
    },
    /// An invalid policy configuration value; `field` is the dotted path.
    #[error("{field} = {value:?}: {reason}")]
    Config {
        /// Dotted path of the field, e.g. `rule[2].class`.
        field: String,
        /// The offending value as written.
        value: String,
        /// Why it is not valid.
        reason: String,
    },
}

impl Error {
    pub(crate) fn config(
        field: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Config {
            field: field.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn safetensors(reason: impl Into<String>) -> Self {
        Error::Safetensors {
            reason: reason.into(),
        }
    }
}
