#![allow(clippy::unwrap_used)]

use std::io::Write;

use proptest::prelude::*;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::crc32c::masked_crc32c;
use crate::safetensors::tests::build_safetensors;
use crate::tar::tests::build_tar;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn zip_of(names: &[&str], seed: u64) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (i, name) in names.iter().enumerate() {
        w.start_file(*name, opts).unwrap();
        w.write_all(&random(300 + i * 10, seed + i as u64)).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A version-1 `.npy` header as `numpy.save` writes it: dict padded with spaces and a newline so
/// the data starts 64-byte aligned.
fn npy(descr: &str, major: u8) -> Vec<u8> {
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (3, 4), }}");
    let pre = if major == 1 { 10 } else { 12 };
    while !(pre + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(&random(48, 1));
    out
}

fn tfrecord(records: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let len = (r.len() as u64).to_le_bytes();
        out.extend_from_slice(&len);
        out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        out.extend_from_slice(r);
        out.extend_from_slice(&masked_crc32c(r).to_le_bytes());
    }
    out
}

/// First message of an Arrow IPC stream: continuation marker, length, and a flatbuffer `Message`
/// table { version: V5, header_type: `header_type`, header: offset }.
fn arrow_stream(header_type: u8) -> Vec<u8> {
    let mut msg = vec![0u8; 32];
    msg[0..4].copy_from_slice(&16u32.to_le_bytes()); // root table at 16
                                                     // vtable at 4: vtable len 10, table len 12, field offsets: version 8, header_type 10, header 4
    for (i, v) in [10u16, 12, 8, 10, 4].iter().enumerate() {
        msg[4 + 2 * i..6 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    msg[16..20].copy_from_slice(&12i32.to_le_bytes()); // table - vtable
    msg[20..24].copy_from_slice(&8u32.to_le_bytes()); // header -> 28
    msg[24..26].copy_from_slice(&4i16.to_le_bytes()); // MetadataVersion V5
    msg[26] = header_type;
    let mut out = vec![0xFF; 4];
    out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    out.extend_from_slice(&msg);
    out
}

#[test]
fn safetensors_is_recognised_with_dominant_float_dtype() {
    let file = build_safetensors(
        &[
            ("w", "BF16", &[64, 64]),
            ("b", "F32", &[64]),
            ("ids", "I64", &[8]),
        ],
        1,
    );
    let s = sniff_detail(&file).unwrap();
    assert_eq!(s.format, Format::Safetensors);
    assert_eq!(s.float_dtype, Some(FloatDtype::Bf16));
    assert!(!s.compressed);
    // Only part of the header visible: still recognised, dtype by frequency.
    let big: Vec<(String, &str, &[u64])> = (0..3000)
        .map(|i| (format!("layer.{i}.weight"), "F16", &[2u64][..]))
        .collect();
    let refs: Vec<(&str, &str, &[u64])> =
        big.iter().map(|(n, d, s)| (n.as_str(), *d, *s)).collect();
    let file = build_safetensors(&refs, 2);
    assert!(safetensors_header_end(&file).unwrap().unwrap() > SNIFF_PREFIX_LEN as u64);
    let s = sniff_detail(&file).unwrap();
    assert_eq!(
        (s.format, s.float_dtype),
        (Format::Safetensors, Some(FloatDtype::F16))
    );
}

#[test]
fn safetensors_near_misses_are_rejected() {
    let file = build_safetensors(&[("w", "F32", &[4])], 3);
    let mut not_brace = file.clone();
    not_brace[8] = b'[';
    assert_eq!(sniff(&not_brace), None);
    let mut too_long = file.clone();
    too_long[..8].copy_from_slice(&(MAX_SAFETENSORS_HEADER_FOR_TEST + 1).to_le_bytes());
    assert_eq!(sniff(&too_long), None);
    // Complete header whose offsets do not match the shape.
    let json = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,15]}}"#;
    let mut bad = (json.len() as u64).to_le_bytes().to_vec();
    bad.extend_from_slice(json);
    assert_eq!(sniff(&bad), None);
    // Binary garbage after '{'.
    let mut bin = 64u64.to_le_bytes().to_vec();
    bin.push(b'{');
    bin.extend_from_slice(&random(63, 4));
    assert_eq!(sniff(&bin), None);
}

const MAX_SAFETENSORS_HEADER_FOR_TEST: u64 = crate::MAX_SAFETENSORS_HEADER;

