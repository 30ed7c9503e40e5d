//! Naming a payload from its first bytes.
//!
//! Every sniffer checks a magic number or a self-verifying structure (a checksum, a parseable
//! header), never a file name, and looks at no more than [`SNIFF_PREFIX_LEN`] bytes. A structure
//! that is fully inside the prefix must also be valid, so a near-miss (right magic, broken header)
//! is not named.

use serde::de::IgnoredAny;

use crate::crc32c::masked_crc32c;
use crate::safetensors::{parse_safetensors_header, safetensors_header_end};
use crate::tar::{TarMemberKind, TarWalker, TAR_BLOCK};

/// How many leading bytes the sniffers examine; pass this many when the payload has them.
pub const SNIFF_PREFIX_LEN: usize = 64 * 1024;
/// Largest Arrow IPC metadata message accepted when sniffing an Arrow stream.
const MAX_ARROW_METADATA: u32 = 16 * 1024 * 1024;
/// Largest TFRecord record length accepted (1 TiB); lengths are otherwise any u64.
const MAX_TFRECORD_LEN: u64 = 1 << 40;
/// JSONL lines parsed before calling it JSONL: enough to rule out chance, and it keeps the
/// sniff of a 64 KiB prefix of short records at a few microseconds instead of ~100.
const JSONL_MAX_LINES: usize = 16;
/// Longest zip member name accepted (zip allows 65535; real names are short).
const MAX_ZIP_NAME: usize = 4096;

/// A payload format the classifier knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Format {
    /// Hugging Face safetensors.
    Safetensors,
    /// GGUF (llama.cpp).
    Gguf,
    /// NumPy `.npy` array.
    Npy,
    /// NumPy `.npz` (zip of `.npy`).
    Npz,
    /// PyTorch zip checkpoint (`torch.save`).
    TorchZip,
    /// Any other zip archive.
    Zip,
    /// Apache Parquet.
    Parquet,
    /// Arrow IPC file (`ARROW1`, Feather v2).
    ArrowFile,
    /// Arrow IPC stream.
    ArrowStream,
    /// TensorFlow TFRecord.
    TfRecord,
    /// WebDataset shard: a tar whose members group as `key.ext`.
    WebDatasetTar,
    /// Any other ustar/GNU tar.
    Tar,
    /// JSON Lines of objects.
    Jsonl,
    /// JPEG image.
    Jpeg,
    /// PNG image.
    Png,
    /// MP4 / ISO base media (`ftyp`): MP4, MOV, HEIC, AVIF.
    Mp4,
    /// gzip stream.
    Gzip,
    /// Zstandard frame.
    Zstd,
}

/// What a format is for; drives the built-in class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FormatKind {
    /// Model weights → class `model`.
    Model,
    /// Training or evaluation data → class `dataset`.
    Dataset,
    /// Already-compressed media → class `media`.
    Media,
    /// A container with no known purpose.
    Other,
}

/// Float element types the tensor codec regroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatDtype {
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
    /// IEEE double.
    F64,
}

impl FloatDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Bf16 | Self::F16 => 2,
            Self::F32 => 4,
            Self::F64 => 8,
        }
    }
}

impl Format {
    /// Every format, for listing and config validation.
    pub const ALL: [Format; 18] = [
        Format::Safetensors,
        Format::Gguf,
        Format::Npy,
        Format::Npz,
        Format::TorchZip,
        Format::Zip,
        Format::Parquet,
        Format::ArrowFile,
        Format::ArrowStream,
        Format::TfRecord,
        Format::WebDatasetTar,
        Format::Tar,
        Format::Jsonl,
        Format::Jpeg,
        Format::Png,
        Format::Mp4,
        Format::Gzip,
        Format::Zstd,
    ];

