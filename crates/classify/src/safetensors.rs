//! The safetensors header: an 8-byte little-endian length, then that many bytes of JSON mapping
//! tensor names to `{dtype, shape, data_offsets}` (offsets relative to the first byte after the
//! header), plus an optional `__metadata__` string map. The data path uses the tensor ranges to cut
//! chunks at tensor boundaries, so an edited tensor does not shift the chunks of its neighbours.
//!
//! Validation follows the reference implementation: the header is capped at 100 MB, tensors must
//! tile the data region exactly (sorted by offset, no gaps, no overlap) and each range must be as
//! long as `shape × dtype size`. On top of that, duplicate keys are rejected rather than
//! last-one-wins, so two parsers cannot disagree about which tensor a name means.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::Error;

/// The largest JSON header accepted, as in the `safetensors` crate (100 MB).
pub const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;
/// The most tensors one header may describe; real checkpoints hold at most tens of thousands.
pub const MAX_SAFETENSORS_TENSORS: usize = 1_000_000;
/// Dimensions per tensor; real tensors have fewer than ten.
const MAX_RANK: usize = 64;

/// Element type of a tensor as the header names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TensorDtype {
    /// `BOOL`
    Bool,
    /// `U8`
    U8,
    /// `I8`
    I8,
    /// `F8_E5M2`
    F8E5M2,
    /// `F8_E4M3`
    F8E4M3,
    /// `I16`
    I16,
    /// `U16`
    U16,
    /// `F16` (IEEE half)
    F16,
    /// `BF16` (bfloat16)
    BF16,
    /// `I32`
    I32,
    /// `U32`
    U32,
    /// `F32`
    F32,
    /// `F64`
    F64,
    /// `I64`
    I64,
    /// `U64`
    U64,
    /// A dtype this crate does not know (newer formats add sub-byte types); its ranges are still
    /// checked for tiling, but not against the shape.
    Other(String),
}

impl TensorDtype {
    fn parse(s: &str) -> Self {
        match s {
            "BOOL" => Self::Bool,
            "U8" => Self::U8,
            "I8" => Self::I8,
            "F8_E5M2" => Self::F8E5M2,
            "F8_E4M3" => Self::F8E4M3,
            "I16" => Self::I16,
            "U16" => Self::U16,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "I32" => Self::I32,
            "U32" => Self::U32,
            "F32" => Self::F32,
            "F64" => Self::F64,
            "I64" => Self::I64,
            "U64" => Self::U64,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Bytes per element, when known.
    pub fn size(&self) -> Option<u64> {
        Some(match self {
            Self::Bool | Self::U8 | Self::I8 | Self::F8E5M2 | Self::F8E4M3 => 1,
            Self::I16 | Self::U16 | Self::F16 | Self::BF16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 | Self::I64 | Self::U64 => 8,
            Self::Other(_) => return None,
        })
    }

    /// The float type the tensor codec regroups, if this is one.
    pub fn float(&self) -> Option<crate::FloatDtype> {
        match self {
            Self::BF16 => Some(crate::FloatDtype::Bf16),
            Self::F16 => Some(crate::FloatDtype::F16),
            Self::F32 => Some(crate::FloatDtype::F32),
            Self::F64 => Some(crate::FloatDtype::F64),
            _ => None,
        }
    }
}

/// One tensor's place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (the JSON key).
    pub name: String,
    /// Element type.
    pub dtype: TensorDtype,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// First byte, relative to the start of the data region.
    pub start: u64,
    /// One past the last byte, relative to the start of the data region.
    pub end: u64,
}

/// A validated safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// Length of the JSON header (the value of the first 8 bytes).
    pub header_len: u64,
    /// Tensors sorted by `start`; they tile `0..data_len()` exactly.
    pub tensors: Vec<TensorInfo>,
    /// `__metadata__` entries, sorted by key.
    pub metadata: Vec<(String, String)>,
}

impl SafetensorsHeader {
    /// File offset of the data region (8 + header length).
    pub fn data_start(&self) -> u64 {
        // header_len <= MAX_SAFETENSORS_HEADER when parsed; saturate for a header built by hand.
        self.header_len.saturating_add(8)
    }

    /// Length of the data region the tensors cover.
    pub fn data_len(&self) -> u64 {
        self.tensors.last().map_or(0, |t| t.end)
    }

    /// Expected total file length; `None` if it does not fit a `u64` (a header built by hand:
    /// [`parse_safetensors_header`] rejects such offsets).
    pub fn file_len(&self) -> Option<u64> {
        self.data_start().checked_add(self.data_len())
    }

    /// Absolute file offsets where a tensor begins (the data start first), for chunk cuts. Ends
    /// early at an offset that does not fit a `u64` (only possible for a header built by hand).
    pub fn tensor_boundaries(&self) -> impl Iterator<Item = u64> + '_ {
        let base = self.data_start();
        self.tensors
            .iter()
            .map_while(move |t| base.checked_add(t.start))
    }
}

