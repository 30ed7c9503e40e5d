//! Traffic classification and policy: which class a flow or HTTP request belongs to, and what that
//! class is allowed and given.
//!
//! This crate owns:
//! - **format sniffers** that name a payload from its first bytes ([`sniff`], [`sniff_detail`]):
//!   model formats (safetensors, GGUF, NumPy, PyTorch zip), dataset formats (Parquet, Arrow IPC,
//!   TFRecord, WebDataset tar, JSONL, `.npz`) and already-compressed media (JPEG, PNG, MP4, gzip, zstd);
//! - **structure parsers** the data path uses to cut chunks at natural boundaries: the safetensors
//!   header ([`parse_safetensors_header`], tensor byte ranges) and tar member headers ([`TarWalker`]);
//! - **classes and rules** ([`PolicyConfig`] → [`Classifier`] → [`Verdict`]), with built-in
//!   recognizers for LLM API traffic and "shadow AI" (LLM APIs not on the sanctioned list);
//! - a pure **token bucket** ([`TokenBucket`]) and per-class **counters** ([`ClassCounters`]).
//!
//! ```text
//!   edge/core (I/O, clock)                      strait-classify (pure)
//!   ─────────────────────                       ──────────────────────
//!   request line, Host, first body bytes ──▶ Classifier::classify ──▶ Verdict
//!   bytes about to be sent, Instant::now ──▶ TokenBucket::take      ──▶ wait
//!   body prefix                          ──▶ parse_safetensors_header / TarWalker ──▶ cut offsets
//! ```
//!
//! Architecture invariant: this crate performs no I/O, spawns nothing and never reads a clock;
//! time enters only as an `Instant` argument. Every parser of payload bytes is bounds-checked and
//! capped, because payload bytes come from whoever the pipeline talks to.

mod crc32c;
pub mod cuts;
mod error;
mod glob;
mod policy;
mod rate;
mod recognize;
mod safetensors;
mod sniff;
mod stats;
mod tar;

pub use error::Error;
pub use glob::Glob;
pub use policy::{
    Action, AiConfig, ClassConfig, ClassId, ClassPolicy, Classifier, Compression, FlowInfo,
    PolicyConfig, RuleConfig, Verdict, BUILTIN_CLASSES, MAX_CLASSES, MAX_GLOB_LEN, MAX_RULES,
};
pub use rate::{parse_byte_rate, ByteRate, TokenBucket, DEFAULT_BURST_MIN};
pub use recognize::{is_llm_api_host, is_llm_api_path, LLM_API_HOSTS, LLM_API_PATHS};
pub use safetensors::{
    parse_safetensors_header, safetensors_header_end, SafetensorsHeader, TensorDtype, TensorInfo,
    MAX_SAFETENSORS_HEADER, MAX_SAFETENSORS_TENSORS,
};
pub use sniff::{sniff, sniff_detail, FloatDtype, Format, FormatKind, Sniffed, SNIFF_PREFIX_LEN};
pub use stats::{ClassCounters, ClassSnapshot, ClassStats};
pub use tar::{
    tar_members, TarIndex, TarMember, TarMemberKind, TarWalker, MAX_TAR_MEMBERS, TAR_BLOCK,
};