    /// The name used in config (`format = "safetensors"`) and in statistics.
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Gguf => "gguf",
            Format::Npy => "npy",
            Format::Npz => "npz",
            Format::TorchZip => "torch",
            Format::Zip => "zip",
            Format::Parquet => "parquet",
            Format::ArrowFile => "arrow",
            Format::ArrowStream => "arrow-stream",
            Format::TfRecord => "tfrecord",
            Format::WebDatasetTar => "webdataset",
            Format::Tar => "tar",
            Format::Jsonl => "jsonl",
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Mp4 => "mp4",
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
        }
    }

    /// Inverse of [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    /// What the format is for.
    pub fn kind(self) -> FormatKind {
        match self {
            Format::Safetensors | Format::Gguf | Format::TorchZip => FormatKind::Model,
            Format::Npy
            | Format::Npz
            | Format::Parquet
            | Format::ArrowFile
            | Format::ArrowStream
            | Format::TfRecord
            | Format::WebDatasetTar
            | Format::Jsonl => FormatKind::Dataset,
            Format::Jpeg | Format::Png | Format::Mp4 | Format::Gzip | Format::Zstd => {
                FormatKind::Media
            }
            Format::Zip | Format::Tar => FormatKind::Other,
        }
    }

    /// Whether payloads of this format are usually already compressed, so zstd would waste CPU.
    /// [`Sniffed::compressed`] refines this per payload (e.g. a deflated `.npz`).
    pub fn is_compressed(self) -> bool {
        // Parquet pages are snappy/zstd-compressed by default in every major writer.
        matches!(
            self,
            Format::Jpeg
                | Format::Png
                | Format::Mp4
                | Format::Gzip
                | Format::Zstd
                | Format::Parquet
        )
    }

    /// Whether the format may hold float tensors worth the tensor codec.
    pub fn may_hold_float_tensors(self) -> bool {
        matches!(
            self,
            Format::Safetensors | Format::Gguf | Format::Npy | Format::Npz | Format::TorchZip
        )
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`sniff_detail`] learned about a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sniffed {
    /// The format.
    pub format: Format,
    /// Whether this payload is already compressed (format default, refined by zip methods).
    pub compressed: bool,
    /// The float element type the header declares: for safetensors the type holding the most
    /// bytes (or, when the header is longer than the prefix, the most frequent in the visible part);
    /// for `.npy` the `descr`. `None` when the header does not say or the data is not float.
    pub float_dtype: Option<FloatDtype>,
}

/// The format of a payload from its first bytes, if recognised.
pub fn sniff(prefix: &[u8]) -> Option<Format> {
    sniff_detail(prefix).map(|s| s.format)
}

/// Format, compression and float type of a payload from its first bytes.
pub fn sniff_detail(prefix: &[u8]) -> Option<Sniffed> {
    let p = &prefix[..prefix.len().min(SNIFF_PREFIX_LEN)];
    let plain = |format: Format| {
        Some(Sniffed {
            format,
            compressed: format.is_compressed(),
            float_dtype: None,
        })
    };
    // Tar first: its first bytes are a member name, which could look like any other magic.
    if let Some(f) = sniff_tar(p) {
        return plain(f);
    }
    if p.starts_with(b"GGUF") {
        let version = le_u32(p, 4)?;
        return if (1..=3).contains(&version) {
            plain(Format::Gguf)
        } else {
            None
        };
    }
    if p.starts_with(b"\x93NUMPY") {
        return sniff_npy(p);
    }
    if p.starts_with(b"PK\x03\x04") {
        return sniff_zip(p);
    }
    if p.starts_with(b"PAR1") {
        return plain(Format::Parquet);
    }
    if p.starts_with(b"ARROW1\0\0") {
        return plain(Format::ArrowFile);
    }
    if p.starts_with(&[0xFF; 4]) {
        return if arrow_schema_message(p) {
            plain(Format::ArrowStream)
        } else {
            None
        };
    }
    if p.len() >= 4 && p[..3] == [0xFF, 0xD8, 0xFF] && p[3] >= 0xC0 && p[3] != 0xFF {
        return plain(Format::Jpeg);
    }
    if p.starts_with(b"\x89PNG\r\n\x1a\n") {
        return plain(Format::Png);
    }
    if p.len() >= 4 && p[..3] == [0x1F, 0x8B, 0x08] && p[3] & 0xE0 == 0 {
        return plain(Format::Gzip);
    }
    if p.len() >= 5 && p[..4] == [0x28, 0xB5, 0x2F, 0xFD] && p[4] & 0x08 == 0 {
        return plain(Format::Zstd);
    }
    if is_iso_bmff(p) {
        return plain(Format::Mp4);
    }
    // TFRecord before safetensors: its CRC makes a false match ~2^-32, and both start with a u64.
    if is_tfrecord(p) {
        return plain(Format::TfRecord);
    }
    if let Some(dtype) = sniff_safetensors(p) {
        return Some(Sniffed {
            format: Format::Safetensors,
            compressed: false,
            float_dtype: dtype,
        });
    }
    if is_jsonl(p) {
        return plain(Format::Jsonl);
    }
    None
}