/// How many bytes of the file hold the header (8 + JSON length), once the first 8 bytes are known.
///
/// `Ok(None)` means fewer than 8 bytes were given. Errors when the declared length exceeds
/// [`MAX_SAFETENSORS_HEADER`] or is too short to hold `{}`.
pub fn safetensors_header_end(prefix: &[u8]) -> Result<Option<u64>, Error> {
    let Some(len_bytes) = prefix.get(..8) else {
        return Ok(None);
    };
    let mut b = [0u8; 8];
    b.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(b);
    if n > MAX_SAFETENSORS_HEADER {
        return Err(Error::TooLarge {
            what: "safetensors header",
            len: n,
            max: MAX_SAFETENSORS_HEADER,
        });
    }
    if n < 2 {
        return Err(Error::safetensors(format!(
            "header length {n} cannot hold a JSON object"
        )));
    }
    Ok(Some(8 + n))
}

/// Parse and validate the header at the start of `prefix` (the file's first bytes; bytes past the
/// header are ignored). Returns [`Error::Truncated`] with the number of bytes needed when `prefix`
/// ends inside the header.
pub fn parse_safetensors_header(prefix: &[u8]) -> Result<SafetensorsHeader, Error> {
    let Some(end) = safetensors_header_end(prefix)? else {
        return Err(Error::Truncated {
            what: "safetensors header",
            have: prefix.len() as u64,
            need: 8,
        });
    };
    let Some(json) = usize::try_from(end).ok().and_then(|e| prefix.get(8..e)) else {
        return Err(Error::Truncated {
            what: "safetensors header",
            have: prefix.len() as u64,
            need: end,
        });
    };
    if json.first() != Some(&b'{') {
        return Err(Error::safetensors("header does not start with '{'"));
    }
    let raw: RawHeader =
        serde_json::from_slice(json).map_err(|e| Error::safetensors(format!("JSON: {e}")))?;

    let mut tensors = Vec::with_capacity(raw.tensors.len());
    for (name, t) in raw.tensors {
        let dtype = TensorDtype::parse(&t.dtype);
        let (start, end) = t.data_offsets;
        if start > end {
            return Err(Error::safetensors(format!(
                "tensor {name:?}: data_offsets [{start}, {end}] run backwards"
            )));
        }
        if let Some(size) = dtype.size() {
            let elems = t.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let bytes = elems.and_then(|e| e.checked_mul(size));
            if bytes != Some(end - start) {
                return Err(Error::safetensors(format!(
                    "tensor {name:?}: shape {:?} of {} is not {} bytes",
                    t.shape,
                    t.dtype,
                    end - start
                )));
            }
        }
        tensors.push(TensorInfo {
            name,
            dtype,
            shape: t.shape,
            start,
            end,
        });
    }
    // Sort by range, zero-length tensors first at equal starts, so tiling can be checked in one pass.
    tensors.sort_by_key(|t| (t.start, t.end));
    let mut expected = 0u64;
    for t in &tensors {
        if t.start != expected {
            return Err(Error::safetensors(format!(
                "tensor {:?} starts at {} but the previous tensor ends at {expected} (gap or overlap)",
                t.name, t.start
            )));
        }
        expected = t.end;
    }
    // Offsets are relative to the data region: the file offset of every byte must fit a u64, so
    // that callers can add the data start without overflow (hostile offsets near u64::MAX).
    if end.checked_add(expected).is_none() {
        return Err(Error::safetensors(format!(
            "tensor data ends at {expected}, past the largest file offset after a {end}-byte header"
        )));
    }
    let mut metadata = raw.metadata;
    metadata.sort();
    Ok(SafetensorsHeader {
        header_len: end - 8,
        tensors,
        metadata,
    })
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    #[serde(deserialize_with = "bounded_shape")]
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

fn bounded_shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    struct ShapeVisitor;
    impl<'de> Visitor<'de> for ShapeVisitor {
        type Value = Vec<u64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a list of at most {MAX_RANK} dimensions")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut v = Vec::new();
            while let Some(d) = seq.next_element::<u64>()? {
                if v.len() == MAX_RANK {
                    return Err(de::Error::custom(format!(
                        "shape has more than {MAX_RANK} dimensions"
                    )));
                }
                v.push(d);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(ShapeVisitor)
}

struct RawHeader {
    tensors: Vec<(String, RawTensor)>,
    metadata: Vec<(String, String)>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HeaderVisitor)
    }
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of tensors")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut seen = BTreeSet::new();
        let mut tensors = Vec::new();
        let mut metadata = None;
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            if key == "__metadata__" {
                metadata = map.next_value::<Option<MetadataMap>>()?;
            } else {
                if tensors.len() == MAX_SAFETENSORS_TENSORS {
                    return Err(de::Error::custom(format!(
                        "more than {MAX_SAFETENSORS_TENSORS} tensors"
                    )));
                }
                let t: RawTensor = map.next_value()?;
                tensors.push((key, t));
            }
        }
        Ok(RawHeader {
            tensors,
            metadata: metadata.map(|m| m.0).unwrap_or_default(),
        })
    }
}

struct MetadataMap(Vec<(String, String)>);

impl<'de> Deserialize<'de> for MetadataMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetadataMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetadataMap, A::Error> {
                let mut seen = BTreeSet::new();
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(de::Error::custom(format!(
                            "duplicate __metadata__ key {k:?}"
                        )));
                    }
                    out.push((k, map.next_value::<String>()?));
                }
                Ok(MetadataMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
pub(crate) mod tests;