#[test]
fn gguf_needs_a_known_version() {
    let mut g = b"GGUF".to_vec();
    g.extend_from_slice(&3u32.to_le_bytes());
    g.extend_from_slice(&random(64, 5));
    assert_eq!(sniff(&g), Some(Format::Gguf));
    g[4..8].copy_from_slice(&7u32.to_le_bytes());
    assert_eq!(sniff(&g), None);
}

#[test]
fn npy_header_gives_float_dtype() {
    for (descr, major, want) in [
        ("<f4", 1, Some(FloatDtype::F32)),
        ("<f2", 1, Some(FloatDtype::F16)),
        ("<f8", 2, Some(FloatDtype::F64)),
        ("<i8", 1, None),
        (">f4", 1, None),
    ] {
        let s = sniff_detail(&npy(descr, major)).unwrap();
        assert_eq!((s.format, s.float_dtype), (Format::Npy, want), "{descr}");
    }
    let mut bad = npy("<f4", 1);
    bad[6] = 9;
    assert_eq!(sniff(&bad), None);
    let mut bad = npy("<f4", 1);
    bad[10] = b'[';
    assert_eq!(sniff(&bad), None);
}

#[test]
fn zip_members_tell_torch_npz_and_plain_zip_apart() {
    let torch = zip_of(
        &[
            "archive/data.pkl",
            "archive/byteorder",
            "archive/data/0",
            "archive/version",
        ],
        6,
    );
    assert_eq!(sniff(&torch), Some(Format::TorchZip));
    let torch_later = zip_of(
        &["model/.format_version", "model/data/0", "model/data/1"],
        6,
    );
    assert_eq!(sniff(&torch_later), Some(Format::TorchZip));
    let npz = zip_of(&["arr_0.npy", "labels.npy"], 7);
    let s = sniff_detail(&npz).unwrap();
    assert_eq!((s.format, s.compressed), (Format::Npz, false));
    assert_eq!(
        sniff(&zip_of(&["readme.txt", "data.npy"], 8)),
        Some(Format::Zip)
    );
    assert_eq!(
        sniff(&zip_of(&["archive/data.pkl.bak"], 8)),
        Some(Format::Zip)
    );
    // Local header with an empty name is not a zip we can name.
    let mut bad = torch.clone();
    bad[26..28].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(sniff(&bad), None);
}

#[test]
fn parquet_and_arrow_file_magics() {
    let mut pq = b"PAR1".to_vec();
    pq.extend_from_slice(&random(100, 9));
    assert_eq!(sniff(&pq), Some(Format::Parquet));
    assert!(Format::Parquet.is_compressed());
    pq[3] = b'2';
    assert_eq!(sniff(&pq), None);
    let mut arrow = b"ARROW1\0\0".to_vec();
    arrow.extend_from_slice(&arrow_stream(1));
    assert_eq!(sniff(&arrow), Some(Format::ArrowFile));
    arrow[6] = b'x';
    assert_eq!(sniff(&arrow), None);
}

#[test]
fn arrow_stream_needs_a_schema_message() {
    assert_eq!(sniff(&arrow_stream(1)), Some(Format::ArrowStream));
    assert_eq!(
        sniff(&arrow_stream(3)),
        None,
        "record batch first is not a stream start"
    );
    let mut odd = arrow_stream(1);
    odd[4] = 33; // length not a multiple of 8
    assert_eq!(sniff(&odd), None);
    let mut wild = arrow_stream(1);
    wild[8..12].copy_from_slice(&u32::MAX.to_le_bytes()); // root offset out of bounds
    assert_eq!(sniff(&wild), None);
}

#[test]
fn tfrecord_crcs_are_verified() {
    let rec = tfrecord(&[&random(100, 10), &random(50, 11)]);
    assert_eq!(sniff(&rec), Some(Format::TfRecord));
    // Only the length CRC visible: still recognised.
    assert_eq!(sniff(&rec[..40]), Some(Format::TfRecord));
    let mut bad_len_crc = rec.clone();
    bad_len_crc[8] ^= 1;
    assert_eq!(sniff(&bad_len_crc), None);
    let mut bad_data_crc = rec.clone();
    bad_data_crc[112] ^= 1;
    assert_eq!(sniff(&bad_data_crc), None);
}