fn le_u32(p: &[u8], at: usize) -> Option<u32> {
    let b = p.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn le_u16(p: &[u8], at: usize) -> Option<u16> {
    let b = p.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn le_u64(p: &[u8], at: usize) -> Option<u64> {
    let b = p.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

// ---------------------------------------------------------------------------------------------
// tar / WebDataset

/// Extensions WebDataset pipelines use for sample fields; a lone visible member with one of these
/// is taken as the first field of a sample.
const WDS_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "gif", "json", "txt", "cls", "cls2", "npy", "npz", "pth", "pyd",
    "pickle", "cbor", "msgpack", "mp4", "wav", "flac", "mp3", "tif", "tiff", "ppm", "pgm", "index",
    "id", "caption",
];

fn sniff_tar(p: &[u8]) -> Option<Format> {
    if p.len() < TAR_BLOCK || &p[257..262] != b"ustar" {
        return None;
    }
    let mut walker = TarWalker::new();
    let mut files: Vec<String> = Vec::new();
    let mut first = true;
    while let Some(off) = walker.next_header_offset() {
        let Some(block) = usize::try_from(off)
            .ok()
            .and_then(|o| p.get(o..o.checked_add(TAR_BLOCK)?))
        else {
            break;
        };
        match walker.feed(block) {
            Ok(Some(m)) if m.kind == TarMemberKind::File => files.push(m.name),
            Ok(_) => {}
            // A broken first header is not a tar; a broken later one may be a cut-off prefix.
            Err(_) if first => return None,
            Err(_) => break,
        }
        first = false;
    }
    Some(if is_webdataset(&files) {
        Format::WebDatasetTar
    } else {
        Format::Tar
    })
}

/// WebDataset groups consecutive members by key: `dir/000001.jpg`, `dir/000001.json`, ...
/// The key is the path up to the first dot of the base name.
fn is_webdataset(files: &[String]) -> bool {
    let split = |name: &str| -> Option<(String, String)> {
        let (dir, base) = name.rsplit_once('/').unwrap_or(("", name));
        let (stem, ext) = base.split_once('.')?;
        if stem.is_empty() || ext.is_empty() {
            return None;
        }
        Some((format!("{dir}/{stem}"), ext.to_ascii_lowercase()))
    };
    let Some(parts) = files.iter().map(|f| split(f)).collect::<Option<Vec<_>>>() else {
        return false;
    };
    match parts.as_slice() {
        [] => false,
        [(_, ext)] => WDS_EXTENSIONS.contains(&ext.as_str()),
        _ => parts
            .windows(2)
            .any(|w| w[0].0 == w[1].0 && w[0].1 != w[1].1),
    }
}

// ---------------------------------------------------------------------------------------------
// NumPy

fn sniff_npy(p: &[u8]) -> Option<Sniffed> {
    let major = *p.get(6)?;
    let minor = *p.get(7)?;
    if !(1..=3).contains(&major) || minor != 0 {
        return None;
    }
    let (len, start) = if major == 1 {
        (le_u16(p, 8)? as usize, 10)
    } else {
        (le_u32(p, 8)? as usize, 12)
    };
    // The header dict is a Python literal starting with '{'.
    if p.get(start) != Some(&b'{') {
        return None;
    }
    let visible = &p[start..p.len().min(start.saturating_add(len))];
    let float_dtype = npy_descr(visible).and_then(|d| match d {
        "<f2" => Some(FloatDtype::F16),
        "<f4" => Some(FloatDtype::F32),
        "<f8" => Some(FloatDtype::F64),
        "bfloat16" | "<bf16" => Some(FloatDtype::Bf16),
        _ => None,
    });
    Some(Sniffed {
        format: Format::Npy,
        compressed: false,
        float_dtype,
    })
}

/// The `'descr': '<f4'` value of an npy header dict, when it is a plain string.
fn npy_descr(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?;
    let rest = &text[text.find("'descr'")? + "'descr'".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let quote = rest.chars().next().filter(|&c| c == '\'' || c == '"')?;
    let rest = &rest[1..];
    Some(&rest[..rest.find(quote)?])
}

// ---------------------------------------------------------------------------------------------
// zip: npz, torch

struct ZipEntry<'a> {
    name: &'a [u8],
    method: u16,
}

/// Local file headers visible in the prefix, in order. `None` if the first one is malformed.
fn zip_entries(p: &[u8]) -> Option<Vec<ZipEntry<'_>>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while p.get(off..off + 4) == Some(b"PK\x03\x04") {
        let Some(hdr) = p.get(off..off + 30) else {
            break;
        };
        let flags = le_u16(hdr, 6)?;
        let method = le_u16(hdr, 8)?;
        let mut csize = le_u32(hdr, 18)? as u64;
        let name_len = le_u16(hdr, 26)? as usize;
        let extra_len = le_u16(hdr, 28)? as usize;
        if name_len == 0 || name_len > MAX_ZIP_NAME {
            return if out.is_empty() { None } else { Some(out) };
        }
        let Some(name) = p.get(off + 30..off + 30 + name_len) else {
            break;
        };
        out.push(ZipEntry { name, method });
        let extra_start = off + 30 + name_len;
        if csize == 0xFFFF_FFFF {
            // ZIP64: the real sizes are in extra field 0x0001 (uncompressed, then compressed).
            let Some(extra) = p.get(extra_start..extra_start + extra_len) else {
                break;
            };
            match zip64_csize(extra) {
                Some(c) => csize = c,
                None => break,
            }
        }
        if flags & 0x08 != 0 && csize == 0 {
            break; // sizes follow the data; the next header cannot be located from here
        }
        let Some(next) = (extra_start as u64)
            .checked_add(extra_len as u64)
            .and_then(|n| n.checked_add(csize))
        else {
            break;
        };
        match usize::try_from(next) {
            Ok(n) if n < p.len() => off = n,
            _ => break,
        }
    }
    Some(out)
}

fn zip64_csize(mut extra: &[u8]) -> Option<u64> {
    while extra.len() >= 4 {
        let id = le_u16(extra, 0)?;
        let len = le_u16(extra, 2)? as usize;
        let body = extra.get(4..4 + len)?;
        if id == 0x0001 {
            return le_u64(body, 8);
        }
        extra = &extra[4 + len..];
    }
    None
}

fn sniff_zip(p: &[u8]) -> Option<Sniffed> {
    let entries = zip_entries(p)?;
    let names: Vec<&[u8]> = entries.iter().map(|e| e.name).collect();
    let compressed = entries.iter().any(|e| e.method != 0);
    let is_torch = names.iter().any(|n| is_torch_member(n));
    let is_npz = !names.is_empty() && names.iter().all(|n| n.ends_with(b".npy"));
    let format = if is_torch {
        Format::TorchZip
    } else if is_npz {
        Format::Npz
    } else {
        Format::Zip
    };
    Some(Sniffed {
        format,
        compressed,
        float_dtype: None,
    })
}

/// `torch.save` writes `<archive>/data.pkl`, `<archive>/data/<n>`, `<archive>/byteorder`, ...
fn is_torch_member(name: &[u8]) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    if name == "data.pkl" || name.ends_with("/data.pkl") || name.ends_with("/.data/version") {
        return true;
    }
    match name.rsplit_once("/data/") {
        Some((_, n)) => !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Arrow IPC stream

/// Arrow stream: 0xFFFFFFFF, i32 metadata length, then a flatbuffer `Message` whose header is a
/// `Schema` (the first message of every stream).
fn arrow_schema_message(p: &[u8]) -> bool {
    let Some(len) = le_u32(p, 4) else {
        return false;
    };
    if len == 0 || len > MAX_ARROW_METADATA || len & 7 != 0 {
        return false;
    }
    let msg = &p[8..p.len().min(8 + len as usize)];
    flatbuffer_message_is_schema(msg).unwrap_or(false)
}

fn flatbuffer_message_is_schema(msg: &[u8]) -> Option<bool> {
    let table = le_u32(msg, 0)? as usize;
    let soffset = le_u32(msg, table)? as i32 as i64;
    let vtable = usize::try_from(table as i64 - soffset).ok()?;
    let vt_len = le_u16(msg, vtable)? as usize;
    if vt_len < 4 || vt_len & 1 != 0 {
        return Some(false);
    }
    let field = |i: usize| -> Option<usize> {
        if 4 + 2 * i + 2 > vt_len {
            return Some(0); // absent field: default value
        }
        Some(le_u16(msg, vtable + 4 + 2 * i)? as usize)
    };
    // Message { version: short (field 0), header_type: ubyte (field 1), header: offset (field 2) }
    let version = match field(0)? {
        0 => 0,
        off => le_u16(msg, table + off)?,
    };
    let header_type = match field(1)? {
        0 => 0,
        off => *msg.get(table + off)?,
    };
    let has_header = field(2)? != 0;
    const SCHEMA: u8 = 1;
    Some(version <= 4 && header_type == SCHEMA && has_header)
}

// ---------------------------------------------------------------------------------------------
// TFRecord, ISO BMFF, safetensors, JSONL

/// TFRecord: u64 length, masked CRC-32C of those 8 bytes, data, masked CRC-32C of the data.
fn is_tfrecord(p: &[u8]) -> bool {
    let (Some(len), Some(len_crc)) = (le_u64(p, 0), le_u32(p, 8)) else {
        return false;
    };
    if len > MAX_TFRECORD_LEN || masked_crc32c(&p[..8]) != len_crc {
        return false;
    }
    // When the whole first record is visible, its data CRC must hold too.
    let Some(data_end) = usize::try_from(len).ok().and_then(|l| l.checked_add(12)) else {
        return true;
    };
    match (p.get(12..data_end), le_u32(p, data_end)) {
        (Some(data), Some(crc)) => masked_crc32c(data) == crc,
        _ => true,
    }
}

fn is_iso_bmff(p: &[u8]) -> bool {
    let Some(size) = p
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return false;
    };
    p.get(4..8) == Some(b"ftyp")
        && (8..=4096).contains(&size)
        && p.get(8..12).is_some_and(|brand| {
            brand
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b' ')
        })
}