#[test]
fn webdataset_tar_is_told_from_plain_tar() {
    let wds = build_tar(
        &[
            ("s/000001.jpg", 900),
            ("s/000001.json", 40),
            ("s/000002.jpg", 700),
            ("s/000002.json", 41),
        ],
        12,
    );
    assert_eq!(sniff(&wds), Some(Format::WebDatasetTar));
    // First sample's image larger than the visible prefix: one member, known extension.
    let big = build_tar(&[("000001.jpg", 100_000), ("000001.cls", 2)], 13);
    assert_eq!(sniff(&big), Some(Format::WebDatasetTar));
    let plain = build_tar(
        &[("src/main.rs", 300), ("Cargo.toml", 100), ("README", 10)],
        14,
    );
    assert_eq!(sniff(&plain), Some(Format::Tar));
    let mut bad = wds.clone();
    bad[148] = b'9';
    assert_eq!(sniff(&bad), None);
}

#[test]
fn jsonl_needs_complete_object_lines() {
    assert_eq!(
        sniff(b"{\"text\": \"a\", \"n\": 1}\n{\"text\": \"b\"}\r\n{\"text\": \"c"),
        Some(Format::Jsonl)
    );
    assert_eq!(sniff(b"{\"a\":1}\n\n{\"b\":2}\n"), Some(Format::Jsonl));
    assert_eq!(sniff(b"{\"a\":1}"), None, "no complete line");
    assert_eq!(sniff(b"{\n  \"a\": 1\n}\n"), None, "pretty-printed JSON");
    assert_eq!(sniff(b"[1,2]\n[3]\n"), None, "arrays");
    assert_eq!(sniff(b"{\"a\":1}\nnot json\n"), None);
    assert_eq!(
        sniff(b"{\"a\":1}\nxyz"),
        None,
        "cut-off tail is not an object"
    );
}

#[test]
fn compressed_media_magics_and_near_misses() {
    let body = random(64, 15);
    let with = |head: &[u8]| [head, &body].concat();
    let cases: &[(&[u8], Option<Format>)] = &[
        (b"\xFF\xD8\xFF\xE0\x00\x10JFIF", Some(Format::Jpeg)),
        (b"\xFF\xD8\xFF\x00", None),
        (b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", Some(Format::Png)),
        (b"\x89PNG\r\n\x1a\0", None),
        (b"\0\0\0\x20ftypisom\0\0\x02\0", Some(Format::Mp4)),
        (b"\0\0\0\x20ftypheic", Some(Format::Mp4)),
        (b"\0\0\0\x20ftyq", None),
        (b"\x7f\0\0\0ftypisom", None),
        (b"\x1f\x8b\x08\x00\0\0\0\0\0\x03", Some(Format::Gzip)),
        (b"\x1f\x8b\x07\x00", None),
        (b"\x1f\x8b\x08\xe0", None),
        (b"\x28\xb5\x2f\xfd\x24\x00", Some(Format::Zstd)),
        (b"\x28\xb5\x2f\xfc\x24", None),
    ];
    for (head, want) in cases {
        let s = sniff_detail(&with(head));
        assert_eq!(s.map(|s| s.format), *want, "{head:?}");
        if let Some(s) = s {
            assert!(s.compressed && s.format.kind() == FormatKind::Media);
        }
    }
}

#[test]
fn seeded_random_payloads_are_not_named() {
    for seed in 0..2000 {
        let buf = random(4096, 1000 + seed);
        assert_eq!(sniff(&buf), None, "seed {seed}");
    }
    assert_eq!(sniff(b""), None);
    assert_eq!(sniff(&[0u8; 4096]), None);
}

#[test]
fn format_names_round_trip() {
    for f in Format::ALL {
        assert_eq!(Format::from_name(f.name()), Some(f));
    }
    assert_eq!(Format::from_name("pickle"), None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = sniff_detail(&bytes);
    }

    #[test]
    fn corrupted_samples_never_panic(which in 0usize..6, pos in 0usize..1500, byte in any::<u8>()) {
        let mut sample = match which {
            0 => build_safetensors(&[("w", "BF16", &[8, 8])], 20),
            1 => zip_of(&["archive/data.pkl", "archive/data/0"], 21),
            2 => npy("<f4", 1),
            3 => arrow_stream(1),
            4 => tfrecord(&[&random(30, 22)]),
            _ => build_tar(&[("1.jpg", 10), ("1.json", 10)], 23),
        };
        let pos = pos % sample.len();
        sample[pos] = byte;
        let _ = sniff_detail(&sample);
    }
}