fn sniff_safetensors(p: &[u8]) -> Option<Option<FloatDtype>> {
    let end = usize::try_from(safetensors_header_end(p).ok()??).ok()?;
    let visible = &p[8..p.len().min(end)];
    if visible.first() != Some(&b'{') {
        return None;
    }
    // JSON text: the first token after '{' is a key or '}', and there are no raw control bytes.
    let after = visible[1..].iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(after, Some(b'"') | Some(b'}') | None) {
        return None;
    }
    if visible
        .iter()
        .any(|&b| b < 0x20 && !b.is_ascii_whitespace())
    {
        return None;
    }
    if p.len() >= end {
        let header = parse_safetensors_header(p).ok()?;
        return Some(dominant_by_bytes(&header));
    }
    Some(dominant_by_count(visible))
}

fn dominant_by_bytes(h: &crate::SafetensorsHeader) -> Option<FloatDtype> {
    let mut totals: [(u64, Option<FloatDtype>); 4] = [
        (0, Some(FloatDtype::Bf16)),
        (0, Some(FloatDtype::F16)),
        (0, Some(FloatDtype::F32)),
        (0, Some(FloatDtype::F64)),
    ];
    for t in &h.tensors {
        if let Some(f) = t.dtype.float() {
            if let Some(slot) = totals.iter_mut().find(|s| s.1 == Some(f)) {
                slot.0 += t.end - t.start;
            }
        }
    }
    totals
        .iter()
        .filter(|s| s.0 > 0)
        .max_by_key(|s| s.0)
        .and_then(|s| s.1)
}

/// Most frequent float `"dtype"` in a partial header (no full parse possible).
fn dominant_by_count(visible: &[u8]) -> Option<FloatDtype> {
    let text = String::from_utf8_lossy(visible);
    let mut counts = [0usize; 4];
    let kinds = [
        FloatDtype::Bf16,
        FloatDtype::F16,
        FloatDtype::F32,
        FloatDtype::F64,
    ];
    for (_, rest) in text
        .match_indices("\"dtype\"")
        .map(|(i, m)| (i, &text[i + m.len()..]))
    {
        let Some(rest) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some(value) = rest.split('"').next() else {
            continue;
        };
        let idx = match value {
            "BF16" => 0,
            "F16" => 1,
            "F32" => 2,
            "F64" => 3,
            _ => continue,
        };
        counts[idx] += 1;
    }
    let (i, &n) = counts.iter().enumerate().max_by_key(|&(_, n)| *n)?;
    (n > 0).then(|| kinds[i])
}

/// JSON Lines: at least one complete newline-terminated line, and every complete line a JSON
/// object (blank lines tolerated) up to [`JSONL_MAX_LINES`]; when fewer lines are visible, the
/// cut-off last line must start like an object.
fn is_jsonl(p: &[u8]) -> bool {
    let p = p.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(p);
    let Some(last_nl) = p.iter().rposition(|&b| b == b'\n') else {
        return false;
    };
    let mut objects = 0;
    for line in p[..last_nl].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed = line
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .map(|i| &line[i..]);
        let Some(line) = trimmed else { continue };
        if line.first() != Some(&b'{') || serde_json::from_slice::<IgnoredAny>(line).is_err() {
            return false;
        }
        objects += 1;
        if objects == JSONL_MAX_LINES {
            return true;
        }
    }
    let tail = &p[last_nl + 1..];
    let tail_ok = match tail.iter().find(|b| !b.is_ascii_whitespace()) {
        None | Some(b'{') => true,
        Some(_) => false,
    };
    objects > 0 && tail_ok
}

#[cfg(test)]
mod tests;
